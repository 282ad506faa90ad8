import type { ChangeSet } from '../../shared/resources/types.ts';

type Listener = (cs: ChangeSet) => void;

/**
 * Hands change sets to subscribers in revision order, exactly once each
 * (shared by the SQLite and Kubernetes stores). A
 * listener that causes a commit re-enters here; its change set is queued
 * behind the current one rather than delivered first. A throwing listener
 * does not stop the others; its error is rethrown asynchronously, because the
 * commit itself succeeded and must not be reported as failed.
 */
export class ChangeFeed {
  readonly #listeners = new Set<Listener>();
  readonly #pending: ChangeSet[] = [];
  #delivering = false;

  subscribe(listener: Listener): () => void {
    // Wrap so subscribing one function twice yields two independent subscriptions.
    const entry: Listener = (cs) => listener(cs);
    this.#listeners.add(entry);
    return () => {
      this.#listeners.delete(entry);
    };
  }

  /** Delivers change sets (several at once when catching up, so a re-entrant commit queues behind all of them). */
  deliver(...sets: ChangeSet[]): void {
    this.#pending.push(...sets);
    if (this.#delivering) return;
    this.#delivering = true;
    const errors: unknown[] = [];
    try {
      for (let next = this.#pending.shift(); next !== undefined; next = this.#pending.shift()) {
        // Copy: a listener added during delivery starts with the next commit.
        for (const listener of [...this.#listeners]) {
          if (!this.#listeners.has(listener)) continue;
          try {
            listener(next);
          } catch (err) {
            errors.push(err);
          }
        }
      }
    } finally {
      this.#delivering = false;
    }
    for (const err of errors) {
      queueMicrotask(() => {
        throw err;
      });
    }
  }

  clear(): void {
    this.#listeners.clear();
    this.#pending.length = 0;
  }
}
