import { randomUUID, timingSafeEqual } from 'node:crypto';
import { Etcd3, EtcdLeaseInvalidError, type IKeyValue, type IOptions, type IRequestOp, type ICompare, type Lease } from 'etcd3';
import { AmbitError, errorMessage } from '../../shared/errors.ts';
import type { Logger } from '../../shared/logger.ts';
import { keyString, resourceKey, type Resource } from '../../shared/resources/types.ts';
import { ChangeFeed } from './change-feed.ts';
import { EtcdKeys, prefixEnd } from './etcd-keys.ts';
import { callWithRetry, storeIo, type EtcdCall } from './etcd-calls.ts';
import { EtcdFollower, parseChangeSet } from './etcd-follower.ts';
import type { Change, ChangeSet, NodeFields, NodeRecord, Snapshot, Store, TokenRecord } from './store.ts';
import { mergeNodeRecord, newNodeRecord } from './node-record.ts';

export interface EtcdStoreOptions {
  /** etcd3 client options: hosts and TLS credentials (etcd-connection.ts builds them from the flags). */
  readonly client: IOptions;
  /** Every key lives under this prefix (--etcd-prefix). */
  readonly prefix: string;
  readonly logger: Logger;
  /** Change sets kept for changesSince; older ones are deleted by the commit that passes them (default 10000). */
  readonly retainChangeSets?: number;
  /** How long one store operation keeps retrying an unreachable cluster before failing with AMBIT_ERR_STORE_IO (default 15 s). */
  readonly operationTimeoutMs?: number;
  /**
   * Called when this replica can no longer follow the mesh revision in order
   * (it fell further behind than the retained change sets): the process must
   * restart and load a snapshot.
   */
  readonly onFatal: (err: AmbitError) => void;
  readonly now?: () => number;
}

/** The change set as stored: `id` names the commit that wrote it, so a commit whose answer was lost can tell its own. */
interface StoredChangeSet extends ChangeSet {
  readonly id: string;
}

interface StoredToken extends TokenRecord {
  /** Which consumeToken call marked it used (a retried transaction recognises its own success). */
  readonly usedBy?: string;
}

const DEFAULT_RETAIN = 10_000;
const DEFAULT_OPERATION_TIMEOUT_MS = 15_000;
/** A unary etcd call that takes longer is abandoned and retried (another member, after a leader change). */
const CALL_DEADLINE_MS = 3_000;
/** Commits retried when another replica committed first (no expected revision given). */
const COMMIT_ATTEMPTS = 50;
/** Snapshot pages: small enough for etcd's default response limits. */
const PAGE = 1000;
const TOKEN_RETENTION_MS = 24 * 60 * 60 * 1000;
/** A replica's "node watches from me" records outlive it by at most this (its etcd lease). */
const WATCHING_LEASE_S = 10;

/** Node records written in one transaction: under etcd's default --max-txn-ops (128). */
const NODE_TXN_OPS = 100;
/** And at most this many bytes of records, under etcd's default --max-request-bytes (1.5 MiB); a single larger record goes alone. */
const NODE_TXN_BYTES = 1024 * 1024;
/** Node writes retried when other replicas wrote the same records in between. */
const NODE_WRITE_ATTEMPTS = 20;

function nodeWriteConflict(nodes: readonly string[]): AmbitError {
  const shown = nodes.slice(0, 5).join(', ') + (nodes.length > 5 ? ` and ${nodes.length - 5} more` : '');
  return new AmbitError('AMBIT_ERR_RESOURCE_CONFLICT', `node records ${shown} were changed by other replicas ${NODE_WRITE_ATTEMPTS} times while this write was retried; try again`, {
    details: { nodes: nodes.slice(0, 100), attempts: NODE_WRITE_ATTEMPTS },
  });
}

function tokenInvalid(id: string, reason: 'unknown' | 'mismatch' | 'used' | 'expired'): AmbitError {
  return new AmbitError('AMBIT_ERR_TOKEN_INVALID', `join token ${id} is ${reason === 'mismatch' ? 'not valid' : reason}`, { details: { id, reason } });
}

