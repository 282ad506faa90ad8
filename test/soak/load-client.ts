// The client workload of test/soak/load.test.ts, run as a child process: it
// holds thousands of sockets and hashes every byte, and the test process
// must stay free to read the agents' logs as fast as they write them (an
// agent drops log lines its stderr reader is too slow to take, by design:
// shared/logger.ts) and to sample their memory and metrics.
//
// Talks to the test over the IPC channel: one request { id, op, ... }, one
// answer { id, ... } (see LoadRequest / LoadAnswer). Exits when the channel
// closes. Every connection goes from CLIENT_IP to agent A, through its
// upstream listener or its SOCKS5 port, and ends at test/soak/echo-server.ts
// (see there for the frames): every payload is checked with SHA-256 by the
// server (what it received) and by this client (what came back).
//
// Run: node test/soak/load-client.ts CONFIG_JSON  (LoadClientConfig)
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { socksConnect } from '../e2e/harness.ts';

export interface LoadClientConfig {
  readonly clientIp: string;
  /** Agent A's upstream listener for the client, to the server. */
  readonly upstream: { readonly host: string; readonly port: number };
  /** Agent A's SOCKS5 listener, "host:port", and the SOCKS user and destination. */
  readonly socks: string;
  readonly socksUser: string;
  readonly server: { readonly host: string; readonly port: number };
}

export type LoadRequest =
  /** One connection, one echo of up to `maxPayload` bytes, clean close. */
  | { readonly op: 'once'; readonly maxPayload: number }
  /** `count` connections, `concurrency` at a time, each one echo and a clean close. */
  | { readonly op: 'warmup'; readonly count: number; readonly concurrency: number; readonly maxPayload: number }
  /** Opens `count` connections and holds them, `batch` at a time, each proven end to end by one echo. */
  | { readonly op: 'ramp'; readonly count: number; readonly batch: number; readonly maxPayload: number }
  /** One more echo on every held connection, `concurrency` at a time. */
  | { readonly op: 'push'; readonly concurrency: number; readonly maxPayload: number }
  /** Clean close of every held connection, `concurrency` at a time. */
  | { readonly op: 'close'; readonly concurrency: number }
  /**
   * New connections back to back for `seconds` from `loops` loops (every
   * `socksEvery`-th loop through SOCKS5), each one echo of a random payload
   * and a clean close; at most `maxConnections` in all.
   */
  | { readonly op: 'churn'; readonly seconds: number; readonly loops: number; readonly socksEvery: number; readonly maxPayload: number; readonly maxConnections: number };

export interface FailureReport {
  /** ECONNRESET / EPIPE: the connection was reset. */
  readonly resets: number;
  /** Anything else: a timeout, an early close, a checksum mismatch, a refused connection. */
  readonly other: number;
  readonly samples: readonly string[];
}

export interface LoadAnswer {
  readonly id: number;
  /** Set when the request itself could not run. */
  readonly error?: string;
  /** Connections that completed what was asked (opened / echoed / closed cleanly). */
  readonly ok: number;
  /** Of those, through SOCKS5 (churn). */
  readonly viaSocks: number;
  /** Echo frames the server verified (and this client verified back). */
  readonly frames: number;
  /** Payload bytes echoed (each way). */
  readonly bytes: number;
  readonly seconds: number;
  /** Connections held open after this request. */
  readonly held: number;
  readonly failures: FailureReport;
}

/** Timeouts: every wait on a socket is bounded by one of these. */
const CONNECT_TIMEOUT_MS = 10_000;
const ECHO_TIMEOUT_MS = 60_000;
const CLOSE_TIMEOUT_MS = 30_000;

class Failures {
  resets = 0;
  other = 0;
  readonly samples: string[] = [];
  add(err: unknown): void {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ECONNRESET' || e.code === 'EPIPE') this.resets++;
    else this.other++;
    if (this.samples.length < 10) this.samples.push(`${new Date().toISOString()} ${e.code ? `${e.code} ` : ''}${e.message}`);
  }
  get total(): number {
    return this.resets + this.other;
  }
  report(): FailureReport {
    return { resets: this.resets, other: this.other, samples: [...this.samples] };
  }
}

/**
 * One connection to the echo server. Every wait has a timeout; the first
 * error (a reset, an early close, a wrong byte) fails whatever is pending
 * and every later call.
 */
