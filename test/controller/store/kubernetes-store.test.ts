/**
 * KubernetesStore against a FAKE API server (test/e2e/fake-kube/server.ts)
 * that speaks the real list/watch protocol, since no API server can run here.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { KubernetesStore } from '../../../controller/store/kubernetes-store.ts';
import { ChangeFeed } from '../../../controller/store/change-feed.ts';
import { loadKubeConfig } from '../../../controller/store/kubernetes/kube-config.ts';
import { kubeErrorMessage } from '../../../controller/store/kubernetes/kube-sources.ts';
import { SqliteStore } from '../../../controller/store/sqlite-store.ts';
import type { ChangeSet } from '../../../controller/store/store.ts';
import { isAmbitError } from '../../../shared/errors.ts';
import { createLogger, type Logger } from '../../../shared/logger.ts';
import type { Resource, Workload } from '../../../shared/resources/types.ts';
import { FakeKube, node, pod, RESOURCES, service, type KubeObject, type ResourceName } from '../../e2e/fake-kube/server.ts';

const RESOURCE_NAMES = Object.keys(RESOURCES) as ResourceName[];

interface Test {
  testdir(): string;
  teardown(fn: () => unknown): void;
}

interface Env {
  fake: FakeKube;
  store: KubernetesStore;
  logs: { msg: string; [k: string]: unknown }[];
  changes: ChangeSet[];
  dir: string;
  open(): Promise<KubernetesStore>;
}

function captureLogger(logs: Env['logs']): Logger {
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) logs.push(JSON.parse(line) as Env['logs'][number]);
      cb();
    },
  });
  return createLogger({ name: 'test', level: 'debug', destination });
}

async function waitFor<T>(fn: () => T | undefined | false, what: string, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const policyCr = (name: string, action: string): KubeObject => ({
  metadata: { name, namespace: 'shop' },
  spec: { selector: { matchLabels: { app: 'web' } }, action, rules: [{ from: [{ source: { namespaces: ['shop'] } }] }] },
});

async function setup(t: Test, seed: (fake: FakeKube) => void = () => undefined): Promise<Env> {
  const fake = await FakeKube.start({ bookmarkIntervalMs: 100 });
  seed(fake);
  const dir = t.testdir();
  const kubeConfig = loadKubeConfig(fake.writeKubeconfig(path.join(dir, 'kubeconfig')));
  const logs: Env['logs'] = [];
  const logger = captureLogger(logs);
  const changes: ChangeSet[] = [];
  const env: Env = {
    fake, logs, changes, dir, store: undefined as unknown as KubernetesStore,
    open: async () => {
      const local = SqliteStore.open({ path: path.join(dir, 'ambit.db') });
      const store = await KubernetesStore.open({ kubeConfig, local, logger, syncTimeoutMs: 10_000 });
      store.subscribe((cs) => changes.push(cs));
      return store;
    },
  };
  env.store = await env.open();
  t.teardown(async () => {
    await env.store.close();
    await env.fake.stop();
  });
  return env;
}

function seedShop(fake: FakeKube): void {
  fake.put('nodes', node('node-a', { 'topology.kubernetes.io/region': 'eu', 'topology.kubernetes.io/zone': 'eu-1' }));
  fake.put('nodes', node('node-b'));
  fake.put('pods', pod({ name: 'web-1', namespace: 'shop', node: 'node-a', ip: '10.1.0.1', serviceAccount: 'web', labels: { app: 'web' }, ports: [{ containerPort: 8080, name: 'http' }] }));
  fake.put('pods', pod({ name: 'web-2', namespace: 'shop', node: 'node-b', ip: '10.1.0.2', serviceAccount: 'web', labels: { app: 'web' }, ports: [{ containerPort: 8080, name: 'http' }] }));
  fake.put('pods', pod({ name: 'pending', namespace: 'shop', node: 'node-b', phase: 'Pending', labels: { app: 'web' } }));
  fake.put('pods', pod({ name: 'agent', namespace: 'ambit-system', node: 'node-a', ip: '192.168.0.1', hostNetwork: true }));
  fake.put('services', service({ name: 'web', namespace: 'shop', selector: { app: 'web' }, ports: [{ port: 80, targetPort: 'http' }], clusterIP: '10.96.0.10' }));
  fake.put('authorizationpolicies', policyCr('allow-shop', 'ALLOW'));
}

/** How many re-lists have been reconciled so far (one log line may cover several resources). */
const reconciled = (logs: Env['logs']): number =>
  logs.filter((l) => l.msg.startsWith('reconciled with the Kubernetes API')).reduce((n, l) => n + (l['resources'] as unknown[]).length, 0);