function hashesEqual(a: string, b: string): boolean {
  const x = Buffer.from(a, 'utf8');
  const y = Buffer.from(b, 'utf8');
  return x.length === y.length && timingSafeEqual(x, y);
}

const cmpMod = (key: Buffer, kv: IKeyValue | undefined): ICompare =>
  kv === undefined
    ? { key, target: 'Version', result: 'Equal', version: 0 }
    : { key, target: 'Mod', result: 'Equal', mod_revision: kv.mod_revision };
const put = (key: Buffer, value: string): IRequestOp => ({ request_put: { key, value: Buffer.from(value) } });
const del = (key: Buffer): IRequestOp => ({ request_delete_range: { key } });

const byKindNamespaceName = (a: Resource, b: Resource): number =>
  a.kind < b.kind ? -1 : a.kind > b.kind ? 1
    : a.metadata.namespace < b.metadata.namespace ? -1 : a.metadata.namespace > b.metadata.namespace ? 1
      : a.metadata.name < b.metadata.name ? -1 : a.metadata.name > b.metadata.name ? 1 : 0;

/**
 * The HA Store backend (DESIGN §4): several controller replicas share one etcd
 * cluster through its v3 API (the etcd3 client over @grpc/grpc-js).
 *
 * - Every commit is one etcd transaction: it compares the revision key's
 *   modification revision with the one read, and writes the resources, the
 *   change set and the incremented mesh revision together. Of two replicas
 *   committing at once, one transaction fails its compare and retries on the
 *   new revision (or, with an expected revision, reports the conflict), so
 *   the mesh revision is one gapless counter across replicas.
 * - A commit whose answer was lost (a member died mid-call) is recognised by
 *   the id in its change set, so it is neither reported failed nor applied twice.
 * - Subscribers see every commit, by any replica, in revision order
 *   (etcd-follower.ts: an etcd watch on the change sets, a catch-up read on
 *   every gap, a periodic read of the revision under the watch).
 * - Join tokens are consumed with a compare-and-swap on the token's key, so a
 *   token is single-use across replicas.
 */
export class EtcdStore implements Store {
  readonly backend = 'etcd' as const;

  readonly #client: Etcd3;
  readonly #keys: EtcdKeys;
  readonly #logger: Logger;
  readonly #retain: number;
  readonly #timeoutMs: number;
  readonly #onFatal: (err: AmbitError) => void;
  readonly #now: () => number;
  readonly #feed = new ChangeFeed();
  #follower: EtcdFollower | undefined;
  #identity = '';
  #closed = false;
  /** This process among the replicas (names its watching records). */
  readonly #replica = randomUUID();
  /** Nodes watching from this replica, held by #lease (put again on a new lease when one is lost). */
  readonly #watching = new Set<string>();
  #lease: Lease | undefined;

