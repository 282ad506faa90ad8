import { AmbitError } from '../errors.ts';
import type {
  BackendObjectRef, FaultInjectionSpec, GRPCBackendRef, GRPCMethodMatch, GRPCRouteFilter, GRPCRouteMatch, GRPCRouteRule, GRPCRouteSpec,
  HTTPBackendRef, HTTPHeader, HTTPPathMatch, HTTPRouteFilter, HTTPRouteMatch, HTTPRouteRetry, HTTPRouteRule, HTTPRouteSpec, HeaderModifier,
  LocalObjectReference, NamedValueMatch, PathModifier, RequestMirror, RequestRedirect, RouteParentRef, RouteTimeouts, URLRewrite,
} from './route-types.ts';
import { Checker, describe, isDnsSubdomain, join, type Mapping } from './validate-fields.ts';

/**
 * HTTPRoute and GRPCRoute specs (the Gateway API's v1 schema, mesh profile)
 * and Ambit's FaultInjection spec, checked into the core types of
 * ./route-types.ts with the upstream schema's limits and CEL rules, defaults
 * filled in and durations in milliseconds. The inverse (core → document) is
 * in ./route-document.ts.
 */

/** The upstream schema's list limits. */
export const ROUTE_LIMITS = {
  parentRefs: 32, hostnames: 16, rules: 16, matches: 64, totalMatches: 128, filters: 16, backendRefs: 16,
  headerMatches: 16, queryMatches: 16, headerModifierEntries: 16,
} as const;

/** The largest duration accepted: the upstream format's widest single component, so every value prints back in that format. */
export const MAX_DURATION_MS = 99_999 * 3_600_000;
/** Retries after the first attempt; the standard sets no bound, the retry budget limits load, this limits latency. */
export const MAX_RETRY_ATTEMPTS = 100;
export const DEFAULT_RETRY_ATTEMPTS = 1;
export const DEFAULT_RETRY_BACKOFF_MS = 25;

const HTTP_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH'] as const;
const REDIRECT_CODES = [301, 302, 303, 307, 308];

/** gRPC status codes by name (grpc/grpc doc/statuscodes.md); the index is the code. */
export const GRPC_CODE_NAMES = [
  'OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND', 'ALREADY_EXISTS', 'PERMISSION_DENIED',
  'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION', 'ABORTED', 'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS',
  'UNAUTHENTICATED',
] as const;

/** RFC 7230 token: what a header or query parameter name may hold (the upstream HTTPHeaderName pattern). */
const TOKEN = /^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$/;
/** The upstream PreciseHostname and Hostname patterns. */
const PRECISE_HOSTNAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const HOSTNAME = /^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
/** The upstream Duration format (GEP-2257): up to four components such as "1h", "30m", "5s", "200ms". */
const DURATION = /^([0-9]{1,5}(h|m|s|ms)){1,4}$/;
const DURATION_PART = /([0-9]{1,5})(h|ms|m|s)/g;
const UNIT_MS: Readonly<Record<string, number>> = { h: 3_600_000, m: 60_000, s: 1000, ms: 1 };
const GRPC_SERVICE = /^\.?[A-Za-z_][A-Za-z_0-9]*(\.[A-Za-z_][A-Za-z_0-9]*)*$/;
const GRPC_METHOD = /^[A-Za-z_][A-Za-z_0-9]*$/;
const MAX_PATH = 1024;
const MAX_HEADER_VALUE = 4096;

/** A Gateway API Duration in milliseconds, or a message saying why not. */
export function parseDuration(s: string): number | string {
  if (!DURATION.test(s)) return 'must be a Gateway API duration: 1 to 4 parts of up to 5 digits with a unit h, m, s or ms, e.g. "200ms", "1s", "1m30s"';
  let ms = 0;
  for (const m of s.matchAll(DURATION_PART)) ms += Number(m[1]) * (UNIT_MS[m[2] ?? ''] ?? 0);
  return ms > MAX_DURATION_MS ? 'must be at most 99999h' : ms;
}

/** Milliseconds as the shortest Gateway API Duration ("0s", "200ms", "1m30s"). */
export function formatDuration(ms: number): string {
  if (ms === 0) return '0s';
  let rest = ms;
  let out = '';
  for (const [unit, size] of Object.entries(UNIT_MS)) {
    const n = Math.floor(rest / size);
    rest -= n * size;
    if (n > 0) out += `${n}${unit}`;
  }
  return out;
}

/** The letter escapes regex-syntax 0.8 knows: special characters, hex and Unicode, classes, assertions. */
const RUST_LETTER_ESCAPES = 'aftnrvxuUdDsSwWpPbBAz';

/**
 * Why the Rust `regex` crate, which runs route regular expressions in the
 * data plane, would refuse `re` — or undefined. It has no look-around, no
 * backreferences, no atomic groups and fewer letter escapes than PCRE (no
 * \Z, \h, \K, …); those are found here, outside character classes, so a
 * route is refused when written rather than failing on every agent.
 */
