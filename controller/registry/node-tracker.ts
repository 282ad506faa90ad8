import type { IssuedCertificateRecord, NodeRecord, Store } from '../store/store.ts';

export interface NodeView extends NodeRecord {
  readonly connected: boolean;
}

/**
 * What the controller knows of each node's agent: connected streams (in
 * memory: a restarted controller starts with none), and last seen / acked
 * revision / certificate expiry (persisted, so `ambitctl node list` survives
 * a restart). lastSeen writes are throttled so a busy node costs one store
 * write per interval, not one per CSR.
 */
export class NodeTracker {
  readonly #store: Store;
  readonly #now: () => number;
  readonly #streams = new Map<string, number>();
  readonly #lastWrite = new Map<string, number>();
  readonly #throttleMs: number;
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

  constructor(store: Store, now: () => number, throttleMs = 10_000) {
    this.#store = store;
    this.#now = now;
    this.#throttleMs = throttleMs;
  }

  /** Loads persisted HBONE addresses so agents get them even before their peers reconnect. */
  async load(): Promise<void> {
    for (const n of await this.#store.listNodes()) {
      if (n.hboneAddress) this.#endpoints.set(n.name, n.hboneAddress);
      this.#certificates.set(n.name, n.certificates);
    }
  }

  /**
   * A node record written elsewhere (another replica of a shared store): its
   * HBONE address reaches this replica's agents, and its issued certificates
   * replace what this replica held for it.
   */
  recordChanged(n: NodeRecord): void {
    this.#certificates.set(n.name, n.certificates);
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

  /** Records where a node's agent accepts HBONE; tells listeners when it changed. */
  async setEndpoint(node: string, hboneAddress: string): Promise<void> {
    if (this.#endpoints.get(node) === hboneAddress) return;
    this.#endpoints.set(node, hboneAddress);
    await this.#store.upsertNode(node, { hboneAddress, lastSeen: this.#now() });
    for (const l of this.#endpointListeners) l();
  }

  async seen(node: string, fields: Partial<Omit<NodeRecord, 'name'>> = {}): Promise<void> {
    const now = this.#now();
    const last = this.#lastWrite.get(node) ?? 0;
    if (Object.keys(fields).length === 0 && now - last < this.#throttleMs) return;
    this.#lastWrite.set(node, now);
    await this.#store.upsertNode(node, { lastSeen: now, ...fields });
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

  /** With a shared store, other replicas learn which nodes watch from this one (best effort: a failed write only affects `node list`). */
  #shareConnected(node: string, connected: boolean): void {
    void this.#store.markConnected?.(node, connected).catch(() => undefined);
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

  /** Records a certificate just issued to `node`: it replaces the previous one of that identity; expired ones are dropped. */
  async issued(node: string, cert: IssuedCertificateRecord): Promise<void> {
    const now = this.#now();
    const kept = (this.#certificates.get(node) ?? []).filter((c) => c.identity !== cert.identity && c.notAfter > now);
    const next = [...kept, { identity: cert.identity, root: cert.root, notAfter: cert.notAfter }];
    this.#certificates.set(node, next);
    this.#lastWrite.set(node, now);
    await this.#store.upsertNode(node, { lastSeen: now, certificates: next });
  }

  async list(): Promise<NodeView[]> {
    const records = await this.#store.listNodes();
    // A shared store also knows the nodes watching from other replicas.
    const elsewhere = await this.#store.connectedNodes?.().catch(() => undefined);
    // The in-memory list is authoritative (see #certificates): a record write that failed does not hide a certificate.
    return records.map((r) => ({ ...r, certificates: this.#certificates.get(r.name) ?? r.certificates, connected: this.isConnected(r.name) || (elsewhere?.has(r.name) ?? false) }));
  }
}

/** Fingerprints are 64 hex digits; anything else from an agent is dropped rather than stored. */
function rootsField(roots: readonly string[]): { trustedRoots?: readonly string[] } {
  const valid = [...new Set(roots.filter((r) => /^[0-9a-f]{64}$/.test(r)))].slice(0, 16);
  return valid.length > 0 ? { trustedRoots: valid } : {};
}