const names = (rs: readonly Resource[]): string[] => rs.map((r) => `${r.kind}/${r.metadata.namespace}/${r.metadata.name}`);

t.test('derives the mesh from the API, then follows it one commit per change', async (t) => {
  const env = await setup(t, seedShop);
  const snap = await env.store.snapshot();
  t.same(names(snap.resources), ['AuthorizationPolicy/shop/allow-shop', 'Service/shop/web', 'Workload/shop/web-1', 'Workload/shop/web-2'],
    'running pods (not pending, not hostNetwork), the service, the policy');
  t.equal(snap.revision, 1, 'first run: revision 1');
  t.ok(snap.resources.every((r) => r.metadata.revision === 1));
  const web1 = snap.resources.find((r) => r.metadata.name === 'web-1') as Workload;
  t.equal(web1.spec.locality, 'eu/eu-1', 'locality from the node labels');
  t.same(snap.resources.find((r) => r.kind === 'Service')?.spec, { addresses: ['10.96.0.10'], ports: [{ name: 'port-80', port: 80, targetPort: 8080, appProtocol: 'tcp' }], selector: { app: 'web' } });
  t.equal(env.store.pod('ambit-system', 'agent')?.spec?.nodeName, 'node-a', 'pods (agents too) are looked up from the cache');
  t.same(await env.store.changesSince(1), [], 'nothing since the baseline');

  env.fake.put('pods', pod({ name: 'pending', namespace: 'shop', node: 'node-b', ip: '10.1.0.3', serviceAccount: 'web', labels: { app: 'web' } }));
  const cs = await waitFor(() => env.changes[0], 'the pod to start running');
  t.equal(cs.revision, 2);
  t.same(cs.changes.map((c) => (c.op === 'put' ? `put ${c.resource.metadata.name}@${c.resource.metadata.revision}` : 'delete')), ['put pending@2'], 'a pod that starts running becomes a workload');

  // A status change that alters nothing Ambit carries commits nothing.
  const before = env.changes.length;
  const p = env.fake.get('pods', 'shop', 'web-1')!;
  env.fake.put('pods', { ...p, status: { ...(p.status as object), startTime: new Date().toISOString() } });
  env.fake.remove('pods', 'shop', 'web-2');
  const del = await waitFor(() => env.changes[before], 'the delete');
  t.same(del.changes, [{ op: 'delete', key: { kind: 'Workload', namespace: 'shop', name: 'web-2' } }], 'only the deletion, no no-op put');
  t.same((await env.store.changesSince(1))?.map((c) => c.revision), [2, 3], 'changesSince from the ring');
  t.equal(await env.store.changesSince(0), undefined, 'before this run\'s baseline: snapshot needed');
  t.equal(await env.store.changesSince(99), undefined, 'from the future: snapshot needed');

  // Named targetPort follows the pods.
  env.fake.put('pods', pod({ name: 'web-1', namespace: 'shop', node: 'node-a', ip: '10.1.0.1', serviceAccount: 'web', labels: { app: 'web' }, ports: [{ containerPort: 8081, name: 'http' }] }));
  env.fake.put('pods', pod({ name: 'pending', namespace: 'shop', node: 'node-b', ip: '10.1.0.3', serviceAccount: 'web', labels: { app: 'web' }, ports: [{ containerPort: 8081, name: 'http' }] }));
  const svc = await waitFor(() => env.changes.flatMap((c) => c.changes).find((c) => c.op === 'put' && c.resource.kind === 'Service'), 'the service to follow its pods\' named port');
  t.same(svc.op === 'put' && svc.resource.kind === 'Service' ? svc.resource.spec.ports : [], [{ name: 'port-80', port: 80, targetPort: 8081, appProtocol: 'tcp' }]);

  // A port's protocol follows the Service: appProtocol, or Istio's port-name prefix.
  env.fake.put('services', service({ name: 'api', namespace: 'shop', selector: { app: 'web' }, clusterIP: '10.96.0.11', ports: [
    { port: 80, targetPort: 8081, name: 'http-web' }, { port: 81, targetPort: 8081, name: 'rpc', appProtocol: 'kubernetes.io/h2c' },
    { port: 82, targetPort: 8081, name: 'grpc-api' }, { port: 83, targetPort: 8081, name: 'x', appProtocol: 'grpc' },
  ] }));
  const api = await waitFor(() => env.changes.flatMap((c) => c.changes).find((c) => c.op === 'put' && c.resource.metadata.name === 'api'), 'the HTTP service');
  t.same(api.op === 'put' && api.resource.kind === 'Service' ? api.resource.spec.ports.map((p) => p.appProtocol) : [], ['http', 'http2', 'grpc', 'grpc'],
    'appProtocol and port-name prefixes through list/watch');
  const mark = env.changes.length;
  env.fake.put('services', service({ name: 'api', namespace: 'shop', selector: { app: 'web' }, clusterIP: '10.96.0.11', ports: [
    { port: 80, targetPort: 8081, name: 'tcp-web' }, { port: 81, targetPort: 8081, name: 'rpc', appProtocol: 'kubernetes.io/h2c' },
    { port: 82, targetPort: 8081, name: 'grpc-api' }, { port: 83, targetPort: 8081, name: 'x', appProtocol: 'grpc' },
  ] }));
  const renamed = await waitFor(() => env.changes.slice(mark).flatMap((c) => c.changes).find((c) => c.op === 'put' && c.resource.metadata.name === 'api'), 'the renamed port');
  t.same(renamed.op === 'put' && renamed.resource.kind === 'Service' ? renamed.resource.spec.ports.map((p) => p.appProtocol) : [], ['tcp', 'http2', 'grpc', 'grpc'],
    'renaming a port to tcp- makes it TCP again');

  // Node labels move a workload's locality.
  env.fake.put('nodes', node('node-b', { 'topology.kubernetes.io/region': 'us' }));
  await waitFor(() => env.changes.flatMap((c) => c.changes).find((c) => c.op === 'put' && c.resource.kind === 'Workload' && c.resource.spec.locality === 'us'), 'locality from the relabelled node');
});

