import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { SqliteStore } from '../../../controller/store/sqlite-store.ts';
import type { SqliteStoreOptions } from '../../../controller/store/sqlite-store.ts';
import { SCHEMA_VERSION } from '../../../controller/store/sqlite-schema.ts';
import type { Change, ChangeSet, TokenRecord } from '../../../controller/store/store.ts';
import type { AuthorizationPolicy, Resource, Service, Workload } from '../../../shared/resources/types.ts';
import { resourceKey } from '../../../shared/resources/types.ts';

/** The parts of a tap test the helpers use. */
interface Test {
  testdir(): string;
  teardown(fn: () => unknown): void;
}

function workload(name: string, namespace = 'default', address = '10.0.0.1'): Workload {
  return {
    kind: 'Workload',
    metadata: { name, namespace, labels: { app: name }, revision: 0 },
    spec: { serviceAccount: 'sa', node: 'node-1', address, ports: [8080, 9090], uid: 1001, weight: 1, locality: 'eu/a/1', healthy: true },
  };
}

function service(name: string, namespace = 'default'): Service {
  return {
    kind: 'Service',
    metadata: { name, namespace, labels: {}, revision: 0 },
    spec: { addresses: ['10.96.0.10', 'fd00::a'], ports: [{ name: 'http', port: 80, targetPort: 8080, appProtocol: 'tcp' }], selector: { app: name } },
  };
}

function policy(name: string, namespace = 'ambit-system'): AuthorizationPolicy {
  return {
    kind: 'AuthorizationPolicy',
    metadata: { name, namespace, labels: { tier: 'x' }, revision: 0 },
    spec: {
      selector: { app: 'web' },
      action: 'ALLOW',
      rules: [
        {
          from: [
            {
              principals: ['spiffe://ambit.local/ns/default/sa/web'],
              notPrincipals: [],
              namespaces: ['default'],
              notNamespaces: [],
              serviceAccounts: ['default/web'],
              notServiceAccounts: [],
              ipBlocks: ['10.0.0.0/8'],
              notIpBlocks: ['10.1.0.0/16'],
            },
          ],
          to: [{ ports: [80, 443], notPorts: [] }],
        },
      ],
    },
  };
}

const put = (resource: Resource): Change => ({ op: 'put', resource });
const del = (r: Resource): Change => ({ op: 'delete', key: { kind: r.kind, namespace: r.metadata.namespace, name: r.metadata.name } });
const withRevision = <R extends Resource>(r: R, revision: number): R => ({ ...r, metadata: { ...r.metadata, revision } });
const sha256 = (s: string): string => createHash('sha256').update(s).digest('hex');

function dbPath(t: Test): string {
  return path.join(t.testdir(), 'ambit.db');
}

function open(t: Test, options: Partial<SqliteStoreOptions> & { path: string }): SqliteStore {
  const store = SqliteStore.open(options);
  t.teardown(() => store.close());
  return store;
}

function token(id: string, secret: string, fields: Partial<TokenRecord> = {}): TokenRecord {
  return { id, secretHash: sha256(secret), node: 'node-1', createdAt: 1_000, expiresAt: 10_000, usedAt: 0, ...fields };
}

t.test('each commit bumps the revision by one, shared by all its changes', async (t) => {
  const store = open(t, { path: dbPath(t) });
  t.equal(await store.revision(), 0);
  const a = workload('a');
  const cs1 = await store.commit([put(a), put(service('s'))]);
  t.equal(cs1.revision, 1);
  t.strictSame(cs1.changes, [put(withRevision(a, 1)), put(withRevision(service('s'), 1))]);
  t.equal(a.metadata.revision, 0, 'the caller object is not mutated');

  const a2 = workload('a', 'default', '10.0.0.2');
  const cs2 = await store.commit([put(a2)]);
  t.equal(cs2.revision, 2);
  const cs3 = await store.commit([del(service('s'))]);
  t.strictSame(cs3, { revision: 3, changes: [del(service('s'))] });
  t.equal(await store.revision(), 3);
  t.strictSame(await store.snapshot(), { revision: 3, resources: [withRevision(a2, 2)] }, 'metadata.revision is the last writing commit');
});

