import { isIP } from 'node:net';
import { Authorizer, NO_ALLOW_MATCHED, type ConnectionFacts, type Decision, type DecisionReason } from '../../shared/authorization.ts';
import type { ErrorCode } from '../../shared/errors.ts';
import { canonicalIp } from '../../shared/net-address.ts';
import { appProtocolAtWorkloadPort, serviceKeyOfHost } from '../../shared/service-host.ts';
import { evaluateRequest, isEmptyRequestPolicy, type HttpRequestFacts, type RequestDecisionReason, type RequestPolicy } from '../../shared/authorization-http.ts';
import { parseSpiffeId, workloadId, type SpiffeId } from '../../shared/spiffe-id.ts';
import { isHttpProtocol, type AppProtocol, type AuthorizationPolicy, type Resource, type Service, type ServicePort, type Workload } from '../../shared/resources/types.ts';
import { explainRoutes, type ExplainedRoutes } from './explain-routes.ts';

/*
 * `ambitctl explain`: how a connection from a source to host:port would be
 * resolved and authorized, answered from the controller's state without
 * sending traffic. Pure and synchronous over a view of the registry: the
 * Admin API (api/admin-service.ts) and the console call it in-process; the
 * verdict comes from shared/authorization.ts, the code the agents decide with.
 */

/** Who the connection comes from: a registered workload, a SPIFFE ID, or a source IP. */
export type ExplainFrom =
  | { readonly kind: 'workload'; readonly namespace: string; readonly name: string }
  | { readonly kind: 'identity'; readonly identity: string }
  | { readonly kind: 'address'; readonly address: string };

export interface ExplainQuery {
  readonly from: ExplainFrom;
  readonly host: string;
  readonly port: number;
  /** One HTTP request on the connection, checked against the policies' methods, paths and hosts on HTTP ports. */
  readonly request?: HttpRequestFacts;
}

/** What explain reads of the controller's state. */
export interface ExplainView {
  readonly revision: number;
  readonly trustDomain: string;
  readonly resources: readonly Resource[];
  /** A node's agent HBONE address, when the controller knows it. */
  readonly nodeAddress: (node: string) => string | undefined;
}

/** The agents' default --cluster-domain (Kubernetes' default): the domain of `destination_service` in their telemetry. */
const CLUSTER_DOMAIN = 'cluster.local';

export const EXPLAIN_ERRORS = ['AMBIT_ERR_EXPLAIN_UNKNOWN_SOURCE', 'AMBIT_ERR_EXPLAIN_UNKNOWN_DESTINATION'] as const satisfies readonly ErrorCode[];
export type ExplainErrorCode = (typeof EXPLAIN_ERRORS)[number];

/**
 * How the destination's agent authenticates the source: `mutual_tls` for a
 * mesh source (its agent tunnels over HBONE), `plaintext` for a source
 * outside the mesh, which the destination's agent refuses in --mode strict
 * and admits by policy (with no identity) in --mode permissive.
 */
export type PeerAuthentication = 'mutual_tls' | 'plaintext';

export interface ExplainedSource {
  /** `workload`: a registered workload; `identity`: a SPIFFE ID with no one workload; `external`: an address outside the mesh. */
  readonly kind: 'workload' | 'identity' | 'external';
  /** "namespace/name"; '' when not a workload. */
  readonly workload: string;
  /** SPIFFE ID; '' for a source outside the mesh. */
  readonly identity: string;
  readonly node: string;
  /** The source address policy sees ('' when none is verified: an `ipBlocks` ALLOW cannot match, an `ipBlocks` DENY does). */
  readonly address: string;
  readonly peerAuthentication: PeerAuthentication;
}

export interface ExplainedServicePort {
  readonly name: string;
  readonly port: number;
  readonly targetPort: number;
  /** `tcp`, `http`, `http2` or `grpc`: L7 handling on the HTTP ones. */
  readonly appProtocol: AppProtocol;
}

export interface ExplainedDestination {
  /** `service`: a service name or VIP; `workload`: a workload's address; `passthrough`: nothing in the mesh has that address. */
  readonly kind: 'service' | 'workload' | 'passthrough';
  readonly host: string;
  readonly port: number;
  /** "name.namespace.svc.cluster.local" ('' when not a service), as Istio's `destination_service`. */
  readonly service: string;
  readonly serviceAddresses: readonly string[];
  readonly servicePort: ExplainedServicePort | null;
  /** One sentence on how the destination resolved. */
  readonly detail: string;
}

