import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { existsSync } from 'node:fs';
import type { X509Certificate } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { formatHostPort } from '../../shared/config-parse.ts';
import { AmbitError } from '../../shared/errors.ts';
import type { Logger } from '../../shared/logger.ts';
import { bundleCertificates } from '../../shared/tls.ts';
import type { CertManager } from '../identity/cert-manager.ts';
import { serverNameFor, type PeerInfo } from './hbone-names.ts';
import { admitInbound, refuseRecord, type Admitted, type InboundDeps, type Refused } from './inbound.ts';
import type { ConnectionRecord } from './connection-record.ts';
import { num, str, verifyReportedChain, type Message } from './dataplane-messages.ts';
import type { NativeOutbound } from './native-outbound.ts';
import { admitPlaintext } from './plaintext.ts';

const DATAPLANE_BINARY = join('dataplane', 'target', 'release', 'ambit-dataplane');
/**
 * The control protocol this agent speaks with ambit-dataplane (the messages
 * of dataplane/src/control.rs). The data plane states its own in its first
 * line; an executable built from other sources (installed, then the agent
 * upgraded without rebuilding it) is refused instead of misread. Bump both
 * with any change to the messages.
 */
export const DATAPLANE_PROTOCOL = 3;
/** How long a stopping agent waits for its data plane to exit before SIGKILL. */
const EXIT_WAIT_MS = 2_000;

/**
 * Where `npm run build:dataplane` (dataplane/build.sh) puts the executable,
 * from this file in agent/proxy/ (source: a checkout, a systemd install) or
 * dist/agent/proxy/ (built: a checkout, the container image, which carries
 * the executable but not the crate).
 */
export function defaultDataplaneBinary(): string {
  return dataplaneBinaryFrom(dirname(fileURLToPath(import.meta.url)));
}

/** defaultDataplaneBinary for a module in `here` (exported for its test). */
export function dataplaneBinaryFrom(here: string): string {
  const roots = [resolve(here, '..', '..'), resolve(here, '..', '..', '..')];
  const root = roots.find((r) => existsSync(join(r, 'dataplane', 'Cargo.toml')) || existsSync(join(r, DATAPLANE_BINARY))) ?? roots[0]!;
  return join(root, DATAPLANE_BINARY);
}

/** What the agent says of an executable that speaks another control protocol (`said`: its own, if any). */
function staleProtocol(binary: string, said: string): string {
  return `ambit-dataplane at ${binary} speaks control protocol ${said || 'none'}, this agent ${DATAPLANE_PROTOCOL}: it was built from other sources; rebuild it (npm run build:dataplane) and install it again`;
}

export interface NativeInboundOptions {
  readonly binary: string;
  readonly host: string;
  readonly port: number;
  readonly trustDomain: string;
  readonly certs: CertManager;
  readonly bundlePem: () => string;
  readonly logger: Logger;
  readonly now?: () => number;
  /** The inbound decision path (admitInbound), shared with the node:http2 data path. */
  readonly inbound: InboundDeps;
  /** How long to wait before starting the data plane again after it died. */
  readonly restartDelayMs?: number;
  /** Inbound plaintext capture (:15006): strict refuses, permissive asks policy. */
  readonly mode: 'strict' | 'permissive';
  /** The outbound half and the listeners (SOCKS5, upstream, capture); bound on every start. */
  readonly upstreams: NativeOutbound;
}

/** One admitted tunnel while ambit-dataplane relays it. */
interface NativeConnection {
  readonly record: ConnectionRecord;
  readonly finished: () => void;
  /** Set when the agent closed it (policy change, drain deadline): the record ends with these. */
  closed?: { reason: string; flags: string };
}



/**
 * Inbound HBONE on :15008 served by ambit-dataplane (`--dataplane native`):
 * the Rust process owns TLS, HTTP/2 and the byte relay; this class owns
 * every decision, with the same code as the node:http2 path (HboneServer's
 * peer check, admitInbound). They speak newline-delimited JSON over the
 * child's stdin and stdout (dataplane/src/control.rs); keys cross only that
 * pipe, between two processes of the same service on the same host.
 *
 * Same surface as HboneServer (listen, refresh, stopAccepting, flush,
 * destroy), so the agent runs either.
 */
