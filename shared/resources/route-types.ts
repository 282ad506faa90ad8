/**
 * The Gateway API's mesh routes (GAMMA: HTTPRoute and GRPCRoute whose
 * parentRefs name a Service) and Ambit's FaultInjection filter, as the
 * registry stores them and agents receive them: the upstream schema's
 * shape (so `ambitctl get -o yaml` prints what the user wrote), with
 * defaults filled in and durations in milliseconds. Validation lives in
 * ./validate-route.ts; which routes apply to which clients in
 * shared/routes/.
 */
import type { ObjectMeta } from './types.ts';

export const GATEWAY_API_VERSION = 'gateway.networking.k8s.io/v1';
export const GATEWAY_GROUP = 'gateway.networking.k8s.io';
/** ReferenceGrant is still v1beta1 upstream (it never moved to v1). */
export const REFERENCE_GRANT_API_VERSION = 'gateway.networking.k8s.io/v1beta1';
/** The controllerName routes' status conditions are written under. */
export const MESH_CONTROLLER_NAME = 'ambit.dev/mesh';

/** A parentRef: a Service (GAMMA), in the route's namespace unless named; all its ports unless `port`. */
export interface RouteParentRef {
  readonly group: '';
  readonly kind: 'Service';
  readonly namespace: string;
  readonly name: string;
  readonly port?: number;
}

/** A backendRef or a mirror's backend: a Service port. */
export interface BackendObjectRef {
  readonly group: '';
  readonly kind: 'Service';
  readonly namespace: string;
  readonly name: string;
  readonly port: number;
}

export interface HTTPHeader {
  readonly name: string;
  readonly value: string;
}

export interface HeaderModifier {
  readonly set: readonly HTTPHeader[];
  readonly add: readonly HTTPHeader[];
  readonly remove: readonly string[];
}

export type PathModifier =
  | { readonly type: 'ReplaceFullPath'; readonly replaceFullPath: string }
  | { readonly type: 'ReplacePrefixMatch'; readonly replacePrefixMatch: string };

export interface RequestMirror {
  readonly backendRef: BackendObjectRef;
  /** Share of requests mirrored, 0..100 (the standard's `percent`, or `fraction` converted); default 100. */
  readonly percent: number;
}

export interface RequestRedirect {
  readonly scheme?: 'http' | 'https';
  readonly hostname?: string;
  readonly path?: PathModifier;
  readonly port?: number;
  /** 301 or 302 (default 302); the standard also allows 303, 307, 308. */
  readonly statusCode: number;
}

export interface URLRewrite {
  readonly hostname?: string;
  readonly path?: PathModifier;
}

/** An ExtensionRef filter: only Ambit's FaultInjection is known. */
export interface LocalObjectReference {
  readonly group: 'ambit.dev';
  readonly kind: 'FaultInjection';
  readonly name: string;
}

export type HTTPRouteFilter =
  | { readonly type: 'RequestHeaderModifier'; readonly requestHeaderModifier: HeaderModifier }
  | { readonly type: 'ResponseHeaderModifier'; readonly responseHeaderModifier: HeaderModifier }
  | { readonly type: 'RequestMirror'; readonly requestMirror: RequestMirror }
  | { readonly type: 'RequestRedirect'; readonly requestRedirect: RequestRedirect }
  | { readonly type: 'URLRewrite'; readonly urlRewrite: URLRewrite }
  | { readonly type: 'ExtensionRef'; readonly extensionRef: LocalObjectReference };

/** GRPCRoute's filters are a subset (no redirect, no rewrite). */
export type GRPCRouteFilter = Extract<HTTPRouteFilter, { type: 'RequestHeaderModifier' | 'ResponseHeaderModifier' | 'RequestMirror' | 'ExtensionRef' }>;

export type StringMatchType = 'Exact' | 'RegularExpression';

export interface HTTPPathMatch {
  readonly type: 'Exact' | 'PathPrefix' | 'RegularExpression';
  readonly value: string;
}

export interface NamedValueMatch {
  readonly type: StringMatchType;
  /** Header names lower-cased (they are case-insensitive); query parameter names as written. */
  readonly name: string;
  readonly value: string;
}

export interface HTTPRouteMatch {
  /** Default (filled by validation): PathPrefix "/". */
  readonly path: HTTPPathMatch;
  readonly headers: readonly NamedValueMatch[];
  readonly queryParams: readonly NamedValueMatch[];
  readonly method?: string;
}

export interface HTTPBackendRef extends BackendObjectRef {
  /** Default 1; 0 sends nothing to it. */
  readonly weight: number;
  /** Header modifiers only, per the standard's mesh support. */
  readonly filters: readonly HTTPRouteFilter[];
}

export interface RouteTimeouts {
  /** timeouts.request and timeouts.backendRequest in ms; undefined: none. */
  readonly requestMs?: number;
  readonly backendRequestMs?: number;
}

