/**
 * NodeTracker's write-behind: node record fields batched per flush, writes
 * callers rely on flushed at once, failed flushes kept and retried, and a
 * final flush at shutdown. A fake store counts the writes.
 */
import t from 'tap';
import { createLogger } from '../../../shared/logger.ts';
import { NodeTracker } from '../../../controller/registry/node-tracker.ts';
import { mergeNodeRecord, newNodeRecord } from '../../../controller/store/node-record.ts';
import type { NodeFields, NodeRecord, Store } from '../../../controller/store/store.ts';

const ROOT = 'a'.repeat(64);

/** The node-record part of a Store, in memory: counts upsertNodes calls, can hold one back or fail it. */
class FakeNodeStore {
  readonly records = new Map<string, NodeRecord>();
  readonly batches: Map<string, NodeFields>[] = [];
  upsertNodeCalls = 0;
  /** Calls to fail before succeeding again. */
  failures = 0;
  /** When set, writes wait for it. */
  gate: Promise<void> | undefined;
  #written: (() => void)[] = [];

  async upsertNodes(updates: ReadonlyMap<string, NodeFields>): Promise<void> {
    this.batches.push(new Map(updates));
    await this.gate;
    if (this.failures > 0) {
      this.failures--;
      throw new Error('etcd unavailable');
    }
    for (const [name, fields] of updates) this.records.set(name, mergeNodeRecord(name, this.records.get(name) ?? newNodeRecord(name, 0), fields));
    for (const w of this.#written.splice(0)) w();
  }

  async upsertNode(): Promise<NodeRecord> {
    this.upsertNodeCalls++;
    throw new Error('the tracker writes through upsertNodes');
  }

  async listNodes(): Promise<readonly NodeRecord[]> {
    return [...this.records.values()];
  }

  /** Resolves after the next successful write. */
  written(): Promise<void> {
    return new Promise((resolve) => this.#written.push(resolve));
  }

  asStore(): Store {
    return this as unknown as Store;
  }
}

/** A shared store (etcd): also records which nodes watch from this replica. */
class SharedFakeNodeStore extends FakeNodeStore {
  readonly connectedCalls: Map<string, boolean>[] = [];
  connectedFailures = 0;

  async markConnectedNodes(states: ReadonlyMap<string, boolean>): Promise<void> {
    this.connectedCalls.push(new Map(states));
    if (this.connectedFailures > 0) {
      this.connectedFailures--;
      throw new Error('lease lost');
    }
  }
}

/** The tracker's flush timer is unref'd (it must not keep a controller alive), so the test keeps the process alive while it awaits a timed flush. */
async function timed<T>(p: Promise<T>): Promise<T> {
  const keep = setInterval(() => undefined, 1_000);
  try {
    return await p;
  } finally {
    clearInterval(keep);
  }
}

function setup<S extends FakeNodeStore = FakeNodeStore>(flushMs: number, clock = { now: 1_000 }, store: S = new FakeNodeStore() as S): { store: S; nodes: NodeTracker; warnings: Record<string, unknown>[]; clock: { now: number } } {
  const warnings: Record<string, unknown>[] = [];
  const logger = createLogger({ name: 'test', level: 'warn', destination: { write: (line: string) => void warnings.push(JSON.parse(line) as Record<string, unknown>) } });
  const nodes = new NodeTracker({ store: store.asStore(), now: () => clock.now, logger, flushMs });
  t.teardown(() => nodes.close().catch(() => undefined));
  return { store, nodes, warnings, clock };
}

t.test('acks, nacks and seen of 1,000 nodes within one flush window are one upsertNodes call; later fields win per field', async (t) => {
  const { store, nodes } = setup(50);
  const written = store.written();
  for (let i = 0; i < 1_000; i++) {
    await nodes.seen(`n${i}`, { certExpiresAt: 5_000 });
    await nodes.ack(`n${i}`, 7, 6_000, [ROOT]);
  }
  await nodes.nack('n1', 8, 'bad route');
  await nodes.ack('n2', 8, 0);
  t.equal(store.batches.length, 0, 'nothing written before the flush');
  await timed(written);
  t.equal(store.batches.length, 1, 'one write');
  t.equal(store.batches[0]!.size, 1_000, 'of every node');
  t.equal(store.upsertNodeCalls, 0);
  t.strictSame(store.batches[0]!.get('n0'), { lastSeen: 1_000, certExpiresAt: 6_000, ackedRevision: 7, nackedRevision: 0, nackReason: '', trustedRoots: [ROOT] });
  t.match(store.records.get('n1'), { ackedRevision: 7, nackedRevision: 8, nackReason: 'bad route', certExpiresAt: 6_000, trustedRoots: [ROOT] }, 'a nack after an ack keeps the ack\'s other fields');
  t.match(store.records.get('n2'), { ackedRevision: 8, certExpiresAt: 6_000 }, 'an ack without an expiry keeps the last one');
  await nodes.flush();
  t.equal(store.batches.length, 1, 'a flush with nothing pending writes nothing');
});

t.test('seen() without fields keeps its throttle; node list shows fields not written yet', async (t) => {
  const { store, nodes, clock } = setup(60_000);
  store.records.set('n1', newNodeRecord('n1', 1));
  await nodes.seen('n1');
  clock.now = 2_000;
  await nodes.seen('n1');
  await nodes.ack('n1', 4, 0);
  t.match(await nodes.list(), [{ name: 'n1', lastSeen: 2_000, ackedRevision: 4, connected: false }], 'this replica\'s pending fields show at once');
  t.equal(store.records.get('n1')?.ackedRevision, 0, 'though not written yet');
  await nodes.flush();
  t.strictSame(store.batches, [new Map([['n1', { lastSeen: 2_000, ackedRevision: 4, nackedRevision: 0, nackReason: '' }]])]);
  clock.now = 5_000;
  await nodes.seen('n1');
  await nodes.flush();
  t.equal(store.batches.length, 1, 'a fields-less seen within the throttle (10 s) writes nothing');
  clock.now = 12_001;
  await nodes.seen('n1');
  await nodes.flush();
  t.strictSame(store.batches[1], new Map([['n1', { lastSeen: 12_001 }]]), 'after it, lastSeen is written');
});

t.test('issued() and setEndpoint() resolve only once their record is written, without waiting for the flush timer', async (t) => {
  const { store, nodes } = setup(60_000);
  let open!: () => void;
  store.gate = new Promise((resolve) => (open = resolve));
  await nodes.ack('n1', 3, 0);
  let issued = false;
  const p = nodes.issued('n1', { identity: 'spiffe://cluster.local/ambit/node/n1', root: ROOT, notAfter: 9_000 }).then(() => (issued = true));
  let notified = 0;
  nodes.onEndpointsChange(() => notified++);
  let endpointSet = false;
  const e = nodes.setEndpoint('n2', '127.0.140.2:15008').then(() => (endpointSet = true));
  await new Promise((r) => setImmediate(r));
  t.equal(store.batches.length, 1, 'written at once (the timer is a minute away)');
  t.notOk(issued, 'issued() waits for the write');
  t.notOk(endpointSet, 'setEndpoint() too');
  t.equal(notified, 0, 'listeners hear of the address once it is written');
  open();
  await p;
  await e;
  t.ok(issued);
  t.equal(notified, 1);
  t.match(store.records.get('n1'), { ackedRevision: 3, certificates: [{ identity: 'spiffe://cluster.local/ambit/node/n1', root: ROOT, notAfter: 9_000 }] }, 'with the fields queued before it');
  t.match(store.records.get('n2'), { hboneAddress: '127.0.140.2:15008' });
  t.ok(store.batches.length <= 2, `writes queued while one is under way go together (${store.batches.length} writes)`);
});

t.test('a failed flush is logged and its fields kept (newer ones win) for the next one: nothing is lost', async (t) => {
  const { store, nodes, warnings } = setup(20);
  store.failures = 1;
  await nodes.ack('n1', 5, 0, [ROOT]);
  await nodes.ack('n2', 5, 0);
  await t.rejects(nodes.flush(), /etcd unavailable/, 'flush() reports the failure');
  t.match(warnings, [{ msg: 'writing node records failed; retrying with the next flush', err: 'etcd unavailable', nodes: 2 }]);
  t.equal(store.records.size, 0);
  // Newer fields arrive before the retry.
  await nodes.ack('n1', 6, 0);
  await nodes.nack('n3', 6, 'refused');
  const written = store.written();
  await timed(written); // by the timer, rescheduled after the failure
  t.equal(store.batches.length, 2);
  t.match(store.records.get('n1'), { ackedRevision: 6, trustedRoots: [ROOT] }, 'the newer revision wins; the failed write\'s other fields are kept');
  t.match(store.records.get('n2'), { ackedRevision: 5 }, 'a node with nothing newer is written from the failed batch');
  t.match(store.records.get('n3'), { nackedRevision: 6, nackReason: 'refused' });

  // issued() whose write fails rejects, and its certificate is still written by a later flush.
  store.failures = 1;
  await t.rejects(nodes.issued('n4', { identity: 'spiffe://cluster.local/ambit/node/n4', root: ROOT, notAfter: 9_000 }), /etcd unavailable/);
  await timed(store.written());
  t.match(store.records.get('n4'), { certificates: [{ identity: 'spiffe://cluster.local/ambit/node/n4' }] });
});

t.test('close() writes what is pending at once', async (t) => {
  const { store, nodes } = setup(60_000);
  await nodes.ack('n1', 9, 0);
  await nodes.nack('n2', 9, 'no');
  await nodes.close();
  t.equal(store.batches.length, 1, 'one write at close, without waiting for the flush timer');
  t.match(store.records.get('n1'), { ackedRevision: 9 });
  t.match(store.records.get('n2'), { nackedRevision: 9 });
});

t.test('list() shows the pending and in-flight fields over the stored record', async (t) => {
  const { store, nodes } = setup(60_000);
  store.records.set('n1', newNodeRecord('n1', 1));
  let open!: () => void;
  store.gate = new Promise((resolve) => (open = resolve));
  await nodes.ack('n1', 2, 0);
  const flushing = nodes.flush();
  await new Promise((r) => setImmediate(r));
  await nodes.nack('n1', 3, 'later');
  t.match(await nodes.list(), [{ name: 'n1', ackedRevision: 2, nackedRevision: 3, nackReason: 'later' }]);
  open();
  await flushing;
  await nodes.flush();
  t.match(store.records.get('n1'), { ackedRevision: 2, nackedRevision: 3, nackReason: 'later' });
});

t.test('with a shared store, which nodes watch from this replica goes with the flush: one call, the latest state of each node', async (t) => {
  const { store, nodes, warnings } = setup(60_000, { now: 1_000 }, new SharedFakeNodeStore());
  const calls = store.connectedCalls;
  nodes.streamOpened('n1');
  nodes.streamClosed('n1');
  nodes.streamOpened('n1');
  nodes.streamOpened('n2');
  nodes.streamOpened('n2');
  nodes.streamClosed('n2');
  nodes.streamOpened('n3');
  nodes.streamClosed('n3');
  t.ok(nodes.isConnected('n1') && nodes.isConnected('n2') && !nodes.isConnected('n3'), 'this replica knows at once');
  t.equal(calls.length, 0, 'nothing written before the flush');
  await nodes.flush();
  t.strictSame(calls, [new Map([['n1', true], ['n2', true], ['n3', false]])], 'a close followed by an open is written as open');
  t.equal(store.batches.length, 0, 'no node record to write');

  // A failed write is kept (newer states win) and does not fail the records' flush.
  store.connectedFailures = 1;
  nodes.streamClosed('n1');
  nodes.streamOpened('n4');
  await nodes.issued('n2', { identity: 'spiffe://cluster.local/ambit/node/n2', root: ROOT, notAfter: 9_000 });
  t.match(warnings, [{ msg: 'writing which nodes watch from this replica failed; retrying with the next flush', err: 'lease lost', nodes: 2 }]);
  t.ok(store.records.has('n2'), 'the record was written all the same');
  nodes.streamOpened('n1');
  await nodes.flush();
  t.strictSame(calls.at(-1), new Map([['n1', true], ['n4', true]]), 'retried, the newer state winning');
});

t.test('with a store that does not share connections (SQLite), a flush writes none', async (t) => {
  const { store, nodes } = setup(60_000);
  nodes.streamOpened('n1');
  await nodes.close();
  t.equal(store.batches.length, 0);
  t.ok(nodes.isConnected('n1'));
});

t.test('a record coming back through the watch does not take back certificates or an address not yet written', async (t) => {
  const { store, nodes } = setup(60_000, { now: 1_000 }, new SharedFakeNodeStore());
  const cert = (i: string): { identity: string; root: string; notAfter: number } => ({ identity: `spiffe://cluster.local/ns/default/sa/${i}`, root: ROOT, notAfter: 9_000 });
  await nodes.issued('n1', cert('a'));
  await nodes.setEndpoint('n1', '127.0.140.2:15008');
  const written = store.records.get('n1')!;
  let open!: () => void;
  store.gate = new Promise((resolve) => (open = resolve));
  // b is being written when a's record (older) arrives from the store's watch.
  const b = nodes.issued('n1', cert('b'));
  const moved = nodes.setEndpoint('n1', '127.0.140.3:15008');
  nodes.recordChanged(written);
  const c = nodes.issued('n1', cert('c'));
  open();
  await Promise.all([b, moved, c]);
  t.same(store.records.get('n1')?.certificates.map((x) => x.identity.split('/').pop()), ['a', 'b', 'c'], 'no certificate lost');
  t.same(nodes.endpoints(), [{ name: 'n1', hboneAddress: '127.0.140.3:15008' }], 'the newer address kept');
  // Once written, a record from elsewhere replaces them as before.
  nodes.recordChanged({ ...written, certificates: [cert('d')], hboneAddress: '127.0.140.4:15008' });
  t.same((await nodes.list())[0]?.certificates.map((x) => x.identity.split('/').pop()), ['d']);
  t.same(nodes.endpoints(), [{ name: 'n1', hboneAddress: '127.0.140.4:15008' }]);
});
