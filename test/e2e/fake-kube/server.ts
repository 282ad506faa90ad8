/**
 * A FAKE Kubernetes API server for tests: no real API server can run here, so
 * this one speaks the real wire protocol of the few paths Ambit's controller
 * uses, closely enough that @kubernetes/client-node cannot tell:
 *
 * - GET /api/v1/{pods,services,nodes},
 *   /apis/ambit.dev/v1alpha1/{authorizationpolicies,faultinjections} and
 *   /apis/gateway.networking.k8s.io/v1/{httproutes,grpcroutes},
 *   /apis/gateway.networking.k8s.io/v1beta1/referencegrants: a List with
 *   metadata.resourceVersion; with ?watch=true a chunked stream of
 *   newline-delimited {"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":…}
 *   events after ?resourceVersion, BOOKMARK events (only with
 *   allowWatchBookmarks=true) carrying the current resourceVersion, and —
 *   when the resume point is older than the retained history — a single
 *   ERROR event holding a 410 "Expired" Status, then the end of the stream,
 *   exactly as kube-apiserver does; a custom resource whose CRD is not
 *   installed (uninstall()) answers 404 NotFound, as the API server does;
 * - GET /api/v1/namespaces/{ns}/pods/{name};
 * - GET /api/v1/namespaces/kube-system (its UID is the cluster's id, clusterUid);
 * - POST /apis/authentication.k8s.io/v1/tokenreviews, validating tokens this
 *   server issued (service account, bound pod, audiences), answering like
 *   the real TokenReview API (authenticated false plus an error otherwise);
 * - bearer-token authentication of every request (401 Status otherwise).
 *
 * Plain HTTP on loopback; writeKubeconfig() points a kubeconfig at it.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { randomBytes, randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';

export const RESOURCES = {
  pods: { path: '/api/v1/pods', kind: 'Pod', apiVersion: 'v1', namespaced: true },
  services: { path: '/api/v1/services', kind: 'Service', apiVersion: 'v1', namespaced: true },
  nodes: { path: '/api/v1/nodes', kind: 'Node', apiVersion: 'v1', namespaced: false },
  authorizationpolicies: { path: '/apis/ambit.dev/v1alpha1/authorizationpolicies', kind: 'AuthorizationPolicy', apiVersion: 'ambit.dev/v1alpha1', namespaced: true },
  httproutes: { path: '/apis/gateway.networking.k8s.io/v1/httproutes', kind: 'HTTPRoute', apiVersion: 'gateway.networking.k8s.io/v1', namespaced: true },
  grpcroutes: { path: '/apis/gateway.networking.k8s.io/v1/grpcroutes', kind: 'GRPCRoute', apiVersion: 'gateway.networking.k8s.io/v1', namespaced: true },
  faultinjections: { path: '/apis/ambit.dev/v1alpha1/faultinjections', kind: 'FaultInjection', apiVersion: 'ambit.dev/v1alpha1', namespaced: true },
  referencegrants: { path: '/apis/gateway.networking.k8s.io/v1beta1/referencegrants', kind: 'ReferenceGrant', apiVersion: 'gateway.networking.k8s.io/v1beta1', namespaced: true },
} as const;
export type ResourceName = keyof typeof RESOURCES;

function perResource<T>(make: () => T): Record<ResourceName, T> {
  return Object.fromEntries(Object.keys(RESOURCES).map((r) => [r, make()])) as Record<ResourceName, T>;
}

/** A Kubernetes object as JSON; the server fills in metadata.resourceVersion, uid and creationTimestamp. */
export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: { name: string; namespace?: string; uid?: string; resourceVersion?: string; labels?: Record<string, string>; [k: string]: unknown };
  spec?: unknown;
  status?: unknown;
  [k: string]: unknown;
}

type EventType = 'ADDED' | 'MODIFIED' | 'DELETED';
interface WatchEvent {
  readonly rv: number;
  readonly resource: ResourceName;
  readonly type: EventType;
  readonly object: KubeObject;
}

interface Watcher {
  readonly resource: ResourceName;
  readonly res: ServerResponse;
  readonly bookmarks: boolean;
}

interface IssuedToken {
  readonly namespace: string;
  readonly serviceAccount: string;
  readonly pod: string;
  readonly podUid: string;
  readonly audiences: readonly string[];
}

