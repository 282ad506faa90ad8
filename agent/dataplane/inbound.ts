import type { DataplaneSpans } from './span-export.ts';
import { existsSync } from 'node:fs';
import type { X509Certificate } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { formatHostPort } from '../../shared/config-parse.ts';
import { AmbitError } from '../../shared/errors.ts';
import type { Logger } from '../../shared/logger.ts';
import { bundleCertificates } from '../../shared/tls.ts';
import type { CertManager } from '../identity/cert-manager.ts';
import { serverNameFor, type PeerInfo } from '../proxy/hbone-names.ts';
import { admitInbound, admitPlaintext, forwardedFor, refuseRecord, reportDenial, type Admitted, type InboundDeps, type Refused } from '../connection/admission.ts';
import type { ConnectionRecord } from '../proxy/connection-record.ts';
import { requestTelemetry, type RequestMetrics } from '../proxy/request-metrics.ts';
import { verifyReportedChain } from './peer-chain.ts';
import { httpInbound, requestPolicyToWire } from './request-policy.ts';
import type { NativeOutbound } from './outbound.ts';
import { connectionTag, fromConnectionTag } from '../proxy/connection-tag.ts';
import { deniedBy, NO_ALLOW_MATCHED, type ConnectionFacts, type DecisionReason } from '../../shared/authorization.ts';
import { refusalOf } from '../connection/refusals.ts';
import { controlPaths, DataplaneSupervisor, type FromDataplane, type Hello, type ToDataplane } from './supervisor.ts';
import { Direction, ProtocolVersion, type End, type Live, type Plain, type SessionQuestion, type Stream } from '../../shared/proto/gen/dataplane.ts';

const DATAPLANE_BINARY = join('dataplane', 'target', 'release', 'ambit-dataplane');
/**
 * The control protocol this agent speaks with ambit-dataplane
 * (ProtocolVersion in shared/proto/dataplane.proto, which the data plane's
 * is generated from too). The data plane states its own in its hello and
 * ready line; an executable built from other sources (installed, then the
 * agent upgraded without rebuilding it) is refused instead of misread.
 */
export const DATAPLANE_PROTOCOL: number = ProtocolVersion.PROTOCOL_VERSION_CURRENT;

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


export interface NativeInboundOptions {
  readonly binary: string;
  /** The agent's data directory: the data plane's control socket and log are there. */
  readonly dataDir: string;
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
  /** Where the data plane's request reports go, and whether it writes a line per request (the access log's level). */
  readonly requests?: { readonly metrics: RequestMetrics; readonly accessLog: () => boolean };
  /** Request tracing in the data plane: told on every attach; its span batches exported (span-export.ts). */
  readonly spans?: DataplaneSpans;
}

/** One admitted tunnel while ambit-dataplane relays it. */
interface NativeConnection {
  readonly record: ConnectionRecord;
  readonly finished: () => void;
  /** Set when the agent closed it (policy change, drain deadline): the record ends with these. */
  closed?: { reason: string; flags: string; policy?: string | undefined };
}



/**
 * Inbound HBONE on :15008, and the link to ambit-dataplane that carries it:
 * the Rust process owns TLS, HTTP/2 and the byte relay; this class owns
 * every inbound decision (the peer check, admitInbound, admitPlaintext) and
 * the data plane's lifecycle through DataplaneSupervisor. Keys cross only
 * the control socket in the agent's data directory.
 *
 * The data plane outlives the agent: an agent that starts attaches to the
 * one already serving and takes over its live connections from their tags
 * (connection-tag.ts); a data plane that dies is started again.
 */
export class NativeInbound {
  readonly #o: NativeInboundOptions;
  readonly #link: DataplaneSupervisor;
  #uris: readonly string[] = [];
  #names = new Map<string, string>();
  readonly #sessions = new Map<number, PeerInfo>();
  readonly #conns = new Map<number, NativeConnection>();
  #rev = 0;
  #pushQueued = false;
  #expiryTimer: NodeJS.Timeout | undefined;
  #address: AddressInfo | undefined;
  readonly #bundle: () => X509Certificate[];
  #draining = false;
  #destroyed = false;
  /** Its executable speaks another control protocol: never started again, and the agent reports not ready. */
  #incompatible: string | undefined;
  /** It served once: a later hello is a new data plane (or this one again), which binds the listeners again. */
  #served = false;
  #onDrained: (() => void) | undefined;
  #onStarted: { resolve: (a: AddressInfo) => void; reject: (e: Error) => void } | undefined;
  readonly #unsubscribe: () => void;

