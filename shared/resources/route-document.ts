import type {
  BackendObjectRef, FaultInjectionSpec, GRPCRouteSpec, HTTPBackendRef, HTTPRouteFilter, HTTPRouteMatch, HTTPRouteRetry, HTTPRouteSpec,
  HeaderModifier, NamedValueMatch, PathModifier, ReferenceGrantSpec, RouteParentRef, RouteTimeouts,
} from './route-types.ts';
import { DEFAULT_RETRY_ATTEMPTS, DEFAULT_RETRY_BACKOFF_MS, GRPC_CODE_NAMES, formatDuration } from './validate-route.ts';

/**
 * Route, FaultInjection and ReferenceGrant specs back to the upstream document shape (the
 * inverse of ./validate-route.ts): durations as Gateway API Durations, gRPC
 * codes by name, defaults and empty lists left out except where the upstream
 * default differs from Ambit's (parentRefs always say group "" and kind
 * Service, since the upstream default is a Gateway).
 */
type Doc = Record<string, unknown>;

function parentRef(p: RouteParentRef): Doc {
  return { group: '', kind: 'Service', namespace: p.namespace, name: p.name, ...(p.port === undefined ? {} : { port: p.port }) };
}

function objectRef(r: BackendObjectRef, routeNs: string): Doc {
  return { name: r.name, ...(r.namespace === routeNs ? {} : { namespace: r.namespace }), port: r.port };
}

function headerModifier(m: HeaderModifier): Doc {
  const out: Doc = {};
  if (m.set.length > 0) out['set'] = m.set.map((h) => ({ name: h.name, value: h.value }));
  if (m.add.length > 0) out['add'] = m.add.map((h) => ({ name: h.name, value: h.value }));
  if (m.remove.length > 0) out['remove'] = [...m.remove];
  return out;
}

function pathModifier(p: PathModifier): Doc {
  return p.type === 'ReplaceFullPath' ? { type: p.type, replaceFullPath: p.replaceFullPath } : { type: p.type, replacePrefixMatch: p.replacePrefixMatch };
}

function filter(f: HTTPRouteFilter, routeNs: string): Doc {
  switch (f.type) {
    case 'RequestHeaderModifier': return { type: f.type, requestHeaderModifier: headerModifier(f.requestHeaderModifier) };
    case 'ResponseHeaderModifier': return { type: f.type, responseHeaderModifier: headerModifier(f.responseHeaderModifier) };
    case 'RequestMirror': {
      const { backendRef, percent } = f.requestMirror;
      // A fraction was converted to a percentage, which may not be whole: print it back as a fraction of a million.
      const share = percent === 100 ? {} : Number.isInteger(percent) ? { percent } : { fraction: { numerator: Math.round(percent * 10_000), denominator: 1_000_000 } };
      return { type: f.type, requestMirror: { backendRef: objectRef(backendRef, routeNs), ...share } };
    }
    case 'RequestRedirect': {
      const r = f.requestRedirect;
      return {
        type: f.type,
        requestRedirect: {
          ...(r.scheme === undefined ? {} : { scheme: r.scheme }), ...(r.hostname === undefined ? {} : { hostname: r.hostname }),
          ...(r.path === undefined ? {} : { path: pathModifier(r.path) }), ...(r.port === undefined ? {} : { port: r.port }),
          statusCode: r.statusCode,
        },
      };
    }
    case 'URLRewrite': {
      const r = f.urlRewrite;
      return { type: f.type, urlRewrite: { ...(r.hostname === undefined ? {} : { hostname: r.hostname }), ...(r.path === undefined ? {} : { path: pathModifier(r.path) }) } };
    }
    case 'ExtensionRef': return { type: f.type, extensionRef: { group: f.extensionRef.group, kind: f.extensionRef.kind, name: f.extensionRef.name } };
  }
}

function namedMatch(m: NamedValueMatch): Doc {
  return { type: m.type, name: m.name, value: m.value };
}

function httpMatch(m: HTTPRouteMatch): Doc {
  const out: Doc = { path: { type: m.path.type, value: m.path.value } };
  if (m.headers.length > 0) out['headers'] = m.headers.map(namedMatch);
  if (m.queryParams.length > 0) out['queryParams'] = m.queryParams.map(namedMatch);
  if (m.method !== undefined) out['method'] = m.method;
  return out;
}

