/**
 * Issue "Controller Kubernetes mode", end to end: the real controller binary
 * with --store kubernetes, real agents joining with projected
 * service-account tokens, real HBONE tunnels between them.
 *
 * No Kubernetes API server can run here, so the controller talks to a FAKE
 * API server (test/e2e/fake-kube/server.ts) that speaks the real list/watch
 * JSON protocol (resourceVersions, watch bookmarks, 410 Gone on an expired
 * resume point) and the real TokenReview API, over plain HTTP through a
 * kubeconfig — @kubernetes/client-node in the controller cannot tell.
 *
 * Hosts on loopback: 127.0.7.1 controller + fake API server, 127.0.7.2 node-a,
 * 127.0.7.3 node-b; pod IPs 127.0.7.1x.
 */
import t from 'tap';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CaClient, joinWithKubernetesToken, newKeyPair, type NodeCredentials } from '../../agent/identity/ca-client.ts';
import { isAmbitError } from '../../shared/errors.ts';
import { CONTROLLER_CHANNEL_OPTIONS, controllerCredentials } from '../../shared/controller-client.ts';
import { AdminClient, type ListResponse } from '../../shared/proto/gen/ambit.ts';
import { resourceFromWire } from '../../shared/resources/wire.ts';
import { workloadId } from '../../shared/spiffe-id.ts';
import { CertificateAuthority } from '../../controller/ca/authority.ts';
import { agentsReady, ambitctl, eventually, hostPortOf, socksConnect, httpGet, startAgentPair, startController, type RunningAgent, type RunningController } from './harness.ts';
import { FakeKube, node, pod, service, type KubeObject } from './fake-kube/server.ts';

const CTL = '127.0.7.1';
const A = '127.0.7.2';
const B = '127.0.7.3';
const CLIENT_IP = '127.0.7.12';
const WEB_IP = '127.0.7.13';
const MOVER_IP = '127.0.7.14';
const STALE_IP = '127.0.7.15';
const WEB_PORT = 8080;
const TD = 'cluster.local';

const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-k8s-'));
let fake: FakeKube;
let ctl: RunningController;
let agentA: RunningAgent;
let agentB: RunningAgent;
let web: Server;

t.teardown(async () => {
  await agentA?.proc.stop();
  await agentB?.proc.stop();
  await ctl?.proc.stop();
  await fake?.stop();
  web?.close();
});

const agentPod = (n: string, ip: string): KubeObject => pod({ name: `ambit-agent-${n}`, namespace: 'ambit-system', node: `node-${n}`, ip, serviceAccount: 'ambit-agent', hostNetwork: true });
const webPod = (labels: Record<string, string>): KubeObject =>
  pod({ name: 'web', node: 'node-b', ip: WEB_IP, serviceAccount: 'web', labels, ports: [{ containerPort: WEB_PORT, name: 'echo' }] });

/** The cluster as it stands before the tests: nodes, agent pods, a client pod, the web Service (no web pod yet). */
function seed(f: FakeKube, o: { web?: KubeObject; stale?: boolean } = {}): void {
  f.put('nodes', node('node-a', { 'topology.kubernetes.io/region': 'lab', 'topology.kubernetes.io/zone': 'lab-a' }));
  f.put('nodes', node('node-b', { 'topology.kubernetes.io/region': 'lab', 'topology.kubernetes.io/zone': 'lab-b' }));
  f.put('pods', agentPod('a', A));
  f.put('pods', agentPod('b', B));
  f.put('pods', pod({ name: 'client', node: 'node-a', ip: CLIENT_IP, serviceAccount: 'client', labels: { app: 'client' } }));
  if (o.stale) f.put('pods', pod({ name: 'stale', node: 'node-a', ip: STALE_IP, serviceAccount: 'stale', labels: { app: 'stale' } }));
  if (o.web) f.put('pods', o.web);
  f.put('services', service({ name: 'web', selector: { app: 'web' }, ports: [{ name: 'echo', port: 80, targetPort: 'echo' }], clusterIP: '10.96.7.10' }));
}

