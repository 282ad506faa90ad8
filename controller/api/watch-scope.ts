import { canonicalIp } from '../../shared/net-address.ts';
import { KINDS, MESH_NAMESPACE, keyString, resourceKey, type Change, type ChangeSet, type Kind, type Resource, type Service, type Workload } from '../../shared/resources/types.ts';
import type { Registry } from '../registry/registry.ts';

/*
 * The node scope of a Watch stream (docs/scale.md, "The scoped watch"): what
 * one agent is sent, and which streams a change set concerns. An agent in
 * node scope holds
 *  - its node's workloads;
 *  - the AuthorizationPolicies of the mesh namespace and of its workloads'
 *    namespaces (every policy that can select them);
 *  - the Services that select its workloads (inbound telemetry and protocol);
 *  - the hosts it subscribed to: a service (by VIP or `name.namespace`)
 *    with every workload its selector matches, or the workloads at an
 *    address;
 *  - every resource of the other kinds (few: routes and the like).
 * Each stream keeps the keys it has sent (`held`), and the ScopeIndex maps
 * nodes, held keys, subscribed names and addresses and the namespaces of a
 * node's workloads to streams, so a change set is looked at only by the
 * streams it can concern and costs what it touches, not streams × mesh.
 */

/** The kinds node scope filters; every other kind is sent whole. */
const FILTERED: ReadonlySet<Kind> = new Set<Kind>(['Workload', 'Service', 'AuthorizationPolicy']);

/** How many hosts one stream may follow: an agent's own bound is lower (agent/state/subscriptions.ts); this one protects the controller from one that has none. */
export const MAX_SUBSCRIPTIONS_PER_STREAM = 10_000;

function selects(svc: Service, w: Workload): boolean {
  if (svc.metadata.namespace !== w.metadata.namespace) return false;
  const sel = Object.entries(svc.spec.selector);
  return sel.length > 0 && sel.every(([k, v]) => w.metadata.labels[k] === v);
}

class Multimap<V> {
  readonly #m = new Map<string, Set<V>>();
  add(k: string, v: V): void {
    let s = this.#m.get(k);
    if (!s) this.#m.set(k, (s = new Set()));
    s.add(v);
  }
  delete(k: string, v: V): void {
    const s = this.#m.get(k);
    s?.delete(v);
    if (s?.size === 0) this.#m.delete(k);
  }
  get(k: string): ReadonlySet<V> {
    return this.#m.get(k) ?? EMPTY;
  }
}
const EMPTY: ReadonlySet<never> = new Set();

/** One answer to a subscription: whether the host names something of the mesh now. */
export interface HostAnswer {
  readonly host: string;
  readonly found: boolean;
}

/** The streams of one controller in node scope, indexed by what their agents hold and follow. */
export class ScopeIndex {
  readonly registry: Registry;
  readonly scopes = new Set<NodeScope>();
  readonly byNode = new Multimap<NodeScope>();
  readonly byHeld = new Multimap<NodeScope>();
  /** Subscribed host (canonical) → streams. */
  readonly byHost = new Multimap<NodeScope>();
  /** Namespace of one of a stream's node's workloads → streams. */
  readonly byLocalNamespace = new Multimap<NodeScope>();

  constructor(registry: Registry) {
    this.registry = registry;
  }

  /** A stream of `node` in node scope; close() it when the stream ends. */
  open(node: string): NodeScope {
    const s = new NodeScope(this, node);
    this.scopes.add(s);
    this.byNode.add(node, s);
    return s;
  }

