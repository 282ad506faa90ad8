import { BlockList, isIP } from 'node:net';
import { AmbitError } from './errors.ts';
import { MESH_NAMESPACE } from './resources/types.ts';
import type { AuthorizationPolicy, PolicyOperation, PolicySource, Workload } from './resources/types.ts';
import type { SpiffeId } from './spiffe-id.ts';
import { ANY_REQUEST, compileHttpOperation, EMPTY_REQUEST_POLICY, type HttpOperation, type HttpPolicy, type RequestPolicy } from './authorization-http.ts';

/**
 * L4 authorization (DESIGN.md §3), Istio-compatible: any matching DENY denies;
 * with no applicable ALLOW the connection is allowed; otherwise an ALLOW must
 * match. Pure and synchronous: the inbound proxy calls evaluate() per accepted
 * connection and again for every live connection when policies change, so all
 * parsing happens once in the constructor and evaluate() allocates at most one
 * small peer view per call.
 *
 * On a port a Service declares http, http2 or grpc (`httpPort`), operations
 * may also test the request's method, path and host. The connection is then
 * decided on what it can be decided on, and requestPolicy() leaves the rest
 * per request (authorization-http.ts): an ALLOW rule with HTTP conditions lets
 * the connection open and is required of each request; a DENY rule with HTTP
 * conditions denies the requests it matches. So L7 rules narrow what L4
 * allows, never widen it. On any other port such a rule fails closed, as
 * ztunnel does with L7 rules it cannot evaluate: its ALLOW never matches, its
 * DENY matches every connection its other conditions match.
 *
 * An Authorizer is immutable: the agent builds a new one on every policy change.
 */

export interface ConnectionFacts {
  /** Verified peer identity; undefined for plaintext (permissive mode) connections. */
  readonly sourceIdentity: SpiffeId | undefined;
  /**
   * IP of the client, only when verified: the TCP peer of a plaintext
   * connection, or a `Forwarded` claim the peer agent proved
   * (connection/source-proof.ts). undefined: no verified address, so no
   * `ipBlocks` ALLOW can match (and an `ipBlocks` DENY fails closed).
   */
  readonly sourceAddress: string | undefined;
  /** The local destination workload. */
  readonly destination: Workload;
  readonly destinationPort: number;
  /** A Service selecting the destination declares this port http, http2 or grpc: requests are authorized one by one. */
  readonly httpPort?: boolean;
}

export type DecisionReason = 'denied_by_policy' | 'no_allow_match' | 'allowed_by_policy' | 'no_policies';

export interface Decision {
  readonly allowed: boolean;
  /** "<namespace>/<name>" of the deciding policy; undefined when no policy decided (no_policies, no_allow_match). */
  readonly policy: string | undefined;
  /** Index in the deciding policy's `spec.rules` of the first rule that matched; undefined when no policy decided. */
  readonly rule: number | undefined;
  /** Short machine-readable reason. */
  readonly reason: DecisionReason;
}

/**
 * What a denial names as its policy when no ALLOW matched: the value of
 * ambit_policy_denials_total's `policy` label and of the access log's
 * `policy` field. No single ALLOW policy is to blame, so none is named; the
 * parentheses keep it from ever equalling a real "<namespace>/<name>".
 */
export const NO_ALLOW_MATCHED = '(no ALLOW matched)';

/** The `policy` a denial is counted and logged under: the deciding policy, or NO_ALLOW_MATCHED. */
export function deniedBy(decision: { readonly policy?: string | undefined; readonly reason: string }): string {
  return decision.policy ?? (decision.reason === 'no_allow_match' ? NO_ALLOW_MATCHED : '');
}

const NO_POLICIES: Decision = Object.freeze({ allowed: true, policy: undefined, rule: undefined, reason: 'no_policies' });
const NO_ALLOW_MATCH: Decision = Object.freeze({ allowed: false, policy: undefined, rule: undefined, reason: 'no_allow_match' });

const SPIFFE_SCHEME = 'spiffe://';
const MAPPED_V4 = /^::ffff:(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})$/i;

/**
 * Istio's string match on one list: "*" matches any non-empty value,
 * "prefix*" and "*suffix" match by prefix/suffix, anything else exactly.
 * A "*" anywhere else is literal (as in Istio).
 */
class StringMatcher {
  readonly #any: boolean;
  readonly #exact: ReadonlySet<string>;
  readonly #prefixes: readonly string[];
  readonly #suffixes: readonly string[];

