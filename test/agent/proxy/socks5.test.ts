import t from 'tap';
import type { Test } from 'tap';
import { execFile, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { createServer as createHttpServer } from 'node:http';
import { connect, createServer, Socket } from 'node:net';
import type { AddressInfo, Server } from 'node:net';
import { promisify } from 'node:util';
import { acceptSocks5, sendSocksReply, SOCKS_REPLY, Socks5Error } from '../../../agent/proxy/socks5.ts';
import type { SocksRequest } from '../../../agent/proxy/socks5.ts';

// ------------------------------------------------------------------ harness

type Outcome =
  | { readonly ok: true; readonly request: SocksRequest; readonly socket: Socket }
  | { readonly ok: false; readonly error: unknown; readonly elapsedMs: number };

interface SocksServer {
  readonly port: number;
  /** The negotiation result of the next accepted connection, in accept order. */
  next(): Promise<Outcome>;
}

async function socksServer(
  t: Test,
  options: { authRequired: boolean; timeoutMs?: number },
): Promise<SocksServer> {
  const outcomes: Promise<Outcome>[] = [];
  const waiters: ((o: Promise<Outcome>) => void)[] = [];
  const server: Server = createServer((socket) => {
    const start = Date.now();
    const outcome = acceptSocks5(socket, { authRequired: options.authRequired, timeoutMs: options.timeoutMs ?? 2000 }).then(
      (request): Outcome => ({ ok: true, request, socket }),
      (error: unknown): Outcome => ({ ok: false, error, elapsedMs: Date.now() - start }),
    );
    const w = waiters.shift();
    if (w) w(outcome);
    else outcomes.push(outcome);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => {
    server.close();
  });
  return {
    port: (server.address() as AddressInfo).port,
    next: () => {
      const o = outcomes.shift();
      return o ?? new Promise<Outcome>((resolve) => waiters.push((p) => resolve(p)));
    },
  };
}

/** A raw TCP client that collects everything it receives. */
class RawClient {
  readonly socket: Socket;
  received: Buffer = Buffer.alloc(0);
  readonly closed: Promise<void>;
  private wakeups: (() => void)[] = [];

  constructor(port: number) {
    this.socket = connect(port, '127.0.0.1');
    this.socket.setNoDelay(true);
    this.socket.on('error', () => {});
    this.socket.on('data', (d: Buffer) => {
      this.received = Buffer.concat([this.received, d]);
      this.wake();
    });
    this.closed = new Promise((resolve) => this.socket.once('close', () => {
      this.wake();
      resolve();
    }));
  }

  private wake(): void {
    for (const w of this.wakeups.splice(0)) w();
  }

  async connected(): Promise<void> {
    if (this.socket.connecting) await once(this.socket, 'connect');
  }

  /** Takes exactly n bytes off the front of what has been received. */
  async take(n: number): Promise<Buffer> {
    while (this.received.length < n) {
      if (this.socket.destroyed) throw new Error(`closed with ${this.received.length}/${n} bytes`);
      await new Promise<void>((r) => this.wakeups.push(r));
    }
    const out = this.received.subarray(0, n);
    this.received = this.received.subarray(n);
    return out;
  }

  write(...parts: (number[] | Buffer | string)[]): void {
    this.socket.write(bytes(...parts));
  }

  async writeSlowly(data: Buffer, delayMs: number): Promise<void> {
    for (const b of data) {
      if (this.socket.destroyed) return;
      this.socket.write(Buffer.of(b));
      await sleep(delayMs);
    }
  }
}

function bytes(...parts: (number[] | Buffer | string)[]): Buffer {
  return Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'latin1') : Buffer.from(p))));
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function authMsg(user: string, pass: string): Buffer {
  return bytes([1, user.length], user, [pass.length], pass);
}

function connectV4(a: number[], port: number): Buffer {
  return bytes([5, 1, 0, 1], a, [port >> 8, port & 0xff]);
}

function connectDomain(name: string, port: number): Buffer {
  return bytes([5, 1, 0, 3, name.length], name, [port >> 8, port & 0xff]);
}

function connectV6(b: number[], port: number): Buffer {
  return bytes([5, 1, 0, 4], b, [port >> 8, port & 0xff]);
}

async function readAll(socket: Socket): Promise<string> {
  const chunks: Buffer[] = [];
  socket.on('data', (d: Buffer) => chunks.push(d));
  await once(socket, 'end');
  return Buffer.concat(chunks).toString('latin1');
}

