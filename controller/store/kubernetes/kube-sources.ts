import {
  CoreV1Api, CustomObjectsApi, ListWatch, Watch,
  type KubeConfig, type KubernetesListObject, type KubernetesObject, type ObjectCache, type V1Node, type V1Pod, type V1Service,
} from '@kubernetes/client-node';
import { Backoff } from '../../../shared/backoff.ts';
import { AmbitError, errorMessage } from '../../../shared/errors.ts';
import type { Logger } from '../../../shared/logger.ts';
import {
  FAULT_PLURAL, GATEWAY_GROUP, GATEWAY_VERSION, GRPCROUTE_PLURAL, HTTPROUTE_PLURAL, POLICY_GROUP, POLICY_PLURAL, POLICY_VERSION, REFERENCE_GRANT_PLURAL,
  REFERENCE_GRANT_VERSION, type PolicyObject,
} from './convert.ts';

/**
 * The Kubernetes objects the store derives the mesh from, each kept by a
 * @kubernetes/client-node ListWatch: list once, then watch from the list's
 * resourceVersion; a watch that ends is resumed from the last resourceVersion
 * seen (bookmarks included), and one answered with 410 Gone (the resume point
 * was compacted away) falls back to a fresh list, whose differences to the
 * cache arrive as ordinary add/update/delete callbacks. What ListWatch leaves
 * to its user is done here: opting in to bookmarks, and restarting with
 * backoff after any other failure (API server down, 5xx, network).
 */

export const SOURCES = ['pods', 'services', 'nodes', 'policies', 'httproutes', 'grpcroutes', 'faultinjections', 'referencegrants'] as const;
export type SourceName = (typeof SOURCES)[number];

/**
 * Sources whose CRD a cluster may not have installed (the Gateway API's
 * routes and ReferenceGrants, Ambit's FaultInjection): a 404 means there are none of them — the
 * source counts as listed, empty, is logged once, and is looked for again
 * every ABSENT_RETRY_MS (by default) so that installing the CRD later is noticed.
 */
export const OPTIONAL_SOURCES: ReadonlySet<SourceName> = new Set(['httproutes', 'grpcroutes', 'faultinjections', 'referencegrants']);
const ABSENT_RETRY_MS = 30_000;

const CRD_NAMES: Partial<Record<SourceName, string>> = {
  policies: `${POLICY_PLURAL}.${POLICY_GROUP}`,
  httproutes: `${HTTPROUTE_PLURAL}.${GATEWAY_GROUP}`,
  grpcroutes: `${GRPCROUTE_PLURAL}.${GATEWAY_GROUP}`,
  faultinjections: `${FAULT_PLURAL}.${POLICY_GROUP}`,
  referencegrants: `${REFERENCE_GRANT_PLURAL}.${GATEWAY_GROUP}`,
};

export type Verb = 'add' | 'update' | 'delete';

export interface SourceEvents {
  /** An object changed; the source's cache already holds the change. */
  readonly change: (source: SourceName, obj: KubernetesObject, verb: Verb) => void;
  /** A full list replaced a source's cache; called after the per-object callbacks of that list. */
  readonly listed: (source: SourceName, items: number, initial: boolean) => void;
}

const PATHS: Record<SourceName, string> = {
  pods: '/api/v1/pods',
  services: '/api/v1/services',
  nodes: '/api/v1/nodes',
  policies: `/apis/${POLICY_GROUP}/${POLICY_VERSION}/${POLICY_PLURAL}`,
  httproutes: `/apis/${GATEWAY_GROUP}/${GATEWAY_VERSION}/${HTTPROUTE_PLURAL}`,
  grpcroutes: `/apis/${GATEWAY_GROUP}/${GATEWAY_VERSION}/${GRPCROUTE_PLURAL}`,
  faultinjections: `/apis/${POLICY_GROUP}/${POLICY_VERSION}/${FAULT_PLURAL}`,
  referencegrants: `/apis/${GATEWAY_GROUP}/${REFERENCE_GRANT_VERSION}/${REFERENCE_GRANT_PLURAL}`,
};

/** What an operator must fix when a list is refused, by HTTP status. */
function hint(source: SourceName, status: number | undefined): string {
  if (status === 401) return '; the API server refused the credentials';
  if (status === 403) return `; the controller's service account may not list/watch ${source} (check its RBAC)`;
  if (status === 404 && source === 'policies') return `; is the AuthorizationPolicy CRD (${CRD_NAMES.policies}) installed?`;
  return '';
}

function statusOf(err: unknown): number | undefined {
  const e = err as { code?: unknown; statusCode?: unknown } | undefined;
  const s = typeof e?.code === 'number' ? e.code : e?.statusCode;
  return typeof s === 'number' ? s : undefined;
}

/** A short message for an API error: the Status message when the server sent one, not the client's dump of headers. */
export function kubeErrorMessage(err: unknown): string {
  const status = statusOf(err);
  const body = (err as { body?: unknown } | undefined)?.body;
  const message = typeof body === 'object' && body !== null && typeof (body as { message?: unknown }).message === 'string'
    ? (body as { message: string }).message
    : errorMessage(err).split('\n')[0];
  return status === undefined ? String(message) : `HTTP ${status}: ${message}`;
}

