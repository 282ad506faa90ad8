/**
 * The agent keeps route tables current on live connections, with real
 * processes on 127.0.132.x: a controller, node-a (two clients' agent: one in
 * namespace default, one in team) and node-b (web answering "v1", web-v2
 * answering "v2"). Each client keeps ONE keep-alive connection through an
 * upstream listener for the whole test: a producer route applied after it
 * opened takes effect on it; a consumer route in team changes team's
 * requests only; deleting the producer route brings the plain service back
 * on the same connection.
 */
import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { httpServer } from './http-apps.ts';
import { agentKnowsNode, agentsReady, ambitctl, eventually, hostPortOf, httpGet, setUp, startAgentPair, startController, type RunningAgent, type RunningController } from './harness.ts';

const ip = (n: number): string => `127.0.132.${n}`;
const CTL = ip(1);
const A = ip(2);
const B = ip(3);
const CLIENT = ip(10);
const TEAM_CLIENT = ip(20);
const V1 = ip(11);
const V2 = ip(12);
const PORT = 8080;
const UPSTREAM = { client: 19180, team: 19181 } as const;

const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-route-push-'));
let ctl: RunningController;
let agentA: RunningAgent;
let agentB: RunningAgent;
const servers: (() => unknown)[] = [];

async function ok(args: string[]): Promise<string> {
  const r = await ambitctl(ctl, args);
  if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

function file(name: string, text: string): string {
  const p = join(root, name);
  writeFileSync(p, text);
  return p;
}

t.before(async () => {
  await setUp(async (registered) => {
    for (const [addr, body] of [[V1, 'v1'], [V2, 'v2']] as const) {
      const s = await httpServer(addr, PORT, (_req, res) => res.end(body));
      const stop = (): void => {
        s.close();
        s.closeAllConnections();
      };
      registered(stop);
      servers.push(stop);
    }
    ctl = await startController(join(root, 'ctl'), [], CTL);
    registered(() => ctl.proc.stop());
    await ok(['workload', 'register', '--name', 'client', '--service-account', 'client', '--node', 'node-a', '--address', CLIENT]);
    await ok(['workload', 'register', '--name', 'client', '--namespace', 'team', '--service-account', 'client', '--node', 'node-a', '--address', TEAM_CLIENT]);
    await ok(['workload', 'register', '--name', 'web-1', '--service-account', 'web', '--node', 'node-b', '--address', V1, '--port', String(PORT), '--label', 'app=web']);
    await ok(['workload', 'register', '--name', 'web-v2-1', '--service-account', 'web', '--node', 'node-b', '--address', V2, '--port', String(PORT), '--label', 'app=web-v2']);
    await ok(['service', 'create', '--name', 'web', '--port', `80:${PORT}/http`, '--selector', 'app=web']);
    await ok(['service', 'create', '--name', 'web-v2', '--port', `80:${PORT}/http`, '--selector', 'app=web-v2']);
    const [ta, tb] = [(await ok(['node', 'token', 'create', '--node', 'node-a'])).trim(), (await ok(['node', 'token', 'create', '--node', 'node-b'])).trim()];
    const upstreams = `default/client:${UPSTREAM.client}=web.default:80,team/client:${UPSTREAM.team}=web.default:80`;
    [agentA, agentB] = await startAgentPair(registered, [
      { node: 'node-a', address: A, controller: ctl.address, dataDir: join(root, 'a'), join: ta, extra: ['--upstreams', upstreams] },
      { node: 'node-b', address: B, controller: ctl.address, dataDir: join(root, 'b'), join: tb },
    ]);
    await agentsReady([agentA, agentB], 20_000);
    await agentKnowsNode(agentA, 'node-b');
  });
});
t.teardown(async () => {
  await agentA?.proc.stop();
  await agentB?.proc.stop();
  await ctl?.proc.stop();
  for (const stop of servers) await Promise.resolve().then(stop).catch(() => undefined);
});

/** A client with one keep-alive connection at most, from `from`, through the upstream listener `port`; counts the connections it made. */
function client(from: string, port: number) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1, localAddress: from } as http.AgentOptions);
  const sockets = new Set<number>();
  agent.on('free', (s: Socket) => sockets.add(s.localPort ?? 0));
  const get = (headers: Record<string, string> = {}): Promise<{ status: number; body: string }> => new Promise((resolve, reject) => {
    const req = http.get({ host: A, port, path: '/', agent, headers: { host: 'web.default', ...headers } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error('request timed out')));
  });
  return { get, sockets, close: () => agent.destroy() };
}

const PRODUCER = `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-canary, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{headers: [{name: x-canary, value: "yes"}]}]
    backendRefs: [{name: web-v2, port: 80}]
  - backendRefs: [{name: web, port: 80}]
`;

const CONSUMER = `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-moved, namespace: team}
spec:
  parentRefs: [{group: "", kind: Service, name: web, namespace: default}]
  rules:
  - filters: [{type: RequestRedirect, requestRedirect: {hostname: web.team.example, statusCode: 301}}]
`;

t.test('routes applied, overridden and deleted reach connections already open', async (t) => {
  const c = client(CLIENT, UPSTREAM.client);
  const team = client(TEAM_CLIENT, UPSTREAM.team);
  t.teardown(() => {
    c.close();
    team.close();
  });
  t.same(await c.get({ 'x-canary': 'yes' }), { status: 200, body: 'v1' }, 'no route yet: the service as it is');
  t.same(await team.get(), { status: 200, body: 'v1' });

  await ok(['apply', '-f', file('producer.yaml', PRODUCER)]);
  await eventually(async () => (await c.get({ 'x-canary': 'yes' })).body === 'v2', 'the producer route on the open connection', 10_000);
  t.same(await c.get(), { status: 200, body: 'v1' }, 'its second rule: everything else to web');
  const dump = JSON.parse((await httpGet(hostPortOf(agentA.admin), '/config_dump')).body) as { httpRouteTables: { key: string; rules: { route: string }[] }[] };
  t.same(dump.httpRouteTables.find((x) => x.key === 'web.default.svc.cluster.local:80@ for default')?.rules.map((r) => r.route), ['HTTPRoute/default/web-canary#0', 'HTTPRoute/default/web-canary#1'], '/config_dump shows the table the data plane holds');
  await eventually(async () => (await team.get({ 'x-canary': 'yes' })).body === 'v2', 'the producer route for team too', 10_000);

  await ok(['apply', '-f', file('consumer.yaml', CONSUMER)]);
  await eventually(async () => (await team.get()).status === 301, 'team\'s consumer route', 10_000);
  t.same(await team.get({ 'x-canary': 'yes' }), { status: 301, body: '' }, 'the consumer route replaces the producer route for team');
  t.same(await c.get({ 'x-canary': 'yes' }), { status: 200, body: 'v2' }, 'default keeps the producer route');

  await ok(['delete', '-f', file('producer.yaml', PRODUCER)]);
  await eventually(async () => (await c.get({ 'x-canary': 'yes' })).body === 'v1', 'the plain service again once the route is deleted', 10_000);
  t.same(await team.get(), { status: 301, body: '' }, 'team\'s consumer route stays');

  t.equal(c.sockets.size, 1, 'default\'s requests all rode one connection');
  t.equal(team.sockets.size, 1, 'team\'s too');
});
