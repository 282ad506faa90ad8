import type { V1Container, V1Node, V1Pod, V1Service } from '@kubernetes/client-node';
import { errorMessage } from '../../../shared/errors.ts';
import { API_VERSION, apiVersionOf } from '../../../shared/resources/types.ts';
import type { AppProtocol, AuthorizationPolicy, Resource, Service, Workload } from '../../../shared/resources/types.ts';
import { validateResource } from '../../../shared/resources/validate.ts';

/**
 * Kubernetes objects in, Ambit resources out — pure functions, no I/O. Each
 * result is passed through validateResource, so what the Kubernetes store
 * commits has exactly the normalised form an `ambitctl apply` would produce.
 * An object that cannot be converted yields a reason instead of a resource;
 * nothing is ever half-converted.
 */

export const POLICY_GROUP = 'ambit.dev';
export const POLICY_VERSION = 'v1alpha1';
export const POLICY_PLURAL = 'authorizationpolicies';

/** The AuthorizationPolicy custom resource as the API serves it (spec unchecked). */
export interface PolicyObject {
  readonly apiVersion?: string;
  readonly kind?: string;
  readonly metadata?: { readonly name?: string; readonly namespace?: string; readonly labels?: Record<string, string>; readonly resourceVersion?: string };
  readonly spec?: unknown;
}

export type Converted<R extends Resource> = { readonly resource: R } | { readonly skip: string };

const REGION_LABEL = 'topology.kubernetes.io/region';
const ZONE_LABEL = 'topology.kubernetes.io/zone';
const LOCALITY_SEGMENT = /^[A-Za-z0-9._-]{1,63}$/;

/** "region/zone" (or "region") from a node's well-known topology labels; "" when absent or unusable. */
export function localityOf(node: V1Node | undefined): string {
  const labels = node?.metadata?.labels ?? {};
  const parts: string[] = [];
  const region = labels[REGION_LABEL];
  const zone = labels[ZONE_LABEL];
  if (region === undefined || !LOCALITY_SEGMENT.test(region)) return '';
  parts.push(region);
  if (zone !== undefined && LOCALITY_SEGMENT.test(zone)) parts.push(zone);
  return parts.join('/');
}

/** Containers that serve for the pod's whole life: the regular ones and native sidecars (restartPolicy Always init containers). */
function servingContainers(pod: V1Pod): V1Container[] {
  const sidecars = (pod.spec?.initContainers ?? []).filter((c) => c.restartPolicy === 'Always');
  return [...(pod.spec?.containers ?? []), ...sidecars];
}

/** TCP container ports, unique and ascending (Ambit carries TCP only). */
export function podTcpPorts(pod: V1Pod): number[] {
  const ports = new Set<number>();
  for (const c of servingContainers(pod)) {
    for (const p of c.ports ?? []) {
      if ((p.protocol ?? 'TCP') === 'TCP' && Number.isInteger(p.containerPort)) ports.add(p.containerPort);
    }
  }
  return [...ports].sort((a, b) => a - b);
}

/** The TCP port a container port name refers to in this pod, if any. */
export function namedPort(pod: V1Pod, name: string): number | undefined {
  for (const c of servingContainers(pod)) {
    for (const p of c.ports ?? []) {
      if (p.name === name && (p.protocol ?? 'TCP') === 'TCP') return p.containerPort;
    }
  }
  return undefined;
}

function isReady(pod: V1Pod): boolean {
  return (pod.status?.conditions ?? []).some((c) => c.type === 'Ready' && c.status === 'True');
}

function where(kind: string, obj: { metadata?: { namespace?: string; name?: string } }): string {
  return `${kind} ${obj.metadata?.namespace ?? ''}/${obj.metadata?.name ?? ''}`;
}

function validated<R extends Resource>(doc: unknown, at: string): Converted<R> {
  try {
    return { resource: validateResource(doc, at) as R };
  } catch (err) {
    return { skip: errorMessage(err) };
  }
}

