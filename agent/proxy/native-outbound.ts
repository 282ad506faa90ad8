import type { X509Certificate } from 'node:crypto';
import { formatHostPort } from '../../shared/config-parse.ts';
import { AmbitError } from '../../shared/errors.ts';
import type { Logger } from '../../shared/logger.ts';
import type { UpstreamListener } from '../config.ts';
import type { ConnectionRecord } from './connection-record.ts';
import { num, str, verifyReportedChain, type Message } from './dataplane-messages.ts';
import { isSourceWorkload } from './explicit-listeners.ts';
import { serverNameFor } from './hbone-server.ts';
import { planOutbound, refuseOutbound, tunnelFailure, type OutboundDeps } from './outbound.ts';
import { TunnelError } from './tunnel-pool.ts';

export interface NativeUpstreamsOptions {
  /** The upstream listeners the data plane serves (--upstreams). */
  readonly upstreams: readonly UpstreamListener[];
  /** The loopback address they listen on. */
  readonly host: string;
  /** The outbound decision path (planOutbound), shared with the node:http2 data path. */
  readonly outbound: OutboundDeps;
  readonly trustDomain: string;
  readonly bundle: () => X509Certificate[];
  readonly logger: Logger;
  readonly now?: () => number;
  readonly procRoot?: string;
}

/** One outbound connection the data plane carries, from its route to its end. */
interface NativeConnection {
  readonly record: ConnectionRecord;
  readonly kind: 'tunnel' | 'direct';
  readonly target: string;
  readonly finished: () => void;
  opened: boolean;
  /** Set when the agent closed it (drain deadline): the record ends with these. */
  closed?: { reason: string; flags: string };
}

type Send = (m: Message) => void;


/**
 * The upstream listeners when ambit-dataplane carries outbound traffic
 * (`--dataplane native`): the data plane binds them, owns the HBONE client
 * pool (TLS with the source's certificate, HTTP/2 CONNECT) and the relay;
 * this class decides, with the node:http2 path's code: it verifies the
 * client is the listener's workload (isSourceWorkload), plans the route
 * (planOutbound: service resolution, load balancing, passthrough), checks
 * each dialled server is exactly the destination (verifyPeer), and keeps
 * the records, metrics, access log lines and span.
 *
 * Messages reach it through NativeInbound, which owns the child process.
 */
export class NativeUpstreams {
  readonly #o: NativeUpstreamsOptions;
  #send: Send = () => undefined;
  readonly #conns = new Map<number, NativeConnection>();
  #bound = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();
  #sessions = 0;
  /** Counts data plane processes: a route decided for one must not reach the next (ids start again). */
  #generation = 0;

  constructor(o: NativeUpstreamsOptions) {
    this.#o = o;
  }

