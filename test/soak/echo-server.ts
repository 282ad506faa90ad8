// The destination workload of test/soak/load.test.ts, run as a child process
// so that the client's event loop and the server's do not share a thread
// (and the file descriptors of 5,000+ connections are split between two
// processes).
//
// Protocol, per connection, client to server, a sequence of frames:
//   [u32 BE length L > 0][32-byte SHA-256 of the payload][L bytes payload]
//     The server writes every payload byte back as it arrives (echo, with
//     back-pressure) and, once the frame is complete, checks the digest of
//     what it received against the one the client sent: the forward
//     direction is verified here, the return direction by the client. A
//     mismatch is counted and the connection reset (the client sees it fail).
//   [u32 BE 0]
//     "done": the server ends its side (FIN) after the echo. The server
//     closes first so TIME_WAIT lands on the server's (listening) side and
//     not on the client's ephemeral ports, which a 60 s stream of new
//     connections would otherwise exhaust.
// A client that half-closes without the "done" frame also gets a FIN back.
//
// Run: node test/soak/echo-server.ts HOST PORT — prints {"port":N} on stdout
// once listening; each line "stats" on stdin prints the counters as one JSON
// line; exits when stdin closes (the test went away).
import { createHash, type Hash } from 'node:crypto';
import { createServer, type Socket } from 'node:net';
import { createInterface } from 'node:readline';

export interface EchoServerStats {
  /** Connections accepted / currently open. */
  accepted: number;
  open: number;
  /** Frames whose digest matched / did not match. */
  framesOk: number;
  badDigests: number;
  /** Payload bytes received (and echoed). */
  bytes: number;
  /** Connections ended with the "done" frame or a half-close, then closed without error. */
  cleanCloses: number;
  /** Socket errors by code (ECONNRESET: the peer reset the connection). */
  errors: Record<string, number>;
  /** Bytes that arrived after "done", or a malformed header. */
  protocolErrors: number;
}

const stats: EchoServerStats = { accepted: 0, open: 0, framesOk: 0, badDigests: 0, bytes: 0, cleanCloses: 0, errors: {}, protocolErrors: 0 };

function serve(socket: Socket): void {
  stats.accepted++;
  stats.open++;
  socket.setNoDelay(true);
  let header: Buffer = Buffer.alloc(0);
  let remaining = -1; // payload bytes still expected in the current frame; -1: reading a header
  let expected: Buffer = Buffer.alloc(0);
  let hash: Hash | undefined;
  let done = false;
  let failed = false;
  let waiting = false; // paused until the echo drains
  const fail = (): void => {
    failed = true;
    socket.resetAndDestroy();
  };
  socket.on('error', (err: NodeJS.ErrnoException) => {
    failed = true;
    const code = err.code ?? err.message;
    stats.errors[code] = (stats.errors[code] ?? 0) + 1;
  });
  socket.on('close', () => {
    stats.open--;
    if (!failed && done) stats.cleanCloses++;
  });
  socket.on('end', () => {
    if (!done) {
      done = true;
      if (remaining > 0 || header.length > 0) stats.protocolErrors++;
      socket.end();
    }
  });
  socket.on('data', (chunk: Buffer) => {
    if (failed) return;
    if (done) {
      stats.protocolErrors++;
      return fail();
    }
    while (chunk.length > 0) {
      if (remaining < 0) {
        header = header.length === 0 ? chunk : Buffer.concat([header, chunk]);
        if (header.length < 4) return;
        const len = header.readUInt32BE(0);
        if (len === 0) {
          if (header.length > 4) {
            stats.protocolErrors++;
            return fail();
          }
          done = true;
          header = Buffer.alloc(0);
          socket.end();
          return;
        }
        if (header.length < 36) return;
        expected = Buffer.from(header.subarray(4, 36));
        remaining = len;
        hash = createHash('sha256');
        chunk = header.subarray(36);
        header = Buffer.alloc(0);
        continue;
      }
      const take = Math.min(remaining, chunk.length);
      const part = chunk.subarray(0, take);
      hash!.update(part);
      stats.bytes += take;
      if (!socket.write(part) && !waiting) {
        waiting = true;
        socket.pause();
        socket.once('drain', () => {
          waiting = false;
          socket.resume();
        });
      }
      remaining -= take;
      chunk = chunk.subarray(take);
      if (remaining === 0) {
        remaining = -1;
        if (hash!.digest().equals(expected)) stats.framesOk++;
        else {
          stats.badDigests++;
          return fail();
        }
      }
    }
  });
}

function main(): void {
  const host = process.argv[2] ?? '127.0.0.1';
  const port = Number(process.argv[3] ?? 0);
  const server = createServer({ allowHalfOpen: true, noDelay: true }, serve);
  // The kernel caps the backlog at net.core.somaxconn.
  server.listen({ host, port, backlog: 4096 }, () => {
    const addr = server.address();
    process.stdout.write(`${JSON.stringify({ port: typeof addr === 'object' && addr ? addr.port : 0 })}\n`);
  });
  server.on('error', (err) => {
    process.stderr.write(`soak echo server: ${err.message}\n`);
    process.exit(1);
  });
  createInterface({ input: process.stdin })
    .on('line', (line) => {
      if (line.trim() === 'stats') process.stdout.write(`${JSON.stringify(stats)}\n`);
    })
    .on('close', () => process.exit(0));
}

if (import.meta.main) main();