export function rustRegexProblem(re: string): string | undefined {
  let inClass = false;
  let depth = 0;
  for (let i = 0; i < re.length; i++) {
    const ch = re[i];
    if (ch === '\\') {
      const next = re[i + 1];
      if (next === undefined) return 'ends with a lone "\\"';
      if (/[0-9]/.test(next)) return `backreferences and octal escapes (\\${next}) are not supported`;
      if (next === 'k' && re[i + 2] === '<') return 'named backreferences (\\k<…>) are not supported';
      if (/[A-Za-z]/.test(next) && !RUST_LETTER_ESCAPES.includes(next)) return `the escape \\${next} is not supported (known: \\${RUST_LETTER_ESCAPES.split('').join(' \\')})`;
      i++;
      continue;
    }
    if (inClass) {
      if (ch === ']') inClass = false;
      continue;
    }
    if (ch === '[') {
      inClass = true;
      if (re[i + 1] === '^') i++;
      if (re[i + 1] === ']') i++; // a leading "]" is literal
    } else if (ch === '(') {
      depth++;
      const head = re.slice(i + 1, i + 4);
      if (head.startsWith('?=') || head.startsWith('?!')) return 'look-ahead ((?=…), (?!…)) is not supported';
      if (head.startsWith('?<=') || head.startsWith('?<!')) return 'look-behind ((?<=…), (?<!…)) is not supported';
      if (head.startsWith('?>')) return 'atomic groups ((?>…)) are not supported';
    } else if (ch === ')') {
      if (--depth < 0) return 'has an unopened ")"';
    }
  }
  if (inClass) return 'has an unclosed "["';
  if (depth > 0) return 'has an unclosed "("';
  return undefined;
}

/** `v` as a list of at most `max` items, each checked; undefined if any failed. */
function items<T>(c: Checker, v: unknown, field: string, max: number, item: (x: unknown, at: string) => T | undefined, min = 0): T[] | undefined {
  const list = c.list(v, field);
  if (list === undefined) return undefined;
  if (list.length > max) return c.fail(field, `must list at most ${max} items, got ${list.length}`, list);
  if (list.length < min) return c.fail(field, `must list at least ${min} item${min === 1 ? '' : 's'}`, list);
  const out: T[] = [];
  let ok = true;
  list.forEach((x, i) => {
    const r = item(x, join(field, i));
    if (r === undefined) ok = false;
    else out.push(r);
  });
  return ok ? out : undefined;
}

function sized(c: Checker, v: unknown, field: string, min: number, max: number, ok?: (s: string) => boolean, what?: string): string | undefined {
  const s = c.string(v, field);
  if (s === undefined) return undefined;
  if (s.length < min || s.length > max) return c.bad(field, min === max ? `must be ${min} characters` : `must be ${min}-${max} characters`, s);
  if (ok !== undefined && !ok(s)) return c.bad(field, `must be ${what ?? 'valid'}`, s);
  return s;
}

const headerName = (c: Checker) => (v: unknown, f: string): string | undefined =>
  sized(c, v, f, 1, 256, (s) => TOKEN.test(s), 'an HTTP header name (letters, digits and !#$%&\'*+-.^_`|~)');

/** A header value: no CR, LF or NUL, which would split or end a header on the wire. */
const headerValue = (c: Checker) => (v: unknown, f: string): string | undefined =>
  sized(c, v, f, 1, MAX_HEADER_VALUE, (s) => !/[\r\n\0]/.test(s), 'a header value without CR, LF or NUL');

function duration(c: Checker, v: unknown, field: string): number | undefined {
  const s = c.string(v, field);
  if (s === undefined) return undefined;
  const ms = parseDuration(s);
  return typeof ms === 'string' ? c.bad(field, ms, s) : ms;
}

function regex(c: Checker, v: unknown, field: string, max: number): string | undefined {
  const s = sized(c, v, field, 1, max);
  if (s === undefined) return undefined;
  const problem = rustRegexProblem(s);
  return problem === undefined ? s : c.bad(field, `is not a regular expression the data plane can run: ${problem}`, s);
}

/** group "" (or "core") and kind Service: the only parents and backends of mesh routes. */
function serviceGroupKind(c: Checker, m: Mapping, field: string, defaults: { group: string; kind: string }, role: string): boolean {
  const group = c.optional(m, 'group') ?? defaults.group;
  const kind = c.optional(m, 'kind') ?? defaults.kind;
  let ok = true;
  if (group !== '' && group !== 'core') {
    c.bad(join(field, 'group'), `must be "" (core): Ambit's ${role} are Services${group === 'gateway.networking.k8s.io' ? ' (Ambit has no gateways; name the Service with group: "" and kind: Service)' : ''}`, group);
    ok = false;
  }
  if (kind !== 'Service') {
    c.bad(join(field, 'kind'), `must be Service: Ambit's ${role} are Services${kind === 'Gateway' ? ' (Ambit has no gateways; mesh routes name a Service)' : ''}`, kind);
    ok = false;
  }
  return ok;
}

function parentRef(c: Checker, v: unknown, field: string, routeNs: string): RouteParentRef | undefined {
  const before = c.errors.length;
  const m = c.mapping(v, field, ['group', 'kind', 'namespace', 'name', 'port'],
    { sectionName: 'not supported for Service parents; use port' });
  if (m === undefined) return undefined;
  // The upstream defaults are group gateway.networking.k8s.io, kind Gateway: a mesh route must say Service.
  serviceGroupKind(c, m, field, { group: 'gateway.networking.k8s.io', kind: 'Gateway' }, 'route parents');
  const name = c.req(m, 'name', field, c.label);
  const namespace = c.opt(m, 'namespace', field, c.label, routeNs);
  const port = c.opt(m, 'port', field, (x, f) => c.int(x, f, 1, 65535), 0);
  if (c.errors.length !== before || name === undefined || namespace === undefined || port === undefined) return undefined;
  return { group: '', kind: 'Service', namespace, name, ...(port === 0 ? {} : { port }) };
}

