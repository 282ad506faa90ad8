/**
 * The Kubernetes store's routes: HTTPRoute, GRPCRoute and ReferenceGrant
 * from the Gateway API's CRDs and FaultInjection from Ambit's, through a FAKE API server that
 * speaks the real list/watch protocol (test/e2e/fake-kube/server.ts).
 */
import t from 'tap';
import path from 'node:path';
import { Writable } from 'node:stream';
import { KubernetesStore } from '../../../controller/store/kubernetes-store.ts';
import { loadKubeConfig } from '../../../controller/store/kubernetes/kube-config.ts';
import { SqliteStore } from '../../../controller/store/sqlite-store.ts';
import { createLogger } from '../../../shared/logger.ts';
import type { HTTPRoute } from '../../../shared/resources/route-types.ts';
import type { Resource } from '../../../shared/resources/types.ts';
import { customResource, FakeKube, service, type FakeKubeOptions } from '../../e2e/fake-kube/server.ts';

const HOST = '127.0.131.10';
type Log = { msg: string; level: number; [k: string]: unknown };

async function waitFor<T>(fn: () => T | undefined | false | Promise<T | undefined | false>, what: string, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function setup(t: { testdir(): string; teardown(fn: () => unknown): void }, o: FakeKubeOptions, seed: (f: FakeKube) => void) {
  const fake = await FakeKube.start({ host: HOST, bookmarkIntervalMs: 100, ...o });
  seed(fake);
  const dir = t.testdir();
  const logs: Log[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) logs.push(JSON.parse(line) as Log);
      cb();
    },
  });
  const store = await KubernetesStore.open({
    kubeConfig: loadKubeConfig(fake.writeKubeconfig(path.join(dir, 'kubeconfig'))),
    local: SqliteStore.open({ path: path.join(dir, 'ambit.db') }),
    logger: createLogger({ name: 'test', level: 'debug', destination }),
    syncTimeoutMs: 10_000,
    absentCrdRetryMs: 200,
  });
  t.teardown(async () => {
    await store.close();
    await fake.stop();
  });
  return { fake, store, logs };
}

const PARENT = { group: '', kind: 'Service', name: 'web', port: 80 };
const names = (rs: readonly Resource[]): string[] => rs.filter((r) => r.kind !== 'Service').map((r) => `${r.kind}/${r.metadata.namespace}/${r.metadata.name}`);

function seed(f: FakeKube): void {
  f.put('services', service({ name: 'web', namespace: 'shop', selector: { app: 'web' }, ports: [{ port: 80, appProtocol: 'http' }], clusterIP: '10.96.0.10' }));
  // As the API server stores it: its CRD defaults filled in.
  f.put('httproutes', customResource('canary', 'shop', {
    parentRefs: [PARENT],
    rules: [{ matches: [{ path: { type: 'PathPrefix', value: '/' } }], backendRefs: [{ group: '', kind: 'Service', name: 'web', port: 80, weight: 90 }, { group: '', kind: 'Service', name: 'web-v2', port: 80, weight: 10 }] }],
  }));
  f.put('httproutes', customResource('via-gateway', 'shop', { parentRefs: [{ group: 'gateway.networking.k8s.io', kind: 'Gateway', name: 'gw' }], rules: [{}] }));
  f.put('grpcroutes', customResource('rpc', 'shop', { parentRefs: [PARENT], rules: [{ backendRefs: [{ name: 'web', port: 80 }], retry: { codes: ['UNAVAILABLE'] } }] }));
  f.put('faultinjections', customResource('slow', 'shop', { delay: { fixedDelay: '100ms', percentage: 10 } }));
  f.put('referencegrants', customResource('client-routes', 'shop', { from: [{ group: 'gateway.networking.k8s.io', kind: 'HTTPRoute', namespace: 'client' }], to: [{ group: '', kind: 'Service' }] }));
  f.put('referencegrants', customResource('empty', 'shop', { from: [], to: [{ group: '', kind: 'Service' }] }));
}

