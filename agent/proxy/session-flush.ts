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
    if (!this.#open.has(session)) return;
    this.opened(session);
    stream.once('close', () => this.closed(session));
  }

  /** A stream opened on a tracked session; for callers that already listen to the stream's 'close' and call closed() from there. */
  opened(session: S): void {
    const n = this.#open.get(session);
    if (n !== undefined) this.#open.set(session, n + 1);
  }

  /** A stream counted by opened() closed. */
  closed(session: S): void {
    const n = this.#open.get(session);
    if (n === undefined) return; // the session closed first
    this.#open.set(session, n - 1);
    if (n === 1) this.#wake(session);
  }

  get sessions(): IterableIterator<S> {
    return this.#open.keys();
  }

  /**
   * Waits, for at most `ms`, until each session has no open stream and its
   * peer has answered a PING sent after that (or closed the connection).
   * Resolves with how many were not confirmed: still busy or silent at the
   * deadline, or torn down with the PING unanswered.
   */
  async flush(ms: number): Promise<number> {
    const sessions = [...this.#open.keys()];
    if (sessions.length === 0) return 0;
    let confirmed = 0;
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<void>((r) => (timer = setTimeout(r, ms)));
    await Promise.race([
      deadline,
      Promise.all(sessions.map(async (s) => {
        await this.#idle(s);
        if (await peerCaughtUp(s)) confirmed++;
      })),
    ]);
    clearTimeout(timer);
    return sessions.length - confirmed;
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
 * Resolves true once the peer has read everything sent so far: it answered
 * a PING, or it closed the connection (a peer closes only once its streams
 * have ended, so after their last frames). False when the PING was
 * cancelled with the session torn down on our side.
 */
function peerCaughtUp(session: Http2Session): Promise<boolean> {
  if (session.destroyed) return Promise.resolve(true); // the transport ended before the drain reached it: nothing left to wait for
  return new Promise((resolve) => {
    let settled = false;
    const done = (ok: boolean): void => {
      if (settled) return;
      settled = true;
      session.off('close', onClose);
      resolve(ok);
    };
    const onClose = (): void => done(true);
    session.once('close', onClose);
    try {
      if (!session.ping((err) => done(!err))) done(false);
    } catch {
      done(false); // destroyed meanwhile
    }
  });
}
