import { isIP } from 'node:net';
import type { OutgoingHttpHeaders } from 'node:http';
import type { Logger } from '../../shared/logger.ts';
import { SpanKind, startConnectionSpan, type Tracer } from '../../shared/tracing.ts';
import type { Workload } from '../../shared/resources/types.ts';
import { pickEndpoint, type MeshState, type ResolvedService } from '../state/mesh-state.ts';
import type { DestinationWait } from '../state/subscriptions.ts';
import type { SpiffeId } from '../../shared/spiffe-id.ts';
import { ConnectionRecord, UNKNOWN_PEER, type Peer } from '../proxy/connection-record.ts';
import type { ConnectionTracker } from '../proxy/connection-tracker.ts';
import type { AgentMetrics } from '../proxy/metrics.ts';
import { PASSTHROUGH } from '../proxy/istio-names.ts';
import type { OutlierDetector } from './outlier.ts';
import { failureOfStatus, flagOf, policyOfDeniedAnswer, type OutboundFailure } from './refusals.ts';

/*
 * Outbound routing: where a connection from a proven local workload goes
 * (a service's endpoints, a workload address, or passthrough), and what a
 * failed tunnel means for it. Pure over the mesh state and passive health:
 * no sockets; dataplane/outbound.ts sends the plan to ambit-dataplane.
 */

export interface OutboundDeps {
  readonly state: MeshState;
  readonly metrics: AgentMetrics;
  readonly accessLog: Logger;
  readonly tracer: Tracer;
  readonly tracker: ConnectionTracker;
  readonly passthrough: 'allow' | 'deny';
  readonly connectTimeoutMs: number;
  /** Passive health of service endpoints: ejected ones are skipped, and every tunnel attempt is reported to it. */
  readonly outlier: OutlierDetector;
  readonly random?: () => number;
  /** Node scope: what a connection to a destination waits for before it is resolved (state/subscriptions.ts); absent on a full watch. */
  readonly awaitDestination?: DestinationWait;
}

/**
 * Endpoints a connection to a service may try, the first included (the data
 * plane bounds it too: outbound.rs MAX_ATTEMPTS). Three, as Envoy's and
 * Linkerd's usual retry budget: with one endpoint in three down a connection
 * fails only if every pick is dead, and a service whose endpoints are all
 * dead costs at most three dials per connection.
 */
export const CONNECT_ATTEMPTS = 3;

/** Why an outbound connection failed, in terms the front end (SOCKS reply, capture reset) can act on: a registered reason (connection/refusals.ts). */
export type { OutboundFailure };

/** A tunnel the data plane could not open: the status the peer agent answered (0: none), its reason, and what happened. */
export class TunnelError extends Error {
  readonly status: number;
  readonly reason: string;
  constructor(status: number, reason: string, message: string) {
    super(message);
    this.name = 'TunnelError';
    this.status = status;
    this.reason = reason;
  }
}

/** One endpoint an HBONE CONNECT may open to. */
export interface TunnelEndpoint {
  readonly destination: SpiffeId;
  /** The destination node's agent, "ip:port". */
  readonly hboneAddress: string;
  /** The destination workload "ip:port" (the CONNECT authority). */
  readonly authority: string;
  /** The record's destination when this endpoint serves. */
  readonly peer: Peer;
}

/** An HBONE CONNECT to open on the destination's agent: the first endpoint, then the others in turn while opening fails. */
export interface TunnelRequest extends TunnelEndpoint {
  readonly source: SpiffeId;
  readonly headers: OutgoingHttpHeaders;
  /** The endpoints to try, this request's own first (one, unless the destination is a service). */
  readonly attempts: readonly TunnelEndpoint[];
  /** The service whose endpoints these are ('' for a workload address): what their health is counted under. */
  readonly service: string;
  /** How many endpoints the service has (the ejection cap's base). */
  readonly serviceSize: number;
  /** The service port the destination resolved to, if it is a service: an HTTP one is served per request. */
  readonly resolved?: ResolvedService;
}

