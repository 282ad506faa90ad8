// The controller's refusal to start a new store under an old CA
// (controller/store/store-guard.ts), and the SQLite store's identity.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { checkStoreBeforeOpen, checkStoreIdentity, storePaths } from '../../../controller/store/store-guard.ts';
import { SqliteStore } from '../../../controller/store/sqlite-store.ts';
import { createLogger } from '../../../shared/logger.ts';

const silent = createLogger({ name: 'test', level: 'silent' });

function dataDir(t: { testdir(): string }, withCa: boolean): ReturnType<typeof storePaths> {
  const dir = t.testdir();
  if (withCa) {
    fs.mkdirSync(path.join(dir, 'ca'));
    fs.writeFileSync(path.join(dir, 'ca', 'bundle.pem'), 'x');
  }
  return storePaths(dir);
}

t.test('the SQLite store gets a random identity when created and keeps it across reopen', async (t) => {
  const p = storePaths(t.testdir());
  const s1 = SqliteStore.open({ path: p.db });
  const id = await s1.identity();
  t.match(id, /^[0-9a-f-]{36}$/);
  await s1.close();
  const s2 = SqliteStore.open({ path: p.db });
  t.equal(await s2.identity(), id, 'same file, same identity');
  await s2.close();
  const other = SqliteStore.open({ path: path.join(path.dirname(p.db), 'other.db') });
  t.not(await other.identity(), id, 'another store, another identity');
  await other.close();
});

t.test('a fresh data directory (no CA) starts and records its store', async (t) => {
  const p = dataDir(t, false);
  t.doesNotThrow(() => checkStoreBeforeOpen(p, false, silent));
  checkStoreIdentity(p, 'id-1', false, silent);
  t.equal(fs.readFileSync(p.storeIdFile, 'utf8').trim(), 'id-1');
});

for (const how of ['missing', 'emptied (0 bytes)'] as const) {
  t.test(`a CA with its store ${how} is refused, naming both paths; --reinitialize-store starts a new one`, async (t) => {
    const p = dataDir(t, true);
    if (how !== 'missing') {
      fs.writeFileSync(p.db, '');
      fs.writeFileSync(`${p.db}-wal`, 'old frames');
    }
    t.throws(() => checkStoreBeforeOpen(p, false, silent), { code: 'AMBIT_ERR_STORE_MISMATCH', message: new RegExp(`${p.caDir} holds a CA but the store ${p.db} (does not exist|is empty \\(0 bytes\\))`), details: { store: p.db, ca: p.caDir } });
    if (how !== 'missing') t.ok(fs.existsSync(p.db), 'a refusal changes nothing');
    checkStoreBeforeOpen(p, true, silent);
    t.notOk(fs.existsSync(p.db) || fs.existsSync(`${p.db}-wal`), 'reinitializing removes the empty file and its WAL');
  });
}

t.test('a store with another identity than the one recorded with the CA is refused unless reinitializing', async (t) => {
  const p = dataDir(t, true);
  checkStoreIdentity(p, 'id-1', false, silent);
  t.doesNotThrow(() => checkStoreIdentity(p, 'id-1', false, silent), 'the recorded store');
  t.throws(() => checkStoreIdentity(p, 'id-2', false, silent), { code: 'AMBIT_ERR_STORE_MISMATCH', message: /has identity id-2, not id-1 recorded in/ });
  checkStoreIdentity(p, 'id-2', true, silent);
  t.equal(fs.readFileSync(p.storeIdFile, 'utf8').trim(), 'id-2', '--reinitialize-store records the new store');
});
