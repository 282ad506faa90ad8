/**
 * The node-scoped watch (docs/scale.md), end to end with real processes on
 * 127.0.136.0/24: one etcd member (.31), two controller replicas on it
 * (.21, .22), and two agents in `--watch-scope node` (.41 node-a with the
 * client, .42 node-b with the services' endpoints), each given both
 * replicas. An agent holds only its node's share until its workload calls a
 * service: the first connection subscribes, changes to that service follow,
 * changes to others do not, a route's backend is followed with the service
 * it is attached to, and a failover to the other replica restores the
 * subscriptions.
 */
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AdminApi } from '../../controller/cli/client.ts';
import { resourceToWire } from '../../shared/resources/wire.ts';
import type { Resource, Service, Workload } from '../../shared/resources/types.ts';
import { httpServer } from './http-apps.ts';
import { agentKnowsNode, agentsReady, ambitctl, eventually, hostPortOf, httpGet, socksConnect, socksEchoRoundTrip, startAgentPair, startController, startEchoServer, type RunningAgent, type RunningController } from './harness.ts';
import { service as meshService, workload } from './fixtures/scoped-mesh.ts';
import { EtcdCluster } from './fixtures/etcd-cluster.ts';
import { writeMeshCa } from './fixtures/test-pki.ts';

const NET = '127.0.136';
const CONTROLLER_HOSTS = [`${NET}.21`, `${NET}.22`];
const CONTROLLERS = CONTROLLER_HOSTS.map((h) => `${h}:15012`).join(',');
const A = `${NET}.41`;
const B = `${NET}.42`;
const CLIENT_A = `${NET}.61`;
const WEB_B = `${NET}.52`;
const WEB_B2 = `${NET}.53`;
const WEB_B3 = `${NET}.54`;
const OTHER_B = `${NET}.55`;
const SHOP_B = `${NET}.56`;
const SHOP_V2_B = `${NET}.57`;
const PORT = 8080;

const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-scoped-'));
const etcd = new EtcdCluster({ hosts: [`${NET}.31`], dir: join(root, 'etcd') });
const ca = writeMeshCa(root);
let controllers: (RunningController | undefined)[] = [];
let apis: AdminApi[] = [];
let agents: RunningAgent[] = [];
const servers: { close: () => unknown }[] = [];

t.teardown(async () => {
  for (const a of apis) a.close();
  await Promise.all(agents.map((a) => a.proc.stop()));
  await Promise.all(controllers.map((c) => c?.proc.stop()));
  await etcd.stop();
  for (const s of servers) s.close();
  rmSync(root, { recursive: true, force: true });
});

const service = (name: string, port = 80, appProtocol: 'tcp' | 'http' = 'tcp'): Service => meshService(name, PORT, port, appProtocol);

function startReplica(i: number): Promise<RunningController> {
  return startController(join(root, `ctl${i + 1}`), [
    '--store', 'etcd', '--etcd-endpoints', etcd.endpoints, '--ca-cert', ca.caCert, '--ca-key', ca.caKey,
  ], CONTROLLER_HOSTS[i]!, { grpc: 15012, monitoring: 15014 });
}

async function echoServer(host: string): Promise<void> {
  servers.push(await startEchoServer(host, PORT));
}

/** One connection from client-a through both agents to `host`:`port`, echoed back intact. */
function roundTrip(host: string, port: number): Promise<void> {
  return socksEchoRoundTrip(agents[0]!.socks, CLIENT_A, 'default/client-a', host, port, 10_000);
}

/** The keys ("Kind/ns/name") agent `a` holds. */
async function held(a: RunningAgent): Promise<Set<string>> {
  const dump = JSON.parse((await httpGet(hostPortOf(a.admin), '/config_dump')).body) as { resources: { kind: string; metadata: { name: string; namespace: string } }[] };
  return new Set(dump.resources.map((r) => `${r.kind}/${r.metadata.namespace}/${r.metadata.name}`));
}

const apply = async (api: AdminApi, ...resources: Resource[]): Promise<void> => {
  await api.call('Apply', api.client.apply, { resources: resources.map(resourceToWire), createOnly: false, dryRun: false });
};

