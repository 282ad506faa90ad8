import t from 'tap';
import { mkdtempSync, readFileSync } from 'node:fs';
import http from 'node:http';
import http2, { type ClientHttp2Session, type ClientHttp2Stream } from 'node:http2';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serverNameFor } from '../../../agent/proxy/hbone-names.ts';
import { agentsReady, ambitctl, childPids, eventually, httpGet, hostPortOf, startAgentPair, startController, type RunningAgent, type RunningController } from '../harness.ts';
import { clientCredentialsFrom, FRAME, frame, frameReader, headersFrame, PREFACE, rstFrame, type RawFrame } from './mesh.ts';

/*
 * A hostile peer over HBONE against the destination side of HTTP ports: it
 * holds a genuine workload certificate, opens CONNECT streams to a workload
 * port whose Service declares http (HTTP/1.1) or http2, and sends malformed
 * HTTP, oversized heads and HTTP/2 floods inside them. Each attack gets the
 * protocol's answer (400, 431, GOAWAY ENHANCE_YOUR_CALM, REFUSED_STREAM),
 * while a well-behaved request on another connection, sent during the
 * attack, is served, and ambit-dataplane is the same process at the end.
 */

const NET = '127.0.122';
const CTL = `${NET}.11`;
const A = `${NET}.12`;
const B = `${NET}.13`;
const CLIENT_IP = `${NET}.14`;
const WEB_IP = `${NET}.15`;
const TD = 'cluster.local';
const WEB_ID = `spiffe://${TD}/ns/default/sa/web`;
const H1 = 8080;
const H2 = 8081;
const ENHANCE_YOUR_CALM = 0xb;
const REFUSED_STREAM = 0x7;

const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-l7-peer-'));
let ctl: RunningController;
let agentA: RunningAgent;
let agentB: RunningAgent;
let dataplanePid: number;

function dataplaneOf(agent: RunningAgent): number {
  const pid = childPids(agent.proc.child.pid!).find((p) => readFileSync(`/proc/${p}/comm`, 'utf8').trim() === 'ambit-dataplane');
  if (pid === undefined) throw new Error(`${agent.node} has no ambit-dataplane`);
  return pid;
}

function rssKiB(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
}

t.before(async () => {
  const h1 = http.createServer((req, res) => res.end(`ok ${req.url}`));
  const h2 = http2.createServer((req, res) => res.end(`ok ${req.url}`));
  await new Promise<void>((r) => h1.listen(H1, WEB_IP, r));
  await new Promise<void>((r) => h2.listen(H2, WEB_IP, r));
  t.teardown(() => {
    h1.closeAllConnections();
    h1.close();
    h2.close();
  });
  ctl = await startController(join(root, 'ctl'), [], CTL);
  t.teardown(() => ctl.proc.stop());
  const ok = async (args: string[]): Promise<string> => {
    const r = await ambitctl(ctl, args);
    if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  await ok(['workload', 'register', '--name', 'web', '--service-account', 'web', '--node', 'node-b', '--address', WEB_IP, '--port', String(H1), '--port', String(H2), '--label', 'app=web']);
  await ok(['workload', 'register', '--name', 'client', '--service-account', 'client', '--node', 'node-a', '--address', CLIENT_IP]);
  await ok(['service', 'create', '--name', 'web', '--port', `web=80:${H1}/http`, '--port', `h2=81:${H2}/http2`, '--selector', 'app=web']);
  const ta = (await ok(['node', 'token', 'create', '--node', 'node-a'])).trim();
  const tb = (await ok(['node', 'token', 'create', '--node', 'node-b'])).trim();
  [agentA, agentB] = await startAgentPair((stop) => t.teardown(stop), [
    { node: 'node-a', address: A, controller: ctl.address, dataDir: join(root, 'a'), join: ta },
    { node: 'node-b', address: B, controller: ctl.address, dataDir: join(root, 'b'), join: tb },
  ]);
  await agentsReady([agentA, agentB]);
  await eventually(async () => {
    const certs = JSON.parse((await httpGet(hostPortOf(agentB.admin), '/certs')).body) as { identity: string; state: string }[];
    return certs.some((c) => c.identity === WEB_ID && c.state === 'valid');
  }, 'node-b holds the web certificate');
  await eventually(async () => clientCredentialsFrom(agentA.dataDir), 'node-a holds the client certificate');
  dataplanePid = dataplaneOf(agentB);
});

/** An HBONE session to node-b as the client workload. */
function session(): ClientHttp2Session {
  const creds = clientCredentialsFrom(agentA.dataDir)!;
  const s = http2.connect(`https://${agentB.hbone}`, {
    ca: readFileSync(join(ctl.dataDir, 'ca/bundle.pem'), 'utf8'), ...creds,
    servername: serverNameFor(WEB_ID), minVersion: 'TLSv1.3', checkServerIdentity: () => undefined,
  });
  s.on('error', () => undefined);
  return s;
}

/** A CONNECT tunnel to the web workload's `port`, open (200). */
function tunnel(s: ClientHttp2Session, port: number): Promise<ClientHttp2Stream> {
  return new Promise((resolve, reject) => {
    const st = s.request({ ':method': 'CONNECT', ':authority': `${WEB_IP}:${port}` });
    st.on('error', () => undefined);
    st.once('response', (h) => (Number(h[':status']) === 200 ? resolve(st) : reject(new Error(`CONNECT answered ${h[':status']}`))));
  });
}

/** Writes `bytes` into a fresh tunnel and collects what comes back until the workload side ends it (or timeoutMs). */
async function rawExchange(port: number, bytes: Buffer | ((st: ClientHttp2Stream) => void), timeoutMs = 5000): Promise<{ received: Buffer; ended: boolean }> {
  const s = session();
  try {
    const st = await tunnel(s, port);
    const chunks: Buffer[] = [];
    const done = new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      const end = (): void => {
        clearTimeout(timer);
        resolve(true);
      };
      st.on('data', (d: Buffer) => chunks.push(d));
      st.on('end', end);
      st.on('close', end);
    });
    if (typeof bytes === 'function') bytes(st);
    else st.write(bytes);
    const ended = await done;
    return { received: Buffer.concat(chunks), ended };
  } finally {
    s.destroy();
  }
}