function expectOk(t: Test, o: Outcome): { request: SocksRequest; socket: Socket } {
  if (!o.ok) {
    t.fail(`negotiation failed: ${String(o.error)}`);
    throw o.error;
  }
  return o;
}

function expectError(t: Test, o: Outcome): Socks5Error {
  if (o.ok) {
    o.socket.destroy();
    throw new Error(`negotiation unexpectedly succeeded: ${JSON.stringify(o.request)}`);
  }
  t.ok(o.error instanceof Socks5Error, 'rejects with Socks5Error');
  return o.error as Socks5Error;
}

// ------------------------------------------------------------------ happy paths

t.test('no-auth CONNECT to an IPv4 address', async (t) => {
  const srv = await socksServer(t, { authRequired: false });
  const c = new RawClient(srv.port);
  c.write([5, 1, 0]);
  t.same([...(await c.take(2))], [5, 0], 'selects no-auth');
  c.write(connectV4([10, 0, 0, 1], 8080));
  const { request, socket } = expectOk(t, await srv.next());
  t.same(request, { username: undefined, password: undefined, host: '10.0.0.1', port: 8080, addressType: 'ipv4' });
  sendSocksReply(socket, SOCKS_REPLY.succeeded, { address: '127.0.0.1', port: 4321 });
  t.same([...(await c.take(10))], [5, 0, 0, 1, 127, 0, 0, 1, 0x10, 0xe1], 'success reply with bound address');
  socket.end();
  await c.closed;
});

t.test('username/password CONNECT to a domain; caller refuses with notAllowed', async (t) => {
  const srv = await socksServer(t, { authRequired: true });
  const c = new RawClient(srv.port);
  c.write([5, 2, 0, 2]);
  t.same([...(await c.take(2))], [5, 2], 'selects username/password');
  c.write(authMsg('alice', 's3cret'));
  t.same([...(await c.take(2))], [1, 0], 'auth sub-negotiation succeeds');
  c.write(connectDomain('example.test', 443));
  const { request, socket } = expectOk(t, await srv.next());
  t.same(request, { username: 'alice', password: 's3cret', host: 'example.test', port: 443, addressType: 'domain' });
  sendSocksReply(socket, SOCKS_REPLY.notAllowed);
  socket.end();
  t.same([...(await c.take(10))], [5, 2, 0, 1, 0, 0, 0, 0, 0, 0], 'notAllowed with default bound 0.0.0.0:0');
  await c.closed;
});

t.test('username/password is preferred when auth is optional', async (t) => {
  const srv = await socksServer(t, { authRequired: false });
  const c = new RawClient(srv.port);
  c.write([5, 2, 0, 2]);
  t.same([...(await c.take(2))], [5, 2]);
  c.write(authMsg('bob', ''), connectV4([127, 0, 0, 1], 80));
  t.same([...(await c.take(2))], [1, 0]);
  const { request, socket } = expectOk(t, await srv.next());
  t.equal(request.username, 'bob');
  t.equal(request.password, '', 'empty password is passed on');
  socket.destroy();
});