function backendObjectRef(c: Checker, m: Mapping, field: string, routeNs: string): BackendObjectRef | undefined {
  const before = c.errors.length;
  serviceGroupKind(c, m, field, { group: '', kind: 'Service' }, 'backends');
  const name = c.req(m, 'name', field, c.label);
  const namespace = c.opt(m, 'namespace', field, c.label, routeNs);
  const port = c.req(m, 'port', field, (x, f) => c.int(x, f, 1, 65535));
  if (c.errors.length !== before || name === undefined || namespace === undefined || port === undefined) return undefined;
  return { group: '', kind: 'Service', namespace, name, port };
}

function header(c: Checker, v: unknown, field: string): HTTPHeader | undefined {
  const m = c.mapping(v, field, ['name', 'value']);
  if (m === undefined) return undefined;
  const name = c.req(m, 'name', field, headerName(c));
  const value = c.req(m, 'value', field, headerValue(c));
  return name === undefined || value === undefined ? undefined : { name, value };
}

function headerModifier(c: Checker, v: unknown, field: string): HeaderModifier | undefined {
  const before = c.errors.length;
  const m = c.mapping(v, field, ['set', 'add', 'remove']);
  if (m === undefined) return undefined;
  const max = ROUTE_LIMITS.headerModifierEntries;
  const set = c.opt(m, 'set', field, (x, f) => items(c, x, f, max, (h, at) => header(c, h, at)), []);
  const add = c.opt(m, 'add', field, (x, f) => items(c, x, f, max, (h, at) => header(c, h, at)), []);
  const remove = c.opt(m, 'remove', field, (x, f) => items(c, x, f, max, headerName(c)), []);
  // Header names are case-insensitive: "X-A" and "x-a" in one list is one header named twice.
  if (set !== undefined) c.unique(set.map((h, i) => ({ key: h.name.toLowerCase(), field: join(join(field, 'set'), i), shown: h.name })), 'header name');
  if (add !== undefined) c.unique(add.map((h, i) => ({ key: h.name.toLowerCase(), field: join(join(field, 'add'), i), shown: h.name })), 'header name');
  if (remove !== undefined) c.unique(remove.map((h, i) => ({ key: h.toLowerCase(), field: join(join(field, 'remove'), i), shown: h })), 'header name');
  if (c.errors.length !== before || set === undefined || add === undefined || remove === undefined) return undefined;
  if (set.length + add.length + remove.length === 0) return c.fail(field, 'must set, add or remove at least one header', v);
  return { set, add, remove };
}

function pathModifier(c: Checker, v: unknown, field: string): PathModifier | undefined {
  const m = c.mapping(v, field, ['type', 'replaceFullPath', 'replacePrefixMatch']);
  if (m === undefined) return undefined;
  const type = c.req(m, 'type', field, (x, f) => c.oneOf(x, f, ['ReplaceFullPath', 'ReplacePrefixMatch'] as const));
  const absolute = (x: unknown, f: string): string | undefined => sized(c, x, f, 1, MAX_PATH, (s) => s.startsWith('/'), 'a path starting with "/"');
  const other = type === 'ReplaceFullPath' ? 'replacePrefixMatch' : 'replaceFullPath';
  if (type !== undefined && c.optional(m, other) !== undefined) c.fail(join(field, other), `must not be set when type is ${type}`, m[other]);
  if (type === 'ReplaceFullPath') {
    const p = c.req(m, 'replaceFullPath', field, absolute);
    return p === undefined ? undefined : { type, replaceFullPath: p };
  }
  if (type === 'ReplacePrefixMatch') {
    const p = c.req(m, 'replacePrefixMatch', field, absolute);
    return p === undefined ? undefined : { type, replacePrefixMatch: p };
  }
  return undefined;
}

function mirror(c: Checker, v: unknown, field: string, routeNs: string): RequestMirror | undefined {
  const before = c.errors.length;
  const m = c.mapping(v, field, ['backendRef', 'percent', 'fraction']);
  if (m === undefined) return undefined;
  const refField = join(field, 'backendRef');
  const refMap = c.req(m, 'backendRef', field, (x, f) => c.mapping(x, f, ['group', 'kind', 'namespace', 'name', 'port']));
  const backendRef = refMap === undefined ? undefined : backendObjectRef(c, refMap, refField, routeNs);
  let percent = 100;
  if (c.optional(m, 'percent') !== undefined && c.optional(m, 'fraction') !== undefined) {
    c.fail(join(field, 'fraction'), 'must not be set together with percent', m['fraction']);
  } else if (c.optional(m, 'percent') !== undefined) {
    percent = c.int(m['percent'], join(field, 'percent'), 0, 100) ?? 100;
  } else if (c.optional(m, 'fraction') !== undefined) {
    const ff = join(field, 'fraction');
    const fm = c.mapping(m['fraction'], ff, ['numerator', 'denominator']);
    if (fm !== undefined) {
      const numerator = c.req(fm, 'numerator', ff, (x, f) => c.int(x, f, 0, 1_000_000));
      const denominator = c.opt(fm, 'denominator', ff, (x, f) => c.int(x, f, 1, 1_000_000), 100);
      if (numerator !== undefined && denominator !== undefined) {
        if (numerator > denominator) c.fail(join(ff, 'numerator'), `must be at most the denominator (${denominator}), got ${numerator}`, numerator);
        // In ten-thousandths of a percent (millionths of requests): what the data plane resolves, and exact to print back.
        else percent = Math.round((numerator * 1_000_000) / denominator) / 10_000;
      }
    }
  }
  if (c.errors.length !== before || backendRef === undefined) return undefined;
  return { backendRef, percent };
}

