// Load generators of bench/dataplane.ts: each drives one path (a host:port
// that ends at bench/dataplane-server.ts, directly or through proxies) from a
// fixed source address, and every loop is bounded by a count and a time.
import { connect, type Socket } from 'node:net';
import { MODE, ONCE_BYTES } from './dataplane-server.ts';

export interface Target {
  readonly host: string;
  readonly port: number;
  /**
   * The client's source address (the Ambit agent checks it is the workload's);
   * none for a client whose uid proves it (the capture path).
   */
  readonly localAddress?: string;
  /**
   * host:port is a SOCKS5 proxy: every connection first negotiates
   * username/password authentication as `user` and a CONNECT to `to`. The
   * negotiation is part of each connection's cost, as it is for any SOCKS5
   * client, so the new-connection and throughput timings include it.
   */
  readonly socks?: { readonly user: string; readonly to: { readonly host: string; readonly port: number } };
}

const MiB = 1024 * 1024;
const CHUNK = Buffer.alloc(256 * 1024, 0x61);

/** Connects (bounded by timeoutMs) and resolves once established. */
export function open(t: Target, timeoutMs: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: t.host, port: t.port, localAddress: t.localAddress, noDelay: true, allowHalfOpen: true });
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`connect to ${t.host}:${t.port} timed out`));
    }, timeoutMs);
    s.once('connect', () => {
      const ready = (): void => {
        clearTimeout(timer);
        // Later errors show up as 'close'; an unhandled 'error' must not end the bench.
        s.removeAllListeners('error');
        s.on('error', () => undefined);
        resolve(s);
      };
      if (!t.socks) return ready();
      socksHandshake(s, t.socks.user, t.socks.to).then(ready, (err: Error) => {
        clearTimeout(timer);
        s.destroy();
        reject(err);
      });
    });
    s.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/**
 * The SOCKS5 client side (RFC 1928 with RFC 1929 username/password), written
 * the way a client library does it: greeting, authentication and CONNECT each
 * wait for the proxy's answer (three round trips). The password is ignored by
 * Ambit (the username names the workload; the socket's owner or address proves
 * it). Resolves once the proxy replied success; the socket is then the tunnel.
 */
export function socksHandshake(s: Socket, user: string, to: { readonly host: string; readonly port: number }): Promise<void> {
  return new Promise((resolve, reject) => {
    let buf: Buffer = Buffer.alloc(0);
    let step = 0;
    const fail = (why: string): void => {
      s.off('data', onData);
      s.off('close', onClose);
      reject(new Error(`SOCKS5: ${why}`));
    };
    const onClose = (): void => fail(`proxy closed the connection in step ${step}`);
    const onData = (d: Buffer): void => {
      buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
      if (step === 0 && buf.length >= 2) {
        if (buf[0] !== 5 || buf[1] !== 2) return fail(`proxy chose method ${buf[1]}, not username/password`);
        buf = buf.subarray(2);
        step = 1;
        const u = Buffer.from(user);
        s.write(Buffer.concat([Buffer.from([1, u.length]), u, Buffer.from([1, 0x78])]));
      }
      if (step === 1 && buf.length >= 2) {
        if (buf[1] !== 0) return fail(`authentication as ${user} refused (status ${buf[1]})`);
        buf = buf.subarray(2);
        step = 2;
        const req = Buffer.alloc(10);
        req.set([5, 1, 0, 1]);
        to.host.split('.').forEach((octet, i) => (req[4 + i] = Number(octet)));
        req.writeUInt16BE(to.port, 8);
        s.write(req);
      }
      // A reply with an IPv4 bound address is 10 bytes; Ambit's replies are.
      if (step === 2 && buf.length >= 10) {
        s.off('data', onData);
        s.off('close', onClose);
        if (buf[1] !== 0) return reject(new Error(`SOCKS5: CONNECT refused, reply ${buf[1]}`));
        if (buf.length > 10) s.unshift(buf.subarray(10));
        resolve();
      }
    };
    s.on('data', onData);
    s.once('close', onClose);
    s.write(Buffer.from([5, 1, 2]));
  });
}

