import type Database from 'better-sqlite3';
import { AmbitError } from '../../shared/errors.ts';
import type { Kind, Resource } from '../../shared/resources/types.ts';
import type { Change, ChangeSet, IssuedCertificateRecord, NodeRecord, TokenRecord } from './store.ts';

/**
 * The SQLite store's schema, its migrations, its SQL statements and the
 * mapping between rows and store records (the store logic is in sqlite-store.ts).
 */

/**
 * MIGRATIONS[i] takes a database from schema version i to i + 1. Append only:
 * a shipped step is never edited, because databases in the field have already
 * run it.
 */
const MIGRATIONS: readonly string[] = [
  // v1
  `
  CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
  ) WITHOUT ROWID;
  INSERT INTO meta (key, value) VALUES ('revision', 0);

  -- The current state. revision is the commit that last wrote the row and
  -- equals body's metadata.revision.
  CREATE TABLE resources (
    kind      TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name      TEXT NOT NULL,
    revision  INTEGER NOT NULL,
    body      TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
  ) WITHOUT ROWID;

  -- The retained history for changesSince: one change_sets row per commit,
  -- each with at least one changes row (empty commits are never recorded).
  CREATE TABLE change_sets (
    revision INTEGER PRIMARY KEY
  );
  CREATE TABLE changes (
    revision  INTEGER NOT NULL REFERENCES change_sets (revision) ON DELETE CASCADE,
    seq       INTEGER NOT NULL,
    op        TEXT NOT NULL CHECK (op IN ('put', 'delete')),
    kind      TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name      TEXT NOT NULL,
    body      TEXT CHECK ((op = 'put') = (body IS NOT NULL)),
    PRIMARY KEY (revision, seq)
  ) WITHOUT ROWID;

  CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    node        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER NOT NULL DEFAULT 0
  ) WITHOUT ROWID;

  CREATE TABLE nodes (
    name            TEXT PRIMARY KEY,
    registered_at   INTEGER NOT NULL,
    last_seen       INTEGER NOT NULL,
    acked_revision  INTEGER NOT NULL,
    nacked_revision INTEGER NOT NULL,
    nack_reason     TEXT NOT NULL,
    cert_expires_at INTEGER NOT NULL,
    hbone_address   TEXT NOT NULL DEFAULT ''
  ) WITHOUT ROWID;

  CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
  ) WITHOUT ROWID;
  `,
  // v2: what CA root rotation needs to know per node. trusted_roots: the
  // bundle the agent acknowledged (comma-separated SHA-256 fingerprints);
  // certificates: JSON array of {identity, root, notAfter}, the latest
  // certificate issued per identity.
  `
  ALTER TABLE nodes ADD COLUMN trusted_roots TEXT NOT NULL DEFAULT '';
  ALTER TABLE nodes ADD COLUMN certificates  TEXT NOT NULL DEFAULT '[]';
  `,
  // v3: service ports declare appProtocol; ports stored before it are TCP.
  // json() keeps the rebuilt array JSON (a subquery's result is plain text).
  `
  UPDATE resources SET body = json_set(body, '$.spec.ports', json((
    SELECT json_group_array(json_set(p.value, '$.appProtocol', 'tcp'))
    FROM (SELECT value FROM json_each(resources.body, '$.spec.ports') ORDER BY key) AS p
  ))) WHERE kind = 'Service';
  UPDATE changes SET body = json_set(body, '$.spec.ports', json((
    SELECT json_group_array(json_set(p.value, '$.appProtocol', 'tcp'))
    FROM (SELECT value FROM json_each(changes.body, '$.spec.ports') ORDER BY key) AS p
  ))) WHERE kind = 'Service' AND op = 'put';
  `,
];

export const SCHEMA_VERSION = MIGRATIONS.length;

/**
 * Brings the database to SCHEMA_VERSION. Runs in one IMMEDIATE transaction, so
 * two processes opening a fresh file at once migrate it exactly once, and a
 * failed step leaves the previous version intact.
 */