export interface HTTPRouteRetry {
  /** HTTP statuses retried (HTTPRoute), or gRPC status codes (GRPCRoute, Ambit's extension). */
  readonly codes: readonly number[];
  /** Retries after the first attempt (default 1, as the standard leaves it to the implementation). */
  readonly attempts: number;
  /** The first retry's wait in ms (doubling per retry); default 25 ms, as Envoy. */
  readonly backoffMs: number;
}

export interface HTTPRouteRule {
  readonly name?: string;
  /** Default (filled): one match of PathPrefix "/". */
  readonly matches: readonly HTTPRouteMatch[];
  readonly filters: readonly HTTPRouteFilter[];
  readonly backendRefs: readonly HTTPBackendRef[];
  readonly timeouts?: RouteTimeouts;
  readonly retry?: HTTPRouteRetry;
}

export interface HTTPRouteSpec {
  readonly parentRefs: readonly RouteParentRef[];
  /** Ignored for mesh routes (GAMMA), kept as written. */
  readonly hostnames: readonly string[];
  readonly rules: readonly HTTPRouteRule[];
}

export interface GRPCMethodMatch {
  readonly type: StringMatchType;
  /** Fully qualified service ("pkg.Service"); undefined: any. */
  readonly service?: string;
  /** Method name; undefined: any. */
  readonly method?: string;
}

export interface GRPCRouteMatch {
  readonly method?: GRPCMethodMatch;
  readonly headers: readonly NamedValueMatch[];
}

export interface GRPCBackendRef extends BackendObjectRef {
  readonly weight: number;
  readonly filters: readonly GRPCRouteFilter[];
}

export interface GRPCRouteRule {
  readonly name?: string;
  /** Empty: every call. */
  readonly matches: readonly GRPCRouteMatch[];
  readonly filters: readonly GRPCRouteFilter[];
  readonly backendRefs: readonly GRPCBackendRef[];
  /** Ambit's extension (the standard's GRPCRoute has neither): as HTTPRoute's. */
  readonly timeouts?: RouteTimeouts;
  /** Ambit's extension: `codes` are gRPC status codes (14 UNAVAILABLE, …), given by number or name. */
  readonly retry?: HTTPRouteRetry;
}

export interface GRPCRouteSpec {
  readonly parentRefs: readonly RouteParentRef[];
  readonly hostnames: readonly string[];
  readonly rules: readonly GRPCRouteRule[];
}

export interface FaultInjectionSpec {
  /** Delay `fixedDelayMs` for `percentage` (0..100) of requests. */
  readonly delay?: { readonly fixedDelayMs: number; readonly percentage: number };
  /** Answer `httpStatus` (or, for gRPC calls when set, `grpcStatus`) for `percentage` of requests. */
  readonly abort?: { readonly httpStatus: number; readonly grpcStatus?: number; readonly percentage: number };
}

export interface HTTPRoute {
  readonly kind: 'HTTPRoute';
  readonly metadata: ObjectMeta;
  readonly spec: HTTPRouteSpec;
}

export interface GRPCRoute {
  readonly kind: 'GRPCRoute';
  readonly metadata: ObjectMeta;
  readonly spec: GRPCRouteSpec;
}

export interface FaultInjection {
  readonly kind: 'FaultInjection';
  readonly metadata: ObjectMeta;
  readonly spec: FaultInjectionSpec;
}

export type RouteResource = HTTPRoute | GRPCRoute;

/**
 * The Gateway API's ReferenceGrant, as written: it lets objects of the kinds
 * and namespaces in `from` refer to the objects of `to` in the grant's own
 * namespace. Any group and kind is kept (upstream files, which also grant
 * Gateways access to Secrets, apply unchanged); only a `from` of an
 * HTTPRoute or GRPCRoute and a `to` of core Services mean something to Ambit
 * (shared/routes/references.ts).
 */
export interface ReferenceGrantFrom {
  readonly group: string;
  readonly kind: string;
  readonly namespace: string;
}

export interface ReferenceGrantTo {
  readonly group: string;
  readonly kind: string;
  /** Undefined: every object of the kind in the grant's namespace. */
  readonly name?: string;
}

export interface ReferenceGrantSpec {
  readonly from: readonly ReferenceGrantFrom[];
  readonly to: readonly ReferenceGrantTo[];
}

export interface ReferenceGrant {
  readonly kind: 'ReferenceGrant';
  readonly metadata: ObjectMeta;
  readonly spec: ReferenceGrantSpec;
}

/** A route's status as the Gateway API shows it (computed from the mesh, never stored). */
export interface RouteCondition {
  readonly type: 'Accepted' | 'ResolvedRefs';
  readonly status: 'True' | 'False';
  readonly reason: string;
  readonly message: string;
}

export interface RouteParentStatus {
  readonly parentRef: RouteParentRef;
  readonly controllerName: string;
  readonly conditions: readonly RouteCondition[];
}

export interface RouteStatus {
  readonly parents: readonly RouteParentStatus[];
}
