import type { PolicyOperation } from './resources/types.ts';

/*
 * Request-level authorization on HTTP ports (DESIGN §3): the HTTP half of an
 * AuthorizationPolicy operation (`methods`, `paths`, `hosts` and their `not`
 * forms) and the one evaluator of a connection's request policy. Pure and
 * synchronous.
 *
 * A connection's peer and port are known once, when it opens, so
 * authorization.ts decides everything that depends on them there and leaves
 * a RequestPolicy: per applicable DENY and ALLOW policy, the HTTP conditions
 * still open. ambit-dataplane evaluates that per request
 * (dataplane/src/l7/authz.rs, the same algorithm over the same values); this
 * module is the definition both follow, and what `ambitctl explain` runs.
 * test/shared/authorization-http-vectors.json holds cases both implementations
 * are tested against.
 *
 * Istio's semantics, as Envoy's RBAC filter applies them for istiod:
 *  - a value is "*" (any non-empty value), "prefix*", "*suffix" or exact;
 *  - `paths` match the request path without its query, after RFC 3986
 *    normalisation (Istio's default BASE: percent-encoded unreserved
 *    characters decoded, other escapes upper-cased, "." and ".." segments
 *    removed; a backslash counts as "/"); the normalised path is the one
 *    forwarded to the app, so the app sees the path that was authorized;
 *  - `hosts` match the Host/:authority header case-insensitively and as
 *    written: "example.com" does not match "example.com:8080" (write
 *    "example.com:*" for any port, "*.example.com" for any subdomain);
 *  - `methods` match the method exactly (case-sensitive);
 *  - an operation matches when every field given matches; a `not` field
 *    matches when none of its values does; a request without a Host matches
 *    no `hosts` and every `notHosts`.
 */

export const MATCH_KINDS = ['exact', 'prefix', 'suffix', 'any'] as const;
export type MatchKind = (typeof MATCH_KINDS)[number];

export interface StringMatch {
  readonly kind: MatchKind;
  /** The fixed part (lower-case for hosts); "" for `any`. */
  readonly value: string;
}

/** The HTTP conditions of one operation; each list empty when the field is unset. */
export interface HttpOperation {
  readonly methods: readonly StringMatch[];
  readonly notMethods: readonly StringMatch[];
  readonly paths: readonly StringMatch[];
  readonly notPaths: readonly StringMatch[];
  readonly hosts: readonly StringMatch[];
  readonly notHosts: readonly StringMatch[];
}

export const HTTP_OPERATION_FIELDS = ['methods', 'notMethods', 'paths', 'notPaths', 'hosts', 'notHosts'] as const satisfies readonly (keyof HttpOperation & keyof PolicyOperation)[];
export type HttpOperationField = (typeof HTTP_OPERATION_FIELDS)[number];

/** One policy's part in a connection's request policy: it matches a request when any operation does (an operation with no condition matches every request). */
export interface HttpPolicy {
  /** "<namespace>/<name>". */
  readonly name: string;
  readonly operations: readonly HttpOperation[];
}

/**
 * What is left to decide per request on one connection, in evaluation order.
 * A request is denied by the first `deny` policy that matches; otherwise, when
 * `allowRequired`, it must match one of `allow` (no ALLOW policy matching every
 * request of the connection, but some matching some); otherwise it is allowed.
 */
export interface RequestPolicy {
  readonly deny: readonly HttpPolicy[];
  readonly allow: readonly HttpPolicy[];
  readonly allowRequired: boolean;
}

/** What a request policy reads of a request. */
export interface HttpRequestFacts {
  readonly method: string;
  /** The request target's path (origin form, query allowed), as received. */
  readonly path: string;
  /** The Host header or :authority; undefined when the request had none. */
  readonly host: string | undefined;
}

/** `connection_allowed`: nothing was left to decide per request (no DENY with HTTP conditions matched, and an ALLOW matched the whole connection or none applies). */
export type RequestDecisionReason = 'denied_by_policy' | 'no_allow_match' | 'allowed_by_policy' | 'connection_allowed' | 'bad_path';

export interface RequestDecision {
  readonly allowed: boolean;
  /** The deciding policy "<namespace>/<name>"; undefined when none decided. */
  readonly policy: string | undefined;
  readonly reason: RequestDecisionReason;
}

export const EMPTY_REQUEST_POLICY: RequestPolicy = Object.freeze({ deny: Object.freeze([]), allow: Object.freeze([]), allowRequired: false });

/** A request policy that decides nothing per request. */
export function isEmptyRequestPolicy(p: RequestPolicy): boolean {
  return p.deny.length === 0 && !p.allowRequired;
}

// ---------------------------------------------------------------- compile

/** Istio's string match; validation (validate-policy.ts) has refused "*" anywhere else. */
export function stringMatch(pattern: string, lowerCase: boolean): StringMatch {
  const p = lowerCase ? pattern.toLowerCase() : pattern;
  if (p === '*') return { kind: 'any', value: '' };
  if (p.startsWith('*')) return { kind: 'suffix', value: p.slice(1) };
  if (p.endsWith('*')) return { kind: 'prefix', value: p.slice(0, -1) };
  return { kind: 'exact', value: p };
}

