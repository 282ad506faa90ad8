import type { Change, ChangeSet, Resource } from '../../shared/resources/types.ts';

export type { Change, ChangeSet };

/**
 * The controller's persistence contract. Three backends implement it
 * (sqlite: embedded default; etcd: HA; kubernetes: derived from the API).
 *
 * Invariants every backend keeps:
 * - The revision is a single mesh-wide counter. Every successful commit bumps it
 *   by exactly one; all changes of one commit share that revision, and are seen
 *   by readers and subscribers all together or not at all.
 * - A resource's metadata.revision is the revision of the commit that last wrote it.
 * - changesSince(r) returns every commit with revision > r in order, or
 *   undefined when the backend no longer holds all of them (compacted); the
 *   caller then falls back to a snapshot.
 * - subscribe() listeners see commits in revision order, exactly once each,
 *   after they are durable.
 * Methods are async because the etcd and Kubernetes backends are; the sqlite
 * backend resolves immediately.
 */
export interface Snapshot {
  readonly revision: number;
  /** Every resource, ordered by kind, namespace, name. */
  readonly resources: readonly Resource[];
}

export interface NodeRecord {
  readonly name: string;
  /** ms since epoch of the first bootstrap */
  readonly registeredAt: number;
  /** ms since epoch the node last talked to a controller (watch, CSR); 0 if never */
  readonly lastSeen: number;
  /** highest revision the node's agent acknowledged */
  readonly ackedRevision: number;
  /** revision the agent last refused (nack), 0 if none since its last ack */
  readonly nackedRevision: number;
  readonly nackReason: string;
  /** Earliest expiry (ms since epoch) among the node's certificates, as the agent reports it; 0 if unknown. */
  readonly certExpiresAt: number;
  /** Where the node's agent accepts HBONE ("ip:port"), as the agent reports it; "" if unknown. */
  readonly hboneAddress: string;
  /** SHA-256 fingerprints of the roots of the trust bundle the agent last acknowledged; empty if unknown. */
  readonly trustedRoots: readonly string[];
  /**
   * The latest certificate the controller issued to the node for each
   * identity (its node identity and its workloads'), with the root it chains
   * to: what tells whether retiring a root would strand a live certificate.
   */
  readonly certificates: readonly IssuedCertificateRecord[];
}

/** Fields of a node record to write; the ones left out keep their stored value. */
export type NodeFields = Partial<Omit<NodeRecord, 'name'>>;

export interface IssuedCertificateRecord {
  /** SPIFFE ID URI */
  readonly identity: string;
  /** SHA-256 fingerprint of the root the certificate chains to */
  readonly root: string;
  /** ms since epoch */
  readonly notAfter: number;
}

export interface TokenRecord {
  /** Public token id (first part of the token string); the secret is never stored. */
  readonly id: string;
  /** hex SHA-256 of the token secret */
  readonly secretHash: string;
  readonly node: string;
  readonly createdAt: number;
  readonly expiresAt: number;
  /** ms since epoch it was used, 0 if unused */
  readonly usedAt: number;
}

export interface Store {
  readonly backend: 'sqlite' | 'etcd' | 'kubernetes';

  revision(): Promise<number>;
  /**
   * Who this store is: an id made when the store was created, never reused.
   * Revisions are only comparable between states of one identity, so agents
   * use it to tell a store that went back, or was replaced by an empty one,
   * from one that moved forward (sent on every Watch response).
   */
  identity(): Promise<string>;
  snapshot(): Promise<Snapshot>;
  changesSince(revision: number): Promise<readonly ChangeSet[] | undefined>;

  /**
   * Atomically applies changes as one new revision. When expectedRevision is
   * given and the store's revision differs, nothing is written and an
   * AMBIT_ERR_RESOURCE_CONFLICT error is thrown (optimistic concurrency, so
   * several controllers can validate against their view and commit safely).
   * Deleting a missing resource throws AMBIT_ERR_RESOURCE_NOT_FOUND and writes nothing.
   * An empty change list writes nothing and returns the current revision.
   */
  commit(changes: readonly Change[], expectedRevision?: number): Promise<ChangeSet>;

  /** Listener is called for each commit (by any writer) in revision order. Returns an unsubscribe function. */
  subscribe(listener: (cs: ChangeSet) => void): () => void;

  /**
   * Shared stores only (etcd), where other replicas write too: resolves once
   * every commit the backend holds has been handed to subscribers, so a
   * replica answering an agent that comes from another replica is not behind it.
   */
  sync?(): Promise<void>;

  /**
   * Shared stores only (etcd): node records as any replica writes them, so
   * each replica knows every node's HBONE address and issued certificates.
   * Returns an unsubscribe function.
   */
  onNodeChange?(listener: (node: NodeRecord) => void): () => void;

  /**
   * Shared stores only (etcd): records that `node` has a watch stream on this
   * replica (connected: true) or no longer has (false). A replica's records
   * vanish with it, so every replica can tell which nodes are connected to any.
   */
  markConnected?(node: string, connected: boolean): Promise<void>;
  /** Shared stores only (etcd): markConnected for many nodes at once (the controller's write-behind flush). */
  markConnectedNodes?(states: ReadonlyMap<string, boolean>): Promise<void>;
  /** Shared stores only (etcd): the nodes with a watch stream on any replica. */
  connectedNodes?(): Promise<ReadonlySet<string>>;

  putToken(token: TokenRecord): Promise<void>;
  /**
   * Marks the token used, atomically: of two concurrent calls for one token
   * only one succeeds. Throws AMBIT_ERR_TOKEN_INVALID (details.reason:
   * 'unknown' | 'used' | 'expired' | 'mismatch') when the id is unknown, the
   * hash differs, it was used, or it expired at `now`. Returns the record as it
   * was before use.
   */
  consumeToken(id: string, secretHash: string, now: number): Promise<TokenRecord>;
  listTokens(): Promise<readonly TokenRecord[]>;

  /** Inserts or merges (given fields win) a node record. */
  upsertNode(name: string, fields: NodeFields): Promise<NodeRecord>;
  /**
   * Inserts or merges many node records, each as upsertNode does: what the
   * controller's write-behind of acks, CSRs and addresses flushes. SQLite
   * (and the Kubernetes store's local file) writes them in one transaction;
   * etcd in one read and one compare-and-swap transaction per at most 100
   * nodes, so on a failure the chunks before the failing one may be written
   * (writing them again is harmless: a merge of the same fields).
   */
  upsertNodes(updates: ReadonlyMap<string, NodeFields>): Promise<void>;
  getNode(name: string): Promise<NodeRecord | undefined>;
  listNodes(): Promise<readonly NodeRecord[]>;

  /** Small opaque key/value settings (CA bundle history, cluster id). */
  getSetting(key: string): Promise<string | undefined>;
  putSetting(key: string, value: string): Promise<void>;

  close(): Promise<void>;
}