function tokenFile(name: string, token: string): string {
  const file = join(root, `${name}.token`);
  writeFileSync(file, `${token}\n`, { mode: 0o600 });
  return file;
}

interface Dump {
  revision: number;
  resources: { kind: string; metadata: { name: string; labels?: Record<string, string> }; spec: Record<string, unknown> }[];
}
const configDump = async (ag: RunningAgent): Promise<Dump> => JSON.parse((await httpGet(hostPortOf(ag.admin), '/config_dump')).body) as Dump;
const localWorkloads = async (ag: RunningAgent): Promise<{ metadata: { name: string }; identity: string; certificate: string }[]> =>
  (JSON.parse((await httpGet(hostPortOf(ag.admin), '/workloads')).body) as { local: { metadata: { name: string }; identity: string; certificate: string }[] }).local;
const certState = async (ag: RunningAgent, identity: string): Promise<string | undefined> =>
  (JSON.parse((await httpGet(hostPortOf(ag.admin), '/certs')).body) as { identity: string; state: string }[]).find((c) => c.identity === identity)?.state;

/** The node credentials an agent keeps in its data directory. */
function nodeCredentials(ag: RunningAgent): NodeCredentials {
  const info = JSON.parse(readFileSync(join(ag.dataDir, 'node.json'), 'utf8')) as { trustDomain: string; bundlePem: string };
  const uri = `spiffe://${info.trustDomain}/ambit/node/${ag.node}`;
  for (const f of readdirSync(join(ag.dataDir, 'certs'))) {
    const c = JSON.parse(readFileSync(join(ag.dataDir, 'certs', f), 'utf8')) as { uri: string; keyPem: string; chainPem: string };
    if (c.uri === uri) return { keyPem: c.keyPem, certChainPem: c.chainPem, bundlePem: info.bundlePem, trustDomain: info.trustDomain, node: ag.node, expiresAt: 0 };
  }
  throw new Error(`no node credentials in ${ag.dataDir}`);
}

function socks(proxy: string, user: string, host: string, port: number): Promise<{ socket: Socket; reply: number }> {
  return socksConnect(proxy, CLIENT_IP, user, host, port);
}

/** Writes a line and waits for its echo. */
function echo(socket: Socket, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    const onData = (d: Buffer): void => {
      got += d.toString('utf8');
      if (got.length >= text.length) {
        socket.off('data', onData);
        resolve(got);
      }
    };
    socket.on('data', onData);
    socket.once('error', reject);
    socket.resume();
    socket.write(text);
  });
}

t.before(async () => {
  web = createServer((s) => {
    s.on('error', () => undefined);
    s.pipe(s);
  });
  await new Promise<void>((r) => web.listen(WEB_PORT, WEB_IP, r));
  fake = await FakeKube.start({ host: CTL, bookmarkIntervalMs: 500 });
  seed(fake, { stale: true });
  const kubeconfig = fake.writeKubeconfig(join(root, 'kubeconfig'));
  ctl = await startController(join(root, 'ctl'), ['--store', 'kubernetes', '--kubeconfig', kubeconfig], CTL);
  const bundle = join(ctl.dataDir, 'ca', 'bundle.pem');
  const k8sArgs = (n: string): string[] => [
    '--kubernetes-token-file', tokenFile(`agent-${n}`, fake.issueToken({ namespace: 'ambit-system', serviceAccount: 'ambit-agent', pod: `ambit-agent-${n}` })),
    '--ca-bundle', bundle,
  ];
  // Whichever agent starts is stopped at the end, even if the other fails to start.
  [agentA, agentB] = await startAgentPair((stop) => t.teardown(stop), [
    { node: 'node-a', address: A, controller: ctl.address, dataDir: join(root, 'a'), extra: k8sArgs('a') },
    { node: 'node-b', address: B, controller: ctl.address, dataDir: join(root, 'b'), extra: k8sArgs('b') },
  ]);
  await agentsReady([agentA, agentB]);
  await eventually(async () => (await configDump(agentA)).resources.some((r) => r.kind === 'Workload' && r.metadata.name === 'client'), 'node-a sees the client pod');
});

