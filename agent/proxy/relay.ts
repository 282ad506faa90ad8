import type { Duplex } from 'node:stream';
import { pipeline } from 'node:stream';

/**
 * Copies bytes both ways between two duplex streams with back-pressure
 * (pipeline pauses a side whose peer's buffer is full) and TCP half-close:
 * when one side finishes sending, the other side's write half is ended and
 * the reverse direction keeps flowing — a client that sends a request and
 * shuts down its write side still gets the whole response. Resolves once
 * both directions are done, with the first error's message ('' when clean);
 * on an error both sides are destroyed. Sockets must be allowHalfOpen.
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
        left.destroy();
        right.destroy();
      }
      if (--pending === 0) {
        // Both halves finished: release the descriptors now rather than waiting for GC or peer close.
        left.destroy();
        right.destroy();
        resolve(firstError);
      }
    };
    pipeline(left, right, done);
    pipeline(right, left, done);
  });
}
