import type { BackendObjectRef, HTTPRouteFilter, PathModifier, ReferenceGrant, RouteResource } from '../../shared/resources/route-types.ts';
import type { Resource, Service, ServicePort } from '../../shared/resources/types.ts';
import { isHttpProtocol } from '../../shared/resources/types.ts';
import { attachesTo, orderRules, routesFor, type AttachedRule } from '../../shared/routes/attachment.ts';
import { backendPermitted } from '../../shared/routes/references.ts';

/*
 * The routes part of `ambitctl explain`: which HTTPRoute and GRPCRoute rules
 * decide the requests a client namespace sends to a service port, in the
 * order the data plane tries them (shared/routes/attachment.ts, what the
 * agents compile), each with its match, backends and what else it does.
 */

export interface ExplainedBackend {
  /** "name.namespace:port". */
  readonly service: string;
  readonly weight: number;
  /** '' when it resolves; else the Gateway API's reason (BackendNotFound, RefNotPermitted): requests that pick it get 500. */
  readonly unresolved: '' | 'BackendNotFound' | 'RefNotPermitted';
}

export interface ExplainedRouteRule {
  /** "HTTPRoute/<namespace>/<name>#<rule index>". */
  readonly rule: string;
  /** The match in words ("PathPrefix /api, method GET, header x-user = beta"); "every request" when it has none. */
  readonly match: string;
  readonly backends: readonly ExplainedBackend[];
  /** What the rule does besides choosing a backend (filters, timeouts, retry), one phrase each. */
  readonly actions: readonly string[];
}

export interface ExplainedRoutes {
  /** `consumer`: the client namespace's own routes; `producer`: the Service's; `none`: no route, every request to the Service as it is. */
  readonly kind: 'consumer' | 'producer' | 'none';
  readonly summary: string;
  /** In the order they are tried: the first whose match matches decides. */
  readonly rules: readonly ExplainedRouteRule[];
}

