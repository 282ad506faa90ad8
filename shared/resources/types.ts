/**
 * The mesh's resources: one schema for YAML files, the CLI, the store and the
 * wire. These are the validated, normalised core types (defaults filled in,
 * lists sorted where order has no meaning) — what the registry stores and what
 * agents receive. Parsing/validation lives in ./validate.ts.
 */
import { GATEWAY_API_VERSION, REFERENCE_GRANT_API_VERSION, type FaultInjection, type GRPCRoute, type HTTPRoute, type ReferenceGrant } from './route-types.ts';

export const API_VERSION = 'ambit.dev/v1alpha1';

export const KINDS = ['Workload', 'Service', 'AuthorizationPolicy', 'HTTPRoute', 'GRPCRoute', 'FaultInjection', 'ReferenceGrant'] as const;
export type Kind = (typeof KINDS)[number];

/**
 * Policies in this namespace apply to the whole mesh (Istio's root-namespace
 * convention, so operators' habits carry over).
 */
export const MESH_NAMESPACE = 'ambit-system';

export interface ObjectMeta {
  readonly name: string;
  readonly namespace: string;
  readonly labels: Readonly<Record<string, string>>;
  /** Store revision at which this object last changed; 0 before it is stored. */
  readonly revision: number;
}

export interface WorkloadSpec {
  readonly serviceAccount: string;
  /** Node (host) the workload runs on; its agent alone may get the workload's certificate. */
  readonly node: string;
  /** The workload's IP address (v4 or v6), canonical textual form. */
  readonly address: string;
  /** Ports the workload serves on, ascending, unique. Empty: any port. */
  readonly ports: readonly number[];
  /** Unix uid of the workload's processes on a VM (owner-match capture); undefined on pod networks. */
  readonly uid?: number;
  /** Load-balancing weight among a service's endpoints (1..1000, default 1). */
  readonly weight: number;
  /** Locality "region/zone/subzone" for locality-aware endpoint choice; "" when unknown. */
  readonly locality: string;
  /** Whether the workload is ready to receive traffic (Kubernetes readiness; true when registered by hand). */
  readonly healthy: boolean;
}

/**
 * What a service port speaks, as Kubernetes' `appProtocol` names it. `tcp`
 * ports are carried as byte streams (L4); the others get per-request handling
 * in the data plane: `http` is HTTP/1.1 from the app (HTTP/2 with prior
 * knowledge is recognised too), `http2` and `grpc` are HTTP/2.
 */
export const APP_PROTOCOLS = ['tcp', 'http', 'http2', 'grpc'] as const;
export type AppProtocol = (typeof APP_PROTOCOLS)[number];

export function isHttpProtocol(p: AppProtocol): p is Exclude<AppProtocol, 'tcp'> {
  return p !== 'tcp';
}

export interface ServicePort {
  readonly name: string;
  readonly port: number;
  readonly targetPort: number;
  /** Default `tcp`. */
  readonly appProtocol: AppProtocol;
}

export interface ServiceSpec {
  /** Virtual IPs of the service ("" list: headless; clients use its DNS/endpoints). */
  readonly addresses: readonly string[];
  readonly ports: readonly ServicePort[];
  /** Label selector matching workloads in the service's namespace. */
  readonly selector: Readonly<Record<string, string>>;
}

export const POLICY_ACTIONS = ['ALLOW', 'DENY'] as const;
export type PolicyAction = (typeof POLICY_ACTIONS)[number];

export interface PolicySource {
  /**
   * Istio form "<td>/ns/<ns>/sa/<sa>" (validation strips a "spiffe://" scheme
   * and refuses anything without a trust domain, since such a principal could
   * never match and a DENY would silently deny nothing); "*" alone, or as a
   * prefix or suffix wildcard.
   */
  readonly principals: readonly string[];
  readonly notPrincipals: readonly string[];
  readonly namespaces: readonly string[];
  readonly notNamespaces: readonly string[];
  /** "<namespace>/<service-account>" pairs; the same wildcards as principals. */
  readonly serviceAccounts: readonly string[];
  readonly notServiceAccounts: readonly string[];
  /** CIDRs or bare IPs, canonical form. */
  readonly ipBlocks: readonly string[];
  readonly notIpBlocks: readonly string[];
}

