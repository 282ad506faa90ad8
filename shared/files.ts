import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, statSync, writeSync, chmodSync, unlinkSync } from 'node:fs';
import { dirname, join, basename } from 'node:path';
import { randomBytes } from 'node:crypto';

/**
 * Writes a file so that readers see either the old or the new content, never a
 * torn one, and so that it is never — not even for a moment — readable with a
 * wider mode than asked (the temp file is created with the final mode).
 */
export function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o600): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  const fd = openSync(tmp, 'wx', mode);
  let open = true;
  try {
    const buf = typeof data === 'string' ? Buffer.from(data) : data;
    let off = 0;
    while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
    fsyncSync(fd);
    open = false;
    closeSync(fd);
    chmodSync(tmp, mode); // the umask may have narrowed it; never widened
    renameSync(tmp, path);
  } catch (err) {
    // A failed write (ENOSPC, EIO) must not leave its temp file behind:
    // on a full disk every retry would otherwise leak one more.
    if (open) closeSync(fd);
    try {
      unlinkSync(tmp);
    } catch {
      // Already gone, or the filesystem refuses even that (read-only): nothing more to do.
    }
    throw err;
  }
  try {
    const dfd = openSync(dirname(path), 'r');
    fsyncSync(dfd);
    closeSync(dfd);
  } catch {
    // Directory fsync is best effort (not supported on every filesystem).
  }
}

/** mkdir -p with mode 0700 for directories that hold secrets. */
export function ensurePrivateDir(path: string): void {
  mkdirSync(path, { recursive: true, mode: 0o700 });
  // Only when needed: chmod fails on a read-only filesystem, where a
  // directory that is already private must not stop the process starting.
  if ((statSync(path).mode & 0o777) !== 0o700) chmodSync(path, 0o700);
}
