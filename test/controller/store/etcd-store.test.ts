import t from 'tap';
import { readFileSync } from 'node:fs';
import { Etcd3 } from 'etcd3';
import { InterceptingCall, status, type Interceptor } from '@grpc/grpc-js';
import { createLogger } from '../../../shared/logger.ts';
import { AmbitError } from '../../../shared/errors.ts';
import type { Service, Workload } from '../../../shared/resources/types.ts';
import { EtcdStore, type EtcdStoreOptions } from '../../../controller/store/etcd-store.ts';
import { etcdClientOptions } from '../../../controller/store/etcd-connection.ts';
import type { ChangeSet, NodeRecord, TokenRecord } from '../../../controller/store/store.ts';
import { EtcdCluster } from '../../e2e/fixtures/etcd-cluster.ts';
import { writeEtcdTls } from '../../e2e/fixtures/test-pki.ts';

// Block 127.0.127.x: .10 plain member, .11 TLS member (the HA e2e uses .20 and up).
const PLAIN = '127.0.127.10';
const TLS_HOST = '127.0.127.11';

const logger = createLogger({ name: 'test', level: 'silent' });

function workload(name: string, address: string): Workload {
  return {
    kind: 'Workload',
    metadata: { name, namespace: 'default', labels: { app: name }, revision: 0 },
    spec: { serviceAccount: 'sa', node: 'node-1', address, ports: [8080], weight: 1, locality: '', healthy: true },
  };
}

function service(name: string): Service {
  return { kind: 'Service', metadata: { name, namespace: 'default', labels: {}, revision: 0 }, spec: { addresses: ['10.96.0.1'], ports: [{ name: 'http', port: 80, targetPort: 8080, appProtocol: 'tcp' }], selector: { app: name } } };
}

/** The error p rejects with (fails the test when it resolves). */
async function failure(p: Promise<unknown>): Promise<AmbitError> {
  try {
    await p;
  } catch (err) {
    return err as AmbitError;
  }
  throw new Error('expected a rejection');
}

const cluster = new EtcdCluster({ hosts: [PLAIN], dir: t.testdir() + '/plain' });
await cluster.start();
t.teardown(() => cluster.stop());

let prefixes = 0;
async function open(extra: Partial<EtcdStoreOptions> & { prefix?: string } = {}): Promise<EtcdStore> {
  const store = await EtcdStore.open({ client: { hosts: cluster.endpoints.split(',') }, prefix: extra.prefix ?? `/t${++prefixes}/`, logger, onFatal: () => undefined, ...extra });
  t.teardown(() => store.close());
  return store;
}

t.test('commits, snapshots and change sets keep the Store contract', async (t) => {
  const store = await open();
  t.equal(await store.revision(), 0);
  t.match(await store.identity(), /^[0-9a-f-]{36}$/);
  const seen: ChangeSet[] = [];
  store.subscribe((cs) => seen.push(cs));

  const cs1 = await store.commit([{ op: 'put', resource: workload('a', '10.0.0.1') }, { op: 'put', resource: service('web') }]);
  t.equal(cs1.revision, 1);
  t.same(cs1.changes.map((c) => (c.op === 'put' ? c.resource.metadata.revision : -1)), [1, 1], 'puts carry the commit revision');
  t.same(seen.map((c) => c.revision), [1], 'the commit is delivered before commit() resolves');

  const missing = await failure(store.commit([{ op: 'delete', key: { kind: 'Workload', namespace: 'default', name: 'missing' } }, { op: 'put', resource: workload('b', '10.0.0.2') }]));
  t.equal(missing.code, 'AMBIT_ERR_RESOURCE_NOT_FOUND');
  t.match(missing.message, /Workload\/default\/missing/, 'the error names the missing resource');
  t.equal(await store.revision(), 1, 'a failed commit writes nothing');
  t.equal((await failure(store.commit([{ op: 'put', resource: workload('a', '10.0.0.1') }, { op: 'delete', key: { kind: 'Workload', namespace: 'default', name: 'a' } }]))).code, 'AMBIT_ERR_RESOURCE_CONFLICT');
  t.equal((await failure(store.commit([{ op: 'put', resource: workload('b', '10.0.0.2') }], 0))).code, 'AMBIT_ERR_RESOURCE_CONFLICT');
  t.same(await store.commit([]), { revision: 1, changes: [] });

  const cs2 = await store.commit([{ op: 'delete', key: { kind: 'Workload', namespace: 'default', name: 'a' } }, { op: 'put', resource: workload('b', '10.0.0.2') }], 1);
  t.equal(cs2.revision, 2);
  const snap = await store.snapshot();
  t.equal(snap.revision, 2);
  t.same(snap.resources.map((r) => `${r.kind}/${r.metadata.name}@${r.metadata.revision}`), ['Service/web@1', 'Workload/b@2']);
  t.same((await store.changesSince(0))?.map((c) => c.revision), [1, 2]);
  t.same(await store.changesSince(2), []);
  t.equal(await store.changesSince(3), undefined, 'a revision from the future asks for a snapshot');
  t.same(seen.map((c) => c.revision), [1, 2]);
});

