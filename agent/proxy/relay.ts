import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { pipeline } from 'node:stream';

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
 * Copies bytes both ways between two duplex streams with back-pressure
 * (pipeline pauses a side whose peer's buffer is full) and TCP half-close:
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
    // Registered before pipeline's own listeners: on an error pipeline destroys
    // both streams (a plain destroy: a FIN) before calling done, so by then
    // abort() would find them destroyed and the peer would see a clean close.
    const onError = (): void => {
      abort(left);
      abort(right);
    };
    left.on('error', onError);
    right.on('error', onError);
    pipeline(left, right, done);
    pipeline(right, left, done);
  });
}
