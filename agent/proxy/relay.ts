import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { finished } from 'node:stream';

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

/**
 * One direction of the relay: src.pipe(dst) (back-pressure), dst's write half
 * ended when src ends (half-close), and `done` called once: with null when
 * src has ended and dst has finished writing, or with the first error —
 * including ERR_STREAM_PREMATURE_CLOSE when either closes before that. What
 * stream.pipeline does for two streams, without its per-call AbortController
 * (and the DOMException its abort builds at every end): a measurable part of
 * a short connection's cost.
 */
function pipeOneWay(src: Duplex, dst: Duplex, done: (err: NodeJS.ErrnoException | null) => void): void {
  let called = false;
  let srcDone = false;
  let dstDone = false;
  const finish = (err: NodeJS.ErrnoException | null | undefined): void => {
    if (called) return;
    if (err) {
      called = true;
      done(err);
    } else if (srcDone && dstDone) {
      called = true;
      done(null);
    }
  };
  src.pipe(dst, { end: false });
  let ended = false;
  const endDst = (): void => {
    ended = true;
    dst.end();
  };
  // A stream that already emitted 'end' (an HTTP/2 stream whose peer sent
  // END_STREAM before the relay started) will not emit it again.
  if (src.readableEnded) process.nextTick(endDst);
  else src.once('end', endDst);
  // dst closing before src has ended (the other side vanished) is an abnormal end.
  dst.once('close', () => {
    if (!ended) finish(Object.assign(new Error('Premature close'), { code: 'ERR_STREAM_PREMATURE_CLOSE' }));
  });
  finished(src, { readable: true, writable: false }, (err) => {
    const rState = (src as unknown as { _readableState?: { ended: boolean; errored: unknown; errorEmitted: boolean } })._readableState;
    if (err && (err as NodeJS.ErrnoException).code === 'ERR_STREAM_PREMATURE_CLOSE' && rState && rState.ended && !rState.errored && !rState.errorEmitted) {
      // Its data ended but 'end' has not been emitted yet: wait for it.
      src.once('end', () => {
        srcDone = true;
        finish(null);
      });
      src.once('error', finish);
      return;
    }
    if (!err) srcDone = true;
    finish(err);
  });
  finished(dst, { readable: false, writable: true }, (err) => {
    if (!err) dstDone = true;
    finish(err);
  });
}

/**
 * Copies bytes both ways between two duplex streams with back-pressure
 * (a side is paused while its peer's buffer is full) and TCP half-close:
 * when one side finishes sending, the other side's write half is ended and
 * the reverse direction keeps flowing — a client that sends a request and
 * shuts down its write side still gets the whole response. Resolves once
 * both directions are done, with the first error's message ('' when clean);
 * on an error (including the other side vanishing mid-stream) both sides are
 * aborted, TCP sockets with a reset. Sockets must be allowHalfOpen.
 */
export function relay(
  left: Duplex,
  right: Duplex,
  count: { leftToRight: (n: number) => void; rightToLeft: (n: number) => void },
): Promise<string> {
  return new Promise((resolve) => {
    let pending = 2;
    let firstError = '';
    left.on('data', (c: Buffer) => count.leftToRight(c.length));
    right.on('data', (c: Buffer) => count.rightToLeft(c.length));
    const done = (err: NodeJS.ErrnoException | null | undefined): void => {
      if (err && !firstError && err.code !== 'ERR_STREAM_PREMATURE_CLOSE') {
        firstError = err.code ?? err.message;
      }
      if (err) {
        abort(left);
        abort(right);
      }
      if (--pending === 0) {
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
        resolve(firstError);
      }
    };
    // An HTTP/2 stream reset by the peer can still end its readable side
    // cleanly; 'aborted' is the signal that it did not finish normally.
    const onAborted = (): void => {
      if (!firstError) firstError = 'peer reset the tunnel';
      abort(left);
      abort(right);
    };
    left.once('aborted', onAborted);
    right.once('aborted', onAborted);
    // Both sides are aborted (a reset, not a FIN) as soon as either errors.
    const onError = (): void => {
      abort(left);
      abort(right);
    };
    left.on('error', onError);
    right.on('error', onError);
    pipeOneWay(left, right, done);
    pipeOneWay(right, left, done);
  });
}
