import { canonicalIp, parseCidr } from '../net-address.ts';
import { parseSpiffeId } from '../spiffe-id.ts';
import { isHttpProtocol, MESH_NAMESPACE, POLICY_ACTIONS } from './types.ts';
import type { AuthorizationPolicy, AuthorizationPolicySpec, PolicyAction, PolicyOperation, PolicyRule, PolicySource, Resource, Service, Workload } from './types.ts';
import { Checker, describe, isDnsLabel, isDnsSubdomain, join, type FieldError } from './validate-fields.ts';
import { HTTP_OPERATION_FIELDS, normalizePath, type HttpOperationField } from '../authorization-http.ts';

/**
 * AuthorizationPolicy specs in Istio's input shape (spec.selector.matchLabels,
 * rules[].from[].source, rules[].to[].operation) checked and flattened into
 * the core types. Every list in a policy is a set: values are canonicalised
 * (principals without "spiffe://", IPs and CIDRs in canonical text), sorted,
 * and a repeat is an error, so two spellings of one policy store identically.
 */
export const SOURCE_FIELDS = [
  'principals', 'notPrincipals', 'namespaces', 'notNamespaces',
  'serviceAccounts', 'notServiceAccounts', 'ipBlocks', 'notIpBlocks',
] as const satisfies readonly (keyof PolicySource)[];
type SourceField = (typeof SOURCE_FIELDS)[number];

export const OPERATION_FIELDS = ['ports', 'notPorts', ...HTTP_OPERATION_FIELDS] as const satisfies readonly (keyof PolicyOperation)[];
type OperationField = (typeof OPERATION_FIELDS)[number];

const UNSUPPORTED = 'not supported: Ambit authorizes by peer, port, method, path and host';
const SPEC_HINTS = {
  provider: 'not supported: only ALLOW and DENY actions exist',
  targetRef: 'not supported: use selector.matchLabels',
  targetRefs: 'not supported: use selector.matchLabels',
};
const RULE_HINTS = { when: `conditions are ${UNSUPPORTED}` };
const OPERATION_HINTS = {};
const SOURCE_HINTS = {
  requestPrincipals: `JWT principals are ${UNSUPPORTED}`,
  notRequestPrincipals: `JWT principals are ${UNSUPPORTED}`,
  remoteIpBlocks: 'not supported: there is no proxy hop; use ipBlocks',
  notRemoteIpBlocks: 'not supported: there is no proxy hop; use notIpBlocks',
};

/** A canonicaliser: the stored form of a valid value, or a message (which names the value). */
type Canon = (s: string) => { readonly value: string } | { readonly message: string };

type Pattern =
  | { readonly kind: 'any' }
  | { readonly kind: 'exact' }
  | { readonly kind: 'bad' }
  | { readonly kind: 'prefix'; readonly fixed: string }
  | { readonly kind: 'suffix'; readonly fixed: string };

/** Istio's string match: "*", "prefix*", "*suffix" or an exact value; "*" anywhere else is an error. */
function pattern(s: string): Pattern {
  if (s === '*') return { kind: 'any' };
  const star = s.indexOf('*');
  if (star === -1) return { kind: 'exact' };
  if (star !== s.lastIndexOf('*')) return { kind: 'bad' };
  if (star === 0) return { kind: 'suffix', fixed: s.slice(1) };
  if (star === s.length - 1) return { kind: 'prefix', fixed: s.slice(0, -1) };
  return { kind: 'bad' };
}

const WILDCARD_RULE = '"*" may stand alone or as the first or last character only';
const PRINCIPAL_FORMS = 'spiffe://<trust-domain>/ns/<ns>/sa/<sa> or <trust-domain>/ns/<ns>/sa/<sa>';
const PRINCIPAL_CHARS = /^[A-Za-z0-9._/-]+$/;

/**
 * Principals are stored in Istio's scheme-less form ("td/ns/a/sa/b"), so the
 * engine compares one spelling against the peer ID with "spiffe://" removed.
 * One without a trust domain could never match, and in a DENY would silently
 * deny nothing, so it is refused.
 */