t.test('agents join with their projected tokens; other tokens are refused at Join', async (t) => {
  for (const ag of [agentA, agentB]) {
    const joined = await ag.proc.waitForLog((l) => l.msg === 'node joined the mesh');
    t.equal(joined.with, 'Kubernetes service-account token', `${ag.node} joined with its service-account token`);
  }
  const bundlePem = readFileSync(join(ctl.dataDir, 'ca', 'bundle.pem'), 'utf8');
  const join_ = (node: string, token: string) => joinWithKubernetesToken({ controller: ctl.grpc, node, token, bundlePem }).then(() => undefined, (e: unknown) => e);

  const bad = await join_('node-a', 'not-a-token');
  t.ok(isAmbitError(bad, 'AMBIT_ERR_TOKEN_INVALID'), `a bad token: TOKEN_INVALID (${String(bad)})`);
  const clientToken = fake.issueToken({ namespace: 'default', serviceAccount: 'client', pod: 'client' });
  const otherSa = await join_('node-a', clientToken);
  t.ok(isAmbitError(otherSa, 'AMBIT_ERR_TOKEN_INVALID'), 'a token of another service account: TOKEN_INVALID');
  t.match((otherSa as Error).message, /system:serviceaccount:default:client, not the agent service account ambit-system\/ambit-agent/);
  const bTokenForA = await join_('node-a', fake.issueToken({ namespace: 'ambit-system', serviceAccount: 'ambit-agent', pod: 'ambit-agent-b' }));
  t.ok(isAmbitError(bTokenForA, 'AMBIT_ERR_TOKEN_INVALID'), 'a token whose pod runs on another node: TOKEN_INVALID');
  t.match((bTokenForA as Error).message, /runs on node node-b, not node-a/);
  for (const reason of ['k8s-unauthenticated', 'k8s-service-account', 'k8s-wrong-node']) {
    await ctl.proc.waitForLog((l) => l.msg === 'node bootstrap refused' && l.reason === reason, 5_000);
    t.pass(`controller logged the refusal (${reason})`);
  }
  const refusals = (): number => ctl.proc.logs.filter((l) => l.msg === 'node bootstrap refused').length;
  const refusedBefore = refusals();
  const otherCa = CertificateAuthority.open({ dir: join(root, 'other-ca'), trustDomain: TD, now: Date.now }).bundlePem();
  const wrongCa = await joinWithKubernetesToken({ controller: ctl.grpc, node: 'node-a', token: clientToken, bundlePem: otherCa }).then(() => undefined, (e: unknown) => e);
  t.ok(isAmbitError(wrongCa, 'AMBIT_ERR_CERT_INVALID'), `an agent whose bundle the controller does not chain to never sends its token (${String(wrongCa)})`);
  await new Promise((r) => setTimeout(r, 200));
  t.equal(refusals(), refusedBefore, 'the controller never saw that token');
});

t.test('pod created → its node\'s agent receives the workload and gets its certificate', async (t) => {
  const before = (await configDump(agentB)).revision;
  fake.put('pods', webPod({ app: 'web-canary' }));
  const local = await eventually(async () => (await localWorkloads(agentB)).find((w) => w.metadata.name === 'web'), 'node-b receives the web pod');
  t.equal(local.identity, `spiffe://${TD}/ns/default/sa/web`, 'as a workload with the pod\'s service-account identity');
  t.ok((await configDump(agentB)).revision > before, 'in a new revision of its watch');
  const state = await eventually(async () => (await certState(agentB, local.identity)) === 'valid' && 'valid', 'the certificate');
  t.equal(state, 'valid', 'node-b holds a valid certificate for it (/certs)');
  t.notOk((await localWorkloads(agentA)).some((w) => w.metadata.name === 'web'), 'node-a does not run it');
  const dump = await configDump(agentA);
  const w = dump.resources.find((r) => r.kind === 'Workload' && r.metadata.name === 'web');
  t.equal(w?.spec['locality'], 'lab/lab-b', 'locality from the node\'s topology labels');
});

