/**
 * A node-scoped agent keeps its subscriptions across a restart (docs/scale.md,
 * "The scoped watch"), end to end with real processes on 127.0.141.0/24: one
 * controller on SQLite (.21) and two agents in `--watch-scope node` (.41
 * node-a with the client, .42 node-b with the service's endpoints). node-a's
 * workload calls `web`, node-a is stopped, web gains an endpoint meanwhile,
 * and node-a is started again on the same data directory: its first
 * WatchStart asks for web again and the snapshot that replaces its cached
 * state holds web with the new endpoint before any connection uses it.
 * Then, with the controller down, node-a restarts once more: it serves web
 * from its cache, a new destination is saved as followed although no answer
 * comes, and the controller, back, is asked for both.
 */
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AdminApi } from '../../controller/cli/client.ts';
import { resourceToWire } from '../../shared/resources/wire.ts';
import type { Resource, Service, Workload } from '../../shared/resources/types.ts';
import { agentKnowsNode, agentsReady, eventually, hostPortOf, httpGet, socksConnect, socksEchoRoundTrip, startAgent, startAgentPair, startController, startEchoServer, type LogLine, type RunningAgent, type RunningController } from './harness.ts';
import { service as meshService, workload } from './fixtures/scoped-mesh.ts';

const NET = '127.0.141';
const CTL = `${NET}.21`;
const A = `${NET}.41`;
const B = `${NET}.42`;
const CLIENT_A = `${NET}.61`;
const WEB_B = `${NET}.52`;
const WEB_B2 = `${NET}.53`;
const PORT = 8080;

const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-scoped-restart-'));
const dataA = join(root, 'a');
let ctl: RunningController | undefined;
let api: AdminApi | undefined;
let agents: RunningAgent[] = [];
const servers: { close: () => unknown }[] = [];

t.teardown(async () => {
  api?.close();
  await Promise.all(agents.map((a) => a.proc.stop()));
  await ctl?.proc.stop();
  for (const s of servers) s.close();
  rmSync(root, { recursive: true, force: true });
});

const service = (name: string): Service => meshService(name, PORT);

/** Applies `resources`: the mesh revision they made. */
const apply = async (...resources: Resource[]): Promise<number> => {
  return (await api!.call('Apply', api!.client.apply, { resources: resources.map(resourceToWire), createOnly: false, dryRun: false })).revision;
};

/** The keys ("Kind/ns/name") agent `a` holds. */
async function held(a: RunningAgent): Promise<Set<string>> {
  const dump = JSON.parse((await httpGet(hostPortOf(a.admin), '/config_dump')).body) as { resources: { kind: string; metadata: { name: string; namespace: string } }[] };
  return new Set(dump.resources.map((r) => `${r.kind}/${r.metadata.namespace}/${r.metadata.name}`));
}

/** node-a's state.json: the revision cached and what it says it follows. */
function cached(): { revision: number; subscriptions?: unknown } {
  return JSON.parse(readFileSync(join(dataA, 'state.json'), 'utf8')) as { revision: number; subscriptions?: unknown };
}
const cachedSubscriptions = (): unknown => cached().subscriptions;

const watchStarts = (): LogLine[] => ctl!.proc.logs.filter((l) => l.msg === 'watch started with a node-scoped snapshot' && l.node === 'node-a');

t.before(async () => {
  ctl = await startController(join(root, 'ctl'), [], CTL, { grpc: 15012, monitoring: 15014 });
  api = new AdminApi({ controller: ctl.grpc, credentialsDir: ctl.credentials });
  for (const h of [WEB_B, WEB_B2]) servers.push(await startEchoServer(h, PORT));
  await apply(workload('client-a', 'node-a', CLIENT_A, 'client'), workload('web-b', 'node-b', WEB_B, 'web'), service('web'), service('other'));
  const ta = await api.call('CreateJoinToken', api.client.createJoinToken, { node: 'node-a', ttlMs: 600_000 });
  const tb = await api.call('CreateJoinToken', api.client.createJoinToken, { node: 'node-b', ttlMs: 600_000 });
  agents = await startAgentPair((stop) => t.teardown(stop), [
    { node: 'node-a', address: A, controller: ctl.address, dataDir: dataA, join: ta.token, extra: ['--watch-scope', 'node'] },
    { node: 'node-b', address: B, controller: ctl.address, dataDir: join(root, 'b'), join: tb.token, extra: ['--watch-scope', 'node'] },
  ]);
  await agentsReady(agents);
  await agentKnowsNode(agents[0]!, 'node-b');
});