function drain(s: Socket): Promise<void> {
  return new Promise((resolve, reject) => {
    const onDrain = (): void => {
      s.off('close', onClose);
      resolve();
    };
    const onClose = (): void => {
      s.off('drain', onDrain);
      reject(new Error('connection closed while sending'));
    };
    s.once('drain', onDrain);
    s.once('close', onClose);
  });
}

export interface ThroughputResult {
  readonly bytes: number;
  readonly seconds: number;
  readonly mibPerSecond: number;
}

/**
 * Sends `bytes` to the sink over one connection and resolves when the sink
 * has confirmed it received them all ('K'): delivery end to end, not just
 * into the first socket buffer. Rejects after timeoutMs.
 */
async function sinkOne(t: Target, bytes: number, timeoutMs: number): Promise<void> {
  const s = await open(t, timeoutMs);
  try {
    const acked = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`sink did not confirm ${bytes} bytes within ${timeoutMs} ms`)), timeoutMs);
      s.once('data', (d: Buffer) => {
        clearTimeout(timer);
        if (d[0] === 0x4b) resolve();
        else reject(new Error('unexpected answer from the sink'));
      });
      s.once('close', () => {
        clearTimeout(timer);
        reject(new Error('connection closed before the sink confirmed'));
      });
    });
    acked.catch(() => undefined);
    const header = Buffer.alloc(9);
    header[0] = MODE.sink;
    header.writeBigUInt64BE(BigInt(bytes), 1);
    s.write(header);
    let sent = 0;
    const deadline = performance.now() + timeoutMs;
    while (sent < bytes) {
      const n = Math.min(CHUNK.length, bytes - sent);
      const ok = s.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n));
      sent += n;
      if (!ok) await drain(s);
      if (performance.now() > deadline) throw new Error(`sending ${bytes} bytes took longer than ${timeoutMs} ms`);
    }
    await acked;
  } finally {
    s.destroy();
  }
}

/** `connections` connections in parallel share `totalBytes`; the rate is over the slowest. */
export async function throughput(t: Target, totalBytes: number, connections: number, timeoutMs: number): Promise<ThroughputResult> {
  const per = Math.floor(totalBytes / connections);
  const start = performance.now();
  await Promise.all(Array.from({ length: connections }, () => sinkOne(t, per, timeoutMs)));
  const seconds = (performance.now() - start) / 1000;
  const bytes = per * connections;
  return { bytes, seconds, mibPerSecond: bytes / MiB / seconds };
}

export interface LatencyResult {
  readonly rounds: number;
  readonly p50Us: number;
  readonly p99Us: number;
  readonly meanUs: number;
}

export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

/**
 * Echo round trips on one established connection, timed one by one. The
 * bench keeps one probe per path open and takes the rounds in small blocks,
 * path after path, so that every path is measured under the same load of
 * the machine (a run of each path after the other let the machine's drift
 * over seconds decide the ratio of two added latencies).
 */
export class EchoProbe {
  readonly #s: Socket;
  readonly #msg: Buffer;
  #got = 0;
  #wake: (() => void) | undefined;
  #failed: Error | undefined;