t.test('service endpoints change (pod labels change) → agents receive the delta; traffic flows', async (t) => {
  const before = await configDump(agentA);
  t.ok(before.resources.some((r) => r.kind === 'Service' && r.metadata.name === 'web'), 'the Service is known');
  t.notOk(before.resources.some((r) => r.kind === 'Workload' && r.metadata.labels?.['app'] === 'web'), 'no endpoint yet (the pod is labelled web-canary)');

  fake.put('pods', webPod({ app: 'web' }));
  const after = await eventually(async () => {
    const d = await configDump(agentA);
    return d.resources.some((r) => r.kind === 'Workload' && r.metadata.name === 'web' && r.metadata.labels?.['app'] === 'web') && d;
  }, 'node-a sees the relabelled pod');
  t.ok(after.revision > before.revision, `watch revision increased (${before.revision} → ${after.revision})`);
  const svc = after.resources.find((r) => r.kind === 'Service' && r.metadata.name === 'web');
  const ports = (svc?.spec['ports'] ?? []) as { name: string; port: number; targetPort: number; appProtocol?: string }[];
  t.same(ports.map((p) => ({ name: p.name, port: p.port, targetPort: p.targetPort })), [{ name: 'echo', port: 80, targetPort: WEB_PORT }], 'the Service\'s named targetPort now resolved through its endpoint pod');
  // The web pod is a byte echo: its port name carries no http-/grpc- prefix, so the port is TCP (L4), as Istio reads it.
  t.equal(ports[0]?.appProtocol ?? 'tcp', 'tcp', 'an unprefixed port name declares TCP');
  const snapshots = ctl.proc.logs.filter((l) => l.msg === 'watch started with snapshot' && l.node === 'node-a').length;
  t.equal(snapshots, 1, 'delivered as a delta on the open watch (node-a\'s only snapshot is its first)');

  const { socket, reply } = await socks(agentA.socks, 'default/client', 'web.default', 80);
  t.teardown(() => socket.destroy());
  t.equal(reply, 0, 'SOCKS CONNECT to web.default:80 through the mesh');
  t.equal(await echo(socket, 'hello through the mesh\n'), 'hello through the mesh\n', 'echoed back through the HBONE tunnel');
});

