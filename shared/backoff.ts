/**
 * Exponential backoff with full jitter (AWS architecture blog, "Exponential
 * Backoff And Jitter"): the n-th delay is uniform in [min, min(max, base·2^n)].
 * Full jitter spreads a fleet of agents reconnecting after a controller restart
 * instead of having them retry in lock-step.
 */
export interface BackoffOptions {
  readonly initialMs: number;
  readonly maxMs: number;
  readonly factor?: number;
  /** Lower bound of every delay, so a retry storm never spins at ~0 ms. */
  readonly minMs?: number;
  readonly random?: () => number;
}

export class Backoff {
  readonly #o: Required<BackoffOptions>;
  #attempt = 0;

  constructor(options: BackoffOptions) {
    this.#o = { factor: 2, minMs: Math.min(options.initialMs, 50), random: Math.random, ...options };
  }

  /** Delay before the next attempt; each call grows the ceiling. */
  next(): number {
    const ceiling = Math.min(this.#o.maxMs, this.#o.initialMs * this.#o.factor ** this.#attempt);
    this.#attempt = Math.min(this.#attempt + 1, 64);
    return Math.round(this.#o.minMs + this.#o.random() * Math.max(0, ceiling - this.#o.minMs));
  }

  reset(): void {
    this.#attempt = 0;
  }

  get attempt(): number {
    return this.#attempt;
  }
}

/** A delay in [base·(1-spread), base·(1+spread)]: for renewal times, so certificates of a fleet do not renew together. */
export function jitter(baseMs: number, spread: number, random: () => number = Math.random): number {
  return Math.round(baseMs * (1 - spread + 2 * spread * random()));
}

/** Resolves after ms, or rejects early with the signal's reason when aborted. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason as Error);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason as Error);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