t.test('snapshot is ordered by kind, namespace, name and bodies round-trip exactly', async (t) => {
  const store = open(t, { path: dbPath(t) });
  const resources = [workload('b', 'ns2'), policy('p'), workload('a', 'ns2'), service('z', 'a'), workload('c', 'ns1'), policy('a', 'default')];
  const cs = await store.commit(resources.map(put));
  const snap = await store.snapshot();
  t.equal(snap.revision, 1);
  t.strictSame(
    snap.resources.map(resourceKey),
    [
      'AuthorizationPolicy/ambit-system/p',
      'AuthorizationPolicy/default/a',
      'Service/a/z',
      'Workload/ns1/c',
      'Workload/ns2/a',
      'Workload/ns2/b',
    ],
  );
  const byKey = new Map(resources.map((r) => [resourceKey(r), withRevision(r, 1)]));
  for (const r of snap.resources) t.strictSame(r, byKey.get(resourceKey(r)), `${resourceKey(r)} round-trips`);
  t.strictSame(
    cs.changes.map((c) => (c.op === 'put' ? c.resource : undefined)),
    resources.map((r) => withRevision(r, 1)),
    'the committed change set carries the stored bodies',
  );
});

t.test('changesSince resumes, and returns undefined when compacted or from the future', async (t) => {
  const file = dbPath(t);
  const store = open(t, { path: file, retainChangeSets: 3 });
  t.strictSame(await store.changesSince(0), [], 'empty store, nothing missed');
  for (let i = 1; i <= 5; i++) await store.commit([put(workload(`w${i}`))]);
  await store.commit([del(workload('w1'))]); // revision 6
  t.strictSame(await store.changesSince(6), []);
  t.strictSame(await store.changesSince(3), [
    { revision: 4, changes: [put(withRevision(workload('w4'), 4))] },
    { revision: 5, changes: [put(withRevision(workload('w5'), 5))] },
    { revision: 6, changes: [del(workload('w1'))] },
  ]);
  t.equal(await store.changesSince(2), undefined, 'revision 3 was compacted away');
  t.equal(await store.changesSince(0), undefined);
  t.equal(await store.changesSince(7), undefined, 'a future revision means the caller must re-snapshot');

  const raw = new Database(file, { readonly: true });
  t.teardown(() => raw.close());
  t.strictSame(raw.prepare('SELECT DISTINCT revision FROM changes ORDER BY revision').pluck().all(), [4, 5, 6], 'compaction removes old change rows');
});

t.test('a stale expectedRevision writes nothing', async (t) => {
  const store = open(t, { path: dbPath(t) });
  await store.commit([put(workload('a'))], 0);
  const before = await store.snapshot();
  await t.rejects(store.commit([put(workload('b')), del(workload('a'))], 0), {
    code: 'AMBIT_ERR_RESOURCE_CONFLICT',
    details: { expectedRevision: 0, revision: 1 },
  });
  t.strictSame(await store.snapshot(), before);
  t.strictSame(await store.changesSince(1), []);
  await t.rejects(store.commit([], 0), { code: 'AMBIT_ERR_RESOURCE_CONFLICT' }, 'also for an empty change list');
  t.strictSame(await store.commit([]), { revision: 1, changes: [] }, 'an empty commit returns the current revision');
  t.equal(await store.revision(), 1);
  t.equal((await store.commit([put(workload('b'))], 1)).revision, 2, 'the current revision commits');
});

t.test('a failing change aborts the whole commit', async (t) => {
  const store = open(t, { path: dbPath(t) });
  await store.commit([put(workload('a'))]);
  const before = await store.snapshot();
  const seen: ChangeSet[] = [];
  store.subscribe((cs) => seen.push(cs));

  await t.rejects(store.commit([put(workload('new')), del(workload('a')), del(workload('missing'))]), {
    code: 'AMBIT_ERR_RESOURCE_NOT_FOUND',
    details: { kind: 'Workload', namespace: 'default', name: 'missing' },
  });
  await t.rejects(store.commit([put(workload('new')), put(workload('a')), del(workload('a'))]), { code: 'AMBIT_ERR_RESOURCE_CONFLICT' }, 'one key twice');
  t.strictSame(await store.snapshot(), before);
  t.strictSame(await store.changesSince(1), []);
  t.strictSame(seen, [], 'nothing is announced');
  t.equal((await store.commit([put(workload('new'))])).revision, 2, 'the revision was not consumed');
});

