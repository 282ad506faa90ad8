/**
 * Mesh routes in Kubernetes mode: the real controller with --store
 * kubernetes reads HTTPRoutes from the Gateway API's CRD
 * (gateway.networking.k8s.io/v1 httproutes), real agents (joined with
 * projected service-account tokens) apply them to real HTTP servers.
 *
 * No Kubernetes API server can run here, so the controller talks to a FAKE
 * API server (test/e2e/fake-kube/server.ts) that speaks the real list/watch
 * JSON protocol — the same one the Gateway API CRDs are served with — over
 * plain HTTP through a kubeconfig; @kubernetes/client-node in the controller
 * cannot tell.
 *
 * Hosts on loopback: 127.0.135.1 controller + fake API server, 127.0.135.2
 * node-a (the client), 127.0.135.3 node-b (web-v1, web-v2); pod IPs 127.0.135.1x.
 */
import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { agentsReady, ambitctl, eventually, hostPortOf, httpGet, metricValue, socksConnect, startAgentPair, startController, type RunningAgent, type RunningController } from '../harness.ts';
import { FakeKube, node, pod, service, type KubeObject } from '../fake-kube/server.ts';
import { httpServer, tally } from '../http-apps.ts';

const CTL = '127.0.135.1';
const A = '127.0.135.2';
const B = '127.0.135.3';
const CLIENT_IP = '127.0.135.12';
const WEB = { 'web-v1': '127.0.135.13', 'web-v2': '127.0.135.14' } as const;
const PORT = 8080;

const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-routes-k8s-'));
let fake: FakeKube;
let ctl: RunningController;
let agentA: RunningAgent;
let agentB: RunningAgent;
const closers: (() => unknown)[] = [];

t.teardown(async () => {
  await Promise.all([agentA?.proc.stop(), agentB?.proc.stop()]);
  await ctl?.proc.stop();
  await fake?.stop();
  for (const c of closers) c();
});

/** The HTTPRoute as a Kubernetes object of the Gateway API CRD. */
const route = (weights: { v1: number; v2: number }): KubeObject => ({
  apiVersion: 'gateway.networking.k8s.io/v1',
  kind: 'HTTPRoute',
  metadata: { name: 'web', namespace: 'default' },
  spec: {
    parentRefs: [{ group: '', kind: 'Service', name: 'web', port: 80 }],
    rules: [
      { matches: [{ headers: [{ name: 'x-version', value: 'v2' }] }], backendRefs: [{ name: 'web-v2', port: 80 }] },
      { backendRefs: [{ name: 'web-v1', port: 80, weight: weights.v1 }, { name: 'web-v2', port: 80, weight: weights.v2 }] },
    ],
  },
});

t.before(async () => {
  for (const [name, ip] of Object.entries(WEB)) {
    const s = await httpServer(ip, PORT, (_req, res) => res.end(name));
    closers.push(() => s.close(), () => s.closeAllConnections());
  }
  fake = await FakeKube.start({ host: CTL, bookmarkIntervalMs: 500 });
  fake.put('nodes', node('node-a'));
  fake.put('nodes', node('node-b'));
  for (const [n, ip] of [['a', A], ['b', B]] as const) {
    fake.put('pods', pod({ name: `ambit-agent-${n}`, namespace: 'ambit-system', node: `node-${n}`, ip, serviceAccount: 'ambit-agent', hostNetwork: true }));
  }
  fake.put('pods', pod({ name: 'client', node: 'node-a', ip: CLIENT_IP, serviceAccount: 'client', labels: { app: 'client' } }));
  for (const [name, ip] of Object.entries(WEB)) {
    const version = name.slice(4);
    fake.put('pods', pod({ name, node: 'node-b', ip, serviceAccount: 'web', labels: { app: 'web', version }, ports: [{ containerPort: PORT, name: 'http' }] }));
    fake.put('services', service({ name, selector: { app: 'web', version }, ports: [{ name: 'http', port: 80, targetPort: PORT }] }));
  }
  // The port's name says HTTP, as Istio reads it (docs/l7.md).
  fake.put('services', service({ name: 'web', selector: { app: 'web' }, ports: [{ name: 'http', port: 80, targetPort: PORT }], clusterIP: '10.96.35.10' }));
  fake.put('httproutes', route({ v1: 90, v2: 10 }));
  const kubeconfig = fake.writeKubeconfig(join(root, 'kubeconfig'));
  ctl = await startController(join(root, 'ctl'), ['--store', 'kubernetes', '--kubeconfig', kubeconfig], CTL);
  const tokenFile = (n: string): string => {
    const file = join(root, `agent-${n}.token`);
    writeFileSync(file, `${fake.issueToken({ namespace: 'ambit-system', serviceAccount: 'ambit-agent', pod: `ambit-agent-${n}` })}\n`, { mode: 0o600 });
    return file;
  };
  // A short drain: the teardown need not wait for the data plane's idle pooled connections.
  const k8sArgs = (n: string): string[] => ['--kubernetes-token-file', tokenFile(n), '--ca-bundle', join(ctl.dataDir, 'ca', 'bundle.pem'), '--drain-timeout', '1s'];
  [agentA, agentB] = await startAgentPair((stop) => t.teardown(stop), [
    { node: 'node-a', address: A, controller: ctl.address, dataDir: join(root, 'a'), extra: k8sArgs('a') },
    { node: 'node-b', address: B, controller: ctl.address, dataDir: join(root, 'b'), extra: k8sArgs('b') },
  ]);
  await agentsReady([agentA, agentB]);
});