export class NativeInbound {
  readonly #o: NativeInboundOptions;
  #child: ChildProcessByStdio<Writable, Readable, Readable> | undefined;
  #pending = '';
  /** Messages not yet written, and the process they are for (#send). */
  #out: string[] = [];
  #outFor: ChildProcessByStdio<Writable, Readable, Readable> | undefined;
  #uris: readonly string[] = [];
  #names = new Map<string, string>();
  readonly #sessions = new Map<number, PeerInfo>();
  readonly #conns = new Map<number, NativeConnection>();
  #rev = 0;
  #pushQueued = false;
  #address: AddressInfo | undefined;
  readonly #bundle: () => X509Certificate[];
  #draining = false;
  #destroyed = false;
  /** Its executable speaks another control protocol: never started again, and the agent reports not ready. */
  #incompatible: string | undefined;
  /** It served once: a later 'listening' is a restart, which binds the upstream listeners again. */
  #served = false;
  #onDrained: (() => void) | undefined;
  #onStarted: { resolve: (a: AddressInfo) => void; reject: (e: Error) => void } | undefined;
  readonly #unsubscribe: () => void;

  constructor(o: NativeInboundOptions) {
    this.#o = o;
    this.#bundle = bundleCertificates(o.bundlePem);
    // A renewed or new certificate must reach the data plane before clients ask for it.
    this.#unsubscribe = o.certs.onChange(() => this.#queuePush());
  }

