import { isHttpProtocol } from '../../shared/resources/types.ts';
import type { BackendObjectRef, FaultInjection, HeaderModifier, HTTPRouteFilter, PathModifier, ReferenceGrant, RouteResource } from '../../shared/resources/route-types.ts';
import { rulesFor, type AttachedRule } from '../../shared/routes/attachment.ts';
import { backendPermitted } from '../../shared/routes/references.ts';
import { MatchType, PathModifierType, type Fault, type HeaderModifier as WireHeaderModifier, type HttpBackend, type HttpRequestMatch, type HttpRouteRule, type HttpRouteTable, type Mirror, type NamedMatch, type PathModifier as WirePathModifier } from '../../shared/proto/gen/dataplane.ts';
import type { MeshState, ResolvedService } from '../state/mesh-state.ts';
import { compileHttpService, httpTableKey, type HttpServiceTable } from './http-services.ts';

/*
 * The route tables ambit-dataplane decides each request of an HTTP service
 * port by (HttpRouteTable in dataplane.proto), compiled from the mesh's
 * HTTPRoutes and GRPCRoutes: pure, no sockets. shared/routes/attachment.ts
 * says which rules apply, in which order; this module turns them into what
 * the data plane matches and does, and names the HttpService tables of the
 * backends and mirrors (compiled here too, so they can be sent first).
 * dataplane/outbound.ts pushes both and keeps them current.
 */

/** The HTTP protocols a backend can be spoken to with. */
type HttpProtocol = HttpServiceTable['protocol'];

/** What route compilation reads beyond the services: the mesh's routes, its FaultInjections and its ReferenceGrants. */
export interface RouteInputs {
  readonly routes: readonly RouteResource[];
  readonly fault: (namespace: string, name: string) => FaultInjection | undefined;
  /** The ReferenceGrants of a namespace (which other namespaces' routes may use its Services). */
  readonly grants: (namespace: string) => readonly ReferenceGrant[];
}

/** A backend's (or a mirror's) service table, with how to compile it again. */
export interface BackendService {
  readonly resolved: ResolvedService;
  /** The sources' locality the table was compiled for. */
  readonly locality: string;
  /** The protocol it is spoken to with when its own port declares none (tcp): the parent port's. */
  readonly as?: HttpProtocol;
  readonly table: HttpServiceTable;
}

export interface CompiledRoutes {
  readonly table: HttpRouteTable;
  /** False: no rule applies to these clients, and the table's one rule forwards every request to the port's own service table. */
  readonly routed: boolean;
  /** Every service table the rules name, once each. */
  readonly services: readonly BackendService[];
}

/** The key of the route table of a service port, for clients of one locality and namespace. */
export function routeTableKey(state: MeshState, parent: ResolvedService, locality: string, clientNamespace: string): string {
  return `${httpTableKey(state, parent, locality)} for ${clientNamespace}`;
}

/**
 * The service table of a backend port: its own when it declares an HTTP
 * protocol; else (a tcp port named by a route) the parent port's protocol,
 * under a key of its own so that it never replaces the port's plain table.
 */
export function compileBackendService(state: MeshState, resolved: ResolvedService, locality: string, as: HttpProtocol | undefined): BackendService {
  const own = compileHttpService(state, resolved, locality);
  if (own) return { resolved, locality, table: own };
  const protocol = as ?? 'http';
  const table = compileHttpService(state, { service: resolved.service, port: { ...resolved.port, appProtocol: protocol } }, locality)!;
  return { resolved, locality, as: protocol, table: { ...table, key: `${table.key} as ${protocol}` } };
}

/**
 * The route table for clients of `clientNamespace` and `locality` calling
 * the `parent` service port (undefined when the port is TCP). When no rule
 * applies to them, the table has one rule sending every request to the
 * port's own service table — what a connection without a route table
 * does — so that a connection opened before a route was applied follows
 * the route once it is.
 */
export function compileHttpRoutes(state: MeshState, parent: ResolvedService, locality: string, clientNamespace: string, inputs: RouteInputs): CompiledRoutes | undefined {
  const protocol = parent.port.appProtocol;
  if (!isHttpProtocol(protocol)) return undefined;
  const key = routeTableKey(state, parent, locality, clientNamespace);
  const attached = rulesFor(inputs.routes, parent.service, parent.port, clientNamespace);
  if (attached.length === 0) {
    const own = compileBackendService(state, parent, locality, undefined);
    return { table: { key, rules: [plainRule(own.table.key)] }, routed: false, services: [own] };
  }
  const services = new Map<string, BackendService>();
  /** The table key of a backend, "" when it does not resolve (its requests then get 500). */
  const tableOf = (route: RouteResource, ref: BackendObjectRef): string => {
    // A backend in another namespace that no ReferenceGrant there allows is RefNotPermitted.
    if (!backendPermitted(route, ref, inputs.grants(ref.namespace))) return '';
    const resolved = state.resolveService(`${ref.name}.${ref.namespace}`, ref.port);
    if (!resolved) return '';
    const b = compileBackendService(state, resolved, locality, protocol);
    services.set(b.table.key, b);
    return b.table.key;
  };
  const rules = attached.map((a) => compileRule(a, tableOf, inputs));
  return { table: { key, rules }, routed: true, services: [...services.values()] };
}

/** A rule sending every request to `table` as it is: no match, one backend, nothing else. */
function plainRule(table: string): HttpRouteRule {
  return {
    route: '', matches: [], backends: [{ table, weight: 1, requestHeaders: undefined, responseHeaders: undefined }], requestHeaders: undefined, responseHeaders: undefined,
    mirrors: [], redirect: undefined, rewrite: undefined, fault: undefined, requestTimeoutMs: 0, backendTimeoutMs: 0, retry: undefined,
  };
}