function redirect(c: Checker, v: unknown, field: string): RequestRedirect | undefined {
  const before = c.errors.length;
  const m = c.mapping(v, field, ['scheme', 'hostname', 'path', 'port', 'statusCode']);
  if (m === undefined) return undefined;
  const scheme = c.opt(m, 'scheme', field, (x, f) => c.oneOf(x, f, ['http', 'https'] as const), undefined);
  const hostname = c.opt(m, 'hostname', field, (x, f) => sized(c, x, f, 1, 253, (s) => PRECISE_HOSTNAME.test(s), 'a lower-case host name'), undefined);
  const path = c.opt(m, 'path', field, (x, f) => pathModifier(c, x, f), undefined);
  const port = c.opt(m, 'port', field, (x, f) => c.int(x, f, 1, 65535), undefined);
  const statusCode = c.opt(m, 'statusCode', field, (x, f) => (REDIRECT_CODES.includes(x as number) ? x as number : c.bad(f, 'must be one of 301, 302, 303, 307, 308', x)), 302);
  if (c.errors.length !== before || statusCode === undefined) return undefined;
  return {
    ...(scheme === undefined ? {} : { scheme }), ...(hostname === undefined ? {} : { hostname }), ...(path === undefined ? {} : { path }),
    ...(port === undefined ? {} : { port }), statusCode,
  };
}

function rewrite(c: Checker, v: unknown, field: string): URLRewrite | undefined {
  const before = c.errors.length;
  const m = c.mapping(v, field, ['hostname', 'path']);
  if (m === undefined) return undefined;
  const hostname = c.opt(m, 'hostname', field, (x, f) => sized(c, x, f, 1, 253, (s) => PRECISE_HOSTNAME.test(s), 'a lower-case host name'), undefined);
  const path = c.opt(m, 'path', field, (x, f) => pathModifier(c, x, f), undefined);
  if (c.errors.length !== before) return undefined;
  if (hostname === undefined && path === undefined) return c.fail(field, 'must set hostname or path', v);
  return { ...(hostname === undefined ? {} : { hostname }), ...(path === undefined ? {} : { path }) };
}

function extensionRef(c: Checker, v: unknown, field: string): LocalObjectReference | undefined {
  const before = c.errors.length;
  const m = c.mapping(v, field, ['group', 'kind', 'name']);
  if (m === undefined) return undefined;
  const group = c.required(m, 'group', field);
  const kind = c.required(m, 'kind', field);
  if (group !== undefined && group !== 'ambit.dev') c.bad(join(field, 'group'), 'must be "ambit.dev": the only extension filter is Ambit\'s FaultInjection', group);
  if (kind !== undefined && kind !== 'FaultInjection') c.bad(join(field, 'kind'), 'must be "FaultInjection": the only extension filter Ambit knows', kind);
  const name = c.req(m, 'name', field, c.subdomain);
  if (c.errors.length !== before || name === undefined) return undefined;
  return { group: 'ambit.dev', kind: 'FaultInjection', name };
}

const FILTER_FIELDS = {
  RequestHeaderModifier: 'requestHeaderModifier',
  ResponseHeaderModifier: 'responseHeaderModifier',
  RequestMirror: 'requestMirror',
  RequestRedirect: 'requestRedirect',
  URLRewrite: 'urlRewrite',
  ExtensionRef: 'extensionRef',
} as const;
type FilterType = keyof typeof FILTER_FIELDS;
const ALL_FILTER_TYPES = Object.keys(FILTER_FIELDS) as FilterType[];
const HEADER_FILTERS: readonly FilterType[] = ['RequestHeaderModifier', 'ResponseHeaderModifier'];
const GRPC_FILTERS: readonly FilterType[] = ['RequestHeaderModifier', 'ResponseHeaderModifier', 'RequestMirror', 'ExtensionRef'];
const FILTER_HINTS = { cors: 'CORS filters are not supported', externalAuth: 'external authorization filters are not supported' };

/** One filter: `type` among `allowed` (by place), exactly the matching field set. */
function filter(c: Checker, v: unknown, field: string, allowed: readonly FilterType[], place: string, routeNs: string): HTTPRouteFilter | undefined {
  const before = c.errors.length;
  const m = c.mapping(v, field, ['type', ...Object.values(FILTER_FIELDS)], FILTER_HINTS);
  if (m === undefined) return undefined;
  const rawType = c.required(m, 'type', field);
  let type: FilterType | undefined;
  if (rawType !== undefined) {
    type = allowed.find((t) => t === rawType);
    if (type === undefined) {
      const known = ALL_FILTER_TYPES.includes(rawType as FilterType);
      c.bad(join(field, 'type'), known ? `must be one of ${allowed.join(', ')} ${place}` : `must be one of ${allowed.join(', ')}`, rawType);
    }
  }
  for (const [t, key] of Object.entries(FILTER_FIELDS)) {
    if (t !== rawType && c.optional(m, key) !== undefined) c.fail(join(field, key), `must not be set when type is ${describe(rawType)}`, m[key]);
  }
  if (type === undefined) return undefined;
  const key = FILTER_FIELDS[type];
  const raw = c.required(m, key, field);
  if (raw === undefined) return undefined;
  const at = join(field, key);
  let out: HTTPRouteFilter | undefined;
  switch (type) {
    case 'RequestHeaderModifier': { const x = headerModifier(c, raw, at); if (x) out = { type, requestHeaderModifier: x }; break; }
    case 'ResponseHeaderModifier': { const x = headerModifier(c, raw, at); if (x) out = { type, responseHeaderModifier: x }; break; }
    case 'RequestMirror': { const x = mirror(c, raw, at, routeNs); if (x) out = { type, requestMirror: x }; break; }
    case 'RequestRedirect': { const x = redirect(c, raw, at); if (x) out = { type, requestRedirect: x }; break; }
    case 'URLRewrite': { const x = rewrite(c, raw, at); if (x) out = { type, urlRewrite: x }; break; }
    case 'ExtensionRef': { const x = extensionRef(c, raw, at); if (x) out = { type, extensionRef: x }; break; }
  }
  return c.errors.length === before ? out : undefined;
}