/** One GET to web.default:80 from the client pod through node-a's SOCKS5 listener: the answering server's name, or the status. */
async function get(headers: Record<string, string> = {}): Promise<string> {
  const { socket, reply } = await socksConnect(agentA.socks, CLIENT_IP, 'default/client', 'web.default', 80, 10_000);
  if (reply !== 0) {
    socket.destroy();
    return `socks reply ${reply}`;
  }
  return new Promise((resolve, reject) => {
    let text = '';
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => (text += d));
    socket.on('end', () => {
      const status = /^HTTP\/1\.1 (\d+)/.exec(text)?.[1];
      resolve(status === '200' ? text.slice(text.indexOf('\r\n\r\n') + 4) : String(status));
    });
    socket.on('error', reject);
    socket.setTimeout(10_000, () => socket.destroy(new Error('no answer within 10 s')));
    const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
    socket.resume();
    // Not end(): a client that half-closes gets no answer from an HTTP server that does not support half-close (hyper's default).
    socket.write(`GET / HTTP/1.1\r\nHost: web.default\r\nConnection: close\r\n${extra}\r\n`);
  });
}

const names = async (n: number, headers?: Record<string, string>): Promise<Record<string, number>> => {
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push(await get(headers));
  return tally(out);
};

t.test('an HTTPRoute from the Gateway API CRD decides the requests: header match, then a 90/10 split', async (t) => {
  await eventually(async () => {
    const got = await names(10, { 'x-version': 'v2' });
    if (got['web-v2'] !== 10) throw new Error(`answers so far: ${JSON.stringify(got)}`);
    return true;
  }, 'the route reaches node-a', 30_000);
  t.same(await names(20, { 'x-version': 'v2' }), { 'web-v2': 20 }, 'x-version: v2 → web-v2, every time');
  const split = await names(200);
  t.same(Object.keys(split).sort(), ['web-v1', 'web-v2'], `the rest go to both (${JSON.stringify(split)})`);
  const v2 = ((split['web-v2'] ?? 0) * 100) / 200;
  t.ok(v2 >= 3 && v2 <= 20, `web-v2 got ${v2} % of 200 (the route's 10 %; loose over 200 requests)`);
  await eventually(async () => metricValue((await httpGet(hostPortOf(agentA.metrics), '/metrics')).body, 'istio_requests_total', { reporter: 'source', destination_service: 'web-v1.default.svc.cluster.local' }) >= (split['web-v1'] ?? 0), 'node-a reports web-v1 as the destination_service', 10_000);
  t.pass('istio_requests_total names the chosen backend');
});

t.test('the route changed in the API (a watch MODIFIED event): every request moves to web-v2', async (t) => {
  fake.put('httproutes', route({ v1: 0, v2: 100 }));
  await eventually(async () => (await names(10))['web-v2'] === 10, 'the new weights reach node-a', 30_000);
  t.same(await names(40), { 'web-v2': 40 }, 'weights 0/100: web-v2 only');
});

t.test('ambitctl get httproute shows its status from the Kubernetes store', async (t) => {
  const r = await ambitctl(ctl, ['get', 'httproute', 'web', '-n', 'default', '-o', 'yaml']);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /type: Accepted\s+status: "?True"?/, 'Accepted');
  t.match(r.stdout, /type: ResolvedRefs\s+status: "?True"?/, 'ResolvedRefs');
});