t.test('subscribers see every commit once, in order, after it is stored', async (t) => {
  const file = dbPath(t);
  const store = open(t, { path: file });
  const seenA: ChangeSet[] = [];
  const seenB: number[] = [];
  const unsubscribeA = store.subscribe((cs) => seenA.push(cs));
  store.subscribe((cs) => {
    seenB.push(cs.revision);
    // Re-entrant commit: its change set must reach every listener after this one.
    if (cs.revision === 1) void store.commit([put(workload('from-listener'))]);
  });
  const seenC: number[] = [];
  const lateSeen: number[] = [];
  store.subscribe((cs) => {
    seenC.push(cs.revision);
    // Subscribed during delivery of revision 1: starts with the next commit.
    if (cs.revision === 1) store.subscribe((later) => lateSeen.push(later.revision));
  });
  const cs1 = await store.commit([put(workload('a'))]);
  t.strictSame(seenA.map((cs) => cs.revision), [1, 2]);
  t.strictSame(seenB, [1, 2]);
  t.strictSame(seenC, [1, 2], 'a later listener still sees revision 1 before the re-entrant revision 2');
  t.strictSame(lateSeen, [2]);
  t.equal(seenA[0], cs1, 'listeners get the committed change set');

  // A second connection's commits are delivered (before ours) when this store next commits.
  const other = open(t, { path: file });
  await other.commit([put(workload('o1'))]);
  await other.commit([del(workload('o1'))]);
  const cs5 = await store.commit([put(workload('b'))]);
  t.strictSame(seenA.map((cs) => cs.revision), [1, 2, 3, 4, 5]);
  t.strictSame(seenA.slice(2), [...((await store.changesSince(2)) ?? [])]);
  t.equal(cs5.revision, 5);

  unsubscribeA();
  await store.commit([put(workload('c'))]);
  t.equal(seenA.length, 5, 'no delivery after unsubscribe');
  t.strictSame(seenB, [1, 2, 3, 4, 5, 6]);
});

t.test('a listener unsubscribed during delivery is not called again', async (t) => {
  const store = open(t, { path: dbPath(t) });
  const seen: number[] = [];
  let unsubscribeLater = (): void => {};
  store.subscribe(() => unsubscribeLater());
  unsubscribeLater = store.subscribe((cs) => seen.push(cs.revision));
  await store.commit([put(workload('a'))]);
  t.strictSame(seen, []);
});

t.test('state survives close and reopen', async (t) => {
  const file = dbPath(t);
  const first = SqliteStore.open({ path: file, now: () => 500 });
  await first.commit([put(workload('a')), put(policy('p'))]);
  await first.commit([put(service('s'))]);
  await first.putToken(token('t1', 'secret'));
  await first.putToken(token('t2', 'other'));
  await first.consumeToken('t2', sha256('other'), 2_000);
  await first.upsertNode('node-1', { lastSeen: 7, ackedRevision: 2 });
  await first.putSetting('cluster-id', 'c-123');
  const snap = await first.snapshot();
  const tokens = await first.listTokens();
  const nodes = await first.listNodes();
  await first.close();

  const second = open(t, { path: file });
  t.equal(await second.revision(), 2);
  t.strictSame(await second.snapshot(), snap);
  t.strictSame(await second.listTokens(), tokens);
  t.equal(tokens.find((x) => x.id === 't2')?.usedAt, 2_000);
  t.strictSame(await second.listNodes(), nodes);
  t.strictSame(await second.getNode('node-1'), { name: 'node-1', registeredAt: 500, lastSeen: 7, ackedRevision: 2, nackedRevision: 0, nackReason: '', certExpiresAt: 0, hboneAddress: '', trustedRoots: [], certificates: [] });
  t.equal(await second.getSetting('cluster-id'), 'c-123');
  t.strictSame((await second.changesSince(1))?.map((cs) => cs.revision), [2]);
  t.equal((await second.commit([del(service('s'))])).revision, 3);
  await t.rejects(second.consumeToken('t2', sha256('other'), 2_001), { code: 'AMBIT_ERR_TOKEN_INVALID', details: { reason: 'used' } });
});

