/**
 * EtcdStore.upsertNodes on a real etcd member that keeps etcd's default
 * limits (--max-txn-ops 128, --max-request-bytes 1.5 MiB): batches larger
 * than one transaction may hold, merge semantics, and compare-and-swap
 * against other replicas writing the same records.
 */
import t from 'tap';
import { Etcd3 } from 'etcd3';
import { InterceptingCall, type Interceptor } from '@grpc/grpc-js';
import { createLogger } from '../../../shared/logger.ts';
import { EtcdStore } from '../../../controller/store/etcd-store.ts';
import type { NodeFields } from '../../../controller/store/store.ts';
import { EtcdCluster } from '../../e2e/fixtures/etcd-cluster.ts';

// Block 127.0.140.x.
const HOST = '127.0.140.10';
const logger = createLogger({ name: 'test', level: 'silent' });

const cluster = new EtcdCluster({ hosts: [HOST], dir: t.testdir() + '/etcd', defaultLimits: true });
await cluster.start();
t.teardown(() => cluster.stop());

/** Counts the etcd calls a store makes, and can run something just before a compare-and-swap transaction is sent. */
class CallTap {
  readonly calls: string[] = [];
  /** Runs (and is awaited) before the next transaction that carries compares; returns whether to stay armed. */
  beforeSwap: (() => Promise<boolean>) | undefined;

  readonly interceptor: Interceptor = (options, nextCall) => {
    const method = String(options.method_definition.path).split('/').pop() ?? '';
    this.calls.push(method);
    if (method !== 'Txn') return new InterceptingCall(nextCall(options));
    return new InterceptingCall(nextCall(options), {
      sendMessage: (message: { compare?: unknown[] }, next) => {
        const hook = this.beforeSwap;
        if (hook === undefined || (message.compare?.length ?? 0) === 0) return next(message);
        void hook().then((again) => {
          if (!again) this.beforeSwap = undefined;
          next(message);
        });
      },
    });
  };

  count(method: string): number {
    return this.calls.filter((c) => c === method).length;
  }
}

async function open(prefix: string, tap?: CallTap, now?: () => number): Promise<EtcdStore> {
  const store = await EtcdStore.open({
    client: { hosts: cluster.endpoints.split(','), ...(tap ? { grpcOptions: { interceptors: [tap.interceptor] } as never } : {}) },
    prefix, logger, onFatal: () => undefined, ...(now ? { now } : {}),
  });
  t.teardown(() => store.close());
  return store;
}

const names = (n: number, from = 0): string[] => Array.from({ length: n }, (_, i) => `node-${String(from + i).padStart(4, '0')}`);

t.test('250 nodes in one call: merged into existing records, created otherwise, three chunks of one read and one swap each', async (t) => {
  const prefix = '/many/';
  const tap = new CallTap();
  const store = await open(prefix, tap, () => 1_000);
  // 30 existing records with fields the batch does not touch.
  for (const name of names(30)) await store.upsertNode(name, { hboneAddress: `${name}:15008`, ackedRevision: 1, lastSeen: 5 });
  const updates = new Map<string, NodeFields>(names(250).map((name, i) => [name, { ackedRevision: 2 + i, lastSeen: 10 }]));
  tap.calls.length = 0;
  await store.upsertNodes(updates);
  t.equal(tap.count('Txn'), 6, 'ceil(250 / 100) chunks, each one read transaction and one compare-and-swap transaction');
  t.equal(tap.count('Range'), 0, 'no per-node read');
  const nodes = await store.listNodes();
  t.equal(nodes.length, 250);
  t.match(nodes[0], { name: 'node-0000', registeredAt: 1_000, hboneAddress: 'node-0000:15008', ackedRevision: 2, lastSeen: 10 }, 'an existing record keeps the fields not given');
  t.match(nodes[249], { name: 'node-0249', registeredAt: 1_000, hboneAddress: '', ackedRevision: 251, lastSeen: 10, certificates: [] }, 'a new record is complete');
  t.ok(nodes.every((n, i) => n.ackedRevision === 2 + i && n.hboneAddress === (i < 30 ? `${n.name}:15008` : '')), 'every record has its fields');
  tap.calls.length = 0;
  await store.upsertNodes(new Map());
  t.equal(tap.calls.length, 0, 'an empty batch makes no call');
});

t.test('records too large for one request together are split across transactions', async (t) => {
  const store = await open('/large/');
  // 100 records of ~20 KB each: 2 MB, over etcd's default 1.5 MiB request limit.
  const certificates = Array.from({ length: 130 }, (_, i) => ({ identity: `spiffe://cluster.local/ns/default/sa/workload-${i}`, root: 'a'.repeat(64), notAfter: 9_000 + i }));
  await store.upsertNodes(new Map(names(100).map((name) => [name, { certificates }])));
  const nodes = await store.listNodes();
  t.equal(nodes.length, 100);
  t.ok(nodes.every((n) => n.certificates.length === 130), 'every record is written whole');
});