  /** Asks the data plane (just started, or started again) to bind every upstream listener; resolves once all are bound. */
  listen(send: Send): Promise<void> {
    this.#send = send;
    this.#generation++;
    return Promise.all(this.#o.upstreams.map((u, lid) => new Promise<void>((resolve, reject) => {
      this.#bound.set(lid, { resolve, reject });
      send({ t: 'listen', lid, addr: formatHostPort({ host: this.#o.host, port: u.localPort }) });
    }))).then(() => undefined);
  }

  /** Handles a message about outbound traffic; false when it is not one. */
  handle(m: Message): boolean {
    switch (m.t) {
      case 'bound':
        this.#settle(num(m.lid));
        return true;
      case 'error':
        if (typeof m.lid !== 'number') return false;
        this.#settle(m.lid, new AmbitError('AMBIT_ERR_INTERNAL', `upstream listener ${this.#describe(m.lid)}: ${str(m.message)}`));
        return true;
      case 'out':
        this.#out(m);
        return true;
      case 'peer':
        this.#peer(m);
        return true;
      case 'dial':
        this.#o.outbound.metrics.poolDials.inc({ result: m.ok === true ? 'ok' : 'error' });
        if (m.ok === true) {
          this.#sessions++;
          this.#o.outbound.metrics.poolConnections.inc();
        }
        return true;
      case 'dialEnd':
        this.#sessions--;
        this.#o.outbound.metrics.poolConnections.dec();
        return true;
      case 'open':
        return this.#opened(num(m.id));
      case 'end':
        return this.#end(m);
      default:
        return false;
    }
  }

  /** HBONE connections the data plane dialled that are not yet closed (a drain waits for them). */
  get sessions(): number {
    return this.#sessions;
  }

  /** Byte counts of a live connection, if it is one of ours. */
  count(id: number, fromSource: number, toSource: number): boolean {
    const c = this.#conns.get(id);
    if (!c) return false;
    this.#count(c.record, fromSource, toSource);
    return true;
  }

  /** The data plane is gone: every connection it carried ends now, recorded with why. */
  endAll(error: string): void {
    this.#generation++;
    this.#o.outbound.metrics.poolConnections.dec(this.#sessions);
    this.#sessions = 0;
    for (const [id, c] of this.#conns) {
      this.#conns.delete(id);
      if (c.opened && c.kind === 'tunnel') this.#o.outbound.metrics.poolStreams.dec();
      c.record.finish(c.closed?.reason ?? error, c.closed?.flags ?? 'DC');
      c.finished();
    }
    for (const [lid] of this.#bound) this.#settle(lid, new AmbitError('AMBIT_ERR_INTERNAL', `upstream listener ${this.#describe(lid)}: ${error}`));
  }

  #describe(lid: number): string {
    const u = this.#o.upstreams[lid];
    return u ? `${formatHostPort({ host: this.#o.host, port: u.localPort })} (${u.namespace}/${u.workload})` : `#${lid}`;
  }

  #settle(lid: number, err?: Error): void {
    const b = this.#bound.get(lid);
    this.#bound.delete(lid);
    if (err) {
      if (b) b.reject(err);
      else this.#o.logger.error({ err: err.message }, 'ambit-dataplane could not serve an upstream listener');
    } else {
      b?.resolve();
    }
  }