t.test('join tokens are single use', async (t) => {
  let clock = 1_000;
  const store = open(t, { path: dbPath(t), now: () => clock });
  await store.putToken(token('t1', 'secret'));
  await t.rejects(store.putToken(token('t1', 'again')), { code: 'AMBIT_ERR_RESOURCE_CONFLICT' }, 'an id is never overwritten');

  await t.rejects(store.consumeToken('nope', sha256('secret'), 2_000), { code: 'AMBIT_ERR_TOKEN_INVALID', details: { reason: 'unknown' } });
  await t.rejects(store.consumeToken('t1', sha256('wrong'), 2_000), { code: 'AMBIT_ERR_TOKEN_INVALID', details: { reason: 'mismatch' } });
  await t.rejects(store.consumeToken('t1', 'short', 2_000), { code: 'AMBIT_ERR_TOKEN_INVALID', details: { reason: 'mismatch' } }, 'a hash of another length');
  t.strictSame(await store.consumeToken('t1', sha256('secret'), 2_000), token('t1', 'secret'), 'returns the record before use');
  await t.rejects(store.consumeToken('t1', sha256('secret'), 2_001), { code: 'AMBIT_ERR_TOKEN_INVALID', details: { reason: 'used' } });
  await t.rejects(store.consumeToken('t1', sha256('wrong'), 2_001), { code: 'AMBIT_ERR_TOKEN_INVALID', details: { reason: 'mismatch' } }, 'no state is revealed without the secret');
  t.strictSame(await store.listTokens(), [token('t1', 'secret', { usedAt: 2_000 })]);

  await store.putToken(token('t2', 'secret', { createdAt: 1_001, expiresAt: 5_000 }));
  await t.rejects(store.consumeToken('t2', sha256('secret'), 5_000), { code: 'AMBIT_ERR_TOKEN_INVALID', details: { reason: 'expired' } }, 'expired at expiresAt');
  t.equal((await store.consumeToken('t2', sha256('secret'), 4_999)).id, 't2', 'valid just before');

  // Used and expired tokens are purged 24 h later, on the next putToken.
  await store.putToken(token('t3', 'secret', { createdAt: 1_002, expiresAt: 90_000_000 }));
  await store.putToken(token('t4', 'secret', { createdAt: 1_003, expiresAt: 6_000 }));
  clock = 6_000 + 24 * 3600 * 1000 - 1;
  await store.putToken(token('t5', 'secret', { createdAt: clock, expiresAt: clock + 1 }));
  t.strictSame((await store.listTokens()).map((x) => x.id), ['t3', 't4', 't5'], 't1 and t2 (used at 2000, 4999) purged; t4 expired just under 24 h ago kept');
  clock += 1;
  await store.putToken(token('t6', 'secret', { createdAt: clock, expiresAt: clock + 1 }));
  t.strictSame((await store.listTokens()).map((x) => x.id), ['t3', 't5', 't6']);
});

t.test('two instances on one file: one token consumer wins, stale commits conflict', async (t) => {
  const file = dbPath(t);
  const a = open(t, { path: file });
  const b = open(t, { path: file });
  await a.putToken(token('t1', 'secret'));
  const results = await Promise.allSettled([a.consumeToken('t1', sha256('secret'), 2_000), b.consumeToken('t1', sha256('secret'), 2_000)]);
  t.equal(results.filter((r) => r.status === 'fulfilled').length, 1, 'exactly one wins');
  const lost = results.find((r) => r.status === 'rejected');
  t.match(lost?.reason, { code: 'AMBIT_ERR_TOKEN_INVALID', details: { reason: 'used' } });

  const seen = await a.revision();
  await b.commit([put(workload('from-b'))], seen);
  await t.rejects(a.commit([put(workload('from-a'))], seen), { code: 'AMBIT_ERR_RESOURCE_CONFLICT' });
  t.strictSame((await a.snapshot()).resources.map(resourceKey), ['Workload/default/from-b']);
  t.equal(await a.revision(), 1);
});