  /**
   * The streams a change set can concern: those holding a changed key, the
   * changed workloads' nodes, subscribers of changed names and addresses
   * (before and after), the streams holding a subscribed service whose
   * selector matches a changed workload, and the streams with workloads in a
   * changed service's or policy's namespace. A mesh-namespace policy or a
   * kind that is not filtered concerns every stream.
   */
  concerned(cs: ChangeSet, before: ReadonlyMap<string, Resource | undefined>): Set<NodeScope> {
    const out = new Set<NodeScope>();
    const addAll = (ss: Iterable<NodeScope>): void => {
      for (const s of ss) out.add(s);
    };
    for (const c of cs.changes) {
      const key = c.op === 'put' ? resourceKey(c.resource) : keyString(c.key);
      const kind = c.op === 'put' ? c.resource.kind : c.key.kind;
      if (!FILTERED.has(kind)) return new Set(this.scopes);
      addAll(this.byHeld.get(key));
      for (const r of [before.get(key), c.op === 'put' ? c.resource : undefined]) {
        if (!r) continue;
        if (r.kind === 'Workload') {
          addAll(this.byNode.get(r.spec.node));
          addAll(this.byHost.get(r.spec.address));
          for (const svc of this.registry.inNamespace('Service', r.metadata.namespace)) {
            if (selects(svc as Service, r)) addAll(this.byHeld.get(resourceKey(svc)));
          }
        } else if (r.kind === 'Service') {
          addAll(this.byHost.get(`${r.metadata.name}.${r.metadata.namespace}`));
          for (const a of r.spec.addresses) addAll(this.byHost.get(canonicalIp(a) ?? a));
          addAll(this.byLocalNamespace.get(r.metadata.namespace));
        } else if (r.metadata.namespace === MESH_NAMESPACE) {
          return new Set(this.scopes);
        } else {
          addAll(this.byLocalNamespace.get(r.metadata.namespace));
        }
      }
    }
    return out;
  }
}

/** What one node-scoped stream's agent holds and follows. */
export class NodeScope {
  readonly #index: ScopeIndex;
  readonly node: string;
  /** Keys the agent holds (sent and not deleted since). */
  readonly held = new Set<string>();
  /** Subscribed hosts, canonical. */
  readonly hosts = new Set<string>();
  /** Namespaces of this node's workloads. */
  #localNamespaces = new Set<string>();
  #closed = false;

  constructor(index: ScopeIndex, node: string) {
    this.#index = index;
    this.node = node;
  }

  get #registry(): Registry {
    return this.#index.registry;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const ix = this.#index;
    ix.scopes.delete(this);
    ix.byNode.delete(this.node, this);
    for (const k of this.held) ix.byHeld.delete(k, this);
    for (const h of this.hosts) ix.byHost.delete(h, this);
    for (const ns of this.#localNamespaces) ix.byLocalNamespace.delete(ns, this);
  }

  /**
   * Whether the agent should hold `r` now. A workload: on this node, at a
   * subscribed address, or selected by a subscribed service. A service:
   * subscribed (by name or VIP), or selecting one of this node's workloads.
   * A policy: in the mesh namespace or a namespace of this node's workloads.
   */
  wants(r: Resource): boolean {
    if (r.kind === 'Workload') {
      if (r.spec.node === this.node || this.hosts.has(r.spec.address)) return true;
      for (const svc of this.#registry.inNamespace('Service', r.metadata.namespace)) {
        if (this.#subscribedService(svc as Service) && selects(svc as Service, r)) return true;
      }
      return false;
    }
    if (r.kind === 'Service') {
      if (this.#subscribedService(r)) return true;
      return this.#localNamespaces.has(r.metadata.namespace) && this.#registry.workloadsOnNode(this.node).some((w) => selects(r, w));
    }
    if (r.kind === 'AuthorizationPolicy') return r.metadata.namespace === MESH_NAMESPACE || this.#localNamespaces.has(r.metadata.namespace);
    return true;
  }

  #subscribedService(s: Service): boolean {
    if (this.hosts.has(`${s.metadata.name}.${s.metadata.namespace}`)) return true;
    return s.spec.addresses.some((a) => this.hosts.has(canonicalIp(a) ?? a));
  }

  /** Recomputes the namespaces of this node's workloads; returns those that came or went. */
  #refreshLocalNamespaces(): string[] {
    const now = new Set(this.#registry.workloadsOnNode(this.node).map((w) => w.metadata.namespace));
    const moved: string[] = [];
    for (const ns of this.#localNamespaces) if (!now.has(ns)) {
      moved.push(ns);
      this.#index.byLocalNamespace.delete(ns, this);
    }
    for (const ns of now) if (!this.#localNamespaces.has(ns)) {
      moved.push(ns);
      this.#index.byLocalNamespace.add(ns, this);
    }
    this.#localNamespaces = now;
    return moved;
  }

  /**
   * Decides `key` against the registry now, recording the result in `out`:
   * a put when the agent should hold it and (`changed`) it changed or the
   * agent does not hold it yet; a delete when the agent holds it and should
   * not. Keeps `held` and the index in step.
   */
  #consider(key: string, changed: boolean, out: Map<string, Change>): void {
    const r = this.#registry.byKey(key);
    if (r && this.wants(r)) {
      if (changed || !this.held.has(key)) out.set(key, { op: 'put', resource: r });
      if (!this.held.has(key)) {
        this.held.add(key);
        this.#index.byHeld.add(key, this);
      }
    } else if (this.held.has(key)) {
      const [kind, namespace, name] = splitKey(key, r);
      out.set(key, { op: 'delete', key: { kind, namespace, name } });
      this.held.delete(key);
      this.#index.byHeld.delete(key, this);
    }
  }