export interface FakeKubeOptions {
  readonly host?: string;
  /** 0: any free port. Reuse an old server's port to simulate its restart. */
  readonly port?: number;
  /** The first resourceVersion of this server's history; any older resume point is "too old" (410). */
  readonly firstResourceVersion?: number;
  /** Events retained for watch resumption (etcd's compaction window). */
  readonly historyLimit?: number;
  readonly bookmarkIntervalMs?: number;
  /** The bearer token clients must present (default: random). */
  readonly token?: string;
  /** Custom resources whose CRD is not installed at the start (their paths answer 404 until install()). */
  readonly uninstalled?: readonly ResourceName[];
}

export interface RequestRecord {
  readonly method: string;
  readonly path: string;
  readonly query: Record<string, string>;
}

function status(code: number, reason: string, message: string): Record<string, unknown> {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code };
}

function objKey(o: { metadata: { namespace?: string; name: string } }): string {
  return `${o.metadata.namespace ?? ''}/${o.metadata.name}`;
}

export class FakeKube {
  readonly token: string;
  /** The kube-system namespace's UID: what the controller takes as the cluster's id. */
  readonly clusterUid = randomUUID();
  readonly requests: RequestRecord[] = [];
  /** BOOKMARK events sent, by resource. */
  readonly bookmarksSent: Record<ResourceName, number> = perResource(() => 0);
  /** 410 Expired answers sent, by resource. */
  readonly expiredSent: Record<ResourceName, number> = perResource(() => 0);
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  readonly #objects: Record<ResourceName, Map<string, KubeObject>> = perResource(() => new Map<string, KubeObject>());
  readonly #uninstalled = new Set<ResourceName>();
  readonly #history: WatchEvent[] = [];
  readonly #watchers = new Set<Watcher>();
  readonly #tokens = new Map<string, IssuedToken>();
  readonly #historyLimit: number;
  readonly #bookmarkTimer: NodeJS.Timeout;
  #rv: number;
  /** Resuming from a resourceVersion below this answers 410 Expired (the events after it are gone). */
  #compactedThrough: number;
  #port = 0;
  #host: string;