function backendRef(b: HTTPBackendRef, routeNs: string): Doc {
  const out = objectRef(b, routeNs);
  if (b.weight !== 1) out['weight'] = b.weight;
  if (b.filters.length > 0) out['filters'] = b.filters.map((f) => filter(f, routeNs));
  return out;
}

function timeouts(t: RouteTimeouts): Doc {
  return {
    ...(t.requestMs === undefined ? {} : { request: formatDuration(t.requestMs) }),
    ...(t.backendRequestMs === undefined ? {} : { backendRequest: formatDuration(t.backendRequestMs) }),
  };
}

function retry(r: HTTPRouteRetry, grpc: boolean): Doc {
  const out: Doc = {};
  if (r.codes.length > 0) out['codes'] = grpc ? r.codes.map((c) => GRPC_CODE_NAMES[c] ?? c) : [...r.codes];
  if (r.attempts !== DEFAULT_RETRY_ATTEMPTS) out['attempts'] = r.attempts;
  if (r.backoffMs !== DEFAULT_RETRY_BACKOFF_MS) out['backoff'] = formatDuration(r.backoffMs);
  return out;
}

interface CommonRule {
  readonly name?: string;
  readonly filters: readonly HTTPRouteFilter[];
  readonly backendRefs: readonly HTTPBackendRef[];
  readonly timeouts?: RouteTimeouts;
  readonly retry?: HTTPRouteRetry;
}

function ruleTail(r: CommonRule, routeNs: string, grpc: boolean): Doc {
  const out: Doc = {};
  if (r.filters.length > 0) out['filters'] = r.filters.map((f) => filter(f, routeNs));
  if (r.backendRefs.length > 0) out['backendRefs'] = r.backendRefs.map((b) => backendRef(b, routeNs));
  if (r.timeouts !== undefined) out['timeouts'] = timeouts(r.timeouts);
  if (r.retry !== undefined) out['retry'] = retry(r.retry, grpc);
  return out;
}

export function httpRouteDocument(s: HTTPRouteSpec, routeNs: string): Doc {
  const out: Doc = { parentRefs: s.parentRefs.map(parentRef) };
  if (s.hostnames.length > 0) out['hostnames'] = [...s.hostnames];
  out['rules'] = s.rules.map((r) => ({
    ...(r.name === undefined ? {} : { name: r.name }),
    matches: r.matches.map(httpMatch),
    ...ruleTail(r, routeNs, false),
  }));
  return out;
}

export function grpcRouteDocument(s: GRPCRouteSpec, routeNs: string): Doc {
  const out: Doc = { parentRefs: s.parentRefs.map(parentRef) };
  if (s.hostnames.length > 0) out['hostnames'] = [...s.hostnames];
  out['rules'] = s.rules.map((r) => ({
    ...(r.name === undefined ? {} : { name: r.name }),
    ...(r.matches.length === 0 ? {} : {
      matches: r.matches.map((m) => ({
        ...(m.method === undefined ? {} : { method: { ...m.method } }),
        ...(m.headers.length === 0 ? {} : { headers: m.headers.map(namedMatch) }),
      })),
    }),
    ...ruleTail(r, routeNs, true),
  }));
  return out;
}

export function faultInjectionDocument(s: FaultInjectionSpec): Doc {
  const out: Doc = {};
  if (s.delay !== undefined) out['delay'] = { fixedDelay: formatDuration(s.delay.fixedDelayMs), percentage: s.delay.percentage };
  if (s.abort !== undefined) {
    const a = s.abort;
    out['abort'] = {
      httpStatus: a.httpStatus, ...(a.grpcStatus === undefined ? {} : { grpcStatus: GRPC_CODE_NAMES[a.grpcStatus] ?? a.grpcStatus }), percentage: a.percentage,
    };
  }
  return out;
}

export function referenceGrantDocument(s: ReferenceGrantSpec): Doc {
  return {
    from: s.from.map((f) => ({ group: f.group, kind: f.kind, namespace: f.namespace })),
    to: s.to.map((t) => ({ group: t.group, kind: t.kind, ...(t.name === undefined ? {} : { name: t.name }) })),
  };
}