/** The upstream CEL rules on a rule's filters: some types at most once, redirect and rewrite exclusive. */
function filterRules(c: Checker, filters: readonly HTTPRouteFilter[], field: string): void {
  for (const once of ['RequestHeaderModifier', 'ResponseHeaderModifier', 'RequestRedirect', 'URLRewrite'] as const) {
    const at = filters.flatMap((f, i) => (f.type === once ? [i] : []));
    const second = at[1];
    if (second !== undefined) c.fail(join(join(field, second), 'type'), `${once} may appear at most once (also at ${join(field, at[0] ?? 0)})`, once);
  }
  const redirectAt = filters.findIndex((f) => f.type === 'RequestRedirect');
  const rewriteAt = filters.findIndex((f) => f.type === 'URLRewrite');
  if (redirectAt !== -1 && rewriteAt !== -1) c.fail(join(join(field, rewriteAt), 'type'), 'URLRewrite may not be used together with RequestRedirect', 'URLRewrite');
}

function filters(c: Checker, m: Mapping, parent: string, allowed: readonly FilterType[], place: string, routeNs: string): HTTPRouteFilter[] | undefined {
  const field = join(parent, 'filters');
  const out = c.opt(m, 'filters', parent, (x, f) => items(c, x, f, ROUTE_LIMITS.filters, (y, at) => filter(c, y, at, allowed, place, routeNs)), []);
  if (out !== undefined) filterRules(c, out, field);
  return out;
}

function namedMatch(c: Checker, v: unknown, field: string, kind: 'header' | 'query'): NamedValueMatch | undefined {
  const before = c.errors.length;
  const m = c.mapping(v, field, ['type', 'name', 'value']);
  if (m === undefined) return undefined;
  const type = c.opt(m, 'type', field, (x, f) => c.oneOf(x, f, ['Exact', 'RegularExpression'] as const), 'Exact');
  const name = c.req(m, 'name', field, kind === 'header'
    ? headerName(c)
    : (x, f) => sized(c, x, f, 1, 256, (s) => TOKEN.test(s), 'a query parameter name (letters, digits and !#$%&\'*+-.^_`|~)'));
  const valueField = join(field, 'value');
  const rawValue = c.required(m, 'value', field);
  const value = rawValue === undefined ? undefined
    : type === 'RegularExpression' ? regex(c, rawValue, valueField, kind === 'header' ? MAX_HEADER_VALUE : 1024)
      : kind === 'header' ? headerValue(c)(rawValue, valueField) : sized(c, rawValue, valueField, 1, 1024);
  if (c.errors.length !== before || type === undefined || name === undefined || value === undefined) return undefined;
  // Header names are case-insensitive, so they are stored lower-cased; query parameter names are not.
  return { type, name: kind === 'header' ? name.toLowerCase() : name, value };
}

function namedMatches(c: Checker, m: Mapping, key: 'headers' | 'queryParams', parent: string): NamedValueMatch[] | undefined {
  const kind = key === 'headers' ? 'header' : 'query';
  const max = key === 'headers' ? ROUTE_LIMITS.headerMatches : ROUTE_LIMITS.queryMatches;
  const out = c.opt(m, key, parent, (x, f) => items(c, x, f, max, (y, at) => namedMatch(c, y, at, kind)), []);
  if (out !== undefined) {
    c.unique(out.map((h, i) => ({ key: h.name, field: join(join(parent, key), i), shown: h.name })), kind === 'header' ? 'header name' : 'query parameter name');
  }
  return out;
}

/** Paths the upstream schema refuses in Exact and PathPrefix matches: they could never equal a normalised request path. */
function pathProblem(s: string): string | undefined {
  if (!s.startsWith('/')) return 'must start with "/"';
  for (const bad of ['//', '/./', '/../', '%2f', '%2F', '#']) if (s.includes(bad)) return `must not contain "${bad}"`;
  if (s.endsWith('/..') || s.endsWith('/.')) return 'must not end with "/." or "/.."';
  return undefined;
}

function pathMatch(c: Checker, v: unknown, field: string): HTTPPathMatch | undefined {
  const m = c.mapping(v, field, ['type', 'value']);
  if (m === undefined) return undefined;
  const type = c.opt(m, 'type', field, (x, f) => c.oneOf(x, f, ['Exact', 'PathPrefix', 'RegularExpression'] as const), 'PathPrefix');
  const vf = join(field, 'value');
  const raw = c.optional(m, 'value') ?? '/';
  if (type === undefined) return undefined;
  let value: string | undefined;
  if (type === 'RegularExpression') value = regex(c, raw, vf, MAX_PATH);
  else {
    value = sized(c, raw, vf, 1, MAX_PATH);
    const problem = value === undefined ? undefined : pathProblem(value);
    if (problem !== undefined) value = c.bad(vf, problem, value);
  }
  return value === undefined ? undefined : { type, value };
}

const DEFAULT_MATCH: HTTPRouteMatch = { path: { type: 'PathPrefix', value: '/' }, headers: [], queryParams: [] };

