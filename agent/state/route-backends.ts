import type { GRPCRoute, HTTPRoute, HTTPRouteFilter } from '../../shared/resources/route-types.ts';

/*
 * A node-scoped agent that follows a service must also follow the services
 * the routes attached to it send to (backendRefs) or copy to (mirrors):
 * its HTTP route table names them, and a backend the agent does not hold
 * would be unresolved (docs/scale.md). Routes themselves reach every agent
 * whole (they are few); this says which services they pull in.
 */

function mirrorsOf(filters: readonly HTTPRouteFilter[] | undefined): string[] {
  const out: string[] = [];
  for (const f of filters ?? []) if (f.type === 'RequestMirror') out.push(`${f.requestMirror.backendRef.name}.${f.requestMirror.backendRef.namespace}`);
  return out;
}

/** The services (`name.namespace`) routes attached to service `key` (`name.namespace`) name as backends or mirrors, `key` itself left out. */
export function routeBackends(routes: readonly (HTTPRoute | GRPCRoute)[], key: string): string[] {
  const out = new Set<string>();
  for (const r of routes) {
    if (!r.spec.parentRefs.some((p) => p.kind === 'Service' && `${p.name}.${p.namespace}` === key)) continue;
    for (const rule of r.spec.rules) {
      for (const m of mirrorsOf(rule.filters as readonly HTTPRouteFilter[])) out.add(m);
      for (const b of rule.backendRefs) {
        out.add(`${b.name}.${b.namespace}`);
        for (const m of mirrorsOf(b.filters as readonly HTTPRouteFilter[])) out.add(m);
      }
    }
  }
  out.delete(key);
  return [...out];
}
