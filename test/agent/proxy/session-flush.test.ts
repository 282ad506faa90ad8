/**
 * SessionStreams.flush: waits for a session's streams to end, then for the
 * peer to answer a PING, within a deadline. Real HTTP/2 (cleartext, in
 * process) on 127.0.16.20; the end-to-end case is test/e2e/drain-flush.test.ts.
 */
import t, { type Test } from 'tap';
import http2, { type ServerHttp2Session, type ServerHttp2Stream } from 'node:http2';
import { connect, type AddressInfo } from 'node:net';
import { SessionStreams } from '../../../agent/proxy/session-flush.ts';

const HOST = '127.0.16.20';

async function pair(t: Test): Promise<{ tracked: SessionStreams<ServerHttp2Session>; streams: ServerHttp2Stream[]; client: http2.ClientHttp2Session }> {
  const tracked = new SessionStreams<ServerHttp2Session>();
  const streams: ServerHttp2Stream[] = [];
  const server = http2.createServer();
  server.on('session', (s) => tracked.add(s));
  server.on('stream', (stream) => {
    tracked.stream(stream.session as ServerHttp2Session, stream);
    stream.on('error', () => undefined);
    streams.push(stream);
  });
  await new Promise<void>((r) => server.listen(0, HOST, r));
  const client = http2.connect(`http://${HOST}:${(server.address() as AddressInfo).port}`);
  client.on('error', () => undefined);
  t.teardown(() => {
    client.destroy();
    server.close();
    for (const s of tracked.sessions) s.destroy();
  });
  return { tracked, streams, client };
}

t.test('nothing to flush: resolves at once', async (t) => {
  t.equal(await new SessionStreams().flush(1_000), 0);
});

t.test('waits for the open stream to end, then for the PING answer', async (t) => {
  const { tracked, streams, client } = await pair(t);
  const req = client.request({ ':path': '/' }, { endStream: false });
  req.on('error', () => undefined);
  req.resume();
  while (streams.length === 0) await new Promise((r) => setTimeout(r, 10));
  let flushed: number | undefined;
  const flushing = tracked.flush(10_000).then((n) => (flushed = n));
  await new Promise((r) => setTimeout(r, 200));
  t.equal(flushed, undefined, 'still waiting while a stream is open');
  streams[0]!.respond({ ':status': 200 });
  streams[0]!.end('last bytes');
  req.end();
  await flushing;
  t.equal(flushed, 0, 'confirmed once the stream ended and the peer answered');
});

t.test('a stream that never ends: gives up at the deadline and says how many', async (t) => {
  const { tracked, streams, client } = await pair(t);
  const req = client.request({ ':path': '/' }, { endStream: false });
  req.on('error', () => undefined);
  while (streams.length === 0) await new Promise((r) => setTimeout(r, 10));
  const started = Date.now();
  t.equal(await tracked.flush(300), 1, 'one session not confirmed');
  t.ok(Date.now() - started >= 290, 'waited out the deadline');
});

t.test('a session that closes counts as done', async (t) => {
  const { tracked, streams, client } = await pair(t);
  const req = client.request({ ':path': '/' }, { endStream: false });
  req.on('error', () => undefined);
  while (streams.length === 0) await new Promise((r) => setTimeout(r, 10));
  const flushing = tracked.flush(10_000);
  client.destroy();
  t.equal(await flushing, 0);
});

t.test('an idle session: confirmed by the PING answer, and only by it', async (t) => {
  const { tracked, client } = await pair(t);
  await new Promise<void>((r) => (client.connecting ? client.once('connect', () => r()) : r()));
  while ([...tracked.sessions].length === 0) await new Promise((r) => setTimeout(r, 10));
  t.equal(await tracked.flush(5_000), 0, 'a Node.js peer answers');

  // A raw HTTP/2 peer: the connection preface and an empty SETTINGS frame,
  // then silence. It never answers a PING, so nothing confirms it.
  const silent = new SessionStreams<ServerHttp2Session>();
  const server = http2.createServer();
  server.on('session', (s) => {
    s.on('error', () => undefined);
    silent.add(s);
  });
  await new Promise<void>((r) => server.listen(0, HOST, r));
  const raw = connect((server.address() as AddressInfo).port, HOST);
  raw.on('error', () => undefined);
  raw.resume();
  t.teardown(() => {
    raw.destroy();
    server.close();
    for (const s of silent.sessions) s.destroy();
  });
  raw.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]));
  while ([...silent.sessions].length === 0) await new Promise((r) => setTimeout(r, 10));
  t.equal(await silent.flush(300), 1, 'a peer that does not answer the PING is not confirmed');
});