class EchoConn {
  readonly socket: Socket;
  #error: NodeJS.ErrnoException | undefined;
  #ended = false;
  #closed = false;
  // the pending echo
  #want = 0;
  #got = 0;
  #hash = createHash('sha256');
  #digest: Buffer = Buffer.alloc(0);
  #settle: ((err?: Error) => void) | undefined;

  constructor(socket: Socket) {
    this.socket = socket;
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => {
      if (!this.#settle || this.#got + d.length > this.#want) {
        this.#fail(new Error(`unexpected bytes from the server (${d.length}, ${this.#want - this.#got} expected)`));
        return;
      }
      this.#hash.update(d);
      this.#got += d.length;
      if (this.#got === this.#want) {
        const same = this.#hash.digest().equals(this.#digest);
        this.#done(same ? undefined : new Error(`checksum mismatch: the ${this.#want} bytes that came back differ from those sent`));
      }
    });
    socket.on('end', () => {
      this.#ended = true;
      if (this.#settle) this.#fail(new Error(`server closed after ${this.#got}/${this.#want} bytes of an echo`));
    });
    socket.on('error', (err) => this.#fail(err));
    socket.on('close', () => {
      this.#closed = true;
      if (this.#settle) this.#fail(new Error(`connection closed after ${this.#got}/${this.#want} bytes of an echo`));
    });
  }

  #fail(err: NodeJS.ErrnoException): void {
    this.#error ??= err;
    this.#done(err);
  }

  #done(err?: Error): void {
    const settle = this.#settle;
    this.#settle = undefined;
    settle?.(err);
  }