/** A well-behaved HTTP/1.1 request on its own HBONE connection: the status line. */
async function goodRequest(): Promise<string> {
  const r = await rawExchange(H1, Buffer.from('GET /good HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n'));
  return r.received.toString('latin1').split('\r\n')[0] ?? '';
}

/** Runs `attack` while a good request goes over another connection; both outcomes. */
async function during<T>(attack: () => Promise<T>): Promise<{ attack: T; good: string }> {
  const [a, good] = await Promise.all([attack(), new Promise((r) => setTimeout(r, 50)).then(goodRequest)]);
  return { attack: a, good };
}

t.test('malformed HTTP/1.1 is answered 400 and that connection closed', async (t) => {
  const r = await during(() => rawExchange(H1, Buffer.from('GET / HTTP/1.1\r\nHost: web\r\nBad Header\r\n\r\n')));
  t.match(r.attack.received.toString('latin1'), /^HTTP\/1\.1 400 /, '400 Bad Request');
  t.ok(r.attack.ended, 'the connection is closed after it');
  t.equal(r.good, 'HTTP/1.1 200 OK', 'a request on another connection is served meanwhile');
  const garbage = await rawExchange(H1, Buffer.from('\x16\x03\x01 not http at all\r\n\r\n'));
  t.match(garbage.received.toString('latin1'), /^HTTP\/1\.1 400 /, 'bytes that are not HTTP: 400');
});

t.test('an oversized HTTP/1.1 head is answered 431', async (t) => {
  const big = await during(() => rawExchange(H1, Buffer.from(`GET / HTTP/1.1\r\nHost: web\r\nX-Big: ${'a'.repeat(100 * 1024)}\r\n\r\n`)));
  t.match(big.attack.received.toString('latin1'), /^HTTP\/1\.1 431 /, 'a 100 KiB header: 431');
  t.equal(big.good, 'HTTP/1.1 200 OK', 'a request on another connection is served meanwhile');
  const many = Array.from({ length: 150 }, (_, i) => `X-H${i}: v\r\n`).join('');
  const r = await rawExchange(H1, Buffer.from(`GET / HTTP/1.1\r\nHost: web\r\n${many}\r\n`));
  t.match(r.received.toString('latin1'), /^HTTP\/1\.1 431 /, '150 headers: 431');
});

/** A raw HTTP/2 client inside a tunnel to the http2 port: its preface written, frames read as they come. */
async function rawH2(run: (st: ClientHttp2Stream, frames: RawFrame[]) => Promise<void>): Promise<RawFrame[]> {
  const s = session();
  const frames: RawFrame[] = [];
  try {
    const st = await tunnel(s, H2);
    st.on('data', frameReader((f) => frames.push(f)));
    st.write(Buffer.concat([PREFACE, frame(FRAME.SETTINGS, 0, 0)]));
    await run(st, frames);
    return frames;
  } finally {
    s.destroy();
  }
}

const goawayCode = (frames: readonly RawFrame[]): number | undefined => {
  const g = frames.find((f) => f.type === FRAME.GOAWAY);
  return g?.payload.readUInt32BE(4);
};
const get = (id: number, path = '/'): Buffer => headersFrame(id, [[':method', 'GET'], [':scheme', 'http'], [':path', path], [':authority', 'web']], true);

