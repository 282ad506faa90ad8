import type { X509Certificate } from 'node:crypto';
import { formatHostPort } from '../../shared/config-parse.ts';
import { AmbitError } from '../../shared/errors.ts';
import type { Logger } from '../../shared/logger.ts';
import type { ConnectionRecord } from '../proxy/connection-record.ts';
import { verifyReportedChain } from './peer-chain.ts';
import type { FromDataplane, ToDataplane } from './supervisor.ts';
import { ListenerKind, RouteVerdict, type AttemptResult, type Ejection, type End, type Endpoint, type HttpRouteTable, type Live, type Out, type PeerQuestion } from '../../shared/proto/gen/dataplane.ts';
import { compileHttpService, httpTableKey, type HttpServiceTable, type HttpSettings } from '../connection/http-services.ts';
import { compileBackendService, compileHttpRoutes, routeTableKey, type BackendService, type RouteInputs } from '../connection/http-routes.ts';
import type { ResolvedService } from '../state/mesh-state.ts';
import type { Workload } from '../../shared/resources/types.ts';
import { connectionTag, fromConnectionTag } from '../proxy/connection-tag.ts';
import { PASSTHROUGH } from '../proxy/istio-names.ts';
import { resolveOutboundSource, type OutboundEntry, type SourceRefusal } from '../connection/outbound-source.ts';
import { serverNameFor } from '../proxy/hbone-names.ts';
import { isConnectFailure, planOutbound, refuseOutbound, TunnelError, tunnelFailure, type OutboundDeps, type OutboundFailure, type TunnelRequest } from '../connection/routing.ts';

/** A listener ambit-dataplane binds for the agent: an outbound entry point, or inbound plaintext capture (:15006). */
export interface DataplaneListener {
  readonly entry: OutboundEntry | { readonly kind: 'plaintext' };
  /** host:port to bind. */
  readonly addr: string;
  /** What the listener is, for messages (e.g. "SOCKS5", "upstream shop/client"). */
  readonly label: string;
}

export interface NativeOutboundOptions {
  /** Every listener the data plane binds for this agent (lid = index). */
  readonly listeners: readonly DataplaneListener[];
  /** The outbound decision path (planOutbound). */
  readonly outbound: OutboundDeps;
  readonly trustDomain: string;
  readonly bundle: () => X509Certificate[];
  readonly logger: Logger;
  readonly now?: () => number;
  readonly procRoot?: string;
  /** The agent's --address (the source proof's shared address). */
  readonly agentAddress: string;
  /** Passive health and circuit breaking of HTTP services, sent with their tables. */
  readonly http: HttpSettings;
  /** The mesh's HTTPRoutes, GRPCRoutes, FaultInjections and ReferenceGrants, read when route tables are compiled (absent: no routes). */
  readonly routes?: () => RouteInputs;
}

/** An HTTP endpoint the data plane ejected (told with `ejection`), for /config_dump and metrics. */
export interface HttpEjection {
  readonly service: string;
  readonly endpoint: string;
  readonly workload: string;
  readonly reason: string;
  readonly since: number;
  readonly until: number;
  readonly ejections: number;
}

/** One outbound connection the data plane carries, from its route to its end. */
interface NativeConnection {
  readonly record: ConnectionRecord;
  /** http: served per request by the data plane (its own upstream connections, not one tunnel). */
  readonly kind: 'tunnel' | 'direct' | 'http';
  readonly target: string;
  readonly finished: () => void;
  /** A tunnel's plan: the endpoints its attempts go to, in order. */
  readonly request?: TunnelRequest;
  /** http: the route table its requests are decided by ('' or absent: none). */
  readonly routeTable?: string;
  opened: boolean;
  /** Set when the agent closed it (drain deadline): the record ends with these. */
  closed?: { reason: string; flags: string };
}

type Send = (m: ToDataplane) => void;

