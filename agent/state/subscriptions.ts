import { subscriptionHost } from '../../shared/service-host.ts';
/*
 * The destinations a node-scoped agent follows (docs/scale.md, "The scoped
 * watch"): a bounded least-recently-used set of hosts (service VIPs,
 * `name.namespace` service names, workload addresses), each either waiting
 * for the controller's answer or answered (found, or not in the mesh).
 * Connections use it on first use of a destination; the watch client sends
 * what it asks for and the start of every stream carries all of it.
 */

/** How many destinations an agent follows at most by default: its working set, not the mesh. */
export const DEFAULT_MAX_SUBSCRIPTIONS = 1_000;

export interface SubscriptionsOptions {
  /** Most hosts followed; the least recently used one beyond it is dropped. */
  readonly max?: number;
  /**
   * Sends a Subscribe on the open Watch stream (hosts to follow, hosts to
   * drop). Without an open stream it does nothing: the next WatchStart
   * carries every host followed, and dropped ones are simply not in it.
   */
  readonly send: (hosts: readonly string[], drop: readonly string[]) => void;
  /** Called when the set of hosts changes (one followed, some dropped), so it is saved with the cached state. */
  readonly changed?: () => void;
}

/** Why a destination could not be waited for. */
export class SubscriptionTimeout extends Error {
  readonly host: string;
  constructor(host: string, ms: number) {
    super(`the controller did not say within ${ms} ms what ${host} is`);
    this.name = 'SubscriptionTimeout';
    this.host = host;
  }
}

interface Entry {
  /** undefined: asked, not answered yet. */
  found: boolean | undefined;
  readonly waiters: (() => void)[];
}

export class Subscriptions {
  readonly #max: number;
  readonly #send: SubscriptionsOptions['send'];
  readonly #changed: () => void;
  /** In least- to most-recently-used order (a Map keeps insertion order; a use moves a host to the end). */
  readonly #entries = new Map<string, Entry>();

  constructor(o: SubscriptionsOptions) {
    this.#max = Math.max(1, o.max ?? DEFAULT_MAX_SUBSCRIPTIONS);
    this.#send = o.send;
    this.#changed = o.changed ?? (() => undefined);
  }

  get size(): number {
    return this.#entries.size;
  }