/** The HTTP conditions of an operation; undefined when it has none (a port-only operation). */
export function compileHttpOperation(op: PolicyOperation): HttpOperation | undefined {
  // `?? []`: a policy stored before these fields existed has none of them.
  const list = (field: HttpOperationField): readonly StringMatch[] => (op[field] ?? []).map((v) => stringMatch(v, field === 'hosts' || field === 'notHosts'));
  const compiled: HttpOperation = {
    methods: list('methods'), notMethods: list('notMethods'),
    paths: list('paths'), notPaths: list('notPaths'),
    hosts: list('hosts'), notHosts: list('notHosts'),
  };
  return HTTP_OPERATION_FIELDS.some((f) => compiled[f].length > 0) ? compiled : undefined;
}

/** An operation that matches every request (a rule whose HTTP part is already met). */
export const ANY_REQUEST: HttpOperation = Object.freeze({ methods: [], notMethods: [], paths: [], notPaths: [], hosts: [], notHosts: [] });

// ---------------------------------------------------------------- evaluate

const UNRESERVED = /[A-Za-z0-9\-._~]/;
const HEX = /^[0-9A-Fa-f]{2}$/;

/**
 * The request target's path normalised as Istio's default (BASE, RFC 3986
 * section 6.2.2) normalises it, with the query kept apart; undefined when it
 * is not an origin-form path ("/..."), which is answered 400.
 */
export function normalizePath(target: string): { readonly path: string; readonly query: string } | undefined {
  const q = target.indexOf('?');
  const raw = q === -1 ? target : target.slice(0, q);
  const query = q === -1 ? '' : target.slice(q);
  if (!raw.startsWith('/') && !raw.startsWith('\\')) return undefined;
  let decoded = '';
  for (let i = 0; i < raw.length; i++) {
    const c = raw[i]!;
    if (c === '%' && HEX.test(raw.slice(i + 1, i + 3))) {
      const ch = String.fromCharCode(parseInt(raw.slice(i + 1, i + 3), 16));
      decoded += UNRESERVED.test(ch) ? ch : `%${raw.slice(i + 1, i + 3).toUpperCase()}`;
      i += 2;
    } else {
      decoded += c === '\\' ? '/' : c;
    }
  }
  return { path: removeDotSegments(decoded), query };
}

/** RFC 3986 section 5.2.4, over segments. */
function removeDotSegments(path: string): string {
  const segments = path.split('/').slice(1);
  const out: string[] = [];
  segments.forEach((s, i) => {
    const last = i === segments.length - 1;
    if (s === '.' || s === '..') {
      if (s === '..') out.pop();
      // A trailing dot segment leaves the path ending in "/".
      if (last) out.push('');
    } else {
      out.push(s);
    }
  });
  return `/${out.join('/')}`;
}

function matchOne(m: StringMatch, v: string): boolean {
  switch (m.kind) {
    case 'any': return v.length > 0;
    case 'exact': return v === m.value;
    case 'prefix': return v.startsWith(m.value);
    case 'suffix': return v.endsWith(m.value);
  }
}

function anyMatches(list: readonly StringMatch[], v: string | undefined): boolean {
  if (v === undefined) return false;
  for (const m of list) if (matchOne(m, v)) return true;
  return false;
}

/** Every field given must match; a `not` field, none of its values. */
function operationMatches(op: HttpOperation, method: string, path: string, host: string | undefined): boolean {
  if (op.methods.length > 0 && !anyMatches(op.methods, method)) return false;
  if (op.notMethods.length > 0 && anyMatches(op.notMethods, method)) return false;
  if (op.paths.length > 0 && !anyMatches(op.paths, path)) return false;
  if (op.notPaths.length > 0 && anyMatches(op.notPaths, path)) return false;
  if (op.hosts.length > 0 && !anyMatches(op.hosts, host)) return false;
  if (op.notHosts.length > 0 && anyMatches(op.notHosts, host)) return false;
  return true;
}

function policyMatches(p: HttpPolicy, method: string, path: string, host: string | undefined): boolean {
  for (const op of p.operations) if (operationMatches(op, method, path, host)) return true;
  return false;
}

/** One request against a connection's request policy: DENY first, then ALLOW. */
export function evaluateRequest(policy: RequestPolicy, req: HttpRequestFacts): RequestDecision {
  const normalized = normalizePath(req.path);
  if (normalized === undefined) return { allowed: false, policy: undefined, reason: 'bad_path' };
  const path = normalized.path;
  // ASCII only, as the data plane does: a Host header is visible ASCII.
  const host = req.host?.replace(/[A-Z]/g, (c) => c.toLowerCase());
  for (const p of policy.deny) {
    if (policyMatches(p, req.method, path, host)) return { allowed: false, policy: p.name, reason: 'denied_by_policy' };
  }
  if (!policy.allowRequired) return { allowed: true, policy: undefined, reason: 'connection_allowed' };
  for (const p of policy.allow) {
    if (policyMatches(p, req.method, path, host)) return { allowed: true, policy: p.name, reason: 'allowed_by_policy' };
  }
  return { allowed: false, policy: undefined, reason: 'no_allow_match' };
}
