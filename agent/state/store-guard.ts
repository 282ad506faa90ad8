import { AmbitError } from '../../shared/errors.ts';

/** Why an update was refused: the `reason` label of ambit_watch_rejected_total. */
export type RefusalReason = 'store_identity' | 'revision_behind';

export interface HeldState {
  /** The store identity of the state the agent serves; '' when it has none or its cache predates identities. */
  readonly storeId: string;
  readonly revision: number;
}

export interface IncomingUpdate {
  /** '' from a controller that sends no identity. */
  readonly storeId: string;
  readonly revision: number;
  readonly snapshot: boolean;
}

/**
 * Whether an agent takes a controller update over the state it serves. The
 * rule (docs/reliability.md, "An emptied store"):
 * - state from another store identity is refused: revisions of two stores
 *   say nothing about each other, and a controller whose store was emptied
 *   and reinitialized would otherwise wipe every agent's policies and
 *   workloads with its empty snapshot;
 * - from the same store, any update at a revision lower than the one held
 *   is refused: a store only moves forward, so going back means it was
 *   restored from an older backup (or is not the store it claims to be);
 * - `acceptStore` (agent --accept-store ID) is the operator's way out: an
 *   update from that store identity is taken either way;
 * - an agent that holds no identity (first start, or a cache written before
 *   identities existed), or a controller that sends none, is not judged.
 * Throws AMBIT_ERR_STATE_REFUSED, whose message is the nack reason the
 * controller records (ambitctl node list).
 */
export function checkUpdate(held: HeldState, u: IncomingUpdate, acceptStore: string | undefined): void {
  if (held.storeId === '' || u.storeId === '' || u.storeId === acceptStore) return;
  if (u.storeId !== held.storeId) {
    throw refused('store_identity', `refusing state from store ${u.storeId} (revision ${u.revision}): this agent serves state of store ${held.storeId} at revision ${held.revision}; keeping it. If the controller's new store is right, restart the agent with --accept-store ${u.storeId}`, held, u);
  }
  if (u.revision < held.revision) {
    throw refused('revision_behind', `refusing ${u.snapshot ? 'a snapshot' : 'an update'} of store ${u.storeId} at revision ${u.revision}, behind the revision ${held.revision} this agent serves (was the store restored from an older backup?); keeping it. If the controller's state is right, restart the agent with --accept-store ${u.storeId}`, held, u);
  }
}

function refused(reason: RefusalReason, message: string, held: HeldState, u: IncomingUpdate): AmbitError {
  return new AmbitError('AMBIT_ERR_STATE_REFUSED', message, { details: { reason, heldStoreId: held.storeId, heldRevision: held.revision, storeId: u.storeId, revision: u.revision } });
}