export function migrate(db: Database.Database, path: string): void {
  db.transaction(() => {
    db.exec(`CREATE TABLE IF NOT EXISTS schema_version (
      id      INTEGER PRIMARY KEY CHECK (id = 1),
      version INTEGER NOT NULL
    )`);
    const row = db.prepare<[], { version: number }>('SELECT version FROM schema_version WHERE id = 1').get();
    const from = row?.version ?? 0;
    if (from > SCHEMA_VERSION) {
      throw new AmbitError('AMBIT_ERR_STORE_IO', `store ${path} has schema version ${from}, newer than this build supports (${SCHEMA_VERSION})`, {
        details: { path, version: from, supported: SCHEMA_VERSION },
      });
    }
    for (let v = from; v < SCHEMA_VERSION; v++) db.exec(MIGRATIONS[v] ?? '');
    db.prepare('INSERT INTO schema_version (id, version) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET version = excluded.version').run(
      SCHEMA_VERSION,
    );
  }).immediate();
}

export interface ChangeRow {
  readonly revision: number;
  readonly op: 'put' | 'delete';
  readonly kind: string;
  readonly namespace: string;
  readonly name: string;
  readonly body: string | null;
}

export interface TokenRow {
  readonly id: string;
  readonly secret_hash: string;
  readonly node: string;
  readonly created_at: number;
  readonly expires_at: number;
  readonly used_at: number;
}

export interface NodeRow {
  readonly name: string;
  readonly registered_at: number;
  readonly last_seen: number;
  readonly acked_revision: number;
  readonly nacked_revision: number;
  readonly nack_reason: string;
  readonly cert_expires_at: number;
  readonly hbone_address: string;
  readonly trusted_roots: string;
  readonly certificates: string;
}

export function tokenFromRow(r: TokenRow): TokenRecord {
  return { id: r.id, secretHash: r.secret_hash, node: r.node, createdAt: r.created_at, expiresAt: r.expires_at, usedAt: r.used_at };
}

export function tokenToRow(t: TokenRecord): TokenRow {
  return { id: t.id, secret_hash: t.secretHash, node: t.node, created_at: t.createdAt, expires_at: t.expiresAt, used_at: t.usedAt };
}

export function nodeFromRow(r: NodeRow): NodeRecord {
  return {
    name: r.name,
    registeredAt: r.registered_at,
    lastSeen: r.last_seen,
    ackedRevision: r.acked_revision,
    nackedRevision: r.nacked_revision,
    nackReason: r.nack_reason,
    certExpiresAt: r.cert_expires_at,
    hboneAddress: r.hbone_address,
    trustedRoots: r.trusted_roots === '' ? [] : r.trusted_roots.split(','),
    certificates: JSON.parse(r.certificates) as IssuedCertificateRecord[],
  };
}

export function nodeToRow(n: NodeRecord): NodeRow {
  return {
    name: n.name,
    registered_at: n.registeredAt,
    last_seen: n.lastSeen,
    acked_revision: n.ackedRevision,
    nacked_revision: n.nackedRevision,
    nack_reason: n.nackReason,
    cert_expires_at: n.certExpiresAt,
    hbone_address: n.hboneAddress,
    trusted_roots: n.trustedRoots.join(','),
    certificates: JSON.stringify(n.certificates.map((c) => ({ identity: c.identity, root: c.root, notAfter: c.notAfter }))),
  };
}

