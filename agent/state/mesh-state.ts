import { isDeepStrictEqual } from 'node:util';
import { Authorizer } from '../../shared/authorization.ts';
import { workloadId, type SpiffeId } from '../../shared/spiffe-id.ts';
import { canonicalIp } from '../../shared/net-address.ts';
import { DEFAULT_CLUSTER_DOMAIN, DEFAULT_CLUSTER_ID, serviceHost, workloadNames, type WorkloadNames } from '../proxy/istio-names.ts';
import { appProtocolAtWorkloadPort, serviceAtWorkloadPort, serviceKeyOfHost } from '../../shared/service-host.ts';
import { keyString, resourceKey, type Change, type Resource, type Service, type AppProtocol, type ServicePort, type Workload } from '../../shared/resources/types.ts';
import type { FaultInjection, GRPCRoute, HTTPRoute, ReferenceGrant } from '../../shared/resources/route-types.ts';

export interface NodeEndpoint {
  readonly name: string;
  readonly hboneAddress: string;
}

export interface StateUpdate {
  readonly revision: number;
  /** Full state: replaces everything held (resources). */
  readonly snapshot?: readonly Resource[];
  readonly changes?: readonly Change[];
  readonly bundlePem?: string;
  readonly nodes?: readonly NodeEndpoint[];
}

export interface UpdateEffect {
  readonly policiesChanged: boolean;
  readonly localWorkloadsChanged: boolean;
  readonly bundleChanged: boolean;
  /** HTTPRoutes, GRPCRoutes, FaultInjections or ReferenceGrants changed (revisions aside): route tables need recompiling. */
  readonly routesChanged: boolean;
}

export interface ResolvedService {
  readonly service: Service;
  readonly port: ServicePort;
}

/**
 * The agent's view of the mesh at one revision, indexed for the data path:
 * workloads by address, services by VIP and by "name.namespace", this node's
 * workloads, node HBONE endpoints, and a compiled Authorizer. Pure and
 * synchronous; updates replace whole indexes so a reader never sees a half
 * applied revision.
 */
export class MeshState {
  readonly node: string;
  readonly trustDomain: string;
  #revision = 0;
  #resources = new Map<string, Resource>();
  #bundlePem = '';
  #nodes = new Map<string, string>();
  #byAddress = new Map<string, Workload>();
  /** Every workload registered at an address (on a VM several may share the host's). */
  #allByAddress = new Map<string, readonly Workload[]>();
  #servicesByVip = new Map<string, Service>();
  #servicesByName = new Map<string, Service>();
  #local: Workload[] = [];
  #httpRoutes: readonly HTTPRoute[] = [];
  #grpcRoutes: readonly GRPCRoute[] = [];
  #grants: readonly ReferenceGrant[] = [];
  #authorizer = new Authorizer([]);
  // Workload objects are immutable and replaced on every change, so an
  // identity computed once per object stays right; it is asked for on every
  // connection (source and destination), and building one validates each part.
  readonly #ids = new WeakMap<Workload, SpiffeId>();
  /** Telemetry names per workload object, for the same reason. */
  readonly #names = new WeakMap<Workload, WorkloadNames>();
  /** The DNS domain of service host names (`name.namespace.svc.<domain>`). */
  readonly clusterDomain: string;
  /** The cluster every workload of this mesh is reported in (`source_cluster`, `destination_cluster`). */
  readonly clusterId: string;

  constructor(node: string, trustDomain: string, o: { readonly clusterDomain?: string; readonly clusterId?: string } = {}) {
    this.node = node;
    this.trustDomain = trustDomain;
    this.clusterDomain = o.clusterDomain ?? DEFAULT_CLUSTER_DOMAIN;
    this.clusterId = o.clusterId ?? DEFAULT_CLUSTER_ID;
  }

  get revision(): number {
    return this.#revision;
  }
  get bundlePem(): string {
    return this.#bundlePem;
  }
  get authorizer(): Authorizer {
    return this.#authorizer;
  }