t.test('snapshot pages through more resources than one etcd range returns', async (t) => {
  const store = await open();
  const many = Array.from({ length: 2500 }, (_, i) => ({ op: 'put' as const, resource: workload(`w${String(i).padStart(5, '0')}`, `10.1.${Math.floor(i / 250)}.${i % 250}`) }));
  await store.commit(many);
  const snap = await store.snapshot();
  t.equal(snap.resources.length, 2500);
  t.equal(snap.resources[2499]?.metadata.name, 'w02499');
});

t.test('two replicas committing at once share one gapless revision, and each sees every commit once, in order', async (t) => {
  const prefix = '/race/';
  const a = await open({ prefix });
  const b = await open({ prefix });
  t.equal(await a.identity(), await b.identity(), 'one store identity for every replica');
  const seenA: number[] = [];
  const seenB: number[] = [];
  a.subscribe((cs) => seenA.push(cs.revision));
  b.subscribe((cs) => seenB.push(cs.revision));
  const N = 15;
  const results = await Promise.all([
    ...Array.from({ length: N }, (_, i) => a.commit([{ op: 'put', resource: workload(`a${i}`, `10.2.0.${i + 1}`) }])),
    ...Array.from({ length: N }, (_, i) => b.commit([{ op: 'put', resource: workload(`b${i}`, `10.2.1.${i + 1}`) }])),
  ]);
  const revisions = results.map((r) => r.revision).sort((x, y) => x - y);
  t.same(revisions, Array.from({ length: 2 * N }, (_, i) => i + 1), 'every commit got its own revision, none skipped');
  await b.sync();
  await a.sync();
  t.same(seenA, revisions, 'replica A saw all commits in order');
  t.same(seenB, revisions, 'replica B saw all commits in order');
  t.equal((await a.snapshot()).resources.length, 2 * N);

  // A commit based on a revision another replica has moved past is refused, and the newer state reaches subscribers first.
  const before = await a.revision();
  await b.commit([{ op: 'put', resource: service('late') }]);
  t.equal((await failure(a.commit([{ op: 'put', resource: service('stale') }], before))).code, 'AMBIT_ERR_RESOURCE_CONFLICT');
  t.equal(seenA.at(-1), before + 1, 'A caught up before reporting the conflict');
});

t.test('a join token is single-use across replicas', async (t) => {
  const prefix = '/tokens/';
  const a = await open({ prefix });
  const b = await open({ prefix });
  const now = Date.now();
  const token: TokenRecord = { id: 'tok1', secretHash: 'h'.repeat(64), node: 'n1', createdAt: now, expiresAt: now + 60_000, usedAt: 0 };
  await a.putToken(token);
  t.equal((await failure(b.putToken({ ...token, secretHash: 'x'.repeat(64) }))).code, 'AMBIT_ERR_RESOURCE_CONFLICT', 'an existing token is never overwritten');
  t.equal((await failure(b.consumeToken('tok1', 'z'.repeat(64), now))).details['reason'], 'mismatch');
  const tries = await Promise.allSettled([a.consumeToken('tok1', token.secretHash, now), b.consumeToken('tok1', token.secretHash, now), a.consumeToken('tok1', token.secretHash, now), b.consumeToken('tok1', token.secretHash, now)]);
  t.equal(tries.filter((r) => r.status === 'fulfilled').length, 1, 'exactly one use succeeds');
  for (const r of tries) if (r.status === 'rejected') t.equal((r.reason as AmbitError).details['reason'], 'used');
  const listed = await b.listTokens();
  t.equal(listed.length, 1);
  t.ok(listed[0]!.usedAt > 0);
  t.notOk('usedBy' in listed[0]!, 'internal bookkeeping is not listed');
  await a.putToken({ ...token, id: 'tok2', expiresAt: now - 1 });
  t.equal((await failure(b.consumeToken('tok2', token.secretHash, now))).details['reason'], 'expired');
  t.equal((await failure(b.consumeToken('nope', token.secretHash, now))).details['reason'], 'unknown');
});

