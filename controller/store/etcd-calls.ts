import { isRecoverableError } from 'etcd3';
import { AmbitError, errorMessage } from '../../shared/errors.ts';

/** Runs one etcd operation with the store's retries (callWithRetry bound to a store). */
export type EtcdCall = <T>(op: string, fn: () => Promise<T>) => Promise<T>;

/** The store's error for an etcd failure, with a hint when etcd refused a commit for its size. */
export function storeIo(op: string, err: unknown, details: Record<string, unknown> = {}): AmbitError {
  if (err instanceof AmbitError) return err;
  const msg = errorMessage(err);
  const hint = /too many operations in txn/.test(msg)
    ? ' (the commit needs more operations than etcd\'s --max-txn-ops allows; raise it, see docs/ha.md)'
    : /request is too large/.test(msg) ? ' (the commit is larger than etcd\'s --max-request-bytes; raise it, see docs/ha.md)' : '';
  return new AmbitError('AMBIT_ERR_STORE_IO', `etcd store: ${op} failed: ${msg}${hint}`, { cause: err, details: { op, ...details } });
}

/** Unavailable members, deadlines and leader elections pass; anything else (a bad request, permissions) is reported at once. */
function isRetryable(err: unknown): boolean {
  if (err instanceof AmbitError) return false;
  if (typeof err === 'object' && err !== null && isRecoverableError(err as Error)) return true;
  return /deadline|unavailable|leader|timed out|timeout|ECONNREFUSED|ECONNRESET|No connection|circuit/i.test(errorMessage(err));
}

/**
 * Runs an etcd call, retrying what a member failure or a leader election
 * explains, for up to `timeoutMs`; then fails with AMBIT_ERR_STORE_IO.
 * `closed` stops the retries of a store being closed.
 */
export async function callWithRetry<T>(op: string, fn: () => Promise<T>, timeoutMs: number, closed: () => boolean): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (let attempt = 1; ; attempt++) {
    if (closed()) throw new AmbitError('AMBIT_ERR_STORE_IO', 'the etcd store is closed', { details: { op } });
    try {
      return await fn();
    } catch (err) {
      if (!isRetryable(err) || Date.now() >= deadline) throw storeIo(op, err);
      await new Promise((r) => setTimeout(r, Math.min(100 * attempt, 1_000)));
    }
  }
}
