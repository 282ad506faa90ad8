import { CoreV1Api, type KubeConfig, type KubernetesObject, type V1Node, type V1Pod } from '@kubernetes/client-node';
import { AmbitError, errorMessage } from '../../shared/errors.ts';
import type { Logger } from '../../shared/logger.ts';
import { resourceKey } from '../../shared/resources/types.ts';
import type { Kind, Resource } from '../../shared/resources/types.ts';
import { ChangeFeed } from './change-feed.ts';
import { localityOf, policyFromCustomResource, routeFromCustomResource, serviceFromKubernetes, workloadFromPod } from './kubernetes/convert.ts';
import { diffResources, parseKey } from './kubernetes/diff.ts';
import { KubeSources, type SourceName, type Verb } from './kubernetes/kube-sources.ts';
import type { Change, ChangeSet, NodeFields, NodeRecord, Snapshot, Store, TokenRecord } from './store.ts';

export interface KubernetesStoreOptions {
  readonly kubeConfig: KubeConfig;
  /** Embedded store for what Kubernetes does not hold: join tokens, node records, settings (and the revision high-water mark). Closed with this store. */
  readonly local: Store;
  readonly logger: Logger;
  /** Change sets kept in memory for changesSince (default 1000); an agent further behind gets a snapshot. */
  readonly retainChangeSets?: number;
  /** How long open() waits for the first list of every resource (default 60 s). */
  readonly syncTimeoutMs?: number;
  /** How often a CRD that is not installed (routes, ReferenceGrant, FaultInjection) is looked for again (default 30 s). */
  readonly absentCrdRetryMs?: number;
}

const REVISION_SETTING = 'kubernetes.revision';
const DEFAULT_RETAIN = 1000;
const DEFAULT_SYNC_TIMEOUT_MS = 60_000;

/** Which mesh kind each Kubernetes source feeds. */
const KIND_OF: Record<Exclude<SourceName, 'nodes'>, Kind> = {
  pods: 'Workload', services: 'Service', policies: 'AuthorizationPolicy', httproutes: 'HTTPRoute', grpcroutes: 'GRPCRoute', faultinjections: 'FaultInjection', referencegrants: 'ReferenceGrant',
};

function keyOf(kind: Kind, obj: KubernetesObject): string {
  return `${kind}/${obj.metadata?.namespace ?? ''}/${obj.metadata?.name ?? ''}`;
}

/**
 * The Kubernetes Store backend (DESIGN §4): workloads, services, policies
 * and routes are derived, read-only, from Pods, Services, AuthorizationPolicy
 * custom resources, the Gateway API's HTTPRoutes, GRPCRoutes and
 * ReferenceGrants and Ambit's FaultInjections (nodes supply locality). Every batch of API events becomes one
 * commit of a mesh-wide revision, so the registry, the watch stream and node
 * authorization work exactly as with SQLite. Admin writes of those kinds are
 * refused: kubectl is the way to change them.
 *
 * Revisions: the counter lives in memory but its high-water mark is kept in
 * the embedded store, so it never goes back across restarts. A restarted
 * controller starts one above the last revision it handed out and answers
 * changesSince only for revisions from its own run: an agent resuming from an
 * older run gets a snapshot (its deltas would describe another history),
 * one resuming from a higher revision too (the Discovery service's rule).
 */
export class KubernetesStore implements Store {
  readonly backend = 'kubernetes' as const;

  readonly #local: Store;
  readonly #logger: Logger;
  readonly #retain: number;
  readonly #sources: KubeSources;
  readonly #feed = new ChangeFeed();
  readonly #resources = new Map<string, Resource>();
  readonly #ring: ChangeSet[] = [];
  #revision = 0;
  #identity = '';
  /** Lowest revision changesSince answers from: the baseline of this run. */
  #floor = 0;
  #ready = false;
  #closed = false;
  readonly #dirty = new Set<string>();
  #flushScheduled = false;
  readonly #relisted = new Set<SourceName>();
  readonly #nodeLocality = new Map<string, string>();
  /** Last problem logged per resource key, so a broken object is reported once, not on every event. */
  readonly #problems = new Map<string, string>();