t.test('two processes racing on one file serialise commits and token use', async (t) => {
  const file = dbPath(t);
  // A fixed clock: putToken purges tokens that expired over 24 h before now.
  const setup = open(t, { path: file, now: () => 1_000 });
  const ids = Array.from({ length: 40 }, (_, i) => `tok-${i}`);
  for (const id of ids) await setup.putToken(token(id, 'secret'));
  const gate = new SharedArrayBuffer(8);
  const flags = new Int32Array(gate);
  const worker = (name: string) =>
    new Promise<{ won: string[]; commits: number[] }>((resolve, reject) => {
      const w = new Worker(WORKER_SOURCE, {
        eval: true,
        workerData: {
          moduleUrl: new URL('../../../controller/store/sqlite-store.ts', import.meta.url).href,
          path: file,
          gate,
          ids,
          hash: sha256('secret'),
          name,
          resource: workload(name),
          commits: 40,
        },
      });
      w.once('message', (m: { won: string[]; commits: number[] } | { error: string }) => ('error' in m ? reject(new Error(m.error)) : resolve(m)));
      w.once('error', reject);
    });
  const running = [worker('x'), worker('y')];
  while (Atomics.load(flags, 1) < 2) await new Promise((r) => setTimeout(r, 2));
  Atomics.store(flags, 0, 1);
  Atomics.notify(flags, 0);
  const [x, y] = await Promise.all(running);
  if (x === undefined || y === undefined) throw new Error('worker result missing');

  t.strictSame([...x.won, ...y.won].sort(), [...ids].sort(), 'every token used exactly once');
  const revisions = [...x.commits, ...y.commits].sort((p, q) => p - q);
  t.strictSame(revisions, Array.from({ length: revisions.length }, (_, i) => i + 1), 'successful commits got distinct, consecutive revisions');
  t.equal(await setup.revision(), revisions.length);
  t.equal((await setup.snapshot()).resources.length, revisions.length);
});

const WORKER_SOURCE = `
const { workerData, parentPort } = require('node:worker_threads');
(async () => {
  const { SqliteStore } = await import(workerData.moduleUrl);
  const store = SqliteStore.open({ path: workerData.path });
  const flags = new Int32Array(workerData.gate);
  Atomics.add(flags, 1, 1);
  Atomics.wait(flags, 0, 0);
  const won = [];
  for (const id of workerData.ids) {
    try {
      await store.consumeToken(id, workerData.hash, 2000);
      won.push(id);
    } catch (err) {
      if (err.details?.reason !== 'used') throw err;
    }
  }
  const commits = [];
  for (let i = 0; i < workerData.commits; i++) {
    const r = workerData.resource;
    const resource = { ...r, metadata: { ...r.metadata, name: workerData.name + '-' + i } };
    const seen = await store.revision();
    // Yield between read and write, widening the window in which the other process commits.
    await new Promise((resolve) => setImmediate(resolve));
    try {
      commits.push((await store.commit([{ op: 'put', resource }], seen)).revision);
    } catch (err) {
      if (err.code !== 'AMBIT_ERR_RESOURCE_CONFLICT') throw err;
    }
  }
  await store.close();
  parentPort.postMessage({ won, commits });
})().catch((err) => parentPort.postMessage({ error: String(err?.stack ?? err) }));
`;

t.test('upsertNode merges given fields into the record', async (t) => {
  let clock = 100;
  const store = open(t, { path: dbPath(t), now: () => clock });
  t.equal(await store.getNode('n2'), undefined);
  const created = await store.upsertNode('n2', { lastSeen: 5 });
  t.strictSame(created, { name: 'n2', registeredAt: 100, lastSeen: 5, ackedRevision: 0, nackedRevision: 0, nackReason: '', certExpiresAt: 0, hboneAddress: '', trustedRoots: [], certificates: [] });
  clock = 200;
  const merged = await store.upsertNode('n2', { ackedRevision: 3, nackedRevision: 4, nackReason: 'bad route', lastSeen: undefined });
  t.strictSame(merged, { name: 'n2', registeredAt: 100, lastSeen: 5, ackedRevision: 3, nackedRevision: 4, nackReason: 'bad route', certExpiresAt: 0, hboneAddress: '', trustedRoots: [], certificates: [] });
  await store.upsertNode('n2', { nackedRevision: 0, nackReason: '', certExpiresAt: 9_000 });
  await store.upsertNode('n1', { registeredAt: 1 });
  t.strictSame(await store.getNode('n2'), { ...merged, nackedRevision: 0, nackReason: '', certExpiresAt: 9_000 }, 'zero and empty values win too');
  t.strictSame((await store.listNodes()).map((n) => [n.name, n.registeredAt]), [['n1', 1], ['n2', 100]]);
});

