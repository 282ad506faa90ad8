import { connect, isIP, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from '../../shared/logger.ts';
import { SpanKind, startConnectionSpan, type Tracer } from '../../shared/tracing.ts';
import type { Workload } from '../../shared/resources/types.ts';
import { pickEndpoint, type MeshState } from '../state/mesh-state.ts';
import { ConnectionRecord, UNKNOWN_PEER } from './connection-record.ts';
import type { ConnectionTracker } from './connection-tracker.ts';
import type { AgentMetrics } from './metrics.ts';
import { relay } from './relay.ts';
import { tunnelErrorOf, type TunnelError, type TunnelPool, type TunnelRequest } from './tunnel-pool.ts';

export interface OutboundDeps {
  readonly state: MeshState;
  readonly pool: TunnelPool;
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

export interface OutboundRequest {
  /** The application's connection (allowHalfOpen). */
  readonly client: Socket;
  /** The authenticated local source workload. */
  readonly source: Workload;
  readonly host: string;
  readonly port: number;
  /** Called once, before any byte flows: the tunnel is open (undefined) or why not. */
  readonly ready: (failure: OutboundFailure | undefined, detail: string) => void;
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
 * otherwise passthrough) and starts its record and span. Shared by both data
 * paths: handleOutbound carries it out on node:http2, the native data plane
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

/**
 * One outbound connection, top to bottom: plan it (planOutbound) → open a
 * pooled HBONE stream to the destination's agent presenting the source's
 * certificate, or dial a destination outside the mesh directly → pipe both
 * ways → record once.
 */
export async function handleOutbound(d: OutboundDeps, req: OutboundRequest): Promise<void> {
  const { record, plan } = planOutbound(d, { source: req.source, srcAddr: req.client.remoteAddress ?? '', host: req.host, port: req.port });

  // Tracked from the start, not only once bytes flow: a drain must wait for
  // (or cut) a connection whose tunnel is still being opened, or its pooled
  // session would escape the drain's flush.
  let upstream: Duplex | undefined;
  let resolveDone: () => void = () => undefined;
  const done = new Promise<void>((r) => (resolveDone = r));
  d.tracker.add({
    direction: 'outbound',
    close: (reason, flags) => {
      record.finish(reason, flags);
      upstream?.destroy(new Error(reason));
      req.client.resetAndDestroy();
    },
    done,
  });
  try {
    const fail = (failure: OutboundFailure, detail: string, flags: string): void => {
      req.ready(failure, detail);
      refuseOutbound(d, record, failure, detail, flags);
    };
    if (plan.kind === 'refuse') return fail(plan.failure, plan.detail, plan.flags);
    if (plan.kind === 'direct') {
      const socket: Socket = connect({ host: plan.host, port: plan.port, allowHalfOpen: true, noDelay: true });
      socket.setTimeout(d.connectTimeoutMs, () => socket.destroy(Object.assign(new Error('connect timeout'), { code: 'ETIMEDOUT' })));
      try {
        await new Promise<void>((resolve, reject) => {
          socket.once('connect', resolve);
          socket.once('error', reject);
        });
      } catch (err) {
        return fail('unreachable', `passthrough to ${plan.host}:${plan.port} failed: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, 'UF');
      }
      socket.setTimeout(0);
      upstream = socket;
    } else {
      try {
        upstream = await d.pool.open(plan.request);
      } catch (err) {
        const te = tunnelErrorOf(err);
        const { failure, flags } = tunnelFailure(d, te);
        return fail(failure, te.message, flags);
      }
    }

    if (req.client.destroyed) {
      upstream.destroy();
      record.finish('client went away before the tunnel opened', 'DC');
      return;
    }
    req.ready(undefined, '');
    record.open();
    const err = await relay(req.client, upstream, { leftToRight: (n) => record.fromSource(n), rightToLeft: (n) => record.toSource(n) });
    record.finish(err);
  } finally {
    resolveDone();
  }
}
