import { errorMessage } from '../../shared/errors.ts';
import type { Logger } from '../../shared/logger.ts';
import type { IssuedCertificateRecord, NodeFields, NodeRecord, Store } from '../store/store.ts';

export interface NodeView extends NodeRecord {
  readonly connected: boolean;
}

export interface NodeTrackerOptions {
  readonly store: Store;
  readonly now: () => number;
  readonly logger: Logger;
  /** Fields-less seen() calls of one node write lastSeen at most once per this (default 10 s). */
  readonly throttleMs?: number;
  /** Node record fields are written behind, batched, at most this late (default 250 ms). */
  readonly flushMs?: number;
}

const DEFAULT_THROTTLE_MS = 10_000;
const DEFAULT_FLUSH_MS = 250;

/**
 * What the controller knows of each node's agent: connected streams (in
 * memory: a restarted controller starts with none), and last seen / acked
 * revision / certificate expiry (persisted, so `ambitctl node list` survives
 * a restart).
 *
 * Record writes go behind: every update merges its fields into one pending
 * entry per node (later fields win), and one flush every flushMs writes all
 * pending nodes with one upsertNodes. After a change, a thousand agents'
 * acks cost one batched write instead of a thousand read-and-swap pairs on
 * etcd. Writes
 * whose callers rely on the record (issued certificates, HBONE addresses)
 * flush at once and resolve once written. A failed flush keeps its fields
 * pending (newer ones win) for the next one. lastSeen alone is throttled, so
 * a busy node costs one field update per interval, not one per CSR.
 */
export class NodeTracker {
  readonly #store: Store;
  readonly #now: () => number;
  readonly #logger: Logger;
  readonly #streams = new Map<string, number>();
  readonly #lastWrite = new Map<string, number>();
  readonly #throttleMs: number;
  readonly #flushMs: number;
  /** node → fields not written yet (bounded: one entry per node). */
  #pending = new Map<string, NodeFields>();
  /** node → whether it watches from this replica, not written yet (shared stores). */
  #connected = new Map<string, boolean>();
  /** The batch being written now. */
  #writing: ReadonlyMap<string, NodeFields> = new Map();
  #timer: NodeJS.Timeout | undefined;
  /** The flushes in order: one write at a time, so a later one never overtakes an earlier one (its fields are newer). */
  #flushes: Promise<void> = Promise.resolve();
  #closed = false;
  /** node → HBONE address, the map every agent receives. */
  readonly #endpoints = new Map<string, string>();
  readonly #endpointListeners = new Set<() => void>();
  /**
   * node → latest certificate issued per identity. The persisted list is read
   * once at load and then kept here (with a shared store, also from the
   * records other replicas write), so an update never waits on a read (two
   * CSRs of one node cannot lose each other's record).
   */
  readonly #certificates = new Map<string, readonly IssuedCertificateRecord[]>();

  constructor(o: NodeTrackerOptions) {
    this.#store = o.store;
    this.#now = o.now;
    this.#logger = o.logger;
    this.#throttleMs = o.throttleMs ?? DEFAULT_THROTTLE_MS;
    this.#flushMs = o.flushMs ?? DEFAULT_FLUSH_MS;
  }

  /** Loads persisted HBONE addresses so agents get them even before their peers reconnect. */
  async load(): Promise<void> {
    for (const n of await this.#store.listNodes()) {
      if (n.hboneAddress) this.#endpoints.set(n.name, n.hboneAddress);
      this.#certificates.set(n.name, n.certificates);
    }
  }