/** What each entry point is to the data plane. */
const KIND_OF: Record<DataplaneListener['entry']['kind'], ListenerKind> = {
  upstream: ListenerKind.LISTENER_KIND_UPSTREAM,
  socks5: ListenerKind.LISTENER_KIND_SOCKS5,
  capture: ListenerKind.LISTENER_KIND_CAPTURE,
  plaintext: ListenerKind.LISTENER_KIND_PLAINTEXT,
};

/** The SOCKS5 reply (RFC 1928) for a connection refused before its tunnel was tried. */
const SOCKS_REPLY_OF: Record<OutboundFailure | SourceRefusal, number> = {
  denied: 2,
  passthrough_denied: 2,
  source_not_verified: 2,
  unknown_source: 2,
  no_original_destination: 1,
  loop: 1,
  no_route: 4,
  unreachable: 4,
  refused: 5,
};

/** The log line of a connection refused before routing: one stable message per entry point and reason, the particulars in fields. */
function refusalMessage(kind: OutboundEntry['kind'], reason: SourceRefusal): string {
  if (reason === 'source_not_verified') return kind === 'socks5' ? 'SOCKS5 client is not the workload it names; refused' : 'upstream client is not the workload the listener belongs to; refused';
  if (reason === 'unknown_source') return 'captured connection from no known local workload; reset';
  if (reason === 'loop') return 'connection to the capture port itself; reset';
  return 'captured connection without an original destination; reset';
}

const endpoint = (e: Endpoint | undefined): { address: string; port: number } => ({ address: e?.address ?? '', port: e?.port ?? 0 });

/** A route with nothing but its verdict said. */
const route = (id: number, verdict: RouteVerdict, more: Partial<Omit<Extract<ToDataplane, { $case: 'route' }>['route'], 'id' | 'verdict'>> = {}): ToDataplane => ({
  $case: 'route',
  route: { id, verdict, dial: '', source: '', attempts: [], timeoutMs: 0, reply: 0, tag: '', service: '', sourceWorkload: '', sourceNamespace: '', routeTable: '', ...more },
});

/**
 * The outbound entry points ambit-dataplane serves (upstream listeners,
 * SOCKS5, transparent capture; docs/architecture.md): the data plane binds
 * them, reads what the client says (SOCKS5 request, original destination),
 * owns the HBONE client pool (TLS with the source's certificate, HTTP/2
 * CONNECT) and the relay; this class decides. It proves the client is the
 * workload it claims to be (resolveOutboundSource), plans the route
 * (planOutbound: service resolution, load balancing, passthrough), checks
 * each dialled server is exactly the destination (verifyPeer), and keeps
 * the records, metrics, access log lines and span. It also binds the
 * inbound plaintext capture listener, whose connections NativeInbound
 * decides.
 *
 * Messages reach it through NativeInbound, which owns the child process.
 */
export class NativeOutbound {
  readonly #o: NativeOutboundOptions;
  #send: Send = () => undefined;
  readonly #conns = new Map<number, NativeConnection>();
  #bound = new Map<number, { resolve: (addr: string) => void; reject: (e: Error) => void }>();
  #sessions = 0;
  /** Counts data plane processes: a route decided for one must not reach the next (ids start again). */
  #generation = 0;
  /** HTTP service tables the data plane holds, by key: what each was compiled from and what was sent. */
  readonly #httpTables = new Map<string, { resolved: ResolvedService; locality: string; as?: BackendService['as']; sent: string }>();
  /** Route tables the data plane holds, by key: the service port, clients and what was sent. */
  readonly #routeTables = new Map<string, { parent: ResolvedService; locality: string; namespace: string; table: HttpRouteTable; sent: string }>();
  /** HTTP endpoints the data plane has ejected, by "service endpoint". */
  readonly #httpEjections = new Map<string, HttpEjection>();

  constructor(o: NativeOutboundOptions) {
    this.#o = o;
  }

