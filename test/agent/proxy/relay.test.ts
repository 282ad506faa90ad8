import t from 'tap';
import type { Test } from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { relay } from '../../../agent/proxy/relay.ts';

/**
 * client ──TCP── [left | relay | right] ──TCP── upstream
 * Every socket is a real loopback TCP socket with allowHalfOpen, as in the agent.
 */
interface Rig {
  readonly client: Socket;
  readonly upstream: Socket;
  readonly left: Socket;
  readonly right: Socket;
  readonly counted: { leftToRight: number; rightToLeft: number };
  readonly result: Promise<string>;
}

async function listen(t: Test, onConn: (s: Socket) => void): Promise<number> {
  const server: Server = createServer({ allowHalfOpen: true }, onConn);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => {
    server.close();
  });
  return (server.address() as AddressInfo).port;
}

async function rig(t: Test): Promise<Rig> {
  const upstreamAccepted = new Promise<Socket>((resolve) => {
    void listen(t, resolve).then((p) => upstreamPort.resolve(p));
  });
  const upstreamPort = deferred<number>();
  const port = await upstreamPort.promise;
  const counted = { leftToRight: 0, rightToLeft: 0 };
  const relayed = deferred<{ left: Socket; right: Socket; result: Promise<string> }>();
  const frontPort = await listen(t, (left) => {
    const right = connect({ host: '127.0.0.1', port, allowHalfOpen: true });
    const result = relay(left, right, { leftToRight: (n) => (counted.leftToRight += n), rightToLeft: (n) => (counted.rightToLeft += n) });
    relayed.resolve({ left, right, result });
  });
  const client = connect({ host: '127.0.0.1', port: frontPort, allowHalfOpen: true });
  await once(client, 'connect');
  const { left, right, result } = await relayed.promise;
  const upstream = await upstreamAccepted;
  for (const s of [client, upstream]) t.teardown(() => s.destroy());
  return { client, upstream, left, right, counted, result };
}

function deferred<T>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** Everything a socket sends until its FIN. */
async function readAll(s: Socket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  await once(s, 'end');
  return Buffer.concat(chunks);
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** How a socket's peer went away: the error code, 'FIN' for a clean end, or 'nothing' within 3 s. */
function outcome(s: Socket): Promise<string> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve('nothing'), 3000);
    const done = (v: string): void => {
      clearTimeout(timer);
      resolve(v);
    };
    s.once('error', (err: NodeJS.ErrnoException) => done(err.code ?? err.message));
    s.once('end', () => done('FIN'));
    s.once('close', () => done('closed'));
    s.resume();
  });
}

t.test('bytes flow both ways, counted exactly; a half-closed client still gets the whole response', async (t) => {
  const r = await rig(t);
  const request = randomBytes(300_001);
  const response = randomBytes(1_234_567);

  // The upstream answers only after the client's FIN: a request/response over a half-closed connection.
  const upstreamGot = readAll(r.upstream).then((got) => {
    r.upstream.end(response);
    return got;
  });
  const clientGot = readAll(r.client);
  r.client.end(request);

  t.equal(sha(await upstreamGot), sha(request), 'the upstream got the request intact, then its FIN');
  t.equal(sha(await clientGot), sha(response), 'the client got the whole response after its own FIN');
  t.equal(await r.result, '', 'a clean relay resolves with no error');
  t.equal(r.counted.leftToRight, request.length, 'client → upstream bytes counted exactly');
  t.equal(r.counted.rightToLeft, response.length, 'upstream → client bytes counted exactly');
  t.ok(r.left.destroyed && r.right.destroyed, 'both relay sockets are released at the end');
});

t.test('half-close the other way: the upstream finishes first, the client keeps sending', async (t) => {
  const r = await rig(t);
  const clientGot = readAll(r.client);
  r.upstream.end('banner then FIN');
  t.equal((await clientGot).toString(), 'banner then FIN');
  const upstreamGot = readAll(r.upstream);
  r.client.write('still ');
  await sleep(20);
  r.client.end('talking');
  t.equal((await upstreamGot).toString(), 'still talking', 'the client → upstream direction kept flowing');
  t.equal(await r.result, '');
  t.same(r.counted, { leftToRight: 13, rightToLeft: 15 });
});