/** Where an outbound connection goes, decided before any byte flows. */
export type OutboundPlan =
  | { readonly kind: 'refuse'; readonly failure: OutboundFailure; readonly detail: string; readonly flags: string }
  | { readonly kind: 'direct'; readonly host: string; readonly port: number }
  | { readonly kind: 'tunnel'; readonly request: TunnelRequest };

/** An outbound connection's source: the authenticated local workload, and the address it came from. */
export interface OutboundSource {
  readonly source: Workload;
  readonly srcAddr: string;
  readonly host: string;
  readonly port: number;
}

/**
 * Resolves an outbound connection (service → endpoint, or workload address;
 * otherwise passthrough) and starts its record and span; ambit-dataplane
 * carries out the plan the agent sends it (dataplane/outbound.ts).
 */
export function planOutbound(d: OutboundDeps, req: OutboundSource): { record: ConnectionRecord; plan: OutboundPlan } {
  const sourceId = d.state.identityOf(req.source);
  const src: Peer = { addr: req.srcAddr, workload: req.source.metadata.name, namespace: req.source.metadata.namespace, identity: sourceId.uri, names: d.state.namesOf(req.source) };
  const record = new ConnectionRecord({ direction: 'outbound', src, dst: { ...UNKNOWN_PEER, addr: `${req.host}:${req.port}` }, service: '', security: 'mutual_tls', metrics: d.metrics, log: d.accessLog });
  const span = startConnectionSpan(d.tracer, 'ambit.outbound', SpanKind.CLIENT, undefined, { 'ambit.source.identity': sourceId.uri, 'ambit.destination': `${req.host}:${req.port}` });
  record.setSpan(span.span, span.context.traceId);
  const refuse = (failure: OutboundFailure, detail: string): { record: ConnectionRecord; plan: OutboundPlan } => ({ record, plan: { kind: 'refuse', failure, detail, flags: flagOf(failure) } });

  let target: Workload | undefined;
  let others: Workload[] = [];
  let serviceSize = 0;
  let targetPort = req.port;
  const svc = d.state.resolveService(req.host, req.port);
  if (svc) {
    record.service = d.state.serviceHost(svc.service);
    targetPort = svc.port.targetPort;
    const serving = d.state.endpointsOf(svc.service).filter((w) => w.spec.ports.length === 0 || w.spec.ports.includes(targetPort));
    serviceSize = serving.length;
    // Ejected endpoints are skipped while any other is left: trying them
    // when all are ejected beats failing for sure.
    const live = serving.filter((w) => !d.outlier.isEjected(record.service, endpointOf(w.spec.address, targetPort)));
    const pool = live.length > 0 ? live : serving;
    const picked = pickEndpoints(pool, req.source.spec.locality, targetPort, CONNECT_ATTEMPTS, d.random);
    target = picked[0];
    others = picked.slice(1);
    if (!target) return refuse('no_route', `service ${record.service} has no endpoint serving port ${targetPort}`);
  } else if (isIP(req.host)) {
    target = d.state.workloadByAddress(req.host);
  }

  if (!target) {
    // Not a mesh destination: passthrough.
    record.service = PASSTHROUGH;
    record.security = 'none';
    if (d.passthrough === 'deny') return refuse('passthrough_denied', `${req.host}:${req.port} is outside the mesh and --passthrough is deny`);
    return { record, plan: { kind: 'direct', host: req.host, port: req.port } };
  }

  const first = tunnelEndpoint(d, target, targetPort);
  record.dst = first.peer;
  if (!first.hboneAddress) return refuse('no_route', `node ${target.spec.node} of ${target.metadata.namespace}/${target.metadata.name} has no known agent address`);
  // Other endpoints whose node has no known agent cannot be tried.
  const attempts = [first, ...others.map((w) => tunnelEndpoint(d, w, targetPort)).filter((e) => e.hboneAddress)];
  // The address the source proof vouched for (the workload's registered
  // one), not the socket's: a VM workload proven by uid may dial from
  // 127.0.0.1, and the destination believes a claim only when it is an
  // address of the certificate's workload (connection/source-proof.ts).
  const claim = req.source.spec.address;
  const forAddr = isIP(claim) === 6 ? `"[${claim}]"` : claim || 'unknown';
  return {
    record,
    plan: {
      kind: 'tunnel',
      request: {
        ...first,
        source: sourceId,
        attempts,
        service: svc ? record.service : '',
        serviceSize,
        ...(svc ? { resolved: svc } : {}),
        headers: {
          traceparent: span.traceparent,
          baggage: `k8s.namespace.name=${req.source.metadata.namespace},k8s.workload.name=${req.source.metadata.name}`,
          forwarded: `for=${forAddr}`,
        },
      },
    },
  };
}

