/**
 * Issue 6, promise 7 ("a workload on host A cannot impersonate another
 * workload on host A via the SOCKS path"), with real processes on loopback
 * (127.0.15.30–38): node-a runs several workloads, node-b an echo server
 * ("web") that a policy opens only to `other`, `uid-self` and `uid-other`.
 * Naming a workload as the SOCKS5 user — or using the upstream listener of a
 * workload — must not give a process that workload's identity unless the
 * connection comes from its registered address or from a process running as
 * its registered uid. Each refusal is counted as `source_not_verified` and
 * never reaches node-b.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ambitctl, eventually, hostPortOf, httpGet, metricValue, socksConnect, startAgentPair, startController, type RunningAgent, type RunningController } from '../harness.ts';

const ip = (n: number): string => `127.0.15.${n}`;
const CTL = ip(30);
const A = ip(31);
const B = ip(32);
const CLIENT = ip(33);
const OTHER = ip(34);
const UID_SELF = ip(35);
const UID_OTHER = ip(36);
const WEB = ip(37);
const STRANGER = ip(38); // no workload has this address
const WEB_PORT = 8080;
const UPSTREAM_PORT = 19_081; // node-a's upstream listener for default/other, on its loopback address
const MY_UID = process.getuid?.() ?? 0;
const NOT_MY_UID = MY_UID === 65_534 ? 65_533 : 65_534;

const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-isolation-socks-'));
let ctl: RunningController;
let agentA: RunningAgent;
let agentB: RunningAgent;
let webAccepted = 0;
const web = createServer({ allowHalfOpen: true }, (s) => {
  webAccepted++;
  s.on('error', () => undefined);
  s.pipe(s);
});

const POLICY = `apiVersion: ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-only-some, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
    - from:
        - source:
            principals: ["cluster.local/ns/default/sa/other", "cluster.local/ns/default/sa/uid-self", "cluster.local/ns/default/sa/uid-other"]
`;

t.before(async () => {
  await new Promise<void>((r) => web.listen(WEB_PORT, WEB, r));
  ctl = await startController(join(root, 'ctl'), [], CTL);
  const ok = async (args: string[], stdin?: string): Promise<string> => {
    const r = await ambitctl(ctl, args, stdin);
    if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const register = (name: string, node: string, address: string, extra: string[] = []): Promise<string> =>
    ok(['workload', 'register', '--name', name, '--service-account', name, '--node', node, '--address', address, ...extra]);
  await register('web', 'node-b', WEB, ['--port', String(WEB_PORT), '--label', 'app=web']);
  await register('client', 'node-a', CLIENT);
  await register('other', 'node-a', OTHER);
  await register('uid-self', 'node-a', UID_SELF, ['--uid', String(MY_UID)]);
  await register('uid-other', 'node-a', UID_OTHER, ['--uid', String(NOT_MY_UID)]);
  await ok(['apply', '-f', '-'], POLICY);
  const [ta, tb] = [(await ok(['node', 'token', 'create', '--node', 'node-a'])).trim(), (await ok(['node', 'token', 'create', '--node', 'node-b'])).trim()];
  // Whichever agent starts is stopped at the end, even if the other fails to start.
  [agentA, agentB] = await startAgentPair((stop) => t.teardown(stop), [
    { node: 'node-a', address: A, controller: ctl.address, dataDir: join(root, 'a'), join: ta, extra: ['--upstreams', `default/other:${UPSTREAM_PORT}=${WEB}:${WEB_PORT}`] },
    { node: 'node-b', address: B, controller: ctl.address, dataDir: join(root, 'b'), join: tb },
  ]);
  for (const ag of [agentA, agentB]) await eventually(async () => (await httpGet(hostPortOf(ag.ready), '/healthz/ready')).status === 200, `${ag.node} ready`, 20_000);
  await eventually(async () => (await attempt(OTHER, 'default/other')).reply === 0, 'the mesh carries other → web');
});
t.teardown(async () => {
  await agentA?.proc.stop();
  await agentB?.proc.stop();
  await ctl?.proc.stop();
  web.close();
});

/** SOCKS5 CONNECT to web from `from` as `user`; when accepted, echoes 4 KiB through it. */
async function attempt(from: string, user: string): Promise<{ reply: number; echoed: boolean }> {
  const { socket, reply } = await socksConnect(agentA.socks, from, user, WEB, WEB_PORT, 10_000);
  try {
    if (reply !== 0) return { reply, echoed: false };
    return { reply, echoed: await echo(socket) };
  } finally {
    socket.destroy();
  }
}

