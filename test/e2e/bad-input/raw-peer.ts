/**
 * A misbehaving peer for the bad-input tests: raw bytes on a TCP connection,
 * and a genuine ClientHello to truncate or corrupt.
 */
import { connect as netConnect, createServer, type Socket } from 'node:net';
import tls from 'node:tls';

export interface RawResult {
  /** The server closed (FIN, reset or error) before timeoutMs. */
  readonly closed: boolean;
  /** Everything the server sent back. */
  readonly received: Buffer;
  readonly ms: number;
}

/**
 * Connects to `at`, writes `bytes` (if any; then ends our side if `end`),
 * collects what comes back, and resolves when the server closes the
 * connection or after timeoutMs (default 5 s), whichever comes first.
 */
export function sendRaw(at: { host: string; port: number }, bytes: Buffer, o: { end?: boolean; timeoutMs?: number } = {}): Promise<RawResult> {
  return new Promise((resolve) => {
    const started = Date.now();
    const s = netConnect({ ...at, allowHalfOpen: true });
    const chunks: Buffer[] = [];
    const finish = (closed: boolean): void => {
      clearTimeout(timer);
      s.destroy();
      resolve({ closed, received: Buffer.concat(chunks), ms: Date.now() - started });
    };
    const timer = setTimeout(() => finish(false), o.timeoutMs ?? 5000);
    s.on('data', (d: Buffer) => chunks.push(d));
    s.on('error', () => finish(true));
    s.on('end', () => finish(true)); // the server's FIN: it closed its side
    s.on('close', () => finish(true));
    s.on('connect', () => {
      if (bytes.length) s.write(bytes);
      if (o.end) s.end();
    });
  });
}

/** A genuine TLS 1.3 ClientHello with ALPN h2 for `servername`, captured from Node's own client on a listener at `host`. */
export async function captureClientHello(host: string, servername: string): Promise<Buffer> {
  const server = createServer();
  const got = new Promise<Buffer>((resolve) => server.once('connection', (s: Socket) => s.once('data', (d: Buffer) => {
    resolve(d);
    s.destroy();
  })));
  await new Promise<void>((r) => server.listen(0, host, r));
  const c = tls.connect({ host, port: (server.address() as { port: number }).port, servername, ALPNProtocols: ['h2'] });
  c.on('error', () => undefined);
  const hello = await got;
  c.destroy();
  server.close();
  return hello;
}
