import { deniedBy, type ConnectionFacts, type Decision } from '../../shared/authorization.ts';
import type { RequestPolicy } from '../../shared/authorization-http.ts';

export interface TrackedConnection {
  readonly direction: 'inbound' | 'outbound';
  /** Inbound connections carry what authorization needs to re-check them. */
  readonly facts?: ConnectionFacts;
  /** Closes the connection now, recording why; `policy`: the policy a policy close is counted under. */
  readonly close: (reason: string, flags: string, policy?: string) => void;
  /** A connection to an HTTP port: authorizes its next requests by `policy`. */
  readonly authorizeRequests?: (policy: RequestPolicy) => void;
  readonly done: Promise<void>;
}

/**
 * Every live connection, so the agent can re-check inbound ones when policy
 * changes (DESIGN: "A policy change re-checks live connections and closes
 * those now denied") and drain them on SIGTERM.
 */
export class ConnectionTracker {
  readonly #live = new Set<TrackedConnection>();

  add(c: TrackedConnection): void {
    this.#live.add(c);
    void c.done.finally(() => this.#live.delete(c));
  }

  get size(): number {
    return this.#live.size;
  }

  /**
   * Closes inbound connections the new decision function denies; returns how
   * many. Those it allows to HTTP ports get their new request policy.
   */
  recheck(decide: (facts: ConnectionFacts) => Decision, requestPolicy?: (facts: ConnectionFacts) => RequestPolicy): number {
    let closed = 0;
    for (const c of this.#live) {
      if (!c.facts) continue;
      const d = decide(c.facts);
      if (!d.allowed) {
        const policy = deniedBy(d);
        c.close(`denied by policy ${policy} after a policy change`, 'DENY', policy);
        closed++;
      } else if (requestPolicy && c.authorizeRequests && c.facts.httpPort) {
        c.authorizeRequests(requestPolicy(c.facts));
      }
    }
    return closed;
  }

  /** Waits for live connections to finish, up to deadlineMs; then closes the rest. Resolves with how many were cut. */
  async drain(deadlineMs: number): Promise<number> {
    if (this.#live.size === 0) return 0;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), deadlineMs)));
    const all = Promise.all([...this.#live].map((c) => c.done)).then(() => 'done' as const);
    const outcome = await Promise.race([all, timeout]);
    clearTimeout(timer);
    if (outcome === 'done') return 0;
    const rest = [...this.#live];
    for (const c of rest) c.close('agent shutting down: drain deadline reached', 'DC');
    await Promise.allSettled(rest.map((c) => c.done));
    return rest.length;
  }
}
