/**
 * HTTPRoute, GRPCRoute and FaultInjection in the SQLite and etcd stores (a
 * real etcd): committed, read back after a reopen exactly as validated,
 * replayed from history, deleted.
 */
import t from 'tap';
import type { Test } from 'tap';
import path from 'node:path';
import { createLogger } from '../../../shared/logger.ts';
import { validateResource } from '../../../shared/resources/validate.ts';
import type { Resource } from '../../../shared/resources/types.ts';
import { EtcdStore } from '../../../controller/store/etcd-store.ts';
import { SqliteStore } from '../../../controller/store/sqlite-store.ts';
import type { Store } from '../../../controller/store/store.ts';
import { EtcdCluster } from '../../e2e/fixtures/etcd-cluster.ts';

const HOST = '127.0.131.20';
const logger = createLogger({ name: 'test', level: 'silent' });
const GW = 'gateway.networking.k8s.io/v1';

const ROUTES: Resource[] = [
  validateResource({
    apiVersion: GW, kind: 'HTTPRoute', metadata: { name: 'canary', namespace: 'shop', labels: { team: 'web' } },
    spec: {
      parentRefs: [{ group: '', kind: 'Service', name: 'web', port: 80 }],
      rules: [{
        matches: [{ path: { type: 'RegularExpression', value: '^/v[12]/' }, headers: [{ name: 'X-Canary', value: '1' }] }],
        backendRefs: [{ name: 'web', port: 80, weight: 90 }, { name: 'web-v2', port: 80, weight: 10 }],
        filters: [{ type: 'ExtensionRef', extensionRef: { group: 'ambit.dev', kind: 'FaultInjection', name: 'slow' } }],
        timeouts: { request: '1s', backendRequest: '200ms' }, retry: { codes: [503], attempts: 3 },
      }],
    },
  }, 'x'),
  validateResource({ apiVersion: GW, kind: 'GRPCRoute', metadata: { name: 'rpc', namespace: 'shop' }, spec: { parentRefs: [{ group: '', kind: 'Service', name: 'web' }], rules: [{ retry: { codes: ['UNAVAILABLE'] } }] } }, 'x'),
  validateResource({ apiVersion: 'ambit.dev/v1alpha1', kind: 'FaultInjection', metadata: { name: 'slow', namespace: 'shop' }, spec: { delay: { fixedDelay: '100ms', percentage: 12.5 } } }, 'x'),
];

const strip = (rs: readonly Resource[]): unknown[] => rs.map((r) => ({ ...r, metadata: { ...r.metadata, revision: 0 } }))
  .sort((a, b) => `${a.kind}/${a.metadata.name}`.localeCompare(`${b.kind}/${b.metadata.name}`));

async function contract(t: Test, open: () => Promise<Store>): Promise<void> {
  let store = await open();
  const cs = await store.commit(ROUTES.map((resource) => ({ op: 'put' as const, resource })));
  await store.close();
  store = await open();
  const snap = await store.snapshot();
  t.same(strip(snap.resources), strip(ROUTES), 'read back after a reopen as validated');
  t.ok(snap.resources.every((r) => r.metadata.revision === cs.revision));
  const history = await store.changesSince(cs.revision - 1);
  t.same(strip((history ?? []).flatMap((c) => c.changes.flatMap((x) => (x.op === 'put' ? [x.resource] : [])))), strip(ROUTES), 'replayed from history');
  await store.commit([{ op: 'delete', key: { kind: 'HTTPRoute', namespace: 'shop', name: 'canary' } }, { op: 'delete', key: { kind: 'FaultInjection', namespace: 'shop', name: 'slow' } }]);
  t.same((await store.snapshot()).resources.map((r) => `${r.kind}/${r.metadata.name}`), ['GRPCRoute/rpc'], 'deleted by kind and name');
  await store.close();
}

t.test('SQLite', async (t) => {
  const file = path.join(t.testdir(), 'ambit.db');
  await contract(t, async () => SqliteStore.open({ path: file }));
});

t.test('etcd', async (t) => {
  const cluster = new EtcdCluster({ hosts: [HOST], dir: path.join(t.testdir(), 'etcd') });
  await cluster.start();
  t.teardown(() => cluster.stop());
  await contract(t, () => EtcdStore.open({ client: { hosts: cluster.endpoints.split(',') }, prefix: '/routes/', logger, onFatal: () => undefined }));
});
