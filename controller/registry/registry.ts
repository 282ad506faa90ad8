import { isDeepStrictEqual } from 'node:util';
import { AmbitError } from '../../shared/errors.ts';
import type { SpiffeId } from '../../shared/spiffe-id.ts';
import { httpFieldsOnTcpPorts } from '../../shared/resources/validate-policy.ts';
import {
  keyString,
  resourceKey,
  type AuthorizationPolicy,
  type Change,
  type ChangeSet,
  type Kind,
  type Resource,
  type ResourceKey,
  type Service,
  type Workload,
} from '../../shared/resources/types.ts';
import { canonicalIp } from '../../shared/net-address.ts';
import type { Store } from '../store/store.ts';

export type ApplyOutcome = 'created' | 'configured' | 'unchanged';

/** What each changed key of a change set held before it (undefined: it did not exist). */
export type ChangeListener = (cs: ChangeSet, before: ReadonlyMap<string, Resource | undefined>) => void;

export interface ApplyPlan {
  readonly changes: readonly Change[];
  readonly results: readonly { readonly key: ResourceKey; readonly outcome: ApplyOutcome }[];
}

/**
 * The controller's in-memory view of the mesh state at one revision: what the
 * watch stream serves and what node authorization reads. Pure and synchronous;
 * it follows the store through applyChangeSet (whole change sets only, in
 * revision order), so every read sees one consistent revision.
 *
 * Its indexes (workloads by node and by address, counts by kind) follow each
 * change set rather than being rebuilt from every resource, so an apply or a
 * certificate request costs what it touches, not the size of the mesh.
 */
export class Registry {
  #revision = 0;
  readonly #resources = new Map<string, Resource>();
  /** node → workloads scheduled on it (by resource key): the node-authorization index. */
  readonly #workloadsByNode = new Map<string, Map<string, Workload>>();
  /** address → keys of the workloads registered at it (several only when a store other than planApply's checks put them there). */
  readonly #holdersByAddress = new Map<string, Set<string>>();
  /** "<kind>/<namespace>" → that namespace's resources of that kind: what a node-scoped watch looks through (api/watch-scope.ts). */
  readonly #byKindNamespace = new Map<string, Map<string, Resource>>();
  /** Canonical service address (VIP) → keys of the services that list it. */
  readonly #servicesByAddress = new Map<string, Set<string>>();
  readonly #counts: Record<Kind, number> = { Workload: 0, Service: 0, AuthorizationPolicy: 0, HTTPRoute: 0, GRPCRoute: 0, FaultInjection: 0, ReferenceGrant: 0 };
  /** list() of every kind, kept until the next change: what each Watch snapshot sends. */
  #allSorted: Resource[] | undefined;
  readonly #listeners = new Set<ChangeListener>();
  /**
   * The latest change sets, oldest first, holding at most #historyLimit
   * changes: what a resuming watch is sent without reading the store. Every
   * change set after #historyFrom is here. After a replica dies, each of its
   * agents resumes on another from nearly the same revision; answering them
   * from memory keeps that failover to the replicas' CPU, not one store read
   * per agent.
   */
  readonly #history: ChangeSet[] = [];
  #historyChanges = 0;
  #historyFrom = 0;
  readonly #historyLimit: number;

  /** `historyChanges`: how many changes the resume history keeps (the latest change sets holding at most that many). */
  constructor(historyChanges = 10_000) {
    this.#historyLimit = historyChanges;
  }

  /** Loads the store's snapshot and follows its commits. Returns the registry and an unsubscribe function. */
  static async follow(store: Store): Promise<{ registry: Registry; stop: () => void }> {
    const registry = new Registry();
    // Subscribe before the snapshot so no commit falls between the two; commits
    // the snapshot already holds are skipped by revision.
    const early: ChangeSet[] = [];
    let loaded = false;
    const stop = store.subscribe((cs) => (loaded ? registry.applyChangeSet(cs) : early.push(cs)));
    const snap = await store.snapshot();
    registry.load(snap.revision, snap.resources);
    for (const cs of early) if (cs.revision > snap.revision) registry.applyChangeSet(cs);
    loaded = true;
    return { registry, stop };
  }