function httpMatch(c: Checker, v: unknown, field: string): HTTPRouteMatch | undefined {
  const before = c.errors.length;
  const m = c.mapping(v, field, ['path', 'headers', 'queryParams', 'method']);
  if (m === undefined) return undefined;
  const path = c.opt(m, 'path', field, (x, f) => pathMatch(c, x, f), DEFAULT_MATCH.path);
  const headers = namedMatches(c, m, 'headers', field);
  const queryParams = namedMatches(c, m, 'queryParams', field);
  const method = c.opt(m, 'method', field, (x, f) => c.oneOf(x, f, HTTP_METHODS), undefined);
  if (c.errors.length !== before || path === undefined || headers === undefined || queryParams === undefined) return undefined;
  return { path: { ...path }, headers, queryParams, ...(method === undefined ? {} : { method }) };
}

function weightOf(c: Checker, m: Mapping, field: string): number | undefined {
  return c.opt(m, 'weight', field, (x, f) => c.int(x, f, 0, 1_000_000), 1);
}

function httpBackendRef(c: Checker, v: unknown, field: string, routeNs: string, grpc: boolean): HTTPBackendRef | undefined {
  const before = c.errors.length;
  const m = c.mapping(v, field, ['group', 'kind', 'namespace', 'name', 'port', 'weight', 'filters']);
  if (m === undefined) return undefined;
  const ref = backendObjectRef(c, m, field, routeNs);
  const weight = weightOf(c, m, field);
  const fs = filters(c, m, field, HEADER_FILTERS, `on a backendRef${grpc ? '' : ' (the mesh profile supports header modifiers there)'}`, routeNs);
  if (c.errors.length !== before || ref === undefined || weight === undefined || fs === undefined) return undefined;
  return { ...ref, weight, filters: fs };
}

function timeouts(c: Checker, v: unknown, field: string): RouteTimeouts | undefined | null {
  const before = c.errors.length;
  const m = c.mapping(v, field, ['request', 'backendRequest']);
  if (m === undefined) return null;
  const request = c.opt(m, 'request', field, (x, f) => duration(c, x, f), 0);
  const backend = c.opt(m, 'backendRequest', field, (x, f) => duration(c, x, f), 0);
  if (c.errors.length !== before || request === undefined || backend === undefined) return null;
  // "0s" disables a timeout (the standard); the request timeout bounds the whole request, retries included.
  if (request !== 0 && backend > request) {
    c.fail(join(field, 'backendRequest'), `must not be longer than request (${formatDuration(request)}), got ${formatDuration(backend)}`, m['backendRequest']);
    return null;
  }
  if (request === 0 && backend === 0) return undefined;
  return { ...(request === 0 ? {} : { requestMs: request }), ...(backend === 0 ? {} : { backendRequestMs: backend }) };
}

function grpcCode(c: Checker, v: unknown, field: string): number | undefined {
  if (typeof v === 'string') {
    const i = (GRPC_CODE_NAMES as readonly string[]).indexOf(v);
    return i === -1 ? c.bad(field, `must be a gRPC status code 0-16 or its name (${GRPC_CODE_NAMES.join(', ')})`, v) : i;
  }
  return c.int(v, field, 0, 16);
}

function retry(c: Checker, v: unknown, field: string, grpc: boolean): HTTPRouteRetry | undefined | null {
  const before = c.errors.length;
  const m = c.mapping(v, field, ['codes', 'attempts', 'backoff']);
  if (m === undefined) return null;
  const code = grpc ? (x: unknown, f: string) => grpcCode(c, x, f) : (x: unknown, f: string) => c.int(x, f, 400, 599);
  const codes = c.opt(m, 'codes', field, (x, f) => c.set(x, f, code, 'code'), []);
  const attempts = c.opt(m, 'attempts', field, (x, f) => c.int(x, f, 0, MAX_RETRY_ATTEMPTS), DEFAULT_RETRY_ATTEMPTS);
  const backoffMs = c.opt(m, 'backoff', field, (x, f) => duration(c, x, f), DEFAULT_RETRY_BACKOFF_MS);
  if (c.errors.length !== before || codes === undefined || attempts === undefined || backoffMs === undefined) return null;
  return { codes, attempts, backoffMs };
}

/** A rule name: the upstream SectionName format. */
function ruleName(c: Checker, v: unknown, field: string): string | undefined {
  return c.matching(v, field, isDnsSubdomain, 'a DNS subdomain (lower-case letters, digits, "-" and ".", at most 253)');
}

function httpRule(c: Checker, v: unknown, field: string, routeNs: string): HTTPRouteRule | undefined {
  const before = c.errors.length;
  const m = c.mapping(v, field, ['name', 'matches', 'filters', 'backendRefs', 'timeouts', 'retry'],
    { sessionPersistence: 'not supported' });
  if (m === undefined) return undefined;
  const name = c.opt(m, 'name', field, (x, f) => ruleName(c, x, f), undefined);
  const matches = c.opt(m, 'matches', field, (x, f) => items(c, x, f, ROUTE_LIMITS.matches, (y, at) => httpMatch(c, y, at)), [DEFAULT_MATCH]);
  const fs = filters(c, m, field, ALL_FILTER_TYPES, 'on a rule', routeNs);
  const backendRefs = c.opt(m, 'backendRefs', field,
    (x, f) => items(c, x, f, ROUTE_LIMITS.backendRefs, (y, at) => httpBackendRef(c, y, at, routeNs, false)), []);
  const t = c.optional(m, 'timeouts') === undefined ? undefined : timeouts(c, m['timeouts'], join(field, 'timeouts'));
  const r = c.optional(m, 'retry') === undefined ? undefined : retry(c, m['retry'], join(field, 'retry'), false);
  if (fs !== undefined && backendRefs !== undefined && backendRefs.length > 0) {
    const at = fs.findIndex((f) => f.type === 'RequestRedirect');
    if (at !== -1) c.fail(join(join(field, 'filters'), at), 'RequestRedirect answers the request itself: it may not be used together with backendRefs', 'RequestRedirect');
  }
  if (fs !== undefined && matches !== undefined) {
    // ReplacePrefixMatch replaces the matched prefix, so the rule must have exactly one prefix to replace (upstream CEL).
    fs.forEach((f, i) => {
      const mod = f.type === 'RequestRedirect' ? f.requestRedirect.path : f.type === 'URLRewrite' ? f.urlRewrite.path : undefined;
      if (mod?.type === 'ReplacePrefixMatch' && (matches.length !== 1 || matches[0]?.path.type !== 'PathPrefix')) {
        c.fail(join(join(field, 'filters'), i), 'ReplacePrefixMatch needs the rule to have exactly one match, of path type PathPrefix', mod.replacePrefixMatch);
      }
    });
  }
  if (c.errors.length !== before || matches === undefined || fs === undefined || backendRefs === undefined || t === null || r === null) return undefined;
  return {
    ...(name === undefined ? {} : { name }), matches, filters: fs, backendRefs,
    ...(t === undefined ? {} : { timeouts: t }), ...(r === undefined ? {} : { retry: r }),
  };
}