t.test('node records merge across replicas and reach the other replica', async (t) => {
  const prefix = '/nodes/';
  const a = await open({ prefix });
  const b = await open({ prefix });
  const heard: NodeRecord[] = [];
  b.onNodeChange((n) => heard.push(n));
  await a.upsertNode('n1', { hboneAddress: '127.0.0.2:15008', lastSeen: 5 });
  await Promise.all([a.upsertNode('n1', { ackedRevision: 7 }), b.upsertNode('n1', { certExpiresAt: 99 })]);
  const n = await b.getNode('n1');
  t.match(n, { name: 'n1', hboneAddress: '127.0.0.2:15008', lastSeen: 5, ackedRevision: 7, certExpiresAt: 99 }, 'concurrent updates of one node lose no field');
  t.same((await a.listNodes()).map((x) => x.name), ['n1']);
  const deadline = Date.now() + 5_000;
  while (!heard.some((h) => h.ackedRevision === 7 && h.certExpiresAt === 99) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.ok(heard.some((h) => h.hboneAddress === '127.0.0.2:15008'), 'the other replica heard of the HBONE address');
  // Which nodes watch from some replica: every replica can tell, and a closed replica's are gone at once.
  const c = await EtcdStore.open({ client: { hosts: cluster.endpoints.split(',') }, prefix, logger, onFatal: () => undefined });
  await c.markConnected('n1', true);
  await a.markConnected('n2', true);
  t.same([...await b.connectedNodes()].sort(), ['n1', 'n2']);
  await a.markConnected('n2', false);
  t.same([...await b.connectedNodes()], ['n1']);
  await c.close();
  t.same([...await b.connectedNodes()], [], 'a closed replica\'s nodes are no longer connected');
  await a.putSetting('k', 'v');
  t.equal(await b.getSetting('k'), 'v');
  t.equal(await b.getSetting('absent'), undefined);
});

t.test('change sets beyond the retained ones ask for a snapshot; prefixes are separate meshes', async (t) => {
  const store = await open({ prefix: '/retain/', retainChangeSets: 3 });
  for (let i = 0; i < 6; i++) await store.commit([{ op: 'put', resource: service(`s${i}`) }]);
  t.equal(await store.changesSince(1), undefined, 'compacted away');
  t.same((await store.changesSince(3))?.map((c) => c.revision), [4, 5, 6]);
  const other = await open({ prefix: '/retain-other/' });
  t.equal(await other.revision(), 0);
  t.not(await other.identity(), await store.identity());
});

t.test('a commit whose answer is lost is neither reported failed nor applied twice', async (t) => {
  // A client interceptor lets one Txn reach etcd and then replaces its answer with UNAVAILABLE, as a member dying mid-call would.
  let armed = false;
  let lost = 0;
  const loseAnswer: Interceptor = (options, nextCall) => {
    if (!armed || !String(options.method_definition.path).endsWith('/Txn')) return new InterceptingCall(nextCall(options));
    armed = false;
    lost++;
    return new InterceptingCall(nextCall(options), {
      start: (metadata, listener, next) => next(metadata, {
        // The answer's message passes (grpc-js holds the status until it does); the UNAVAILABLE status makes the call fail.
        onReceiveMessage: (message, nextMessage) => nextMessage(message),
        onReceiveStatus: (st, nextStatus) => nextStatus({ ...st, code: status.UNAVAILABLE, details: 'answer lost' }),
      }),
    });
  };
  const store = await EtcdStore.open({ client: { hosts: cluster.endpoints.split(','), grpcOptions: { interceptors: [loseAnswer] } as never }, prefix: '/lost/', logger, onFatal: () => undefined });
  t.teardown(() => store.close());
  const seen: number[] = [];
  store.subscribe((cs) => seen.push(cs.revision));
  armed = true;
  const cs = await store.commit([{ op: 'put', resource: service('once') }]);
  t.equal(lost, 1, 'the answer of the commit\'s transaction was lost');
  t.equal(cs.revision, 1, 'reported as committed');
  t.equal(await store.revision(), 1, 'applied once: the revision moved by one');
  t.same(seen, [1], 'delivered once');
  t.same((await store.changesSince(0))?.map((c) => c.revision), [1]);
});

t.test('a replica that can no longer follow the revision in order reports it as fatal', async (t) => {
  const prefix = '/behind/';
  const fatal: AmbitError[] = [];
  const store = await open({ prefix, retainChangeSets: 2, onFatal: (err) => fatal.push(err) });
  await store.commit([{ op: 'put', resource: service('one') }]);
  // Another writer moved the revision on while the change sets it would need are gone (compacted past this replica).
  const raw = new Etcd3({ hosts: cluster.endpoints.split(',') });
  t.teardown(() => raw.close());
  await raw.put(`${prefix}revision`).value('9');
  const err = await failure(store.sync());
  t.equal(err.code, 'AMBIT_ERR_STORE_REVISION');
  t.equal(fatal.length, 1, 'onFatal was called');
  t.match(fatal[0]?.message, /restart the replica/);
});

t.test('TLS with a client certificate; a client without one is refused', async (t) => {
  const dir = t.testdir();
  const tls = writeEtcdTls(dir, [TLS_HOST]);
  const secure = new EtcdCluster({ hosts: [TLS_HOST], dir: `${dir}/data`, tls });
  t.teardown(() => secure.stop());
  const clientFiles = { caFile: tls.caFile, certFile: tls.clientCert, keyFile: tls.clientKey };
  await secure.start(secure.clientOptions({ ...clientFiles, read: (p) => readFileSync(p) }));
  const store = await EtcdStore.open({ client: etcdClientOptions({ endpoints: [secure.members[0]!.clientUrl], ...clientFiles }), prefix: '/tls/', logger, onFatal: () => undefined });
  t.teardown(() => store.close());
  t.equal((await store.commit([{ op: 'put', resource: service('s') }])).revision, 1);
  t.equal((await failure(EtcdStore.open({ client: etcdClientOptions({ endpoints: [secure.members[0]!.clientUrl], caFile: tls.caFile }), prefix: '/tls/', logger, onFatal: () => undefined, operationTimeoutMs: 1_000 }))).code, 'AMBIT_ERR_STORE_IO');
});
