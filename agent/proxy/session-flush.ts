import type { Http2Session } from 'node:http2';

/**
 * The HBONE sessions an agent holds, each with its open streams, so a drain
 * can tell when a session has nothing more to send and confirm the peer got
 * it all before the session is torn down.
 *
 * Why a confirmation: once a relay is over, its last bytes can still sit in
 * the session's output while the peer host is slow to read, and Node's
 * http2 drops that output when a session with no open streams is closed or
 * destroyed (measured: a peer stalled for a second lost the tails of 4 of 8
 * connections, its client seeing a reset). A PING sent after the last frame
 * of the last stream is answered only once the peer has read everything
 * before it, since TCP delivers in order.
 */
export class SessionStreams<S extends Http2Session = Http2Session> {
  readonly #open = new Map<S, number>();
  readonly #idleWaiters = new Map<S, (() => void)[]>();

  /** A session to track until it closes. */
  add(session: S): void {
    if (this.#open.has(session)) return;
    this.#open.set(session, 0);
    session.once('close', () => {
      this.#open.delete(session);
      this.#wake(session);
    });
  }

  /** Counts a stream of a tracked session until its 'close'. */
  stream(session: S, stream: { once(event: 'close', listener: () => void): unknown }): void {
    const n = this.#open.get(session);
    if (n === undefined) return;
    this.#open.set(session, n + 1);
    stream.once('close', () => {
      const m = this.#open.get(session);
      if (m === undefined) return; // the session closed first
      this.#open.set(session, m - 1);
      if (m === 1) this.#wake(session);
    });
  }

  get sessions(): IterableIterator<S> {
    return this.#open.keys();
  }

  /**
   * Waits, for at most `ms`, until each session has no open stream and its
   * peer has answered a PING sent after that (or the session closed).
   * Resolves with how many were not confirmed in time.
   */
  async flush(ms: number): Promise<number> {
    const pending = new Set(this.#open.keys());
    if (pending.size === 0) return 0;
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<void>((r) => (timer = setTimeout(r, ms)));
    await Promise.race([
      deadline,
      Promise.all([...pending].map(async (s) => {
        await this.#idle(s);
        await peerCaughtUp(s);
        pending.delete(s);
      })),
    ]);
    clearTimeout(timer);
    return pending.size;
  }

  #idle(session: S): Promise<void> {
    if ((this.#open.get(session) ?? 0) === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const list = this.#idleWaiters.get(session) ?? [];
      list.push(resolve);
      this.#idleWaiters.set(session, list);
    });
  }

  #wake(session: S): void {
    const list = this.#idleWaiters.get(session);
    this.#idleWaiters.delete(session);
    for (const w of list ?? []) w();
  }
}

/**
 * Resolves once the peer has read everything sent so far: it acknowledged a
 * PING, or it ended its side of the connection (a peer that closes after a
 * GOAWAY does so only once its streams have ended, so after reading their
 * last frames; it may no longer answer a PING then), or the session is gone.
 */
function peerCaughtUp(session: Http2Session): Promise<void> {
  if (session.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const socket = session.socket;
    const done = (): void => {
      session.off('close', done);
      socket?.off('end', done);
      resolve();
    };
    session.once('close', done);
    socket?.once('end', done);
    try {
      if (!session.ping(() => done())) done();
    } catch {
      done(); // destroyed meanwhile
    }
  });
}