  load(revision: number, resources: readonly Resource[]): void {
    this.#resources.clear();
    this.#workloadsByNode.clear();
    this.#holdersByAddress.clear();
    this.#byKindNamespace.clear();
    this.#servicesByAddress.clear();
    for (const kind of Object.keys(this.#counts) as Kind[]) this.#counts[kind] = 0;
    for (const r of resources) this.#put(resourceKey(r), r);
    this.#revision = revision;
    this.#history.length = 0;
    this.#historyChanges = 0;
    this.#historyFrom = revision;
  }

  get revision(): number {
    return this.#revision;
  }

  applyChangeSet(cs: ChangeSet): void {
    if (cs.revision <= this.#revision) return; // already seen (snapshot overlap)
    const before = new Map<string, Resource | undefined>();
    for (const c of cs.changes) {
      const key = c.op === 'put' ? resourceKey(c.resource) : keyString(c.key);
      if (!before.has(key)) before.set(key, this.#resources.get(key));
      if (c.op === 'put') this.#put(key, c.resource);
      else this.#remove(key);
    }
    this.#revision = cs.revision;
    this.#remember(cs);
    for (const l of this.#listeners) l(cs, before);
  }

  #remember(cs: ChangeSet): void {
    this.#history.push(cs);
    this.#historyChanges += cs.changes.length;
    while (this.#historyChanges > this.#historyLimit && this.#history.length > 0) {
      const old = this.#history.shift()!;
      this.#historyChanges -= old.changes.length;
      this.#historyFrom = old.revision;
    }
  }

  /**
   * The change sets after `revision`, up to this view's revision, when this
   * view still holds all of them (see #history); undefined when it does not
   * (older, or from before this view loaded its snapshot): ask the store.
   */
  changesSince(revision: number): readonly ChangeSet[] | undefined {
    if (revision < this.#historyFrom || revision > this.#revision) return undefined;
    let i = this.#history.length;
    while (i > 0 && this.#history[i - 1]!.revision > revision) i--;
    return this.#history.slice(i);
  }

  /**
   * Called after each applied change set, in revision order, with what each
   * changed key held before the set (undefined: it did not exist): a scoped
   * watch needs the old node, labels and addresses of what moved or went.
   */
  onChange(listener: ChangeListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #put(key: string, r: Resource): void {
    this.#remove(key);
    this.#resources.set(key, r);
    this.#counts[r.kind]++;
    this.#allSorted = undefined;
    const kn = `${r.kind}/${r.metadata.namespace}`;
    let inNs = this.#byKindNamespace.get(kn);
    if (!inNs) this.#byKindNamespace.set(kn, (inNs = new Map()));
    inNs.set(key, r);
    if (r.kind === 'Service') {
      for (const a of r.spec.addresses) {
        const at = canonicalIp(a) ?? a;
        let keys = this.#servicesByAddress.get(at);
        if (!keys) this.#servicesByAddress.set(at, (keys = new Set()));
        keys.add(key);
      }
    }
    if (r.kind !== 'Workload') return;
    let onNode = this.#workloadsByNode.get(r.spec.node);
    if (!onNode) this.#workloadsByNode.set(r.spec.node, (onNode = new Map()));
    onNode.set(key, r);
    let holders = this.#holdersByAddress.get(r.spec.address);
    if (!holders) this.#holdersByAddress.set(r.spec.address, (holders = new Set()));
    holders.add(key);
  }

  #remove(key: string): void {
    const old = this.#resources.get(key);
    if (!old) return;
    this.#resources.delete(key);
    this.#counts[old.kind]--;
    this.#allSorted = undefined;
    const kn = `${old.kind}/${old.metadata.namespace}`;
    const inNs = this.#byKindNamespace.get(kn);
    inNs?.delete(key);
    if (inNs?.size === 0) this.#byKindNamespace.delete(kn);
    if (old.kind === 'Service') {
      for (const a of old.spec.addresses) {
        const at = canonicalIp(a) ?? a;
        const keys = this.#servicesByAddress.get(at);
        keys?.delete(key);
        if (keys?.size === 0) this.#servicesByAddress.delete(at);
      }
    }
    if (old.kind !== 'Workload') return;
    const onNode = this.#workloadsByNode.get(old.spec.node);
    onNode?.delete(key);
    if (onNode?.size === 0) this.#workloadsByNode.delete(old.spec.node);
    const holders = this.#holdersByAddress.get(old.spec.address);
    holders?.delete(key);
    if (holders?.size === 0) this.#holdersByAddress.delete(old.spec.address);
  }

  get(key: ResourceKey): Resource | undefined {
    return this.#resources.get(keyString(key));
  }

  /** A resource by its key string (resourceKey / keyString). */
  byKey(key: string): Resource | undefined {
    return this.#resources.get(key);
  }

  /** The resources of one kind in one namespace (unordered; a live view: do not hold it across changes). */
  inNamespace(kind: Kind, namespace: string): Iterable<Resource> {
    return this.#byKindNamespace.get(`${kind}/${namespace}`)?.values() ?? [];
  }

  /** Workloads registered at an address (canonical form as validation stores it). */
  workloadsAt(address: string): Workload[] {
    const out: Workload[] = [];
    for (const k of this.#holdersByAddress.get(address) ?? []) {
      const r = this.#resources.get(k);
      if (r?.kind === 'Workload') out.push(r);
    }
    return out;
  }

  /** Services listing `address` (canonical) among their VIPs. */
  servicesAt(address: string): Service[] {
    const out: Service[] = [];
    for (const k of this.#servicesByAddress.get(canonicalIp(address) ?? address) ?? []) {
      const r = this.#resources.get(k);
      if (r?.kind === 'Service') out.push(r);
    }
    return out;
  }

  /** Resources of a kind (all kinds when undefined), optionally in one namespace, ordered by namespace then name. */
  list(kind?: Kind, namespace?: string): Resource[] {
    if (kind === undefined && !namespace && this.#allSorted) return [...this.#allSorted];
    const out: Resource[] = [];
    for (const r of this.#resources.values()) {
      if (kind !== undefined && r.kind !== kind) continue;
      if (namespace && r.metadata.namespace !== namespace) continue;
      out.push(r);
    }
    out.sort((a, b) => a.kind.localeCompare(b.kind) || a.metadata.namespace.localeCompare(b.metadata.namespace) || a.metadata.name.localeCompare(b.metadata.name));
    if (kind === undefined && !namespace) this.#allSorted = [...out];
    return out;
  }

  all(): Resource[] {
    return this.list();
  }

  workloadsOnNode(node: string): Workload[] {
    return [...(this.#workloadsByNode.get(node)?.values() ?? [])].sort((a, b) => a.metadata.namespace.localeCompare(b.metadata.namespace) || a.metadata.name.localeCompare(b.metadata.name));
  }

  /**
   * Node authorization (DESIGN §2): may `node` hold `identity`? Its own node
   * identity, or a workload identity with a workload of that namespace and
   * service account registered on that node. Nothing else.
   */
  mayIssue(node: string, identity: SpiffeId): boolean {
    if (identity.kind === 'node') return identity.name === node;
    if (identity.kind !== 'workload') return false;
    for (const w of this.#workloadsByNode.get(node)?.values() ?? []) {
      if (w.metadata.namespace === identity.namespace && w.spec.serviceAccount === identity.serviceAccount) return true;
    }
    return false;
  }

  counts(): Record<Kind, number> {
    return { ...this.#counts };
  }

  /**
   * Plans an apply of already validated resources against this view: rejects
   * the whole batch (nothing written) on an address another workload holds,
   * or, with createOnly, on a name that exists.
   *
   * Optimistic concurrency (Kubernetes' resourceVersion): baseRevisions[i],
   * when above 0, is the metadata.revision resources[i] was read at; if the
   * resource changed since (or was deleted), the batch is refused with a
   * conflict naming it. 0 (no base) applies over whatever is there. The plan
   * is only safe because the caller commits it with this view's revision as
   * the expected one: a commit by anyone in between fails and is re-planned.
   */
  planApply(resources: readonly Resource[], createOnly: boolean, baseRevisions: readonly number[] = []): ApplyPlan {
    const changes: Change[] = [];
    const results: { key: ResourceKey; outcome: ApplyOutcome }[] = [];
    const batchKeys = new Set(resources.map(resourceKey));
    /** Addresses taken by earlier workloads of this batch. */
    const batchOwner = new Map<string, string>();
    // A holder outside the batch, or one earlier in it; a workload of the batch may keep or take its own address.
    const ownerOf = (address: string, key: string): string | undefined => {
      for (const h of this.#holdersByAddress.get(address) ?? []) if (h !== key && !batchKeys.has(h)) return h;
      const b = batchOwner.get(address);
      return b !== key ? b : undefined;
    };
    resources.forEach((r, i) => {
      const base = baseRevisions[i] ?? 0;
      if (base <= 0) return;
      const existing = this.#resources.get(resourceKey(r));
      if (existing?.metadata.revision === base) return;
      const what = `${r.kind} ${r.metadata.namespace}/${r.metadata.name}`;
      throw new AmbitError('AMBIT_ERR_RESOURCE_CONFLICT', existing
        ? `${what} was changed at revision ${existing.metadata.revision}, after revision ${base} this update is based on (metadata.revision); get it again and re-apply your change`
        : `${what} was deleted after revision ${base} this update is based on (metadata.revision); remove metadata.revision to create it again`, {
        details: { kind: r.kind, namespace: r.metadata.namespace, name: r.metadata.name, field: 'metadata.revision', baseRevision: base, revision: existing?.metadata.revision ?? 0 },
      });
    });
    for (const r of resources) {
      const key: ResourceKey = { kind: r.kind, namespace: r.metadata.namespace, name: r.metadata.name };
      const existing = this.#resources.get(resourceKey(r));
      if (existing && createOnly) {
        throw new AmbitError('AMBIT_ERR_RESOURCE_CONFLICT', `${r.kind} ${r.metadata.namespace}/${r.metadata.name} already exists`, {
          details: { kind: r.kind, namespace: r.metadata.namespace, name: r.metadata.name, field: 'metadata.name' },
        });
      }
      if (r.kind === 'Workload') {
        const owner = ownerOf(r.spec.address, resourceKey(r));
        if (owner) {
          throw new AmbitError('AMBIT_ERR_RESOURCE_CONFLICT', `Workload ${r.metadata.namespace}/${r.metadata.name}: spec.address ${r.spec.address} is already used by ${owner}`, {
            details: { field: 'spec.address', value: r.spec.address, owner },
          });
        }
        batchOwner.set(r.spec.address, resourceKey(r));
      }
      if (existing && sameContent(existing, r)) {
        results.push({ key, outcome: 'unchanged' });
        continue;
      }
      changes.push({ op: 'put', resource: r });
      results.push({ key, outcome: existing ? 'configured' : 'created' });
    }
    this.#checkHttpFields(resources);
    return { changes, results };
  }

  /** Refuses a policy of the batch whose HTTP fields reach its workloads only on TCP ports (validate-policy.ts), judged on the mesh as the batch leaves it. */
  #checkHttpFields(batch: readonly Resource[]): void {
    const policies = batch.filter((r): r is AuthorizationPolicy => r.kind === 'AuthorizationPolicy');
    if (policies.length === 0) return;
    const after = new Map(this.#resources);
    for (const r of batch) after.set(resourceKey(r), r);
    for (const p of policies) {
      const problem = httpFieldsOnTcpPorts(p, after.values());
      if (problem === undefined) continue;
      const what = `AuthorizationPolicy ${p.metadata.namespace}/${p.metadata.name}`;
      throw new AmbitError('AMBIT_ERR_RESOURCE_INVALID', `${what}: ${problem.field}: ${problem.message}`, {
        details: { kind: 'AuthorizationPolicy', namespace: p.metadata.namespace, name: p.metadata.name, field: problem.field, value: problem.value },
      });
    }
  }

  /** Plans a delete; a missing key fails the batch unless ignoreNotFound. */
  planDelete(keys: readonly ResourceKey[], ignoreNotFound: boolean): { changes: Change[]; deleted: ResourceKey[] } {
    const changes: Change[] = [];
    const deleted: ResourceKey[] = [];
    const seen = new Set<string>();
    for (const key of keys) {
      const k = keyString(key);
      if (seen.has(k)) continue;
      seen.add(k);
      if (!this.#resources.has(k)) {
        if (ignoreNotFound) continue;
        throw new AmbitError('AMBIT_ERR_RESOURCE_NOT_FOUND', `${key.kind} ${key.namespace}/${key.name} not found`, { details: { ...key } });
      }
      changes.push({ op: 'delete', key });
      deleted.push(key);
    }
    return { changes, deleted };
  }
}

function sameContent(a: Resource, b: Resource): boolean {
  return isDeepStrictEqual({ ...a, metadata: { ...a.metadata, revision: 0 } }, { ...b, metadata: { ...b.metadata, revision: 0 } });
}
