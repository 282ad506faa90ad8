import { isIP } from 'node:net';
import type { OutgoingHttpHeaders } from 'node:http';
import type { Logger } from '../../shared/logger.ts';
import { SpanKind, startConnectionSpan, type Tracer } from '../../shared/tracing.ts';
import type { Workload } from '../../shared/resources/types.ts';
import { pickEndpoint, type MeshState } from '../state/mesh-state.ts';
import { ConnectionRecord, UNKNOWN_PEER } from './connection-record.ts';
import type { ConnectionTracker } from './connection-tracker.ts';
import type { AgentMetrics } from './metrics.ts';
import type { SpiffeId } from '../../shared/spiffe-id.ts';

export interface OutboundDeps {
  readonly state: MeshState;
  readonly metrics: AgentMetrics;
  readonly accessLog: Logger;
  readonly tracer: Tracer;
  readonly tracker: ConnectionTracker;
  readonly passthrough: 'allow' | 'deny';
  readonly connectTimeoutMs: number;
  readonly random?: () => number;
}

/** Why an outbound connection failed, in terms the front end (SOCKS reply, capture reset) can act on. */
export type OutboundFailure = 'denied' | 'no_route' | 'unreachable' | 'refused' | 'passthrough_denied';

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

/** An HBONE CONNECT to open on the destination's agent. */
export interface TunnelRequest {
  readonly source: SpiffeId;
  readonly destination: SpiffeId;
  /** The destination node's agent, "ip:port". */
  readonly hboneAddress: string;
  /** The destination workload "ip:port" (the CONNECT authority). */
  readonly authority: string;
  readonly headers: OutgoingHttpHeaders;
}

function failureOf(status: number): OutboundFailure {
  if (status === 401) return 'denied';
  if (status === 400) return 'no_route';
  if (status === 503) return 'refused';
  return 'unreachable';
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
 * carries out the plan the agent sends it (native-outbound.ts).
 */
export function planOutbound(d: OutboundDeps, req: OutboundSource): { record: ConnectionRecord; plan: OutboundPlan } {
  const sourceId = d.state.identityOf(req.source);
  const src = { addr: req.srcAddr, workload: req.source.metadata.name, namespace: req.source.metadata.namespace, identity: sourceId.uri };
  const record = new ConnectionRecord({ direction: 'outbound', src, dst: { ...UNKNOWN_PEER, addr: `${req.host}:${req.port}` }, service: '', security: 'mutual_tls', metrics: d.metrics, log: d.accessLog });
  const span = startConnectionSpan(d.tracer, 'ambit.outbound', SpanKind.CLIENT, undefined, { 'ambit.source.identity': sourceId.uri, 'ambit.destination': `${req.host}:${req.port}` });
  record.setSpan(span.span, span.context.traceId);
  const refuse = (failure: OutboundFailure, detail: string, flags: string): { record: ConnectionRecord; plan: OutboundPlan } => ({ record, plan: { kind: 'refuse', failure, detail, flags } });

  let target: Workload | undefined;
  let targetPort = req.port;
  const svc = d.state.resolveService(req.host, req.port);
  if (svc) {
    record.service = `${svc.service.metadata.name}.${svc.service.metadata.namespace}.svc`;
    targetPort = svc.port.targetPort;
    target = pickEndpoint(d.state.endpointsOf(svc.service), req.source.spec.locality, targetPort, d.random);
    if (!target) return refuse('no_route', `service ${record.service} has no endpoint serving port ${targetPort}`, 'NR');
  } else if (isIP(req.host)) {
    target = d.state.workloadByAddress(req.host);
  }

  if (!target) {
    // Not a mesh destination: passthrough.
    record.service = 'PassthroughCluster';
    record.security = 'none';
    if (d.passthrough === 'deny') return refuse('passthrough_denied', `${req.host}:${req.port} is outside the mesh and --passthrough is deny`, 'NR');
    return { record, plan: { kind: 'direct', host: req.host, port: req.port } };
  }

  const dstId = d.state.identityOf(target);
  record.dst = { addr: `${target.spec.address}:${targetPort}`, workload: target.metadata.name, namespace: target.metadata.namespace, identity: dstId.uri };
  const hbone = d.state.hboneAddressOf(target.spec.node);
  if (!hbone) return refuse('no_route', `node ${target.spec.node} of ${target.metadata.namespace}/${target.metadata.name} has no known agent address`, 'NR');
  const authority = isIP(target.spec.address) === 6 ? `[${target.spec.address}]:${targetPort}` : `${target.spec.address}:${targetPort}`;
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
        source: sourceId,
        destination: dstId,
        hboneAddress: hbone,
        authority,
        headers: {
          traceparent: span.traceparent,
          baggage: `k8s.namespace.name=${req.source.metadata.namespace},k8s.workload.name=${req.source.metadata.name}`,
          forwarded: `for=${forAddr}`,
        },
      },
    },
  };
}

/** Counts and records an outbound connection that will not open. */
export function refuseOutbound(d: OutboundDeps, record: ConnectionRecord, failure: OutboundFailure, detail: string, flags: string): void {
  d.metrics.refused.inc({ direction: 'outbound', reason: failure });
  record.finish(detail, flags);
}

/** What a failed tunnel means for the connection: the failure its front end acts on, and the record's flags (a 401 also counts a denial). */
export function tunnelFailure(d: OutboundDeps, te: TunnelError): { failure: OutboundFailure; flags: string } {
  if (te.status === 401) d.metrics.denials.inc({ direction: 'outbound', policy: '', reason: te.reason });
  return { failure: failureOf(te.status), flags: te.status === 401 ? 'DENY' : te.status === 400 ? 'NR' : 'UF' };
}