t.test('admin writes are refused; the empty commit and its revision check are not', async (t) => {
  const env = await setup(t, seedShop);
  const w = (await env.store.snapshot()).resources.find((r) => r.kind === 'Workload')!;
  const err = await env.store.commit([{ op: 'put', resource: w }]).then(() => undefined, (e: unknown) => e);
  t.ok(isAmbitError(err, 'AMBIT_ERR_AUTH_DENIED'), 'refused');
  t.match((err as Error).message, /come from the Kubernetes API.*kubectl/);
  t.same(await env.store.commit([]), { revision: 1, changes: [] });
  t.ok(isAmbitError(await env.store.commit([], 7).catch((e: unknown) => e), 'AMBIT_ERR_RESOURCE_CONFLICT'));
  // Tokens, nodes and settings live in the embedded store.
  await env.store.putSetting('k', 'v');
  t.equal(await env.store.getSetting('k'), 'v');
  t.equal((await env.store.upsertNode('node-a', { lastSeen: 5 })).lastSeen, 5);
  await env.store.upsertNodes(new Map([['node-a', { ackedRevision: 1 }], ['node-b', { lastSeen: 6 }]]));
  t.match(await env.store.listNodes(), [{ name: 'node-a', lastSeen: 5, ackedRevision: 1 }, { name: 'node-b', lastSeen: 6 }], 'upsertNodes merges into the embedded store');
  t.equal(env.store.backend, 'kubernetes');
});

t.test('watch bookmarks are asked for and move the resume point', async (t) => {
  const env = await setup(t, seedShop);
  await waitFor(() => RESOURCE_NAMES.every((r) => env.fake.watching(r) > 0), 'every watch open');
  const podsRv = Number(env.fake.resourceVersion);
  env.fake.put('services', service({ name: 'other', namespace: 'shop', selector: { app: 'x' }, ports: [{ port: 81 }] }));
  await waitFor(() => env.fake.bookmarksSent.pods >= 2, 'bookmarks');
  const watches = env.fake.requests.filter((r) => r.path === '/api/v1/pods' && r.query['watch'] === 'true');
  t.ok(watches.every((r) => r.query['allowWatchBookmarks'] === 'true'), 'allowWatchBookmarks=true on every watch');
  env.fake.endWatches();
  const resumed = await waitFor(() => env.fake.requests.filter((r) => r.path === '/api/v1/pods' && r.query['watch'] === 'true')[1], 'the resumed pods watch');
  t.ok(Number(resumed.query['resourceVersion']) > podsRv, `resumed from the bookmark's resourceVersion (${resumed.query['resourceVersion']} > ${podsRv}), not the last pod event`);
  t.equal(env.fake.requests.filter((r) => r.path === '/api/v1/pods' && r.query['watch'] === undefined).length, 1, 'no re-list for a resumable watch');
});