t.test('routes and fault injections come from their CRDs; an invalid one is skipped, logged once with its field', async (t) => {
  const { fake, store, logs } = await setup(t, {}, seed);
  const snap = await store.snapshot();
  t.same(names(snap.resources), ['FaultInjection/shop/slow', 'GRPCRoute/shop/rpc', 'HTTPRoute/shop/canary', 'ReferenceGrant/shop/client-routes']);
  t.same(snap.resources.find((r) => r.kind === 'ReferenceGrant')?.spec, { from: [{ group: 'gateway.networking.k8s.io', kind: 'HTTPRoute', namespace: 'client' }], to: [{ group: '', kind: 'Service' }] });
  t.match(logs.find((l) => typeof l['problem'] === 'string' && (l['problem'] as string).includes('ReferenceGrant shop/empty'))?.['problem'], /invalid ReferenceGrant skipped: .*spec\.from: must list 1 to 16 entries/);
  const canary = snap.resources.find((r) => r.kind === 'HTTPRoute') as HTTPRoute;
  t.same(canary.spec.rules[0]?.backendRefs.map((b) => `${b.name}:${b.weight}`), ['web:90', 'web-v2:10'], 'the validated core form');
  const skipped = logs.filter((l) => typeof l['problem'] === 'string' && (l['problem'] as string).includes('via-gateway'));
  t.equal(skipped.length, 1, 'logged once');
  t.match(skipped[0]?.['problem'], /invalid HTTPRoute skipped: .*HTTPRoute shop\/via-gateway: spec\.parentRefs\[0\]\.group: .*no gateways/);

  // Followed through the watch: an update, a repaired route, a delete.
  const before = await store.revision();
  fake.put('httproutes', customResource('canary', 'shop', { parentRefs: [PARENT], rules: [{ backendRefs: [{ name: 'web', port: 80 }] }] }));
  fake.put('httproutes', customResource('via-gateway', 'shop', { parentRefs: [PARENT] }));
  fake.remove('faultinjections', 'shop', 'slow');
  fake.remove('referencegrants', 'shop', 'client-routes');
  const after = await waitFor(async () => {
    const s = await store.snapshot();
    return names(s.resources).join() === 'GRPCRoute/shop/rpc,HTTPRoute/shop/canary,HTTPRoute/shop/via-gateway' && s;
  }, 'the changes');
  t.ok(after.revision > before);
  t.same((after.resources.find((r) => r.metadata.name === 'canary') as HTTPRoute).spec.rules[0]?.backendRefs.map((b) => b.weight), [1]);

  const refused = await store.commit([{ op: 'delete', key: { kind: 'HTTPRoute', namespace: 'shop', name: 'canary' } }]).catch((e: unknown) => e);
  t.match(refused, { code: 'AMBIT_ERR_AUTH_DENIED', message: /HTTPRoute.*change them with kubectl/ }, 'routes are kubectl\'s to change');
});

t.test('absent CRDs mean no routes, logged once; installed later, they are followed; removed, their routes go', async (t) => {
  const uninstalled = ['httproutes', 'grpcroutes', 'faultinjections', 'referencegrants'] as const;
  const { fake, store, logs } = await setup(t, { uninstalled }, (f) => f.put('services', service({ name: 'web', namespace: 'shop', selector: { app: 'web' }, ports: [{ port: 80 }] })));
  t.same(names((await store.snapshot()).resources), [], 'open() succeeds with no routes');
  const warned = (r: string) => logs.filter((l) => l['resource'] === r && /is not installed/.test(l.msg));
  for (const r of uninstalled) t.equal(warned(r).length, 1, `${r}: one warning`);
  t.match(warned('httproutes')[0]?.msg, /httproutes\.gateway\.networking\.k8s\.io is not installed/);
  t.match(warned('referencegrants')[0]?.msg, /referencegrants\.gateway\.networking\.k8s\.io is not installed/);
  // Several retries later, still one warning each.
  await waitFor(() => fake.requests.filter((q) => q.path.endsWith('/httproutes')).length >= 4, 'retries');
  for (const r of uninstalled) t.equal(warned(r).length, 1, `${r}: still one warning after retries`);

  fake.install('httproutes');
  fake.install('faultinjections');
  seed(fake);
  await waitFor(async () => names((await store.snapshot()).resources).join() === 'FaultInjection/shop/slow,HTTPRoute/shop/canary', 'routes once the CRDs are installed');
  t.ok(logs.some((l) => l['resource'] === 'httproutes' && /now served/.test(l.msg)), 'says the CRD is now served');

  fake.uninstall('httproutes');
  await waitFor(async () => names((await store.snapshot()).resources).join() === 'FaultInjection/shop/slow', 'the routes gone with their CRD');
  t.equal(warned('httproutes').length, 2, 'warned again: a new absence');
});