t.test('upsertNodes merges many records in one transaction, as upsertNode merges one; a bad one writes none', async (t) => {
  let clock = 100;
  const file = dbPath(t);
  const store = open(t, { path: file, now: () => clock });
  await store.upsertNode('n1', { lastSeen: 5, hboneAddress: '127.0.0.2:15008', ackedRevision: 1 });
  clock = 200;
  const cert = { identity: 'spiffe://cluster.local/ambit/node/n2', root: 'a'.repeat(64), notAfter: 9_000 };
  await store.upsertNodes(new Map([
    ['n1', { ackedRevision: 4, nackedRevision: 0, nackReason: '' }],
    ['n2', { lastSeen: 7, certificates: [cert], trustedRoots: ['b'.repeat(64)] }],
  ]));
  t.strictSame(await store.getNode('n1'), { name: 'n1', registeredAt: 100, lastSeen: 5, ackedRevision: 4, nackedRevision: 0, nackReason: '', certExpiresAt: 0, hboneAddress: '127.0.0.2:15008', trustedRoots: [], certificates: [] }, 'an existing record keeps the fields not given');
  t.strictSame(await store.getNode('n2'), { name: 'n2', registeredAt: 200, lastSeen: 7, ackedRevision: 0, nackedRevision: 0, nackReason: '', certExpiresAt: 0, hboneAddress: '', trustedRoots: ['b'.repeat(64)], certificates: [cert] }, 'a new record is created');
  await store.upsertNodes(new Map());

  // Another connection on the file: each write merges into what the other wrote.
  const other = open(t, { path: file, now: () => clock });
  await other.upsertNodes(new Map([['n1', { certExpiresAt: 99 }], ['n2', { ackedRevision: 3 }]]));
  await store.upsertNodes(new Map([['n1', { lastSeen: 8 }], ['n2', { nackReason: 'x', nackedRevision: 4 }]]));
  t.match(await other.getNode('n1'), { ackedRevision: 4, certExpiresAt: 99, lastSeen: 8, hboneAddress: '127.0.0.2:15008' });
  t.match(await other.getNode('n2'), { ackedRevision: 3, nackedRevision: 4, nackReason: 'x', lastSeen: 7 });

  const before = await store.listNodes();
  // A value SQLite cannot bind fails the transaction: the valid record before it is not written either.
  const err = await store.upsertNodes(new Map([['n1', { ackedRevision: 50 }], ['n3', { nackReason: {} as unknown as string }]])).then(() => undefined, (e: unknown) => e);
  t.match(err, { code: 'AMBIT_ERR_STORE_IO', message: /upsertNodes/ });
  t.strictSame(await store.listNodes(), before, 'nothing of a failed batch is written');
});