  constructor(o: NativeInboundOptions) {
    this.#o = o;
    this.#bundle = bundleCertificates(o.bundlePem);
    const paths = controlPaths(o.dataDir);
    this.#link = new DataplaneSupervisor({
      binary: o.binary,
      listen: formatHostPort({ host: o.host, port: o.port }),
      controlPath: paths.socket,
      alsoAttachAt: paths.alsoAttachAt,
      protocol: DATAPLANE_PROTOCOL,
      logger: o.logger,
      onMessage: (m) => this.#handle(m),
      onLost: (why) => this.#lost(why),
    });
    // A renewed or new certificate must reach the data plane before clients ask for it.
    this.#unsubscribe = o.certs.onChange(() => this.#queuePush());
  }

  /** Attaches to ambit-dataplane (or starts it); resolves once it listens and has taken its first configuration. */
  listen(): Promise<AddressInfo> {
    if (!existsSync(this.#o.binary)) {
      return Promise.reject(new AmbitError('AMBIT_ERR_CONFIG_INVALID', `no ambit-dataplane executable at ${this.#o.binary} (build it with "npm run build:dataplane", or name it with --dataplane-binary)`, { details: { field: 'dataplaneBinary', value: this.#o.binary } }));
    }
    return new Promise((resolve, reject) => {
      this.#onStarted = { resolve, reject };
      this.#attach();
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
    this.#send({ $case: 'drain', drain: {} });
  }

  /**
   * After stopAccepting(): waits, for at most ms, until every session has
   * ended (h2's graceful shutdown: GOAWAY, streams done, everything written),
   * the outbound ones the data plane dialled included; resolves with how
   * many had not.
   */
  async flush(ms: number): Promise<number> {
    const open = (): number => this.#sessions.size + this.#o.upstreams.sessions;
    if (!this.#link.attached || open() === 0) return 0;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      new Promise<void>((r) => (this.#onDrained = r)),
      new Promise<void>((r) => (timer = setTimeout(r, ms))),
    ]);
    clearTimeout(timer);
    return open();
  }

  /**
   * The agent stops for good (after its drain): the data plane exits too,
   * and this resolves once it has (SIGKILL if it lingers), so that a stopped
   * agent leaves no process behind.
   */
  async destroy(): Promise<void> {
    this.#destroyed = true;
    this.#unsubscribe();
    clearTimeout(this.#expiryTimer);
    await this.#link.exit();
    this.#endAll('agent shutting down');
  }

  /** Why the data plane cannot serve (its executable was replaced by one of another protocol), if so. */
  get failure(): string | undefined {
    return this.#incompatible;
  }

  /** The data plane's pid, once attached. */
  get pid(): number | undefined {
    return this.#link.pid;
  }

  /** Once listen() resolved: binds every other listener in the data plane; resolves with their bound addresses. */
  listenAll(): Promise<string[]> {
    return this.#o.upstreams.listen((m) => this.#send(m));
  }

  #attach(): void {
    this.#link.attach().catch((err: Error) => {
      if (this.#onStarted) {
        this.#failStart(err);
        return;
      }
      if ((err as AmbitError).code === 'AMBIT_ERR_CONFIG_INVALID') {
        // An executable of another protocol (an upgrade half done): never
        // started again, and readiness says why.
        this.#incompatible = err.message;
        this.#o.logger.error({ binary: this.#o.binary, err: err.message }, 'ambit-dataplane speaks another control protocol; not using it');
        return;
      }
      this.#o.logger.error({ err: err.message }, 'cannot start ambit-dataplane; trying again');
      this.#retry();
    });
  }

  #retry(): void {
    setTimeout(() => {
      if (!this.#destroyed && !this.#draining) this.#attach();
    }, this.#o.restartDelayMs ?? 1_000).unref();
  }

  #failStart(err: Error): void {
    const started = this.#onStarted;
    this.#onStarted = undefined;
    started?.reject(err);
  }

  /** The data plane is gone (it exited): its connections with it. It is started again. */
  #lost(why: string): void {
    this.#sessions.clear();
    this.#endAll('ambit-dataplane exited');
    this.#onDrained?.();
    if (this.#destroyed) return;
    if (this.#onStarted) {
      this.#failStart(new AmbitError('AMBIT_ERR_INTERNAL', `ambit-dataplane exited before it served: ${why}`));
      return;
    }
    this.#o.logger.error({ why }, 'ambit-dataplane exited; starting it again');
    this.#retry();
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

  #send(m: ToDataplane): void {
    this.#link.send(m);
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
    if (!this.#link.attached) return;
    const entries = this.#uris.flatMap((uri) => {
      const e = this.#o.certs.get(uri);
      return e ? [{ uri, e }] : [];
    });
    const identities = entries.map(({ uri, e }) => ({ uri, sni: serverNameFor(uri), chain: e.chainPem, key: e.keyPem }));
    this.#send({ $case: 'config', config: { rev: ++this.#rev, bundle: this.#o.bundlePem(), identities } });
    // An expired certificate leaves the data plane when it expires, renewed
    // or not: after that no new connection may present it (outbound, not even
    // on an HBONE connection pooled before), and none be served with it.
    clearTimeout(this.#expiryTimer);
    const next = Math.min(...entries.map(({ e }) => e.notAfter));
    if (Number.isFinite(next)) {
      // setTimeout holds at most 2^31 - 1 ms (about 24 days); a later expiry is looked at again then.
      this.#expiryTimer = setTimeout(() => this.#queuePush(), Math.min(2 ** 31 - 1, Math.max(0, next - (this.#o.now ?? Date.now)()) + 1));
      this.#expiryTimer.unref();
    }
  }

  /**
   * An agent attached (this one, to a data plane it started or found
   * serving): take over what the data plane carries (live connections from
   * their tags, those that ended while no agent was attached, refusals
   * meanwhile), send the configuration, and bind the listeners again after
   * the first time.
   */
  #hello(m: Hello): void {
    const addr = m.addr;
    const port = Number(addr.slice(addr.lastIndexOf(':') + 1));
    this.#address = { address: this.#o.host, family: this.#o.host.includes(':') ? 'IPv6' : 'IPv4', port };
    const d = this.#o.inbound;
    const taken = { live: 0, ended: 0 };
    for (const c of m.live) {
      taken.live++;
      if (!this.#adopt(c)) this.#o.upstreams.adopt(c, (out) => this.#send(out));
    }
    for (const c of m.ended) {
      taken.ended++;
      this.#recordEnded(c);
    }
    const refused = m.refusedAway;
    for (const [what, n] of Object.entries(refused)) {
      d.metrics.refused.inc({ direction: what === 'out' || what === 'peer' ? 'outbound' : 'inbound', reason: 'agent_unavailable' }, n);
    }
    if (taken.live + taken.ended > 0 || Object.keys(refused).length > 0) {
      this.#o.logger.info({ pid: m.pid, live: taken.live, ended: taken.ended, refusedWhileAway: refused }, 'attached to the ambit-dataplane already serving: took over its connections');
    }
    // Off too: a data plane that served a tracing agent before must stop.
    this.#send({ $case: 'tracing', tracing: this.#o.spans?.config ?? { enabled: false, ratio: 1, parentBased: true } });
    this.#push();
    this.#o.requests?.metrics.attached();
    this.sendRequestTelemetry();
    if (this.#served) void this.listenAll().catch((err: Error) => this.#o.logger.error({ err: err.message }, 'ambit-dataplane could not serve its listeners again'));
  }

  /** Tells the data plane how to report requests (again, when the access log's level changed). */
  sendRequestTelemetry(): void {
    if (this.#o.requests && this.#link.attached) this.#send({ $case: 'requestTelemetry', requestTelemetry: requestTelemetry(this.#o.requests.accessLog()) });
  }

  /** A connection that ended while no agent was attached: counted and logged from its tag. */
  #recordEnded(c: End): void {
    const d = this.#o.inbound;
    const { record } = fromConnectionTag(c.tag, 'inbound', { metrics: d.metrics, log: d.accessLog, state: d.state });
    record.open();
    this.#count(record, c.fromSource, c.toSource);
    record.finish(c.error || undefined);
  }

  /** A live connection a previous agent admitted, from its tag: recorded and policy-checked again from now on. False: not an inbound one. */
  #adopt(c: Live): boolean {
    const d = this.#o.inbound;
    const tag = c.tag;
    if (!tag.includes('"d":"inbound"')) return false;
    const { record, facts } = fromConnectionTag(tag, 'inbound', { metrics: d.metrics, log: d.accessLog, state: d.state });
    record.open();
    this.#count(record, c.fromSource, c.toSource);
    this.#track(c.id, record, facts);
    return true;
  }

  #handle(m: FromDataplane): void {
    const metrics = this.#o.inbound.metrics;
    switch (m.$case) {
      case 'hello':
        this.#hello(m.hello);
        return;
      case 'ack':
        if (this.#onStarted && this.#address) {
          const started = this.#onStarted;
          this.#onStarted = undefined;
          this.#served = true;
          this.#o.logger.info({ pid: this.#link.pid, address: formatHostPort({ host: this.#o.host, port: this.#address.port }) }, 'ambit-dataplane serves inbound HBONE');
          started.resolve(this.#address);
        }
        return;
      case 'nack':
        this.#o.logger.error({ rev: m.nack.rev, err: m.nack.message }, 'ambit-dataplane refused its configuration; the previous one stays in force');
        if (this.#onStarted) this.#failStart(new AmbitError('AMBIT_ERR_INTERNAL', `ambit-dataplane refused its first configuration: ${m.nack.message}`));
        return;
      case 'error':
        if (this.#o.upstreams.handle(m)) return;
        this.#o.logger.error({ code: m.error.code, err: m.error.message }, 'ambit-dataplane reported an error');
        if (this.#onStarted) this.#failStart(new AmbitError('AMBIT_ERR_INTERNAL', `ambit-dataplane: ${m.error.message}`));
        return;
      case 'refused':
        // Refused before the agent was asked (a failed handshake, a malformed SOCKS5 negotiation).
        metrics.refused.inc({ direction: m.refused.direction === Direction.DIRECTION_OUTBOUND ? 'outbound' : 'inbound', reason: refusalOf(m.refused.reason) });
        if (m.refused.error) this.#o.logger.debug({ reason: m.refused.reason, err: m.refused.error }, 'connection refused by ambit-dataplane');
        return;
      case 'session':
        return this.#session(m.session);
      case 'sessionEnd':
        this.#sessions.delete(m.sessionEnd.sid);
        return;
      case 'denials':
        // Counted in the data plane, reported every second: nothing per request crosses.
        for (const { policy, reason, count } of m.denials.denials) {
          const by = deniedBy({ policy: policy || undefined, reason: reason as DecisionReason });
          metrics.requestDenials.inc({ policy: by, reason }, count);
          this.#o.logger.info({ policy: by, reason, requests: count }, 'requests denied by authorization policy');
        }
        return;
      case 'drained':
        this.#onDrained?.();
        return;
      case 'spans':
        this.#o.spans?.export(m.spans);
        return;
      case 'stream':
        return this.#stream(m.stream);
      case 'plain':
        return this.#plain(m.plain);
      case 'open': {
        const c = this.#conns.get(m.open.id);
        if (!c) {
          this.#o.upstreams.handle(m);
          return;
        }
        c.record.open();
        // Closed (policy change, drain deadline) while it was being opened: the
        // data plane could not act on it then, since it had nothing to close.
        if (c.closed) this.#send({ $case: 'close', close: { id: m.open.id } });
        return;
      }
      case 'bytes':
        for (const { id, fromSource: from, toSource: to } of m.bytes.counts) {
          const c = this.#conns.get(id);
          if (c) this.#count(c.record, from, to);
          else this.#o.upstreams.count(id, from, to);
        }
        return;
      case 'requests':
        this.#o.requests?.metrics.add(m.requests);
        return;
      case 'end':
        if (this.#conns.has(m.end.id)) return this.#end(m.end);
        if (this.#o.upstreams.handle(m)) return;
        // A connection that ended just as this agent attached (after the data
        // plane's hello listed what was live): recorded from its tag.
        if (m.end.tag) this.#recordEnded(m.end);
        return;
      default:
        if (this.#o.upstreams.handle(m)) return;
        this.#o.logger.warn({ message: m.$case }, 'ambit-dataplane sent a message the inbound half does not take');
    }
  }

  #count(record: ConnectionRecord, fromSource: number, toSource: number): void {
    if (fromSource > record.bytesFromSource) record.fromSource(fromSource - record.bytesFromSource);
    if (toSource > record.bytesToSource) record.toSource(toSource - record.bytesToSource);
  }


  /** The same peer check as HboneServer's: chain to the bundle, our trust domain, a workload identity. */
  #session(m: SessionQuestion): void {
    const sid = m.sid;
    const remote = m.remote;
    try {
      const identity = verifyReportedChain(m.chain, this.#bundle(), this.#o.trustDomain, (this.#o.now ?? Date.now)(), 'client');
      if (identity.kind !== 'workload') throw new AmbitError('AMBIT_ERR_AUTH_DENIED', `${identity.uri} is not a workload identity`);
      this.#sessions.set(sid, { identity, servedIdentity: this.#names.get(m.sni.toLowerCase()) ?? '', remoteAddress: remote });
      this.#send({ $case: 'session', session: { sid, ok: true } });
    } catch (err) {
      this.#o.inbound.metrics.refused.inc({ direction: 'inbound', reason: 'peer_certificate' });
      this.#o.logger.warn({ err: (err as Error).message, peer: remote }, 'HBONE peer rejected');
      this.#send({ $case: 'session', session: { sid, ok: false } });
    }
  }

  /** A connection redirected to :15006 (inbound plaintext capture). */
  #plain(m: Plain): void {
    const id = m.id;
    const at = (e: { address: string; port: number } | undefined): { address: string; port: number } => ({ address: e?.address ?? '', port: e?.port ?? 0 });
    const admitted = admitPlaintext({ ...this.#o.inbound, mode: this.#o.mode }, { remote: at(m.remote), local: at(m.local), destination: at(m.dst), destinationError: m.dstError });
    this.#admitted(id, admitted);
  }

  #stream(m: Stream): void {
    const id = m.id;
    const peer = this.#sessions.get(m.sid);
    if (!peer) {
      this.#send({ $case: 'decide', decide: { id, status: 400, reason: 'unknown_session', dial: '', timeoutMs: 0, tag: '', http: undefined } });
      return;
    }
    const admit = (): void => this.#admitted(id, admitInbound(this.#o.inbound, { method: m.method, authority: m.authority, forwarded: m.forwarded || undefined, baggage: m.baggage || undefined, traceparent: m.traceparent || undefined }, peer));
    // Node scope: the claimed source address is judged once the state holds what is at it (a timeout leaves it unverified, as an unknown address is).
    const claimed = forwardedFor(m.forwarded || undefined);
    const wait = claimed === undefined ? undefined : this.#o.inbound.awaitDestination?.(claimed);
    if (!wait) {
      admit();
      return;
    }
    void wait.catch(() => undefined).then(() => {
      if (this.#sessions.get(m.sid) === peer) admit();
    });
  }

  /** Answers the data plane's question about connection `id`, and tracks an admitted one until its end. */
  #admitted(id: number, admitted: Admitted | Refused): void {
    const d = this.#o.inbound;
    if (!admitted.allowed) {
      this.#send({ $case: 'decide', decide: { id, status: admitted.status, reason: admitted.reason, dial: '', timeoutMs: 0, tag: '', http: undefined } });
      return;
    }
    this.#track(id, admitted.record, admitted.facts);
    const http = httpInbound(admitted.protocol, d.state.authorizer.requestPolicy(admitted.facts), admitted.record);
    this.#send({ $case: 'decide', decide: { id, status: 200, reason: '', dial: formatHostPort(admitted.dial), timeoutMs: d.connectTimeoutMs, tag: connectionTag(admitted.record, admitted.facts), http } });
  }

  /** Tracks a connection the data plane carries until its end: for the drain and, with facts, policy re-checks. */
  #track(id: number, record: ConnectionRecord, facts: ConnectionFacts | undefined): void {
    let finished: () => void = () => undefined;
    const done = new Promise<void>((r) => (finished = r));
    const conn: NativeConnection = { record, finished };
    this.#conns.set(id, conn);
    this.#o.inbound.tracker.add({
      direction: 'inbound',
      facts,
      close: (reason, flags, policy) => {
        // Recorded when the data plane confirms, with its final byte counts.
        conn.closed ??= { reason, flags, policy };
        this.#send({ $case: 'close', close: { id } });
      },
      authorizeRequests: (policy) => this.#send({ $case: 'requestPolicy', requestPolicy: { id, policy: requestPolicyToWire(policy) } }),
      done,
    });
  }


  #end(m: End): void {
    const id = m.id;
    const c = this.#conns.get(id);
    if (!c) return;
    this.#conns.delete(id);
    const error = m.error;
    if (m.status === 503) {
      // The data plane's error is `workload_unreachable: <errno>`: the record keeps it, the metric counts the reason.
      refuseRecord(this.#o.inbound, c.record, 'workload_unreachable', error);
    } else {
      this.#count(c.record, m.fromSource, m.toSource);
      if (c.closed) {
        if (c.closed.policy !== undefined) c.record.policy = c.closed.policy;
        c.record.finish(c.closed.reason, c.closed.flags);
        if (c.closed.flags === 'DENY') {
          this.#o.inbound.metrics.denials.inc({ direction: 'inbound', policy: c.closed.policy ?? '', reason: 'policy_change' });
          const policy = c.closed.policy === NO_ALLOW_MATCHED ? '' : c.closed.policy ?? '';
          reportDenial(this.#o.inbound, c.record, Number(c.record.dst.addr.slice(c.record.dst.addr.lastIndexOf(':') + 1)) || 0, policy, 'policy_change');
        }
      } else {
        c.record.finish(error || undefined, m.flags || undefined);
      }
    }
    c.finished();
  }
}