  /** Asks the data plane (just started, or started again) to bind every listener; resolves with their bound addresses once all are bound. */
  listen(send: Send): Promise<string[]> {
    this.#send = send;
    this.#generation++;
    // A data plane started again holds no table: each is sent again before its next route.
    this.#httpTables.clear();
    this.#routeTables.clear();
    this.#httpEjections.clear();
    return Promise.all(this.#o.listeners.map((l, lid) => new Promise<string>((resolve, reject) => {
      this.#bound.set(lid, { resolve, reject });
      send({ $case: 'listen', listen: { lid, addr: l.addr, kind: KIND_OF[l.entry.kind] } });
    })));
  }

  /** Handles a message about outbound traffic; false when it is not one. */
  handle(m: FromDataplane): boolean {
    switch (m.$case) {
      case 'bound':
        this.#settle(m.bound.lid, undefined, m.bound.addr);
        return true;
      case 'error':
        if (m.error.lid === undefined) return false;
        this.#settle(m.error.lid, new AmbitError('AMBIT_ERR_INTERNAL', `${this.#describe(m.error.lid)}: ${m.error.message}`));
        return true;
      case 'out':
        this.#out(m.out);
        return true;
      case 'peer':
        this.#peer(m.peer);
        return true;
      case 'dial':
        this.#o.outbound.metrics.poolDials.inc({ result: m.dial.ok ? 'ok' : 'error' });
        if (m.dial.ok) {
          this.#sessions++;
          this.#o.outbound.metrics.poolConnections.inc();
        }
        return true;
      case 'dialEnd':
        this.#sessions--;
        this.#o.outbound.metrics.poolConnections.dec();
        return true;
      case 'attempt':
        return this.#attempt(m.attempt);
      case 'open':
        return this.#opened(m.open.id);
      case 'end':
        return this.#end(m.end);
      case 'ejection':
        this.#ejection(m.ejection);
        return true;
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

  /**
   * A live outbound connection a previous agent routed, from its tag (the
   * data plane kept carrying it while no agent was attached): recorded from
   * now on, and tracked for the drain.
   */
  adopt(c: Live, send: Send): void {
    this.#send = send;
    const d = this.#o.outbound;
    const { record } = fromConnectionTag(c.tag, 'outbound', { metrics: d.metrics, log: d.accessLog, state: d.state });
    record.open();
    this.#count(record, c.fromSource, c.toSource);
    const kind = record.service === PASSTHROUGH ? 'direct' : 'tunnel';
    this.#track(c.id, { record, kind, target: record.dst.addr, opened: true });
    if (kind === 'tunnel') d.metrics.poolStreams.inc();
  }

  /**
   * Keeps a connection the data plane carries until its end, and tracks it
   * for the drain (which may close it: recorded when the data plane
   * confirms, with its final byte counts).
   */
  #track(id: number, c: Omit<NativeConnection, 'finished'>): NativeConnection {
    let finished: () => void = () => undefined;
    const done = new Promise<void>((r) => (finished = r));
    const conn: NativeConnection = { ...c, finished };
    this.#conns.set(id, conn);
    this.#o.outbound.tracker.add({
      direction: 'outbound',
      close: (reason, flags) => {
        conn.closed ??= { reason, flags };
        this.#send({ $case: 'close', close: { id } });
      },
      done,
    });
    return conn;
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
    for (const [lid] of this.#bound) this.#settle(lid, new AmbitError('AMBIT_ERR_INTERNAL', `${this.#describe(lid)}: ${error}`));
  }

  #describe(lid: number): string {
    const l = this.#o.listeners[lid];
    return l ? `${l.label} listener ${l.addr}` : `listener #${lid}`;
  }

  #settle(lid: number, err?: Error, addr = ''): void {
    const b = this.#bound.get(lid);
    this.#bound.delete(lid);
    if (err) {
      if (b) b.reject(err);
      else this.#o.logger.error({ err: err.message }, 'ambit-dataplane could not serve a listener');
    } else {
      b?.resolve(addr);
    }
  }

  #count(record: ConnectionRecord, fromSource: number, toSource: number): void {
    if (fromSource > record.bytesFromSource) record.fromSource(fromSource - record.bytesFromSource);
    if (toSource > record.bytesToSource) record.toSource(toSource - record.bytesToSource);
  }

  /** A connection on an outbound entry point: which workload it proves to be, and where it goes. */
  #out(m: Out): void {
    const id = m.id;
    const listener = this.#o.listeners[m.lid];
    const d = this.#o.outbound;
    const generation = this.#generation;
    const entry = listener?.entry;
    const socks = entry?.kind === 'socks5';
    const refuse = (reason: OutboundFailure | SourceRefusal): void => this.#send(route(id, RouteVerdict.ROUTE_VERDICT_REFUSE, { reply: socks ? SOCKS_REPLY_OF[reason] : 0 }));
    if (!entry || entry.kind === 'plaintext') {
      this.#send(route(id, RouteVerdict.ROUTE_VERDICT_REFUSE));
      return;
    }
    const arrival = { remote: endpoint(m.remote), local: endpoint(m.local), user: m.user, destination: m.dst === undefined ? undefined : endpoint(m.dst), destinationError: m.dstError, ownerUid: m.uid };
    void resolveOutboundSource({ state: d.state, agentAddress: this.#o.agentAddress, procRoot: this.#o.procRoot }, entry, arrival).then((verdict) => {
      // The process that asked has exited (its connection with it); a new one reuses ids.
      if (generation !== this.#generation) return;
      if (!verdict.ok) {
        d.metrics.refused.inc({ direction: 'outbound', reason: verdict.reason });
        this.#o.logger.warn({ listener: listener.label, peer: arrival.remote.address, port: arrival.remote.port, user: arrival.user || undefined, reason: verdict.reason, detail: verdict.detail }, refusalMessage(entry.kind, verdict.reason));
        refuse(verdict.reason);
        return;
      }
      const { source, destination } = verdict;
      // Node scope: a destination the agent does not follow yet is asked of the controller first, within the connect timeout.
      const wait = d.awaitDestination?.(destination.address);
      if (!wait) {
        this.#route(id, source, arrival.remote.address, destination, refuse);
        return;
      }
      return wait.then(() => {
        if (generation === this.#generation) this.#route(id, source, arrival.remote.address, destination, refuse);
      }, (err: unknown) => {
        if (generation !== this.#generation) return;
        d.metrics.refused.inc({ direction: 'outbound', reason: 'unreachable' });
        this.#o.logger.warn({ listener: listener.label, source: `${source.metadata.namespace}/${source.metadata.name}`, destination: formatHostPort({ host: destination.address, port: destination.port }), err: (err as Error).message }, 'outbound connection refused: its destination is not known yet');
        refuse('unreachable');
      });
    }).catch((err: unknown) => {
      // A bug in deciding must not leave the client waiting, nor crash the agent.
      this.#o.logger.error({ err: (err as Error).message, id }, 'deciding an outbound connection failed; refused');
      if (generation === this.#generation && !this.#conns.has(id)) this.#send(route(id, RouteVerdict.ROUTE_VERDICT_REFUSE, { reply: socks ? 1 : 0 }));
    });
  }

  /** Plans a connection whose source is proven and sends the data plane its route. */
  #route(id: number, source: Workload, srcAddr: string, destination: { address: string; port: number }, refuse: (reason: OutboundFailure | SourceRefusal) => void): void {
    const d = this.#o.outbound;
    const { record, plan } = planOutbound(d, { source, srcAddr, host: destination.address, port: destination.port });
    if (plan.kind === 'refuse') {
      refuseOutbound(d, record, plan.failure, plan.detail, plan.flags);
      refuse(plan.failure);
      return;
    }
    const target = plan.kind === 'direct' ? formatHostPort({ host: plan.host, port: plan.port }) : plan.request.hboneAddress;
    // An HTTP service port: the data plane serves the connection per request, over this table.
    const table = plan.kind === 'tunnel' && plan.request.resolved ? this.#httpTable(plan.request.resolved, source.spec.locality) : undefined;
    const kind = table === undefined ? plan.kind : 'http';
    // Its routes (for the source's namespace), sent after the tables their backends name.
    const routeTable = table !== undefined && plan.kind === 'tunnel' && plan.request.resolved ? this.#routeTable(plan.request.resolved, source.spec.locality, source.metadata.namespace) : '';
    // Tracked from the start: a drain waits for (or cuts) a tunnel still opening.
    this.#track(id, { record, kind, target, opened: false, routeTable, ...(plan.kind === 'tunnel' ? { request: plan.request } : {}) });
    if (plan.kind === 'direct') {
      this.#send(route(id, RouteVerdict.ROUTE_VERDICT_DIRECT, { dial: target, timeoutMs: d.connectTimeoutMs, tag: connectionTag(record) }));
      return;
    }
    const r = plan.request;
    const headers = Object.entries(r.headers).flatMap(([name, v]) => (v === undefined ? [] : [{ name, value: String(v) }]));
    if (table !== undefined) {
      this.#send(route(id, RouteVerdict.ROUTE_VERDICT_HTTP, {
        source: r.source.uri, timeoutMs: d.connectTimeoutMs, tag: connectionTag(record), service: table, routeTable,
        sourceWorkload: source.metadata.name, sourceNamespace: source.metadata.namespace,
        attempts: [{ hbone: '', sni: '', expect: '', authority: '', headers }],
      }));
      return;
    }
    this.#send(route(id, RouteVerdict.ROUTE_VERDICT_TUNNEL, {
      source: r.source.uri, timeoutMs: d.connectTimeoutMs, tag: connectionTag(record),
      attempts: r.attempts.map((a) => ({ hbone: a.hboneAddress, sni: serverNameFor(a.destination.uri), expect: a.destination.uri, authority: a.authority, headers })),
    }));
  }

  /**
   * The key of the data plane's table for an HTTP service port and sources
   * of `locality`, sent first if the data plane does not hold it; undefined
   * when the port is TCP.
   */
  #httpTable(resolved: ResolvedService, locality: string): string | undefined {
    const state = this.#o.outbound.state;
    const key = httpTableKey(state, resolved, locality);
    if (this.#httpTables.has(key)) return key;
    const table = compileHttpService(state, resolved, locality);
    if (!table) return undefined;
    this.#httpTables.set(key, { resolved, locality, sent: JSON.stringify(table) });
    this.#sendHttp([table], []);
    return key;
  }

  /**
   * The route table's key for clients of `namespace` and `locality` calling
   * an HTTP service port, sent first (after the service tables it names) if
   * the data plane does not hold it; '' when the agent has no routes to
   * give. A port without rules for these clients gets a table too, whose
   * one rule forwards to the service as it is: a route applied later then
   * reaches live connections at their next request.
   */
  #routeTable(parent: ResolvedService, locality: string, namespace: string): string {
    const state = this.#o.outbound.state;
    const inputs = this.#o.routes?.();
    if (!inputs) return '';
    const key = routeTableKey(state, parent, locality, namespace);
    // Kept current by refreshHttpServices.
    if (this.#routeTables.has(key)) return key;
    const compiled = compileHttpRoutes(state, parent, locality, namespace, inputs);
    if (!compiled) return '';
    const fresh = this.#newBackends(compiled.services);
    if (fresh.length > 0) this.#sendHttp(fresh, []);
    this.#routeTables.set(key, { parent, locality, namespace, table: compiled.table, sent: JSON.stringify(compiled.table) });
    this.#sendRoutes([compiled.table], []);
    return key;
  }

  /** The backend tables of `services` the data plane does not hold yet, now recorded as held. */
  #newBackends(services: readonly BackendService[]): HttpServiceTable[] {
    const fresh: HttpServiceTable[] = [];
    for (const b of services) {
      if (this.#httpTables.has(b.table.key)) continue;
      this.#httpTables.set(b.table.key, { resolved: b.resolved, locality: b.locality, ...(b.as ? { as: b.as } : {}), sent: JSON.stringify(b.table) });
      fresh.push(b.table);
    }
    return fresh;
  }

  /**
   * The mesh state changed: every table the data plane holds is compiled
   * again, and those that changed are sent — service tables first (new
   * backends included), then route tables, then the service tables to
   * remove, so that no route table ever names a table the data plane lacks.
   * A service gone, or no longer HTTP, is removed: its connections then
   * answer 503. A route table without rules (its routes deleted, or never
   * any) forwards to the service as it is while a connection names it, and
   * is removed once none does. Connections follow at their next request.
   */
  refreshHttpServices(): void {
    const state = this.#o.outbound.state;
    const changed: HttpServiceTable[] = [];
    const removed: string[] = [];
    for (const [key, t] of this.#httpTables) {
      const { service, port } = t.resolved;
      const now = state.resolveService(`${service.metadata.name}.${service.metadata.namespace}`, port.port);
      const table = now ? (t.as ? compileBackendService(state, now, t.locality, t.as).table : compileHttpService(state, now, t.locality)) : undefined;
      if (!now || !table || table.key !== key) {
        this.#httpTables.delete(key);
        removed.push(key);
        continue;
      }
      const sent = JSON.stringify(table);
      if (sent === t.sent) continue;
      this.#httpTables.set(key, { ...t, resolved: now, sent });
      changed.push(table);
    }
    const routes: HttpRouteTable[] = [];
    const routesRemoved: string[] = [];
    const inputs = this.#o.routes?.() ?? { routes: [], fault: () => undefined, grants: () => [] };
    const named = new Set([...this.#conns.values()].flatMap((c) => (c.routeTable ? [c.routeTable] : [])));
    for (const [key, t] of this.#routeTables) {
      const { service, port } = t.parent;
      const now = state.resolveService(`${service.metadata.name}.${service.metadata.namespace}`, port.port);
      const compiled = now ? compileHttpRoutes(state, now, t.locality, t.namespace, inputs) : undefined;
      // Gone with its service (or its port's HTTP protocol); a table without
      // rules is kept only while a connection names it, so that tables do
      // not pile up for every namespace that ever called the port.
      if (!now || !compiled || (!compiled.routed && !named.has(key))) {
        this.#routeTables.delete(key);
        routesRemoved.push(key);
        continue;
      }
      changed.push(...this.#newBackends(compiled.services));
      const sent = JSON.stringify(compiled.table);
      if (sent === t.sent) continue;
      this.#routeTables.set(key, { ...t, parent: now, table: compiled.table, sent });
      routes.push(compiled.table);
    }
    if (changed.length > 0) this.#sendHttp(changed, []);
    if (routes.length > 0 || routesRemoved.length > 0) this.#sendRoutes(routes, routesRemoved);
    if (removed.length > 0) this.#sendHttp([], removed);
  }

  #sendRoutes(tables: readonly HttpRouteTable[], removed: string[]): void {
    this.#send({ $case: 'httpRoutes', httpRoutes: { tables: [...tables], removed } });
  }

  #sendHttp(services: readonly HttpServiceTable[], removed: string[]): void {
    const h = this.#o.http;
    this.#send({
      $case: 'httpServices',
      httpServices: {
        services: services.map((s) => ({ ...s, endpoints: [...s.endpoints] })),
        removed,
        settings: { ...h },
      },
    });
  }

  /** The route tables the data plane holds, as sent (for /config_dump). */
  httpRouteTables(): HttpRouteTable[] {
    return [...this.#routeTables.values()].map((t) => t.table);
  }

  /** HTTP endpoints ejected now, by the data plane's passive health. */
  httpEjections(): HttpEjection[] {
    const now = (this.#o.now ?? Date.now)();
    return [...this.#httpEjections.values()].filter((e) => e.until > now);
  }

  /** The data plane ejected an HTTP endpoint (counted and logged), or it is back. */
  #ejection(m: Ejection): void {
    const key = `${m.service} ${m.endpoint}`;
    if (m.untilMs === 0) {
      this.#httpEjections.delete(key);
      return;
    }
    const e: HttpEjection = { service: m.service, endpoint: m.endpoint, workload: m.workload, reason: m.reason, since: m.sinceMs, until: m.untilMs, ejections: m.ejections };
    this.#httpEjections.set(key, e);
    this.#o.outbound.metrics.endpointEjections.inc({ service: m.service });
    this.#o.logger.warn({ service: e.service, endpoint: e.endpoint, workload: e.workload, reason: e.reason, until: new Date(e.until).toISOString(), ejections: e.ejections }, 'HTTP endpoint ejected after consecutive failures');
  }

  /**
   * One attempt to open a tunnel, as the data plane reports each: its
   * endpoint's health is counted (a success forgets its failures, a connect
   * failure counts towards its ejection), a retry is counted, and the
   * endpoint that opened becomes the record's destination.
   */
  #attempt(m: AttemptResult): boolean {
    const c = this.#conns.get(m.id);
    if (!c) return false;
    const n = m.n;
    const d = this.#o.outbound;
    const a = c.request?.attempts[n];
    if (n > 0) d.metrics.connectRetries.inc({ result: m.ok ? 'ok' : 'failed' });
    if (!a || !c.request) return true;
    const service = c.request.service;
    if (m.ok) {
      c.record.dst = a.peer;
      if (service) d.outlier.success(service, a.authority);
      return true;
    }
    const { status, reason } = m;
    if (service && isConnectFailure(status, reason)) {
      const ejected = d.outlier.failure(service, a.authority, c.request.serviceSize, reason || `status_${status}`, `${a.peer.namespace}/${a.peer.workload}`);
      if (ejected) {
        d.metrics.endpointEjections.inc({ service });
        this.#o.logger.warn({ service, endpoint: a.authority, workload: ejected.workload, reason: ejected.reason, until: new Date(ejected.until).toISOString(), ejections: ejected.ejections }, 'endpoint ejected after consecutive connect failures');
      }
    }
    return true;
  }

  #opened(id: number): boolean {
    const c = this.#conns.get(id);
    if (!c) return false;
    c.opened = true;
    if (c.kind === 'tunnel') this.#o.outbound.metrics.poolStreams.inc();
    c.record.open();
    // Closed (drain deadline) while it was being opened, when the data plane had nothing to close yet.
    if (c.closed) this.#send({ $case: 'close', close: { id } });
    return true;
  }

  #end(m: End): boolean {
    const id = m.id;
    const c = this.#conns.get(id);
    if (!c) return false;
    this.#conns.delete(id);
    const d = this.#o.outbound;
    const error = m.error;
    if (m.failed) {
      // It never opened: the client's connection was reset.
      if (c.closed) c.record.finish(c.closed.reason, c.closed.flags);
      else if (c.kind === 'direct') refuseOutbound(d, c.record, 'unreachable', `passthrough to ${c.target} failed: ${error}`, 'UF');
      else {
        const te = new TunnelError(m.status, m.reason, error);
        const { failure, flags } = tunnelFailure(d, te, c.record);
        refuseOutbound(d, c.record, failure, te.message, flags);
      }
    } else {
      if (c.opened && c.kind === 'tunnel') d.metrics.poolStreams.dec();
      this.#count(c.record, m.fromSource, m.toSource);
      if (c.closed) c.record.finish(c.closed.reason, c.closed.flags);
      else c.record.finish(error || undefined);
    }
    c.finished();
    return true;
  }

  /** The same server check as the node:http2 pool's: chains to the bundle, our trust domain, exactly the destination. */
  #peer(m: PeerQuestion): void {
    const pid = m.pid;
    const expected = m.expect;
    try {
      const identity = verifyReportedChain(m.chain, this.#o.bundle(), this.#o.trustDomain, (this.#o.now ?? Date.now)(), 'server');
      if (identity.uri !== expected) throw new AmbitError('AMBIT_ERR_AUTH_DENIED', `peer presented ${identity.uri}, expected ${expected}`);
      this.#send({ $case: 'peer', peer: { pid, ok: true } });
    } catch (err) {
      this.#o.logger.warn({ err: (err as Error).message, peer: m.hbone, expected }, 'HBONE server rejected');
      this.#send({ $case: 'peer', peer: { pid, ok: false } });
    }
  }
}
