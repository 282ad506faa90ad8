/**
 * Builders of the core route types (as validation leaves them: defaults
 * filled in) for the routes' unit tests.
 */
import type { FaultInjection, FaultInjectionSpec, GRPCBackendRef, GRPCRoute, GRPCRouteMatch, GRPCRouteRule, HTTPBackendRef, HTTPRoute, HTTPRouteMatch, HTTPRouteRule, ReferenceGrant, RouteParentRef } from '../../../shared/resources/route-types.ts';
import type { AppProtocol, Service, ServicePort } from '../../../shared/resources/types.ts';

export function service(namespace: string, name: string, ports: readonly (Partial<ServicePort> & { port: number })[], selector: Record<string, string> = { app: name }): Service {
  return {
    kind: 'Service',
    metadata: { name, namespace, labels: {}, revision: 1 },
    spec: {
      addresses: [],
      ports: ports.map((p) => ({ name: `p${p.port}`, targetPort: p.port + 8000, appProtocol: 'http' as AppProtocol, ...p })),
      selector,
    },
  };
}

export function parent(namespace: string, name: string, port?: number): RouteParentRef {
  return { group: '', kind: 'Service', namespace, name, ...(port === undefined ? {} : { port }) };
}

export function backend(namespace: string, name: string, port: number, weight = 1, filters: HTTPBackendRef['filters'] = []): HTTPBackendRef {
  return { group: '', kind: 'Service', namespace, name, port, weight, filters };
}

export function grpcBackend(namespace: string, name: string, port: number, weight = 1): GRPCBackendRef {
  return { group: '', kind: 'Service', namespace, name, port, weight, filters: [] };
}

export function match(m: Partial<HTTPRouteMatch> = {}): HTTPRouteMatch {
  return { path: { type: 'PathPrefix', value: '/' }, headers: [], queryParams: [], ...m };
}

export function rule(r: Partial<HTTPRouteRule> = {}): HTTPRouteRule {
  return { matches: [match()], filters: [], backendRefs: [], ...r };
}

export function httpRoute(namespace: string, name: string, parentRefs: readonly RouteParentRef[], rules: readonly HTTPRouteRule[]): HTTPRoute {
  return { kind: 'HTTPRoute', metadata: { name, namespace, labels: {}, revision: 1 }, spec: { parentRefs, hostnames: [], rules } };
}

export function grpcMatch(m: Partial<GRPCRouteMatch> = {}): GRPCRouteMatch {
  return { headers: [], ...m };
}

export function grpcRule(r: Partial<GRPCRouteRule> = {}): GRPCRouteRule {
  return { matches: [], filters: [], backendRefs: [], ...r };
}

export function grpcRoute(namespace: string, name: string, parentRefs: readonly RouteParentRef[], rules: readonly GRPCRouteRule[]): GRPCRoute {
  return { kind: 'GRPCRoute', metadata: { name, namespace, labels: {}, revision: 1 }, spec: { parentRefs, hostnames: [], rules } };
}

export function fault(namespace: string, name: string, spec: FaultInjectionSpec): FaultInjection {
  return { kind: 'FaultInjection', metadata: { name, namespace, labels: {}, revision: 1 }, spec };
}

/** A ReferenceGrant in `namespace` from routes of `kind` in `fromNamespace` to core Services (all, or the one `name`d). */
export function grant(namespace: string, name: string, fromNamespace: string, kind = 'HTTPRoute', to: { name?: string } = {}): ReferenceGrant {
  return {
    kind: 'ReferenceGrant', metadata: { name, namespace, labels: {}, revision: 1 },
    spec: { from: [{ group: 'gateway.networking.k8s.io', kind, namespace: fromNamespace }], to: [{ group: '', kind: 'Service', ...to }] },
  };
}