function echo(socket: Socket): Promise<boolean> {
  const chunk = randomBytes(4096);
  return new Promise((resolve) => {
    let got = Buffer.alloc(0);
    const timer = setTimeout(() => resolve(false), 5_000);
    socket.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length >= chunk.length) {
        clearTimeout(timer);
        resolve(got.equals(chunk));
      }
    });
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(false);
    });
    socket.resume();
    socket.write(chunk);
  });
}

const refusedCount = async (): Promise<number> =>
  metricValue((await httpGet(hostPortOf(agentA.metrics), '/metrics')).body, 'ambit_connections_refused_total', { reason: 'source_not_verified' });

t.test('SOCKS5: the username is honoured only from the workload\'s own address', async (t) => {
  t.same(await attempt(OTHER, 'default/other'), { reply: 0, echoed: true }, 'control: other, from its own address, reaches web (the policy allows it)');
  const denied = await attempt(CLIENT, 'default/client');
  t.equal(denied.reply, 2, 'control: client as itself is denied by the policy (reply 2)');

  const before = await refusedCount();
  const acceptedBefore = webAccepted;
  const impersonation = await attempt(CLIENT, 'default/other');
  t.equal(impersonation.reply, 2, 'client (127.0.15.33) naming default/other: refused with reply 2 "not allowed"');
  const stranger = await attempt(STRANGER, 'default/other');
  t.equal(stranger.reply, 2, 'an address with no workload naming default/other: refused');
  const remote = await attempt(WEB, 'default/web');
  t.equal(remote.reply, 2, 'naming a workload of another node (web, even from its address): refused');
  t.equal(await refusedCount() - before, 3, 'all three counted as ambit_connections_refused_total{reason="source_not_verified"}');
  t.equal(webAccepted, acceptedBefore, 'none of them reached the destination');
  const log = await agentA.proc.waitForLog((l) => l.msg === 'SOCKS5 client is not the workload it names; refused' && l.user === 'default/other' && l.peer === CLIENT);
  t.pass(`node-a logs the attempt at ${log.level}: user ${String(log.user)} from ${String(log.peer)}`);
});

t.test('SOCKS5: a workload registered with a uid is proven by the socket owner, not by the name', async (t) => {
  // This test process runs as uid MY_UID: it is uid-self's process, whatever its address.
  t.same(await attempt(CLIENT, 'default/uid-self'), { reply: 0, echoed: true }, `a process running as uid ${MY_UID} (uid-self's uid) connects as uid-self from another address`);
  const before = await refusedCount();
  t.equal((await attempt(CLIENT, 'default/uid-other')).reply, 2, `the same process naming uid-other (uid ${NOT_MY_UID}): refused`);
  t.equal(await refusedCount() - before, 1, 'counted as source_not_verified');
});

t.test('upstream listener of a workload: usable only by that workload', async (t) => {
  const viaUpstream = (from: string): Promise<{ connected: boolean; echoed: boolean }> => new Promise((resolve) => {
    const s = connect({ host: A, port: UPSTREAM_PORT, localAddress: from });
    s.on('error', () => undefined);
    s.once('connect', () => void echo(s).then((echoed) => {
      s.destroy();
      resolve({ connected: true, echoed });
    }));
    s.once('close', () => resolve({ connected: false, echoed: false }));
  });
  t.same(await viaUpstream(OTHER), { connected: true, echoed: true }, "control: other, from its own address, through other's upstream listener reaches web");
  const before = await refusedCount();
  const acceptedBefore = webAccepted;
  const r = await viaUpstream(CLIENT);
  t.notOk(r.echoed, "client through other's upstream listener: reset, nothing echoed");
  t.equal(await refusedCount() - before, 1, 'counted as source_not_verified');
  t.equal(webAccepted, acceptedBefore, 'nothing reached the destination');
});