export interface ExplainedVerdict {
  readonly allowed: boolean;
  /** The agent's reason (shared/authorization.ts). */
  readonly reason: DecisionReason;
  /** "namespace/name" of the deciding policy, '(no ALLOW matched)', or '' when no policy applies. */
  readonly policy: string;
  /** Index in the deciding policy's spec.rules; -1 when no policy decided. */
  readonly rule: number;
  /** no_allow_match: the ALLOW policies that select the workload, one of which needs a rule for this source. */
  readonly allowPolicies: readonly string[];
  readonly summary: string;
  /** On an HTTP port of an allowed connection, how its requests are authorized; null otherwise. */
  readonly request: ExplainedRequest | null;
}

/**
 * Requests on an allowed connection to an HTTP port: policies whose rules
 * test methods, paths or hosts decide each request (shared/authorization-http.ts,
 * what ambit-dataplane applies per request).
 */
export interface ExplainedRequest {
  /** `allowed`/`denied`: the query's request; `per_request`: no request given and policies decide each one; `all_allowed`: nothing is left to decide per request. */
  readonly outcome: 'allowed' | 'denied' | 'per_request' | 'all_allowed';
  /** The query's request decision ('' when none was given). */
  readonly reason: RequestDecisionReason | '';
  /** The policy that decided the query's request, "(no ALLOW matched)", or ''. */
  readonly policy: string;
  /** The DENY policies with HTTP conditions this connection's requests are checked against, in order. */
  readonly denyPolicies: readonly string[];
  /** The ALLOW policies with HTTP conditions; one must match each request when `allowRequired`. */
  readonly allowPolicies: readonly string[];
  readonly allowRequired: boolean;
  readonly summary: string;
}

export interface ExplainedEndpoint {
  /** "namespace/name". */
  readonly workload: string;
  readonly identity: string;
  readonly address: string;
  /** The port the connection reaches the workload on (the service's target port). */
  readonly port: number;
  readonly node: string;
  /** The node's agent HBONE address; '' when the controller knows none (the source's agent then has no route). */
  readonly nodeAddress: string;
  readonly weight: number;
  readonly healthy: boolean;
  readonly locality: string;
  /** Whether the workload serves the port (an empty port list serves any). */
  readonly serving: boolean;
  readonly verdict: ExplainedVerdict;
}

export interface Explanation {
  readonly revision: number;
  /** The question as asked: `request` is "METHOD PATH Host H", '' when no request was given. */
  readonly query: { readonly from: string; readonly to: string; readonly request: string };
  /** null when the source is unknown. */
  readonly source: ExplainedSource | null;
  /** null when the destination is unknown (or the source is, which is checked first). */
  readonly destination: ExplainedDestination | null;
  /** Each endpoint the connection could reach, with the policy verdict there; empty for passthrough. */
  readonly endpoints: readonly ExplainedEndpoint[];
  /** On a service's HTTP port, the routes deciding the source's requests (explain-routes.ts); null otherwise, or for a source outside the mesh (no agent routes its requests). */
  readonly routes: ExplainedRoutes | null;
  /** Set when the question has no answer: which part is unknown and why. */
  readonly error: { readonly code: ExplainErrorCode; readonly message: string } | null;
}

/** "--from" of a query, as ambitctl spells it. */
export function fromText(from: ExplainFrom): string {
  switch (from.kind) {
    case 'workload': return `${from.namespace}/${from.name}`;
    case 'identity': return from.identity;
    case 'address': return from.address;
  }
}

