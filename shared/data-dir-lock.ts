import { accessSync, closeSync, constants, mkdirSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { AmbitError } from './errors.ts';

/** The lock itself: a SQLite file whose write lock the holder keeps for its whole life. */
export const LOCK_FILE = 'ambit.lock';
/** The holder's pid, written once it holds the lock; only read to name the holder in a refusal. */
export const LOCK_PID_FILE = 'ambit.lock.pid';

export interface DataDirLock {
  readonly path: string;
  /** False only on a read-only data directory, where a write lock cannot be taken (and nothing is written). */
  readonly held: boolean;
  /** Releases the lock (also released by the kernel when the process dies, however it dies). */
  close(): void;
}

function isBusy(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return code === 'SQLITE_BUSY' || code === 'SQLITE_LOCKED';
}

/** The directory cannot be written (a read-only mount, no permission): no write lock can be taken in it. */
function readOnly(dir: string): boolean {
  try {
    accessSync(dir, constants.W_OK);
    return false;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === 'EROFS' || code === 'EACCES';
  }
}

const NOT_HELD = (path: string): DataDirLock => ({ path, held: false, close: () => undefined });

function holderPid(dir: string): number | undefined {
  try {
    const pid = Number(readFileSync(join(dir, LOCK_PID_FILE), 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined; // the holder is between taking the lock and writing its pid
  }
}

/**
 * Takes the exclusive lock on a data directory, or throws
 * AMBIT_ERR_DATA_DIR_LOCKED naming the holder's pid. Two controllers (or two
 * agents) on one directory would each keep their own view of the files in it
 * and diverge.
 *
 * The lock is an OS advisory lock (POSIX fcntl) that SQLite takes on
 * `<dir>/ambit.lock`: an open `BEGIN IMMEDIATE` transaction holds its RESERVED
 * lock, and a second `BEGIN IMMEDIATE` from any process is refused at once
 * (busy timeout 0). The kernel drops the lock when the holder exits, even by
 * kill -9, so a crashed holder never blocks the next start and there is no
 * stale-lock guessing (pid liveness, pid reuse). better-sqlite3 is already the
 * controller's store, so no native addon is added for flock(2).
 */
export function lockDataDir(dir: string, pid = process.pid): DataDirLock {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const path = join(dir, LOCK_FILE);
  let db: Database.Database;
  try {
    db = new Database(path, { timeout: 0 });
  } catch (cause) {
    // An agent restarted on a read-only mount serves from its cache (docs/reliability.md, storage failures).
    if (readOnly(dir)) return NOT_HELD(path);
    throw new AmbitError('AMBIT_ERR_DATA_DIR_LOCKED', `cannot open the lock file ${path}: ${(cause as Error).message}`, { cause, details: { path } });
  }
  try {
    db.exec('BEGIN IMMEDIATE');
  } catch (cause) {
    db.close();
    if (!isBusy(cause) && readOnly(dir)) return NOT_HELD(path);
    if (!isBusy(cause)) {
      throw new AmbitError('AMBIT_ERR_DATA_DIR_LOCKED', `cannot lock ${path}: ${(cause as Error).message}`, { cause, details: { path } });
    }
    const holder = holderPid(dir);
    throw new AmbitError(
      'AMBIT_ERR_DATA_DIR_LOCKED',
      `data directory ${dir} is in use by another process (pid ${holder ?? 'unknown'}); two processes on one data directory diverge: stop that one or use another --data-dir`,
      { cause, details: { path, pid: holder } },
    );
  }
  // Written in place (not renamed over): only this holder writes it now. On a
  // directory that is read-only apart from the lock it cannot be: the lock
  // still holds; a second process is refused without the holder's pid.
  const pidPath = join(dir, LOCK_PID_FILE);
  try {
    const fd = openSync(pidPath, 'w', 0o644);
    try {
      writeSync(fd, `${pid}\n`);
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    if (!readOnly(dir)) {
      db.exec('ROLLBACK');
      db.close();
      throw new AmbitError('AMBIT_ERR_DATA_DIR_LOCKED', `cannot write ${pidPath}: ${(err as Error).message}`, { cause: err, details: { path: pidPath } });
    }
  }
  let closed = false;
  return {
    path,
    held: true,
    close: () => {
      if (closed) return;
      closed = true;
      try {
        unlinkSync(pidPath);
      } catch {
        // already gone: nothing names this holder any more
      }
      db.exec('ROLLBACK');
      db.close();
    },
  };
}