t.test('rotation facts per node: trusted roots and issued certificates round-trip; a v1 database migrates keeping its nodes', async (t) => {
  const file = dbPath(t);
  const store = SqliteStore.open({ path: file, now: () => 100 });
  const fp = (c: string): string => c.repeat(64);
  const certs = [{ identity: 'spiffe://cluster.local/ambit/node/n1', root: fp('a'), notAfter: 9_000 }, { identity: 'spiffe://cluster.local/ns/default/sa/web', root: fp('b'), notAfter: 8_000 }];
  await store.upsertNode('n1', { trustedRoots: [fp('a'), fp('b')], certificates: certs });
  await store.upsertNode('n1', { ackedRevision: 4 });
  t.strictSame(await store.getNode('n1'), { name: 'n1', registeredAt: 100, lastSeen: 0, ackedRevision: 4, nackedRevision: 0, nackReason: '', certExpiresAt: 0, hboneAddress: '', trustedRoots: [fp('a'), fp('b')], certificates: certs }, 'kept across an unrelated update');
  await store.close();

  // A database at schema v1 (before these columns) with a node in it.
  const old = dbPath(t);
  const raw = new Database(old);
  raw.exec(`CREATE TABLE schema_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
    INSERT INTO schema_version VALUES (1, 1);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID; INSERT INTO meta VALUES ('revision', 0);
    CREATE TABLE resources (kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, revision INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (kind, namespace, name)) WITHOUT ROWID;
    CREATE TABLE change_sets (revision INTEGER PRIMARY KEY);
    CREATE TABLE changes (revision INTEGER NOT NULL REFERENCES change_sets (revision) ON DELETE CASCADE, seq INTEGER NOT NULL, op TEXT NOT NULL, kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, body TEXT, PRIMARY KEY (revision, seq)) WITHOUT ROWID;
    CREATE TABLE tokens (id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, node TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, used_at INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
    CREATE TABLE nodes (name TEXT PRIMARY KEY, registered_at INTEGER NOT NULL, last_seen INTEGER NOT NULL, acked_revision INTEGER NOT NULL, nacked_revision INTEGER NOT NULL, nack_reason TEXT NOT NULL, cert_expires_at INTEGER NOT NULL, hbone_address TEXT NOT NULL DEFAULT '') WITHOUT ROWID;
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    INSERT INTO nodes VALUES ('legacy', 1, 2, 3, 0, '', 4, '10.0.0.1:15008');`);
  raw.close();
  const migrated = SqliteStore.open({ path: old });
  t.teardown(() => migrated.close());
  t.strictSame(await migrated.getNode('legacy'), { name: 'legacy', registeredAt: 1, lastSeen: 2, ackedRevision: 3, nackedRevision: 0, nackReason: '', certExpiresAt: 4, hboneAddress: '10.0.0.1:15008', trustedRoots: [], certificates: [] }, 'the v1 node reads with empty rotation facts');
});

t.test('settings', async (t) => {
  const store = open(t, { path: dbPath(t) });
  t.equal(await store.getSetting('k'), undefined);
  await store.putSetting('k', 'v1');
  await store.putSetting('k', 'v2');
  t.equal(await store.getSetting('k'), 'v2');
});

t.test('the database and its WAL are private (0600)', async (t) => {
  const dir = t.testdir();
  const file = path.join(dir, 'ambit.db');
  const store = open(t, { path: file });
  await store.commit([put(workload('a'))]);
  t.equal(fs.statSync(file).mode & 0o777, 0o600);
  t.equal(fs.statSync(`${file}-wal`).mode & 0o777, 0o600);

  const loose = path.join(dir, 'loose.db');
  fs.writeFileSync(loose, '');
  fs.chmodSync(loose, 0o644);
  open(t, { path: loose });
  t.equal(fs.statSync(loose).mode & 0o777, 0o600, 'an existing file is tightened');
});

t.test('schema version is recorded and a newer schema is refused', async (t) => {
  const file = dbPath(t);
  await SqliteStore.open({ path: file }).close();
  const raw = new Database(file);
  t.equal(raw.prepare('SELECT version FROM schema_version').pluck().get(), SCHEMA_VERSION);
  raw.prepare('UPDATE schema_version SET version = 99').run();
  raw.close();
  t.throws(() => SqliteStore.open({ path: file }), { code: 'AMBIT_ERR_STORE_IO', details: { version: 99 } });
  t.throws(() => SqliteStore.open({ path: path.join(t.testdir(), 'no', 'such', 'dir.db') }), { code: 'AMBIT_ERR_STORE_IO', cause: { code: 'ENOENT' } });
  t.throws(() => SqliteStore.open({ path: file, retainChangeSets: 0 }), { code: 'AMBIT_ERR_CONFIG_INVALID' });
});

