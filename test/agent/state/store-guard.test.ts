// The agent's rule for taking controller state (agent/state/store-guard.ts):
// another store identity, or a revision behind the held one from the same
// store, is refused with a reason unless the operator accepts that store.
import t from 'tap';
import { checkUpdate } from '../../../agent/state/store-guard.ts';
import { AmbitError } from '../../../shared/errors.ts';

const A = 'store-a';
const B = 'store-b';

const refusal = (f: () => void): { reason: unknown; message: string } | undefined => {
  try {
    f();
    return undefined;
  } catch (err) {
    if (!(err instanceof AmbitError) || err.code !== 'AMBIT_ERR_STATE_REFUSED') throw err;
    return { reason: err.details.reason, message: err.message };
  }
};

t.test('same store moving forward (or staying) is taken', async (t) => {
  t.equal(refusal(() => checkUpdate({ storeId: A, revision: 7 }, { storeId: A, revision: 7, snapshot: true }, undefined)), undefined);
  t.equal(refusal(() => checkUpdate({ storeId: A, revision: 7 }, { storeId: A, revision: 9, snapshot: false }, undefined)), undefined);
});

t.test('another store identity is refused, naming both and the way out', async (t) => {
  const r = refusal(() => checkUpdate({ storeId: A, revision: 7 }, { storeId: B, revision: 0, snapshot: true }, undefined));
  t.equal(r?.reason, 'store_identity');
  t.match(r?.message, `refusing state from store ${B} (revision 0): this agent serves state of store ${A} at revision 7`);
  t.match(r?.message, `--accept-store ${B}`);
  t.equal(refusal(() => checkUpdate({ storeId: A, revision: 7 }, { storeId: B, revision: 100, snapshot: false }, undefined))?.reason, 'store_identity', 'deltas too, whatever their revision');
});

t.test('the same store behind the held revision is refused (a restored backup)', async (t) => {
  const r = refusal(() => checkUpdate({ storeId: A, revision: 7 }, { storeId: A, revision: 6, snapshot: true }, undefined));
  t.equal(r?.reason, 'revision_behind');
  t.match(r?.message, 'a snapshot of store store-a at revision 6, behind the revision 7');
});

t.test('--accept-store takes that store either way, and only that one', async (t) => {
  t.equal(refusal(() => checkUpdate({ storeId: A, revision: 7 }, { storeId: B, revision: 0, snapshot: true }, B)), undefined);
  t.equal(refusal(() => checkUpdate({ storeId: A, revision: 7 }, { storeId: A, revision: 1, snapshot: true }, A)), undefined);
  t.equal(refusal(() => checkUpdate({ storeId: A, revision: 7 }, { storeId: B, revision: 0, snapshot: true }, 'store-c'))?.reason, 'store_identity');
});

t.test('no identity held (first start, old cache) or none sent (old controller): not judged', async (t) => {
  t.equal(refusal(() => checkUpdate({ storeId: '', revision: 7 }, { storeId: B, revision: 0, snapshot: true }, undefined)), undefined);
  t.equal(refusal(() => checkUpdate({ storeId: A, revision: 7 }, { storeId: '', revision: 0, snapshot: true }, undefined)), undefined);
});
