import { readFileSync } from 'node:fs';
import type { Socket } from 'node:net';

/**
 * Admission control for a listener whose clients must prove themselves soon
 * after connecting (the controller's gRPC port). Without it, TLS clients with
 * no certificate could connect and sit idle until the process ran out of file
 * descriptors, locking out the admin and every agent.
 *
 * A connection is *pending* from accept until it proves itself (a TLS
 * handshake with a client certificate that verified). A pending connection
 *  - must have a call in progress when `proveWithinMs` has passed, else it is
 *    closed (a Bootstrap call, which legitimately has no certificate, keeps
 *    its connection for as long as it runs, and the connection is closed when
 *    it ends);
 *  - counts towards `maxPendingPerSource` for its source address; a
 *    connection past that cap is refused at once;
 *  - is evictable: when `maxConnections` are open, the oldest idle pending
 *    connection is closed to admit the new one, so a flood cannot keep a
 *    legitimate client out — it only shortens the flood's own deadline.
 * Proven connections are never evicted; their idleness is bounded by gRPC's
 * max_connection_idle_ms instead.
 */
export interface AdmissionLimits {
  /** Open connections at most (proven and pending together). */
  readonly maxConnections: number;
  /** Pending connections at most per source address. */
  readonly maxPendingPerSource: number;
  /** A pending connection without a call in progress is closed this long after accept. */
  readonly proveWithinMs: number;
}

export type AdmissionOutcome = 'refused-per-source' | 'refused-full' | 'evicted' | 'expired';

/** What admit hands back for a connection it took. */
export interface Admitted {
  /**
   * How to close the connection from now on, once a layer (TLS, HTTP/2) has
   * taken it over and destroying the accepted socket alone no longer closes
   * it; `socket` is the layer whose 'close' ends the connection.
   */
  use(socket: Socket, close: () => void): void;
  /** The peer proved itself (a verified client certificate): no deadline, never evicted. */
  authenticated(): void;
}

interface Tracked {
  readonly key: string;
  readonly socket: Socket;
  close: () => void;
  readonly source: string;
  proven: boolean;
  calls: number;
  overdue: boolean;
  timer: NodeJS.Timeout | undefined;
}

export class ConnectionAdmission {
  readonly #limits: AdmissionLimits;
  readonly #onDrop: (outcome: AdmissionOutcome, source: string) => void;
  /** Keyed by "address|port" of the peer; insertion order is age, oldest first. */
  readonly #open = new Map<string, Tracked>();
  readonly #pendingBySource = new Map<string, number>();

  constructor(limits: AdmissionLimits, onDrop: (outcome: AdmissionOutcome, source: string) => void = () => undefined) {
    this.#limits = limits;
    this.#onDrop = onDrop;
  }

  get open(): number {
    return this.#open.size;
  }

  /** Takes a freshly accepted socket; undefined when it was refused (and destroyed). */
  admit(socket: Socket): Admitted | undefined {
    const source = socket.remoteAddress;
    const port = socket.remotePort;
    if (source === undefined || port === undefined) {
      socket.destroy();
      return undefined;
    }
    if ((this.#pendingBySource.get(source) ?? 0) >= this.#limits.maxPendingPerSource) {
      socket.destroy();
      this.#onDrop('refused-per-source', source);
      return undefined;
    }
    if (this.#open.size >= this.#limits.maxConnections) {
      const victim = this.#oldestIdlePending();
      if (!victim) {
        socket.destroy();
        this.#onDrop('refused-full', source);
        return undefined;
      }
      victim.close();
      this.#forget(victim);
      this.#onDrop('evicted', victim.source);
    }
    const key = keyOf(source, port);
    const tracked: Tracked = { key, socket, close: () => socket.destroy(), source, proven: false, calls: 0, overdue: false, timer: undefined };
    tracked.timer = setTimeout(() => {
      tracked.timer = undefined;
      if (tracked.proven) return;
      if (tracked.calls > 0) {
        tracked.overdue = true;
        return;
      }
      tracked.close();
      this.#onDrop('expired', source);
    }, this.#limits.proveWithinMs);
    tracked.timer.unref();
    this.#open.set(key, tracked);
    this.#pendingBySource.set(source, (this.#pendingBySource.get(source) ?? 0) + 1);
    socket.once('close', () => this.#forget(tracked));
    return this.#handle(tracked);
  }

  /** The admitted connection from address:port (e.g. to hand it its TLS layer), if it is still open. */
  find(address: string | undefined, port: number | undefined): Admitted | undefined {
    const tracked = address === undefined || port === undefined ? undefined : this.#open.get(keyOf(address, port));
    return tracked && this.#handle(tracked);
  }

  #handle(tracked: Tracked): Admitted {
    return {
      use: (layer, close) => {
        tracked.close = close;
        layer.once('close', () => this.#forget(tracked));
      },
      authenticated: () => this.#prove(tracked),
    };
  }

  /**
   * A call started on the connection from address:port (a pending one with a
   * call in progress is not evicted, nor closed before the call ends).
   * Returns the function to call when the call ends.
   */
  callStarted(address: string | undefined, port: number | undefined): () => void {
    const tracked = address === undefined || port === undefined ? undefined : this.#open.get(keyOf(address, port));
    if (!tracked) return () => undefined;
    tracked.calls += 1;
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      tracked.calls -= 1;
      // A certificate-less connection past its deadline lives only as long as its calls.
      if (tracked.overdue && !tracked.proven && tracked.calls === 0) {
        tracked.close();
        this.#onDrop('expired', tracked.source);
      }
    };
  }

  /** Closes every tracked connection (shutdown). */
  closeAll(): void {
    for (const t of [...this.#open.values()]) t.close();
  }

  #prove(tracked: Tracked): void {
    if (tracked.proven || this.#open.get(tracked.key) !== tracked) return;
    tracked.proven = true;
    if (tracked.timer) clearTimeout(tracked.timer);
    tracked.timer = undefined;
    this.#decPending(tracked.source);
  }

  #oldestIdlePending(): Tracked | undefined {
    for (const t of this.#open.values()) if (!t.proven && t.calls === 0) return t;
    return undefined;
  }

  #forget(tracked: Tracked): void {
    if (this.#open.get(tracked.key) !== tracked) return;
    this.#open.delete(tracked.key);
    if (tracked.timer) clearTimeout(tracked.timer);
    tracked.timer = undefined;
    if (!tracked.proven) this.#decPending(tracked.source);
  }

  #decPending(source: string): void {
    const n = (this.#pendingBySource.get(source) ?? 1) - 1;
    if (n <= 0) this.#pendingBySource.delete(source);
    else this.#pendingBySource.set(source, n);
  }
}

const keyOf = (address: string, port: number): string => `${address}|${port}`;

/**
 * The process's soft limit on open file descriptors (RLIMIT_NOFILE), read
 * from /proc/self/limits since Node has no getrlimit; undefined where that
 * file does not exist (not Linux) or says "unlimited".
 */
export function descriptorLimit(read: (path: string) => string = (p) => readFileSync(p, 'utf8')): number | undefined {
  let text: string;
  try {
    text = read('/proc/self/limits');
  } catch {
    return undefined;
  }
  const m = /^Max open files\s+(\d+|unlimited)\s/m.exec(text);
  if (!m || m[1] === 'unlimited') return undefined;
  return Number(m[1]);
}