function compileRule(a: AttachedRule, tableOf: (route: RouteResource, ref: BackendObjectRef) => string, inputs: RouteInputs): HttpRouteRule {
  const route = a.route;
  const filters: readonly HTTPRouteFilter[] = a.rule.filters;
  const out: HttpRouteRule = {
    route: a.id,
    matches: a.match === undefined ? [] : [compileMatch(a)],
    backends: a.rule.backendRefs.map((b): HttpBackend => {
      const bf: readonly HTTPRouteFilter[] = b.filters;
      return { table: tableOf(route, b), weight: b.weight, requestHeaders: headerModifier(bf, 'RequestHeaderModifier'), responseHeaders: headerModifier(bf, 'ResponseHeaderModifier') };
    }),
    requestHeaders: headerModifier(filters, 'RequestHeaderModifier'),
    responseHeaders: headerModifier(filters, 'ResponseHeaderModifier'),
    mirrors: [],
    redirect: undefined,
    rewrite: undefined,
    fault: undefined,
    requestTimeoutMs: a.rule.timeouts?.requestMs ?? 0,
    backendTimeoutMs: a.rule.timeouts?.backendRequestMs ?? 0,
    retry: a.rule.retry === undefined ? undefined : {
      attempts: a.rule.retry.attempts,
      backoffMs: a.rule.retry.backoffMs,
      // GRPCRoute's retry codes are gRPC statuses, read from grpc-status.
      codes: a.kind === 'HTTPRoute' ? [...a.rule.retry.codes] : [],
      grpcCodes: a.kind === 'GRPCRoute' ? [...a.rule.retry.codes] : [],
    },
  };
  for (const f of filters) {
    if (f.type === 'RequestMirror') {
      const table = tableOf(route, f.requestMirror.backendRef);
      // A mirror that does not resolve has nowhere to copy to (its status says why).
      if (table !== '') out.mirrors.push({ table, millionths: millionths(f.requestMirror.percent) } satisfies Mirror);
    } else if (f.type === 'RequestRedirect') {
      const r = f.requestRedirect;
      out.redirect = { scheme: r.scheme ?? '', hostname: r.hostname ?? '', path: pathModifier(r.path), port: r.port ?? 0, status: r.statusCode };
    } else if (f.type === 'URLRewrite') {
      out.rewrite = { hostname: f.urlRewrite.hostname ?? '', path: pathModifier(f.urlRewrite.path) };
    } else if (f.type === 'ExtensionRef') {
      const fi = inputs.fault(route.metadata.namespace, f.extensionRef.name);
      // A rule whose filter cannot be applied must not forward as if it had
      // none (the standard's rule for an invalid filter): no backends, so 500.
      if (!fi) out.backends = [];
      else out.fault = compileFault(fi);
    }
  }
  return out;
}

function compileMatch(a: AttachedRule): HttpRequestMatch {
  const named = (m: { readonly type: 'Exact' | 'RegularExpression'; readonly name: string; readonly value: string }): NamedMatch => ({
    name: m.name, type: m.type === 'Exact' ? MatchType.MATCH_TYPE_EXACT : MatchType.MATCH_TYPE_REGEX, value: m.value,
  });
  const pathType = a.path.type === 'Exact' ? MatchType.MATCH_TYPE_EXACT : a.path.type === 'PathPrefix' ? MatchType.MATCH_TYPE_PREFIX : MatchType.MATCH_TYPE_REGEX;
  const m = a.match!;
  return {
    path: { type: pathType, value: a.path.value },
    headers: m.headers.map(named),
    query: a.kind === 'HTTPRoute' ? a.match!.queryParams.map(named) : [],
    method: a.kind === 'HTTPRoute' ? (a.match!.method ?? '') : '',
  };
}

/** The filters' header modifier of one kind (undefined when none): the standard allows one of each per rule. */
function headerModifier(filters: readonly HTTPRouteFilter[], type: 'RequestHeaderModifier' | 'ResponseHeaderModifier'): WireHeaderModifier | undefined {
  const mods: HeaderModifier[] = filters.flatMap((f) => (f.type === 'RequestHeaderModifier' && type === f.type ? [f.requestHeaderModifier] : f.type === 'ResponseHeaderModifier' && type === f.type ? [f.responseHeaderModifier] : []));
  if (mods.length === 0) return undefined;
  return {
    set: mods.flatMap((m) => m.set.map((h) => ({ name: h.name, value: h.value }))),
    add: mods.flatMap((m) => m.add.map((h) => ({ name: h.name, value: h.value }))),
    remove: mods.flatMap((m) => [...m.remove]),
  };
}

function pathModifier(p: PathModifier | undefined): WirePathModifier | undefined {
  if (p === undefined) return undefined;
  return p.type === 'ReplaceFullPath'
    ? { type: PathModifierType.PATH_MODIFIER_FULL, value: p.replaceFullPath }
    : { type: PathModifierType.PATH_MODIFIER_PREFIX, value: p.replacePrefixMatch };
}

/** A percentage (0..100, fractions allowed) as the data plane's millionths. */
export function millionths(percent: number): number {
  return Math.min(1_000_000, Math.max(0, Math.round(percent * 10_000)));
}

function compileFault(fi: FaultInjection): Fault {
  const { delay, abort } = fi.spec;
  return {
    delayMs: delay?.fixedDelayMs ?? 0,
    delayMillionths: delay ? millionths(delay.percentage) : 0,
    abortStatus: abort?.httpStatus ?? 0,
    abortGrpcStatus: abort?.grpcStatus ?? 0,
    abortGrpc: abort?.grpcStatus !== undefined,
    abortMillionths: abort ? millionths(abort.percentage) : 0,
  };
}