  private constructor(o: EtcdStoreOptions) {
    this.#client = new Etcd3({
      ...o.client,
      // Unary calls get a deadline (a hung member must not hang a commit); watch streams do not.
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + CALL_DEADLINE_MS }),
    });
    this.#keys = new EtcdKeys(o.prefix);
    this.#logger = o.logger.child({ store: 'etcd' });
    this.#retain = o.retainChangeSets ?? DEFAULT_RETAIN;
    this.#timeoutMs = o.operationTimeoutMs ?? DEFAULT_OPERATION_TIMEOUT_MS;
    this.#onFatal = o.onFatal;
    this.#now = o.now ?? Date.now;
  }

  /** Connects, makes or reads the store identity, and starts following the cluster's commits. */
  static async open(o: EtcdStoreOptions): Promise<EtcdStore> {
    const retain = o.retainChangeSets ?? DEFAULT_RETAIN;
    if (!Number.isSafeInteger(retain) || retain < 1) {
      throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', `retainChangeSets must be a positive integer, got ${retain}`, { details: { key: 'retainChangeSets', value: retain } });
    }
    const store = new EtcdStore(o);
    try {
      const id = randomUUID();
      // Made once: of several replicas starting together, one creates it and all read the same.
      const res = await store.#call('open', () => store.#client.kv.txn({
        compare: [{ key: store.#keys.id, target: 'Version', result: 'Equal', version: 0 }],
        success: [put(store.#keys.id, id)],
        failure: [{ request_range: { key: store.#keys.id } }],
      }));
      store.#identity = res.succeeded ? id : res.responses[0]?.response_range.kvs[0]?.value.toString() ?? '';
      if (store.#identity === '') throw new Error('the store identity key is empty');
      const head = await store.#readRevision();
      store.#follower = new EtcdFollower({
        client: store.#client, keys: store.#keys, call: store.#call, feed: store.#feed, logger: store.#logger, retain: store.#retain, onFatal: store.#onFatal,
        revision: async () => (await store.#readRevision()).value,
      }, head.value);
      await store.#follower.start(head.etcdRevision);
      return store;
    } catch (err) {
      await store.close();
      throw storeIo('open', err, { endpoints: o.client.hosts });
    }
  }

  async revision(): Promise<number> {
    this.#assertOpen();
    return (await this.#readRevision()).value;
  }

  async identity(): Promise<string> {
    this.#assertOpen();
    return this.#identity;
  }

  /** The revision key and every resource, read at one etcd revision (pages pinned to it), so the snapshot is one state. */
  async snapshot(): Promise<Snapshot> {
    this.#assertOpen();
    return this.#call('snapshot', async () => {
      const head = await this.#client.kv.range({ key: this.#keys.revision });
      const at = head.header.revision;
      const revision = Number(head.kvs[0]?.value.toString() ?? '0');
      const resources: Resource[] = [];
      const end = prefixEnd(this.#keys.resources);
      let from = this.#keys.resources;
      for (;;) {
        const page = await this.#client.kv.range({ key: from, range_end: end, revision: at, limit: PAGE });
        for (const kv of page.kvs) resources.push(JSON.parse(kv.value.toString()) as Resource);
        const last = page.kvs.at(-1);
        if (!page.more || last === undefined) break;
        from = Buffer.concat([last.key, Buffer.from([0])]);
      }
      return { revision, resources: resources.sort(byKindNamespaceName) };
    });
  }

  async changesSince(revision: number): Promise<readonly ChangeSet[] | undefined> {
    this.#assertOpen();
    return this.#call('changesSince', async () => {
      // One transaction: the revision and the change sets come from one state.
      const res = await this.#client.kv.txn({
        success: [{ request_range: { key: this.#keys.revision } }, { request_range: { key: this.#keys.changeSet(revision + 1), range_end: prefixEnd(this.#keys.changeSets) } }],
      });
      const current = Number(res.responses[0]?.response_range.kvs[0]?.value.toString() ?? '0');
      if (!Number.isSafeInteger(revision) || revision < 0 || revision > current) return undefined;
      if (revision === current) return [];
      const sets = (res.responses[1]?.response_range.kvs ?? []).map((kv) => parseChangeSet(kv)).filter((cs) => cs.revision <= current);
      // Compacted away (or a gap): the caller falls back to a snapshot.
      if (sets.length !== current - revision || sets[0]?.revision !== revision + 1) return undefined;
      return sets;
    });
  }

  async commit(changes: readonly Change[], expectedRevision?: number): Promise<ChangeSet> {
    this.#assertOpen();
    const keys = new Set<string>();
    for (const c of changes) {
      const key = c.op === 'put' ? resourceKey(c.resource) : keyString(c.key);
      if (keys.has(key)) throw new AmbitError('AMBIT_ERR_RESOURCE_CONFLICT', `${key} is changed more than once in one commit`, { details: { key } });
      keys.add(key);
    }
    if (changes.length === 0) {
      const revision = await this.revision();
      this.#checkExpected(expectedRevision, revision);
      return { revision, changes: [] };
    }
    const id = randomUUID();
    for (let attempt = 1; ; attempt++) {
      const head = await this.#readRevision();
      if (expectedRevision !== undefined && expectedRevision !== head.value) {
        // Subscribers (the registry) learn the newer state before the caller hears of the conflict, so its retry plans against it.
        await this.#following().catchUp(head.value);
        this.#checkExpected(expectedRevision, head.value);
      }
      const revision = head.value + 1;
      const applied: Change[] = changes.map((c): Change =>
        c.op === 'put' ? { op: 'put', resource: { ...c.resource, metadata: { ...c.resource.metadata, revision } } as Resource } : { op: 'delete', key: { ...c.key } });
      const stored: StoredChangeSet = { revision, id, changes: applied };
      const deletes = applied.flatMap((c) => (c.op === 'delete' ? [this.#keys.resource(c.key.kind, c.key.namespace, c.key.name)] : []));
      const ops: IRequestOp[] = applied.map((c) =>
        c.op === 'put'
          ? put(this.#keys.resource(c.resource.kind, c.resource.metadata.namespace, c.resource.metadata.name), JSON.stringify(c.resource))
          : del(this.#keys.resource(c.key.kind, c.key.namespace, c.key.name)));
      ops.push(put(this.#keys.changeSet(revision), JSON.stringify(stored)), put(this.#keys.revision, String(revision)));
      if (revision - this.#retain > 0) ops.push(del(this.#keys.changeSet(revision - this.#retain)));
      const compare: ICompare[] = [
        head.kv === undefined ? { key: this.#keys.revision, target: 'Version', result: 'Equal', version: 0 } : { key: this.#keys.revision, target: 'Mod', result: 'Equal', mod_revision: head.kv.mod_revision },
        // A delete of a missing resource fails the whole transaction.
        ...deletes.map((key): ICompare => ({ key, target: 'Version', result: 'Greater', version: 0 })),
      ];
      let succeeded: boolean;
      try {
        succeeded = (await this.#call('commit', () => this.#client.kv.txn({ compare, success: ops }))).succeeded;
      } catch (err) {
        // The answer was lost: whether it committed is read back below.
        this.#logger.warn({ err: errorMessage(err), revision }, 'etcd commit outcome unknown; checking');
        succeeded = false;
      }
      if (succeeded || (await this.#committedAs(revision, id))) {
        // Subscribers have it before commit() resolves (as with SQLite); no read back when it is the next one due.
        await this.#following().offer({ revision, changes: applied });
        return { revision, changes: applied };
      }
      const now = await this.#readRevision();
      if (now.value === head.value) {
        // The revision did not move, so a compared resource is missing.
        for (const c of applied) {
          if (c.op !== 'delete') continue;
          const got = await this.#call('commit', () => this.#client.kv.range({ key: this.#keys.resource(c.key.kind, c.key.namespace, c.key.name), count_only: true }));
          if (Number(got.count) === 0) throw new AmbitError('AMBIT_ERR_RESOURCE_NOT_FOUND', `${keyString(c.key)} does not exist`, { details: { ...c.key } });
        }
        continue;
      }
      await this.#following().catchUp(now.value);
      this.#checkExpected(expectedRevision, now.value);
      if (attempt >= COMMIT_ATTEMPTS) {
        throw new AmbitError('AMBIT_ERR_RESOURCE_CONFLICT', `other replicas committed ${COMMIT_ATTEMPTS} times while this commit was retried; try again`, { details: { revision: now.value } });
      }
    }
  }

  subscribe(listener: (cs: ChangeSet) => void): () => void {
    this.#assertOpen();
    return this.#feed.subscribe(listener);
  }

  /** Node records written by any replica (HBONE addresses, issued certificates), as they change. */
  onNodeChange(listener: (n: NodeRecord) => void): () => void {
    return this.#following().onNodeChange(listener);
  }

  /** Delivers to subscribers every commit the cluster holds now, then resolves. */
  async sync(): Promise<void> {
    this.#assertOpen();
    await this.#following().sync();
  }

  async markConnected(node: string, connected: boolean): Promise<void> {
    await this.markConnectedNodes(new Map([[node, connected]]));
  }

  /** One transaction per 100 nodes; the connected ones' records are held by this replica's lease. */
  async markConnectedNodes(states: ReadonlyMap<string, boolean>): Promise<void> {
    this.#assertOpen();
    for (const [node, connected] of states) {
      if (connected) this.#watching.add(node);
      else this.#watching.delete(node);
    }
    let lease: Lease | undefined;
    // Asked of the current lease on every attempt: a lost one is replaced meanwhile.
    const id = [...states.values()].some(Boolean) ? await this.#call('markConnected', () => (lease = this.#watchingLease()).grant()) : '0';
    const ops = [...states].map(([node, connected]): IRequestOp => {
      const key = this.#keys.watching(node, this.#replica);
      return connected ? { request_put: { key, value: Buffer.from('1'), lease: id } } : del(key);
    });
    try {
      for (let i = 0; i < ops.length; i += NODE_TXN_OPS) {
        const chunk = ops.slice(i, i + NODE_TXN_OPS);
        await this.#call('markConnected', () => this.#client.kv.txn({ success: chunk }));
      }
    } catch (err) {
      // The lease expired before its keepalive noticed (etcd unreachable past its TTL): replaced now.
      if (lease !== undefined && err instanceof AmbitError && err.cause instanceof EtcdLeaseInvalidError) this.#leaseLost(lease, err.cause);
      throw err;
    }
  }

  async connectedNodes(): Promise<ReadonlySet<string>> {
    this.#assertOpen();
    const prefix = this.#keys.watchingAll;
    const res = await this.#call('connectedNodes', () => this.#client.kv.range({ key: prefix, range_end: prefixEnd(prefix), keys_only: true }));
    return new Set(res.kvs.map((kv) => this.#keys.nodeOfWatchingKey(kv.key)));
  }

  /** The lease holding this replica's watching records; a lost one (etcd unreachable past its TTL) is replaced and the records put again. */
  #watchingLease(): Lease {
    if (this.#lease !== undefined && !this.#lease.revoked()) return this.#lease;
    const lease = this.#client.lease(WATCHING_LEASE_S);
    lease.on('lost', (err) => this.#leaseLost(lease, err));
    this.#lease = lease;
    return lease;
  }

  #leaseLost(lease: Lease, err: unknown): void {
    // Stops its keepalive (when the loss was found by a write, not by the lease itself); etcd holds no such lease any more.
    void lease.revoke().catch(() => undefined);
    if (this.#closed || this.#lease !== lease) return;
    this.#logger.warn({ err: errorMessage(err) }, 'etcd lease of this replica\'s connected nodes lost; renewing');
    this.#lease = undefined;
    const all = new Map([...this.#watching].map((node) => [node, true] as const));
    if (all.size > 0) void this.markConnectedNodes(all).catch(() => undefined);
  }

  async putToken(token: TokenRecord): Promise<void> {
    this.#assertOpen();
    await this.#purgeTokens();
    const key = this.#keys.token(token.id);
    const value = JSON.stringify(token);
    const res = await this.#call('putToken', () => this.#client.kv.txn({
      compare: [{ key, target: 'Version', result: 'Equal', version: 0 }],
      success: [put(key, value)],
      failure: [{ request_range: { key } }],
    }));
    // Never overwrite: replacing a used token would make it usable again. A retried put finds its own record.
    if (!res.succeeded && res.responses[0]?.response_range.kvs[0]?.value.toString() !== value) {
      throw new AmbitError('AMBIT_ERR_RESOURCE_CONFLICT', `join token ${token.id} already exists`, { details: { id: token.id } });
    }
  }

  async consumeToken(id: string, secretHash: string, now: number): Promise<TokenRecord> {
    this.#assertOpen();
    const key = this.#keys.token(id);
    const by = randomUUID();
    for (;;) {
      const kv = (await this.#call('consumeToken', () => this.#client.kv.range({ key }))).kvs[0];
      if (kv === undefined) throw tokenInvalid(id, 'unknown');
      const record = JSON.parse(kv.value.toString()) as StoredToken;
      if (!hashesEqual(record.secretHash, secretHash)) throw tokenInvalid(id, 'mismatch');
      if (record.usedAt !== 0) {
        // Our own transaction, committed though its answer was lost: the record as it was before use.
        if (record.usedBy === by) {
          const { usedBy: _, ...before } = record;
          return { ...before, usedAt: 0 };
        }
        throw tokenInvalid(id, 'used');
      }
      if (now >= record.expiresAt) throw tokenInvalid(id, 'expired');
      const used: StoredToken = { ...record, usedAt: now, usedBy: by };
      let ok = false;
      try {
        // Compare-and-swap on the key: of two replicas consuming one token, one transaction fails.
        ok = (await this.#call('consumeToken', () => this.#client.kv.txn({ compare: [cmpMod(key, kv)], success: [put(key, JSON.stringify(used))] }))).succeeded;
      } catch (err) {
        this.#logger.warn({ err: errorMessage(err), token: id }, 'etcd token use outcome unknown; checking');
      }
      if (ok) {
        const { usedBy: _, ...before } = record;
        return before;
      }
    }
  }

  async listTokens(): Promise<readonly TokenRecord[]> {
    this.#assertOpen();
    const kvs = await this.#rangePrefix('listTokens', this.#keys.tokens);
    return kvs.map((kv) => {
      const { usedBy: _, ...t } = JSON.parse(kv.value.toString()) as StoredToken;
      return t;
    }).sort((a, b) => a.createdAt - b.createdAt || (a.id < b.id ? -1 : 1));
  }

  async upsertNode(name: string, fields: NodeFields): Promise<NodeRecord> {
    this.#assertOpen();
    const key = this.#keys.node(name);
    for (let attempt = 1; ; attempt++) {
      const kv = (await this.#call('upsertNode', () => this.#client.kv.range({ key }))).kvs[0];
      const merged = mergeNodeRecord(name, kv === undefined ? newNodeRecord(name, this.#now()) : JSON.parse(kv.value.toString()) as NodeRecord, fields);
      // Compare-and-swap: two replicas updating one node (an ack and a CSR) never lose each other's fields.
      const res = await this.#call('upsertNode', () => this.#client.kv.txn({ compare: [cmpMod(key, kv)], success: [put(key, JSON.stringify(merged))] }));
      if (res.succeeded) return merged;
      if (attempt >= NODE_WRITE_ATTEMPTS) throw nodeWriteConflict([name]);
    }
  }

  async upsertNodes(updates: ReadonlyMap<string, NodeFields>): Promise<void> {
    this.#assertOpen();
    let rest = [...updates];
    while (rest.length > 0) rest = rest.slice(await this.#upsertNodeChunk(rest.slice(0, NODE_TXN_OPS)));
  }

  /**
   * One read transaction of the chunk's records, then one compare-and-swap
   * transaction writing them merged (re-read and retried when another replica
   * wrote one of them in between, as upsertNode). Returns how many it wrote:
   * all of the chunk, or the first ones whose records fit NODE_TXN_BYTES.
   */
  async #upsertNodeChunk(chunk: readonly (readonly [string, NodeFields])[]): Promise<number> {
    const keys = chunk.map(([name]) => this.#keys.node(name));
    for (let attempt = 1; ; attempt++) {
      const read = await this.#call('upsertNodes', () => this.#client.kv.txn({ success: keys.map((key): IRequestOp => ({ request_range: { key } })) }));
      const compare: ICompare[] = [];
      const success: IRequestOp[] = [];
      let bytes = 0;
      for (const [i, [name, fields]] of chunk.entries()) {
        const kv = read.responses[i]?.response_range.kvs[0];
        const value = JSON.stringify(mergeNodeRecord(name, kv === undefined ? newNodeRecord(name, this.#now()) : JSON.parse(kv.value.toString()) as NodeRecord, fields));
        if (success.length > 0 && bytes + value.length > NODE_TXN_BYTES) break;
        bytes += value.length;
        compare.push(cmpMod(keys[i]!, kv));
        success.push(put(keys[i]!, value));
      }
      // A compare per key: a record another replica wrote since the read fails the whole transaction, and no field of its is lost.
      const res = await this.#call('upsertNodes', () => this.#client.kv.txn({ compare, success }));
      if (res.succeeded) return success.length;
      if (attempt >= NODE_WRITE_ATTEMPTS) throw nodeWriteConflict(chunk.slice(0, success.length).map(([name]) => name));
    }
  }

  async getNode(name: string): Promise<NodeRecord | undefined> {
    this.#assertOpen();
    const kv = (await this.#call('getNode', () => this.#client.kv.range({ key: this.#keys.node(name) }))).kvs[0];
    return kv === undefined ? undefined : JSON.parse(kv.value.toString()) as NodeRecord;
  }

  async listNodes(): Promise<readonly NodeRecord[]> {
    this.#assertOpen();
    return (await this.#rangePrefix('listNodes', this.#keys.nodes)).map((kv) => JSON.parse(kv.value.toString()) as NodeRecord);
  }

  async getSetting(key: string): Promise<string | undefined> {
    this.#assertOpen();
    return (await this.#call('getSetting', () => this.#client.kv.range({ key: this.#keys.setting(key) }))).kvs[0]?.value.toString();
  }

  async putSetting(key: string, value: string): Promise<void> {
    this.#assertOpen();
    await this.#call('putSetting', () => this.#client.kv.put({ key: this.#keys.setting(key), value: Buffer.from(value) }));
  }

  /** Idempotent: stops following the cluster and closes the client. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#feed.clear();
    await this.#follower?.close();
    // Revoking the lease removes this replica's connected-node records at once, not after its TTL.
    await this.#lease?.revoke().catch(() => undefined);
    this.#client.close();
  }

  // ------------------------------------------------------------ internals

  async #readRevision(): Promise<{ value: number; kv: IKeyValue | undefined; etcdRevision: string }> {
    const res = await this.#call('revision', () => this.#client.kv.range({ key: this.#keys.revision }));
    const kv = res.kvs[0];
    return { value: Number(kv?.value.toString() ?? '0'), kv, etcdRevision: res.header.revision };
  }

  /** Whether the change set at `revision` is the one commit `id` wrote. */
  async #committedAs(revision: number, id: string): Promise<boolean> {
    const kv = (await this.#call('commit', () => this.#client.kv.range({ key: this.#keys.changeSet(revision) }))).kvs[0];
    return kv !== undefined && (JSON.parse(kv.value.toString()) as StoredChangeSet).id === id;
  }

  #following(): EtcdFollower {
    if (this.#follower === undefined) throw new AmbitError('AMBIT_ERR_STORE_IO', 'the etcd store is not open', { details: { op: 'open' } });
    return this.#follower;
  }

  /** Runs an etcd call with the store's retries (etcd-calls.ts); an arrow, so it can be handed to the follower. */
  readonly #call: EtcdCall = (op, fn) => callWithRetry(op, fn, this.#timeoutMs, () => this.#closed && op !== 'open');

  async #rangePrefix(op: string, prefix: Buffer): Promise<IKeyValue[]> {
    return (await this.#call(op, () => this.#client.kv.range({ key: prefix, range_end: prefixEnd(prefix) }))).kvs;
  }

  /** Used and expired tokens are kept a day (for `ambitctl node token list`), then deleted. */
  async #purgeTokens(): Promise<void> {
    const cutoff = this.#now() - TOKEN_RETENTION_MS;
    for (const kv of await this.#rangePrefix('putToken', this.#keys.tokens)) {
      const t = JSON.parse(kv.value.toString()) as StoredToken;
      if ((t.usedAt !== 0 && t.usedAt <= cutoff) || t.expiresAt <= cutoff) {
        await this.#call('putToken', () => this.#client.kv.txn({ compare: [cmpMod(kv.key, kv)], success: [del(kv.key)] }));
      }
    }
  }

  #checkExpected(expected: number | undefined, current: number): void {
    if (expected !== undefined && expected !== current) {
      throw new AmbitError('AMBIT_ERR_RESOURCE_CONFLICT', `store is at revision ${current}, expected ${expected}`, { details: { expectedRevision: expected, revision: current } });
    }
  }

  #assertOpen(): void {
    if (this.#closed) throw new AmbitError('AMBIT_ERR_STORE_IO', 'the etcd store is closed', { details: { op: 'closed' } });
  }
}
