/**
 * The demo's clients, with no dependency: a SOCKS5 CONNECT (RFC 1928, with
 * the username/password method of RFC 1929 that carries the workload name)
 * and a single HTTP/1.1 GET over a connected socket. A client socket is
 * bound to its workload's address (localAddress): that address is how an
 * agent without iptables capture knows which workload is connecting.
 */
import { connect, type Socket } from 'node:net';

/** RFC 1928 §6 reply codes, as a person reads them. */
export const SOCKS_REPLIES: Readonly<Record<number, string>> = {
  0: 'succeeded',
  1: 'general SOCKS server failure',
  2: 'connection not allowed by ruleset',
  3: 'network unreachable',
  4: 'host unreachable',
  5: 'connection refused',
  6: 'TTL expired',
  7: 'command not supported',
  8: 'address type not supported',
};

export class SocksRefused extends Error {
  readonly reply: number;
  constructor(reply: number, target: string) {
    super(`SOCKS5 CONNECT ${target} refused: reply ${reply} "${SOCKS_REPLIES[reply] ?? 'unknown'}"`);
    this.name = 'SocksRefused';
    this.reply = reply;
  }
}

function connected(socket: Socket, timeoutMs: number, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`${what}: timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      resolve();
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/** Reads exactly n bytes (keeping any surplus for the next read). */
function reader(socket: Socket): (n: number) => Promise<Buffer> {
  let buf = Buffer.alloc(0);
  let want: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  const pump = (): void => {
    if (want && buf.length >= want.n) {
      const out = buf.subarray(0, want.n);
      buf = buf.subarray(want.n);
      const w = want;
      want = undefined;
      w.resolve(out);
    }
  };
  const onData = (d: Buffer): void => {
    buf = Buffer.concat([buf, d]);
    pump();
  };
  const onEnd = (): void => want?.reject(new Error('the SOCKS server closed the connection'));
  socket.on('data', onData);
  socket.once('end', onEnd);
  socket.once('error', (e) => want?.reject(e));
  return (n) => {
    if (n === 0) {
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.pause();
      if (buf.length > 0) socket.unshift(buf);
      return Promise.resolve(Buffer.alloc(0));
    }
    return new Promise((resolve, reject) => {
      want = { n, resolve, reject };
      pump();
    });
  };
}

/**
 * Opens a SOCKS5 tunnel as `user` (the agent reads "namespace/workload").
 * Resolves with the connected socket, or rejects with SocksRefused carrying
 * the reply code when the agent refuses (2: not allowed by policy).
 */
export async function socks5Connect(o: { proxy: { host: string; port: number }; user: string; localAddress: string; host: string; port: number; timeoutMs?: number }): Promise<Socket> {
  const timeoutMs = o.timeoutMs ?? 10_000;
  const target = `${o.host}:${o.port}`;
  const socket = connect({ host: o.proxy.host, port: o.proxy.port, localAddress: o.localAddress });
  await connected(socket, timeoutMs, `connect to SOCKS5 ${o.proxy.host}:${o.proxy.port}`);
  const read = reader(socket);
  const timer = setTimeout(() => socket.destroy(new Error(`SOCKS5 CONNECT ${target}: no answer within ${timeoutMs} ms`)), timeoutMs);
  try {
    socket.write(Buffer.from([5, 1, 2])); // version 5, one method: username/password
    const [ver, method] = await read(2);
    if (ver !== 5 || method !== 2) throw new Error(`SOCKS5: the server chose method ${method}, not username/password`);
    const u = Buffer.from(o.user);
    socket.write(Buffer.concat([Buffer.from([1, u.length]), u, Buffer.from([1, 0x2d])])); // password "-": unused
    const [, status] = await read(2);
    if (status !== 0) throw new Error(`SOCKS5: authentication as ${o.user} refused`);
    const h = Buffer.from(o.host);
    const port = Buffer.alloc(2);
    port.writeUInt16BE(o.port);
    socket.write(Buffer.concat([Buffer.from([5, 1, 0, 3, h.length]), h, port])); // CONNECT, domain name
    const head = await read(4);
    const reply = head[1] ?? 1;
    if (reply !== 0) {
      socket.destroy();
      throw new SocksRefused(reply, target);
    }
    const atyp = head[3];
    const rest = atyp === 1 ? 4 + 2 : atyp === 4 ? 16 + 2 : (await read(1))[0]! + 2;
    await read(rest);
    await read(0);
    return socket;
  } catch (err) {
    socket.destroy();
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

/** A plain TCP connection from `localAddress` (the upstream listener's clients). */
export async function tcpConnect(o: { host: string; port: number; localAddress: string; timeoutMs?: number }): Promise<Socket> {
  const socket = connect({ host: o.host, port: o.port, localAddress: o.localAddress });
  await connected(socket, o.timeoutMs ?? 10_000, `connect to ${o.host}:${o.port}`);
  return socket;
}

export interface HttpResponse {
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: string;
}

/** GET `path` with `Connection: close` over a connected socket; resolves when the server closed it. */
export function httpGet(socket: Socket, host: string, path: string, timeoutMs = 10_000): Promise<HttpResponse> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => socket.destroy(new Error(`GET http://${host}${path}: no complete answer within ${timeoutMs} ms`)), timeoutMs);
    socket.on('data', (d: Buffer) => chunks.push(d));
    socket.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(Object.assign(new Error(`GET http://${host}${path}: ${err.code ?? err.message}`), { code: err.code }));
    });
    socket.once('close', (hadError) => {
      clearTimeout(timer);
      if (hadError) return;
      const raw = Buffer.concat(chunks).toString('utf8');
      const split = raw.indexOf('\r\n\r\n');
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(raw);
      if (split < 0 || !m) return reject(new Error(`GET http://${host}${path}: ${raw === '' ? 'connection closed without an answer' : 'malformed answer'}`));
      const headers: Record<string, string> = {};
      for (const line of raw.slice(0, split).split('\r\n').slice(1)) {
        const i = line.indexOf(':');
        if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
      }
      resolve({ status: Number(m[1]), headers, body: raw.slice(split + 4) });
    });
    socket.resume();
    // write, not end: a half-close could reach the server before it answers, and Node's HTTP server aborts on it.
    socket.write(`GET ${path} HTTP/1.1\r\nHost: ${host}\r\nUser-Agent: ambit-demo\r\nAccept: application/json\r\nConnection: close\r\n\r\n`);
  });
}