t.before(async () => {
  await etcd.start();
  controllers = [await startReplica(0)];
  controllers.push(await startReplica(1));
  apis = controllers.map((c) => new AdminApi({ controller: c!.grpc, credentialsDir: c!.credentials }));
  await Promise.all([WEB_B, WEB_B2, WEB_B3, OTHER_B].map(echoServer));
  for (const [addr, body] of [[SHOP_B, 'v1'], [SHOP_V2_B, 'v2']] as const) servers.push(await httpServer(addr, PORT, (_req, res) => res.end(body)));
  await apply(apis[0]!,
    workload('client-a', 'node-a', CLIENT_A, 'client'),
    workload('web-b', 'node-b', WEB_B, 'web'),
    workload('other-b', 'node-b', OTHER_B, 'other'),
    service('web'), service('other'),
    workload('shop-1', 'node-b', SHOP_B, 'shop'), workload('shop-v2-1', 'node-b', SHOP_V2_B, 'shop-v2'),
    service('shop', 80, 'http'), service('shop-v2', 80, 'http'));
  const ta = await apis[0]!.call('CreateJoinToken', apis[0]!.client.createJoinToken, { node: 'node-a', ttlMs: 600_000 });
  const tb = await apis[1]!.call('CreateJoinToken', apis[1]!.client.createJoinToken, { node: 'node-b', ttlMs: 600_000 });
  agents = await startAgentPair((stop) => t.teardown(stop), [
    { node: 'node-a', address: A, controller: CONTROLLERS, dataDir: join(root, 'a'), join: ta.token, extra: ['--watch-scope', 'node'] },
    { node: 'node-b', address: B, controller: CONTROLLERS, dataDir: join(root, 'b'), join: tb.token, extra: ['--watch-scope', 'node'] },
  ]);
  await agentsReady(agents);
  await agentKnowsNode(agents[0]!, 'node-b');
});

t.test('node scope: an agent holds its node\'s share, not the mesh', async (t) => {
  const a = await held(agents[0]!);
  t.ok(a.has('Workload/default/client-a'), 'its own workload');
  t.notOk(a.has('Service/default/web'), 'not a service none of its workloads uses yet');
  t.notOk(a.has('Workload/default/web-b'), 'nor another node\'s workload');
  const b = await held(agents[1]!);
  t.ok(b.has('Service/default/web') && b.has('Service/default/other'), 'node-b holds the services selecting its workloads');
  t.notOk(b.has('Workload/default/client-a'));
});

t.test('the first connection to a service it does not hold subscribes and goes through', async (t) => {
  await roundTrip('web.default', 80);
  const a = await held(agents[0]!);
  t.ok(a.has('Service/default/web') && a.has('Workload/default/web-b'), 'the service and its endpoint came with the answer');
  t.notOk(a.has('Service/default/other'), 'the other service did not');
  t.ok((await held(agents[1]!)).has('Workload/default/client-a'), 'node-b subscribed to the Forwarded source address before judging the claim');
  await roundTrip('web.default', 80);
  const sub = agents[0]!.proc.logs.some((l) => l.msg === 'outbound connection refused: its destination is not known yet');
  t.notOk(sub, 'no connection waited past the connect timeout');
});

t.test('a change to a subscribed service reaches the agent; a change to an unsubscribed one does not', async (t) => {
  await apply(apis[1]!, service('other', 81));
  await apply(apis[1]!, workload('web-b2', 'node-b', WEB_B2, 'web'));
  await eventually(async () => (await held(agents[0]!)).has('Workload/default/web-b2'), 'node-a learns the new endpoint of web');
  // Deltas arrive in revision order: had the change to `other` been sent, it would be here already.
  t.notOk((await held(agents[0]!)).has('Service/default/other'), 'the change to other was not sent to node-a');
  t.ok((await held(agents[1]!)).has('Service/default/other'), 'node-b (whose workload other selects) got it');
  // Sent nothing by a change that does not concern it, node-a is still told the revision it is current at.
  const res = await apis[1]!.call('Apply', apis[1]!.client.apply, { resources: [resourceToWire(service('other', 82))], createOnly: false, dryRun: false });
  await eventually(async () => {
    const nodes = await apis[1]!.call('ListNodes', apis[1]!.client.listNodes, {});
    return nodes.nodes.find((n) => n.name === 'node-a')!.ackedRevision >= res.revision;
  }, 'node-a acknowledges the mesh revision');
  t.notOk((await held(agents[0]!)).has('Service/default/other'));
});