t.test('410 Gone: re-list, commit only the differences', async (t) => {
  const env = await setup(t, seedShop);
  // Resume points compacted away: the reconnecting watches get 410 and re-list; nothing changed, so nothing is committed.
  await waitFor(() => RESOURCE_NAMES.every((r) => env.fake.watching(r) > 0), 'every watch open');
  env.fake.compact();
  env.fake.endWatches();
  await waitFor(() => reconciled(env.logs) >= 4, 'the four re-lists');
  t.ok(env.logs.some((l) => l.msg.includes('410 Gone')), 'the expiry is logged');
  t.equal(env.changes.length, 0, 'an identical re-list commits nothing (nothing flaps)');

  // The API server restarts with a new history: the controller's resume point is too old.
  const port = env.fake.port;
  const token = env.fake.token;
  await env.fake.stop();
  const fresh = await FakeKube.start({ port, token, firstResourceVersion: 5000, bookmarkIntervalMs: 100 });
  env.fake = fresh;
  seedShop(fresh);
  fresh.remove('pods', 'shop', 'web-2');
  fresh.put('pods', pod({ name: 'web-1', namespace: 'shop', node: 'node-a', ip: '10.1.0.1', serviceAccount: 'web', labels: { app: 'web', v: '2' }, ports: [{ containerPort: 8080, name: 'http' }] }));
  const cs = await waitFor(() => env.changes[0], 'the reconciling commit', 15_000);
  t.ok(fresh.expiredSent.pods >= 1, 'the fake answered the old resume point with 410 Expired');
  t.same(cs.changes.map((c) => (c.op === 'put' ? `put ${c.resource.metadata.name}` : `delete ${c.key.name}`)), ['put web-1', 'delete web-2'], 'exactly the differences, in one commit');
  await waitFor(() => reconciled(env.logs) >= 8, 'all four re-listed after the restart');
  t.equal(env.changes.length, 1, 'no further commits');
});

t.test('an invalid policy is never half-applied: the last valid version stays', async (t) => {
  const env = await setup(t, (f) => {
    seedShop(f);
    f.put('authorizationpolicies', policyCr('broken', 'MAYBE'));
  });
  t.notOk((await env.store.snapshot()).resources.some((r) => r.metadata.name === 'broken'), 'invalid from the start: absent');
  t.ok(env.logs.some((l) => l.level === 'error' && String(l['problem']).includes('broken') && String(l['problem']).includes('action')), 'and logged with the field');

  env.fake.put('authorizationpolicies', policyCr('allow-shop', 'NOPE'));
  env.fake.put('authorizationpolicies', policyCr('deny-x', 'DENY'));
  const cs = await waitFor(() => env.changes[0], 'a commit');
  t.same(cs.changes.map((c) => (c.op === 'put' ? c.resource.metadata.name : '')), ['deny-x'], 'the bad edit of allow-shop commits nothing');
  const kept = (await env.store.snapshot()).resources.find((r) => r.metadata.name === 'allow-shop');
  t.equal(kept?.kind === 'AuthorizationPolicy' ? kept.spec.action : '', 'ALLOW', 'its last valid version stays in force');
  t.ok(env.logs.some((l) => String(l['problem']).includes('last valid version stays')), 'logged as such');
  env.fake.remove('authorizationpolicies', 'shop', 'allow-shop');
  await waitFor(() => env.changes.some((c) => c.changes.some((x) => x.op === 'delete' && x.key.name === 'allow-shop')), 'deleting the CR removes it');
});

t.test('the revision never goes back across restarts; old revisions get a snapshot', async (t) => {
  const env = await setup(t, seedShop);
  env.fake.remove('pods', 'shop', 'web-2');
  await waitFor(() => env.changes[0], 'a commit');
  const last = await env.store.revision();
  t.equal(last, 2);
  await env.store.close();
  env.store = await env.open();
  t.equal(await env.store.revision(), last + 1, 'a restarted store continues above the last revision it handed out');
  t.equal(await env.store.changesSince(last), undefined, 'an agent at a revision of the previous run gets a snapshot (its deltas would describe another history)');
  t.same(await env.store.changesSince(last + 1), []);
  t.notOk((await env.store.snapshot()).resources.some((r) => r.metadata.name === 'web-2'));
});

