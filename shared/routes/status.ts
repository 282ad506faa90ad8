import { isHttpProtocol, type Service } from '../resources/types.ts';
import {
  MESH_CONTROLLER_NAME,
  type BackendObjectRef, type FaultInjection, type HTTPRouteFilter, type RouteCondition, type RouteParentRef, type RouteParentStatus,
  type ReferenceGrant, type RouteResource, type RouteStatus,
} from '../resources/route-types.ts';
import { backendPermitted } from './references.ts';

/**
 * A route's status as the Gateway API reports it, computed from the mesh when
 * read (never stored, so it cannot go stale): per parentRef, under the
 * controllerName ambit.dev/mesh, the conditions
 *
 * - Accepted: True when the parent Service exists and the route attaches to
 *   at least one of its HTTP ports (appProtocol http, http2 or grpc);
 *   False with NoMatchingParent when the Service, or the port the parentRef
 *   names, does not exist; False with UnsupportedValue when the ports it
 *   would attach to carry TCP only (routes need requests to route).
 * - ResolvedRefs (the same on every parent, as it is about the route's own
 *   references): False with RefNotPermitted for a backend or mirror in
 *   another namespace that no ReferenceGrant there lets the route use
 *   (./references.ts), BackendNotFound for a
 *   Service or port that does not exist, or FilterNotFound (Ambit's reason)
 *   for a FaultInjection an ExtensionRef names that does not exist; the
 *   first problem gives the reason and the message lists every one.
 *
 * Pure: the mesh is read through the lookups given.
 */
export interface RouteStatusMesh {
  service(namespace: string, name: string): Service | undefined;
  faultInjection(namespace: string, name: string): FaultInjection | undefined;
  /** The ReferenceGrants of a namespace. */
  referenceGrants(namespace: string): readonly ReferenceGrant[];
}

export const ROUTE_REASONS = {
  accepted: 'Accepted',
  noMatchingParent: 'NoMatchingParent',
  unsupportedValue: 'UnsupportedValue',
  resolvedRefs: 'ResolvedRefs',
  refNotPermitted: 'RefNotPermitted',
  backendNotFound: 'BackendNotFound',
  filterNotFound: 'FilterNotFound',
} as const;

function condition(type: RouteCondition['type'], ok: boolean, reason: string, message: string): RouteCondition {
  return { type, status: ok ? 'True' : 'False', reason, message };
}

function serviceName(ns: string, name: string): string {
  return `Service ${ns}/${name}`;
}

function accepted(route: RouteResource, ref: RouteParentRef, mesh: RouteStatusMesh): RouteCondition {
  const svc = mesh.service(ref.namespace, ref.name);
  const what = serviceName(ref.namespace, ref.name);
  if (svc === undefined) return condition('Accepted', false, ROUTE_REASONS.noMatchingParent, `${what} does not exist`);
  const ports = ref.port === undefined ? svc.spec.ports : svc.spec.ports.filter((p) => p.port === ref.port);
  if (ports.length === 0) return condition('Accepted', false, ROUTE_REASONS.noMatchingParent, `${what} has no port ${ref.port}`);
  const http = ports.filter((p) => isHttpProtocol(p.appProtocol));
  if (http.length === 0) {
    const which = ref.port === undefined ? `no port of ${what} declares` : `port ${ref.port} of ${what} does not declare`;
    return condition('Accepted', false, ROUTE_REASONS.unsupportedValue, `${which} appProtocol http, http2 or grpc; routes apply to HTTP ports only`);
  }
  const consumer = route.metadata.namespace !== ref.namespace;
  const where = `attached to ${what} port${http.length > 1 ? 's' : ''} ${http.map((p) => p.port).join(', ')}`;
  const whom = consumer
    ? `as a consumer route: for clients in namespace ${route.metadata.namespace}, in place of the Service's own routes`
    : 'as a producer route: for every client';
  return condition('Accepted', true, ROUTE_REASONS.accepted, `${where} ${whom}`);
}

interface Problem {
  readonly reason: string;
  readonly message: string;
}

function backendProblem(route: RouteResource, ref: BackendObjectRef, field: string, mesh: RouteStatusMesh): Problem | undefined {
  const what = serviceName(ref.namespace, ref.name);
  if (!backendPermitted(route, ref, mesh.referenceGrants(ref.namespace))) {
    return {
      reason: ROUTE_REASONS.refNotPermitted,
      message: `${field}: ${what} is in another namespace and no ReferenceGrant in namespace ${ref.namespace} lets ${route.kind}s of namespace ${route.metadata.namespace} use it`,
    };
  }
  const svc = mesh.service(ref.namespace, ref.name);
  if (svc === undefined) return { reason: ROUTE_REASONS.backendNotFound, message: `${field}: ${what} does not exist` };
  if (!svc.spec.ports.some((p) => p.port === ref.port)) return { reason: ROUTE_REASONS.backendNotFound, message: `${field}: ${what} has no port ${ref.port}` };
  return undefined;
}

function filterProblems(route: RouteResource, filters: readonly HTTPRouteFilter[], field: string, mesh: RouteStatusMesh): Problem[] {
  return filters.flatMap((f, i): Problem[] => {
    const at = `${field}.filters[${i}]`;
    if (f.type === 'RequestMirror') {
      const p = backendProblem(route, f.requestMirror.backendRef, `${at}.requestMirror.backendRef`, mesh);
      return p === undefined ? [] : [p];
    }
    if (f.type === 'ExtensionRef' && mesh.faultInjection(route.metadata.namespace, f.extensionRef.name) === undefined) {
      return [{ reason: ROUTE_REASONS.filterNotFound, message: `${at}.extensionRef: FaultInjection ${route.metadata.namespace}/${f.extensionRef.name} does not exist` }];
    }
    return [];
  });
}

function resolvedRefs(route: RouteResource, mesh: RouteStatusMesh): RouteCondition {
  const rules: readonly { readonly filters: readonly HTTPRouteFilter[]; readonly backendRefs: readonly (BackendObjectRef & { readonly filters: readonly HTTPRouteFilter[] })[] }[] = route.spec.rules;
  const problems = rules.flatMap((rule, r) => {
    const at = `spec.rules[${r}]`;
    return [
      ...filterProblems(route, rule.filters, at, mesh),
      ...rule.backendRefs.flatMap((b, i) => {
        const p = backendProblem(route, b, `${at}.backendRefs[${i}]`, mesh);
        return [...(p === undefined ? [] : [p]), ...filterProblems(route, b.filters, `${at}.backendRefs[${i}]`, mesh)];
      }),
    ];
  });
  const first = problems[0];
  if (first === undefined) return condition('ResolvedRefs', true, ROUTE_REASONS.resolvedRefs, 'every reference resolves');
  return condition('ResolvedRefs', false, first.reason, problems.map((p) => p.message).join('; '));
}

export function routeStatus(route: RouteResource, mesh: RouteStatusMesh): RouteStatus {
  const refs = resolvedRefs(route, mesh);
  const parents: RouteParentStatus[] = route.spec.parentRefs.map((parentRef) => ({
    parentRef, controllerName: MESH_CONTROLLER_NAME, conditions: [accepted(route, parentRef, mesh), refs],
  }));
  return { parents };
}