  /** Starts ambit-dataplane; resolves once it listens and has taken its first configuration. */
  listen(): Promise<AddressInfo> {
    if (!existsSync(this.#o.binary)) {
      return Promise.reject(new AmbitError('AMBIT_ERR_CONFIG_INVALID', `--dataplane native: no ambit-dataplane executable at ${this.#o.binary} (build it with "npm run build:dataplane", or name it with --dataplane-binary)`, { details: { field: 'dataplaneBinary', value: this.#o.binary } }));
    }
    return new Promise((resolve, reject) => {
      this.#onStarted = { resolve, reject };
      this.#start(this.#o.port);
    });
  }

  /** Maps local identities to the SNI names clients use, and sends their certificates; called when local workloads or the bundle change. */
  refresh(identityUris: readonly string[]): void {
    this.#uris = [...identityUris];
    this.#names = new Map(identityUris.map((u) => [serverNameFor(u), u]));
    this.#queuePush();
  }

  /** Stops accepting; open sessions get GOAWAY, their streams go on. */
  stopAccepting(): void {
    this.#draining = true;
    this.#send({ t: 'drain' });
  }

  /**
   * After stopAccepting(): waits, for at most ms, until every session has
   * ended (h2's graceful shutdown: GOAWAY, streams done, everything written),
   * the outbound ones the data plane dialled included; resolves with how
   * many had not.
   */
  async flush(ms: number): Promise<number> {
    const open = (): number => this.#sessions.size + (this.#o.upstreams.sessions ?? 0);
    if (!this.#child || open() === 0) return 0;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      new Promise<void>((r) => (this.#onDrained = r)),
      new Promise<void>((r) => (timer = setTimeout(r, ms))),
    ]);
    clearTimeout(timer);
    return open();
  }

  /**
   * Ends the data plane and resolves once it has exited, so that an agent
   * that stopped leaves no process behind; SIGKILL if it has not within
   * EXIT_WAIT_MS.
   */
  destroy(): Promise<void> {
    this.#destroyed = true;
    this.#unsubscribe();
    this.#writeOut();
    const child = this.#child;
    const exited = child && child.pid !== undefined && child.exitCode === null && child.signalCode === null
      ? new Promise<void>((resolve) => {
        const done = (): void => {
          clearTimeout(kill);
          clearTimeout(giveUp);
          resolve();
        };
        const kill = setTimeout(() => child.kill('SIGKILL'), EXIT_WAIT_MS);
        // A process SIGKILL cannot end (stuck in the kernel) must not hold the agent's exit.
        const giveUp = setTimeout(done, EXIT_WAIT_MS + 1_000);
        child.once('exit', done);
      })
      : Promise.resolve();
    // Closing its stdin ends ambit-dataplane (it serves nothing without the agent).
    child?.stdin.end();
    child?.kill('SIGTERM');
    this.#endAll('agent shutting down');
    return exited;
  }

  /** Why the native data path cannot serve (its executable was replaced by one of another protocol), if so. */
  get failure(): string | undefined {
    return this.#incompatible;
  }

  /** Once listen() resolved: binds every other listener in the data plane; resolves with their bound addresses. */
  listenAll(): Promise<string[]> {
    return this.#o.upstreams.listen((m) => this.#send(m));
  }

  #start(port: number): void {
    const child = spawn(this.#o.binary, ['--listen', formatHostPort({ host: this.#o.host, port })], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.#child = child;
    this.#pending = '';
    child.stdout.setEncoding('utf8');
    // Only the current process speaks: ids start again in a new one, so a
    // late line from one that exited could name another connection.
    child.stdout.on('data', (chunk: string) => {
      if (this.#child === child) this.#read(chunk);
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => this.#o.logger.warn({ stderr: chunk.trimEnd().slice(0, 2000) }, 'ambit-dataplane wrote to stderr'));
    child.stdin.on('error', () => undefined); // a dead child is handled by 'exit'
    child.once('error', (err) => {
      // A running child's errors (a failed kill) end with 'exit'; one that never started has only this.
      if (child.pid !== undefined) return;
      if (this.#onStarted) {
        this.#failStart(new AmbitError('AMBIT_ERR_INTERNAL', `cannot start ambit-dataplane (${this.#o.binary}): ${err.message}`, { cause: err }));
        return;
      }
      this.#o.logger.error({ binary: this.#o.binary, err: err.message }, 'cannot start ambit-dataplane');
      this.#exited(child, null, null); // tries again after the restart delay
    });
    child.once('exit', (code, signal) => this.#exited(child, code, signal));
  }

  #failStart(err: Error): void {
    const started = this.#onStarted;
    this.#onStarted = undefined;
    started?.reject(err);
  }

  #exited(child: ChildProcessByStdio<Writable, Readable, Readable>, code: number | null, signal: NodeJS.Signals | null): void {
    if (this.#child !== child) return;
    this.#child = undefined;
    this.#sessions.clear();
    this.#endAll('ambit-dataplane exited');
    this.#onDrained?.();
    if (this.#destroyed || this.#incompatible) return;
    if (this.#onStarted) {
      this.#failStart(new AmbitError('AMBIT_ERR_INTERNAL', `ambit-dataplane exited before it served (code ${code}, signal ${signal})`));
      return;
    }
    // Its tunnels are gone with it; the agent keeps serving by starting it again.
    this.#o.logger.error({ code, signal }, 'ambit-dataplane exited; starting it again');
    const port = this.#address?.port ?? this.#o.port;
    setTimeout(() => {
      if (!this.#destroyed && !this.#draining) this.#start(port);
    }, this.#o.restartDelayMs ?? 1_000).unref();
  }

  /** Every connection still open ends now, recorded with why (the data plane that carried it is gone). */
  #endAll(error: string): void {
    this.#o.upstreams.endAll(error);
    for (const [id, c] of this.#conns) {
      this.#conns.delete(id);
      c.record.finish(c.closed?.reason ?? error, c.closed?.flags ?? 'DC');
      c.finished();
    }
  }

  /**
   * Queues a message for the current process. Everything decided in one
   * turn of the event loop goes in one write (setImmediate runs right after
   * the I/O callbacks that decided): one syscall per message was the largest
   * single cost of a new connection on the agent's side (bench/README.md,
   * ninth session).
   */
  #send(m: Message): void {
    const child = this.#child;
    if (!child || child.stdin.destroyed) return;
    // Lines queued for a process that has exited name its ids, not the new one's: dropped.
    if (this.#outFor !== child) {
      this.#outFor = child;
      this.#out = [];
    }
    this.#out.push(JSON.stringify(m));
    if (this.#out.length === 1) setImmediate(() => this.#writeOut());
  }

  #writeOut(): void {
    const child = this.#outFor;
    const lines = this.#out;
    this.#out = [];
    if (lines.length === 0 || !child || child !== this.#child || child.stdin.destroyed) return;
    child.stdin.write(`${lines.join('\n')}\n`);
  }

  #queuePush(): void {
    if (this.#pushQueued) return;
    this.#pushQueued = true;
    // Several changes in one turn (a workload and its certificate) make one message.
    setImmediate(() => {
      this.#pushQueued = false;
      this.#push();
    });
  }

  #push(): void {
    if (!this.#child) return;
    const identities = this.#uris.flatMap((uri) => {
      const e = this.#o.certs.get(uri);
      return e ? [{ uri, sni: serverNameFor(uri), chain: e.chainPem, key: e.keyPem }] : [];
    });
    this.#send({ t: 'config', rev: ++this.#rev, bundle: this.#o.bundlePem(), identities });
  }

  #read(chunk: string): void {
    this.#pending += chunk;
    let nl: number;
    while ((nl = this.#pending.indexOf('\n')) >= 0) {
      const line = this.#pending.slice(0, nl);
      this.#pending = this.#pending.slice(nl + 1);
      if (!line) continue;
      let m: Message;
      try {
        m = JSON.parse(line) as Message;
      } catch {
        this.#o.logger.error({ line: line.slice(0, 200) }, 'ambit-dataplane said something unreadable');
        continue;
      }
      try {
        this.#handle(m);
      } catch (err) {
        // A bug in one message's handling must not take down the agent and every tunnel.
        this.#o.logger.error({ err: (err as Error).message, message: m.t }, 'ambit-dataplane message handling failed');
      }
    }
  }

  #handle(m: Message): void {
    const metrics = this.#o.inbound.metrics;
    switch (m.t) {
      case 'listening': {
        if (m.protocol !== DATAPLANE_PROTOCOL) {
          const message = staleProtocol(this.#o.binary, m.protocol === undefined ? '' : String(m.protocol));
          this.#o.logger.error({ binary: this.#o.binary, protocol: m.protocol ?? null, expected: DATAPLANE_PROTOCOL }, 'ambit-dataplane speaks another control protocol; not using it');
          // Not started again: the same executable would say the same.
          this.#incompatible = message;
          this.#child?.kill('SIGKILL');
          if (this.#onStarted) this.#failStart(new AmbitError('AMBIT_ERR_CONFIG_INVALID', message, { details: { field: 'dataplaneBinary', value: this.#o.binary } }));
          return;
        }
        const addr = str(m.addr);
        const port = Number(addr.slice(addr.lastIndexOf(':') + 1));
        this.#address = { address: this.#o.host, family: this.#o.host.includes(':') ? 'IPv6' : 'IPv4', port };
        this.#push();
        if (this.#served) void this.listenAll().catch((err: Error) => this.#o.logger.error({ err: err.message }, 'ambit-dataplane could not serve its listeners again'));
        return;
      }
      case 'ack':
        if (this.#onStarted && this.#address) {
          const started = this.#onStarted;
          this.#onStarted = undefined;
          this.#served = true;
          this.#o.logger.info({ pid: this.#child?.pid, address: formatHostPort({ host: this.#o.host, port: this.#address.port }) }, 'ambit-dataplane serves inbound HBONE');
          started.resolve(this.#address);
        }
        return;
      case 'nack':
        this.#o.logger.error({ rev: m.rev, err: m.message }, 'ambit-dataplane refused its configuration; the previous one stays in force');
        if (this.#onStarted) this.#failStart(new AmbitError('AMBIT_ERR_INTERNAL', `ambit-dataplane refused its first configuration: ${str(m.message)}`));
        return;
      case 'error':
        if (this.#o.upstreams.handle(m)) return;
        this.#o.logger.error({ code: m.code, err: m.message }, 'ambit-dataplane reported an error');
        if (this.#onStarted) this.#failStart(new AmbitError('AMBIT_ERR_INTERNAL', `ambit-dataplane: ${str(m.message)}`));
        return;
      case 'refused':
        // Refused before the agent was asked (a failed handshake, a malformed SOCKS5 negotiation).
        metrics.refused.inc({ direction: m.direction === 'outbound' ? 'outbound' : 'inbound', reason: str(m.reason) });
        if (m.error) this.#o.logger.debug({ reason: m.reason, err: m.error }, 'connection refused by ambit-dataplane');
        return;
      case 'session':
        return this.#session(m);
      case 'sessionEnd':
        this.#sessions.delete(num(m.sid));
        return;
      case 'drained':
        this.#onDrained?.();
        return;
      case 'stream':
        return this.#stream(m);
      case 'plain':
        return this.#plain(m);
      case 'open': {
        const c = this.#conns.get(num(m.id));
        if (!c) {
          this.#o.upstreams.handle(m);
          return;
        }
        c.record.open();
        // Closed (policy change, drain deadline) while it was being opened: the
        // data plane could not act on it then, since it had nothing to close.
        if (c.closed) this.#send({ t: 'close', id: num(m.id) });
        return;
      }
      case 'bytes':
        for (const entry of Array.isArray(m.c) ? m.c : []) {
          const [id, from, to] = entry as [number, number, number];
          const c = this.#conns.get(id);
          if (c) this.#count(c.record, from, to);
          else this.#o.upstreams.count(id, from, to);
        }
        return;
      case 'end':
        if (this.#conns.has(num(m.id))) return this.#end(m);
        this.#o.upstreams.handle(m);
        return;
      default:
        if (this.#o.upstreams.handle(m)) return;
        this.#o.logger.warn({ message: m.t }, 'ambit-dataplane sent an unknown message');
    }
  }

  #count(record: ConnectionRecord, fromSource: number, toSource: number): void {
    if (fromSource > record.bytesFromSource) record.fromSource(fromSource - record.bytesFromSource);
    if (toSource > record.bytesToSource) record.toSource(toSource - record.bytesToSource);
  }


  /** The same peer check as HboneServer's: chain to the bundle, our trust domain, a workload identity. */
  #session(m: Message): void {
    const sid = num(m.sid);
    const remote = str(m.remote);
    try {
      const identity = verifyReportedChain(m.chain, this.#bundle(), this.#o.trustDomain, (this.#o.now ?? Date.now)(), 'client');
      if (identity.kind !== 'workload') throw new AmbitError('AMBIT_ERR_AUTH_DENIED', `${identity.uri} is not a workload identity`);
      this.#sessions.set(sid, { identity, servedIdentity: this.#names.get(str(m.sni).toLowerCase()) ?? '', remoteAddress: remote });
      this.#send({ t: 'session', sid, ok: true });
    } catch (err) {
      this.#o.inbound.metrics.refused.inc({ direction: 'inbound', reason: 'peer_certificate' });
      this.#o.logger.warn({ err: (err as Error).message, peer: remote }, 'HBONE peer rejected');
      this.#send({ t: 'session', sid, ok: false });
    }
  }

  /** A connection redirected to :15006 (inbound plaintext capture). */
  #plain(m: Message): void {
    const id = num(m.id);
    const at = (v: unknown): { address: string; port: number } => {
      const [address, port] = Array.isArray(v) ? (v as [unknown, unknown]) : ['', 0];
      return { address: str(address), port: num(port) || 0 };
    };
    const admitted = admitPlaintext({ ...this.#o.inbound, mode: this.#o.mode }, { remote: at(m.remote), local: at(m.local), destination: at(m.dst), destinationError: str(m.dstError) });
    this.#admitted(id, admitted);
  }

  #stream(m: Message): void {
    const id = num(m.id);
    const peer = this.#sessions.get(num(m.sid));
    if (!peer) {
      this.#send({ t: 'decide', id, status: 400, reason: 'unknown_session' });
      return;
    }
    const admitted = admitInbound(this.#o.inbound, { method: str(m.method), authority: str(m.authority), forwarded: str(m.forwarded) || undefined, baggage: str(m.baggage) || undefined, traceparent: str(m.traceparent) || undefined }, peer);
    this.#admitted(id, admitted);
  }

  /** Answers the data plane's question about connection `id`, and tracks an admitted one until its end. */
  #admitted(id: number, admitted: Admitted | Refused): void {
    const d = this.#o.inbound;
    if (!admitted.allowed) {
      this.#send({ t: 'decide', id, status: admitted.status, reason: admitted.reason });
      return;
    }
    let finished: () => void = () => undefined;
    const done = new Promise<void>((r) => (finished = r));
    const conn: NativeConnection = { record: admitted.record, finished };
    this.#conns.set(id, conn);
    d.tracker.add({
      direction: 'inbound',
      facts: admitted.facts,
      close: (reason, flags) => {
        // Recorded when the data plane confirms, with its final byte counts.
        conn.closed ??= { reason, flags };
        this.#send({ t: 'close', id });
      },
      done,
    });
    this.#send({ t: 'decide', id, status: 200, dial: formatHostPort(admitted.dial), timeoutMs: d.connectTimeoutMs });
  }

  #end(m: Message): void {
    const id = num(m.id);
    const c = this.#conns.get(id);
    if (!c) return;
    this.#conns.delete(id);
    const error = str(m.error);
    if (num(m.status) === 503) {
      refuseRecord(this.#o.inbound, c.record, error, 'UF');
    } else {
      this.#count(c.record, num(m.fromSource) || 0, num(m.toSource) || 0);
      if (c.closed) {
        c.record.finish(c.closed.reason, c.closed.flags);
        if (c.closed.flags === 'DENY') this.#o.inbound.metrics.denials.inc({ direction: 'inbound', policy: '', reason: 'policy_change' });
      } else {
        c.record.finish(error || undefined, str(m.flags) || undefined);
      }
    }
    c.finished();
  }
}