function grpcMethod(c: Checker, v: unknown, field: string): GRPCMethodMatch | undefined {
  const before = c.errors.length;
  const m = c.mapping(v, field, ['type', 'service', 'method']);
  if (m === undefined) return undefined;
  const type = c.opt(m, 'type', field, (x, f) => c.oneOf(x, f, ['Exact', 'RegularExpression'] as const), 'Exact');
  const check = (re: RegExp, what: string) => (x: unknown, f: string): string | undefined =>
    type === 'RegularExpression' ? regex(c, x, f, 1024) : sized(c, x, f, 1, 1024, (s) => re.test(s), what);
  const service = c.opt(m, 'service', field, check(GRPC_SERVICE, 'a fully qualified gRPC service name such as "pkg.Service"'), undefined);
  const method = c.opt(m, 'method', field, check(GRPC_METHOD, 'a gRPC method name (letters, digits, "_")'), undefined);
  if (c.errors.length !== before || type === undefined) return undefined;
  if (service === undefined && method === undefined) return c.fail(field, 'must set service or method (or both)', v);
  return { type, ...(service === undefined ? {} : { service }), ...(method === undefined ? {} : { method }) };
}

function grpcMatch(c: Checker, v: unknown, field: string): GRPCRouteMatch | undefined {
  const before = c.errors.length;
  const m = c.mapping(v, field, ['method', 'headers']);
  if (m === undefined) return undefined;
  const method = c.opt(m, 'method', field, (x, f) => grpcMethod(c, x, f), undefined);
  const headers = namedMatches(c, m, 'headers', field);
  if (c.errors.length !== before || headers === undefined) return undefined;
  return { ...(method === undefined ? {} : { method }), headers };
}

function grpcRule(c: Checker, v: unknown, field: string, routeNs: string): GRPCRouteRule | undefined {
  const before = c.errors.length;
  const m = c.mapping(v, field, ['name', 'matches', 'filters', 'backendRefs', 'timeouts', 'retry'], { sessionPersistence: 'not supported' });
  if (m === undefined) return undefined;
  const name = c.opt(m, 'name', field, (x, f) => ruleName(c, x, f), undefined);
  const matches = c.opt(m, 'matches', field, (x, f) => items(c, x, f, ROUTE_LIMITS.matches, (y, at) => grpcMatch(c, y, at)), []);
  const fs = filters(c, m, field, GRPC_FILTERS, 'on a GRPCRoute rule', routeNs) as GRPCRouteFilter[] | undefined;
  const backendRefs = c.opt(m, 'backendRefs', field,
    (x, f) => items(c, x, f, ROUTE_LIMITS.backendRefs, (y, at) => httpBackendRef(c, y, at, routeNs, true) as GRPCBackendRef | undefined), []);
  const t = c.optional(m, 'timeouts') === undefined ? undefined : timeouts(c, m['timeouts'], join(field, 'timeouts'));
  const r = c.optional(m, 'retry') === undefined ? undefined : retry(c, m['retry'], join(field, 'retry'), true);
  if (c.errors.length !== before || matches === undefined || fs === undefined || backendRefs === undefined || t === null || r === null) return undefined;
  return {
    ...(name === undefined ? {} : { name }), matches, filters: fs, backendRefs,
    ...(t === undefined ? {} : { timeouts: t }), ...(r === undefined ? {} : { retry: r }),
  };
}

interface CommonSpec<R> { parentRefs: RouteParentRef[]; hostnames: string[]; rules: R[] }