function principal(s: string): ReturnType<Canon> {
  const body = s.startsWith('spiffe://') ? s.slice('spiffe://'.length) : s;
  const p = pattern(body);
  if (p.kind === 'any') return { value: '*' };
  if (p.kind === 'bad') return { message: `${WILDCARD_RULE}, got ${describe(s)}` };
  if (p.kind !== 'suffix' && body.startsWith('ns/')) {
    return { message: `must start with the trust domain (e.g. cluster.local/${body}), got ${describe(s)}` };
  }
  if (p.kind === 'exact') {
    try {
      parseSpiffeId(`spiffe://${body}`);
      return { value: body };
    } catch (err) {
      const why = err instanceof Error ? err.message.replace(/^invalid SPIFFE ID "[^"]*": /, '') : String(err);
      return { message: `must be ${PRINCIPAL_FORMS}, "*" or a wildcard; ${describe(s)}: ${why}` };
    }
  }
  if (!PRINCIPAL_CHARS.test(p.fixed)) return { message: `must be ${PRINCIPAL_FORMS} with a leading or trailing "*", got ${describe(s)}` };
  // A prefix pattern starts with the trust domain, which the SPIFFE spec makes lower-case.
  const td = p.fixed.split('/')[0] ?? '';
  if (p.kind === 'prefix' && !/^[a-z0-9._-]*$/.test(td)) {
    return { message: `must start with a lower-case trust domain, got ${describe(s)}` };
  }
  return { value: body };
}

function namespacePattern(s: string): ReturnType<Canon> {
  const p = pattern(s);
  const ok = p.kind === 'any' || (p.kind === 'exact' && isDnsLabel(s))
    || ((p.kind === 'prefix' || p.kind === 'suffix') && /^[a-z0-9-]+$/.test(p.fixed));
  return ok ? { value: s } : { message: `must be a namespace name, "*" or a name with a leading or trailing "*", got ${describe(s)}` };
}

/** "<namespace>/<service-account>", with the same wildcards as principals ("prod/*": any account in prod). */
function serviceAccount(s: string): ReturnType<Canon> {
  const p = pattern(s);
  const [ns, sa, ...rest] = s.split('/');
  const ok = p.kind === 'any'
    || (p.kind === 'exact' && rest.length === 0 && ns !== undefined && sa !== undefined && isDnsLabel(ns) && isDnsSubdomain(sa))
    || ((p.kind === 'prefix' || p.kind === 'suffix') && /^[a-z0-9./-]+$/.test(p.fixed) && s.split('/').length <= 2);
  return ok ? { value: s } : { message: `must be "<namespace>/<service-account>", "*" or one with a leading or trailing "*", got ${describe(s)}` };
}

function ipBlock(s: string): ReturnType<Canon> {
  if (!s.includes('/')) {
    const ip = canonicalIp(s);
    return ip === undefined ? { message: `must be an IP address or CIDR block (IPv4 without leading zeros), got ${describe(s)}` } : { value: ip };
  }
  const r = parseCidr(s);
  return r.ok ? { value: r.text } : { message: `must be a valid CIDR block: ${describe(s)} ${r.reason}` };
}

