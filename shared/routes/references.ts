import { GATEWAY_GROUP, type BackendObjectRef, type ReferenceGrant, type RouteResource } from '../resources/route-types.ts';

/**
 * Whether a route may use a backend (a backendRef, or a RequestMirror's
 * backend): the one decision the controller's status and explain and the
 * agents' route tables share. The Gateway API's rule, with no exception: a
 * Service in the route's own namespace always; one in another namespace
 * only when a ReferenceGrant in that Service's namespace lists the route's
 * kind (group gateway.networking.k8s.io) and namespace in `from`, and core
 * Services (group "", kind Service; all of them, or the one `name`d) in
 * `to`. Grants in any other namespace say nothing about it, so a route's
 * author cannot grant themselves another namespace's Services.
 *
 * `grants` are the ReferenceGrants of the backend's namespace (more may be
 * given: those of other namespaces are ignored). Pure.
 */
export function backendPermitted(route: RouteResource, ref: BackendObjectRef, grants: readonly ReferenceGrant[]): boolean {
  const from = route.metadata.namespace;
  if (ref.namespace === from) return true;
  return grants.some((g) => g.metadata.namespace === ref.namespace
    && g.spec.from.some((f) => f.group === GATEWAY_GROUP && f.kind === route.kind && f.namespace === from)
    && g.spec.to.some((t) => t.group === '' && t.kind === 'Service' && (t.name === undefined || t.name === ref.name)));
}
