import { isHttpProtocol, type Workload } from '../../shared/resources/types.ts';
import type { MeshState, ResolvedService } from '../state/mesh-state.ts';
import { serverNameFor } from '../proxy/hbone-names.ts';
import { endpointOf } from './routing.ts';

/*
 * The endpoint tables ambit-dataplane balances HTTP requests over (one per
 * service port declaring http, http2 or grpc, and per locality of the
 * sources that use it), compiled from the mesh state: pure, no sockets.
 * dataplane/outbound.ts pushes them and keeps them current; the data plane
 * picks an endpoint per request from the table with no question to the agent.
 */

/** One endpoint as the data plane's table holds it (HttpEndpoint in dataplane.proto). */
export interface HttpEndpointEntry {
  readonly authority: string;
  readonly hbone: string;
  readonly sni: string;
  readonly expect: string;
  readonly weight: number;
  /** 0: the sources' zone; 1: their region; 2: elsewhere (the L4 routing's order, mesh-state.ts pickEndpoint). */
  readonly rank: number;
  readonly workload: string;
  readonly namespace: string;
}

export interface HttpServiceTable {
  readonly key: string;
  /** "name.namespace.svc.<cluster domain>". */
  readonly service: string;
  readonly protocol: 'http' | 'http2' | 'grpc';
  readonly endpoints: readonly HttpEndpointEntry[];
}

/** The table key of a service port for sources of `locality`. */
export function httpTableKey(state: MeshState, s: ResolvedService, locality: string): string {
  return `${state.serviceHost(s.service)}:${s.port.port}@${locality}`;
}

/** How near an endpoint is to a source of `locality`: same zone 0, same region 1, else 2 (all 0 when the source's locality is unknown). */
export function localityRank(source: string, endpoint: string): number {
  if (!source) return 0;
  const [region, zone] = source.split('/');
  const [r, z] = endpoint.split('/');
  if (r === region && z === zone) return 0;
  return r === region ? 1 : 2;
}

/**
 * A service port's table, or undefined when the port is TCP. Ready
 * endpoints only (all of them when none is: better to try than to fail for
 * sure, as the L4 routing does); endpoints whose node has no known agent
 * cannot be reached and are left out.
 */
export function compileHttpService(state: MeshState, s: ResolvedService, locality: string): HttpServiceTable | undefined {
  const protocol = s.port.appProtocol;
  if (!isHttpProtocol(protocol)) return undefined;
  const port = s.port.targetPort;
  const serving = state.endpointsOf(s.service).filter((w) => w.spec.ports.length === 0 || w.spec.ports.includes(port));
  const ready = serving.filter((w) => w.spec.healthy);
  const pool = ready.length > 0 ? ready : serving;
  const entry = (w: Workload): HttpEndpointEntry[] => {
    const hbone = state.hboneAddressOf(w.spec.node);
    if (!hbone) return [];
    const id = state.identityOf(w).uri;
    return [{
      authority: endpointOf(w.spec.address, port), hbone, sni: serverNameFor(id), expect: id, weight: w.spec.weight,
      rank: localityRank(locality, w.spec.locality), workload: w.metadata.name, namespace: w.metadata.namespace,
    }];
  };
  return {
    key: httpTableKey(state, s, locality),
    service: state.serviceHost(s.service),
    protocol,
    endpoints: pool.flatMap(entry).sort((a, b) => (a.authority < b.authority ? -1 : a.authority > b.authority ? 1 : 0)),
  };
}

/** Passive health and circuit breaking of HTTP services (the agent's flags), as the data plane applies them. */
export interface HttpSettings {
  readonly consecutiveFailures: number;
  readonly baseEjectionMs: number;
  readonly maxEjectionMs: number;
  readonly maxEjectionPercent: number;
  readonly maxPendingRequests: number;
  readonly maxConnections: number;
  readonly retryBudgetPercent: number;
  readonly minRetryConcurrency: number;
  readonly maxBufferedBodyBytes: number;
}
