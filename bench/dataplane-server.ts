// The destination workload of bench/dataplane.ts, run as a child process so
// that the client's event loop and the server's do not share a thread.
//
// One TCP port, the first byte of each connection picks the behaviour:
//   'S' sink: an 8-byte big-endian length N follows; N more bytes are read
//       and discarded, then the server answers one byte 'K' (end-to-end
//       delivery of the whole stream, without relying on half-close).
//   'E' echo: every byte (from the mode byte on) is written back; on EOF the
//       server ends its side.
//   'O' once: the server reads ONCE_BYTES bytes (the mode byte included),
//       writes them back and closes its side first, so the TIME_WAIT state
//       lands on the server side and not on the client's ephemeral ports.
//
// Run: node bench/dataplane-server.ts HOST  — prints {"port":N} on stdout and
// exits when its stdin closes (the bench process went away).
import { createServer, type Socket } from 'node:net';

export const ONCE_BYTES = 1024;

export const MODE = { sink: 0x53, echo: 0x45, once: 0x4f } as const;

function serve(socket: Socket): void {
  socket.setNoDelay(true);
  socket.on('error', () => socket.destroy());
  let mode = 0;
  // sink state
  let header: Buffer = Buffer.alloc(0);
  let remaining = -1;
  // once state
  const once: Buffer[] = [];
  let onceBytes = 0;
  socket.on('data', (chunk: Buffer) => {
    if (mode === 0) mode = chunk[0]!;
    if (mode === MODE.echo) {
      socket.write(chunk);
      return;
    }
    if (mode === MODE.once) {
      once.push(chunk);
      onceBytes += chunk.length;
      if (onceBytes >= ONCE_BYTES) socket.end(Buffer.concat(once, onceBytes));
      return;
    }
    if (mode === MODE.sink) {
      if (remaining < 0) {
        header = header.length === 0 ? chunk : Buffer.concat([header, chunk]);
        if (header.length < 9) return;
        remaining = Number(header.readBigUInt64BE(1));
        chunk = header.subarray(9);
        header = Buffer.alloc(0);
      }
      remaining -= chunk.length;
      if (remaining === 0) socket.write('K');
      else if (remaining < 0) socket.destroy();
      return;
    }
    socket.destroy();
  });
  socket.on('end', () => {
    if (mode === MODE.echo || mode === MODE.sink) socket.end();
  });
}

function main(): void {
  const host = process.argv[2] ?? '127.0.0.1';
  const server = createServer({ allowHalfOpen: true, noDelay: true }, serve);
  server.maxConnections = 4096;
  server.listen({ host, port: 0, backlog: 1024 }, () => {
    const addr = server.address();
    process.stdout.write(`${JSON.stringify({ port: typeof addr === 'object' && addr ? addr.port : 0 })}\n`);
  });
  server.on('error', (err) => {
    process.stderr.write(`dataplane-server: ${err.message}\n`);
    process.exit(1);
  });
  process.stdin.on('end', () => process.exit(0)).on('error', () => process.exit(0)).resume();
}

if (import.meta.main) main();