  #count(record: ConnectionRecord, fromSource: number, toSource: number): void {
    if (fromSource > record.bytesFromSource) record.fromSource(fromSource - record.bytesFromSource);
    if (toSource > record.bytesToSource) record.toSource(toSource - record.bytesToSource);
  }

  /** A connection on an upstream listener: is it the listener's workload, and where does it go? */
  #out(m: Message): void {
    const id = num(m.id);
    const u = this.#o.upstreams[num(m.lid)];
    const [remoteAddress, remotePort] = Array.isArray(m.remote) ? (m.remote as [string, number]) : ['', 0];
    const [localAddress, localPort] = Array.isArray(m.local) ? (m.local as [string, number]) : ['', 0];
    const d = this.#o.outbound;
    const generation = this.#generation;
    const source = u ? d.state.localWorkloadByName(u.namespace, u.workload) : undefined;
    const verified = source ? isSourceWorkload({ remoteAddress, remotePort, localAddress, localPort }, source, this.#o.procRoot) : Promise.resolve(false);
    void verified.then((ok) => {
      // The process that asked has exited (its connection with it); a new one reuses ids.
      if (generation !== this.#generation) return;
      if (!ok || !source || !u) {
        d.metrics.refused.inc({ direction: 'outbound', reason: 'source_not_verified' });
        this.#o.logger.warn({ workload: u ? `${u.namespace}/${u.workload}` : '', peer: remoteAddress, port: u?.localPort }, 'upstream client is not the workload the listener belongs to; refused');
        this.#send({ t: 'route', id, verdict: 'refuse' });
        return;
      }
      const { record, plan } = planOutbound(d, { source, srcAddr: remoteAddress, host: u.destination.host, port: u.destination.port });
      if (plan.kind === 'refuse') {
        refuseOutbound(d, record, plan.failure, plan.detail, plan.flags);
        this.#send({ t: 'route', id, verdict: 'refuse' });
        return;
      }
      let finished: () => void = () => undefined;
      const done = new Promise<void>((r) => (finished = r));
      const target = plan.kind === 'direct' ? formatHostPort({ host: plan.host, port: plan.port }) : plan.request.hboneAddress;
      const conn: NativeConnection = { record, kind: plan.kind, target, finished, opened: false };
      this.#conns.set(id, conn);
      // Tracked from the start, as on the node:http2 path: a drain waits for (or cuts) a tunnel still opening.
      d.tracker.add({
        direction: 'outbound',
        close: (reason, flags) => {
          conn.closed ??= { reason, flags };
          this.#send({ t: 'close', id });
        },
        done,
      });
      if (plan.kind === 'direct') {
        this.#send({ t: 'route', id, verdict: 'direct', dial: target, timeoutMs: d.connectTimeoutMs });
        return;
      }
      const r = plan.request;
      this.#send({
        t: 'route', id, verdict: 'tunnel',
        hbone: r.hboneAddress, sni: serverNameFor(r.destination.uri), source: r.source.uri, expect: r.destination.uri,
        authority: r.authority,
        headers: Object.entries(r.headers).flatMap(([k, v]) => (v === undefined ? [] : [[k, String(v)]])),
        timeoutMs: d.connectTimeoutMs,
      });
    }).catch((err: unknown) => {
      // A bug in deciding must not leave the client waiting, nor crash the agent.
      this.#o.logger.error({ err: (err as Error).message, id }, 'deciding an upstream connection failed; refused');
      if (generation === this.#generation && !this.#conns.has(id)) this.#send({ t: 'route', id, verdict: 'refuse' });
    });
  }

  #opened(id: number): boolean {
    const c = this.#conns.get(id);
    if (!c) return false;
    c.opened = true;
    if (c.kind === 'tunnel') this.#o.outbound.metrics.poolStreams.inc();
    c.record.open();
    // Closed (drain deadline) while it was being opened, when the data plane had nothing to close yet.
    if (c.closed) this.#send({ t: 'close', id });
    return true;
  }

  #end(m: Message): boolean {
    const id = num(m.id);
    const c = this.#conns.get(id);
    if (!c) return false;
    this.#conns.delete(id);
    const d = this.#o.outbound;
    const error = str(m.error);
    if (m.failed === true) {
      // It never opened: the client's connection was reset.
      if (c.closed) c.record.finish(c.closed.reason, c.closed.flags);
      else if (c.kind === 'direct') refuseOutbound(d, c.record, 'unreachable', `passthrough to ${c.target} failed: ${error}`, 'UF');
      else {
        const te = new TunnelError(num(m.status) || 0, str(m.reason), error);
        const { failure, flags } = tunnelFailure(d, te);
        refuseOutbound(d, c.record, failure, te.message, flags);
      }
    } else {
      if (c.opened && c.kind === 'tunnel') d.metrics.poolStreams.dec();
      this.#count(c.record, num(m.fromSource) || 0, num(m.toSource) || 0);
      if (c.closed) c.record.finish(c.closed.reason, c.closed.flags);
      else c.record.finish(error || undefined);
    }
    c.finished();
    return true;
  }

  /** The same server check as the node:http2 pool's: chains to the bundle, our trust domain, exactly the destination. */
  #peer(m: Message): void {
    const pid = num(m.pid);
    const expected = str(m.expect);
    try {
      const identity = verifyReportedChain(m.chain, this.#o.bundle(), this.#o.trustDomain, (this.#o.now ?? Date.now)(), 'server');
      if (identity.uri !== expected) throw new AmbitError('AMBIT_ERR_AUTH_DENIED', `peer presented ${identity.uri}, expected ${expected}`);
      this.#send({ t: 'peer', pid, ok: true });
    } catch (err) {
      this.#o.logger.warn({ err: (err as Error).message, peer: str(m.hbone), expected }, 'HBONE server rejected');
      this.#send({ t: 'peer', pid, ok: false });
    }
  }
}