t.test('the store identity is the cluster\'s (kube-system UID) with the embedded store\'s, stable across restarts', async (t) => {
  const env = await setup(t, seedShop);
  const id = await env.store.identity();
  t.match(id, new RegExp(`^kubernetes/${env.fake.clusterUid}/[0-9a-f-]{36}$`), 'kubernetes/<kube-system uid>/<embedded store id>');
  await env.store.close();
  env.store = await env.open();
  t.equal(await env.store.identity(), id, 'a restarted controller on the same embedded store keeps it');
  await env.store.close();
  fs.rmSync(path.join(env.dir, 'ambit.db'));
  env.store = await env.open();
  t.not(await env.store.identity(), id, 'a new embedded store (whose revisions count from 1 again) is another identity');
  t.match(await env.store.identity(), `kubernetes/${env.fake.clusterUid}/`, 'in the same cluster');
});

t.test('an unreachable API server fails open() within the sync timeout, naming what is missing', async (t) => {
  const fake = await FakeKube.start();
  const dir = t.testdir();
  const kubeConfig = loadKubeConfig(fake.writeKubeconfig(path.join(dir, 'kubeconfig')));
  await fake.stop();
  const logs: Env['logs'] = [];
  const local = SqliteStore.open({ path: path.join(dir, 'ambit.db') });
  const err = await KubernetesStore.open({ kubeConfig, local, logger: captureLogger(logs), syncTimeoutMs: 1_500 }).then(() => undefined, (e: unknown) => e);
  t.ok(isAmbitError(err, 'AMBIT_ERR_STORE_IO'), `STORE_IO (got ${String(err)})`);
  t.match((err as Error).message, /cannot list pods, services, nodes, policies, httproutes, grpcroutes, faultinjections, referencegrants from the Kubernetes API at http:\/\/127\.0\.0\.1:\d+/);
  t.ok(logs.some((l) => l.msg === 'Kubernetes list/watch failed; retrying'), 'failures logged while retrying');
  t.rejects(local.getSetting('x'), 'the embedded store was closed');

  const noCluster = loadKubeConfigError(() => loadKubeConfig(undefined));
  t.ok(isAmbitError(noCluster, 'AMBIT_ERR_CONFIG_INVALID'), 'outside a pod without --kubeconfig: a config error');
});

function loadKubeConfigError(fn: () => unknown): unknown {
  try {
    fn();
    return undefined;
  } catch (err) {
    return err;
  }
}

t.test('change feed: revision order under re-entry, a throwing listener does not starve the others', async (t) => {
  const feed = new ChangeFeed();
  const seen: string[] = [];
  const uncaught: unknown[] = [];
  const onUncaught = (err: unknown): void => {
    uncaught.push(err);
  };
  process.on('uncaughtException', onUncaught);
  t.teardown(() => process.off('uncaughtException', onUncaught));
  feed.subscribe((cs) => {
    seen.push(`a${cs.revision}`);
    if (cs.revision === 1) feed.deliver({ revision: 2, changes: [] });
  });
  feed.subscribe(() => {
    throw new Error('listener bug');
  });
  const off = feed.subscribe((cs) => seen.push(`c${cs.revision}`));
  feed.deliver({ revision: 1, changes: [] });
  t.same(seen, ['a1', 'c1', 'a2', 'c2'], 'the re-entrant commit is delivered after the current one, to everyone');
  await new Promise((r) => setImmediate(r));
  t.equal(uncaught.length, 2, 'listener errors are rethrown asynchronously, not swallowed');
  off();
  feed.deliver({ revision: 3, changes: [] });
  t.same(seen.slice(4), ['a3'], 'unsubscribed listeners see nothing more');
});

t.test('API errors read as the server\'s Status message', async (t) => {
  t.equal(kubeErrorMessage(Object.assign(new Error('HTTP-Code: 403\nMessage: ...\nHeaders: {...}'), { code: 403, body: { kind: 'Status', message: 'pods is forbidden: User "x" cannot list' } })),
    'HTTP 403: pods is forbidden: User "x" cannot list');
  t.equal(kubeErrorMessage(new Error('fetch failed')), 'fetch failed');
});