/**
 * A Workload from a Pod, or why the pod is not one. Only running pods with an
 * IP on the pod network are workloads: a pending pod has nothing to reach yet,
 * a finished one nothing to serve, and a hostNetwork pod shares the node's IP,
 * so traffic to that address cannot be told apart from the node's own. A pod
 * being deleted stays (its connections drain, its certificate stays valid)
 * but is marked unhealthy so no new traffic is sent to it.
 */
export function workloadFromPod(pod: V1Pod, locality: string): Converted<Workload> {
  const at = where('Pod', pod);
  const spec = pod.spec;
  if (spec?.hostNetwork === true) return { skip: 'hostNetwork pod (shares the node address)' };
  if (pod.status?.phase !== 'Running') return { skip: `phase is ${pod.status?.phase ?? 'unknown'}, not Running` };
  const address = pod.status.podIP;
  if (!address) return { skip: 'no pod IP yet' };
  if (!spec?.nodeName) return { skip: 'not scheduled to a node' };
  return validated<Workload>({
    apiVersion: API_VERSION,
    kind: 'Workload',
    metadata: { name: pod.metadata?.name, namespace: pod.metadata?.namespace ?? 'default', labels: pod.metadata?.labels ?? {} },
    spec: {
      serviceAccount: spec.serviceAccountName || 'default',
      node: spec.nodeName,
      address,
      ports: podTcpPorts(pod),
      locality,
      healthy: isReady(pod) && !pod.metadata?.deletionTimestamp,
    },
  }, at);
}

/**
 * A Service from a Kubernetes Service. Ports: TCP only, each with its
 * application protocol (appProtocolOf); a numeric targetPort
 * is taken as is, a named one is resolved through the container ports of the
 * pods the service selects when they all agree on one number, else that port
 * is left out with a warning. While the service selects no pod, a named
 * targetPort stands in as the port itself: there is no endpoint to reach
 * anyway, and the service (its name and VIP) stays known to the mesh.
 * `pods` are the pods of the service's namespace.
 */
export function serviceFromKubernetes(svc: V1Service, pods: readonly V1Pod[]): Converted<Service> & { readonly warnings: readonly string[] } {
  const at = where('Service', svc);
  const spec = svc.spec;
  const warnings: string[] = [];
  if (spec?.type === 'ExternalName') return { skip: 'ExternalName service (no endpoints)', warnings };
  const selector = spec?.selector ?? {};
  const selected = Object.keys(selector).length === 0 ? [] : pods.filter((p) => matches(p.metadata?.labels ?? {}, selector));
  const ports: { name?: string; port: number; targetPort: number; appProtocol: AppProtocol }[] = [];
  for (const p of spec?.ports ?? []) {
    if ((p.protocol ?? 'TCP') !== 'TCP') continue;
    const target = resolveTargetPort(p.targetPort, p.port, selected);
    if (typeof target === 'string') {
      warnings.push(`port ${p.name ?? p.port}: ${target}; port left out`);
      continue;
    }
    ports.push({ ...(p.name ? { name: p.name } : {}), port: p.port, targetPort: target, appProtocol: appProtocolOf(p.name, p.appProtocol) });
  }
  if (ports.length === 0) return { skip: warnings.length > 0 ? `no usable TCP port (${warnings.join('; ')})` : 'no TCP port', warnings };
  const ips = spec?.clusterIPs?.length ? spec.clusterIPs : spec?.clusterIP ? [spec.clusterIP] : [];
  const converted = validated<Service>({
    apiVersion: API_VERSION,
    kind: 'Service',
    metadata: { name: svc.metadata?.name, namespace: svc.metadata?.namespace ?? 'default', labels: svc.metadata?.labels ?? {} },
    spec: { addresses: ips.filter((ip) => ip !== 'None' && ip !== ''), ports, selector },
  }, at);
  return { ...converted, warnings };
}

