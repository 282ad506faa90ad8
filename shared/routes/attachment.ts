import { isHttpProtocol, type Service, type ServicePort } from '../resources/types.ts';
import type { GRPCRoute, GRPCRouteMatch, GRPCRouteRule, HTTPPathMatch, HTTPRoute, HTTPRouteMatch, HTTPRouteRule, RouteParentRef, RouteResource } from '../resources/route-types.ts';
import { grpcPathMatch } from './grpc-method.ts';

/*
 * Which route rules decide the requests a client sends to one service port
 * (the Gateway API's mesh profile, GAMMA), in the order they are tried:
 * pure, used by the agent (agent/connection/http-routes.ts compiles the
 * result for the data plane) and by the controller's explain.
 *
 * Attachment. A route attaches to a Service port when a parentRef names the
 * Service and either that port or no port. Only ports whose appProtocol is
 * http, http2 or grpc have routes; HTTPRoutes and GRPCRoutes may both attach
 * to one port (the standard allows a parent both kinds), and their rules are
 * ordered together, a gRPC method match being the path match of its calls.
 *
 * Producers and consumers. A route in the Service's namespace is a producer
 * route: it applies to every client. A route in another namespace is a
 * consumer route: it applies only to clients in the route's own namespace,
 * and for them it replaces the Service's producer routes entirely (on every
 * port of the Service, even one the consumer routes leave unrouted).
 *
 * Precedence (the Gateway API's, across every rule of every attached route,
 * per match): an Exact path; then a PathPrefix, longest first; then a
 * RegularExpression path, longest first (the standard leaves regular
 * expressions to the implementation: a regex's length says little about how
 * specific it is, so any literal prefix wins over it, as a gRPC service match
 * wins over a method-only match); then a method match; then more header
 * matches; then more query matches. Ties go to the route first by
 * "namespace/name" (Ambit stores no creation time, the standard's first
 * tie-break), HTTPRoute before GRPCRoute, then to the earlier rule and match.
 */

interface Attached<K extends RouteResource['kind'], R, Rule, Match> {
  readonly kind: K;
  readonly route: R;
  readonly ruleIndex: number;
  readonly rule: Rule;
  /** The one match this entry stands for; undefined: the rule has none and matches every request. */
  readonly match: Match | undefined;
  /** The match's path as the data plane matches it (a gRPC method match as its path). */
  readonly path: HTTPPathMatch;
  /** "HTTPRoute/<namespace>/<name>#<rule index>": how logs and the data plane name the rule. */
  readonly id: string;
}

/** One match of one rule of a route, in precedence order: the first whose match matches a request decides it. */
export type AttachedRule =
  | Attached<'HTTPRoute', HTTPRoute, HTTPRouteRule, HTTPRouteMatch>
  | Attached<'GRPCRoute', GRPCRoute, GRPCRouteRule, GRPCRouteMatch>;

/**
 * Whether a parentRef names `service`, on `port` (or on every port when it
 * names none); `port` undefined: on any HTTP port of the Service (a route
 * attached to TCP ports only is not Accepted, and changes nothing).
 */
function namesPort(ref: RouteParentRef, service: Service, port: number | undefined): boolean {
  if (ref.namespace !== service.metadata.namespace || ref.name !== service.metadata.name) return false;
  if (port === undefined) return service.spec.ports.some((p) => isHttpProtocol(p.appProtocol) && (ref.port === undefined || p.port === ref.port));
  return ref.port === undefined || ref.port === port;
}

/** Whether the route attaches to the Service's `port` (undefined: to any of its HTTP ports). */
export function attachesTo(route: RouteResource, service: Service, port?: number): boolean {
  return route.spec.parentRefs.some((ref) => namesPort(ref, service, port));
}

/**
 * The routes that decide requests from clients in `clientNamespace` to the
 * Service's `port`: that namespace's consumer routes of the Service if it
 * has any, else the Service's producer routes; none on a TCP port.
 */
export function routesFor(routes: readonly RouteResource[], service: Service, port: ServicePort, clientNamespace: string): RouteResource[] {
  if (!isHttpProtocol(port.appProtocol)) return [];
  const home = service.metadata.namespace;
  const consumer = clientNamespace !== home ? routes.filter((r) => r.metadata.namespace === clientNamespace && attachesTo(r, service)) : [];
  const chosen = consumer.length > 0 ? consumer : routes.filter((r) => r.metadata.namespace === home);
  return chosen.filter((r) => attachesTo(r, service, port.port));
}

/** The rules of `routes` (as routesFor chose them), one entry per match, in precedence order. */
export function orderRules(routes: readonly RouteResource[]): AttachedRule[] {
  const out: AttachedRule[] = [];
  for (const route of routes) {
    const base = `${route.kind}/${route.metadata.namespace}/${route.metadata.name}`;
    if (route.kind === 'HTTPRoute') {
      route.spec.rules.forEach((rule, ruleIndex) => {
        const id = `${base}#${ruleIndex}`;
        if (rule.matches.length === 0) out.push({ kind: 'HTTPRoute', route, ruleIndex, rule, match: undefined, path: { type: 'PathPrefix', value: '/' }, id });
        for (const match of rule.matches) out.push({ kind: 'HTTPRoute', route, ruleIndex, rule, match, path: match.path, id });
      });
    } else {
      route.spec.rules.forEach((rule, ruleIndex) => {
        const id = `${base}#${ruleIndex}`;
        if (rule.matches.length === 0) out.push({ kind: 'GRPCRoute', route, ruleIndex, rule, match: undefined, path: grpcPathMatch(undefined), id });
        for (const match of rule.matches) out.push({ kind: 'GRPCRoute', route, ruleIndex, rule, match, path: grpcPathMatch(match.method), id });
      });
    }
  }
  // Array.prototype.sort is stable: entries of one rule keep their match order.
  return out.sort(comparePrecedence);
}

/** The ordered rules deciding requests from `clientNamespace` to the Service's `port` (routesFor, then orderRules). */
export function rulesFor(routes: readonly RouteResource[], service: Service, port: ServicePort, clientNamespace: string): AttachedRule[] {
  return orderRules(routesFor(routes, service, port, clientNamespace));
}

const PATH_RANK: Record<HTTPPathMatch['type'], number> = { Exact: 0, PathPrefix: 1, RegularExpression: 2 };

function specificity(a: AttachedRule): readonly number[] {
  const headers = a.match?.headers.length ?? 0;
  const query = a.kind === 'HTTPRoute' ? (a.match?.queryParams.length ?? 0) : 0;
  const method = a.kind === 'HTTPRoute' && a.match?.method !== undefined ? 1 : 0;
  // Smaller sorts first.
  return [PATH_RANK[a.path.type], -a.path.value.length, -method, -headers, -query];
}

const cmp = (a: string | number, b: string | number): number => (a < b ? -1 : a > b ? 1 : 0);

/** The Gateway API's precedence between two entries (negative: `a` is tried first). */
export function comparePrecedence(a: AttachedRule, b: AttachedRule): number {
  const sa = specificity(a);
  const sb = specificity(b);
  for (let i = 0; i < sa.length; i++) {
    const d = sa[i]! - sb[i]!;
    if (d !== 0) return d;
  }
  const byName = cmp(`${a.route.metadata.namespace}/${a.route.metadata.name}`, `${b.route.metadata.namespace}/${b.route.metadata.name}`);
  if (byName !== 0) return byName;
  return cmp(a.kind === 'HTTPRoute' ? 0 : 1, b.kind === 'HTTPRoute' ? 0 : 1) || a.ruleIndex - b.ruleIndex;
}