/** One HTTP/1.1 request from client-a through node-a's SOCKS5 to `host`:80: the answer's status line and body. */
async function httpThroughSocks(host: string, headers: Record<string, string>): Promise<{ status: string; body: string }> {
  const { socket, reply } = await socksConnect(agents[0]!.socks, CLIENT_A, 'default/client-a', host, 80, 10_000);
  try {
    if (reply !== 0) throw new Error(`SOCKS reply ${reply}`);
    const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
    socket.write(`GET / HTTP/1.1\r\nhost: ${host}\r\n${extra}connection: close\r\n\r\n`);
    const chunks: Buffer[] = [];
    // Complete once the head and Content-Length bytes of body are in (whether or not the connection then closes).
    const complete = (): boolean => {
      const text = Buffer.concat(chunks).toString('utf8');
      const end = text.indexOf('\r\n\r\n');
      const length = /\r\ncontent-length: *(\d+)/i.exec(text.slice(0, end));
      return end >= 0 && length !== null && text.length - end - 4 >= Number(length[1]);
    };
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no complete answer: ${JSON.stringify(Buffer.concat(chunks).toString('utf8'))}`)), 10_000);
      const done = (): void => {
        clearTimeout(timer);
        resolve();
      };
      socket.on('data', (d: Buffer) => {
        chunks.push(d);
        if (complete()) done();
      });
      socket.on('end', done);
      socket.on('error', (err) => { clearTimeout(timer); reject(err); });
      socket.resume();
    });
    const text = Buffer.concat(chunks).toString('utf8');
    return { status: text.split('\r\n')[0] ?? '', body: text.slice(text.indexOf('\r\n\r\n') + 4) };
  } finally {
    socket.destroy();
  }
}

t.test('a route\'s backend is followed with its service: the first request already reaches it', async (t) => {
  const route = join(root, 'route.yaml');
  writeFileSync(route, `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop-canary, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: shop, port: 80}]
  rules:
  - matches: [{headers: [{name: x-canary, value: "yes"}]}]
    backendRefs: [{name: shop-v2, port: 80}]
  - backendRefs: [{name: shop, port: 80}]
`);
  const applied = await ambitctl(controllers[0]!, ['apply', '-f', route]);
  t.equal(applied.code, 0, applied.stderr);
  await eventually(async () => (await held(agents[0]!)).has('HTTPRoute/default/shop-canary'), 'node-a holds the route (routes reach every agent)');
  t.notOk((await held(agents[0]!)).has('Service/default/shop-v2'), 'but not its backend yet');
  const canary = await httpThroughSocks('shop.default', { 'x-canary': 'yes' });
  t.same(canary, { status: 'HTTP/1.1 200 OK', body: 'v2' }, 'the first request to shop, matched by the route, reaches shop-v2');
  t.ok((await held(agents[0]!)).has('Workload/default/shop-v2-1'), 'the backend and its endpoint came with shop');
  t.same(await httpThroughSocks('shop.default', {}), { status: 'HTTP/1.1 200 OK', body: 'v1' });
});

t.test('failover to the other replica restores the subscription', async (t) => {
  const servedBy = controllers.findIndex((c) => c?.proc.logs.some((l) => l.msg === 'watch started with a node-scoped snapshot' && l.node === 'node-a'));
  t.ok(servedBy >= 0, 'a replica serves node-a\'s watch');
  const survivor = 1 - servedBy;
  const before = controllers[survivor]!.proc.logs.length;
  await controllers[servedBy]!.proc.stop('SIGKILL');
  controllers[servedBy] = undefined;
  const resumed = await controllers[survivor]!.proc.waitForLog((l) => l.msg === 'watch started with a node-scoped snapshot' && l.node === 'node-a' && controllers[survivor]!.proc.logs.indexOf(l) >= before, 30_000);
  t.equal(resumed.subscriptions, 3, 'the WatchStart carried the subscriptions (web, shop, shop-v2)');
  await apply(apis[survivor]!, workload('web-b3', 'node-b', WEB_B3, 'web'));
  await eventually(async () => (await held(agents[0]!)).has('Workload/default/web-b3'), 'node-a follows web through the other replica');
  await roundTrip('web.default', 80);
});