  /**
   * Applies one controller response. Throws (without changing anything) when
   * the update cannot be applied — e.g. policies the engine refuses — so the
   * caller nacks it and keeps serving the last good state.
   */
  apply(u: StateUpdate): UpdateEffect {
    const next = u.snapshot ? new Map<string, Resource>() : new Map(this.#resources);
    for (const r of u.snapshot ?? []) next.set(resourceKey(r), r);
    for (const c of u.changes ?? []) {
      if (c.op === 'put') next.set(resourceKey(c.resource), c.resource);
      else next.delete(keyString(c.key));
    }
    const policies = [...next.values()].filter((r) => r.kind === 'AuthorizationPolicy');
    const oldPolicies = [...this.#resources.values()].filter((r) => r.kind === 'AuthorizationPolicy');
    const policiesChanged = !isDeepStrictEqual(stripRev(policies), stripRev(oldPolicies));
    const authorizer = policiesChanged ? new Authorizer(policies) : this.#authorizer; // may throw: nothing changed yet

    const byAddress = new Map<string, Workload>();
    const allByAddress = new Map<string, Workload[]>();
    const vips = new Map<string, Service>();
    const names = new Map<string, Service>();
    const local: Workload[] = [];
    for (const r of next.values()) {
      if (r.kind === 'Workload') {
        const at = canonicalIp(r.spec.address) ?? r.spec.address;
        byAddress.set(at, r);
        const list = allByAddress.get(at);
        if (list) list.push(r);
        else allByAddress.set(at, [r]);
        if (r.spec.node === this.node) local.push(r);
      } else if (r.kind === 'Service') {
        names.set(`${r.metadata.name}.${r.metadata.namespace}`, r);
        for (const a of r.spec.addresses) vips.set(canonicalIp(a) ?? a, r);
      }
    }
    local.sort((a, b) => resourceKey(a).localeCompare(resourceKey(b)));
    const routes = [...next.values()].filter(isRouteInput);
    const oldRoutes = [...this.#resources.values()].filter(isRouteInput);
    const routesChanged = !isDeepStrictEqual(stripRev(byKey(routes)), stripRev(byKey(oldRoutes)));
    const httpRoutes = routesChanged ? byKey(routes.filter((r) => r.kind === 'HTTPRoute')) : this.#httpRoutes;
    const grpcRoutes = routesChanged ? byKey(routes.filter((r) => r.kind === 'GRPCRoute')) : this.#grpcRoutes;
    const grants = routesChanged ? byKey(routes.filter((r) => r.kind === 'ReferenceGrant')) : this.#grants;
    const localWorkloadsChanged = !isDeepStrictEqual(stripRev(local), stripRev(this.#local));
    const bundleChanged = u.bundlePem !== undefined && u.bundlePem !== '' && u.bundlePem !== this.#bundlePem;

    this.#resources = next;
    this.#byAddress = byAddress;
    this.#allByAddress = allByAddress;
    this.#servicesByVip = vips;
    this.#servicesByName = names;
    this.#local = local;
    this.#httpRoutes = httpRoutes;
    this.#grpcRoutes = grpcRoutes;
    this.#grants = grants;
    this.#authorizer = authorizer;
    this.#revision = u.revision;
    if (bundleChanged) this.#bundlePem = u.bundlePem!;
    if (u.nodes) this.#nodes = new Map(u.nodes.map((n) => [n.name, n.hboneAddress]));
    return { policiesChanged, localWorkloadsChanged, bundleChanged, routesChanged };
  }

  resources(): Resource[] {
    return [...this.#resources.values()];
  }

  nodes(): NodeEndpoint[] {
    return [...this.#nodes].map(([name, hboneAddress]) => ({ name, hboneAddress }));
  }

  /**
   * Every HTTPRoute of the mesh, ordered by namespace then name (the tie-break
   * of the Gateway API's rule precedence, since Ambit keeps no creation time).
   * Which apply to a client is shared/routes/attachment.ts's business.
   */
  httpRoutes(): readonly HTTPRoute[] {
    return this.#httpRoutes;
  }

  /** Every GRPCRoute of the mesh, ordered as httpRoutes(). */
  grpcRoutes(): readonly GRPCRoute[] {
    return this.#grpcRoutes;
  }

  /** The FaultInjection an ExtensionRef filter names (in the route's namespace), if it exists. */
  faultInjection(namespace: string, name: string): FaultInjection | undefined {
    const r = this.#resources.get(keyString({ kind: 'FaultInjection', namespace, name }));
    return r?.kind === 'FaultInjection' ? r : undefined;
  }

  /**
   * The ReferenceGrants of `namespace`: which routes of other namespaces may
   * use its Services as backends (shared/routes/references.ts decides).
   */
  referenceGrants(namespace: string): readonly ReferenceGrant[] {
    return this.#grants.filter((g) => g.metadata.namespace === namespace);
  }

  /** A Service by namespace and name (a route's parentRef or backendRef names one this way). */
  serviceByName(namespace: string, name: string): Service | undefined {
    return this.#servicesByName.get(`${name}.${namespace}`);
  }

  /** Workloads scheduled on this node. */
  localWorkloads(): readonly Workload[] {
    return this.#local;
  }

  workloadByAddress(ip: string): Workload | undefined {
    const c = canonicalIp(ip) ?? ip;
    const w = this.#byAddress.get(c);
    // A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d: that is the IPv4 workload.
    return w ?? (c.startsWith('::ffff:') && c.includes('.') ? this.#byAddress.get(c.slice('::ffff:'.length)) : undefined);
  }

  /** Every workload registered at ip, whichever node it is on (empty when none). */
  workloadsAt(ip: string): readonly Workload[] {
    const c = canonicalIp(ip) ?? ip;
    return this.#allByAddress.get(c) ?? (c.startsWith('::ffff:') && c.includes('.') ? this.#allByAddress.get(c.slice('::ffff:'.length)) : undefined) ?? [];
  }

  /** The local workload at ip, if it serves `port` (empty port list: any port). */
  localWorkloadAt(ip: string, port: number): Workload | undefined {
    const w = this.workloadByAddress(ip);
    if (!w || w.spec.node !== this.node) return undefined;
    return w.spec.ports.length === 0 || w.spec.ports.includes(port) ? w : undefined;
  }

  /** Any workload of the mesh by namespace and name. */
  workloadByName(namespace: string, name: string): Workload | undefined {
    const r = this.#resources.get(keyString({ kind: 'Workload', namespace, name }));
    return r?.kind === 'Workload' ? r : undefined;
  }

  localWorkloadByName(namespace: string, name: string): Workload | undefined {
    return this.#local.find((w) => w.metadata.namespace === namespace && w.metadata.name === name);
  }

  identityOf(w: Workload): SpiffeId {
    let id = this.#ids.get(w);
    if (id === undefined) {
      id = workloadId(this.trustDomain, w.metadata.namespace, w.spec.serviceAccount);
      this.#ids.set(w, id);
    }
    return id;
  }

  /** Istio's app, version, canonical service and revision and cluster of `w` (proxy/istio-names.ts). */
  namesOf(w: Workload): WorkloadNames {
    let names = this.#names.get(w);
    if (names === undefined) {
      names = workloadNames(w, this.clusterId);
      this.#names.set(w, names);
    }
    return names;
  }

  /** The `name.namespace` of the service `host` (a VIP or a service name) names, if this state holds it. */
  serviceKeyOf(host: string): string | undefined {
    const ip = canonicalIp(host);
    const svc = ip ? this.#servicesByVip.get(ip) : this.#servicesByName.get(serviceKeyOfHost(host) ?? '');
    return svc ? `${svc.metadata.name}.${svc.metadata.namespace}` : undefined;
  }

  /** Whether `host` (a VIP, a service name, a workload address) names a service or a workload this state holds. */
  holdsHost(host: string): boolean {
    const ip = canonicalIp(host);
    if (ip) return this.#servicesByVip.has(ip) || this.workloadByAddress(ip) !== undefined;
    const key = serviceKeyOfHost(host);
    return key !== undefined && this.#servicesByName.has(key);
  }

  /** A service's host name, `name.namespace.svc.<cluster domain>`: how telemetry, logs and passive health name it. */
  serviceHost(svc: Service): string {
    return serviceHost(svc, this.clusterDomain);
  }

  hboneAddressOf(node: string): string | undefined {
    return this.#nodes.get(node);
  }

  /**
   * A service by VIP or by name ("web.shop", "web.shop.svc", "web.shop.svc.cluster.local")
   * serving `port`.
   */
  resolveService(host: string, port: number): ResolvedService | undefined {
    const ip = canonicalIp(host);
    let svc: Service | undefined;
    if (ip) svc = this.#servicesByVip.get(ip);
    else {
      const key = serviceKeyOfHost(host);
      if (key !== undefined) svc = this.#servicesByName.get(key);
    }
    const p = svc?.spec.ports.find((sp) => sp.port === port);
    return svc && p ? { service: svc, port: p } : undefined;
  }

  /** The host name (serviceHost) of the first service (by name) that selects `w` and targets `port`, or '' — for inbound telemetry. */
  serviceNameFor(w: Workload, port: number): string {
    const best = this.#serviceAt(w, port);
    return best ? this.serviceHost(best) : '';
  }

  /**
   * What the workload's port speaks: the appProtocol its Service (the one
   * serviceNameFor names) declares for it; `tcp` when no Service selects it.
   */
  appProtocolAt(w: Workload, port: number): AppProtocol {
    return appProtocolAtWorkloadPort(this.#servicesByName.values(), w, port);
  }

  /** The Service (first by name) that selects the workload and targets `port`. */
  #serviceAt(w: Workload, port: number): Service | undefined {
    return serviceAtWorkloadPort(this.#servicesByName.values(), w, port);
  }

  /** Workloads a service selects (same namespace, every selector pair present); an empty selector selects none. */
  endpointsOf(svc: Service): Workload[] {
    const sel = Object.entries(svc.spec.selector);
    if (sel.length === 0) return [];
    const out: Workload[] = [];
    for (const r of this.#resources.values()) {
      if (r.kind !== 'Workload' || r.metadata.namespace !== svc.metadata.namespace) continue;
      if (sel.every(([k, v]) => r.metadata.labels[k] === v)) out.push(r);
    }
    return out;
  }
}

/** The kinds route tables are compiled from. */
function isRouteInput(r: Resource): boolean {
  return r.kind === 'HTTPRoute' || r.kind === 'GRPCRoute' || r.kind === 'FaultInjection' || r.kind === 'ReferenceGrant';
}

/** Resources ordered by namespace, then name (one kind per list, so the key order is that). */
function byKey<T extends Resource>(rs: readonly T[]): T[] {
  return [...rs].sort((a, b) => a.metadata.namespace.localeCompare(b.metadata.namespace) || a.metadata.name.localeCompare(b.metadata.name)
    || a.kind.localeCompare(b.kind));
}

function stripRev(rs: readonly Resource[]): unknown[] {
  return rs.map((r) => ({ ...r, metadata: { ...r.metadata, revision: 0 } }));
}

/**
 * Picks an endpoint: healthy ones first (all, if none is healthy — better to
 * try than to fail for sure), preferring the caller's locality (same zone,
 * then region), then weighted random among those.
 */
export function pickEndpoint(endpoints: readonly Workload[], locality: string, port: number, random: () => number = Math.random): Workload | undefined {
  const serving = endpoints.filter((w) => w.spec.ports.length === 0 || w.spec.ports.includes(port));
  if (serving.length === 0) return undefined;
  const healthy = serving.filter((w) => w.spec.healthy);
  let pool = healthy.length > 0 ? healthy : serving;
  if (locality) {
    const [region, zone] = locality.split('/');
    const sameZone = pool.filter((w) => { const [r, z] = w.spec.locality.split('/'); return r === region && z === zone; });
    const sameRegion = pool.filter((w) => w.spec.locality.split('/')[0] === region);
    pool = sameZone.length > 0 ? sameZone : sameRegion.length > 0 ? sameRegion : pool;
  }
  const total = pool.reduce((s, w) => s + w.spec.weight, 0);
  let x = random() * total;
  for (const w of pool) {
    x -= w.spec.weight;
    if (x < 0) return w;
  }
  return pool[pool.length - 1];
}