t.test('API server restarts with a new history → controller re-lists (410), converges; agents keep serving', async (t) => {
  const held = await socks(agentA.socks, 'default/client', 'web.default', 80);
  t.teardown(() => held.socket.destroy());
  t.equal(held.reply, 0, 'a tunnel is open across the restart');
  t.ok((await localWorkloads(agentA)).some((w) => w.metadata.name === 'stale'), 'node-a runs the "stale" pod before');

  let notReady = 0;
  let polls = 0;
  let polling = true;
  const poller = (async () => {
    while (polling) {
      for (const ag of [agentA, agentB]) {
        polls++;
        if ((await httpGet(hostPortOf(ag.ready), '/healthz/ready').catch(() => ({ status: 0 }))).status !== 200) notReady++;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  })();

  const port = fake.port;
  const token = fake.token;
  const rvBefore = fake.resourceVersion;
  await fake.stop();
  await new Promise((r) => setTimeout(r, 1_000));
  // Same port and credentials, a new resourceVersion history; the "stale" pod went away while the API server was down.
  fake = await FakeKube.start({ host: CTL, port, token, firstResourceVersion: rvBefore + 10_000, bookmarkIntervalMs: 500 });
  seed(fake, { web: webPod({ app: 'web' }) });

  await ctl.proc.waitForLog((l) => l.msg.includes('410 Gone'), 30_000);
  t.pass('the controller saw its resume point expire (410 Gone)');
  await ctl.proc.waitForLog((l) => l.msg === 'Kubernetes resources re-listed; reconciling' && l.resource === 'pods', 30_000);
  t.pass('and re-listed');
  await eventually(async () => !(await configDump(agentA)).resources.some((r) => r.metadata.name === 'stale'), 'the state to converge on node-a', 30_000);
  t.pass('state converged: the pod deleted during the outage is gone from the agents');
  t.ok(fake.expiredSent.pods >= 1, 'the fake answered with a 410 Expired watch event');
  t.ok((await configDump(agentB)).resources.some((r) => r.metadata.name === 'web'), 'unchanged pods stay');

  polling = false;
  await poller;
  t.ok(polls > 10, `readiness polled throughout (${polls} polls)`);
  t.equal(notReady, 0, 'both agents stayed ready (/healthz/ready 200) throughout');
  t.equal(await echo(held.socket, 'still here\n'), 'still here\n', 'the tunnel opened before the restart still carries data');
  const fresh = await socks(agentA.socks, 'default/client', 'web.default', 80);
  t.teardown(() => fresh.socket.destroy());
  t.equal(fresh.reply, 0, 'new tunnels open after it');
  t.equal(await echo(fresh.socket, 'after\n'), 'after\n');
});

t.test('pod moved to another node → the old node loses the right to its identity', async (t) => {
  const mover = workloadId(TD, 'default', 'mover');
  fake.put('pods', pod({ name: 'mover', node: 'node-a', ip: MOVER_IP, serviceAccount: 'mover', labels: { app: 'mover' } }));
  await eventually(async () => (await certState(agentA, mover.uri)) === 'valid', 'node-a gets the mover certificate');
  const oldNode = new CaClient(ctl.grpc, nodeCredentials(agentA));
  t.teardown(() => oldNode.close());
  t.ok(await oldNode.createCertificate(mover, newKeyPair()), 'while the pod runs on node-a, node-a may get its identity');

  fake.remove('pods', 'default', 'mover');
  fake.put('pods', pod({ name: 'mover', node: 'node-b', ip: MOVER_IP, serviceAccount: 'mover', labels: { app: 'mover' } }));
  await eventually(async () => (await certState(agentB, mover.uri)) === 'valid', 'the new node gets the certificate', 20_000);
  t.pass('node-b holds a valid certificate for the moved pod');
  const err = await oldNode.createCertificate(mover, newKeyPair()).then(() => undefined, (e: unknown) => e);
  t.ok(isAmbitError(err, 'AMBIT_ERR_NODE_UNAUTHORIZED'), `node-a's CreateCertificate for it is refused (${String(err)})`);
  await ctl.proc.waitForLog((l) => l.msg.startsWith('refused certificate') && l.requested === mover.uri && l.node === 'node-a', 5_000);
  t.pass('and logged');
});

t.test('admin writes of Kubernetes-owned kinds are refused with a pointer to kubectl; reads work', async (t) => {
  const r = await ambitctl(ctl, ['workload', 'register', '--name', 'vm', '--namespace', 'default', '--service-account', 'vm', '--node', 'node-a', '--address', '127.0.7.30']);
  t.not(r.code, 0, 'ambitctl workload register fails');
  t.match(r.stderr, /come from the Kubernetes API.*kubectl.*AMBIT_ERR_AUTH_DENIED/, 'saying why and what to use');
  const creds = (f: string): string => readFileSync(join(ctl.credentials, f), 'utf8');
  const admin = new AdminClient(ctl.address, controllerCredentials({ caPem: creds('ca.pem'), trustDomain: TD, keyPem: creds('key.pem'), certChainPem: creds('cert.pem') }), CONTROLLER_CHANNEL_OPTIONS);
  t.teardown(() => admin.close());
  const list = await new Promise<ListResponse>((resolve, reject) => admin.list({ kind: 'Workload', namespace: '' }, (err, res) => (err ? reject(err) : resolve(res))));
  t.same(list.resources.map((w) => resourceFromWire(w).metadata.name).sort(), ['client', 'mover', 'web'], 'pods as workloads (the agents\' hostNetwork pods are not workloads)');
});
