import type { Etcd3, IKeyValue, Watcher } from 'etcd3';
import { AmbitError, errorMessage } from '../../shared/errors.ts';
import type { Logger } from '../../shared/logger.ts';
import type { ChangeFeed } from './change-feed.ts';
import type { EtcdCall } from './etcd-calls.ts';
import type { EtcdKeys } from './etcd-keys.ts';
import type { ChangeSet, NodeRecord } from './store.ts';

/** A safety net under the watch: every few seconds the revision is read and any missed commit is caught up. */
const SYNC_INTERVAL_MS = 5_000;

export interface EtcdFollowerOptions {
  readonly client: Etcd3;
  readonly keys: EtcdKeys;
  readonly call: EtcdCall;
  readonly feed: ChangeFeed;
  readonly logger: Logger;
  /** Change sets the store keeps: a replica further behind cannot follow. */
  readonly retain: number;
  readonly onFatal: (err: AmbitError) => void;
  /** The mesh revision as etcd holds it now. */
  readonly revision: () => Promise<number>;
}

/** A stored change set without the commit id it carries. */
export function parseChangeSet(kv: IKeyValue): ChangeSet {
  const { revision, changes } = JSON.parse(kv.value.toString()) as ChangeSet;
  return { revision, changes };
}

/**
 * How one replica follows every replica's commits: change sets reach the
 * store's subscribers once each, in revision order, from this replica's own
 * commits (offer), an etcd watch on the change sets, a catch-up read on every
 * gap, and a revision read every few seconds under the watch; node records
 * from an etcd watch reach the node listeners.
 */
export class EtcdFollower {
  readonly #o: EtcdFollowerOptions;
  readonly #nodeListeners = new Set<(n: NodeRecord) => void>();
  /** Highest revision handed to subscribers. */
  #delivered: number;
  /** Deliveries run one after another. */
  #chain: Promise<void> = Promise.resolve();
  #watchers: Watcher[] = [];
  #syncTimer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(o: EtcdFollowerOptions, delivered: number) {
    this.#o = o;
    this.#delivered = delivered;
  }

  /** Starts watching from just after `etcdRevision` (the etcd revision `delivered` was read at). */
  async start(etcdRevision: string): Promise<void> {
    const { client, keys, logger } = this.#o;
    const start = String(BigInt(etcdRevision) + 1n);
    const changes = await client.watch().prefix(keys.changeSets).startRevision(start).create();
    changes.on('put', (kv) => {
      const revision = keys.revisionOfChangeSetKey(kv.key);
      if (revision === undefined || revision <= this.#delivered) return;
      let cs: ChangeSet | undefined;
      try {
        cs = parseChangeSet(kv);
      } catch {
        cs = undefined;
      }
      void (cs?.revision === revision ? this.offer(cs) : this.catchUp(revision)).catch(() => undefined);
    });
    const nodes = await client.watch().prefix(keys.nodes).startRevision(start).create();
    nodes.on('put', (kv) => {
      let record: NodeRecord;
      try {
        record = JSON.parse(kv.value.toString()) as NodeRecord;
      } catch (err) {
        logger.warn({ key: kv.key.toString(), err: errorMessage(err) }, 'unreadable node record in etcd ignored');
        return;
      }
      for (const l of [...this.#nodeListeners]) l(record);
    });
    for (const w of [changes, nodes]) {
      w.on('connected', () => void this.sync().catch(() => undefined));
      w.on('disconnected', (err) => logger.warn({ err: errorMessage(err) }, 'etcd watch disconnected; reconnecting'));
      w.on('error', (err) => logger.warn({ err: errorMessage(err) }, 'etcd watch failed; the revision check catches up'));
    }
    this.#watchers = [changes, nodes];
    this.#syncTimer = setInterval(() => void this.sync().catch((err: unknown) => logger.warn({ err: errorMessage(err) }, 'etcd revision check failed; retrying')), SYNC_INTERVAL_MS);
    this.#syncTimer.unref();
  }

  onNodeChange(listener: (n: NodeRecord) => void): () => void {
    this.#nodeListeners.add(listener);
    return () => this.#nodeListeners.delete(listener);
  }

  /** Delivers every commit etcd holds now, then resolves. */
  async sync(): Promise<void> {
    await this.catchUp(await this.#o.revision());
  }

  /**
   * A change set known whole (this replica's commit, or a watch event's
   * value): delivered as is when it is the next one due, else after a
   * catch-up read of the ones before it.
   */
  offer(cs: ChangeSet): Promise<void> {
    return this.#serialized(async () => {
      if (this.#closed || cs.revision <= this.#delivered) return;
      if (cs.revision > this.#delivered + 1) await this.#readAndDeliver(cs.revision - 1);
      this.#delivered = cs.revision;
      this.#o.feed.deliver(cs);
    });
  }

  /** Hands subscribers every change set up to `target` they have not seen, in order. */
  catchUp(target: number): Promise<void> {
    return this.#serialized(() => this.#readAndDeliver(target));
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#syncTimer);
    this.#nodeListeners.clear();
    const watchers = this.#watchers.splice(0);
    await Promise.all(watchers.map((w) => w.cancel().catch(() => undefined)));
  }

  /** A failed delivery does not block the next one. */
  #serialized(fn: () => Promise<void>): Promise<void> {
    const run = this.#chain.then(fn);
    this.#chain = run.catch(() => undefined);
    return run;
  }

  async #readAndDeliver(target: number): Promise<void> {
    if (this.#closed || target <= this.#delivered) return;
    const { client, keys } = this.#o;
    const res = await this.#o.call('catch-up', () => client.kv.range({ key: keys.changeSet(this.#delivered + 1), range_end: keys.changeSet(target + 1) }));
    const sets = res.kvs.map(parseChangeSet);
    if (sets[0]?.revision !== this.#delivered + 1 || sets.some((cs, i) => cs.revision !== this.#delivered + 1 + i)) {
      const err = new AmbitError('AMBIT_ERR_STORE_REVISION', `this replica is at revision ${this.#delivered} and the etcd store no longer holds the change sets after it (it keeps the last ${this.#o.retain}); restart the replica to load a snapshot`, {
        details: { delivered: this.#delivered, target, oldest: sets[0]?.revision },
      });
      this.#o.logger.fatal({ err }, 'cannot follow the mesh revision');
      this.#o.onFatal(err);
      throw err;
    }
    this.#delivered = sets.at(-1)!.revision;
    this.#o.feed.deliver(...sets);
  }
}
