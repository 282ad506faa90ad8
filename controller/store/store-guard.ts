import { existsSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { AmbitError } from '../../shared/errors.ts';
import { writeFileAtomic } from '../../shared/files.ts';
import type { Logger } from '../../shared/logger.ts';

/**
 * A controller whose store was lost (deleted, truncated to 0 bytes, swapped
 * for another one) but whose CA survived would otherwise start a new store at
 * revision 0 and serve that empty mesh, under the old CA, to every agent. The
 * data directory therefore records which store it was used with, and the
 * controller refuses to start on a mismatch unless the operator says
 * --reinitialize-store.
 */
export interface StorePaths {
  readonly dataDir: string;
  /** The SQLite file. */
  readonly db: string;
  /** The CA directory: its presence means this data directory has served before. */
  readonly caDir: string;
  /** Where the identity of the store used with this CA is recorded. */
  readonly storeIdFile: string;
}

export function storePaths(dataDir: string): StorePaths {
  return { dataDir, db: join(dataDir, 'ambit.db'), caDir: join(dataDir, 'ca'), storeIdFile: join(dataDir, 'store-id') };
}

const hasCa = (p: StorePaths): boolean => existsSync(join(p.caDir, 'bundle.pem'));

function mismatch(p: StorePaths, what: string): AmbitError {
  return new AmbitError('AMBIT_ERR_STORE_MISMATCH',
    `${p.caDir} holds a CA but ${what}; refusing to start a new, empty mesh under the old CA. Restore ${p.db} from a backup, or start with --reinitialize-store to begin a new store (agents keep their cached state and refuse the new store until told to accept it)`,
    { details: { store: p.db, ca: p.caDir, storeIdFile: p.storeIdFile } });
}

/**
 * Before the store is opened: a data directory with a CA and a missing or
 * empty (0-byte) store file is refused. With `reinitialize`, the empty file
 * and any WAL left beside it are removed, so SQLite starts a clean store
 * rather than replaying old frames onto an empty one.
 */
export function checkStoreBeforeOpen(p: StorePaths, reinitialize: boolean, logger: Logger): void {
  if (!hasCa(p)) return;
  const size = existsSync(p.db) ? statSync(p.db).size : -1;
  if (size > 0) return;
  const what = size < 0 ? `the store ${p.db} does not exist` : `the store ${p.db} is empty (0 bytes)`;
  if (!reinitialize) throw mismatch(p, what);
  logger.warn({ store: p.db, ca: p.caDir }, `${what}: --reinitialize-store given, starting a new store`);
  for (const f of [p.db, `${p.db}-wal`, `${p.db}-shm`]) rmSync(f, { force: true });
}

/**
 * After the store is opened: its identity must be the one recorded with this
 * CA. The first start with a CA (or one from before identities were recorded)
 * records it; `reinitialize` records the new one.
 */
export function checkStoreIdentity(p: StorePaths, identity: string, reinitialize: boolean, logger: Logger): void {
  let recorded: string | undefined;
  try {
    recorded = readFileSync(p.storeIdFile, 'utf8').trim() || undefined;
  } catch {
    recorded = undefined;
  }
  if (recorded === identity) return;
  if (recorded !== undefined && hasCa(p) && !reinitialize) throw mismatch(p, `the store ${p.db} has identity ${identity}, not ${recorded} recorded in ${p.storeIdFile}`);
  if (recorded !== undefined) logger.warn({ store: p.db, was: recorded, now: identity }, 'store identity changed (--reinitialize-store); agents will refuse its state until told to accept it');
  writeFileAtomic(p.storeIdFile, `${identity}\n`);
}
