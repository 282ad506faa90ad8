import t from 'tap';
import { mkdtempSync, readFileSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { agentKnowsNode, agentsReady, ambitctl, childPids, startAgentPair, startController, type RunningAgent, type RunningController } from '../harness.ts';
import { FRAME, frame, frameReader, headersFrame, PREFACE, rstFrame, type RawFrame } from './mesh.ts';

/*
 * A hostile app against its own agent: it sends malformed HTTP, oversized
 * heads and an HTTP/2 rapid-reset flood to node-a's upstream listeners for
 * service ports declaring http and http2. Each is answered with the
 * protocol's error (400, 431, GOAWAY ENHANCE_YOUR_CALM), a well-behaved
 * request on another connection sent during the attack is served, and both
 * agents' ambit-dataplane are the same processes at the end.
 */

const NET = '127.0.122';
const CTL = `${NET}.21`;
const A = `${NET}.22`;
const B = `${NET}.23`;
const CLIENT_IP = `${NET}.24`;
const WEB_IP = `${NET}.25`;
const H1 = 8080;
const H2 = 8081;
const LOCAL = { h1: 19280, h2: 19281 } as const;
const ENHANCE_YOUR_CALM = 0xb;

const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-l7-app-'));
let ctl: RunningController;
let agentA: RunningAgent;
let agentB: RunningAgent;
let pids: number[];

function dataplaneOf(agent: RunningAgent): number {
  const pid = childPids(agent.proc.child.pid!).find((p) => readFileSync(`/proc/${p}/comm`, 'utf8').trim() === 'ambit-dataplane');
  if (pid === undefined) throw new Error(`${agent.node} has no ambit-dataplane`);
  return pid;
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
  // Its uid proves the client on node-a's upstream listeners, whatever address its sockets have.
  await ok(['workload', 'register', '--name', 'client', '--service-account', 'client', '--node', 'node-a', '--address', CLIENT_IP, '--uid', String(process.getuid?.() ?? 0)]);
  await ok(['service', 'create', '--name', 'web', '--port', `web=80:${H1}/http`, '--port', `h2=81:${H2}/http2`, '--selector', 'app=web']);
  const ta = (await ok(['node', 'token', 'create', '--node', 'node-a'])).trim();
  const tb = (await ok(['node', 'token', 'create', '--node', 'node-b'])).trim();
  [agentA, agentB] = await startAgentPair((stop) => t.teardown(stop), [
    { node: 'node-a', address: A, controller: ctl.address, dataDir: join(root, 'a'), join: ta, extra: ['--upstreams', `default/client:${LOCAL.h1}=web.default:80,default/client:${LOCAL.h2}=web.default:81`] },
    { node: 'node-b', address: B, controller: ctl.address, dataDir: join(root, 'b'), join: tb },
  ]);
  await agentsReady([agentA, agentB]);
  await agentKnowsNode(agentA, 'node-b');
  pids = [dataplaneOf(agentA), dataplaneOf(agentB)];
});

/** Writes `bytes` on a fresh connection to node-a's listener `port`; what comes back until it is closed (or timeoutMs). */
function raw(port: number, bytes: Buffer, timeoutMs = 5000): Promise<{ received: Buffer; ended: boolean }> {
  return new Promise((resolve) => {
    const s = netConnect({ host: A, port });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => finish(false), timeoutMs);
    const finish = (ended: boolean): void => {
      clearTimeout(timer);
      s.destroy();
      resolve({ received: Buffer.concat(chunks), ended });
    };
    s.on('data', (d: Buffer) => chunks.push(d));
    s.on('end', () => finish(true));
    s.on('error', () => finish(true));
    s.on('connect', () => s.write(bytes));
  });
}

async function goodRequest(): Promise<string> {
  const r = await raw(LOCAL.h1, Buffer.from('GET /good HTTP/1.1\r\nHost: web.default\r\nConnection: close\r\n\r\n'));
  return r.received.toString('latin1').split('\r\n')[0] ?? '';
}

async function during<T>(attack: () => Promise<T>): Promise<{ attack: T; good: string }> {
  const [a, good] = await Promise.all([attack(), new Promise((r) => setTimeout(r, 50)).then(goodRequest)]);
  return { attack: a, good };
}

t.test('a well-behaved request goes through', async (t) => {
  t.equal(await goodRequest(), 'HTTP/1.1 200 OK');
});

t.test('malformed HTTP/1.1 from an app: 400', async (t) => {
  const r = await during(() => raw(LOCAL.h1, Buffer.from('GET / HTTP/1.1\r\nHost: web\r\nBad Header\r\n\r\n')));
  t.match(r.attack.received.toString('latin1'), /^HTTP\/1\.1 400 /);
  t.ok(r.attack.ended, 'that connection is closed');
  t.equal(r.good, 'HTTP/1.1 200 OK', 'a request on another connection is served meanwhile');
});

t.test('an oversized head from an app: 431', async (t) => {
  const r = await during(() => raw(LOCAL.h1, Buffer.from(`GET / HTTP/1.1\r\nHost: web\r\nX-Big: ${'a'.repeat(100 * 1024)}\r\n\r\n`)));
  t.match(r.attack.received.toString('latin1'), /^HTTP\/1\.1 431 /);
  t.equal(r.good, 'HTTP/1.1 200 OK', 'a request on another connection is served meanwhile');
});

t.test('an HTTP/2 rapid-reset flood from an app: GOAWAY ENHANCE_YOUR_CALM', async (t) => {
  const r = await during(() => new Promise<RawFrame[]>((resolve) => {
    const frames: RawFrame[] = [];
    const s = netConnect({ host: A, port: LOCAL.h2 });
    const timer = setTimeout(() => done(), 5000);
    const done = (): void => {
      clearTimeout(timer);
      s.destroy();
      resolve(frames);
    };
    s.on('data', frameReader((f) => {
      frames.push(f);
      if (f.type === FRAME.GOAWAY) done();
    }));
    s.on('error', done);
    s.on('close', done);
    s.on('connect', () => {
      const burst: Buffer[] = [PREFACE, frame(FRAME.SETTINGS, 0, 0)];
      for (let i = 0; i < 1000; i++) {
        burst.push(headersFrame(2 * i + 1, [[':method', 'GET'], [':scheme', 'http'], [':path', '/'], [':authority', 'web.default:81']], true), rstFrame(2 * i + 1));
      }
      s.write(Buffer.concat(burst));
    });
  }));
  const goaway = r.attack.find((f) => f.type === FRAME.GOAWAY);
  t.equal(goaway?.payload.readUInt32BE(4), ENHANCE_YOUR_CALM, 'GOAWAY ENHANCE_YOUR_CALM');
  t.equal(r.good, 'HTTP/1.1 200 OK', 'a request on another connection is served meanwhile');
});

t.test('after every attack: the same ambit-dataplane processes on both agents', async (t) => {
  t.same([dataplaneOf(agentA), dataplaneOf(agentB)], pids);
  t.equal(await goodRequest(), 'HTTP/1.1 200 OK');
});