  private constructor(s: Socket, size: number) {
    this.#s = s;
    this.#msg = Buffer.alloc(size, 0x62);
    this.#msg[0] = MODE.echo;
    s.on('data', (d: Buffer) => {
      this.#got += d.length;
      if (this.#got >= size && this.#wake) {
        const w = this.#wake;
        this.#wake = undefined;
        w();
      }
    });
    s.on('error', (err) => (this.#failed = err));
    s.on('close', () => {
      this.#failed ??= new Error('echo connection closed');
      this.#wake?.();
    });
  }

  static async open(t: Target, size: number, timeoutMs: number): Promise<EchoProbe> {
    return new EchoProbe(await open(t, timeoutMs), size);
  }

  /** `n` round trips; each one's time in µs is appended to `into` (when given). */
  async rounds(n: number, into?: number[]): Promise<void> {
    const size = this.#msg.length;
    for (let i = 0; i < n; i++) {
      const t0 = performance.now();
      await new Promise<void>((resolve) => {
        this.#got = 0;
        this.#wake = resolve;
        this.#s.write(this.#msg);
      });
      const t1 = performance.now();
      if (this.#failed) throw this.#failed;
      if (this.#got !== size) throw new Error(`echo returned ${this.#got} bytes, expected ${size}`);
      into?.push((t1 - t0) * 1000);
    }
  }

  close(): void {
    this.#s.destroy();
  }
}

/** p50 and p99 of round-trip samples (µs). */
export function latencyOf(samples: readonly number[]): LatencyResult {
  const sorted = Float64Array.from(samples).sort();
  let sum = 0;
  for (const v of sorted) sum += v;
  return { rounds: sorted.length, p50Us: percentile(sorted, 50), p99Us: percentile(sorted, 99), meanUs: sum / sorted.length };
}

export interface ConnRateResult {
  readonly ok: number;
  readonly failures: number;
  readonly seconds: number;
  readonly perSecond: number;
  readonly firstError: string;
}

/** One short connection: connect, send ONCE_BYTES, read them back, see the server's EOF, close. */
function shortConnection(t: Target, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: t.host, port: t.port, localAddress: t.localAddress, noDelay: true });
    let got = 0;
    let settled = false;
    const finish = (err?: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      s.destroy();
      if (err) reject(err);
      else resolve();
    };
    const timer = setTimeout(() => finish(new Error('timeout')), timeoutMs);
    const send = (): void => {
      s.on('data', (d: Buffer) => (got += d.length));
      const msg = Buffer.alloc(ONCE_BYTES, 0x63);
      msg[0] = MODE.once;
      s.write(msg);
    };
    s.once('connect', () => {
      if (!t.socks) return send();
      socksHandshake(s, t.socks.user, t.socks.to).then(send, (err: Error) => finish(err));
    });
    s.once('end', () => finish(got === ONCE_BYTES ? undefined : new Error(`got ${got} of ${ONCE_BYTES} bytes`)));
    s.once('error', (err: NodeJS.ErrnoException) => finish(new Error(err.code ?? err.message)));
    s.once('close', () => finish(new Error(`closed after ${got} bytes`)));
  });
}

/**
 * New connections per second: `concurrency` loops each run short connections
 * back to back until durationMs has passed or maxConnections were started;
 * connections in flight at the deadline finish and count.
 */
export async function connectionRate(t: Target, durationMs: number, concurrency: number, maxConnections: number, perConnTimeoutMs: number): Promise<ConnRateResult> {
  let started = 0;
  let ok = 0;
  let failures = 0;
  let firstError = '';
  const start = performance.now();
  const deadline = start + durationMs;
  const worker = async (): Promise<void> => {
    while (performance.now() < deadline && started < maxConnections) {
      started++;
      try {
        await shortConnection(t, perConnTimeoutMs);
        ok++;
      } catch (err) {
        failures++;
        firstError ||= (err as Error).message;
        // A failing path must not spin: back off a little.
        await new Promise((r) => setTimeout(r, 5));
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const seconds = (performance.now() - start) / 1000;
  return { ok, failures, seconds, perSecond: ok / seconds, firstError };
}

/** One short connection through `t`, for readiness probes; rejects when it fails. */
export function probeOnce(t: Target, timeoutMs: number): Promise<void> {
  return shortConnection(t, timeoutMs);
}

/** An echo connection held open for the latency rounds. */
export interface Probe {
  rounds(n: number, into?: number[]): Promise<void>;
  close(): void;
}

/**
 * Where a path's load runs: in the bench process (InProcessLoad), or in a
 * client process of its own (bench/dataplane-client.ts RemoteLoad).
 */
export interface LoadDriver {
  throughput(t: Target, totalBytes: number, connections: number, timeoutMs: number): Promise<ThroughputResult>;
  connectionRate(t: Target, durationMs: number, concurrency: number, maxConnections: number, perConnTimeoutMs: number): Promise<ConnRateResult>;
  probeOnce(t: Target, timeoutMs: number): Promise<void>;
  openProbe(t: Target, size: number, timeoutMs: number): Promise<Probe>;
}

export const InProcessLoad: LoadDriver = {
  throughput,
  connectionRate,
  probeOnce,
  openProbe: (t, size, timeoutMs) => EchoProbe.open(t, size, timeoutMs),
};
