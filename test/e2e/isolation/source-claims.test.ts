/**
 * A peer's `Forwarded: for=` claim is believed only when it is an address of
 * a workload with the peer certificate's identity on the peer agent's node
 * (agent/connection/source-proof.ts), with real processes on loopback
 * (127.0.102.10–15): node-b serves web through ambit-dataplane; a raw HBONE
 * client holding the real `client` certificate claims the address of
 * `trusted`, which an `ipBlocks` policy singles out.
 */
import t from 'tap';
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import http2, { type ClientHttp2Session } from 'node:http2';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serverNameFor } from '../../../agent/proxy/hbone-names.ts';
import { agentsReady, ambitctl, eventually, hostPortOf, httpGet, metricValue, setUp, socksConnect, startAgentPair, startController, startEchoServer, type RunningAgent, type RunningController } from '../harness.ts';

const ip = (n: number): string => `127.0.102.${n}`;
const CTL = ip(10);
const A = ip(11);
const B = ip(12);
const CLIENT = ip(13);
const WEB = ip(14);
const TRUSTED = ip(15);
const WEB_PORT = 8080;
const TD = 'cluster.local';
const WEB_ID = `spiffe://${TD}/ns/default/sa/web`;
const CLIENT_ID = `spiffe://${TD}/ns/default/sa/client`;
const TRUSTED_ID = `spiffe://${TD}/ns/default/sa/trusted`;

const policy = (action: 'ALLOW' | 'DENY', block: string): string => `apiVersion: ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-by-ip, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: ${action}
  rules:
    - from:
        - source:
            ipBlocks: ["${block}/32"]
`;

const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-source-claims-'));
let ctl: RunningController;
let agentA: RunningAgent;
let agentB: RunningAgent;
const stops: (() => unknown)[] = [];