function hostPort(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * Explains with an Authorizer compiled once per registry revision (the
 * console asks for many denials at a time).
 */
export class Explainer {
  readonly #view: () => ExplainView;
  #cached: { revision: number; authorizer: Authorizer } | undefined;

  constructor(view: () => ExplainView) {
    this.#view = view;
  }

  explain(q: ExplainQuery): Explanation {
    const view = this.#view();
    if (this.#cached?.revision !== view.revision) {
      this.#cached = { revision: view.revision, authorizer: new Authorizer(view.resources.filter((r): r is AuthorizationPolicy => r.kind === 'AuthorizationPolicy')) };
    }
    return explain(view, this.#cached.authorizer, q);
  }
}

/** Explains one query against one view of the state; `authorizer` holds that view's policies. */
export function explain(view: ExplainView, authorizer: Authorizer, q: ExplainQuery): Explanation {
  const workloads = view.resources.filter((r): r is Workload => r.kind === 'Workload');
  const services = view.resources.filter((r): r is Service => r.kind === 'Service');
  const query = { from: fromText(q.from), to: hostPort(q.host, q.port), request: q.request ? requestText(q.request) : '' };
  const answer = (source: ExplainedSource | null, destination: ExplainedDestination | null, endpoints: readonly ExplainedEndpoint[], error: Explanation['error'], routes: ExplainedRoutes | null = null): Explanation =>
    ({ revision: view.revision, query, source, destination, endpoints, routes, error });

  const src = resolveSource(view.trustDomain, workloads, q.from);
  if (!src.ok) return answer(null, null, [], { code: 'AMBIT_ERR_EXPLAIN_UNKNOWN_SOURCE', message: src.message });

  const dst = resolveDestination(view.trustDomain, workloads, services, q.host, q.port);
  if (!dst.ok) return answer(src.source, null, [], { code: 'AMBIT_ERR_EXPLAIN_UNKNOWN_DESTINATION', message: dst.message });

  const endpoints = dst.targets.map((w): ExplainedEndpoint => {
    const httpPort = isHttpProtocol(appProtocolAtWorkloadPort(services, w, dst.targetPort));
    const facts: ConnectionFacts = { sourceIdentity: src.identity, sourceAddress: src.source.address || undefined, destination: w, destinationPort: dst.targetPort, httpPort };
    const decision = authorizer.evaluate(facts);
    return {
      workload: `${w.metadata.namespace}/${w.metadata.name}`,
      identity: workloadId(view.trustDomain, w.metadata.namespace, w.spec.serviceAccount).uri,
      address: w.spec.address,
      port: dst.targetPort,
      node: w.spec.node,
      nodeAddress: view.nodeAddress(w.spec.node) ?? '',
      weight: w.spec.weight,
      healthy: w.spec.healthy,
      locality: w.spec.locality,
      serving: w.spec.ports.length === 0 || w.spec.ports.includes(dst.targetPort),
      verdict: verdictOf(decision, authorizer, w, decision.allowed && httpPort ? requestOf(authorizer.requestPolicy(facts), q.request) : null),
    };
  });
  const clientNamespace = src.identity?.namespace;
  const routes = dst.service && clientNamespace !== undefined ? explainRoutes(view.resources, dst.service.svc, dst.service.port, clientNamespace) : null;
  return answer(src.source, dst.destination, endpoints, null, routes);
}

type SourceResult =
  | { readonly ok: true; readonly source: ExplainedSource; readonly identity: SpiffeId | undefined }
  | { readonly ok: false; readonly message: string };

function workloadSource(trustDomain: string, w: Workload): SourceResult {
  const id = workloadId(trustDomain, w.metadata.namespace, w.spec.serviceAccount);
  // The source's agent forwards the workload's registered address, which the destination's agent verifies (connection/source-proof.ts).
  return {
    ok: true,
    identity: id,
    source: { kind: 'workload', workload: `${w.metadata.namespace}/${w.metadata.name}`, identity: id.uri, node: w.spec.node, address: w.spec.address, peerAuthentication: 'mutual_tls' },
  };
}

function resolveSource(trustDomain: string, workloads: readonly Workload[], from: ExplainFrom): SourceResult {
  switch (from.kind) {
    case 'workload': {
      const w = workloads.find((x) => x.metadata.namespace === from.namespace && x.metadata.name === from.name);
      if (w) return workloadSource(trustDomain, w);
      const inNs = workloads.filter((x) => x.metadata.namespace === from.namespace).map((x) => x.metadata.name).sort();
      return { ok: false, message: `no workload ${from.namespace}/${from.name} is registered${inNs.length > 0 ? ` (namespace ${from.namespace} has ${inNs.slice(0, 10).join(', ')}${inNs.length > 10 ? ', …' : ''})` : ` (namespace ${from.namespace} has no workloads)`}` };
    }
    case 'identity': {
      let id: SpiffeId;
      try {
        id = parseSpiffeId(from.identity);
      } catch (err) {
        return { ok: false, message: `${JSON.stringify(from.identity)} is not a SPIFFE ID: ${(err as Error).message}` };
      }
      if (id.trustDomain !== trustDomain) return { ok: false, message: `${id.uri} is of trust domain ${id.trustDomain}; this mesh's is ${trustDomain}, so its agents would refuse the certificate` };
      if (id.kind !== 'workload') return { ok: false, message: `${id.uri} is a ${id.kind} identity; only workload identities open connections between workloads` };
      const holders = workloads.filter((w) => w.metadata.namespace === id.namespace && w.spec.serviceAccount === id.serviceAccount);
      // One holder: its registered address is what its agent forwards. Several or none: no one address to vouch for.
      if (holders.length === 1) return workloadSource(trustDomain, holders[0]!);
      return { ok: true, identity: id, source: { kind: 'identity', workload: '', identity: id.uri, node: '', address: '', peerAuthentication: 'mutual_tls' } };
    }
    case 'address': {
      const ip = canonicalIp(from.address);
      if (ip === undefined) return { ok: false, message: `${JSON.stringify(from.address)} is not an IP address` };
      const w = workloads.find((x) => (canonicalIp(x.spec.address) ?? x.spec.address) === ip);
      if (w) return workloadSource(trustDomain, w);
      return { ok: true, identity: undefined, source: { kind: 'external', workload: '', identity: '', node: '', address: ip, peerAuthentication: 'plaintext' } };
    }
  }
}

type DestinationResult =
  | { readonly ok: true; readonly destination: ExplainedDestination; readonly targets: readonly Workload[]; readonly targetPort: number; readonly service?: { readonly svc: Service; readonly port: ServicePort } }
  | { readonly ok: false; readonly message: string };

/** The workloads a service selects: same namespace, every selector pair present; an empty selector selects none (as the agent). */
function selected(svc: Service, workloads: readonly Workload[]): Workload[] {
  const sel = Object.entries(svc.spec.selector);
  if (sel.length === 0) return [];
  return workloads.filter((w) => w.metadata.namespace === svc.metadata.namespace && sel.every(([k, v]) => Object.hasOwn(w.metadata.labels, k) && w.metadata.labels[k] === v));
}

function resolveDestination(trustDomain: string, workloads: readonly Workload[], services: readonly Service[], host: string, port: number): DestinationResult {
  const ip = canonicalIp(host);
  let svc: Service | undefined;
  let byName: string | undefined;
  if (ip !== undefined) {
    svc = services.find((s) => s.spec.addresses.some((a) => (canonicalIp(a) ?? a) === ip));
  } else {
    byName = serviceKeyOfHost(host);
    if (byName !== undefined) svc = services.find((s) => `${s.metadata.name}.${s.metadata.namespace}` === byName);
  }
  if (svc) {
    const name = `${svc.metadata.name}.${svc.metadata.namespace}`;
    const sp = svc.spec.ports.find((p) => p.port === port);
    if (!sp) return { ok: false, message: `service ${name} has no port ${port} (its ports: ${svc.spec.ports.map((p) => p.port).join(', ') || 'none'})` };
    const endpoints = selected(svc, workloads);
    const serving = endpoints.filter((w) => w.spec.ports.length === 0 || w.spec.ports.includes(sp.targetPort)).length;
    const detail = endpoints.length === 0
      ? `service ${name} selects no workload: the source's agent refuses with no_route`
      : serving === 0
        ? `service ${name} port ${port} → target port ${sp.targetPort}, which none of its ${endpoints.length} workloads serves: the source's agent refuses with no_route`
        : `service ${name} port ${port} → target port ${sp.targetPort} on ${serving} of ${endpoints.length} endpoints, one picked per connection (healthy first, same locality first, by weight)`;
    return {
      ok: true,
      targets: endpoints,
      targetPort: sp.targetPort,
      service: { svc, port: sp },
      destination: {
        kind: 'service', host, port,
        service: `${name}.svc.${CLUSTER_DOMAIN}`,
        serviceAddresses: svc.spec.addresses,
        servicePort: { name: sp.name, port: sp.port, targetPort: sp.targetPort, appProtocol: sp.appProtocol },
        detail,
      },
    };
  }
  // A name of the service form names a mesh service or nothing: the agent would not pass it through as a mesh name.
  if (byName !== undefined) return { ok: false, message: `no service ${byName} is registered (a host of the form name.namespace[.svc…] names a mesh service)` };
  if (ip !== undefined) {
    const w = workloads.find((x) => (canonicalIp(x.spec.address) ?? x.spec.address) === ip);
    if (w) {
      const serves = w.spec.ports.length === 0 || w.spec.ports.includes(port);
      return {
        ok: true,
        targets: [w],
        targetPort: port,
        destination: {
          kind: 'workload', host, port, service: '', serviceAddresses: [], servicePort: null,
          detail: serves
            ? `${ip} is workload ${w.metadata.namespace}/${w.metadata.name} on node ${w.spec.node}, tunnelled to directly`
            : `${ip} is workload ${w.metadata.namespace}/${w.metadata.name}, which does not serve port ${port}: its agent answers not_a_local_workload`,
        },
      };
    }
  }
  return {
    ok: true,
    targets: [],
    targetPort: port,
    destination: {
      kind: 'passthrough', host, port, service: '', serviceAddresses: [], servicePort: null,
      detail: `nothing in the mesh has ${hostPort(host, port)}: the source's agent dials it directly (passthrough, no mTLS, no mesh policy) unless it runs --passthrough deny`,
    },
  };
}

function requestText(r: HttpRequestFacts): string {
  return `${r.method} ${r.path}${r.host === undefined ? ' (no Host)' : ` Host ${r.host}`}`;
}

function requestOf(policy: RequestPolicy, req: HttpRequestFacts | undefined): ExplainedRequest {
  const denyPolicies = policy.deny.map((p) => p.name);
  const allowPolicies = policy.allow.map((p) => p.name);
  const base = { denyPolicies, allowPolicies, allowRequired: policy.allowRequired };
  const checks = [
    denyPolicies.length > 0 ? `DENY ${denyPolicies.join(', ')} deny the requests they match` : '',
    policy.allowRequired ? `each request must match ALLOW ${allowPolicies.join(', ')}` : '',
  ].filter(Boolean).join('; ');
  if (req === undefined) {
    return isEmptyRequestPolicy(policy)
      ? { ...base, outcome: 'all_allowed', reason: '', policy: '', summary: 'every request allowed (no policy tests methods, paths or hosts here)' }
      : { ...base, outcome: 'per_request', reason: '', policy: '', summary: `requests decided one by one: ${checks} (ask with --method, --path, --host)` };
  }
  const d = evaluateRequest(policy, req);
  const named = d.reason === 'no_allow_match' ? NO_ALLOW_MATCHED : d.policy ?? '';
  const why = {
    denied_by_policy: `denied by DENY ${named}`,
    no_allow_match: `denied: matches none of ALLOW ${allowPolicies.join(', ')}`,
    allowed_by_policy: `allowed by ALLOW ${named}`,
    connection_allowed: 'allowed: nothing is left to decide per request',
    bad_path: 'denied: the path cannot be normalised (400)',
  }[d.reason];
  return { ...base, outcome: d.allowed ? 'allowed' : 'denied', reason: d.reason, policy: named, summary: `request ${requestText(req)}: ${why}` };
}

function verdictOf(d: Decision, authorizer: Authorizer, w: Workload, request: ExplainedRequest | null): ExplainedVerdict {
  const workload = `${w.metadata.namespace}/${w.metadata.name}`;
  switch (d.reason) {
    case 'denied_by_policy':
      return { allowed: false, reason: d.reason, policy: d.policy ?? '', rule: d.rule ?? -1, allowPolicies: [], summary: `denied: DENY ${d.policy} rule ${d.rule} matches`, request };
    case 'allowed_by_policy':
      return { allowed: true, reason: d.reason, policy: d.policy ?? '', rule: d.rule ?? -1, allowPolicies: [], summary: `allowed: ALLOW ${d.policy} rule ${d.rule} matches`, request };
    case 'no_policies':
      return { allowed: true, reason: d.reason, policy: '', rule: -1, allowPolicies: [], summary: `allowed: no ALLOW policy selects ${workload} and no DENY matches`, request };
    case 'no_allow_match': {
      const allow = authorizer.applicable(w).filter((p) => p.spec.action === 'ALLOW').map((p) => `${p.metadata.namespace}/${p.metadata.name}`);
      return {
        allowed: false, reason: d.reason, policy: NO_ALLOW_MATCHED, rule: -1, allowPolicies: allow,
        summary: `denied: no ALLOW policy matches: ${workload} is selected by ALLOW ${allow.join(', ')}, one of which needs a rule for this source`,
        request,
      };
    }
  }
}