t.test('SQLite failures surface as AMBIT_ERR_STORE_IO with the cause', async (t) => {
  const file = dbPath(t);
  const store = open(t, { path: file, busyTimeoutMs: 20 });
  const locker = new Database(file);
  t.teardown(() => locker.close());
  locker.exec('BEGIN IMMEDIATE');
  await t.rejects(store.commit([put(workload('a'))]), { code: 'AMBIT_ERR_STORE_IO', cause: { code: 'SQLITE_BUSY' } });
  t.equal((await store.snapshot()).revision, 0, 'readers are not blocked by a writer (WAL)');
  locker.exec('ROLLBACK');
  t.equal((await store.commit([put(workload('a'))])).revision, 1);
});

t.test('every call after close fails with AMBIT_ERR_STORE_IO', async (t) => {
  const store = SqliteStore.open({ path: dbPath(t) });
  await store.close();
  await store.close();
  const io = { code: 'AMBIT_ERR_STORE_IO' };
  await t.rejects(store.revision(), io);
  await t.rejects(store.snapshot(), io);
  await t.rejects(store.changesSince(0), io);
  await t.rejects(store.commit([put(workload('a'))]), io);
  await t.rejects(store.commit([]), io);
  await t.rejects(store.putToken(token('t', 's')), io);
  await t.rejects(store.consumeToken('t', 's', 0), io);
  await t.rejects(store.listTokens(), io);
  await t.rejects(store.upsertNode('n', {}), io);
  await t.rejects(store.upsertNodes(new Map([['n', {}]])), io);
  await t.rejects(store.upsertNodes(new Map()), io);
  await t.rejects(store.getNode('n'), io);
  await t.rejects(store.listNodes(), io);
  await t.rejects(store.getSetting('k'), io);
  await t.rejects(store.putSetting('k', 'v'), io);
  t.throws(() => store.subscribe(() => {}), io);
});

t.test('service ports keep appProtocol; a v2 database migrates its stored services to tcp, order kept', async (t) => {
  const file = dbPath(t);
  const store = SqliteStore.open({ path: file });
  const web = service('web');
  const multi: Service = { ...service('multi'), spec: { ...web.spec, ports: [
    { name: 'a', port: 80, targetPort: 8080, appProtocol: 'http' }, { name: 'b', port: 81, targetPort: 8081, appProtocol: 'grpc' },
    { name: 'c', port: 82, targetPort: 8082, appProtocol: 'http2' },
  ] } };
  await store.commit([put(web), put(multi)]);
  const kept = (await store.snapshot()).resources.find((r) => r.metadata.name === 'multi');
  t.same(kept?.kind === 'Service' && kept.spec.ports.map((p) => p.appProtocol), ['http', 'grpc', 'http2'], 'declared protocols are stored');
  await store.close();

  // What a v2 database holds: ports without appProtocol, in rows and in the retained history.
  const raw = new Database(file);
  for (const table of ['resources', 'changes']) {
    raw.exec(`UPDATE ${table} SET body = json_set(body, '$.spec.ports', json((SELECT json_group_array(json_remove(p.value, '$.appProtocol'))
      FROM (SELECT value FROM json_each(${table}.body, '$.spec.ports') ORDER BY key) AS p))) WHERE kind = 'Service'`);
  }
  t.notMatch(raw.prepare("SELECT body FROM resources WHERE name = 'multi'").pluck().get(), /appProtocol/, 'the v2 shape');
  raw.prepare('UPDATE schema_version SET version = 2').run();
  raw.close();

  const migrated = open(t, { path: file });
  const ports = (r: Resource | undefined): unknown => (r?.kind === 'Service' ? r.spec.ports.map((p) => [p.name, p.appProtocol]) : undefined);
  const snap = await migrated.snapshot();
  t.same(ports(snap.resources.find((r) => r.metadata.name === 'multi')), [['a', 'tcp'], ['b', 'tcp'], ['c', 'tcp']], 'rows: tcp, port order kept');
  t.same(ports(snap.resources.find((r) => r.metadata.name === 'web')), [['http', 'tcp']]);
  const history = await migrated.changesSince(0);
  const put0 = history?.[0]?.changes.find((c) => c.op === 'put' && c.resource.metadata.name === 'multi');
  t.same(ports(put0?.op === 'put' ? put0.resource : undefined), [['a', 'tcp'], ['b', 'tcp'], ['c', 'tcp']], 'history: tcp too');
  t.equal(snap.resources.length, 2, 'nothing lost');
});
