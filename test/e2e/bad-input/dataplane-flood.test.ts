/**
 * A connection flood against ambit-dataplane's HBONE port (:15008), the
 * executable driven directly as the agent drives it, started under
 * `prlimit --nofile=256:256`: 300 idle raw TCP connections from ten loopback
 * addresses of 127.0.113.x. During the flood a real mesh client (a
 * certificate of the bundle, ALPN h2) opens a tunnel to a workload within
 * 2 s, and every flood connection is closed within 15 s (the oldest are
 * evicted at the cap of unauthenticated connections, the rest cut by the
 * 10 s handshake deadline). Without the limits, the flood held every
 * descriptor and the client waited in the backlog.
 */
import t from 'tap';
import { connect as http2Connect } from 'node:http2';
import { connect as netConnect, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { once } from 'node:events';
import { serverNameFor } from '../../../agent/proxy/hbone-names.ts';
import { Dataplane, pki, WEB_ID } from '../../agent/proxy/dataplane-harness.ts';

const HOST = '127.0.113.1';
const SOURCES = Array.from({ length: 10 }, (_, i) => `127.0.113.${11 + i}`);
const FLOOD = 300;
const NOFILE = 256;

/** Opens an idle TCP connection from `from`; resolves with it and when it closes (ms after it opened). */
function idle(port: number, from: string): Promise<{ socket: Socket; closed: Promise<number> }> {
  return new Promise((resolve) => {
    const started = Date.now();
    const socket = netConnect({ host: HOST, port, localAddress: from });
    socket.on('error', () => undefined);
    socket.on('data', () => undefined);
    const closed = new Promise<number>((r) => socket.once('close', () => r(Date.now() - started)));
    socket.once('connect', () => resolve({ socket, closed }));
    // Refused before it connected (a closed backlog): counts as closed.
    socket.once('close', () => resolve({ socket, closed }));
  });
}

t.test('an idle flood on :15008 under 256 descriptors: a real tunnel opens within 2 s, the flood is closed within 15 s', async (t) => {
  const dp = new Dataplane(['--listen', `${HOST}:0`], ['prlimit', `--nofile=${NOFILE}:${NOFILE}`, '--']);
  t.teardown(() => void dp.child.kill('SIGKILL'));
  const port = Number(String((await dp.next((m) => m.t === 'hello', 'hello')).addr).split(':')[1]);
  const p = pki();
  const sni = serverNameFor(WEB_ID);
  dp.say({ t: 'config', rev: 1, bundle: p.bundle, identities: [{ sni, chain: p.chain, key: p.key }] });
  await dp.next((m) => m.t === 'ack', 'ack');
  // The agent's part: admit every session and stream the data plane asks about.
  const answer = setInterval(() => {
    for (const m of dp.messages.splice(0)) {
      if (m.t === 'session') dp.say({ t: 'session', sid: m.sid, ok: true });
      if (m.t === 'stream') dp.say({ t: 'decide', id: m.id, status: 200, reason: '', dial: `${HOST}:${workloadPort}`, timeoutMs: 5_000 });
      if (m.t === 'refused') refused.set(String(m.reason), (refused.get(String(m.reason)) ?? 0) + 1);
    }
  }, 5);
  t.teardown(() => clearInterval(answer));
  const refused = new Map<string, number>();
  const workload = createNetServer((s) => s.pipe(s));
  await new Promise<void>((r) => workload.listen(0, HOST, r));
  t.teardown(() => void workload.close());
  const workloadPort = (workload.address() as AddressInfo).port;

  const floodStart = Date.now();
  const flood = await Promise.all(Array.from({ length: FLOOD }, (_, i) => idle(port, SOURCES[i % SOURCES.length]!)));
  t.teardown(() => flood.forEach((f) => f.socket.destroy()));
  t.comment(`flood of ${FLOOD} open after ${Date.now() - floodStart} ms`);

  // A real client, during the flood: TLS with a certificate of the bundle, HTTP/2, CONNECT, echo.
  const started = Date.now();
  const session = http2Connect(`https://${HOST}:${port}`, { servername: sni, ca: p.bundle, cert: p.chain, key: p.key, checkServerIdentity: () => undefined, localAddress: '127.0.113.2' } as never);
  session.on('error', () => undefined);
  t.teardown(() => void session.destroy());
  const echoed = (async (): Promise<string> => {
    const stream = session.request({ ':method': 'CONNECT', ':authority': `${HOST}:${workloadPort}` });
    stream.on('error', () => undefined);
    const [headers] = (await once(stream, 'response')) as [Record<string, unknown>];
    if (headers[':status'] !== 200) return `status ${String(headers[':status'])}`;
    stream.write('ping');
    const [data] = (await once(stream, 'data')) as [Buffer];
    stream.close();
    return data.toString();
  })();
  const result = await Promise.race([echoed, new Promise<string>((r) => setTimeout(() => r('timed out'), 2_000))]);
  const ms = Date.now() - started;
  t.equal(result, 'ping', `the tunnel opened and echoed during the flood (${ms} ms)`);
  t.ok(ms < 2_000, 'within 2 s');

  const closedIn = await Promise.race([
    Promise.all(flood.map((f) => f.closed)),
    new Promise<null>((r) => setTimeout(() => r(null), 15_000)),
  ]);
  t.ok(closedIn !== null, 'every flood connection was closed within 15 s');
  if (closedIn) t.comment(`flood connections closed after ${Math.min(...closedIn)}–${Math.max(...closedIn)} ms`);
  t.comment(`refusals reported to the agent: ${JSON.stringify(Object.fromEntries(refused))}`);
  t.ok((refused.get('handshake_evicted') ?? 0) > 0, 'the oldest unauthenticated connections were evicted at the cap and reported');
});
