import { ChangeFeed } from './change-feed.ts';
import fs from 'node:fs';
import { randomUUID, timingSafeEqual } from 'node:crypto';
import Database from 'better-sqlite3';
import { AmbitError, errorMessage } from '../../shared/errors.ts';
import { keyString, resourceKey } from '../../shared/resources/types.ts';
import type { Resource } from '../../shared/resources/types.ts';
import type { Change, ChangeSet, NodeFields, NodeRecord, Snapshot, Store, TokenRecord } from './store.ts';
import { mergeNodeRecord, newNodeRecord } from './node-record.ts';
import { changeSetsFromRows, migrate, nodeFromRow, nodeToRow, prepareStatements, tokenFromRow, tokenToRow } from './sqlite-schema.ts';
import type { Statements } from './sqlite-schema.ts';

/** Settings key of the store's identity (Store.identity). */
export const STORE_ID_SETTING = 'store.id';

export interface SqliteStoreOptions {
  /** Database file; its directory must exist. */
  readonly path: string;
  /** Commits kept for changesSince; older ones are compacted away (default 10000). */
  readonly retainChangeSets?: number;
  /** How long a write waits for another connection's lock before failing with AMBIT_ERR_STORE_IO (default 5000 ms). */
  readonly busyTimeoutMs?: number;
  readonly now?: () => number;
}

/** Used and expired join tokens are kept this long (for `ambitctl token list`), then purged. */
const TOKEN_RETENTION_MS = 24 * 60 * 60 * 1000;
const DEFAULT_RETAIN_CHANGE_SETS = 10_000;
const DEFAULT_BUSY_TIMEOUT_MS = 5_000;

type Listener = (cs: ChangeSet) => void;

/**
 * Creates the database file 0600 before SQLite opens it: SQLite gives the
 * -wal and -shm files the database file's mode, so they are private too. Files
 * left by an older, laxer run are tightened as well.
 */