  /** Sends `payload` in one frame; resolves once exactly the same bytes came back. */
  echo(payload: Buffer, timeoutMs = ECHO_TIMEOUT_MS): Promise<void> {
    if (this.#error) return Promise.reject(this.#error);
    if (this.#ended || this.#closed) return Promise.reject(new Error('connection already closed'));
    return new Promise((resolve, reject) => {
      const digest = createHash('sha256').update(payload).digest();
      this.#want = payload.length;
      this.#got = 0;
      this.#hash = createHash('sha256');
      this.#digest = digest;
      const timer = setTimeout(() => this.#fail(new Error(`echo of ${payload.length} bytes timed out after ${timeoutMs} ms (${this.#got} back)`)), timeoutMs);
      this.#settle = (err) => {
        clearTimeout(timer);
        if (err) reject(err);
        else resolve();
      };
      const header = Buffer.alloc(36);
      header.writeUInt32BE(payload.length, 0);
      digest.copy(header, 4);
      this.socket.write(header);
      this.socket.write(payload);
    });
  }

  /** The clean close: "done" frame, the server's FIN, our FIN, then 'close' without an error. */
  finish(timeoutMs = CLOSE_TIMEOUT_MS): Promise<void> {
    if (this.#error) return Promise.reject(this.#error);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.socket.destroy();
        reject(new Error(`clean close timed out after ${timeoutMs} ms (server FIN ${this.#ended ? 'seen' : 'not seen'})`));
      }, timeoutMs);
      const onClose = (hadError: boolean): void => {
        clearTimeout(timer);
        if (this.#error || hadError) reject(this.#error ?? new Error('closed with an error'));
        else if (!this.#ended) reject(new Error('closed without the server\'s FIN'));
        else resolve();
      };
      if (this.#closed) return onClose(false);
      this.socket.once('close', onClose);
      if (this.#ended) this.socket.end();
      else this.socket.once('end', () => this.socket.end());
      this.socket.write(Buffer.alloc(4)); // length 0: done
    });
  }

  destroy(): void {
    this.socket.destroy();
  }
}

const cfg = JSON.parse(process.argv[2] ?? '{}') as LoadClientConfig;

/** Through agent A's upstream listener. */
function openUpstream(timeoutMs = CONNECT_TIMEOUT_MS): Promise<EchoConn> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: cfg.upstream.host, port: cfg.upstream.port, localAddress: cfg.clientIp, allowHalfOpen: true, noDelay: true });
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`connect to ${cfg.upstream.host}:${cfg.upstream.port} timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    s.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    s.once('connect', () => {
      clearTimeout(timer);
      s.removeAllListeners('error');
      resolve(new EchoConn(s));
    });
  });
}

/** Through agent A's SOCKS5 listener (the harness's client, bounded by timeoutMs). */
async function openSocks(timeoutMs = CONNECT_TIMEOUT_MS): Promise<EchoConn> {
  const { socket, reply } = await socksConnect(cfg.socks, cfg.clientIp, cfg.socksUser, cfg.server.host, cfg.server.port, timeoutMs);
  if (reply !== 0) {
    socket.destroy();
    throw new Error(`SOCKS5 reply ${reply}`);
  }
  socket.removeAllListeners('error');
  const c = new EchoConn(socket);
  socket.resume();
  return c;
}

/** A random payload of 1..max bytes. */
function payload(max: number): Buffer {
  return randomBytes(randomInt(1, max + 1));
}

/** Runs fn over items with at most `limit` in flight. */
async function forEachLimit<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/** Connections held between ramp and close. */
let held: EchoConn[] = [];

interface Tally {
  ok: number;
  viaSocks: number;
  frames: number;
  bytes: number;
  readonly f: Failures;
}

/** One checksummed echo of a random payload on a held connection, counted as a frame and a success. */
async function echoCounted(t: Tally, c: EchoConn, maxPayload: number): Promise<void> {
  const p = payload(maxPayload);
  await c.echo(p);
  t.frames++;
  t.bytes += p.length;
  t.ok++;
}

/** One short connection: open, one echo, clean close. */
async function shortConnection(t: Tally, socks: boolean, maxPayload: number): Promise<void> {
  let c: EchoConn | undefined;
  try {
    c = socks ? await openSocks() : await openUpstream();
    const p = payload(maxPayload);
    await c.echo(p);
    t.frames++;
    t.bytes += p.length;
    await c.finish();
    t.ok++;
    if (socks) t.viaSocks++;
  } catch (err) {
    t.f.add(err);
  } finally {
    c?.destroy();
  }
}

async function run(req: LoadRequest, t: Tally): Promise<void> {
  switch (req.op) {
    case 'once':
      return shortConnection(t, false, req.maxPayload);
    case 'warmup':
      return forEachLimit(Array.from({ length: req.count }), req.concurrency, () => shortConnection(t, false, req.maxPayload));
    case 'ramp':
      // Batches, each waiting for the previous one, so that connect storms
      // stay far below the listen backlogs; stops at the first failure.
      for (let opened = 0; opened < req.count && t.f.total === 0; opened += req.batch) {
        await Promise.all(Array.from({ length: Math.min(req.batch, req.count - opened) }, async () => {
          try {
            const c = await openUpstream();
            held.push(c);
            await echoCounted(t, c, req.maxPayload);
          } catch (err) {
            t.f.add(err);
          }
        }));
      }
      return;
    case 'push':
      return forEachLimit(held, req.concurrency, async (c) => {
        try {
          await echoCounted(t, c, req.maxPayload);
        } catch (err) {
          t.f.add(err);
        }
      });
    case 'close': {
      const conns = held;
      held = [];
      try {
        await forEachLimit(conns, req.concurrency, async (c) => {
          try {
            await c.finish();
            t.ok++;
          } catch (err) {
            t.f.add(err);
          }
        });
      } finally {
        for (const c of conns) c.destroy();
      }
      return;
    }
    case 'churn': {
      let started = 0;
      const deadline = performance.now() + req.seconds * 1000;
      const loop = async (index: number): Promise<void> => {
        const socks = req.socksEvery > 0 && index % req.socksEvery === req.socksEvery - 1;
        while (performance.now() < deadline && started < req.maxConnections) {
          started++;
          const before = t.f.total;
          await shortConnection(t, socks, req.maxPayload);
          // A failing path must not spin.
          if (t.f.total > before) await new Promise((r) => setTimeout(r, 10));
        }
      };
      await Promise.all(Array.from({ length: req.loops }, (_, i) => loop(i)));
      return;
    }
  }
}

process.on('message', (msg: LoadRequest & { id: number }) => {
  const t: Tally = { ok: 0, viaSocks: 0, frames: 0, bytes: 0, f: new Failures() };
  const start = performance.now();
  const answer = (error?: string): void => {
    const a: LoadAnswer = {
      id: msg.id, ...(error ? { error } : {}), ok: t.ok, viaSocks: t.viaSocks, frames: t.frames, bytes: t.bytes,
      seconds: (performance.now() - start) / 1000, held: held.length, failures: t.f.report(),
    };
    process.send!(a);
  };
  run(msg, t).then(() => answer(), (err: Error) => answer(err.stack ?? err.message));
});
process.on('disconnect', () => {
  for (const c of held) c.destroy();
  process.exit(0);
});