  /** Every host followed, answered or not, least recently used first: what a WatchStart carries. */
  hosts(): string[] {
    return [...this.#entries.keys()];
  }

  /** undefined: not followed; else whether the controller found it (undefined found: waiting). */
  state(host: string): { found: boolean | undefined } | undefined {
    const e = this.#entries.get(host);
    return e ? { found: e.found } : undefined;
  }

  /**
   * Marks `host` used. Returns undefined when it is answered (the mesh state
   * holds what it resolves to, or it is not in the mesh), else a promise
   * that resolves once the controller answers and rejects with a
   * SubscriptionTimeout after `timeoutMs`. A host not followed yet is asked
   * for now.
   */
  use(host: string, timeoutMs: number): Promise<void> | undefined {
    let e = this.#entries.get(host);
    if (e) {
      this.#entries.delete(host);
      this.#entries.set(host, e);
      if (e.found !== undefined) return undefined;
    } else {
      e = { found: undefined, waiters: [] };
      this.#entries.set(host, e);
      const drop = this.#evict();
      this.#send([host], drop);
      this.#changed();
    }
    const entry = e;
    return new Promise<void>((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        const i = entry.waiters.indexOf(done);
        if (i >= 0) entry.waiters.splice(i, 1);
        reject(new SubscriptionTimeout(host, timeoutMs));
      }, timeoutMs);
      entry.waiters.push(done);
    });
  }

  /**
   * Follows `hosts` (least recently used first, as hosts() gave them before
   * a restart) without asking: the next WatchStart carries them. One the
   * held (cached) state resolves counts as answered, so a connection to it
   * goes on at once from that state, as it did before the restart, and the
   * controller's first snapshot, which holds it again, refreshes it; any
   * other waits for that snapshot's answer like a first use. Hosts already
   * followed keep their place; beyond the bound only the most recently used
   * are kept.
   */
  restore(hosts: readonly string[], held: (host: string) => boolean): void {
    const fresh = hosts.filter((h) => !this.#entries.has(h));
    const room = Math.max(0, this.#max - this.#entries.size);
    const restored = new Map<string, Entry>();
    for (const h of fresh.slice(Math.max(0, fresh.length - room))) restored.set(h, { found: held(h) ? true : undefined, waiters: [] });
    // Restored hosts were used before anything used since this start: they go at the least recently used end.
    for (const [h, e] of this.#entries) restored.set(h, e);
    this.#entries.clear();
    for (const [h, e] of restored) this.#entries.set(h, e);
  }

  /** The controller's answers (after the response carrying them is applied to the mesh state). */
  answered(answers: readonly { readonly host: string; readonly found: boolean }[]): void {
    for (const a of answers) {
      const e = this.#entries.get(a.host);
      // An answer for a host dropped meanwhile: the controller stops following it on the drop.
      if (!e) continue;
      e.found = a.found;
      for (const w of e.waiters.splice(0)) w();
    }
  }

  /** Least recently used hosts beyond the bound, removed (never one still waiting for its answer). */
  #evict(): string[] {
    const drop: string[] = [];
    for (const [host, e] of this.#entries) {
      if (this.#entries.size <= this.#max) break;
      if (e.found === undefined) continue;
      this.#entries.delete(host);
      drop.push(host);
    }
    return drop;
  }
}

/**
 * What a connection to (or an inbound claim of) `host` waits for before the
 * mesh state is read: undefined when nothing (a full watch, a host that is
 * no mesh name, or one already answered), else the subscription's answer.
 */
export type DestinationWait = (host: string) => Promise<void> | undefined;

export interface DestinationWaitOptions {
  /** How long a connection waits for the answer: the connect timeout, as for an endpoint that does not answer. */
  readonly timeoutMs: number;
  /** Whether a Watch stream is up. */
  readonly connected: () => boolean;
  /** Whether the state held resolves `host` (a service or a workload), as cached before the controller went away. */
  readonly holds: (host: string) => boolean;
  /**
   * Hosts to follow with `host` once it is answered (the backends and mirrors
   * of routes attached to the service it names: state/route-backends.ts); a
   * connection waits for them too, so its route table resolves.
   */
  readonly related?: (host: string) => readonly string[];
}

/**
 * Node scope's wait. With the controller away, a host the held (cached)
 * state resolves is served from it at once (the next WatchStart carries the
 * subscription): an agent keeps serving what it had, as a full one does.
 */
export function destinationWait(subs: Subscriptions, o: DestinationWaitOptions): DestinationWait {
  return (host) => {
    const key = subscriptionHost(host);
    if (key === undefined) return undefined;
    const related = (): Promise<void> | undefined => {
      const waits = (o.related?.(key) ?? []).map((h) => subs.use(h, o.timeoutMs)).filter((w) => w !== undefined);
      return waits.length === 0 ? undefined : Promise.all(waits).then(() => undefined);
    };
    const p = subs.use(key, o.timeoutMs);
    if (p === undefined) return related();
    if (!o.connected() && o.holds(host)) {
      p.catch(() => undefined);
      return undefined;
    }
    return p.then(related);
  };
}

/** Follows, without waiting, what hosts already followed pull in (after an update: a route may have gained a backend). */
export function followRelated(subs: Subscriptions, related: (host: string) => readonly string[], timeoutMs: number): void {
  for (const h of subs.hosts()) {
    if (subs.state(h)?.found !== true) continue;
    for (const r of related(h)) if (subs.state(r) === undefined) subs.use(r, timeoutMs)?.catch(() => undefined);
  }
}