/** The routes of `port` of `svc` for clients of `clientNamespace`; null on a TCP port. */
export function explainRoutes(resources: readonly Resource[], svc: Service, port: ServicePort, clientNamespace: string): ExplainedRoutes | null {
  if (!isHttpProtocol(port.appProtocol)) return null;
  const routes = resources.filter((r): r is RouteResource => r.kind === 'HTTPRoute' || r.kind === 'GRPCRoute');
  const services = resources.filter((r): r is Service => r.kind === 'Service');
  const chosen = routesFor(routes, svc, port, clientNamespace);
  const name = `${svc.metadata.namespace}/${svc.metadata.name}`;
  if (chosen.length === 0) {
    const hidden = clientNamespace !== svc.metadata.namespace && routes.some((r) => r.metadata.namespace === clientNamespace && attachesTo(r, svc));
    return {
      kind: 'none', rules: [],
      summary: hidden
        ? `no route on port ${port.port}: namespace ${clientNamespace}'s routes of ${name} replace its producer routes and leave this port unrouted; every request goes to the service as it is`
        : `no route attached to ${name} port ${port.port}: every request goes to the service as it is`,
    };
  }
  const consumer = chosen[0]!.metadata.namespace !== svc.metadata.namespace;
  const grants = resources.filter((r): r is ReferenceGrant => r.kind === 'ReferenceGrant');
  const rules = orderRules(chosen).map((a) => explainRule(a, resources, services, grants));
  const names = [...new Set(chosen.map((r) => `${r.kind}/${r.metadata.namespace}/${r.metadata.name}`))].join(', ');
  return {
    kind: consumer ? 'consumer' : 'producer',
    rules,
    summary: `${consumer ? `consumer routes of namespace ${clientNamespace} (they replace ${name}'s producer routes for it)` : `producer routes of ${name}`}: ${names}; a request no rule matches is answered 404 (NR)`,
  };
}

function backendOf(route: RouteResource, ref: BackendObjectRef, weight: number, services: readonly Service[], grants: readonly ReferenceGrant[]): ExplainedBackend {
  const service = `${ref.name}.${ref.namespace}:${ref.port}`;
  if (!backendPermitted(route, ref, grants)) return { service, weight, unresolved: 'RefNotPermitted' };
  const svc = services.find((s) => s.metadata.namespace === ref.namespace && s.metadata.name === ref.name);
  return { service, weight, unresolved: svc?.spec.ports.some((p) => p.port === ref.port) ? '' : 'BackendNotFound' };
}

function matchText(a: AttachedRule): string {
  if (a.match === undefined) return 'every request';
  const parts = [`${a.path.type} ${a.path.value}`];
  if (a.kind === 'GRPCRoute' && a.match.method) parts[0] = `gRPC ${a.match.method.service ?? '*'}/${a.match.method.method ?? '*'}${a.match.method.type === 'RegularExpression' ? ' (regex)' : ''}`;
  if (a.kind === 'HTTPRoute' && a.match.method) parts.push(`method ${a.match.method}`);
  for (const h of a.match.headers) parts.push(`header ${h.name} ${h.type === 'Exact' ? '=' : '~'} ${h.value}`);
  if (a.kind === 'HTTPRoute') for (const q of a.match.queryParams) parts.push(`query ${q.name} ${q.type === 'Exact' ? '=' : '~'} ${q.value}`);
  return parts.join(', ');
}

const pathText = (p: PathModifier | undefined): string => (p === undefined ? '' : p.type === 'ReplaceFullPath' ? ` path ${p.replaceFullPath}` : ` prefix ${p.replacePrefixMatch}`);

function explainRule(a: AttachedRule, resources: readonly Resource[], services: readonly Service[], grants: readonly ReferenceGrant[]): ExplainedRouteRule {
  const actions: string[] = [];
  const filters: readonly HTTPRouteFilter[] = a.rule.filters;
  for (const f of filters) {
    switch (f.type) {
      case 'RequestHeaderModifier': actions.push('request headers modified'); break;
      case 'ResponseHeaderModifier': actions.push('response headers modified'); break;
      case 'RequestMirror': {
        const m = backendOf(a.route, f.requestMirror.backendRef, 0, services, grants);
        actions.push(`mirror ${f.requestMirror.percent} % to ${m.service}${m.unresolved ? ` (${m.unresolved}: not mirrored)` : ''}`);
        break;
      }
      case 'RequestRedirect': {
        const r = f.requestRedirect;
        actions.push(`redirect ${r.statusCode}${r.scheme ? ` scheme ${r.scheme}` : ''}${r.hostname ? ` host ${r.hostname}` : ''}${r.port ? ` port ${r.port}` : ''}${pathText(r.path)}`);
        break;
      }
      case 'URLRewrite': actions.push(`rewrite${f.urlRewrite.hostname ? ` host ${f.urlRewrite.hostname}` : ''}${pathText(f.urlRewrite.path)}`); break;
      case 'ExtensionRef': {
        const ns = a.route.metadata.namespace;
        const found = resources.some((x) => x.kind === 'FaultInjection' && x.metadata.namespace === ns && x.metadata.name === f.extensionRef.name);
        actions.push(`FaultInjection ${ns}/${f.extensionRef.name}${found ? '' : ' (not found: every request answered 500)'}`);
        break;
      }
    }
  }
  const t = a.rule.timeouts;
  if (t?.requestMs !== undefined) actions.push(`timeout ${t.requestMs}ms`);
  if (t?.backendRequestMs !== undefined) actions.push(`backend timeout ${t.backendRequestMs}ms`);
  const r = a.rule.retry;
  if (r) actions.push(`retry up to ${r.attempts} on ${a.kind === 'GRPCRoute' ? 'grpc-status ' : ''}${r.codes.join(', ')}`);
  return { rule: a.id, match: matchText(a), backends: a.rule.backendRefs.map((b) => backendOf(a.route, b, b.weight, services, grants)), actions };
}