t.test('IPv6 requests are formatted canonically', async (t) => {
  const cases: [number[], string][] = [
    [[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], '2001:db8::1'],
    [[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], '::1'],
    [[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0xAB, 0xCD, 0, 0, 0, 0, 0, 0], 'fe80::abcd:0:0:0'],
    [[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3], '::ffff:10.1.2.3'],
  ];
  const srv = await socksServer(t, { authRequired: false });
  for (const [addr, text] of cases) {
    const c = new RawClient(srv.port);
    c.write([5, 1, 0], connectV6(addr, 15008));
    const { request, socket } = expectOk(t, await srv.next());
    t.same(request, { username: undefined, password: undefined, host: text, port: 15008, addressType: 'ipv6' }, text);
    sendSocksReply(socket, 0, { address: '2001:db8::2', port: 1 });
    t.same([...(await c.take(2))], [5, 0]);
    const reply = await c.take(22);
    t.same([...reply.subarray(0, 4)], [5, 0, 0, 4], 'IPv6 bound address type');
    t.same([...reply.subarray(4, 20)], [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    t.equal(reply.readUInt16BE(20), 1);
    socket.destroy();
  }
});

t.test('pipelined data after the request reaches the caller intact', async (t) => {
  const srv = await socksServer(t, { authRequired: false });
  const c = new RawClient(srv.port);
  // Greeting, request, payload and FIN all at once, as an optimistic client may send them.
  c.write([5, 1, 0], connectDomain('svc.mesh', 80), 'hello world');
  c.socket.end();
  const { request, socket } = expectOk(t, await srv.next());
  t.equal(request.host, 'svc.mesh');
  sendSocksReply(socket, SOCKS_REPLY.succeeded);
  t.equal(await readAll(socket), 'hello world', 'payload and end delivered to the caller');
  t.same([...(await c.take(12))], [5, 0, 5, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
  socket.end();
});

t.test('pipelined data with auth, and more data arriving later', async (t) => {
  const srv = await socksServer(t, { authRequired: true });
  const c = new RawClient(srv.port);
  const payload = Buffer.alloc(100_000, 'x');
  c.write([5, 1, 2], authMsg('u', 'p'), connectV4([1, 2, 3, 4], 5), 'first|');
  const { request, socket } = expectOk(t, await srv.next());
  t.equal(request.username, 'u');
  const got = readAll(socket);
  // The caller attaches its reader first and the rest arrives afterwards.
  await sleep(20);
  c.write(payload);
  c.socket.end();
  t.equal(await got, `first|${payload.toString('latin1')}`);
  socket.end();
});

t.test('pipe() after accept also sees the pipelined bytes', async (t) => {
  const srv = await socksServer(t, { authRequired: false });
  const c = new RawClient(srv.port);
  c.write([5, 1, 0], connectV4([127, 0, 0, 1], 9), 'echo me');
  const { socket } = expectOk(t, await srv.next());
  sendSocksReply(socket, 0);
  socket.pipe(socket); // echo
  t.same([...(await c.take(12))], [5, 0, 5, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
  t.equal((await c.take(7)).toString(), 'echo me');
  c.socket.end();
  await c.closed;
});

t.test('a client writing one byte at a time', async (t) => {
  const srv = await socksServer(t, { authRequired: true });
  const c = new RawClient(srv.port);
  await c.connected();
  await c.writeSlowly(bytes([5, 1, 2]), 2);
  t.same([...(await c.take(2))], [5, 2]);
  await c.writeSlowly(authMsg('carol', 'pw'), 2);
  t.same([...(await c.take(2))], [1, 0]);
  await c.writeSlowly(bytes(connectDomain('db.internal', 5432), 'after'), 2);
  const { request, socket } = expectOk(t, await srv.next());
  t.same(request, { username: 'carol', password: 'pw', host: 'db.internal', port: 5432, addressType: 'domain' });
  c.socket.end();
  t.equal(await readAll(socket), 'after', 'bytes after the request are not lost');
  socket.end();
});

t.test('a 255-byte domain (the maximum) is accepted', async (t) => {
  const srv = await socksServer(t, { authRequired: false });
  const c = new RawClient(srv.port);
  const name = `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(63)}`;
  t.equal(name.length, 255);
  c.write([5, 1, 0], connectDomain(name, 1));
  const { request, socket } = expectOk(t, await srv.next());
  t.equal(request.host, name);
  socket.destroy();
});

// ------------------------------------------------------------------ refusals

t.test('unsupported commands are answered with reply 7 and closed', async (t) => {
  const srv = await socksServer(t, { authRequired: false });
  for (const cmd of [2, 3]) {
    const c = new RawClient(srv.port);
    c.write([5, 1, 0], [5, cmd, 0, 1, 1, 2, 3, 4, 0, 80]);
    const err = expectError(t, await srv.next());
    t.equal(err.reply, SOCKS_REPLY.commandNotSupported, `cmd ${cmd}`);
    t.equal(err.phase, 'request');
    await c.closed;
    t.same([...c.received], [5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
  }
});

t.test('unsupported address type → reply 8', async (t) => {
  const srv = await socksServer(t, { authRequired: false });
  const c = new RawClient(srv.port);
  c.write([5, 1, 0], [5, 1, 0, 9, 1, 2, 3, 4, 0, 80]);
  const err = expectError(t, await srv.next());
  t.equal(err.reply, SOCKS_REPLY.addressTypeNotSupported);
  await c.closed;
  t.same([...c.received], [5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0]);
});

t.test('malformed requests → general failure', async (t) => {
  const srv = await socksServer(t, { authRequired: false });
  const bad: [string, Buffer][] = [
    ['request version', bytes([4, 1, 0, 1, 1, 2, 3, 4, 0, 80])],
    ['reserved byte', bytes([5, 1, 7, 1, 1, 2, 3, 4, 0, 80])],
    ['empty domain', bytes([5, 1, 0, 3, 0, 0, 80])],
    ['control byte in domain', connectDomain('evil\ncom', 80)],
    ['space in domain', connectDomain('a b', 80)],
  ];
  for (const [what, req] of bad) {
    const c = new RawClient(srv.port);
    c.write([5, 1, 0], req);
    const err = expectError(t, await srv.next());
    t.equal(err.reply, SOCKS_REPLY.generalFailure, what);
    await c.closed;
    t.same([...c.received], [5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0], `${what}: reply`);
  }
});

t.test('a wrong SOCKS version is closed without an answer', async (t) => {
  const srv = await socksServer(t, { authRequired: false });
  for (const first of [bytes([4, 1, 0, 80, 127, 0, 0, 1, 0]), bytes('GET / HTTP/1.1\r\n\r\n')]) {
    const c = new RawClient(srv.port);
    c.write(first);
    const err = expectError(t, await srv.next());
    t.equal(err.phase, 'greeting');
    t.match(err.message, /version/);
    await c.closed;
    t.equal(c.received.length, 0, 'nothing sent back');
  }
});

t.test('auth required but not offered → method refused (0xFF)', async (t) => {
  const srv = await socksServer(t, { authRequired: true });
  const c = new RawClient(srv.port);
  c.write([5, 1, 0]);
  const err = expectError(t, await srv.next());
  t.equal(err.phase, 'greeting');
  await c.closed;
  t.same([...c.received], [5, 0xff]);
});

t.test('greeting with no methods, or no supported method → 0xFF', async (t) => {
  const srv = await socksServer(t, { authRequired: false });
  for (const g of [bytes([5, 0]), bytes([5, 3, 1, 3, 0x80])]) {
    const c = new RawClient(srv.port);
    c.write(g);
    expectError(t, await srv.next());
    await c.closed;
    t.same([...c.received], [5, 0xff]);
  }
});

t.test('bad auth sub-negotiation version → auth failure and close', async (t) => {
  const srv = await socksServer(t, { authRequired: true });
  const c = new RawClient(srv.port);
  c.write([5, 1, 2], [5, 1, 0x61, 1, 0x62]);
  const err = expectError(t, await srv.next());
  t.equal(err.phase, 'auth');
  await c.closed;
  t.same([...c.received], [5, 2, 1, 1]);
});

t.test('oversized garbage is refused without buffering it all', async (t) => {
  const srv = await socksServer(t, { authRequired: false });
  const c = new RawClient(srv.port);
  // Every byte 0x05: version 5, five methods, none acceptable; then a megabyte more.
  c.write(Buffer.alloc(1 << 20, 5));
  const err = expectError(t, await srv.next());
  t.equal(err.phase, 'greeting');
  await c.closed;
  t.same([...c.received], [5, 0xff]);
});

t.test('a silent client is dropped after timeoutMs', async (t) => {
  const srv = await socksServer(t, { authRequired: false, timeoutMs: 200 });
  const c = new RawClient(srv.port);
  const o = await srv.next();
  const err = expectError(t, o);
  if (!o.ok) t.ok(o.elapsedMs >= 190 && o.elapsedMs < 1000, `rejected after ${o.elapsedMs} ms`);
  t.match(err.message, /timed out/);
  await c.closed;
});

t.test('a client dripping bytes is dropped after timeoutMs overall', async (t) => {
  const srv = await socksServer(t, { authRequired: true, timeoutMs: 250 });
  const c = new RawClient(srv.port);
  await c.connected();
  // 5 ms per byte for a long domain takes ~1.3 s, far beyond the timeout, but
  // every byte comes well within any idle timeout.
  const drip = c.writeSlowly(bytes([5, 1, 2], authMsg('u', 'p'), connectDomain('x'.repeat(200), 80)), 5).catch(() => {});
  const o = await srv.next();
  const err = expectError(t, o);
  if (!o.ok) t.ok(o.elapsedMs >= 240 && o.elapsedMs < 1000, `rejected after ${o.elapsedMs} ms`);
  t.equal(err.phase, 'request');
  await c.closed;
  await drip;
});

t.test('a client closing mid-negotiation rejects', async (t) => {
  const srv = await socksServer(t, { authRequired: false });
  const c = new RawClient(srv.port);
  c.write([5, 1, 0], [5, 1, 0]);
  c.socket.end();
  const err = expectError(t, await srv.next());
  t.equal(err.phase, 'request');
  t.match(err.message, /closed/);
});

t.test('a client resetting mid-negotiation rejects', async (t) => {
  const srv = await socksServer(t, { authRequired: false });
  const c = new RawClient(srv.port);
  c.write([5, 1, 0]);
  await c.take(2);
  c.socket.resetAndDestroy();
  const err = expectError(t, await srv.next());
  t.equal(err.phase, 'request');
});

t.test('an already closed socket rejects at once', async (t) => {
  const s = new Socket();
  s.destroy();
  await t.rejects(acceptSocks5(s, { authRequired: false, timeoutMs: 1000 }), Socks5Error);
  t.throws(() => acceptSocks5(s, { authRequired: false, timeoutMs: 0 }), RangeError, 'a non-positive timeout is a caller bug');
});

t.test('sendSocksReply encodes bound addresses and validates its input', async (t) => {
  const srv = await socksServer(t, { authRequired: false });
  const c = new RawClient(srv.port);
  c.write([5, 1, 0], connectV4([1, 1, 1, 1], 1));
  const { socket } = expectOk(t, await srv.next());
  t.throws(() => sendSocksReply(socket, 256), RangeError);
  t.throws(() => sendSocksReply(socket, 0, { address: '1.2.3.4', port: 70000 }), RangeError);
  t.throws(() => sendSocksReply(socket, 0, { address: 'bad name', port: 1 }), RangeError);
  sendSocksReply(socket, SOCKS_REPLY.hostUnreachable, { address: 'proxy.local', port: 258 });
  t.same([...(await c.take(2))], [5, 0]);
  t.same([...(await c.take(18))], [5, 4, 0, 3, 11, ...Buffer.from('proxy.local'), 1, 2]);
  socket.destroy();
  await c.closed;
  t.doesNotThrow(() => sendSocksReply(socket, 0), 'writing to a closed socket is a no-op');
});

// ------------------------------------------------------------------ interop

const execFileP = promisify(execFile);

const hasCurl = spawnSync('which', ['curl']).status === 0;

t.test('interop with curl', { skip: hasCurl ? false : 'curl not installed' }, async (t) => {
  const http = createHttpServer((req, res) => {
    res.end(`hello via ${req.headers.host}`);
  });
  http.listen(0, '127.0.0.1');
  await once(http, 'listening');
  const httpPort = (http.address() as AddressInfo).port;

  const seen: SocksRequest[] = [];
  // A minimal proxy: authenticate, then dial 127.0.0.1 whatever the name, so
  // the test never leaves loopback.
  const proxy = createServer((socket) => {
    socket.on('error', () => {});
    acceptSocks5(socket, { authRequired: true, timeoutMs: 2000 }).then(
      (req) => {
        seen.push(req);
        if (req.username !== 'user' || req.password !== 'pass') {
          sendSocksReply(socket, SOCKS_REPLY.notAllowed);
          socket.end();
          return;
        }
        const upstream = connect(req.port, '127.0.0.1', () => {
          sendSocksReply(socket, SOCKS_REPLY.succeeded, { address: upstream.localAddress ?? '0.0.0.0', port: upstream.localPort ?? 0 });
          socket.pipe(upstream).pipe(socket);
        });
        upstream.on('error', () => {
          sendSocksReply(socket, SOCKS_REPLY.connectionRefused);
          socket.destroy();
        });
      },
      () => {},
    );
  });
  proxy.listen(0, '127.0.0.1');
  await once(proxy, 'listening');
  const proxyPort = (proxy.address() as AddressInfo).port;
  t.teardown(() => {
    proxy.close();
    http.close();
    http.closeAllConnections();
  });

  const curl = (args: string[]) => execFileP('curl', ['-sS', '--max-time', '3', '--noproxy', '', ...args], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } });

  const viaName = await curl(['--socks5-hostname', `user:pass@127.0.0.1:${proxyPort}`, `http://example.test:${httpPort}/`]);
  t.equal(viaName.stdout, `hello via example.test:${httpPort}`);
  t.match(seen.at(-1), { username: 'user', password: 'pass', host: 'example.test', port: httpPort, addressType: 'domain' });

  const viaIp = await curl(['--socks5', `user:pass@127.0.0.1:${proxyPort}`, `http://127.0.0.1:${httpPort}/`]);
  t.equal(viaIp.stdout, `hello via 127.0.0.1:${httpPort}`);
  t.match(seen.at(-1), { host: '127.0.0.1', addressType: 'ipv4' });

  const denied = await curl(['--socks5', `user:wrong@127.0.0.1:${proxyPort}`, `http://127.0.0.1:${httpPort}/`]).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(denied, 'curl fails when the proxy refuses');
});