export interface PolicyOperation {
  readonly ports: readonly number[];
  readonly notPorts: readonly number[];
  /**
   * HTTP request conditions, for ports a Service declares http, http2 or
   * grpc (shared/authorization-http.ts has their semantics): methods exactly,
   * paths after normalisation ("/x/*" prefix, "*.png" suffix), hosts
   * lower-cased; "*" alone or as a prefix or suffix wildcard. Absent
   * rather than empty when unset, as L4-only operations have always been.
   */
  readonly methods?: readonly string[];
  readonly notMethods?: readonly string[];
  readonly paths?: readonly string[];
  readonly notPaths?: readonly string[];
  readonly hosts?: readonly string[];
  readonly notHosts?: readonly string[];
}

export interface PolicyRule {
  /** Any one of these sources matches (OR); empty: any source. */
  readonly from: readonly PolicySource[];
  /** Any one of these operations matches (OR); empty: any destination port. */
  readonly to: readonly PolicyOperation[];
}

export interface AuthorizationPolicySpec {
  /**
   * Workloads the policy applies to: those of the policy's namespace whose
   * labels include every pair — or of every namespace when the policy lives in
   * MESH_NAMESPACE. Undefined or {}: all workloads in that scope.
   */
  readonly selector?: Readonly<Record<string, string>>;
  readonly action: PolicyAction;
  /**
   * ALLOW: a connection is allowed if any rule matches; an ALLOW with no rules
   * matches nothing. DENY: denied if any rule matches; a DENY with an empty rule
   * list denies nothing. A rule with empty from/to matches everything.
   */
  readonly rules: readonly PolicyRule[];
}

export interface Workload {
  readonly kind: 'Workload';
  readonly metadata: ObjectMeta;
  readonly spec: WorkloadSpec;
}

export interface Service {
  readonly kind: 'Service';
  readonly metadata: ObjectMeta;
  readonly spec: ServiceSpec;
}

export interface AuthorizationPolicy {
  readonly kind: 'AuthorizationPolicy';
  readonly metadata: ObjectMeta;
  readonly spec: AuthorizationPolicySpec;
}

export type Resource = Workload | Service | AuthorizationPolicy | HTTPRoute | GRPCRoute | FaultInjection | ReferenceGrant;

/** The Gateway API route kinds (their apiVersion is gateway.networking.k8s.io/v1, shared/resources/route-types.ts). */
export const ROUTE_KINDS = ['HTTPRoute', 'GRPCRoute'] as const satisfies readonly Kind[];

/** The apiVersion documents of a kind carry: the Gateway API's for its kinds (ReferenceGrant is still v1beta1 there), Ambit's for the rest. */
export function apiVersionOf(kind: Kind): string {
  if (kind === 'ReferenceGrant') return REFERENCE_GRANT_API_VERSION;
  return kind === 'HTTPRoute' || kind === 'GRPCRoute' ? GATEWAY_API_VERSION : API_VERSION;
}

/** Identity of a resource within the mesh: kind + namespace + name. */
export interface ResourceKey {
  readonly kind: Kind;
  readonly namespace: string;
  readonly name: string;
}

export function resourceKey(r: { kind: Kind; metadata: { namespace: string; name: string } }): string {
  return `${r.kind}/${r.metadata.namespace}/${r.metadata.name}`;
}

export function keyString(k: ResourceKey): string {
  return `${k.kind}/${k.namespace}/${k.name}`;
}

/** One write to the mesh state. */
export type Change =
  | { readonly op: 'put'; readonly resource: Resource }
  | { readonly op: 'delete'; readonly key: ResourceKey };

export interface ChangeSet {
  readonly revision: number;
  /** puts carry the resource with metadata.revision === revision */
  readonly changes: readonly Change[];
}
