/**
 * The destination a captured connection was really for, before the capture
 * rules (capture.ts) REDIRECTed it to one of the agent's listeners. Read from
 * the kernel's NAT record with SO_ORIGINAL_DST by the native addon in
 * native/original_dst.c (built into build/Release by `npm ci`).
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { AmbitError, errorMessage } from '../../shared/errors.ts';

export interface OriginalDestination {
  readonly address: string;
  readonly port: number;
  readonly family: 4 | 6;
}

export interface OriginalDstAddon {
  getOriginalDst(fd: number): OriginalDestination;
}

const ADDON = 'build/Release/original_dst.node';

/**
 * Where the addon may be: the repository root is two directories up from this
 * file when run from source (agent/proxy/), three when run compiled
 * (dist/agent/proxy/), since tsc does not copy build/ into dist/.
 */
const FROM_SOURCE = new URL(`../../${ADDON}`, import.meta.url);
const FROM_DIST = new URL(`../../../${ADDON}`, import.meta.url);

/**
 * Loads the addon. Node's own module cache makes repeated calls cheap, so no
 * state is kept here. Throws when the addon was not built, naming the path.
 */
export function loadOriginalDstAddon(): OriginalDstAddon {
  const found = [FROM_SOURCE, FROM_DIST].find((url) => existsSync(url));
  if (found === undefined) {
    const expected = fileURLToPath(FROM_SOURCE);
    throw new AmbitError(
      'AMBIT_ERR_INTERNAL',
      `the original-destination addon is missing at ${expected}: run \`npm ci\` (or \`npm rebuild\`) in the repository to build it`,
      { details: { path: expected } },
    );
  }
  const path = fileURLToPath(found);
  try {
    const addon: unknown = createRequire(import.meta.url)(path);
    if (!isAddon(addon)) throw new Error('it does not export getOriginalDst()');
    return addon;
  } catch (err) {
    throw new AmbitError(
      'AMBIT_ERR_INTERNAL',
      `the original-destination addon at ${path} cannot be loaded (${errorMessage(err)}): run \`npm rebuild\` to rebuild it`,
      { cause: err, details: { path } },
    );
  }
}

function isAddon(value: unknown): value is OriginalDstAddon {
  return typeof value === 'object' && value !== null && typeof (value as { getOriginalDst?: unknown }).getOriginalDst === 'function';
}

/**
 * The original destination of an accepted, REDIRECTed TCP connection.
 *
 * Node exposes no public file descriptor for TCP sockets, so the fd is read
 * from the libuv handle (`_handle.fd`, stable across Node releases for Linux
 * TCP handles). The fd is only passed to getsockopt(): never closed,
 * duplicated or changed, so the socket's ownership stays with Node.
 *
 * Caveat for callers: with connection tracking active (any nat rule loaded), a
 * client that connects straight to the capture port gets its own local address
 * back, not an error; compare with `socket.localAddress`/`localPort` to refuse
 * such loops. Throws an AmbitError (AMBIT_ERR_INTERNAL) when the socket has no
 * fd or the kernel holds no NAT record for it (ENOENT: not redirected).
 *
 * The capture listener should call loadOriginalDstAddon() once at start (so a
 * missing build fails the start, not the first connection) and pass it here.
 */
export function originalDestination(socket: Socket, addon: OriginalDstAddon = loadOriginalDstAddon()): OriginalDestination {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) {
    throw new AmbitError('AMBIT_ERR_INTERNAL', 'original destination: the socket has no file descriptor (closed, or not a TCP socket)', {
      details: { fd },
    });
  }
  try {
    return addon.getOriginalDst(fd);
  } catch (err) {
    const errno = (err as { errno?: unknown }).errno;
    const why = errno === 2 ? ': the connection was not redirected by the capture rules (no NAT record)' : '';
    throw new AmbitError('AMBIT_ERR_INTERNAL', `original destination of ${socket.remoteAddress}:${socket.remotePort} unavailable${why} (${errorMessage(err)})`, {
      cause: err,
      details: { fd, errno, remoteAddress: socket.remoteAddress, remotePort: socket.remotePort },
    });
  }
}
