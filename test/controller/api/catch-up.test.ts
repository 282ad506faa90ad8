import t from 'tap';
import { CatchUp } from '../../../controller/api/catch-up.ts';
import { Registry } from '../../../controller/registry/registry.ts';
import type { Store } from '../../../controller/store/store.ts';
import type { ChangeSet, Workload } from '../../../shared/resources/types.ts';

function workload(name: string, address: string, revision: number): Workload {
  return {
    kind: 'Workload',
    metadata: { name, namespace: 'default', labels: {}, revision },
    spec: { serviceAccount: name, node: 'node-1', address, ports: [], weight: 1, locality: '', healthy: true },
  };
}
const put = (revision: number, name: string, address: string): ChangeSet => ({ revision, changes: [{ op: 'put', resource: workload(name, address, revision) }] });

/** A store whose changesSince is counted and answers from `sets` (undefined: it holds nothing that old). */
function countingStore(sets: readonly ChangeSet[] | undefined): { store: Store; reads: () => number } {
  let reads = 0;
  const store = {
    changesSince: async (revision: number) => {
      reads++;
      return sets?.filter((cs) => cs.revision > revision);
    },
  } as unknown as Store;
  return { store, reads: () => reads };
}

t.test('deltas come from the registry history without a store read, encoded once for every agent resuming from one revision', async (t) => {
  const reg = new Registry();
  reg.load(1, [workload('a', '10.0.0.1', 1)]);
  reg.applyChangeSet(put(2, 'b', '10.0.0.2'));
  reg.applyChangeSet(put(3, 'c', '10.0.0.3'));
  const { store, reads } = countingStore([]);
  const c = new CatchUp(reg, store);
  t.teardown(() => c.stop());
  const [x, y] = await Promise.all([c.deltasSince(1), c.deltasSince(1)]);
  t.equal(x?.length, 2);
  t.equal(x, y, 'the same encoded changes are shared');
  t.same(x?.map((ch) => (ch.change?.$case === 'put' && ch.change.put.kind?.$case === 'workload' ? ch.change.put.kind.workload.metadata?.name : '')), ['b', 'c']);
  t.same(await c.deltasSince(3), [], 'current');
  t.equal(reads(), 0, 'no store read');
  reg.applyChangeSet(put(4, 'd', '10.0.0.4'));
  const z = await c.deltasSince(1);
  t.not(z, x, 'a new revision drops what was kept');
  t.equal(z?.length, 3);
});

t.test('older than the history: the store answers once per revision; a failed read is not kept', async (t) => {
  const reg = new Registry();
  reg.load(5, [workload('a', '10.0.0.1', 5)]);
  const older = [put(4, 'a', '10.0.0.1'), put(5, 'a', '10.0.0.1')];
  const { store, reads } = countingStore(older);
  const c = new CatchUp(reg, store);
  t.teardown(() => c.stop());
  const [x, y] = await Promise.all([c.deltasSince(3), c.deltasSince(3)]);
  t.equal(x?.length, 2);
  t.equal(x, y);
  t.equal(reads(), 1, 'one read for both');

  let fail = true;
  const flaky = { changesSince: async () => (fail ? Promise.reject(new Error('etcd down')) : older) } as unknown as Store;
  const c2 = new CatchUp(reg, flaky);
  t.teardown(() => c2.stop());
  await t.rejects(c2.deltasSince(3), /etcd down/);
  await new Promise((r) => setImmediate(r));
  fail = false;
  t.equal((await c2.deltasSince(3))?.length, 2, 'tried again');

  const none = new CatchUp(reg, countingStore(undefined).store);
  t.teardown(() => none.stop());
  t.equal(await none.deltasSince(2), undefined, 'neither holds them: the agent needs a snapshot');
});

t.test('the whole-mesh snapshot is encoded once per revision and dropped when idle', async (t) => {
  const reg = new Registry();
  reg.load(1, [workload('a', '10.0.0.1', 1), workload('b', '10.0.0.2', 1)]);
  const c = new CatchUp(reg, countingStore([]).store, 50);
  t.teardown(() => c.stop());
  const s1 = c.snapshot();
  t.equal(s1.length, 2);
  t.equal(c.snapshot(), s1, 'shared at one revision');
  await new Promise((r) => setTimeout(r, 120));
  t.not(c.snapshot(), s1, 'idle: encoded again');
  reg.applyChangeSet(put(2, 'c', '10.0.0.3'));
  t.equal(c.snapshot().length, 3, 'a new revision: the new mesh');
});