t.test('a restarted node-scoped agent asks again for what its workloads used, and holds it before any connection', async (t) => {
  t.notOk((await held(agents[0]!)).has('Service/default/web'), 'node-a does not hold web before its workload uses it');
  await socksEchoRoundTrip(agents[0]!.socks, CLIENT_A, 'default/client-a', 'web.default', 80, 10_000);
  await eventually(async () => {
    const subs = cachedSubscriptions();
    return Array.isArray(subs) && subs.includes('web.default');
  }, 'node-a saves the subscription with its cached state');
  t.equal(statSync(join(dataA, 'state.json')).mode & 0o777, 0o600, 'state.json stays 0600');
  t.equal(watchStarts().length, 1, 'one watch so far');

  await agents[0]!.proc.stop();
  t.same(cachedSubscriptions(), ['web.default'], 'a graceful stop leaves the subscription in the cache');
  // Changed while node-a is away: only a snapshot that follows web brings it.
  const changed = await apply(workload('web-b2', 'node-b', WEB_B2, 'web'));

  agents[0] = await startAgent({ node: 'node-a', address: A, controller: ctl!.address, dataDir: dataA, extra: ['--watch-scope', 'node'] });
  const restored = await agents[0].proc.waitForLog((l) => l.msg === 'following the destinations cached before the restart');
  t.equal(restored.subscriptions, 1, 'node-a restores web');
  const start = await eventually(async () => watchStarts()[1], 'node-a watches again');
  t.equal(start.subscriptions, 1, 'its first WatchStart carried the subscription');
  await agentsReady([agents[0]]);
  await eventually(async () => (await held(agents[0]!)).has('Workload/default/web-b2'), 'the snapshot that replaced the cached state holds web\'s new endpoint');
  const a = await held(agents[0]);
  t.ok(a.has('Service/default/web') && a.has('Workload/default/web-b'), 'and web with its first endpoint, before any connection');
  t.notOk(a.has('Service/default/other'), 'not a service its workloads never used');

  // The state saved after the restart (the snapshot's revision) still follows web: the next restart restores it too.
  await eventually(async () => cached().revision >= changed, 'node-a saves the snapshot it got after the restart');
  t.same(cachedSubscriptions(), ['web.default'], 'saved with the restored subscription');
  // Connections to web go through from what it holds, none waiting for a subscription round trip.
  for (let i = 0; i < 4; i++) await socksEchoRoundTrip(agents[0].socks, CLIENT_A, 'default/client-a', 'web.default', 80, 10_000);
  t.notOk(agents[0].proc.logs.some((l) => l.msg === 'outbound connection refused: its destination is not known yet'), 'no connection waited past the connect timeout');
});

t.test('restarted while the controller is down: served from the cache, a new destination saved unanswered, both asked for once it is back', async (t) => {
  const ctlDir = ctl!.dataDir;
  await ctl!.proc.stop();
  ctl = undefined;
  await agents[0]!.proc.stop();
  agents[0] = await startAgent({ node: 'node-a', address: A, controller: `${CTL}:15012`, dataDir: dataA, extra: ['--watch-scope', 'node', '--connect-timeout', '1s'] });
  t.equal((await agents[0].proc.waitForLog((l) => l.msg === 'following the destinations cached before the restart')).subscriptions, 1, 'node-a restores web from its cache');
  await agentsReady([agents[0]]);
  await socksEchoRoundTrip(agents[0].socks, CLIENT_A, 'default/client-a', 'web.default', 80, 10_000);
  t.pass('web is served from the cache with the controller down');

  // `other` is in the mesh but node-a never held it: with no controller to answer, the connection is refused after the connect timeout.
  const { socket, reply } = await socksConnect(agents[0].socks, CLIENT_A, 'default/client-a', 'other.default', 80, 10_000);
  socket.destroy();
  t.not(reply, 0, 'a destination never held is refused while the controller is away');
  await eventually(async () => {
    const subs = cachedSubscriptions();
    return Array.isArray(subs) && subs.length === 2;
  }, 'node-a saves the new subscription though no update came');
  t.same(cachedSubscriptions(), ['web.default', 'other.default'], 'least recently used first');

  ctl = await startController(ctlDir, [], CTL, { grpc: 15012, monitoring: 15014 });
  const start = await ctl.proc.waitForLog((l) => l.msg === 'watch started with a node-scoped snapshot' && l.node === 'node-a', 30_000);
  t.equal(start.subscriptions, 2, 'the controller, back, is asked for both');
  await eventually(async () => (await held(agents[0]!)).has('Service/default/other'), 'node-a holds other now');
  t.ok((await held(agents[0]!)).has('Workload/default/web-b2'), 'and still web');
});