t.test('back-pressure: a reader that stops pauses the writer instead of buffering in the relay', async (t) => {
  const r = await rig(t);
  r.upstream.pause(); // the upstream reads nothing for now
  const total = 64 * 1024 * 1024;
  const chunk = Buffer.alloc(256 * 1024, 0x61);
  // The client ignores back-pressure on purpose: it hands everything to its own socket at once.
  for (let sent = 0; sent < total; sent += chunk.length) r.client.write(chunk);
  r.client.end();

  // Let the relay run against the stalled upstream.
  let maxQueued = 0;
  for (let i = 0; i < 30; i++) {
    await sleep(10);
    maxQueued = Math.max(maxQueued, r.right.writableLength);
  }
  const pulled = r.left.bytesRead;
  t.ok(pulled < total / 4, `the relay stopped reading from the client (${(pulled / 1048576).toFixed(1)} MiB of 64 MiB read)`);
  t.ok(maxQueued <= 1024 * 1024, `the relay queued at most ${(maxQueued / 1024).toFixed(0)} KiB towards the stalled upstream`);
  t.ok(r.client.writableLength > total / 2, 'the rest waits in the client, the side that produced it');

  // Once the upstream reads again, everything arrives.
  let received = 0;
  r.upstream.on('data', (c: Buffer) => (received += c.length));
  r.upstream.resume();
  await once(r.upstream, 'end');
  t.equal(received, total, 'every byte arrives once the reader resumes');
  r.upstream.end();
  t.equal(await r.result, '');
  t.equal(r.counted.leftToRight, total);
});

t.test('a reset on one side resets the other and reports the error', async (t) => {
  for (const side of ['upstream', 'client'] as const) {
    const r = await rig(t);
    const [resetter, peer] = side === 'upstream' ? [r.upstream, r.client] : [r.client, r.upstream];
    // Some traffic first, so the reset arrives mid-stream.
    const peerGotData = once(peer, 'data');
    resetter.write('hello');
    await peerGotData;
    const peerOutcome = outcome(peer);
    resetter.on('error', () => undefined);
    resetter.resetAndDestroy();
    t.equal(await peerOutcome, 'ECONNRESET', `${side} reset: the other peer sees a reset, not a clean close`);
    t.equal(await r.result, 'ECONNRESET', `${side} reset: the relay resolves with the error`);
    t.ok(r.left.destroyed && r.right.destroyed, `${side} reset: both relay sockets are destroyed`);
  }
});

t.test('a destroyed side (not reset) still ends the other side abnormally', async (t) => {
  const r = await rig(t);
  const peerOutcome = outcome(r.client);
  r.right.destroy(Object.assign(new Error('boom'), { code: 'EBOOM' }));
  t.equal(await peerOutcome, 'ECONNRESET', 'the client gets a reset');
  t.equal(await r.result, 'EBOOM', 'the first error is reported');
});

t.test('a source paused before the relay starts flows once it starts (capture listeners pause until the upstream connects)', async (t) => {
  const upstreamAccepted = deferred<Socket>();
  const port = await listen(t, (s) => upstreamAccepted.resolve(s));
  const relayed = deferred<Promise<string>>();
  const frontPort = await listen(t, (left) => {
    left.pause();
    const right = connect({ host: '127.0.0.1', port, allowHalfOpen: true });
    right.once('connect', () => relayed.resolve(relay(left, right, { leftToRight: () => undefined, rightToLeft: () => undefined })));
  });
  const client = connect({ host: '127.0.0.1', port: frontPort, allowHalfOpen: true });
  t.teardown(() => client.destroy());
  client.end('hello, paused relay');
  const upstream = await upstreamAccepted.promise;
  t.teardown(() => upstream.destroy());
  t.equal((await readAll(upstream)).toString(), 'hello, paused relay', 'the bytes sent before the relay started arrive');
  upstream.end();
  t.equal(await (await relayed.promise), '', 'and the relay ends cleanly');
});