  private constructor(o: KubernetesStoreOptions) {
    this.#local = o.local;
    this.#logger = o.logger.child({ store: 'kubernetes' });
    this.#retain = o.retainChangeSets ?? DEFAULT_RETAIN;
    this.#sources = new KubeSources(o.kubeConfig, this.#logger, {
      change: (source, obj, verb) => this.#onChange(source, obj, verb),
      listed: (source, items, initial) => this.#onListed(source, items, initial),
    }, o.absentCrdRetryMs);
  }

  /** Lists everything once and derives the baseline state before resolving; the embedded store is closed if that fails. */
  static async open(o: KubernetesStoreOptions): Promise<KubernetesStore> {
    const retain = o.retainChangeSets ?? DEFAULT_RETAIN;
    if (!Number.isSafeInteger(retain) || retain < 1) {
      throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', `retainChangeSets must be a positive integer, got ${retain}`, { details: { key: 'retainChangeSets', value: retain } });
    }
    const store = new KubernetesStore(o);
    try {
      const saved = Number(await o.local.getSetting(REVISION_SETTING) ?? '0');
      store.#revision = (Number.isSafeInteger(saved) && saved > 0 ? saved : 0) + 1;
      store.#floor = store.#revision;
      await o.local.putSetting(REVISION_SETTING, String(store.#revision));
      store.#identity = await kubernetesIdentity(o.kubeConfig, o.local, store.#logger);
      await store.#sources.start(o.syncTimeoutMs ?? DEFAULT_SYNC_TIMEOUT_MS);
      store.#baseline();
      return store;
    } catch (err) {
      await store.close();
      throw err;
    }
  }

  /** A pod from the informer cache (TokenReview checks where the agent's pod runs). */
  pod(namespace: string, name: string): V1Pod | undefined {
    return this.#sources.pods.get(name, namespace);
  }

  async revision(): Promise<number> {
    this.#assertOpen();
    return this.#revision;
  }

  async identity(): Promise<string> {
    this.#assertOpen();
    return this.#identity;
  }

  async snapshot(): Promise<Snapshot> {
    this.#assertOpen();
    const resources = [...this.#resources.values()].sort((a, b) =>
      a.kind.localeCompare(b.kind) || a.metadata.namespace.localeCompare(b.metadata.namespace) || a.metadata.name.localeCompare(b.metadata.name));
    return { revision: this.#revision, resources };
  }

  async changesSince(revision: number): Promise<readonly ChangeSet[] | undefined> {
    this.#assertOpen();
    if (!Number.isSafeInteger(revision) || revision < this.#floor || revision > this.#revision) return undefined;
    if (revision === this.#revision) return [];
    const oldest = this.#ring[0]?.revision;
    if (oldest === undefined || revision < oldest - 1) return undefined;
    return this.#ring.filter((cs) => cs.revision > revision);
  }

  /** Only the empty commit is accepted: the mesh kinds are owned by the Kubernetes API. */
  async commit(changes: readonly Change[], expectedRevision?: number): Promise<ChangeSet> {
    this.#assertOpen();
    if (expectedRevision !== undefined && expectedRevision !== this.#revision) {
      throw new AmbitError('AMBIT_ERR_RESOURCE_CONFLICT', `store is at revision ${this.#revision}, expected ${expectedRevision}`, {
        details: { expectedRevision, revision: this.#revision },
      });
    }
    if (changes.length === 0) return { revision: this.#revision, changes: [] };
    const first = changes[0]!;
    const kind = first.op === 'put' ? first.resource.kind : first.key.kind;
    throw new AmbitError('AMBIT_ERR_AUTH_DENIED', `in Kubernetes mode workloads, services, policies and routes come from the Kubernetes API (Pods, Services, AuthorizationPolicy, HTTPRoute, GRPCRoute, FaultInjection and ReferenceGrant resources); change them with kubectl`, {
      details: { reason: 'kubernetes-store', kind },
    });
  }

  subscribe(listener: (cs: ChangeSet) => void): () => void {
    this.#assertOpen();
    return this.#feed.subscribe(listener);
  }

  putToken(token: TokenRecord): Promise<void> {
    return this.#local.putToken(token);
  }

  consumeToken(id: string, secretHash: string, now: number): Promise<TokenRecord> {
    return this.#local.consumeToken(id, secretHash, now);
  }

  listTokens(): Promise<readonly TokenRecord[]> {
    return this.#local.listTokens();
  }

  upsertNode(name: string, fields: NodeFields): Promise<NodeRecord> {
    return this.#local.upsertNode(name, fields);
  }

  upsertNodes(updates: ReadonlyMap<string, NodeFields>): Promise<void> {
    return this.#local.upsertNodes(updates);
  }

  getNode(name: string): Promise<NodeRecord | undefined> {
    return this.#local.getNode(name);
  }

  listNodes(): Promise<readonly NodeRecord[]> {
    return this.#local.listNodes();
  }

  getSetting(key: string): Promise<string | undefined> {
    return this.#local.getSetting(key);
  }

  putSetting(key: string, value: string): Promise<void> {
    return this.#local.putSetting(key, value);
  }

  /** Idempotent: stops the informers, then closes the embedded store. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#sources.close();
    this.#feed.clear();
    await this.#local.close();
  }

  // ------------------------------------------------------------ derivation

  #onChange(source: SourceName, obj: KubernetesObject, verb: Verb): void {
    if (source === 'nodes') {
      this.#nodeChanged(obj as V1Node, verb);
    } else {
      this.#mark(keyOf(KIND_OF[source], obj));
      // A named targetPort resolves through the pods a service selects.
      if (source === 'pods') this.#markServicesWithNamedPorts(obj.metadata?.namespace);
    }
    this.#schedule();
  }

  #onListed(source: SourceName, items: number, initial: boolean): void {
    if (initial) {
      this.#logger.info({ resource: source, items }, 'Kubernetes resources listed');
      return;
    }
    this.#logger.info({ resource: source, items }, 'Kubernetes resources re-listed; reconciling');
    this.#relisted.add(source);
    // ListWatch fired callbacks for what it saw change; re-deriving every key
    // of the kind (current and listed) makes the reconciliation independent of
    // that, and the diff still commits only real differences.
    if (source === 'nodes') {
      for (const node of this.#sources.nodes.list()) this.#nodeChanged(node, 'update');
      for (const key of this.#resources.keys()) if (key.startsWith('Workload/')) this.#mark(key);
    } else {
      this.#markKind(KIND_OF[source], source);
      if (source === 'pods') this.#markServicesWithNamedPorts(undefined);
    }
    this.#schedule();
  }

  #nodeChanged(node: V1Node, verb: Verb): void {
    const name = node.metadata?.name ?? '';
    const locality = verb === 'delete' ? '' : localityOf(node);
    if ((this.#nodeLocality.get(name) ?? '') === locality) return;
    if (locality === '') this.#nodeLocality.delete(name);
    else this.#nodeLocality.set(name, locality);
    for (const pod of this.#sources.pods.list()) if (pod.spec?.nodeName === name) this.#mark(keyOf('Workload', pod));
  }

  #markKind(kind: Kind, source: SourceName): void {
    for (const key of this.#resources.keys()) if (key.startsWith(`${kind}/`)) this.#mark(key);
    const objects = source === 'pods' ? this.#sources.pods.list() : source === 'services' ? this.#sources.services.list()
      : source === 'nodes' ? [] : this.#sources.customObjects(source).list();
    for (const obj of objects) this.#mark(keyOf(kind, obj));
  }

  #markServicesWithNamedPorts(namespace: string | undefined): void {
    for (const svc of this.#sources.services.list(namespace)) {
      if ((svc.spec?.ports ?? []).some((p) => typeof p.targetPort === 'string')) this.#mark(keyOf('Service', svc));
    }
  }

  #mark(key: string): void {
    this.#dirty.add(key);
  }

  /** Events come in bursts (a list, a rollout): they are gathered and committed together once the burst's callbacks have run. */
  #schedule(): void {
    if (this.#flushScheduled || !this.#ready || this.#closed) return;
    this.#flushScheduled = true;
    setImmediate(() => {
      this.#flushScheduled = false;
      if (!this.#closed) this.#flush();
    });
  }

  /** First state of this run: everything the caches hold, at the run's first revision, without a change set. */
  #baseline(): void {
    for (const node of this.#sources.nodes.list()) this.#nodeChanged(node, 'add');
    this.#markKind('Workload', 'pods');
    this.#markKind('Service', 'services');
    this.#markKind('AuthorizationPolicy', 'policies');
    this.#markKind('HTTPRoute', 'httproutes');
    this.#markKind('GRPCRoute', 'grpcroutes');
    this.#markKind('FaultInjection', 'faultinjections');
    this.#markKind('ReferenceGrant', 'referencegrants');
    const changes = this.#derive();
    for (const c of changes) {
      if (c.op === 'put') this.#resources.set(resourceKey(c.resource), { ...c.resource, metadata: { ...c.resource.metadata, revision: this.#revision } });
    }
    this.#ready = true;
    this.#logger.info({ revision: this.#revision, resources: this.#resources.size }, 'mesh state derived from the Kubernetes API');
  }

  #flush(): void {
    const changes = this.#derive();
    const relisted = [...this.#relisted];
    this.#relisted.clear();
    if (changes.length > 0) this.#apply(changes);
    if (relisted.length > 0) {
      this.#logger.info({ resources: relisted, changes: changes.length, revision: this.#revision }, 'reconciled with the Kubernetes API after a re-list');
    }
  }

  /** Derives every dirty key and returns what differs from the current state. */
  #derive(): Change[] {
    const desired = new Map<string, Resource | undefined>();
    for (const key of this.#dirty) desired.set(key, this.#desired(key));
    this.#dirty.clear();
    return diffResources(this.#resources, desired);
  }

  #desired(key: string): Resource | undefined {
    const { kind, namespace, name } = parseKey(key);
    if (kind === 'Workload') {
      const pod = this.#sources.pods.get(name, namespace);
      const r = pod === undefined ? undefined : workloadFromPod(pod, this.#nodeLocality.get(pod.spec?.nodeName ?? '') ?? '');
      // A pod not (yet) running is the normal state of a rollout, not a problem.
      this.#note(key, r !== undefined && 'skip' in r ? r.skip : undefined, 'debug');
      return r !== undefined && 'resource' in r ? r.resource : undefined;
    }
    if (kind === 'Service') {
      const svc = this.#sources.services.get(name, namespace);
      const r = svc === undefined ? undefined : serviceFromKubernetes(svc, this.#sources.pods.list(namespace));
      if (r === undefined) this.#note(key, undefined);
      else if ('skip' in r) this.#note(key, `service left out: ${r.skip}`, svc?.spec?.type === 'ExternalName' ? 'debug' : 'warn');
      else this.#note(key, r.warnings.length > 0 ? `service ${r.warnings.join('; ')}` : undefined, 'warn');
      return r !== undefined && 'resource' in r ? r.resource : undefined;
    }
    if (kind === 'HTTPRoute' || kind === 'GRPCRoute' || kind === 'FaultInjection' || kind === 'ReferenceGrant') {
      const source = kind === 'HTTPRoute' ? 'httproutes' : kind === 'GRPCRoute' ? 'grpcroutes' : kind === 'FaultInjection' ? 'faultinjections' : 'referencegrants';
      const cr = this.#sources.customObjects(source).get(name, namespace);
      const r = cr === undefined ? undefined : routeFromCustomResource(kind, cr);
      // Skipped whole when invalid, as `ambitctl apply` would refuse it; the message names the object and the field.
      this.#note(key, r !== undefined && 'skip' in r ? `invalid ${kind} skipped: ${r.skip}` : undefined, 'warn');
      return r !== undefined && 'resource' in r ? r.resource : undefined;
    }
    const cr = this.#sources.customObjects('policies').get(name, namespace);
    const r = cr === undefined ? undefined : policyFromCustomResource(cr);
    if (r === undefined || 'resource' in r) {
      this.#note(key, undefined);
      return r?.resource;
    }
    // Never half-applied, and never dropped for a bad edit: dropping a DENY
    // (or the only ALLOW) would open access. The last valid version stays.
    const kept = this.#resources.get(key);
    this.#note(key, `invalid AuthorizationPolicy ignored${kept ? ' (its last valid version stays in force)' : ''}: ${r.skip}`, 'error');
    return kept;
  }

  /** Logs a key's problem once (not on every event), or forgets it when there is none. */
  #note(key: string, problem: string | undefined, level: 'debug' | 'warn' | 'error' = 'warn'): void {
    if (problem === undefined) {
      this.#problems.delete(key);
      return;
    }
    if (this.#problems.get(key) === problem) return;
    this.#problems.set(key, problem);
    this.#logger[level]({ key, problem }, level === 'debug' ? 'Kubernetes object is not part of the mesh' : 'Kubernetes object is not (fully) usable');
  }

  /** One commit: a new revision for all changes, kept for changesSince, handed to subscribers. */
  #apply(changes: readonly Change[]): void {
    const revision = this.#revision + 1;
    const applied = changes.map((c): Change => {
      if (c.op === 'delete') {
        this.#resources.delete(`${c.key.kind}/${c.key.namespace}/${c.key.name}`);
        return c;
      }
      const resource = { ...c.resource, metadata: { ...c.resource.metadata, revision } } as Resource;
      this.#resources.set(resourceKey(resource), resource);
      return { op: 'put', resource };
    });
    this.#revision = revision;
    const cs: ChangeSet = { revision, changes: applied };
    this.#ring.push(cs);
    if (this.#ring.length > this.#retain) this.#ring.splice(0, this.#ring.length - this.#retain);
    this.#local.putSetting(REVISION_SETTING, String(revision)).catch((err: unknown) => {
      this.#logger.error({ err }, 'cannot record the revision high-water mark; after a restart agents may need a snapshot');
    });
    this.#logger.debug({ revision, changes: applied.map((c) => (c.op === 'put' ? `put ${resourceKey(c.resource)}` : `delete ${c.key.kind}/${c.key.namespace}/${c.key.name}`)) }, 'Kubernetes change committed');
    this.#feed.deliver(cs);
  }

  #assertOpen(): void {
    if (this.#closed) throw new AmbitError('AMBIT_ERR_STORE_IO', 'the Kubernetes store is closed', { details: { op: 'closed' } });
  }
}

/**
 * The Kubernetes store's identity: the cluster's (the kube-system namespace's
 * UID, the usual cluster id: it lives as long as the cluster) joined with the
 * embedded store's. Both parts matter. The cluster part tells a controller of
 * another cluster apart. The embedded part is there because revisions are
 * counted in the embedded store (its high-water mark): a new embedded store
 * counts from 1 again, so its revisions cannot be compared with the old ones.
 * Without read access to kube-system the embedded id alone is used (warned).
 */
async function kubernetesIdentity(kc: KubeConfig, local: Store, logger: Logger): Promise<string> {
  const localId = await local.identity();
  try {
    const ns = await kc.makeApiClient(CoreV1Api).readNamespace({ name: 'kube-system' });
    const uid = ns.metadata?.uid;
    if (uid) return `kubernetes/${uid}/${localId}`;
    logger.warn('the kube-system namespace has no UID; the store identity is the embedded store\'s alone');
  } catch (err) {
    logger.warn({ err: errorMessage(err) }, 'cannot read the kube-system namespace; the store identity is the embedded store\'s alone');
  }
  return `kubernetes/-/${localId}`;
}