t.test('HTTP/2 rapid reset ends that connection with GOAWAY ENHANCE_YOUR_CALM', async (t) => {
  const r = await during(() => rawH2(async (st, frames) => {
    const burst: Buffer[] = [];
    for (let i = 0; i < 1000; i++) burst.push(get(2 * i + 1), rstFrame(2 * i + 1));
    st.write(Buffer.concat(burst));
    await eventually(async () => goawayCode(frames) !== undefined, 'a GOAWAY', 5000).catch(() => undefined);
  }));
  t.equal(goawayCode(r.attack), ENHANCE_YOUR_CALM, 'GOAWAY ENHANCE_YOUR_CALM');
  t.equal(r.good, 'HTTP/1.1 200 OK', 'a request on another connection is served meanwhile');
});

t.test('HTTP/2 streams beyond the concurrency limit are refused, the others served', async (t) => {
  const frames = await rawH2(async (st, frames) => {
    // 300 requests whose bodies never end: each holds a stream open.
    const burst: Buffer[] = [];
    for (let i = 0; i < 300; i++) burst.push(headersFrame(2 * i + 1, [[':method', 'POST'], [':scheme', 'http'], [':path', '/slow'], [':authority', 'web']], false));
    st.write(Buffer.concat(burst));
    await eventually(async () => frames.filter((f) => f.type === FRAME.RST_STREAM).length >= 44, 'the streams over the limit refused', 5000).catch(() => undefined);
  });
  const refused = frames.filter((f) => f.type === FRAME.RST_STREAM && f.payload.readUInt32BE(0) === REFUSED_STREAM).length;
  t.equal(refused, 300 - 256, 'each stream beyond 256 is reset with REFUSED_STREAM');
  t.equal(goawayCode(frames), undefined, 'the connection itself goes on');
  t.equal(await goodRequest(), 'HTTP/1.1 200 OK');
});

t.test('a SETTINGS flood neither grows the data plane nor stops other connections', async (t) => {
  const before = rssKiB(dataplanePid);
  const r = await during(() => rawH2(async (st) => {
    // 20,000 SETTINGS frames, never reading the ACKs: h2 answers each before reading on,
    // so an unread flood stalls only its own connection.
    const one = frame(FRAME.SETTINGS, 0, 0, Buffer.from([0, 3, 0, 0, 0, 100]));
    for (let i = 0; i < 20; i++) st.write(Buffer.concat(Array.from({ length: 1000 }, () => one)));
    await new Promise((r) => setTimeout(r, 1000));
  }));
  t.equal(r.good, 'HTTP/1.1 200 OK', 'a request on another connection is served meanwhile');
  const grown = rssKiB(dataplanePid) - before;
  t.ok(grown < 32 * 1024, `ambit-dataplane grew by ${grown} KiB (< 32 MiB)`);
});

t.test('a CONTINUATION flood ends that connection', async (t) => {
  const r = await during(() => rawH2(async (st, frames) => {
    // HEADERS without END_HEADERS, then CONTINUATION frames of junk headers that never end the block.
    st.write(frame(FRAME.HEADERS, 0, 1, Buffer.from([0x82, 0x86, 0x84])));
    const cont = frame(0x9, 0, 1, Buffer.concat(Array.from({ length: 64 }, (_, i) => Buffer.from([0x40, 3, 0x78, 0x2d, 0x61 + (i % 26), 4, 0x61, 0x61, 0x61, 0x61]))));
    for (let i = 0; i < 200 && goawayCode(frames) === undefined && !st.destroyed; i++) {
      st.write(Buffer.concat(Array.from({ length: 100 }, () => cont)));
      await new Promise((r) => setImmediate(r));
    }
    await eventually(async () => goawayCode(frames) !== undefined || st.destroyed, 'the connection ended', 5000).catch(() => undefined);
  }));
  const code = goawayCode(r.attack);
  t.ok(code !== undefined, `GOAWAY (code ${code})`);
  t.equal(r.good, 'HTTP/1.1 200 OK', 'a request on another connection is served meanwhile');
});

t.test('after every attack: the same ambit-dataplane process, still serving both protocols', async (t) => {
  t.equal(dataplaneOf(agentB), dataplanePid, 'ambit-dataplane was not restarted');
  t.equal(await goodRequest(), 'HTTP/1.1 200 OK');
  const h2 = await rawH2(async (st, frames) => {
    st.write(get(1, '/fine'));
    await eventually(async () => frames.some((f) => f.type === FRAME.HEADERS && f.streamId === 1), 'a response', 5000);
  });
  t.ok(h2.some((f) => f.type === FRAME.HEADERS && f.streamId === 1), 'an HTTP/2 request is answered');
});