/**
 * A port's protocol the way Istio reads a Kubernetes Service, so Services
 * already annotated for Istio need no change: `appProtocol` when set (with
 * Kubernetes' `kubernetes.io/h2c` as HTTP/2 and `kubernetes.io/ws` as HTTP),
 * else the port name's prefix before the first "-" (`http`, `http-web`,
 * `http2-x`, `grpc-x`), case-insensitively. `grpc-web` is HTTP/1.1 framing,
 * hence http. Anything else (`https`, `tls`, `mongo`, no name) stays an opaque
 * byte stream: TCP.
 */
export function appProtocolOf(name: string | undefined, appProtocol: string | undefined): AppProtocol {
  if (appProtocol === 'kubernetes.io/h2c') return 'http2';
  if (appProtocol === 'kubernetes.io/ws') return 'http';
  const declared = (appProtocol ?? name ?? '').toLowerCase();
  if (declared.startsWith('grpc-web')) return 'http';
  const prefix = declared.split('-', 1)[0];
  return prefix === 'http' || prefix === 'http2' || prefix === 'grpc' ? prefix : 'tcp';
}

/** A number, or why it cannot be determined. */
function resolveTargetPort(target: number | string | undefined, port: number, selected: readonly V1Pod[]): number | string {
  if (target === undefined) return port;
  if (typeof target === 'number') return target;
  if (/^[0-9]+$/.test(target)) return Number(target);
  if (selected.length === 0) return port;
  const found = new Set<number>();
  for (const pod of selected) {
    const n = namedPort(pod, target);
    if (n !== undefined) found.add(n);
  }
  if (found.size === 1) return [...found][0]!;
  if (found.size === 0) return `named targetPort "${target}" matches no container port of the selected pods`;
  return `named targetPort "${target}" means different ports in different pods (${[...found].sort((a, b) => a - b).join(', ')})`;
}

export function matches(labels: Readonly<Record<string, string>>, selector: Readonly<Record<string, string>>): boolean {
  return Object.entries(selector).every(([k, v]) => labels[k] === v);
}

/**
 * An AuthorizationPolicy from its custom resource: the CR's spec is the same
 * Istio-shaped document `ambitctl apply` takes, so it goes through the same
 * validation; an invalid one is refused whole.
 */
export function policyFromCustomResource(cr: PolicyObject): Converted<AuthorizationPolicy> {
  return validated<AuthorizationPolicy>({
    apiVersion: API_VERSION,
    kind: 'AuthorizationPolicy',
    metadata: { name: cr.metadata?.name, namespace: cr.metadata?.namespace ?? 'default', labels: cr.metadata?.labels ?? {} },
    spec: cr.spec,
  }, where('AuthorizationPolicy', cr));
}

/** The Gateway API's route CRDs and Ambit's FaultInjection CRD. */
export const GATEWAY_GROUP = 'gateway.networking.k8s.io';
export const GATEWAY_VERSION = 'v1';
/** ReferenceGrant is served as v1beta1 only (the Gateway API never moved it to v1). */
export const REFERENCE_GRANT_VERSION = 'v1beta1';
export const REFERENCE_GRANT_PLURAL = 'referencegrants';
export const HTTPROUTE_PLURAL = 'httproutes';
export const GRPCROUTE_PLURAL = 'grpcroutes';
export const FAULT_PLURAL = 'faultinjections';

/**
 * An HTTPRoute, GRPCRoute, FaultInjection or ReferenceGrant from its custom resource: the
 * spec as the API server stored it (with its defaults filled in) goes through
 * the validation `ambitctl apply` uses; labels carry over, annotations and
 * status do not (status is Ambit's to compute, shared/routes/status.ts).
 */
export function routeFromCustomResource<K extends 'HTTPRoute' | 'GRPCRoute' | 'FaultInjection' | 'ReferenceGrant'>(kind: K, cr: PolicyObject): Converted<Extract<Resource, { kind: K }>> {
  return validated<Extract<Resource, { kind: K }>>({
    apiVersion: apiVersionOf(kind),
    kind,
    metadata: { name: cr.metadata?.name, namespace: cr.metadata?.namespace ?? 'default', labels: cr.metadata?.labels ?? {} },
    spec: cr.spec,
  }, where(kind, cr));
}
