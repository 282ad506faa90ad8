/**
 * ambit-dataplane's outbound half (upstream listeners, the HBONE client
 * pool) driven directly over its control pipe, as the agent drives it: a
 * real process, real TLS on 127.0.19.1, and a Node.js HTTP/2 server in the
 * destination agent's place. The data plane must carry exactly what the
 * agent routes (authority, headers, the source's certificate), pool streams
 * on one connection, tell the agent about each server it dials and open
 * nothing on a server the agent rejects or that does not chain to the
 * bundle, reset the client of a refused or failed tunnel, and close its
 * listeners and pooled connections on a drain.
 */
import t, { type Test } from 'tap';
import { createHash } from 'node:crypto';
import { createSecureServer, type Http2SecureServer, type ServerHttp2Session } from 'node:http2';
import { connect as netConnect, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { serverNameFor } from '../../../agent/proxy/hbone-names.ts';
import { sendRandom } from '../../e2e/harness.ts';
import { Dataplane, dataRecordBytes, echoRounds, HOST, pki, RecordingRelay, WEB_ID, type Msg } from './dataplane-harness.ts';

const CLIENT_ID = 'spiffe://cluster.local/ns/default/sa/client';
const OTHER_ID = 'spiffe://cluster.local/ns/default/sa/other';
/** Where the test's clients connect from (the client workload's address). */
const CLIENT_ADDR = '127.0.19.2';

interface Seen {
  authority: string;
  traceparent: string;
  clientCert: string;
}

/** The destination agent: CONNECT to *:401 is refused (policy), to *:503 answered workload unreachable, to *:400 not a local workload, anything else echoed. */
function hboneServer(cred: { bundle: string; chain: string; key: string }): { server: Http2SecureServer; seen: Seen[]; sessions: ServerHttp2Session[] } {
  const seen: Seen[] = [];
  const sessions: ServerHttp2Session[] = [];
  const server = createSecureServer({ cert: cred.chain, key: cred.key, ca: cred.bundle, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3', ALPNProtocols: ['h2'] });
  server.on('session', (s) => sessions.push(s));
  server.on('stream', (stream, headers) => {
    const socket = stream.session?.socket as TLSSocket | undefined;
    seen.push({ authority: String(headers[':authority']), traceparent: String(headers.traceparent ?? ''), clientCert: socket?.getPeerX509Certificate()?.subjectAltName ?? '' });
    if (String(headers[':authority']).endsWith(':401')) {
      stream.respond({ ':status': 401, 'x-ambit-reason': 'policy_denied: default/deny-all' }, { endStream: true });
      return;
    }
    if (String(headers[':authority']).endsWith(':503')) {
      stream.respond({ ':status': 503, 'x-ambit-reason': 'workload_unreachable' }, { endStream: true });
      return;
    }
    if (String(headers[':authority']).endsWith(':400')) {
      stream.respond({ ':status': 400, 'x-ambit-reason': 'unknown_destination' }, { endStream: true });
      return;
    }
    stream.respond({ ':status': 200 });
    stream.pipe(stream);
  });
  return { server, seen, sessions };
}

/** Sends `bytes` through the listener and reads the echo; resolves with both checksums and how it ended. */
function through(port: number, bytes: number): { socket: Socket; done: Promise<{ sent: string; received: string; receivedBytes: number; error: string }> } {
  const socket = netConnect({ host: HOST, port, localAddress: CLIENT_ADDR, allowHalfOpen: true });
  const done = new Promise<{ sent: string; received: string; receivedBytes: number; error: string }>((resolve) => {
    const sent = createHash('sha256');
    const received = createHash('sha256');
    let receivedBytes = 0;
    let error = '';
    socket.on('data', (d: Buffer) => {
      received.update(d);
      receivedBytes += d.length;
    });
    socket.on('error', (e: NodeJS.ErrnoException) => (error = e.code ?? e.message));
    socket.on('close', () => resolve({ sent: sent.digest('hex'), received: received.digest('hex'), receivedBytes, error }));
    socket.once('connect', () => sendRandom(socket, bytes, sent));
  });
  return { socket, done };
}

/** One endpoint of a tunnel route (control.rs `Attempt`). */
interface TunnelAttempt {
  hbone: string;
  sni: string;
  expect: string;
  authority: string;
  headers: [string, string][];
}

/** The agent's `tunnel` route: the client's identity and the endpoints to try in turn. */
function tunnelRoute(id: unknown, attempts: TunnelAttempt[], timeoutMs = 5000): Msg {
  return { t: 'route', id, verdict: 'tunnel', source: CLIENT_ID, timeoutMs, attempts, tag: `tag of ${String(id)}` };
}

/** An attempt at the web workload through the agent at `hbone` (`authority` picks the test server's answer). */
function webAttempt(hbone: string, authority = '10.9.8.7:80'): TunnelAttempt {
  return { hbone, sni: serverNameFor(WEB_ID), expect: WEB_ID, authority, headers: [] };
}

/**
 * A data plane with the client workload's identity and one upstream
 * listener bound (id `lid`), as the source agent sets it up.
 */
async function clientDataplane(t: Test, mesh: ReturnType<typeof pki>, lid: number): Promise<{ dp: Dataplane; port: number }> {
  const client = mesh.leaves.get(CLIENT_ID)!;
  const dp = new Dataplane(['--listen', `${HOST}:0`]);
  t.teardown(() => void dp.child.kill('SIGKILL'));
  await dp.next((m) => m.t === 'hello', 'hello');
  dp.say({ t: 'config', rev: 1, bundle: mesh.bundle, identities: [{ uri: CLIENT_ID, sni: serverNameFor(CLIENT_ID), chain: client.chain, key: client.key }] });
  await dp.next((m) => m.t === 'ack', 'ack');
  dp.say({ t: 'listen', lid, addr: `${HOST}:0` });
  const port = Number(String((await dp.next((m) => m.t === 'bound', 'bound')).addr).split(':')[1]);
  return { dp, port };
}

t.test('upstream listener: routed tunnels on one pooled connection, refusals, a rejected or foreign server, drain', async (t) => {
  const mesh = pki([CLIENT_ID, WEB_ID]);
  const client = mesh.leaves.get(CLIENT_ID)!;
  const web = mesh.leaves.get(WEB_ID)!;
  const dest = hboneServer({ bundle: mesh.bundle, ...web });
  await new Promise<void>((r) => dest.server.listen(0, HOST, r));
  t.teardown(() => void dest.server.close());
  const hbone = `${HOST}:${(dest.server.address() as AddressInfo).port}`;

  const dp = new Dataplane(['--listen', `${HOST}:0`]);
  t.teardown(() => void dp.child.kill('SIGKILL'));
  await dp.next((m) => m.t === 'hello', 'hello');
  dp.say({ t: 'config', rev: 1, bundle: mesh.bundle, identities: [{ uri: CLIENT_ID, sni: serverNameFor(CLIENT_ID), chain: client.chain, key: client.key }] });
  await dp.next((m) => m.t === 'ack', 'ack');

  dp.say({ t: 'listen', lid: 7, addr: `${HOST}:0` });
  const bound = await dp.next((m) => m.t === 'bound', 'bound');
  t.equal(bound.lid, 7, 'the listener is bound, named by the agent\'s id');
  const port = Number(String(bound.addr).split(':')[1]);

  const route = (out: Msg, extra: Partial<TunnelAttempt>): void => dp.say(tunnelRoute(out.id, [{
    hbone, sni: serverNameFor(WEB_ID), expect: WEB_ID,
    authority: '10.9.8.7:80', headers: [['traceparent', '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01']], ...extra,
  }]));

  // --- a tunnel: the agent routes it and approves the server it dials
  const first = through(port, 4 * 1024 * 1024);
  const out = await dp.next((m) => m.t === 'out', 'out');
  t.equal(out.lid, 7, 'the connection is announced with its listener');
  t.same((out.remote as unknown[])[0], CLIENT_ADDR, 'and the client\'s address, for the agent\'s source check');
  route(out, {});
  const peer = await dp.next((m) => m.t === 'peer', 'peer');
  t.equal(peer.expect, WEB_ID, 'the agent is asked whether the dialled server is the destination');
  t.equal(Buffer.from(String((peer.chain as string[])[0]), 'base64').toString('base64'), String((peer.chain as string[])[0]), 'with the server\'s chain (DER, base64)');
  dp.say({ t: 'peer', pid: peer.pid, ok: true });
  t.same(await dp.next((m) => m.t === 'dial', 'dial'), { t: 'dial', ok: true }, 'the dial is reported');
  t.same(await dp.next((m) => m.t === 'open', 'open'), { t: 'open', id: out.id }, 'the tunnel opened');
  const r1 = await first.done;
  t.equal(r1.receivedBytes, 4 * 1024 * 1024, 'every byte came back');
  t.equal(r1.received, r1.sent, '4 MiB intact both ways');
  const end1 = await dp.next((m) => m.t === 'end' && m.id === out.id, 'end');
  t.match(end1, { t: 'end', id: out.id, fromSource: 4 * 1024 * 1024, toSource: 4 * 1024 * 1024, error: '', failed: false, tag: `tag of ${String(out.id)}` }, 'the end with both byte counts, and the agent\'s tag back');
  t.same(dest.seen[0], { authority: '10.9.8.7:80', traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', clientCert: `URI:${CLIENT_ID}` }, 'the CONNECT carried the routed authority and headers, with the source\'s certificate');

  // --- a second tunnel reuses the pooled connection: no dial, no peer check
  const second = through(port, 64 * 1024);
  route(await dp.next((m) => m.t === 'out', 'out'), {});
  const r2 = await second.done;
  t.equal(r2.received, r2.sent, 'second tunnel intact');
  t.equal(dest.sessions.length, 1, 'both tunnels were streams on one HTTP/2 connection');
  t.notOk(dp.messages.some((m) => m.t === 'dial' || m.t === 'peer'), 'no second dial');

  // --- the destination agent refuses: the client is reset, the agent told the status and reason
  const denied = through(port, 1024);
  const deniedOut = await dp.next((m) => m.t === 'out', 'out');
  route(deniedOut, { authority: '10.9.8.7:401' });
  const deniedEnd = await dp.next((m) => m.t === 'end' && m.id === deniedOut.id, 'end');
  t.same({ failed: deniedEnd.failed, status: deniedEnd.status, reason: deniedEnd.reason }, { failed: true, status: 401, reason: 'policy_denied: default/deny-all' }, 'a 401 comes back with its reason');
  t.equal((await denied.done).error, 'ECONNRESET', 'and the client\'s connection is reset');

  // --- the agent refuses the route: reset, nothing dialled
  const refused = through(port, 1024);
  dp.say({ t: 'route', id: (await dp.next((m) => m.t === 'out', 'out')).id, verdict: 'refuse' });
  t.equal((await refused.done).error, 'ECONNRESET', 'a refused route resets the client');

  // --- the agent rejects the dialled server (another identity expected): nothing is sent on it
  const rejected = through(port, 1024);
  const rejectedOut = await dp.next((m) => m.t === 'out', 'out');
  route(rejectedOut, { expect: OTHER_ID });
  const rejectedPeer = await dp.next((m) => m.t === 'peer', 'peer');
  t.equal(rejectedPeer.expect, OTHER_ID);
  dp.say({ t: 'peer', pid: rejectedPeer.pid, ok: false });
  t.same(await dp.next((m) => m.t === 'dial', 'dial'), { t: 'dial', ok: false }, 'the dial is reported as failed');
  const rejectedEnd = await dp.next((m) => m.t === 'end' && m.id === rejectedOut.id, 'end');
  t.equal(rejectedEnd.reason, 'connect_failed');
  t.match(String(rejectedEnd.error), new RegExp(`peer is not ${OTHER_ID}`), 'naming the identity it expected');
  t.equal((await rejected.done).error, 'ECONNRESET', 'the client is reset');
  t.equal(dest.seen.length, 3, 'no CONNECT reached the rejected server');

  // --- a server whose certificate does not chain to the bundle: the handshake fails, the agent is not even asked
  const foreign = pki([WEB_ID]);
  const impostor = hboneServer(foreign);
  await new Promise<void>((r) => impostor.server.listen(0, HOST, r));
  t.teardown(() => void impostor.server.close());
  const viaImpostor = through(port, 1024);
  const impostorOut = await dp.next((m) => m.t === 'out', 'out');
  route(impostorOut, { hbone: `${HOST}:${(impostor.server.address() as AddressInfo).port}` });
  const impostorEnd = await dp.next((m) => m.t === 'end' && m.id === impostorOut.id, 'end');
  t.equal(impostorEnd.reason, 'connect_failed');
  t.match(String(impostorEnd.error), /certificate/i, `the failure names the certificate (${String(impostorEnd.error)})`);
  t.notOk(dp.messages.some((m) => m.t === 'peer'), 'no peer check was asked for');
  t.equal((await viaImpostor.done).error, 'ECONNRESET');
  t.equal(impostor.seen.length, 0, 'nothing reached the impostor');

  // --- drain: the listener closes, the idle pooled connection closes, then drained
  dp.say({ t: 'drain' });
  await dp.next((m) => m.t === 'dialEnd', 'dialEnd');
  await dp.next((m) => m.t === 'drained', 'drained');
  const after = await new Promise<string>((resolve) => {
    const s = netConnect({ host: HOST, port });
    s.once('connect', () => (s.destroy(), resolve('connected')));
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
  });
  t.equal(after, 'ECONNREFUSED', 'the upstream listener is closed after the drain');
});

// The client half writes its DATA frames through the same record writer as
// inbound (tls::record_writer in dataplane/src/tls.rs): a 1 KiB write from
// the workload must reach the destination agent as one TLS record.
t.test('upstream listener: a small DATA frame leaves as one TLS record', async (t) => {
  const mesh = pki([CLIENT_ID, WEB_ID]);
  const dest = hboneServer({ bundle: mesh.bundle, ...mesh.leaves.get(WEB_ID)! });
  await new Promise<void>((r) => dest.server.listen(0, HOST, r));
  t.teardown(() => void dest.server.close());
  const relay = new RecordingRelay({ host: HOST, port: (dest.server.address() as AddressInfo).port });
  const relayPort = await relay.listen();
  t.teardown(() => void relay.server.close());
  const { dp, port } = await clientDataplane(t, mesh, 1);

  const socket = netConnect({ host: HOST, port, localAddress: CLIENT_ADDR });
  socket.on('error', () => undefined);
  t.teardown(() => void socket.destroy());
  const out = await dp.next((m) => m.t === 'out', 'out');
  dp.say(tunnelRoute(out.id, [webAttempt(`${HOST}:${relayPort}`)]));
  dp.say({ t: 'peer', pid: (await dp.next((m) => m.t === 'peer', 'peer')).pid, ok: true });
  await dp.next((m) => m.t === 'open', 'open');
  await echoRounds(socket, 3, 1024); // past the handshake's and settings' frames
  const from = relay.fromClient.length;
  await echoRounds(socket, 20, 1024);
  const chunks = relay.fromClient.slice(from);
  t.same(chunks, new Array(20).fill(dataRecordBytes(1024)), `each write crossed as one ${dataRecordBytes(1024)}-byte record (a split frame shows as ${dataRecordBytes(0)} + ${dataRecordBytes(1024) - 9})`);
});

t.test('a listener address it cannot bind: an error naming the listener, and it keeps serving', async (t) => {
  const dp = new Dataplane(['--listen', `${HOST}:0`]);
  t.teardown(() => void dp.child.kill('SIGKILL'));
  await dp.next((m) => m.t === 'hello', 'hello');
  dp.say({ t: 'listen', lid: 3, addr: '203.0.113.7:0' });
  const err = await dp.next((m) => m.t === 'error', 'error');
  t.equal(err.lid, 3, 'the error names the listener');
  t.match(String(err.message), /cannot listen on 203\.0\.113\.7:0/);
  dp.say({ t: 'listen', lid: 4, addr: `${HOST}:0` });
  t.equal((await dp.next((m) => m.t === 'bound', 'bound')).lid, 4, 'a good listener after it is bound');
});

t.test('drain while a routed tunnel is still opening: it opens unpooled and intact, and drained waits for its connection', async (t) => {
  const mesh = pki([CLIENT_ID, WEB_ID]);
  const dest = hboneServer({ bundle: mesh.bundle, ...mesh.leaves.get(WEB_ID)! });
  await new Promise<void>((r) => dest.server.listen(0, HOST, r));
  t.teardown(() => void dest.server.close());
  const { dp, port } = await clientDataplane(t, mesh, 0);

  const conn = through(port, 1024 * 1024);
  const out = await dp.next((m) => m.t === 'out', 'out');
  dp.say({ t: 'drain' }); // the agent routed this connection before its drain began
  dp.say(tunnelRoute(out.id, [webAttempt(`${HOST}:${(dest.server.address() as AddressInfo).port}`)]));
  const peer = await dp.next((m) => m.t === 'peer', 'peer');
  dp.say({ t: 'peer', pid: peer.pid, ok: true });
  const r = await conn.done;
  t.equal(r.receivedBytes, 1024 * 1024, 'the tunnel routed before the drain carried every byte');
  t.equal(r.received, r.sent, 'intact');
  const end = await dp.next((m) => m.t === 'end' && m.id === out.id, 'end');
  t.equal(end.error, '', 'and ended cleanly');
  const dialEnd = await dp.next((m) => m.t === 'dialEnd', 'dialEnd');
  t.pass('its connection, not pooled while draining, closed once the tunnel was over');
  // A `drained` may come at once (nothing was open when the drain began); one must come after that connection closed.
  const last = await dp.next((m) => m.t === 'drained' && (dp.order.get(m) ?? 0) > (dp.order.get(dialEnd) ?? Infinity), 'drained after dialEnd');
  t.ok(last, 'drained is said again once the connection opened during the drain has closed');
});

// Bounded retry before any byte flows (outbound.rs `tunnel`): an attempt
// that fails with a connect failure, a timeout or the peer's 503 passes the
// connection to the next endpoint; a 401 or 400 ends it; no more than three
// attempts are made; each attempt is reported.
t.test('tunnel attempts: the next endpoint after a connect failure, a 503 or a timeout; never after a 401 or 400; at most three', async (t) => {
  const mesh = pki([CLIENT_ID, WEB_ID]);
  const dest = hboneServer({ bundle: mesh.bundle, ...mesh.leaves.get(WEB_ID)! });
  await new Promise<void>((r) => dest.server.listen(0, HOST, r));
  t.teardown(() => void dest.server.close());
  const hbone = `${HOST}:${(dest.server.address() as AddressInfo).port}`;
  // An agent address nobody listens on (bound, then closed).
  const dead = await new Promise<string>((resolve) => {
    const s = createNetServer().listen(0, HOST, () => {
      const p = (s.address() as AddressInfo).port;
      s.close(() => resolve(`${HOST}:${p}`));
    });
  });
  // An agent that accepts TCP and never answers: the attempt's share of the deadline runs out.
  const silent = createNetServer((s) => s.on('error', () => undefined));
  await new Promise<void>((r) => silent.listen(0, HOST, r));
  t.teardown(() => void silent.close());
  const silentAddr = `${HOST}:${(silent.address() as AddressInfo).port}`;
  const { dp, port } = await clientDataplane(t, mesh, 0);
  const approve = (): void => void dp.next((m) => m.t === 'peer', 'peer').then((p) => dp.say({ t: 'peer', pid: p.pid, ok: true }));

  // --- a dead agent, then a 503, then a live endpoint: the third serves, intact
  const seenBefore = dest.seen.length;
  const conn = through(port, 256 * 1024);
  const out = await dp.next((m) => m.t === 'out', 'out');
  dp.say(tunnelRoute(out.id, [webAttempt(dead, '10.0.0.1:80'), webAttempt(hbone, '10.0.0.2:503'), webAttempt(hbone, '10.0.0.3:80')]));
  approve();
  const a0 = await dp.next((m) => m.t === 'attempt' && m.id === out.id, 'attempt 0');
  t.match(a0, { n: 0, endpoint: '10.0.0.1:80', hbone: dead, ok: false, status: 0, reason: 'connect_failed' }, 'the dead agent is reported');
  const a1 = await dp.next((m) => m.t === 'attempt' && m.id === out.id, 'attempt 1');
  t.match(a1, { n: 1, endpoint: '10.0.0.2:503', ok: false, status: 503, reason: 'workload_unreachable' }, 'the 503 is reported');
  const a2 = await dp.next((m) => m.t === 'attempt' && m.id === out.id, 'attempt 2');
  t.match(a2, { n: 2, endpoint: '10.0.0.3:80', ok: true, status: 200 }, 'the third endpoint served');
  await dp.next((m) => m.t === 'open' && m.id === out.id, 'open');
  const r = await conn.done;
  t.equal(r.received, r.sent, 'the client\'s bytes crossed once, intact, through the endpoint that served');
  t.same(dest.seen.slice(seenBefore).map((s) => s.authority), ['10.0.0.2:503', '10.0.0.3:80'], 'one CONNECT per reachable attempt, in order');

  // --- a 401 is not retried: one CONNECT, the client reset
  const denied = through(port, 1024);
  const deniedOut = await dp.next((m) => m.t === 'out', 'out');
  const before401 = dest.seen.length;
  dp.say(tunnelRoute(deniedOut.id, [webAttempt(hbone, '10.0.0.4:401'), webAttempt(hbone, '10.0.0.5:80')]));
  const deniedEnd = await dp.next((m) => m.t === 'end' && m.id === deniedOut.id, 'end');
  t.match(deniedEnd, { failed: true, status: 401 }, 'the 401 ends the connection');
  t.equal(dest.seen.length - before401, 1, 'the second endpoint was never tried');
  t.equal((await denied.done).error, 'ECONNRESET', 'the client is reset');

  // --- a 400 is not retried either
  const unknown = through(port, 1024);
  const unknownOut = await dp.next((m) => m.t === 'out', 'out');
  const before400 = dest.seen.length;
  dp.say(tunnelRoute(unknownOut.id, [webAttempt(hbone, '10.0.0.6:400'), webAttempt(hbone, '10.0.0.7:80')]));
  t.match(await dp.next((m) => m.t === 'end' && m.id === unknownOut.id, 'end'), { failed: true, status: 400 });
  t.equal(dest.seen.length - before400, 1, 'a 400 is not retried');
  await unknown.done;

  // --- a silent agent: its attempt times out within its share, the next serves
  const slow = through(port, 1024);
  const slowOut = await dp.next((m) => m.t === 'out', 'out');
  const started = Date.now();
  dp.say(tunnelRoute(slowOut.id, [webAttempt(silentAddr, '10.0.0.8:80'), webAttempt(hbone, '10.0.0.9:80')], 2000));
  t.match(await dp.next((m) => m.t === 'attempt' && m.id === slowOut.id, 'attempt'), { n: 0, ok: false, reason: 'timeout' }, 'the silent agent timed out');
  t.match(await dp.next((m) => m.t === 'attempt' && m.id === slowOut.id, 'attempt'), { n: 1, ok: true }, 'the next endpoint served');
  const slowR = await slow.done;
  t.equal(slowR.received, slowR.sent, 'intact');
  t.ok(Date.now() - started < 2000, `within the one deadline (${Date.now() - started} ms; the first attempt had half of 2 s)`);

  // --- every endpoint dead: at most three attempts, then the client is reset
  const doomed = through(port, 1024);
  const doomedOut = await dp.next((m) => m.t === 'out', 'out');
  const beforeDoomed = dest.seen.length;
  dp.say(tunnelRoute(doomedOut.id, [webAttempt(hbone, '10.0.1.1:503'), webAttempt(hbone, '10.0.1.2:503'), webAttempt(hbone, '10.0.1.3:503'), webAttempt(hbone, '10.0.1.4:80')]));
  const doomedEnd = await dp.next((m) => m.t === 'end' && m.id === doomedOut.id, 'end');
  t.match(doomedEnd, { failed: true, status: 503 }, 'the last failure ends it');
  t.equal(dest.seen.length - beforeDoomed, 3, 'three attempts, not the fourth endpoint');
  t.equal(dp.messages.filter((m) => m.t === 'attempt' && m.id === doomedOut.id).length, 3, 'each reported');
  t.equal((await doomed.done).error, 'ECONNRESET', 'the client sees a failure, not a hang');
});