t.test('a record another replica writes between the read and the swap is re-read: neither loses a field', async (t) => {
  const prefix = '/cas/';
  const tap = new CallTap();
  const a = await open(prefix, tap);
  const b = await open(prefix);
  await a.upsertNodes(new Map(names(3).map((name) => [name, { lastSeen: 1 }])));
  let raced = 0;
  tap.beforeSwap = async () => {
    raced++;
    await b.upsertNode('node-0001', { certExpiresAt: 99, hboneAddress: '10.0.0.1:15008' });
    return false;
  };
  tap.calls.length = 0;
  await a.upsertNodes(new Map(names(3).map((name) => [name, { ackedRevision: 7 }])));
  t.equal(raced, 1, 'the other replica wrote between the read and the swap');
  t.equal(tap.count('Txn'), 4, 'the chunk was read and swapped again');
  t.match(await a.getNode('node-0001'), { ackedRevision: 7, certExpiresAt: 99, hboneAddress: '10.0.0.1:15008', lastSeen: 1 });
  t.match(await a.getNode('node-0002'), { ackedRevision: 7, lastSeen: 1 });
});

t.test('two replicas racing upsertNodes on overlapping nodes lose no field', async (t) => {
  const prefix = '/race/';
  const a = await open(prefix);
  const b = await open(prefix);
  // a writes nodes 0-149, b nodes 50-199: 100 in common, each round's fields its own.
  const rounds = 5;
  await Promise.all([
    (async () => {
      for (let r = 1; r <= rounds; r++) await a.upsertNodes(new Map(names(150, 0).map((name) => [name, { ackedRevision: r }])));
    })(),
    (async () => {
      for (let r = 1; r <= rounds; r++) await b.upsertNodes(new Map(names(150, 50).map((name) => [name, { certExpiresAt: r, trustedRoots: [String(r).repeat(64).slice(0, 64)] }])));
    })(),
  ]);
  const nodes = await a.listNodes();
  t.equal(nodes.length, 200);
  const wrong = nodes.filter((n, i) =>
    n.ackedRevision !== (i < 150 ? rounds : 0) || n.certExpiresAt !== (i >= 50 ? rounds : 0));
  t.same(wrong.map((n) => n.name), [], 'each node holds the last fields of both replicas');
});

t.test('retries are bounded: a record changed before every swap fails with a conflict naming it, and the store stays usable', async (t) => {
  const prefix = '/bounded/';
  const tap = new CallTap();
  const a = await open(prefix, tap);
  const b = await open(prefix);
  let raced = 0;
  tap.beforeSwap = async () => {
    raced++;
    await b.upsertNode('node-0000', { lastSeen: raced });
    return true;
  };
  const err = await a.upsertNodes(new Map([['node-0000', { ackedRevision: 3 }]])).then(() => undefined, (e: unknown) => e);
  tap.beforeSwap = undefined;
  t.match(err, { code: 'AMBIT_ERR_RESOURCE_CONFLICT', message: /node records node-0000 were changed by other replicas 20 times/ });
  t.equal(raced, 20);
  t.equal((await a.getNode('node-0000'))?.ackedRevision, 0, 'the failed write wrote nothing');
  await a.upsertNodes(new Map([['node-0000', { ackedRevision: 3 }]]));
  t.match(await b.getNode('node-0000'), { ackedRevision: 3, lastSeen: 20 });
  await a.close();
  await t.rejects(a.upsertNodes(new Map([['node-0000', {}]])), { code: 'AMBIT_ERR_STORE_IO' }, 'a closed store refuses');
});

t.test('which nodes watch from a replica: written 100 to a transaction under its lease, seen by the others, put again on a new lease when it is lost', async (t) => {
  const prefix = '/watching/';
  const tap = new CallTap();
  const a = await open(prefix, tap);
  const b = await open(prefix);
  tap.calls.length = 0;
  await a.markConnectedNodes(new Map(names(150).map((name) => [name, true])));
  t.equal(tap.count('Txn'), 2, 'two transactions for 150 nodes');
  t.equal(tap.count('Put'), 0, 'no per-node put');
  t.same([...await b.connectedNodes()].sort(), names(150));
  await a.markConnectedNodes(new Map([...names(100).map((name) => [name, false] as const), ['node-0500', true]]));
  t.same([...await b.connectedNodes()].sort(), [...names(50, 100), 'node-0500']);

  // The lease goes (as when etcd forgot it while the replica was cut off): the replica puts its records again on a new one.
  const raw = new Etcd3({ hosts: cluster.endpoints.split(',') });
  t.teardown(() => raw.close());
  const leases = (await raw.leaseClient.leaseLeases()).leases;
  for (const l of leases) await raw.leaseClient.leaseRevoke({ ID: l.ID });
  t.same([...await b.connectedNodes()], [], 'the records went with the lease');
  await a.markConnectedNodes(new Map([['node-0600', true]])).catch(() => undefined);
  const deadline = Date.now() + 10_000;
  let now: string[] = [];
  while (Date.now() < deadline) {
    now = [...await b.connectedNodes()].sort();
    if (now.length === 52) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  t.same(now, [...names(50, 100), 'node-0500', 'node-0600'], 'every node watching from the replica is recorded again');
});