  constructor(patterns: readonly string[]) {
    let any = false;
    const exact = new Set<string>();
    const prefixes: string[] = [];
    const suffixes: string[] = [];
    for (const p of patterns) {
      if (p === '*') any = true;
      else if (p.startsWith('*')) suffixes.push(p.slice(1));
      else if (p.endsWith('*')) prefixes.push(p.slice(0, -1));
      else exact.add(p);
    }
    this.#any = any;
    this.#exact = exact;
    this.#prefixes = prefixes;
    this.#suffixes = suffixes;
  }

  matches(value: string): boolean {
    if (this.#any && value.length > 0) return true;
    if (this.#exact.has(value)) return true;
    for (const p of this.#prefixes) if (value.startsWith(p)) return true;
    for (const s of this.#suffixes) if (value.endsWith(s)) return true;
    return false;
  }
}

/** What a connection offers for matching, derived once per evaluate(). */
interface Peer {
  /** Istio form "<td>/<path>"; undefined for plaintext. */
  readonly principal: string | undefined;
  /** Only workload identities have these. */
  readonly namespace: string | undefined;
  /** "<ns>/<sa>". */
  readonly serviceAccount: string | undefined;
  /** undefined when the source address is not an IP (never expected, but must not fail open). */
  readonly ip: string | undefined;
  readonly family: 'ipv4' | 'ipv6';
  readonly port: number;
  readonly httpPort: boolean;
}

type IdentityAttribute = 'principal' | 'namespace' | 'serviceAccount';

interface IdentityCheck {
  readonly attribute: IdentityAttribute;
  /** true for the not-forms: the field matches when no pattern does. */
  readonly negated: boolean;
  readonly matcher: StringMatcher;
}

interface IpCheck {
  readonly negated: boolean;
  readonly blocks: BlockList;
}

/** A source's set fields; unset (empty) fields are simply absent, so they never constrain. */
interface CompiledSource {
  readonly identity: readonly IdentityCheck[];
  readonly ip: readonly IpCheck[];
}

interface CompiledOperation {
  /** undefined: unset, any port. */
  readonly ports: readonly number[] | undefined;
  readonly notPorts: readonly number[] | undefined;
  /** The HTTP conditions; undefined when there are none. */
  readonly http: HttpOperation | undefined;
}

interface CompiledRule {
  /** Empty: any source. */
  readonly from: readonly CompiledSource[];
  /** Empty: any port. */
  readonly to: readonly CompiledOperation[];
}

interface CompiledPolicy {
  readonly policy: AuthorizationPolicy;
  readonly deny: boolean;
  /** Label pairs a workload must all carry; empty (no selector, or {}): every workload in scope. */
  readonly selector: readonly (readonly [string, string])[];
  readonly rules: readonly CompiledRule[];
  /** One per rule, returned as-is when this policy decides by that rule, so evaluate() allocates no decision. */
  readonly decisions: readonly Decision[];
}

interface Applicable {
  readonly deny: readonly CompiledPolicy[];
  readonly allow: readonly CompiledPolicy[];
  readonly policies: readonly AuthorizationPolicy[];
}

/** Code-unit order, not localeCompare: the order must not depend on the host's locale. */
function comparePolicies(a: AuthorizationPolicy, b: AuthorizationPolicy): number {
  const x = a.metadata, y = b.metadata;
  if (x.namespace !== y.namespace) return x.namespace < y.namespace ? -1 : 1;
  return x.name < y.name ? -1 : x.name > y.name ? 1 : 0;
}

export class Authorizer {
  /** Policies of MESH_NAMESPACE: candidates for every workload. Sorted by name. */
  readonly #mesh: readonly CompiledPolicy[];
  /** Other policies by namespace (never holds MESH_NAMESPACE, so nothing is seen twice). */
  readonly #byNamespace: ReadonlyMap<string, readonly CompiledPolicy[]>;
  /**
   * Applicable policies per workload object. Keyed by object identity, not by
   * name: resources are immutable values, and a workload whose labels change
   * arrives as a new object, so an entry can never be stale.
   */
  readonly #cache = new WeakMap<Workload, Applicable>();

  /** @throws AmbitError AMBIT_ERR_RESOURCE_INVALID when a policy cannot be compiled (the caller rejects the whole update). */
  constructor(policies: readonly AuthorizationPolicy[]) {
    const mesh: CompiledPolicy[] = [];
    const byNamespace = new Map<string, CompiledPolicy[]>();
    // Sorting makes the deciding policy (the one named in decisions and logs)
    // independent of the order the controller sent policies in.
    for (const p of [...policies].sort(comparePolicies)) {
      const compiled = compilePolicy(p);
      const ns = p.metadata.namespace;
      if (ns === MESH_NAMESPACE) {
        mesh.push(compiled);
      } else {
        let list = byNamespace.get(ns);
        if (list === undefined) byNamespace.set(ns, (list = []));
        list.push(compiled);
      }
    }
    this.#mesh = mesh;
    this.#byNamespace = byNamespace;
  }

  evaluate(facts: ConnectionFacts): Decision {
    const { deny, allow } = this.#applicable(facts.destination);
    if (deny.length === 0 && allow.length === 0) return NO_POLICIES;
    const peer = peerOf(facts);
    for (const p of deny) {
      const rule = matchingRule(p, peer);
      if (rule !== -1) return p.decisions[rule]!;
    }
    if (allow.length === 0) return NO_POLICIES;
    for (const p of allow) {
      const rule = matchingRule(p, peer);
      if (rule !== -1) return p.decisions[rule]!;
    }
    return NO_ALLOW_MATCH;
  }

  /**
   * What is left to authorize per request on a connection to an HTTP port
   * that evaluate() allowed: the DENY and ALLOW policies whose rules match
   * its peer and port, each with the HTTP conditions of those rules.
   */
  requestPolicy(facts: ConnectionFacts): RequestPolicy {
    const { deny, allow } = this.#applicable(facts.destination);
    if (!facts.httpPort || (deny.length === 0 && allow.length === 0)) return EMPTY_REQUEST_POLICY;
    const peer = peerOf(facts);
    const denies: HttpPolicy[] = [];
    for (const p of deny) {
      const operations = requestOperations(p, peer);
      if (operations.length > 0) denies.push({ name: policyName(p.policy), operations });
    }
    const allows: HttpPolicy[] = [];
    for (const p of allow) {
      const operations = requestOperations(p, peer);
      // One ALLOW matching every request of the connection: no request needs another.
      if (operations.includes(ANY_REQUEST)) return { deny: denies, allow: [], allowRequired: false };
      if (operations.length > 0) allows.push({ name: policyName(p.policy), operations });
    }
    return { deny: denies, allow: allows, allowRequired: allow.length > 0 };
  }

  /** Policies that could apply to this workload (mesh-wide first, then its namespace's; each by name). */
  applicable(workload: Workload): readonly AuthorizationPolicy[] {
    return this.#applicable(workload).policies;
  }

  #applicable(workload: Workload): Applicable {
    const cached = this.#cache.get(workload);
    if (cached !== undefined) return cached;
    const deny: CompiledPolicy[] = [];
    const allow: CompiledPolicy[] = [];
    const policies: AuthorizationPolicy[] = [];
    const labels = workload.metadata.labels;
    const collect = (list: readonly CompiledPolicy[] | undefined): void => {
      if (list === undefined) return;
      for (const p of list) {
        if (!selectorMatches(p.selector, labels)) continue;
        (p.deny ? deny : allow).push(p);
        policies.push(p.policy);
      }
    };
    collect(this.#mesh);
    collect(this.#byNamespace.get(workload.metadata.namespace));
    const result: Applicable = Object.freeze({
      deny: Object.freeze(deny),
      allow: Object.freeze(allow),
      policies: Object.freeze(policies),
    });
    this.#cache.set(workload, result);
    return result;
  }
}

function policyName(p: AuthorizationPolicy): string {
  return `${p.metadata.namespace}/${p.metadata.name}`;
}

function selectorMatches(selector: CompiledPolicy['selector'], labels: Readonly<Record<string, string>>): boolean {
  // hasOwn: a selector key such as "constructor" must not be satisfied by Object.prototype.
  for (const [k, v] of selector) if (!Object.hasOwn(labels, k) || labels[k] !== v) return false;
  return true;
}

function peerOf(facts: ConnectionFacts): Peer {
  const id = facts.sourceIdentity;
  let principal: string | undefined;
  let namespace: string | undefined;
  let serviceAccount: string | undefined;
  if (id !== undefined) {
    // Istio's principal form is the SPIFFE ID without its scheme. Node, admin and
    // controller IDs get a principal too, but no namespace or service account.
    principal = id.uri.startsWith(SPIFFE_SCHEME) ? id.uri.slice(SPIFFE_SCHEME.length) : id.uri;
    if (id.kind === 'workload' && id.namespace !== undefined && id.serviceAccount !== undefined) {
      namespace = id.namespace;
      serviceAccount = `${id.namespace}/${id.serviceAccount}`;
    }
  }
  let ip: string | undefined = facts.sourceAddress;
  // A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; they must match
  // IPv4 blocks. BlockList already maps them, but checking the plain IPv4 form
  // keeps that security property from resting on an undocumented-as-contract detail.
  const mapped = ip?.startsWith('::') ? MAPPED_V4.exec(ip) : null; // skip the regex (and its array) for most peers
  if (mapped?.[1] !== undefined) ip = mapped[1];
  const version = ip === undefined ? 0 : isIP(ip);
  if (version === 0) ip = undefined;
  return { principal, namespace, serviceAccount, ip, family: version === 6 ? 'ipv6' : 'ipv4', port: facts.destinationPort, httpPort: facts.httpPort === true };
}

/** The index of the policy's first rule that matches, or -1. */
function matchingRule(p: CompiledPolicy, peer: Peer): number {
  for (let i = 0; i < p.rules.length; i++) if (ruleMatches(p.rules[i]!, peer, p.deny)) return i;
  return -1;
}

function ruleMatches(rule: CompiledRule, peer: Peer, deny: boolean): boolean {
  if (rule.from.length > 0) {
    let any = false;
    for (const s of rule.from) if (sourceMatches(s, peer, deny)) { any = true; break; }
    if (!any) return false;
  }
  if (rule.to.length > 0) {
    for (const op of rule.to) if (operationMatches(op, peer, deny)) return true;
    return false;
  }
  return true;
}

/**
 * The HTTP conditions under which the policy matches a request of this
 * connection: of each rule whose sources match the peer, the operations
 * whose ports match (ANY_REQUEST for one without HTTP conditions, and for a
 * rule without operations). Empty: the policy matches no request.
 */
function requestOperations(p: CompiledPolicy, peer: Peer): HttpOperation[] {
  const out: HttpOperation[] = [];
  for (const rule of p.rules) {
    if (rule.from.length > 0 && !rule.from.some((s) => sourceMatches(s, peer, p.deny))) continue;
    if (rule.to.length === 0) out.push(ANY_REQUEST);
    for (const op of rule.to) if (portsMatch(op, peer.port)) out.push(op.http ?? ANY_REQUEST);
  }
  return out;
}

/**
 * Every set field must match. When the connection lacks the attribute a field
 * tests — plaintext has no identity at all, node/admin/controller identities
 * have no namespace or service account, an unparseable address has no IP — the
 * field fails closed, which depends on the action (Istio does the same):
 *  - ALLOW: the field does not match, so e.g. `notPrincipals: [x]` cannot admit
 *    a plaintext client that merely has no principal to compare;
 *  - DENY: the field counts as matching, so `principals: ["*"]` or
 *    `notNamespaces: [x]` deny plaintext too — otherwise an attacker could dodge
 *    a DENY simply by not using mTLS.
 * Fields on present attributes (e.g. ipBlocks) still have to match as usual.
 */
function sourceMatches(s: CompiledSource, peer: Peer, deny: boolean): boolean {
  for (const check of s.identity) {
    const value = peer[check.attribute];
    if (value === undefined) {
      if (!deny) return false;
      continue;
    }
    if (check.matcher.matches(value) === check.negated) return false;
  }
  for (const check of s.ip) {
    if (peer.ip === undefined) {
      if (!deny) return false;
      continue;
    }
    if (check.blocks.check(peer.ip, peer.family) === check.negated) return false;
  }
  return true;
}

/**
 * Whether the operation matches the connection. Its HTTP conditions are for
 * each request: on an HTTP port an ALLOW counts as matching (requestPolicy()
 * then requires them of each request) and a DENY as not matching (it denies
 * the requests that meet them); on any other port they fail closed.
 */
function operationMatches(op: CompiledOperation, peer: Peer, deny: boolean): boolean {
  if (!portsMatch(op, peer.port)) return false;
  return op.http === undefined || peer.httpPort !== deny;
}

function portsMatch(op: CompiledOperation, port: number): boolean {
  if (op.ports !== undefined && !op.ports.includes(port)) return false;
  if (op.notPorts !== undefined && op.notPorts.includes(port)) return false;
  return true;
}

// ---------------------------------------------------------------- compilation

function compilePolicy(p: AuthorizationPolicy): CompiledPolicy {
  const name = `${p.metadata.namespace}/${p.metadata.name}`;
  const action = p.spec.action;
  if (action !== 'ALLOW' && action !== 'DENY') {
    throw invalidPolicy(name, 'spec.action', action);
  }
  const deny = action === 'DENY';
  return {
    policy: p,
    deny,
    selector: Object.entries(p.spec.selector ?? {}),
    rules: p.spec.rules.map((r, i) => ({
      from: r.from.map((s, j) => compileSource(s, name, `spec.rules[${i}].from[${j}]`)),
      to: r.to.map(compileOperation),
    })),
    decisions: p.spec.rules.map((_, rule) => Object.freeze(deny
      ? { allowed: false, policy: name, rule, reason: 'denied_by_policy' as const }
      : { allowed: true, policy: name, rule, reason: 'allowed_by_policy' as const })),
  };
}

function compileSource(s: PolicySource, policy: string, path: string): CompiledSource {
  const identity: IdentityCheck[] = [];
  const addIdentity = (attribute: IdentityAttribute, negated: boolean, patterns: readonly string[], strip: boolean): void => {
    if (patterns.length === 0) return;
    // Principals should already be scheme-less (Istio form); stripping a stray
    // scheme here keeps a spelled-out SPIFFE ID from silently never matching.
    const normalised = strip ? patterns.map((p) => (p.startsWith(SPIFFE_SCHEME) ? p.slice(SPIFFE_SCHEME.length) : p)) : patterns;
    identity.push({ attribute, negated, matcher: new StringMatcher(normalised) });
  };
  addIdentity('principal', false, s.principals, true);
  addIdentity('principal', true, s.notPrincipals, true);
  addIdentity('namespace', false, s.namespaces, false);
  addIdentity('namespace', true, s.notNamespaces, false);
  addIdentity('serviceAccount', false, s.serviceAccounts, false);
  addIdentity('serviceAccount', true, s.notServiceAccounts, false);
  const ip: IpCheck[] = [];
  if (s.ipBlocks.length > 0) ip.push({ negated: false, blocks: compileBlocks(s.ipBlocks, policy, `${path}.ipBlocks`) });
  if (s.notIpBlocks.length > 0) ip.push({ negated: true, blocks: compileBlocks(s.notIpBlocks, policy, `${path}.notIpBlocks`) });
  return { identity, ip };
}

function compileOperation(op: PolicyOperation): CompiledOperation {
  return {
    ports: op.ports.length > 0 ? op.ports : undefined,
    notPorts: op.notPorts.length > 0 ? op.notPorts : undefined,
    http: compileHttpOperation(op),
  };
}

/**
 * net.BlockList matches IPv4 rules against IPv4-mapped IPv6 addresses and vice
 * versa, so one list holds both families.
 */
function compileBlocks(blocks: readonly string[], policy: string, path: string): BlockList {
  const list = new BlockList();
  blocks.forEach((block, i) => {
    const field = `${path}[${i}]`;
    const slash = block.indexOf('/');
    const address = slash === -1 ? block : block.slice(0, slash);
    const version = isIP(address);
    if (version === 0) throw invalidPolicy(policy, field, block);
    const family = version === 6 ? 'ipv6' : 'ipv4';
    try {
      if (slash === -1) {
        list.addAddress(address, family);
      } else {
        const text = block.slice(slash + 1);
        const prefix = Number(text);
        if (!/^\d{1,3}$/.test(text) || prefix > (version === 6 ? 128 : 32)) throw invalidPolicy(policy, field, block);
        list.addSubnet(address, prefix, family);
      }
    } catch (err) {
      if (err instanceof AmbitError) throw err;
      throw invalidPolicy(policy, field, block, err);
    }
  });
  return list;
}

function invalidPolicy(policy: string, field: string, value: unknown, cause?: unknown): AmbitError {
  return new AmbitError(
    'AMBIT_ERR_RESOURCE_INVALID',
    `AuthorizationPolicy ${policy}: ${field}: invalid value ${JSON.stringify(value)}`,
    { cause, details: { policy, field, value } },
  );
}