function createPrivateFile(path: string): void {
  const fd = fs.openSync(path, 'a', 0o600);
  try {
    fs.fchmodSync(fd, 0o600);
  } finally {
    fs.closeSync(fd);
  }
  for (const suffix of ['-wal', '-shm']) {
    try {
      fs.chmodSync(path + suffix, 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
}

function tokenInvalid(id: string, reason: 'unknown' | 'mismatch' | 'used' | 'expired'): AmbitError {
  return new AmbitError('AMBIT_ERR_TOKEN_INVALID', `join token ${id} is ${reason === 'mismatch' ? 'not valid' : reason}`, {
    details: { id, reason },
  });
}

/** Constant-time comparison, so a caller cannot learn a stored hash byte by byte. */
function hashesEqual(a: string, b: string): boolean {
  const x = Buffer.from(a, 'utf8');
  const y = Buffer.from(b, 'utf8');
  return x.length === y.length && timingSafeEqual(x, y);
}

/**
 * The embedded Store backend: one SQLite file in WAL mode. Every write runs in
 * an IMMEDIATE transaction, which takes SQLite's single write lock up front, so
 * several instances or processes on one file serialise their commits and the
 * expectedRevision check cannot race. Methods do their work synchronously and
 * return settled promises; errors from SQLite surface as AMBIT_ERR_STORE_IO.
 */
export class SqliteStore implements Store {
  readonly backend = 'sqlite' as const;

  readonly #db: Database.Database;
  readonly #path: string;
  readonly #retain: number;
  readonly #now: () => number;
  readonly #stmt: Statements;
  /** Runs fn in a deferred (read) transaction: every read in it sees one WAL snapshot. */
  readonly #read: <T>(fn: () => T) => T;
  /** Runs fn in an IMMEDIATE transaction: the write lock is taken at BEGIN, so a read-then-write inside cannot race another connection. */
  readonly #write: <T>(fn: () => T) => T;
  readonly #feed = new ChangeFeed();
  /** Highest revision queued for listeners; commits by other connections above it are caught up on our next commit. */
  #queuedRevision: number;
  #closed = false;
  /** The store's identity: a random id written when the store was created (settings row STORE_ID_SETTING). */
  readonly #identity: string;

  private constructor(db: Database.Database, options: SqliteStoreOptions, retain: number) {
    this.#db = db;
    this.#path = options.path;
    this.#retain = retain;
    this.#now = options.now ?? Date.now;
    this.#stmt = prepareStatements(db);
    const runner = db.transaction((fn: () => unknown) => fn());
    this.#read = <T>(fn: () => T): T => runner.deferred(fn) as T;
    this.#write = <T>(fn: () => T): T => runner.immediate(fn) as T;
    this.#queuedRevision = this.#readRevision();
    // Made once, in the same write lock as its check, so two processes opening
    // a new file at once agree on one id.
    this.#identity = this.#write(() => {
      const saved = this.#stmt.getSetting.get(STORE_ID_SETTING)?.value;
      if (saved) return saved;
      const id = randomUUID();
      this.#stmt.putSetting.run(STORE_ID_SETTING, id);
      return id;
    });
  }

  static open(options: SqliteStoreOptions): SqliteStore {
    const retain = options.retainChangeSets ?? DEFAULT_RETAIN_CHANGE_SETS;
    if (!Number.isSafeInteger(retain) || retain < 1) {
      throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', `retainChangeSets must be a positive integer, got ${retain}`, {
        details: { key: 'retainChangeSets', value: retain },
      });
    }
    const busyTimeoutMs = options.busyTimeoutMs ?? DEFAULT_BUSY_TIMEOUT_MS;
    let db: Database.Database | undefined;
    try {
      createPrivateFile(options.path);
      db = new Database(options.path, { timeout: busyTimeoutMs });
      const mode = db.pragma('journal_mode = WAL', { simple: true });
      // WAL needs shared memory; some network filesystems refuse it, and the
      // concurrency reasoning above depends on WAL.
      if (mode !== 'wal') throw new Error(`journal_mode is ${String(mode)}, WAL is required`);
      // NORMAL in WAL mode: a commit survives a process crash; a power loss may
      // lose the last commits but never corrupts the file.
      db.pragma('synchronous = NORMAL');
      db.pragma('foreign_keys = ON');
      migrate(db, options.path);
      return new SqliteStore(db, options, retain);
    } catch (err) {
      db?.close();
      if (err instanceof AmbitError) throw err;
      throw new AmbitError('AMBIT_ERR_STORE_IO', `cannot open store ${options.path}: ${errorMessage(err)}`, {
        cause: err,
        details: { path: options.path, op: 'open', sqliteCode: (err as { code?: unknown }).code },
      });
    }
  }

  async revision(): Promise<number> {
    return this.#io('revision', () => this.#readRevision());
  }

  async snapshot(): Promise<Snapshot> {
    // One read transaction: the revision and rows come from the same WAL snapshot.
    return this.#io('snapshot', () =>
      this.#read(() => ({
        revision: this.#readRevision(),
        resources: this.#stmt.allResources.all().map((r) => JSON.parse(r.body) as Resource),
      })),
    );
  }

  async changesSince(revision: number): Promise<readonly ChangeSet[] | undefined> {
    return this.#io('changesSince', () => this.#read(() => this.#readChangesSince(revision)));
  }

  async commit(changes: readonly Change[], expectedRevision?: number): Promise<ChangeSet> {
    this.#assertOpen();
    // Two changes to one key would make the result depend on their order; refuse instead of guessing.
    const keys = new Set<string>();
    for (const c of changes) {
      const key = c.op === 'put' ? resourceKey(c.resource) : keyString(c.key);
      if (keys.has(key)) {
        throw new AmbitError('AMBIT_ERR_RESOURCE_CONFLICT', `${key} is changed more than once in one commit`, { details: { key } });
      }
      keys.add(key);
    }
    if (changes.length === 0) {
      const revision = this.#io('commit', () => this.#readRevision());
      this.#checkExpected(expectedRevision, revision);
      return { revision, changes: [] };
    }
    const { missed, changeSet } = this.#io('commit', () => this.#write(() => this.#writeChangeSet(changes, expectedRevision)));
    // Listeners run only now, after COMMIT, so they never see a rolled-back change.
    this.#queuedRevision = changeSet.revision;
    this.#feed.deliver(...missed, changeSet);
    return changeSet;
  }

  subscribe(listener: Listener): () => void {
    this.#assertOpen();
    return this.#feed.subscribe(listener);
  }

  async putToken(token: TokenRecord): Promise<void> {
    this.#io('putToken', () =>
      this.#write(() => {
        this.#stmt.purgeTokens.run({ cutoff: this.#now() - TOKEN_RETENTION_MS });
        // Never overwrite: replacing a used token's row would make it usable again.
        if (this.#stmt.getToken.get(token.id) !== undefined) {
          throw new AmbitError('AMBIT_ERR_RESOURCE_CONFLICT', `join token ${token.id} already exists`, { details: { id: token.id } });
        }
        this.#stmt.insertToken.run(tokenToRow(token));
      }),
    );
  }

  async consumeToken(id: string, secretHash: string, now: number): Promise<TokenRecord> {
    return this.#io('consumeToken', () =>
      this.#write(() => {
        const row = this.#stmt.getToken.get(id);
        if (row === undefined) throw tokenInvalid(id, 'unknown');
        // The secret is checked first, so without it nothing is learnt about the token's state.
        if (!hashesEqual(row.secret_hash, secretHash)) throw tokenInvalid(id, 'mismatch');
        if (row.used_at !== 0) throw tokenInvalid(id, 'used');
        if (now >= row.expires_at) throw tokenInvalid(id, 'expired');
        if (this.#stmt.markTokenUsed.run(now, id).changes !== 1) throw tokenInvalid(id, 'used');
        return tokenFromRow(row);
      }),
    );
  }

  async listTokens(): Promise<readonly TokenRecord[]> {
    return this.#io('listTokens', () => this.#stmt.listTokens.all().map(tokenFromRow));
  }

  async upsertNode(name: string, fields: NodeFields): Promise<NodeRecord> {
    return this.#io('upsertNode', () => this.#write(() => this.#mergeNode(name, fields)));
  }

  async upsertNodes(updates: ReadonlyMap<string, NodeFields>): Promise<void> {
    this.#io('upsertNodes', () => {
      if (updates.size === 0) return;
      // One transaction: all of them or, on an error, none.
      this.#write(() => {
        for (const [name, fields] of updates) this.#mergeNode(name, fields);
      });
    });
  }

  /** Inside a write transaction. */
  #mergeNode(name: string, fields: NodeFields): NodeRecord {
    const existing = this.#stmt.getNode.get(name);
    const merged = mergeNodeRecord(name, existing === undefined ? newNodeRecord(name, this.#now()) : nodeFromRow(existing), fields);
    this.#stmt.putNode.run(nodeToRow(merged));
    return merged;
  }

  async getNode(name: string): Promise<NodeRecord | undefined> {
    return this.#io('getNode', () => {
      const row = this.#stmt.getNode.get(name);
      return row === undefined ? undefined : nodeFromRow(row);
    });
  }

  async listNodes(): Promise<readonly NodeRecord[]> {
    return this.#io('listNodes', () => this.#stmt.listNodes.all().map(nodeFromRow));
  }

  async identity(): Promise<string> {
    this.#assertOpen();
    return this.#identity;
  }

  async getSetting(key: string): Promise<string | undefined> {
    return this.#io('getSetting', () => this.#stmt.getSetting.get(key)?.value);
  }

  async putSetting(key: string, value: string): Promise<void> {
    this.#io('putSetting', () => this.#stmt.putSetting.run(key, value));
  }

  /** Idempotent. Closing checkpoints the WAL into the main file. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#feed.clear();
    try {
      this.#db.close();
    } catch (err) {
      throw new AmbitError('AMBIT_ERR_STORE_IO', `cannot close store ${this.#path}: ${errorMessage(err)}`, {
        cause: err,
        details: { path: this.#path, op: 'close' },
      });
    }
  }

  /** Runs inside the IMMEDIATE transaction of commit(); any throw rolls everything back. */
  #writeChangeSet(changes: readonly Change[], expectedRevision: number | undefined): { missed: ChangeSet[]; changeSet: ChangeSet } {
    const current = this.#readRevision();
    this.#checkExpected(expectedRevision, current);
    // Commits by other connections since our last one, so our listeners see no gap.
    const missed = current > this.#queuedRevision ? changeSetsFromRows(this.#stmt.changesAfter.all(this.#queuedRevision)) : [];
    const revision = current + 1;
    this.#stmt.insertChangeSet.run(revision);
    const applied: Change[] = changes.map((c, seq): Change => {
      if (c.op === 'put') {
        const { kind, metadata } = c.resource;
        const body = JSON.stringify({ ...c.resource, metadata: { ...metadata, revision } });
        this.#stmt.putResource.run(kind, metadata.namespace, metadata.name, revision, body);
        this.#stmt.insertChange.run(revision, seq, 'put', kind, metadata.namespace, metadata.name, body);
        // Hand out what a later snapshot would read, not the caller's object.
        return { op: 'put', resource: JSON.parse(body) as Resource };
      }
      const { kind, namespace, name } = c.key;
      if (this.#stmt.deleteResource.run(kind, namespace, name).changes === 0) {
        throw new AmbitError('AMBIT_ERR_RESOURCE_NOT_FOUND', `${keyString(c.key)} does not exist`, { details: { kind, namespace, name } });
      }
      this.#stmt.insertChange.run(revision, seq, 'delete', kind, namespace, name, null);
      return { op: 'delete', key: { kind, namespace, name } };
    });
    this.#stmt.setRevision.run(revision);
    this.#stmt.compact.run(revision - this.#retain);
    return { missed, changeSet: { revision, changes: applied } };
  }

  #readChangesSince(revision: number): ChangeSet[] | undefined {
    const current = this.#readRevision();
    // A revision from the future means the store was reset under the caller; it must re-snapshot.
    if (!Number.isSafeInteger(revision) || revision < 0 || revision > current) return undefined;
    if (revision === current) return [];
    const oldest = this.#stmt.oldestChangeSet.get()?.revision ?? null;
    if (oldest === null || revision < oldest - 1) return undefined;
    return changeSetsFromRows(this.#stmt.changesAfter.all(revision));
  }

  #checkExpected(expected: number | undefined, current: number): void {
    if (expected !== undefined && expected !== current) {
      throw new AmbitError('AMBIT_ERR_RESOURCE_CONFLICT', `store is at revision ${current}, expected ${expected}`, {
        details: { expectedRevision: expected, revision: current },
      });
    }
  }

  #readRevision(): number {
    const row = this.#stmt.getRevision.get();
    if (row === undefined) throw new Error('meta revision row is missing');
    return row.value;
  }


  #assertOpen(): void {
    if (this.#closed) {
      throw new AmbitError('AMBIT_ERR_STORE_IO', `store ${this.#path} is closed`, { details: { path: this.#path } });
    }
  }

  #io<T>(op: string, fn: () => T): T {
    this.#assertOpen();
    try {
      return fn();
    } catch (err) {
      if (err instanceof AmbitError) throw err;
      throw new AmbitError('AMBIT_ERR_STORE_IO', `store ${this.#path}: ${op} failed: ${errorMessage(err)}`, {
        cause: err,
        details: { path: this.#path, op, sqliteCode: (err as { code?: unknown }).code },
      });
    }
  }
}