  private constructor(o: FakeKubeOptions) {
    this.token = o.token ?? randomBytes(16).toString('hex');
    this.#host = o.host ?? '127.0.0.1';
    this.#historyLimit = o.historyLimit ?? 10_000;
    this.#rv = (o.firstResourceVersion ?? 1) - 1;
    this.#compactedThrough = this.#rv;
    for (const r of o.uninstalled ?? []) this.#uninstalled.add(r);
    this.#server = createServer((req, res) => this.#handle(req, res));
    this.#server.on('connection', (s) => {
      this.#sockets.add(s);
      s.on('close', () => this.#sockets.delete(s));
    });
    this.#bookmarkTimer = setInterval(() => this.#bookmarks(), o.bookmarkIntervalMs ?? 1_000);
    this.#bookmarkTimer.unref();
  }

  static async start(o: FakeKubeOptions = {}): Promise<FakeKube> {
    const fake = new FakeKube(o);
    await new Promise<void>((resolve, reject) => {
      fake.#server.once('error', reject);
      fake.#server.listen(o.port ?? 0, fake.#host, () => resolve());
    });
    fake.#port = (fake.#server.address() as { port: number }).port;
    return fake;
  }

  get port(): number {
    return this.#port;
  }

  get url(): string {
    return `http://${this.#host}:${this.#port}`;
  }

  get resourceVersion(): number {
    return this.#rv;
  }

  /** A kubeconfig (bearer token; plain HTTP, which @kubernetes/client-node allows only with insecure-skip-tls-verify) for this server. */
  writeKubeconfig(path: string): string {
    writeFileSync(path, [
      'apiVersion: v1', 'kind: Config', 'current-context: fake',
      'clusters:', `- name: fake`, `  cluster: {server: "${this.url}", insecure-skip-tls-verify: true}`,
      'users:', `- name: ambit-controller`, `  user: {token: "${this.token}"}`,
      'contexts:', '- name: fake', '  context: {cluster: fake, user: ambit-controller}', '',
    ].join('\n'));
    return path;
  }

  /** Creates or replaces an object (ADDED or MODIFIED event); returns it as stored. */
  put(resource: ResourceName, obj: KubeObject): KubeObject {
    const meta = RESOURCES[resource];
    const namespace = meta.namespaced ? obj.metadata.namespace ?? 'default' : undefined;
    const key = objKey({ metadata: { name: obj.metadata.name, ...(namespace ? { namespace } : {}) } });
    const existing = this.#objects[resource].get(key);
    const stored: KubeObject = structuredClone({
      ...obj,
      apiVersion: meta.apiVersion,
      kind: meta.kind,
      metadata: {
        ...obj.metadata,
        ...(namespace ? { namespace } : {}),
        uid: existing?.metadata.uid ?? obj.metadata.uid ?? randomUUID(),
        creationTimestamp: (existing?.metadata['creationTimestamp'] as string | undefined) ?? new Date().toISOString(),
        resourceVersion: String(++this.#rv),
      },
    });
    this.#objects[resource].set(key, stored);
    this.#emit({ rv: this.#rv, resource, type: existing ? 'MODIFIED' : 'ADDED', object: stored });
    return stored;
  }

  /** Deletes an object (DELETED event carrying its last state at a new resourceVersion). */
  remove(resource: ResourceName, namespace: string | undefined, name: string): void {
    const key = objKey({ metadata: { name, ...(RESOURCES[resource].namespaced ? { namespace: namespace ?? 'default' } : {}) } });
    const existing = this.#objects[resource].get(key);
    if (!existing) throw new Error(`fake-kube: ${resource} ${key} does not exist`);
    this.#objects[resource].delete(key);
    const object = structuredClone({ ...existing, metadata: { ...existing.metadata, resourceVersion: String(++this.#rv) } });
    this.#emit({ rv: this.#rv, resource, type: 'DELETED', object });
  }

  get(resource: ResourceName, namespace: string | undefined, name: string): KubeObject | undefined {
    return this.#objects[resource].get(objKey({ metadata: { name, ...(RESOURCES[resource].namespaced ? { namespace: namespace ?? 'default' } : {}) } }));
  }

  /**
   * Expires every resume point handed out so far (the current resourceVersion
   * included), as a re-initialised watch cache does: the next watch from any
   * of them is answered 410 Expired, and the client must list again.
   */
  compact(): void {
    this.#history.length = 0;
    this.#compactedThrough = this.#rv + 1;
  }

  /**
   * Removes a custom resource's CRD: its objects are gone (without watch
   * events: the API server ends the watches) and its paths answer 404.
   */
  uninstall(resource: ResourceName): void {
    this.#uninstalled.add(resource);
    this.#objects[resource].clear();
    for (const w of [...this.#watchers]) {
      if (w.resource !== resource) continue;
      w.res.end();
      this.#watchers.delete(w);
    }
  }

  /** Installs a CRD uninstall() removed (or the options left out): its paths answer again, with no objects. */
  install(resource: ResourceName): void {
    this.#uninstalled.delete(resource);
  }

  /** Open watch streams, by resource. */
  watching(resource: ResourceName): number {
    return [...this.#watchers].filter((w) => w.resource === resource).length;
  }

  /** Ends every open watch cleanly (as the API server does at its watch timeout); clients resume from their last resourceVersion. */
  endWatches(): void {
    for (const w of this.#watchers) w.res.end();
    this.#watchers.clear();
  }

  /** A projected service-account token bound to a pod, as the kubelet would mount it. */
  issueToken(o: { namespace: string; serviceAccount: string; pod: string; audiences?: readonly string[] }): string {
    const pod = this.get('pods', o.namespace, o.pod);
    if (!pod) throw new Error(`fake-kube: pod ${o.namespace}/${o.pod} does not exist`);
    const token = `fake.${randomBytes(24).toString('base64url')}`;
    this.#tokens.set(token, { namespace: o.namespace, serviceAccount: o.serviceAccount, pod: o.pod, podUid: pod.metadata.uid!, audiences: o.audiences ?? ['ambit'] });
    return token;
  }

  /** Stops abruptly, like a crashed API server: open watches are cut. */
  async stop(): Promise<void> {
    clearInterval(this.#bookmarkTimer);
    for (const w of this.#watchers) w.res.destroy();
    this.#watchers.clear();
    for (const s of this.#sockets) s.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  // ---------------------------------------------------------------- HTTP

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://fake');
    const query = Object.fromEntries(url.searchParams);
    this.requests.push({ method: req.method ?? 'GET', path: url.pathname, query });
    const send = (code: number, body: unknown): void => {
      res.writeHead(code, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    };
    if (req.headers.authorization !== `Bearer ${this.token}`) return send(401, status(401, 'Unauthorized', 'Unauthorized'));
    const resource = (Object.keys(RESOURCES) as ResourceName[]).find((r) => RESOURCES[r].path === url.pathname);
    if (req.method === 'GET' && resource && this.#uninstalled.has(resource)) {
      return send(404, status(404, 'NotFound', 'the server could not find the requested resource'));
    }
    if (req.method === 'GET' && resource) {
      if (query['watch'] === 'true' || query['watch'] === '1') return this.#watch(resource, query, res);
      return send(200, this.#list(resource));
    }
    if (req.method === 'GET' && url.pathname === '/api/v1/namespaces/kube-system') {
      return send(200, { apiVersion: 'v1', kind: 'Namespace', metadata: { name: 'kube-system', uid: this.clusterUid } });
    }
    const pod = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)$/.exec(url.pathname);
    if (req.method === 'GET' && pod) {
      const obj = this.get('pods', pod[1], pod[2]!);
      return obj ? send(200, obj) : send(404, status(404, 'NotFound', `pods "${pod[2]}" not found`));
    }
    if (req.method === 'POST' && url.pathname === '/apis/authentication.k8s.io/v1/tokenreviews') {
      let body = '';
      req.setEncoding('utf8').on('data', (d: string) => (body += d));
      req.on('end', () => {
        try {
          send(201, this.#tokenReview(JSON.parse(body) as { spec?: { token?: string; audiences?: string[] } }));
        } catch (err) {
          send(400, status(400, 'BadRequest', String(err)));
        }
      });
      return;
    }
    send(404, status(404, 'NotFound', 'the server could not find the requested resource'));
  }

  #list(resource: ResourceName): Record<string, unknown> {
    const meta = RESOURCES[resource];
    const items = [...this.#objects[resource].entries()].sort(([a], [b]) => a.localeCompare(b)).map(([, o]) => o);
    return { kind: `${meta.kind}List`, apiVersion: meta.apiVersion, metadata: { resourceVersion: String(this.#rv) }, items };
  }

  #watch(resource: ResourceName, query: Record<string, string>, res: ServerResponse): void {
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
    const from = query['resourceVersion'] ?? '';
    const write = (type: string, object: unknown): void => {
      res.write(`${JSON.stringify({ type, object })}\n`);
    };
    if (from === '' || from === '0') {
      // "Any version": the current state as synthetic ADDED events, then live.
      for (const o of this.#objects[resource].values()) write('ADDED', o);
    } else {
      const n = Number(from);
      if (!Number.isSafeInteger(n) || n < this.#compactedThrough) {
        this.expiredSent[resource]++;
        write('ERROR', status(410, 'Expired', `too old resource version: ${from} (${this.#compactedThrough})`));
        res.end();
        return;
      }
      for (const e of this.#history) if (e.resource === resource && e.rv > n) write(e.type, e.object);
    }
    const watcher: Watcher = { resource, res, bookmarks: query['allowWatchBookmarks'] === 'true' };
    this.#watchers.add(watcher);
    res.on('close', () => this.#watchers.delete(watcher));
    const timeout = Number(query['timeoutSeconds'] ?? '0');
    if (timeout > 0) setTimeout(() => res.end(), timeout * 1000).unref();
  }

  #emit(e: WatchEvent): void {
    this.#history.push(e);
    if (this.#history.length > this.#historyLimit) {
      const dropped = this.#history.splice(0, this.#history.length - this.#historyLimit);
      this.#compactedThrough = dropped[dropped.length - 1]!.rv;
    }
    for (const w of this.#watchers) {
      if (w.resource === e.resource) w.res.write(`${JSON.stringify({ type: e.type, object: e.object })}\n`);
    }
  }

  #bookmarks(): void {
    for (const w of this.#watchers) {
      if (!w.bookmarks) continue;
      const meta = RESOURCES[w.resource];
      this.bookmarksSent[w.resource]++;
      w.res.write(`${JSON.stringify({ type: 'BOOKMARK', object: { kind: meta.kind, apiVersion: meta.apiVersion, metadata: { resourceVersion: String(this.#rv) } } })}\n`);
    }
  }

  #tokenReview(review: { spec?: { token?: string; audiences?: string[] } }): Record<string, unknown> {
    const wanted = review.spec?.audiences?.length ? review.spec.audiences : ['https://kubernetes.default.svc'];
    const answer = (s: Record<string, unknown>): Record<string, unknown> => ({
      kind: 'TokenReview', apiVersion: 'authentication.k8s.io/v1', metadata: { creationTimestamp: null }, spec: review.spec ?? {}, status: s,
    });
    const t = this.#tokens.get(review.spec?.token ?? '');
    if (!t) return answer({ user: {}, error: '[invalid bearer token, square/go-jose: error in cryptographic primitive]' });
    const audiences = t.audiences.filter((a) => wanted.includes(a));
    if (audiences.length === 0) {
      return answer({ user: {}, error: `[invalid bearer token, token audiences ${JSON.stringify(t.audiences)} is invalid for the target audiences ${JSON.stringify(wanted)}]` });
    }
    // A bound token dies with its pod (the API server checks the pod's uid).
    const pod = this.get('pods', t.namespace, t.pod);
    if (!pod || pod.metadata.uid !== t.podUid) return answer({ user: {}, error: `[invalid bearer token, pod "${t.pod}" not found]` });
    return answer({
      authenticated: true,
      user: {
        username: `system:serviceaccount:${t.namespace}:${t.serviceAccount}`,
        uid: randomUUID(),
        groups: ['system:serviceaccounts', `system:serviceaccounts:${t.namespace}`, 'system:authenticated'],
        extra: { 'authentication.kubernetes.io/pod-name': [t.pod], 'authentication.kubernetes.io/pod-uid': [t.podUid] },
      },
      audiences,
    });
  }
}

// ---------------------------------------------------------------- object builders for tests

/** A running, ready pod (or not: pass phase/ready/podIP). */
export function pod(o: {
  name: string; namespace?: string; node: string; ip?: string; serviceAccount?: string; labels?: Record<string, string>;
  ports?: { containerPort: number; name?: string; protocol?: string }[]; phase?: string; ready?: boolean; hostNetwork?: boolean;
}): KubeObject {
  return {
    metadata: { name: o.name, namespace: o.namespace ?? 'default', labels: o.labels ?? {} },
    spec: {
      nodeName: o.node,
      serviceAccountName: o.serviceAccount ?? 'default',
      ...(o.hostNetwork ? { hostNetwork: true } : {}),
      containers: [{ name: 'main', image: 'example', ports: o.ports ?? [] }],
    },
    status: {
      phase: o.phase ?? 'Running',
      ...(o.ip ? { podIP: o.ip, podIPs: [{ ip: o.ip }] } : {}),
      conditions: [{ type: 'Ready', status: o.ready === false ? 'False' : 'True' }],
    },
  };
}

export function service(o: { name: string; namespace?: string; selector: Record<string, string>; ports: { port: number; targetPort?: number | string; name?: string; protocol?: string; appProtocol?: string }[]; clusterIP?: string }): KubeObject {
  const ip = o.clusterIP ?? 'None';
  return {
    metadata: { name: o.name, namespace: o.namespace ?? 'default' },
    spec: { type: 'ClusterIP', clusterIP: ip, clusterIPs: [ip], selector: o.selector, ports: o.ports.map((p) => ({ protocol: 'TCP', ...p })) },
  };
}

/** A custom resource (HTTPRoute, GRPCRoute, ReferenceGrant, FaultInjection, AuthorizationPolicy) with `spec`. */
export function customResource(name: string, namespace: string, spec: unknown): KubeObject {
  return { metadata: { name, namespace }, spec };
}

export function node(name: string, labels: Record<string, string> = {}): KubeObject {
  return { metadata: { name, labels: { 'kubernetes.io/hostname': name, ...labels } }, spec: {}, status: {} };
}