function routeSpec<R extends { readonly name?: string; readonly matches: readonly unknown[] }>(
  c: Checker, v: unknown, field: string, routeNs: string, rule: (x: unknown, at: string) => R | undefined, defaultRules: R[],
): CommonSpec<R> | undefined {
  const before = c.errors.length;
  const m = c.mapping(v, field, ['parentRefs', 'hostnames', 'rules'], { useDefaultGateways: 'Ambit has no gateways' });
  if (m === undefined) return undefined;
  const parentRefs = c.req(m, 'parentRefs', field, (x, f) => items(c, x, f, ROUTE_LIMITS.parentRefs, (y, at) => parentRef(c, y, at, routeNs), 1));
  if (parentRefs !== undefined) {
    // Upstream CEL: a parent named twice must say which part each reference means (here: a port on each).
    parentRefs.forEach((p, i) => {
      const same = parentRefs.findIndex((q) => q.namespace === p.namespace && q.name === p.name);
      if (same !== i && (p.port === undefined || parentRefs[same]?.port === undefined)) {
        c.fail(join(join(field, 'parentRefs'), i), `names Service ${p.namespace}/${p.name} again (also at ${join(join(field, 'parentRefs'), same)}): each reference to the same Service needs its own port`, p.name);
      }
    });
    c.unique(parentRefs.map((p, i) => ({ key: `${p.namespace}/${p.name}:${p.port ?? ''}`, field: join(join(field, 'parentRefs'), i), shown: `${p.namespace}/${p.name}${p.port === undefined ? '' : `:${p.port}`}` })), 'parentRef');
  }
  const hostnames = c.opt(m, 'hostnames', field,
    (x, f) => items(c, x, f, ROUTE_LIMITS.hostnames, (y, at) => sized(c, y, at, 1, 253, (s) => HOSTNAME.test(s), 'a lower-case host name, optionally starting with "*."')), []);
  // An empty list is allowed (the route then routes nothing), as upstream; absent means the default.
  const rules = c.opt(m, 'rules', field, (x, f) => items(c, x, f, ROUTE_LIMITS.rules, rule), defaultRules);
  if (rules !== undefined) {
    const named = rules.flatMap((r, i) => (r.name === undefined ? [] : [{ key: r.name, field: join(join(join(field, 'rules'), i), 'name'), shown: r.name }]));
    c.unique(named, 'rule name');
    const total = rules.reduce((n, r) => n + r.matches.length, 0);
    if (total > ROUTE_LIMITS.totalMatches) c.fail(join(field, 'rules'), `must hold at most ${ROUTE_LIMITS.totalMatches} matches across all rules, got ${total}`, total);
  }
  if (c.errors.length !== before || parentRefs === undefined || hostnames === undefined || rules === undefined) return undefined;
  return { parentRefs, hostnames, rules };
}

/** spec of an HTTPRoute in namespace `routeNs` (the default namespace of its references). */
export function checkHTTPRouteSpec(c: Checker, v: unknown, field: string, routeNs: string): HTTPRouteSpec | undefined {
  // The upstream default for rules is one rule matching "/" with no backends.
  return routeSpec(c, v, field, routeNs, (x, at) => httpRule(c, x, at, routeNs), [{ matches: [DEFAULT_MATCH], filters: [], backendRefs: [] }]);
}

export function checkGRPCRouteSpec(c: Checker, v: unknown, field: string, routeNs: string): GRPCRouteSpec | undefined {
  // Upstream GRPCRoute has no default rule: without rules a route matches no call.
  return routeSpec(c, v, field, routeNs, (x, at) => grpcRule(c, x, at, routeNs), []);
}

function percentage(c: Checker, m: Mapping, field: string): number | undefined {
  return c.opt(m, 'percentage', field, (x, f) => (typeof x === 'number' && Number.isFinite(x) && x >= 0 && x <= 100
    ? x : c.bad(f, 'must be a number 0-100', x)), 100);
}

export function checkFaultInjectionSpec(c: Checker, v: unknown, field: string): FaultInjectionSpec | undefined {
  const before = c.errors.length;
  const m = c.mapping(v, field, ['delay', 'abort']);
  if (m === undefined) return undefined;
  let delay: FaultInjectionSpec['delay'];
  let abort: FaultInjectionSpec['abort'];
  const rawDelay = c.optional(m, 'delay');
  if (rawDelay !== undefined) {
    const df = join(field, 'delay');
    const d = c.mapping(rawDelay, df, ['fixedDelay', 'percentage']);
    if (d !== undefined) {
      const ms = c.req(d, 'fixedDelay', df, (x, f) => duration(c, x, f));
      const pct = percentage(c, d, df);
      if (ms !== undefined && pct !== undefined) delay = { fixedDelayMs: ms, percentage: pct };
    }
  }
  const rawAbort = c.optional(m, 'abort');
  if (rawAbort !== undefined) {
    const af = join(field, 'abort');
    const a = c.mapping(rawAbort, af, ['httpStatus', 'grpcStatus', 'percentage']);
    if (a !== undefined) {
      const httpStatus = c.req(a, 'httpStatus', af, (x, f) => c.int(x, f, 300, 599));
      // 0 (OK) is not an abort.
      const grpcStatus = c.opt(a, 'grpcStatus', af, (x, f) => {
        const code = grpcCode(c, x, f);
        return code === 0 ? c.bad(f, 'must be a gRPC error status 1-16 or its name (0 is OK, not an abort)', x) : code;
      }, undefined);
      const pct = percentage(c, a, af);
      if (httpStatus !== undefined && pct !== undefined) abort = { httpStatus, ...(grpcStatus === undefined ? {} : { grpcStatus }), percentage: pct };
    }
  }
  if (c.errors.length !== before) return undefined;
  if (delay === undefined && abort === undefined) return c.fail(field, 'must set delay or abort (or both)', v);
  return { ...(delay === undefined ? {} : { delay }), ...(abort === undefined ? {} : { abort }) };
}

/** Throws AMBIT_ERR_RESOURCE_INVALID for the first problem a checker recorded. */
export function throwIfInvalid(c: Checker, what: string): void {
  const first = c.errors[0];
  if (first === undefined) return;
  throw new AmbitError('AMBIT_ERR_RESOURCE_INVALID', `${what}: ${first.field}: ${first.message}`, {
    details: { field: first.field, value: first.value, errors: c.errors.map((e) => `${what}: ${e.field}: ${e.message}`) },
  });
}