/** An endpoint's "ip:port" as the CONNECT authority writes it (an IPv6 address bracketed): the key of its health. */
export function endpointOf(address: string, port: number): string {
  return isIP(address) === 6 ? `[${address}]:${port}` : `${address}:${port}`;
}

function tunnelEndpoint(d: OutboundDeps, w: Workload, port: number): TunnelEndpoint {
  const destination = d.state.identityOf(w);
  return {
    destination,
    hboneAddress: d.state.hboneAddressOf(w.spec.node) ?? '',
    authority: endpointOf(w.spec.address, port),
    peer: { addr: `${w.spec.address}:${port}`, workload: w.metadata.name, namespace: w.metadata.namespace, identity: destination.uri, names: d.state.namesOf(w) },
  };
}

/** Up to `n` distinct endpoints, each chosen by pickEndpoint's balancing among those not chosen yet. */
export function pickEndpoints(endpoints: readonly Workload[], locality: string, port: number, n: number, random?: () => number): Workload[] {
  const left = [...endpoints];
  const out: Workload[] = [];
  while (out.length < n) {
    const w = pickEndpoint(left, locality, port, random);
    if (!w) break;
    out.push(w);
    left.splice(left.indexOf(w), 1);
  }
  return out;
}

/** Whether a failed attempt says the endpoint (or its agent) cannot be reached, which is what passive health counts: no connection, no answer in time, a stream the peer refused or reset, or the peer's 503 (workload unreachable). A denial (401) or an unknown authority (400) says nothing of its health. */
export function isConnectFailure(status: number, reason: string): boolean {
  if (status === 503) return true;
  return status === 0 && ['connect_failed', 'timeout', 'stream_error', 'stream_failed'].includes(reason);
}

/** Counts and records an outbound connection that will not open, with the failure's registered flag. */
export function refuseOutbound(d: OutboundDeps, record: ConnectionRecord, failure: OutboundFailure, detail: string, flags: string = flagOf(failure)): void {
  d.metrics.refused.inc({ direction: 'outbound', reason: failure });
  record.finish(detail, flags);
}

/**
 * What a failed tunnel means for the connection: the failure its front end
 * acts on (by the peer's status, as the registry maps it), and the record's
 * flags. A denial is also counted as one, under the policy the peer's answer
 * names ('' when no policy decided it, e.g. an unverified source address),
 * which the record logs too.
 */
export function tunnelFailure(d: OutboundDeps, te: TunnelError, record?: ConnectionRecord): { failure: OutboundFailure; flags: string } {
  const failure = failureOfStatus(te.status);
  if (failure === 'denied') {
    const named = policyOfDeniedAnswer(te.reason);
    d.metrics.denials.inc({ direction: 'outbound', policy: named?.policy ?? '', reason: named?.reason ?? te.reason });
    if (record && named) record.policy = named.policy;
  }
  return { failure, flags: flagOf(failure) };
}