/** A Watch that asks for bookmarks and reports a watch the server expired (the 410 that makes ListWatch re-list). */
class BookmarkWatch extends Watch {
  readonly #onExpired: (path: string, resourceVersion: string) => void;

  constructor(kc: KubeConfig, onExpired: (path: string, resourceVersion: string) => void) {
    super(kc);
    this.#onExpired = onExpired;
  }

  override watch(
    path: string,
    queryParams: Record<string, string | number | boolean | undefined>,
    callback: (phase: string, apiObj: unknown, watchObj?: unknown) => void,
    done: (err: unknown) => void,
  ): Promise<AbortController> {
    const from = String(queryParams['resourceVersion'] ?? '');
    return super.watch(path, { ...queryParams, allowWatchBookmarks: true }, (phase, obj, raw) => {
      if (phase === 'ERROR' && (obj as { code?: unknown } | undefined)?.code === 410) this.#onExpired(path, from);
      callback(phase, obj, raw);
    }, done);
  }
}

interface Source {
  readonly name: SourceName;
  readonly informer: ListWatch<KubernetesObject>;
  readonly backoff: Backoff;
  listedOnce: boolean;
  /** An optional source whose CRD answered 404: it holds nothing until a list succeeds. */
  absent: boolean;
  lastError: string;
  restartTimer: NodeJS.Timeout | undefined;
}

export class KubeSources {
  readonly #logger: Logger;
  readonly #events: SourceEvents;
  readonly #sources = new Map<SourceName, Source>();
  readonly #server: string;
  #closed = false;
  #onFirstList: (() => void) | undefined;

  readonly #absentRetryMs: number;