/** An HTTP method (RFC 9110 token), matched exactly as Istio does: "get" is not GET. */
function method(s: string): ReturnType<Canon> {
  const p = pattern(s);
  const fixed = p.kind === 'prefix' || p.kind === 'suffix' ? p.fixed : s;
  if (p.kind === 'bad') return { message: `${WILDCARD_RULE}, got ${describe(s)}` };
  return p.kind === 'any' || /^[!#$%&'+\-.^_`|~0-9A-Za-z]+$/.test(fixed) ? { value: s } : { message: `must be an HTTP method such as GET, got ${describe(s)}` };
}

const PATH_CHARS = /^[\x21-\x7e]+$/;

/**
 * A request path as Istio matches it: exact ("/a/b"), prefix ("/a/*"),
 * suffix ("*.png") or "*". Paths are compared after normalisation, so an
 * exact or prefix value that normalisation would change could never match
 * and is refused with the form that would.
 */
function path(s: string): ReturnType<Canon> {
  const p = pattern(s);
  if (p.kind === 'any') return { value: s };
  if (p.kind === 'bad' || s.includes('{')) return { message: `${WILDCARD_RULE} (no path templates), got ${describe(s)}` };
  const fixed = p.kind === 'exact' ? s : p.fixed;
  if (!PATH_CHARS.test(fixed)) return { message: `must be a path of visible ASCII characters, got ${describe(s)}` };
  if (fixed.includes('?') || fixed.includes('#')) return { message: `is matched against the path without its query; remove "?" or "#", got ${describe(s)}` };
  if (p.kind === 'suffix') return { value: s };
  if (!fixed.startsWith('/')) return { message: `must start with "/" (or be "*" or a "*suffix"), got ${describe(s)}` };
  const n = normalizePath(fixed);
  if (n !== undefined && n.path !== fixed) return { message: `would never match: requests are matched by their normalised path, ${describe(n.path)}; got ${describe(s)}` };
  return { value: s };
}

/** A Host/:authority value, "*.example.com" or "example.com:*" forms; compared case-insensitively, so stored lower-case. */
function host(s: string): ReturnType<Canon> {
  const p = pattern(s);
  if (p.kind === 'any') return { value: s };
  if (p.kind === 'bad') return { message: `${WILDCARD_RULE}, got ${describe(s)}` };
  const fixed = p.kind === 'exact' ? s : p.fixed;
  return /^[A-Za-z0-9._:\[\]-]+$/.test(fixed) ? { value: s.toLowerCase() } : { message: `must be a host name or address, optionally with ":port", got ${describe(s)}` };
}

const HTTP_CANON: Record<HttpOperationField, Canon> = {
  methods: method, notMethods: method, paths: path, notPaths: path, hosts: host, notHosts: host,
};

const CANON: Record<SourceField, Canon> = {
  principals: principal, notPrincipals: principal,
  namespaces: namespacePattern, notNamespaces: namespacePattern,
  serviceAccounts: serviceAccount, notServiceAccounts: serviceAccount,
  ipBlocks: ipBlock, notIpBlocks: ipBlock,
};

function stringItem(c: Checker, canon: Canon): (x: unknown, at: string) => string | undefined {
  return (x, at) => {
    const s = c.string(x, at);
    if (s === undefined) return undefined;
    if (s === '') return c.fail(at, 'must be a non-empty string', s);
    const r = canon(s);
    return 'value' in r ? r.value : c.fail(at, r.message, s);
  };
}

/** Ports as numbers, or as strings of digits (Istio's schema types them as strings). */
function portItem(c: Checker): (x: unknown, at: string) => number | undefined {
  return (x, at) => c.int(typeof x === 'string' && /^[1-9][0-9]{0,4}$/.test(x) ? Number(x) : x, at, 1, 65535);
}

/**
 * Checks the fields of a source or an operation. An empty one (no field with
 * values) matches everything; in a list of alternatives that silently turns
 * the rule into match-all, so it is refused rather than guessed at.
 */
function fields<K extends string, T extends string | number>(
  c: Checker, v: unknown, field: string, keys: readonly K[], hints: Readonly<Record<string, string>>,
  item: (k: K) => (x: unknown, at: string) => T | undefined,
): Map<K, T[]> | undefined {
  const before = c.errors.length;
  const m = c.mapping(v, field, keys, hints);
  if (m === undefined) return undefined;
  const out = new Map<K, T[]>();
  for (const key of keys) {
    const raw = c.optional(m, key);
    const values = raw === undefined ? [] : c.set(raw, join(field, key), item(key));
    if (values !== undefined) out.set(key, values);
  }
  if (c.errors.length !== before) return undefined;
  if ([...out.values()].every((v) => v.length === 0)) {
    return c.fail(field, 'is empty, which matches everything; omit it instead', m);
  }
  return out;
}

function source(c: Checker, v: unknown, field: string): PolicySource | undefined {
  const f = fields(c, v, field, SOURCE_FIELDS, SOURCE_HINTS, (k) => stringItem(c, CANON[k]));
  if (f === undefined) return undefined;
  const get = (k: SourceField): string[] => f.get(k) ?? [];
  return {
    principals: get('principals'), notPrincipals: get('notPrincipals'),
    namespaces: get('namespaces'), notNamespaces: get('notNamespaces'),
    serviceAccounts: get('serviceAccounts'), notServiceAccounts: get('notServiceAccounts'),
    ipBlocks: get('ipBlocks'), notIpBlocks: get('notIpBlocks'),
  };
}

function operation(c: Checker, v: unknown, field: string): PolicyOperation | undefined {
  const f = fields<OperationField, string | number>(c, v, field, OPERATION_FIELDS, OPERATION_HINTS,
    (k) => (k === 'ports' || k === 'notPorts' ? portItem(c) : stringItem(c, HTTP_CANON[k])));
  if (f === undefined) return undefined;
  const out: { -readonly [K in keyof PolicyOperation]: PolicyOperation[K] } = {
    ports: (f.get('ports') ?? []) as number[], notPorts: (f.get('notPorts') ?? []) as number[],
  };
  // HTTP fields only when set, so an L4 operation keeps its shape.
  for (const k of HTTP_OPERATION_FIELDS) {
    const values = f.get(k) as string[] | undefined;
    if (values !== undefined && values.length > 0) out[k] = values;
  }
  return out;
}

/** A list of single-key wrappers ({source: ...} / {operation: ...}), unwrapped. */
function wrapped<T>(
  c: Checker, v: unknown, field: string, key: string, inner: (c: Checker, v: unknown, field: string) => T | undefined,
): T[] | undefined {
  if (v === undefined) return [];
  const list = c.list(v, field);
  if (list === undefined) return undefined;
  const out: T[] = [];
  let ok = true;
  list.forEach((x, i) => {
    const at = join(field, i);
    const m = c.mapping(x, at, [key]);
    const value = m === undefined ? undefined : c.required(m, key, at);
    const checked = value === undefined ? undefined : inner(c, value, join(at, key));
    if (checked === undefined) ok = false;
    else out.push(checked);
  });
  return ok ? out : undefined;
}

function rule(c: Checker, v: unknown, field: string): PolicyRule | undefined {
  const m = c.mapping(v, field, ['from', 'to'], RULE_HINTS);
  if (m === undefined) return undefined;
  const from = wrapped(c, c.optional(m, 'from'), join(field, 'from'), 'source', source);
  const to = wrapped(c, c.optional(m, 'to'), join(field, 'to'), 'operation', operation);
  return from === undefined || to === undefined ? undefined : { from, to };
}

function action(c: Checker, v: unknown, field: string): PolicyAction | undefined {
  if (v === undefined) return undefined;
  const found = POLICY_ACTIONS.find((a) => a === v);
  if (found !== undefined) return found;
  const extra = v === 'AUDIT' || v === 'CUSTOM' ? ` (${v} is not supported)` : '';
  return c.bad(field, `must be "ALLOW" or "DENY"${extra}`, v);
}

/**
 * Istio's workload selector. An empty one ({} or matchLabels: {}) selects
 * every workload in scope, as no selector does; it is kept as {} so that
 * documents and core values convert back and forth exactly.
 */
function selector(c: Checker, v: unknown, field: string): Record<string, string> | undefined {
  const m = c.mapping(v, field, ['matchLabels'], { matchExpressions: 'not supported: use matchLabels' });
  if (m === undefined) return undefined;
  return c.opt(m, 'matchLabels', field, c.labels, {});
}

/** The spec of an AuthorizationPolicy; undefined when a problem was recorded in `c`. */
export function checkPolicySpec(c: Checker, v: unknown, field: string): AuthorizationPolicySpec | undefined {
  const before = c.errors.length;
  const m = c.mapping(v, field, ['selector', 'action', 'rules'], SPEC_HINTS);
  if (m === undefined) return undefined;
  const rawSelector = c.optional(m, 'selector');
  const sel = rawSelector === undefined ? undefined : selector(c, rawSelector, join(field, 'selector'));
  const act = action(c, c.required(m, 'action', field), join(field, 'action'));
  const rawRules = c.optional(m, 'rules');
  const rulesList = rawRules === undefined ? [] : c.list(rawRules, join(field, 'rules'));
  const rules: PolicyRule[] = [];
  rulesList?.forEach((r, i) => {
    const checked = rule(c, r, join(join(field, 'rules'), i));
    if (checked !== undefined) rules.push(checked);
  });
  if (c.errors.length !== before || act === undefined) return undefined;
  return sel === undefined ? { action: act, rules } : { selector: sel, action: act, rules };
}

/**
 * HTTP operation fields only mean something on ports a Service declares
 * http, http2 or grpc: elsewhere they fail closed (authorization.ts), so a
 * policy whose HTTP conditions could reach the workloads it selects only
 * through TCP ports is refused, naming the field, rather than silently
 * denying (DENY) or never admitting (ALLOW) every connection. Checked
 * against the mesh as the apply would leave it (`resources`). A policy that
 * selects no workload yet is accepted: there is nothing to judge it by.
 */
export function httpFieldsOnTcpPorts(policy: AuthorizationPolicy, resources: Iterable<Resource>): FieldError | undefined {
  const ns = policy.metadata.namespace;
  const sel = Object.entries(policy.spec.selector ?? {});
  const workloads: Workload[] = [];
  const services: Service[] = [];
  for (const r of resources) {
    if (r.kind === 'Service') services.push(r);
    if (r.kind !== 'Workload' || (ns !== MESH_NAMESPACE && r.metadata.namespace !== ns)) continue;
    if (sel.every(([k, v]) => Object.hasOwn(r.metadata.labels, k) && r.metadata.labels[k] === v)) workloads.push(r);
  }
  if (workloads.length === 0) return undefined;
  // The target ports of the selected workloads, each with whether a Service selecting it declares HTTP there.
  const ports = new Map<number, boolean>();
  for (const svc of services) {
    const ssel = Object.entries(svc.spec.selector);
    const selects = ssel.length > 0 && workloads.some((w) => w.metadata.namespace === svc.metadata.namespace && ssel.every(([k, v]) => w.metadata.labels[k] === v));
    if (!selects) continue;
    for (const p of svc.spec.ports) ports.set(p.targetPort, (ports.get(p.targetPort) ?? false) || isHttpProtocol(p.appProtocol));
  }
  for (const w of workloads) for (const p of w.spec.ports) if (!ports.has(p)) ports.set(p, false);
  let problem: FieldError | undefined;
  policy.spec.rules.forEach((rule, i) => rule.to.forEach((op, j) => {
    const field = HTTP_OPERATION_FIELDS.find((f) => (op[f]?.length ?? 0) > 0);
    if (field === undefined || problem !== undefined) return;
    const candidates = (op.ports.length > 0 ? op.ports : [...ports.keys()]).filter((p) => !op.notPorts.includes(p));
    if (candidates.some((p) => ports.get(p) === true)) return;
    const names = workloads.slice(0, 3).map((w) => `${w.metadata.namespace}/${w.metadata.name}`).join(', ') + (workloads.length > 3 ? ', …' : '');
    const where = candidates.length > 0 ? `only TCP ports (${[...candidates].sort((a, b) => a - b).join(', ')})` : 'no port a Service declares';
    problem = {
      field: `spec.rules[${i}].to[${j}].operation.${field}`,
      message: `HTTP fields apply only to ports a Service declares http, http2 or grpc (appProtocol), and this operation reaches the workloads the policy selects (${names}) through ${where}; declare the port's appProtocol (in the same apply, or first) or remove the field`,
      value: op[field],
    };
  }));
  return problem;
}