async function ok(args: string[], stdin?: string): Promise<string> {
  const r = await ambitctl(ctl, args, stdin);
  if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** A workload certificate node-a holds (its data dir), for a raw HBONE client. */
function credentials(uri: string): { key: string; cert: string } | undefined {
  const dir = join(agentA.dataDir, 'certs');
  for (const f of (() => { try { return readdirSync(dir); } catch { return []; } })()) {
    try {
      const e = JSON.parse(readFileSync(join(dir, f), 'utf8')) as { uri: string; keyPem: string; chainPem: string };
      if (e.uri === uri) return { key: e.keyPem, cert: e.chainPem };
    } catch {
      // not a certificate entry
    }
  }
  return undefined;
}

function session(uri: string): ClientHttp2Session {
  const s = http2.connect(`https://${agentB.hbone}`, {
    ca: readFileSync(join(ctl.dataDir, 'ca/bundle.pem'), 'utf8'),
    ...credentials(uri)!,
    servername: serverNameFor(WEB_ID),
    minVersion: 'TLSv1.3',
    checkServerIdentity: () => undefined,
  });
  s.on('error', () => undefined);
  return s;
}

/** CONNECT to web as `uri` with `forwarded`; the status and x-ambit-reason. */
async function claim(uri: string, forwarded: string | undefined): Promise<{ status: number; reason: string }> {
  const s = session(uri);
  try {
    return await new Promise((resolve, reject) => {
      const req = s.request({ ':method': 'CONNECT', ':authority': `${WEB}:${WEB_PORT}`, ...(forwarded ? { forwarded } : {}) }, { endStream: false });
      const timer = setTimeout(() => reject(new Error('no answer in 5 s')), 5_000);
      req.on('response', (h) => {
        clearTimeout(timer);
        resolve({ status: Number(h[':status']), reason: String(h['x-ambit-reason'] ?? '') });
        req.close();
      });
      req.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
  } finally {
    s.close();
  }
}

const refused = async (): Promise<number> =>
  metricValue((await httpGet(hostPortOf(agentB.metrics), '/metrics')).body, 'ambit_connections_refused_total', { direction: 'inbound', reason: 'unverified_source_address' });

/** Through node-a's SOCKS5 from `from` as `user`: the SOCKS reply (0 open, 2 not allowed). */
async function viaMesh(from: string, user: string): Promise<number> {
  const { socket, reply } = await socksConnect(agentA.socks, from, user, WEB, WEB_PORT, 10_000);
  socket.destroy();
  return reply;
}

t.before(async () => {
  await setUp(async (started) => {
    const web = await startEchoServer(WEB, WEB_PORT);
    started(() => web.close());
    ctl = await startController(join(root, 'ctl'), [], CTL);
    started(() => ctl.proc.stop());
    const register = (name: string, node: string, address: string, extra: string[] = []): Promise<string> =>
      ok(['workload', 'register', '--name', name, '--service-account', name, '--node', node, '--address', address, ...extra]);
    await register('web', 'node-b', WEB, ['--port', String(WEB_PORT), '--label', 'app=web']);
    await register('client', 'node-a', CLIENT);
    await register('trusted', 'node-a', TRUSTED);
    await ok(['apply', '-f', '-'], policy('ALLOW', TRUSTED));
    const ta = (await ok(['node', 'token', 'create', '--node', 'node-a'])).trim();
    const tb = (await ok(['node', 'token', 'create', '--node', 'node-b'])).trim();
    [agentA, agentB] = await startAgentPair(started, [
      { node: 'node-a', address: A, controller: ctl.address, dataDir: join(root, 'a'), join: ta },
      { node: 'node-b', address: B, controller: ctl.address, dataDir: join(root, 'b'), join: tb },
    ]);
    stops.push(() => agentA.proc.stop(), () => agentB.proc.stop(), () => ctl.proc.stop(), () => web.close());
    await agentsReady([agentA, agentB]);
    await eventually(async () => credentials(CLIENT_ID) && credentials(TRUSTED_ID), 'node-a holds both certificates');
    await eventually(async () => (await viaMesh(TRUSTED, 'default/trusted')) === 0, 'the mesh carries trusted → web');
  });
});
t.teardown(async () => {
  for (const stop of stops) await stop();
});

t.test('ipBlocks ALLOW: a forged claim of the allowed address is refused; a true claim passes', async (t) => {
  const before = await refused();
  t.same(await claim(CLIENT_ID, `for=${TRUSTED}`), { status: 401, reason: 'unverified_source_address' }, "client's certificate claiming trusted's address: 401 unverified_source_address");
  t.equal(await refused() - before, 1, 'counted: ambit_connections_refused_total{reason="unverified_source_address"}');
  const line = await agentB.proc.waitForLog((l) => l.msg === 'connection' && l.response_flags === 'UNVERIFIED_SOURCE');
  t.equal(line['src.addr'], TRUSTED, 'the access log shows the claimed address, flagged UNVERIFIED_SOURCE');
  t.equal((await claim(TRUSTED_ID, `for=${TRUSTED}`)).status, 200, "trusted's certificate claiming its own address: 200");
  t.equal((await claim(TRUSTED_ID, undefined)).status, 401, 'no Forwarded: no verified address, the ipBlocks ALLOW does not match (401)');
  t.equal(await viaMesh(TRUSTED, 'default/trusted'), 0, 'through the agents, trusted reaches web');
  t.equal(await viaMesh(CLIENT, 'default/client'), 2, 'through the agents, client is denied (reply 2)');
  t.equal(await refused() - before, 1, 'only the forged claim counted as unverified');
});

t.test('ipBlocks DENY: a forged claim cannot evade it', async (t) => {
  await ok(['apply', '-f', '-'], policy('DENY', CLIENT));
  await eventually(async () => (await viaMesh(CLIENT, 'default/client')) === 2 && (await viaMesh(TRUSTED, 'default/trusted')) === 0, 'node-b enforces the DENY');
  const before = await refused();
  t.same(await claim(CLIENT_ID, `for=${TRUSTED}`), { status: 401, reason: 'unverified_source_address' }, 'client claiming another address: refused');
  t.match(await claim(CLIENT_ID, `for=${CLIENT}`), { status: 401, reason: /^denied: denied_by_policy by default\/web-by-ip/ }, 'client with its true address: denied by the DENY');
  t.equal((await claim(TRUSTED_ID, `for=${TRUSTED}`)).status, 200, 'trusted with its true address: 200');
  t.equal(await refused() - before, 1, 'the forged claim counted');
});