  constructor(kc: KubeConfig, logger: Logger, events: SourceEvents, absentRetryMs = ABSENT_RETRY_MS) {
    this.#absentRetryMs = absentRetryMs;
    this.#logger = logger;
    this.#events = events;
    this.#server = kc.getCurrentCluster()?.server ?? '(no cluster)';
    const core = kc.makeApiClient(CoreV1Api);
    const custom = kc.makeApiClient(CustomObjectsApi);
    const watch = new BookmarkWatch(kc, (path, resourceVersion) => {
      logger.warn({ path, resourceVersion }, 'Kubernetes watch expired (410 Gone): resourceVersion too old, re-listing');
    });
    const lists: Record<SourceName, () => Promise<KubernetesListObject<KubernetesObject>>> = {
      pods: () => core.listPodForAllNamespaces(),
      services: () => core.listServiceForAllNamespaces(),
      nodes: () => core.listNode(),
      policies: () => custom.listClusterCustomObject({ group: POLICY_GROUP, version: POLICY_VERSION, plural: POLICY_PLURAL }) as Promise<KubernetesListObject<KubernetesObject>>,
      httproutes: () => custom.listClusterCustomObject({ group: GATEWAY_GROUP, version: GATEWAY_VERSION, plural: HTTPROUTE_PLURAL }) as Promise<KubernetesListObject<KubernetesObject>>,
      grpcroutes: () => custom.listClusterCustomObject({ group: GATEWAY_GROUP, version: GATEWAY_VERSION, plural: GRPCROUTE_PLURAL }) as Promise<KubernetesListObject<KubernetesObject>>,
      faultinjections: () => custom.listClusterCustomObject({ group: POLICY_GROUP, version: POLICY_VERSION, plural: FAULT_PLURAL }) as Promise<KubernetesListObject<KubernetesObject>>,
      referencegrants: () => custom.listClusterCustomObject({ group: GATEWAY_GROUP, version: REFERENCE_GRANT_VERSION, plural: REFERENCE_GRANT_PLURAL }) as Promise<KubernetesListObject<KubernetesObject>>,
    };
    for (const name of SOURCES) {
      let source: Source | undefined;
      const listFn = async (): Promise<KubernetesListObject<KubernetesObject>> => {
        const list = await lists[name]();
        // ListWatch applies the list (firing add/update/delete) in the
        // continuation of this promise; setImmediate runs after all of that.
        setImmediate(() => {
          if (this.#closed || source === undefined) return;
          const initial = !source.listedOnce;
          source.listedOnce = true;
          if (source.absent) {
            source.absent = false;
            this.#logger.info({ resource: name, crd: CRD_NAMES[name] }, 'Kubernetes CRD now served; following its objects');
          }
          source.backoff.reset();
          source.lastError = '';
          this.#events.listed(name, list.items.length, initial);
          this.#onFirstList?.();
        });
        return list;
      };
      const informer = new ListWatch<KubernetesObject>(PATHS[name], watch, listFn, false);
      source = { name, informer, backoff: new Backoff({ initialMs: 500, maxMs: 30_000 }), listedOnce: false, absent: false, lastError: '', restartTimer: undefined };
      const s = source;
      informer.on('add', (obj) => this.#change(s, obj, 'add'));
      informer.on('update', (obj) => this.#change(s, obj, 'update'));
      informer.on('delete', (obj) => this.#change(s, obj, 'delete'));
      informer.on('error', (err: unknown) => this.#failed(s, err));
      this.#sources.set(name, s);
    }
  }

  get pods(): ObjectCache<V1Pod> {
    return this.#informer('pods') as ObjectCache<V1Pod>;
  }

  get services(): ObjectCache<V1Service> {
    return this.#informer('services') as ObjectCache<V1Service>;
  }

  get nodes(): ObjectCache<V1Node> {
    return this.#informer('nodes') as ObjectCache<V1Node>;
  }

  get policies(): ObjectCache<PolicyObject> {
    return this.#informer('policies') as ObjectCache<PolicyObject>;
  }

  /** A custom-resource source's objects; none while its CRD is absent (the informer's cache may still hold what it saw before). */
  customObjects(name: 'policies' | 'httproutes' | 'grpcroutes' | 'faultinjections' | 'referencegrants'): ObjectCache<PolicyObject> {
    const s = this.#sources.get(name)!;
    if (s.absent) return { get: () => undefined, list: () => [] };
    return s.informer as ObjectCache<PolicyObject>;
  }

  /**
   * Starts every informer and resolves once each has listed once. Rejects
   * with AMBIT_ERR_STORE_IO, naming what failed, when that takes longer than
   * timeoutMs (the informers are stopped then).
   */
  start(timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const missing = [...this.#sources.values()].filter((s) => !s.listedOnce);
        this.#onFirstList = undefined;
        this.close();
        reject(new AmbitError('AMBIT_ERR_STORE_IO', `cannot list ${missing.map((s) => s.name).join(', ')} from the Kubernetes API at ${this.#server} within ${Math.round(timeoutMs / 1000)} s: ${missing.map((s) => `${s.name}: ${s.lastError || 'no answer'}`).join('; ')}`, {
          details: { server: this.#server, op: 'list', resources: missing.map((s) => s.name) },
        }));
      }, timeoutMs);
      this.#onFirstList = () => {
        if (![...this.#sources.values()].every((s) => s.listedOnce)) return;
        this.#onFirstList = undefined;
        clearTimeout(timer);
        resolve();
      };
      for (const s of this.#sources.values()) this.#run(s);
    });
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const s of this.#sources.values()) {
      clearTimeout(s.restartTimer);
      void s.informer.stop();
    }
  }

  #informer(name: SourceName): ListWatch<KubernetesObject> {
    return this.#sources.get(name)!.informer;
  }

  #change(s: Source, obj: KubernetesObject, verb: Verb): void {
    if (this.#closed) return;
    // Events flowing again end a failure streak: the next failure is worth a warning.
    s.backoff.reset();
    s.lastError = '';
    this.#events.change(s.name, obj, verb);
  }

  /** ListWatch stops after a failure other than 410; it is restarted here, resuming from its last resourceVersion. */
  #failed(s: Source, err: unknown): void {
    if (this.#closed) return;
    const status = statusOf(err);
    if (status === 404 && OPTIONAL_SOURCES.has(s.name)) {
      this.#absent(s);
      return;
    }
    const message = `${kubeErrorMessage(err)}${hint(s.name, status)}`;
    const delayMs = s.backoff.next();
    // One warning per streak of identical failures; the retries go to debug.
    if (message !== s.lastError) this.#logger.warn({ resource: s.name, server: this.#server, err: message, retryInMs: delayMs }, 'Kubernetes list/watch failed; retrying');
    else this.#logger.debug({ resource: s.name, err: message, retryInMs: delayMs }, 'Kubernetes list/watch failed again');
    s.lastError = message;
    clearTimeout(s.restartTimer);
    s.restartTimer = setTimeout(() => {
      s.restartTimer = undefined;
      if (!this.#closed) this.#run(s);
    }, delayMs);
  }

  /** An optional source's CRD is not served: it holds nothing (reconciled as a list of none), and is looked for again later. */
  #absent(s: Source): void {
    const wasAbsent = s.absent;
    s.absent = true;
    if (!wasAbsent) {
      this.#logger.warn({ resource: s.name, crd: CRD_NAMES[s.name], server: this.#server },
        `Kubernetes CRD ${CRD_NAMES[s.name]} is not installed: no ${s.name} until it is (looked for again every ${this.#absentRetryMs / 1000} s)`);
      const initial = !s.listedOnce;
      s.listedOnce = true;
      s.lastError = '';
      this.#events.listed(s.name, 0, initial);
      this.#onFirstList?.();
    }
    clearTimeout(s.restartTimer);
    s.restartTimer = setTimeout(() => {
      s.restartTimer = undefined;
      if (!this.#closed) this.#run(s);
    }, this.#absentRetryMs);
    s.restartTimer.unref();
  }

  /** (Re)starts an informer; what it throws itself (not through its error callback, e.g. unreadable credentials) is a failure too. */
  #run(s: Source): void {
    s.informer.start().catch((err: unknown) => this.#failed(s, err));
  }
}