  /** Everything a service or address pulls in: the services it names and, for each, the workloads its selector matches; the workloads at an address. */
  #considerHost(host: string, out: Map<string, Change>): boolean {
    const services: Service[] = [];
    if (canonicalIp(host) !== undefined) {
      services.push(...this.#registry.servicesAt(host));
      for (const w of this.#registry.workloadsAt(host)) this.#consider(resourceKey(w), false, out);
    } else {
      const [name, namespace] = host.split('.') as [string, string];
      const svc = this.#registry.get({ kind: 'Service', namespace, name });
      if (svc?.kind === 'Service') services.push(svc);
    }
    for (const svc of services) {
      this.#consider(resourceKey(svc), false, out);
      this.#considerEndpoints(svc, out);
    }
    return services.length > 0 || (canonicalIp(host) !== undefined && this.#registry.workloadsAt(host).length > 0);
  }

  #considerEndpoints(svc: Service, out: Map<string, Change>): void {
    if (Object.keys(svc.spec.selector).length === 0) return;
    for (const w of this.#registry.inNamespace('Workload', svc.metadata.namespace)) {
      if (selects(svc, w as Workload)) this.#consider(resourceKey(w), false, out);
    }
  }

  /** The services and policies of a namespace that came into (or left) this node's scope. */
  #considerNamespace(ns: string, out: Map<string, Change>): void {
    for (const kind of ['Service', 'AuthorizationPolicy'] as const) {
      for (const r of this.#registry.inNamespace(kind, ns)) this.#consider(resourceKey(r), false, out);
    }
    // Services of a namespace that left are no longer in the registry's namespace listing only if deleted; the held ones are re-judged.
    for (const k of [...this.held]) if (k.startsWith('Service/') || k.startsWith('AuthorizationPolicy/')) {
      const r = this.#registry.byKey(k);
      if (!r || r.metadata.namespace === ns) this.#consider(k, false, out);
    }
  }

  /** The stream's first response: what the agent should hold now, with `hosts` (canonical) subscribed. Replaces what was held. */
  snapshot(hosts: readonly string[]): { resources: Resource[]; answers: HostAnswer[] } {
    for (const k of this.held) this.#index.byHeld.delete(k, this);
    this.held.clear();
    const out = new Map<string, Change>();
    this.#refreshLocalNamespaces();
    const answers = this.subscribe(hosts, out);
    for (const w of this.#registry.workloadsOnNode(this.node)) this.#consider(resourceKey(w), false, out);
    for (const ns of [...this.#localNamespaces, MESH_NAMESPACE]) this.#considerNamespace(ns, out);
    for (const kind of KINDS) {
      if (FILTERED.has(kind)) continue;
      for (const r of this.#registry.list(kind)) this.#consider(resourceKey(r), false, out);
    }
    const resources: Resource[] = [];
    for (const c of out.values()) if (c.op === 'put') resources.push(c.resource);
    return { resources, answers };
  }

  /**
   * Follows `hosts` (canonical); what they pull in goes into `out` (puts of
   * what the agent does not hold). Hosts beyond MAX_SUBSCRIPTIONS_PER_STREAM
   * are answered not found and not followed.
   */
  subscribe(hosts: readonly string[], out: Map<string, Change>): HostAnswer[] {
    const answers: HostAnswer[] = [];
    for (const host of hosts) {
      if (!this.hosts.has(host)) {
        if (this.hosts.size >= MAX_SUBSCRIPTIONS_PER_STREAM) {
          answers.push({ host, found: false });
          continue;
        }
        this.hosts.add(host);
        this.#index.byHost.add(host, this);
      }
      answers.push({ host, found: this.#considerHost(host, out) });
    }
    return answers;
  }

  /** Stops following `hosts`; deletes in `out` what the agent holds and no longer needs. */
  drop(hosts: readonly string[], out: Map<string, Change>): void {
    let any = false;
    for (const host of hosts) {
      if (!this.hosts.delete(host)) continue;
      this.#index.byHost.delete(host, this);
      any = true;
    }
    // The held set is the agent's working set (bounded): judging all of it again is cheap and misses nothing.
    if (any) for (const k of [...this.held]) this.#consider(k, false, out);
  }

  /** This stream's share of a change set the registry has applied (`before`: what each changed key held before it). */
  filter(cs: ChangeSet, before: ReadonlyMap<string, Resource | undefined>): Change[] {
    const out = new Map<string, Change>();
    const changedKeys: string[] = [];
    let localMoved = false;
    const touchedServices: Service[] = [];
    for (const c of cs.changes) {
      const key = c.op === 'put' ? resourceKey(c.resource) : keyString(c.key);
      changedKeys.push(key);
      const now = this.#registry.byKey(key);
      const was = before.get(key);
      for (const r of [was, now]) {
        if (r?.kind === 'Workload' && r.spec.node === this.node) localMoved = true;
        if (r?.kind === 'Service' && this.#subscribedService(r)) touchedServices.push(r);
      }
    }
    const movedNamespaces = localMoved ? this.#refreshLocalNamespaces() : [];
    for (const key of changedKeys) this.#consider(key, true, out);
    // A node workload that came, went or changed labels: services of its namespace may start or stop selecting one; a namespace that came or went brings or takes its policies.
    if (localMoved) {
      const namespaces = new Set(movedNamespaces);
      for (const key of changedKeys) {
        for (const r of [this.#registry.byKey(key), before.get(key)]) {
          if (r?.kind === 'Workload' && r.spec.node === this.node) namespaces.add(r.metadata.namespace);
        }
      }
      for (const ns of namespaces) this.#considerNamespace(ns, out);
    }
    // A subscribed service whose selector or addresses changed pulls in its new endpoints (those that stop matching are changed keys or judged below).
    for (const svc of touchedServices) this.#considerEndpoints(this.#registry.byKey(resourceKey(svc)) as Service ?? svc, out);
    if (touchedServices.length > 0) {
      for (const k of [...this.held]) if (k.startsWith('Workload/')) this.#consider(k, false, out);
    }
    return [...out.values()];
  }
}

/** A key string's parts (kind, namespace, name), from the resource when it is still there. */
function splitKey(key: string, r: Resource | undefined): [Kind, string, string] {
  if (r) return [r.kind, r.metadata.namespace, r.metadata.name];
  const [kind, namespace, ...rest] = key.split('/');
  return [kind as Kind, namespace ?? '', rest.join('/')];
}
