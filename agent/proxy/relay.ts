import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';

/**
 * An abnormal end is passed on as an abnormal end: TCP peers get a reset and
 * HTTP/2 streams an RST_STREAM with an error code — not a clean FIN or
 * NO_ERROR that would look like success to the other side.
 */
function abort(s: Duplex): void {
  if (s.destroyed) return;
  if (s instanceof Socket) s.resetAndDestroy();
  else s.destroy(new Error('relay aborted'));
}

/** One side of the relay and how far each of its halves got. */
interface Side {
  readonly s: Duplex;
  /** Its readable half emitted 'end' (the peer finished sending). */
  readEnded: boolean;
  /** Its writable half emitted 'finish' (everything we wrote was flushed, then FIN / END_STREAM). */
  writeFinished: boolean;
}

/**
 * Copies bytes both ways between two duplex streams with back-pressure
 * (a side is paused while its peer's buffer is full) and TCP half-close:
 * when one side finishes sending, the other side's write half is ended and
 * the reverse direction keeps flowing — a client that sends a request and
 * shuts down its write side still gets the whole response. Resolves once
 * both directions are done, with the first error's message ('' when clean);
 * on an error (including either side closing before both of its halves are
 * done, or an HTTP/2 peer resetting the stream) both sides are aborted, TCP
 * sockets with a reset, and it resolves at once. Sockets must be allowHalfOpen.
 *
 * Written with plain 'data'/'drain'/'end'/'finish'/'close' listeners rather
 * than pipe() + stream.finished(): those attach about twenty listeners and
 * closures per connection, a measurable part of a short connection's cost
 * (bench/dataplane.ts, new connections per second).
 */
export function relay(
  left: Duplex,
  right: Duplex,
  count: { leftToRight: (n: number) => void; rightToLeft: (n: number) => void },
): Promise<string> {
  return new Promise((resolve) => {
    const L: Side = { s: left, readEnded: left.readableEnded, writeFinished: false };
    const R: Side = { s: right, readEnded: right.readableEnded, writeFinished: false };
    let settled = false;

    const settle = (error: string): void => {
      if (settled) return;
      settled = true;
      if (error !== '') {
        abort(left);
        abort(right);
      } else {
        // Both halves finished: release socket descriptors now rather than
        // waiting for the peer. An HTTP/2 stream is left to close by itself:
        // destroying it here would send RST_STREAM for every clean tunnel,
        // and a peer's nghttp2 rapid-reset guard answers a burst of those
        // with GOAWAY for the whole shared session (measured: every
        // in-flight tunnel failed after ~1,300 short connections).
        for (const s of [left, right]) {
          if (s instanceof Socket) s.destroy();
          else if (!s.destroyed) setTimeout(() => s.destroy(), 5_000).unref();
        }
      }
      resolve(error);
    };
    const maybeDone = (): void => {
      if (L.readEnded && L.writeFinished && R.readEnded && R.writeFinished) settle('');
    };
    // A premature close is an abnormal end but not an error worth naming: the
    // other side simply went away (its own error, if any, names the cause).
    const fail = (err: NodeJS.ErrnoException | undefined): void => {
      if (settled) return;
      settle(err ? err.code ?? err.message : 'closed before the end');
    };

    const wire = (from: Side, to: Side, counted: (n: number) => void): void => {
      const src = from.s;
      const dst = to.s;
      // Writes from an HTTP/2 stream arrive as many small chunks (one per
      // DATA frame piece, ~8 KiB) within one socket read: corking until the
      // event loop's check phase turns them into one writev instead of a
      // write(2) each. A TCP source delivers up to 64 KiB per read, once.
      const batch = !(src instanceof Socket);
      let corked = false;
      const uncork = (): void => {
        corked = false;
        dst.uncork();
      };
      src.on('data', (chunk: Buffer) => {
        counted(chunk.length);
        if (batch && !corked) {
          corked = true;
          dst.cork();
          setImmediate(uncork);
        }
        if (!dst.write(chunk)) src.pause();
      });
      dst.on('drain', () => src.resume());
      const onEnd = (): void => {
        from.readEnded = true;
        if (!dst.destroyed) dst.end();
        maybeDone();
      };
      // A stream that already emitted 'end' (an HTTP/2 stream whose peer sent
      // END_STREAM before the relay started) will not emit it again.
      if (from.readEnded) process.nextTick(onEnd);
      else src.once('end', onEnd);
      // Callers may hold a source paused until its tunnel is open; as with
      // pipe(), the relay starting is what lets its bytes flow.
      src.resume();
    };
    const watch = (side: Side): void => {
      const s = side.s;
      s.once('finish', () => {
        side.writeFinished = true;
        maybeDone();
      });
      s.on('error', fail);
      // An HTTP/2 stream reset by the peer can still end its readable side
      // cleanly; 'aborted' is the signal that it did not finish normally.
      s.once('aborted', () => fail(new Error('peer reset the tunnel')));
      s.once('close', () => {
        if (settled) return;
        // What the stream's own state says, in case 'close' overtook the
        // 'end'/'finish' events. Once closed it emits neither any more, so
        // whatever half is not done by now never will be: an abnormal end.
        if (s.writableFinished) side.writeFinished = true;
        if (s.readableEnded) side.readEnded = true;
        if (side.readEnded && side.writeFinished) maybeDone();
        else fail(undefined);
      });
    };

    if (left.destroyed || right.destroyed) {
      fail(undefined);
      return;
    }
    watch(L);
    watch(R);
    wire(L, R, count.leftToRight);
    wire(R, L, count.rightToLeft);
  });
}