/** Every statement the store runs, prepared once per connection. */
export function prepareStatements(db: Database.Database) {
  return {
    getRevision: db.prepare<[], { value: number }>("SELECT value FROM meta WHERE key = 'revision'"),
    setRevision: db.prepare<[number]>("UPDATE meta SET value = ? WHERE key = 'revision'"),
    allResources: db.prepare<[], { body: string }>('SELECT body FROM resources ORDER BY kind, namespace, name'),
    putResource: db.prepare<[string, string, string, number, string]>(
      `INSERT INTO resources (kind, namespace, name, revision, body) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (kind, namespace, name) DO UPDATE SET revision = excluded.revision, body = excluded.body`,
    ),
    deleteResource: db.prepare<[string, string, string]>('DELETE FROM resources WHERE kind = ? AND namespace = ? AND name = ?'),
    insertChangeSet: db.prepare<[number]>('INSERT INTO change_sets (revision) VALUES (?)'),
    insertChange: db.prepare<[number, number, string, string, string, string, string | null]>(
      'INSERT INTO changes (revision, seq, op, kind, namespace, name, body) VALUES (?, ?, ?, ?, ?, ?, ?)',
    ),
    oldestChangeSet: db.prepare<[], { revision: number | null }>('SELECT MIN(revision) AS revision FROM change_sets'),
    changesAfter: db.prepare<[number], ChangeRow>(
      'SELECT revision, op, kind, namespace, name, body FROM changes WHERE revision > ? ORDER BY revision, seq',
    ),
    // changes rows go with their change set (ON DELETE CASCADE).
    compact: db.prepare<[number]>('DELETE FROM change_sets WHERE revision <= ?'),
    getToken: db.prepare<[string], TokenRow>('SELECT * FROM tokens WHERE id = ?'),
    insertToken: db.prepare<TokenRow>(
      `INSERT INTO tokens (id, secret_hash, node, created_at, expires_at, used_at)
       VALUES (@id, @secret_hash, @node, @created_at, @expires_at, @used_at)`,
    ),
    // used_at = 0 in the WHERE makes the update itself the single-use check.
    markTokenUsed: db.prepare<[number, string]>('UPDATE tokens SET used_at = ? WHERE id = ? AND used_at = 0'),
    purgeTokens: db.prepare<{ cutoff: number }>(
      'DELETE FROM tokens WHERE (used_at <> 0 AND used_at <= @cutoff) OR expires_at <= @cutoff',
    ),
    listTokens: db.prepare<[], TokenRow>('SELECT * FROM tokens ORDER BY created_at, id'),
    getNode: db.prepare<[string], NodeRow>('SELECT * FROM nodes WHERE name = ?'),
    putNode: db.prepare<NodeRow>(
      `INSERT INTO nodes (name, registered_at, last_seen, acked_revision, nacked_revision, nack_reason, cert_expires_at, hbone_address, trusted_roots, certificates)
       VALUES (@name, @registered_at, @last_seen, @acked_revision, @nacked_revision, @nack_reason, @cert_expires_at, @hbone_address, @trusted_roots, @certificates)
       ON CONFLICT (name) DO UPDATE SET registered_at = excluded.registered_at, last_seen = excluded.last_seen,
         acked_revision = excluded.acked_revision, nacked_revision = excluded.nacked_revision,
         nack_reason = excluded.nack_reason, cert_expires_at = excluded.cert_expires_at, hbone_address = excluded.hbone_address,
         trusted_roots = excluded.trusted_roots, certificates = excluded.certificates`,
    ),
    listNodes: db.prepare<[], NodeRow>('SELECT * FROM nodes ORDER BY name'),
    getSetting: db.prepare<[string], { value: string }>('SELECT value FROM settings WHERE key = ?'),
    putSetting: db.prepare<[string, string]>(
      'INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value',
    ),
  };
}

export type Statements = ReturnType<typeof prepareStatements>;

/** Groups change rows (ordered by revision, seq) into change sets. */
export function changeSetsFromRows(rows: readonly ChangeRow[]): ChangeSet[] {
  const sets: { revision: number; changes: Change[] }[] = [];
  for (const row of rows) {
    let cs = sets.at(-1);
    if (cs === undefined || cs.revision !== row.revision) {
      cs = { revision: row.revision, changes: [] };
      sets.push(cs);
    }
    cs.changes.push(
      row.op === 'put'
        ? { op: 'put', resource: JSON.parse(row.body ?? 'null') as Resource }
        : { op: 'delete', key: { kind: row.kind as Kind, namespace: row.namespace, name: row.name } },
    );
  }
  return sets;
}