  /**
   * A node record written elsewhere (another replica of a shared store, or
   * this one's earlier write coming back through the watch): its HBONE
   * address reaches this replica's agents, and its issued certificates
   * replace what this replica held for it — unless this replica has newer
   * ones of its own not yet written, which the record would take back.
   */
  recordChanged(n: NodeRecord): void {
    const mine = { ...this.#writing.get(n.name), ...this.#pending.get(n.name) };
    if (mine.certificates === undefined) this.#certificates.set(n.name, n.certificates);
    if (mine.hboneAddress !== undefined) return;
    if (!n.hboneAddress || this.#endpoints.get(n.name) === n.hboneAddress) return;
    this.#endpoints.set(n.name, n.hboneAddress);
    for (const l of this.#endpointListeners) l();
  }

  endpoints(): { name: string; hboneAddress: string }[] {
    return [...this.#endpoints].sort(([a], [b]) => a.localeCompare(b)).map(([name, hboneAddress]) => ({ name, hboneAddress }));
  }

  onEndpointsChange(listener: () => void): () => void {
    this.#endpointListeners.add(listener);
    return () => this.#endpointListeners.delete(listener);
  }

  /**
   * Records where a node's agent accepts HBONE; once it is written (other
   * replicas learn it from the record), tells listeners it changed and resolves.
   */
  async setEndpoint(node: string, hboneAddress: string): Promise<void> {
    if (this.#endpoints.get(node) === hboneAddress) return;
    this.#endpoints.set(node, hboneAddress);
    this.#queue(node, { hboneAddress, lastSeen: this.#now() });
    await this.flush();
    for (const l of this.#endpointListeners) l();
  }

  /** Queues the fields (and lastSeen) for the next flush; resolves at once. */
  async seen(node: string, fields: NodeFields = {}): Promise<void> {
    const now = this.#now();
    const last = this.#lastWrite.get(node) ?? 0;
    if (Object.keys(fields).length === 0 && now - last < this.#throttleMs) return;
    this.#lastWrite.set(node, now);
    this.#queue(node, { lastSeen: now, ...fields });
  }

  /**
   * Writes every pending field now (after the flushes already under way);
   * rejects when that write fails, the fields then staying pending. Also what
   * a graceful shutdown runs before it closes the store.
   */
  flush(): Promise<void> {
    const run = this.#flushes.then(() => this.#write());
    this.#flushes = run.catch(() => undefined);
    return run;
  }

  /** Stops the timer and writes what is pending (the store is closed next). */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.flush();
  }

  #queue(node: string, fields: NodeFields): void {
    this.#pending.set(node, { ...this.#pending.get(node), ...fields });
    this.#schedule();
  }

  #schedule(): void {
    if (this.#timer !== undefined || this.#closed) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      // Failures are logged (and kept pending) by #write.
      this.flush().catch(() => undefined);
    }, this.#flushMs);
    this.#timer.unref();
  }

  async #write(): Promise<void> {
    await this.#writeConnected();
    if (this.#pending.size === 0) return;
    const batch = this.#pending;
    this.#pending = new Map();
    this.#writing = batch;
    try {
      await this.#store.upsertNodes(batch);
    } catch (err) {
      // Nothing is dropped: the fields go back, under any queued since (newer wins), for the next flush.
      for (const [node, fields] of batch) this.#pending.set(node, { ...fields, ...this.#pending.get(node) });
      this.#logger.warn({ err: errorMessage(err), nodes: batch.size }, 'writing node records failed; retrying with the next flush');
      this.#schedule();
      throw err;
    } finally {
      this.#writing = new Map();
    }
  }

  /** Failures are logged and the states kept for the next flush (newer win); they never fail the flush of the records. */
  async #writeConnected(): Promise<void> {
    if (this.#connected.size === 0 || this.#store.markConnectedNodes === undefined) return;
    const batch = this.#connected;
    this.#connected = new Map();
    try {
      await this.#store.markConnectedNodes(batch);
    } catch (err) {
      for (const [node, connected] of batch) if (!this.#connected.has(node)) this.#connected.set(node, connected);
      this.#logger.warn({ err: errorMessage(err), nodes: batch.size }, 'writing which nodes watch from this replica failed; retrying with the next flush');
      this.#schedule();
    }
  }

  streamOpened(node: string): void {
    const n = (this.#streams.get(node) ?? 0) + 1;
    this.#streams.set(node, n);
    if (n === 1) this.#shareConnected(node, true);
  }

  streamClosed(node: string): void {
    const n = (this.#streams.get(node) ?? 1) - 1;
    if (n <= 0) {
      this.#streams.delete(node);
      this.#shareConnected(node, false);
    } else this.#streams.set(node, n);
  }

  /**
   * With a shared store, other replicas learn which nodes watch from this one,
   * written with the next flush (the latest state of a node wins, so a close
   * is never written after a later open); a failed write only affects `node list`.
   */
  #shareConnected(node: string, connected: boolean): void {
    if (this.#store.markConnectedNodes === undefined) return;
    this.#connected.set(node, connected);
    this.#schedule();
  }

  isConnected(node: string): boolean {
    return this.#streams.has(node);
  }

  /** `trustedRoots`: the roots of the bundle the agent holds now (empty from agents that do not report it). */
  async ack(node: string, revision: number, certExpiresAt: number, trustedRoots: readonly string[] = []): Promise<void> {
    await this.seen(node, { ackedRevision: revision, nackedRevision: 0, nackReason: '', ...(certExpiresAt > 0 ? { certExpiresAt } : {}), ...rootsField(trustedRoots) });
  }

  async nack(node: string, revision: number, reason: string, trustedRoots: readonly string[] = []): Promise<void> {
    await this.seen(node, { nackedRevision: revision, nackReason: reason.slice(0, 1024), ...rootsField(trustedRoots) });
  }

  /**
   * Records a certificate just issued to `node`: it replaces the previous one
   * of that identity; expired ones are dropped. Resolves once written
   * (rotation readiness on every replica reads the records).
   */
  async issued(node: string, cert: IssuedCertificateRecord): Promise<void> {
    const now = this.#now();
    const kept = (this.#certificates.get(node) ?? []).filter((c) => c.identity !== cert.identity && c.notAfter > now);
    const next = [...kept, { identity: cert.identity, root: cert.root, notAfter: cert.notAfter }];
    this.#certificates.set(node, next);
    this.#lastWrite.set(node, now);
    this.#queue(node, { lastSeen: now, certificates: next });
    await this.flush();
  }

  async list(): Promise<NodeView[]> {
    const records = await this.#store.listNodes();
    // A shared store also knows the nodes watching from other replicas.
    const elsewhere = await this.#store.connectedNodes?.().catch(() => undefined);
    // This replica's fields not written yet show at once. The in-memory list is
    // authoritative (see #certificates): a record write that failed does not hide a certificate.
    return records.map((r) => ({
      ...r,
      ...this.#writing.get(r.name),
      ...this.#pending.get(r.name),
      name: r.name,
      certificates: this.#certificates.get(r.name) ?? r.certificates,
      connected: this.isConnected(r.name) || (elsewhere?.has(r.name) ?? false),
    }));
  }
}

/** Fingerprints are 64 hex digits; anything else from an agent is dropped rather than stored. */
function rootsField(roots: readonly string[]): { trustedRoots?: readonly string[] } {
  const valid = [...new Set(roots.filter((r) => /^[0-9a-f]{64}$/.test(r)))].slice(0, 16);
  return valid.length > 0 ? { trustedRoots: valid } : {};
}
