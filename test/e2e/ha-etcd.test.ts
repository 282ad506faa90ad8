/**
 * The controller in HA (docs/ha.md), end to end with real processes on
 * 127.0.127.0/24: a 3-member etcd cluster (.31-.33), three controller
 * replicas on it (.21-.23) sharing one operator-supplied CA, and two agents
 * (.41 node-a, .42 node-b) each given all three replicas. Every byte of the
 * test traffic crosses both agents' data planes.
 */
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { AdminApi } from '../../controller/cli/client.ts';
import { joinWithToken } from '../../agent/identity/ca-client.ts';
import { parseJoinToken } from '../../shared/join-token.ts';
import { AmbitError } from '../../shared/errors.ts';
import { resourceFromWire, resourceToWire } from '../../shared/resources/wire.ts';
import { toDocument } from '../../shared/resources/validate.ts';
import type { Resource, Service } from '../../shared/resources/types.ts';
import { agentKnowsNode, agentsReady, ambitctl, CONTROLLER_MAIN, eventually, Proc, hostPortOf, httpGet, socksEchoRoundTrip, startAgentPair, startController, startEchoServer, type RunningAgent, type RunningController } from './harness.ts';
import { EtcdCluster } from './fixtures/etcd-cluster.ts';
import { writeMeshCa } from './fixtures/test-pki.ts';

const NET = '127.0.127';
const CONTROLLER_HOSTS = [`${NET}.21`, `${NET}.22`, `${NET}.23`];
const CONTROLLERS = CONTROLLER_HOSTS.map((h) => `${h}:15012`).join(',');
const A = `${NET}.41`;
const B = `${NET}.42`;
const WEB_A = `${NET}.51`;
const WEB_B = `${NET}.52`;
const CLIENT_A = `${NET}.61`;
const CLIENT_B = `${NET}.62`;
const WEB_PORT = 8080;

const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-ha-'));
const etcd = new EtcdCluster({ hosts: [`${NET}.31`, `${NET}.32`, `${NET}.33`], dir: join(root, 'etcd') });
const ca = writeMeshCa(root);
let controllers: RunningController[] = [];
let apis: AdminApi[] = [];
let agents: RunningAgent[] = [];
const webs: Server[] = [];

t.teardown(async () => {
  for (const a of apis) a.close();
  await Promise.all(agents.map((a) => a.proc.stop()));
  await Promise.all(controllers.map((c) => c.proc.stop()));
  await etcd.stop();
  for (const w of webs) w.close();
  rmSync(root, { recursive: true, force: true });
});

const service = (name: string, labels: Record<string, string> = {}): Service => ({
  kind: 'Service',
  metadata: { name, namespace: 'default', labels, revision: 0 },
  spec: { addresses: [], ports: [{ name: 'http', port: 80, targetPort: 8080, appProtocol: 'tcp' }], selector: { app: name } },
});

function startReplica(i: number): Promise<RunningController> {
  return startController(join(root, `ctl${i + 1}`), [
    '--store', 'etcd', '--etcd-endpoints', etcd.endpoints, '--ca-cert', ca.caCert, '--ca-key', ca.caKey,
  ], CONTROLLER_HOSTS[i]!, { grpc: 15012, monitoring: 15014 });
}

async function echoServer(host: string): Promise<Server> {
  const s = await startEchoServer(host, WEB_PORT);
  webs.push(s);
  return s;
}

async function configDump(a: RunningAgent): Promise<{ revision: number; resources: { kind: string; metadata: { name: string; namespace: string; revision: number } }[] }> {
  return JSON.parse((await httpGet(hostPortOf(a.admin), '/config_dump')).body) as never;
}

t.before(async () => {
  await etcd.start();
  // One replica first creates the store identity; the other two start together.
  controllers = [await startReplica(0)];
  controllers.push(...await Promise.all([startReplica(1), startReplica(2)]));
  apis = controllers.map((c) => new AdminApi({ controller: c.grpc, credentialsDir: c.credentials }));
  await Promise.all([echoServer(WEB_A), echoServer(WEB_B)]);
  const workload = (name: string, node: string, address: string): Resource => ({
    kind: 'Workload',
    metadata: { name, namespace: 'default', labels: { app: name }, revision: 0 },
    spec: { serviceAccount: name, node, address, ports: [], weight: 1, locality: '', healthy: true },
  });
  await apis[0]!.call('Apply', apis[0]!.client.apply, {
    resources: [workload('web-a', 'node-a', WEB_A), workload('web-b', 'node-b', WEB_B), workload('client-a', 'node-a', CLIENT_A), workload('client-b', 'node-b', CLIENT_B)].map(resourceToWire),
    createOnly: false, dryRun: false,
  });
  // Tokens made on one replica, used on others.
  const ta = await apis[1]!.call('CreateJoinToken', apis[1]!.client.createJoinToken, { node: 'node-a', ttlMs: 600_000 });
  const tb = await apis[2]!.call('CreateJoinToken', apis[2]!.client.createJoinToken, { node: 'node-b', ttlMs: 600_000 });
  agents = await startAgentPair((stop) => t.teardown(stop), [
    { node: 'node-a', address: A, controller: CONTROLLERS, dataDir: join(root, 'a'), join: ta.token },
    { node: 'node-b', address: B, controller: CONTROLLERS, dataDir: join(root, 'b'), join: tb.token },
  ]);
  await agentsReady(agents);
  await agentKnowsNode(agents[0]!, 'node-b');
  await agentKnowsNode(agents[1]!, 'node-a');
});

t.test('replicas share one store: one identity, one revision, one CA', async (t) => {
  const statuses = await Promise.all(apis.map((a) => a.call('Status', a.client.status, {})));
  t.same(statuses.map((s) => s.store), ['etcd', 'etcd', 'etcd']);
  t.same(new Set(statuses.map((s) => s.ca?.roots.map((r) => r.fingerprintSha256).join())).size, 1, 'every replica signs with the same CA');
  const ids = controllers.map((c) => c.proc.logs.find((l) => l.msg === 'store identity')?.storeId);
  t.ok(ids[0]);
  t.same(new Set(ids).size, 1, 'one store identity');
  await eventually(async () => new Set((await Promise.all(apis.map((a) => a.call('List', a.client.list, { kind: '', namespace: '' })))).map((l) => l.revision)).size === 1, 'replicas at one revision');
  for (const a of apis) {
    const nodes = await a.call('ListNodes', a.client.listNodes, {});
    t.same(nodes.nodes.filter((n) => n.connected).map((n) => n.name).sort(), ['node-a', 'node-b'], 'every replica sees both agents connected, whichever replica they watch from');
    t.same(nodes.nodes.filter((n) => n.name.startsWith('node-')).map((n) => n.hboneAddress).sort(), agents.map((ag) => ag.hbone).sort(), 'and knows both agents\' HBONE addresses');
  }
});

t.test('a replica given another CA is refused', async (t) => {
  const other = writeMeshCa(mkdtempSync(join(root, 'other-ca-')));
  const r = await failedStart(['--store', 'etcd', '--etcd-endpoints', etcd.endpoints, '--ca-cert', other.caCert, '--ca-key', other.caKey]);
  t.not(r.code, 0);
  t.match(r.stderr, /shares no root with the CA the other replicas/);
});

/** Runs ambit-controller to its exit (a start expected to fail). */
async function failedStart(extra: string[]): Promise<{ code: number | null; stderr: string }> {
  const p = new Proc(CONTROLLER_MAIN, ['--data-dir', mkdtempSync(join(root, 'bad-')), '--listen', `${NET}.24:15012`, '--monitoring', `${NET}.24:15014`, ...extra]);
  const r = await p.exited;
  return { code: r.code, stderr: p.stderrText };
}

t.test('a join token is single-use across replicas', async (t) => {
  const { token } = await apis[0]!.call('CreateJoinToken', apis[0]!.client.createJoinToken, { node: 'node-x', ttlMs: 600_000 });
  const pin = parseJoinToken(token).caFingerprint;
  const tries = await Promise.allSettled(controllers.map((c) => joinWithToken({ controller: c.grpc, node: 'node-x', token, caFingerprint: pin })));
  t.equal(tries.filter((r) => r.status === 'fulfilled').length, 1, 'exactly one replica accepted it');
  for (const r of tries) if (r.status === 'rejected') t.equal((r.reason as AmbitError).code, 'AMBIT_ERR_TOKEN_INVALID');
});

t.test('two ambitctl racing to update one resource through different replicas: one wins, the other gets a conflict', async (t) => {
  await apis[0]!.call('Apply', apis[0]!.client.apply, { resources: [resourceToWire(service('race'))], createOnly: false, dryRun: false });
  {
    const round = 0;
    // Both read the same version (get -o json through replica 2), then each edits it and applies through its own replica.
    const got = await ambitctl(controllers[1]!, ['service', 'get', 'race', '-o', 'json']);
    t.equal(got.code, 0, got.stderr);
    const doc = JSON.parse(got.stdout) as { metadata: { revision: number; labels: Record<string, string> } };
    t.ok(doc.metadata.revision > 0, 'get prints the revision the update is based on');
    const edit = (who: string): string => {
      const f = join(root, `race-${round}-${who}.json`);
      writeFileSync(f, JSON.stringify({ ...doc, metadata: { ...doc.metadata, labels: { writer: who } } }));
      return f;
    };
    const [one, two] = await Promise.all([
      ambitctl(controllers[1]!, ['apply', '-f', edit('one')]),
      ambitctl(controllers[2]!, ['apply', '-f', edit('two')]),
    ]);
    const winners = [one, two].filter((r) => r.code === 0);
    const losers = [one, two].filter((r) => r.code !== 0);
    t.equal(winners.length, 1, 'exactly one wins');
    t.equal(losers.length, 1, 'the other is refused');
    t.match(losers[0]?.stderr, /Service default\/race was changed at revision \d+, after revision \d+ this update is based on.*AMBIT_ERR_RESOURCE_CONFLICT/s, 'a conflict naming the resource');
    const now = resourceFromWire(await apis[0]!.call('Get', apis[0]!.client.get, { key: { kind: 'Service', namespace: 'default', name: 'race' } }));
    t.same(now.metadata.labels, { writer: winners[0] === one ? 'one' : 'two' }, 'the winner\'s update is what the mesh holds');
  }
  // Without a revision in the file, apply keeps updating whatever is there.
  const plain = join(root, 'race-plain.json');
  writeFileSync(plain, JSON.stringify({ ...toDocument(service('race', { writer: 'plain' })), metadata: { name: 'race', namespace: 'default', labels: { writer: 'plain' } } }));
  t.equal((await ambitctl(controllers[2]!, ['apply', '-f', plain])).code, 0);
});

t.test('an etcd member and then a controller replica killed during traffic and applies: no failed connection, no lost or duplicated update', async (t) => {
  const live = new Set([0, 1, 2]);
  let stopAt = Infinity;
  const failures: string[] = [];
  let connections = 0;

  // Traffic: connections through both agents, both ways, one at a time, until a second after the chaos (at most 3000).
  const traffic = (async () => {
    for (let i = 0; i < 3000 && Date.now() < stopAt; i++) {
      const [proxy, client, user, web] = i % 2 === 0 ? [agents[0]!.socks, CLIENT_A, 'default/client-a', WEB_B] : [agents[1]!.socks, CLIENT_B, 'default/client-b', WEB_A];
      try {
        await socksEchoRoundTrip(proxy, client, user, web, WEB_PORT);
      } catch (err) {
        failures.push(`connection ${i}: ${(err as Error).message}`);
      }
      connections++;
    }
  })();

  // Applies: each creates two services at once, through the replicas in turn (at most 200).
  const applied: { i: number; ok: boolean; revision: number; error?: string }[] = [];
  const startRevision = (await apis[0]!.call('List', apis[0]!.client.list, { kind: '', namespace: '' })).revision;
  const applies = (async () => {
    for (let i = 0; i < 200 && Date.now() < stopAt; i++) {
      const r = i % 3;
      try {
        const res = await apis[r]!.call('Apply', apis[r]!.client.apply, { resources: [service(`chaos-${i}-a`), service(`chaos-${i}-b`)].map(resourceToWire), createOnly: false, dryRun: false });
        applied.push({ i, ok: true, revision: res.revision });
      } catch (err) {
        applied.push({ i, ok: false, revision: 0, error: (err as Error).message });
      }
      await new Promise((res) => setTimeout(res, 20));
    }
  })();

  const wait = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
  await wait(1_500);
  // Kill the etcd leader (the hardest member to lose: an election follows).
  const leader = await etcdLeader();
  t.comment(`killing etcd member ${etcd.members[leader]!.name} (leader)`);
  await etcd.kill(leader);
  await wait(2_000);
  // Kill the replica node-a watches from.
  const victim = replicaWatching('node-a');
  t.ok(victim >= 0, 'node-a watches from a replica');
  t.comment(`killing controller replica ${victim + 1}`);
  const killedAt = Date.now();
  live.delete(victim);
  await controllers[victim]!.proc.stop('SIGKILL');
  const resumed = await Promise.race(controllers.filter((_, i) => i !== victim).map((c) => c.proc.waitForLog((l) => l.node === 'node-a' && /^watch (resumed|started)/.test(l.msg) && Date.parse(String(l.time)) > killedAt, 20_000)));
  const failoverMs = Date.parse(String(resumed.time)) - killedAt;
  t.comment(`node-a re-watched on another replica ${failoverMs} ms after the kill (${resumed.msg})`);
  t.ok(failoverMs <= 5_000, 'the agent re-watches on another replica within 5 s');
  await wait(1_500);
  stopAt = Date.now() + 1_000;
  await Promise.all([traffic, applies]);

  t.comment(`${connections} connections, ${applied.length} applies (${applied.filter((a) => !a.ok).length} refused)`);
  t.ok(connections >= 50, 'traffic ran through the chaos');
  t.same(failures, [], 'no connection failed');

  // Every apply fully visible or not at all; the revision counts each visible apply exactly once.
  const survivor = apis[[...live][0]!]!;
  const listed = await survivor.call('List', survivor.client.list, { kind: 'Service', namespace: 'default' });
  const names = new Set(listed.resources.map((r) => resourceFromWire(r).metadata.name));
  let visible = 0;
  for (const a of applied) {
    const both = [names.has(`chaos-${a.i}-a`), names.has(`chaos-${a.i}-b`)];
    t.equal(both[0], both[1], `apply ${a.i}: all or nothing`);
    if (a.ok) t.ok(both[0], `apply ${a.i} succeeded and is visible`);
    if (both[0]) visible++;
  }
  t.equal(listed.revision - startRevision, visible, 'one revision per visible apply: none lost, none applied twice');

  // Both agents converge to the store's revision and state.
  const want = (await survivor.call('List', survivor.client.list, { kind: '', namespace: '' }));
  const wantKeys = want.resources.map((w) => { const r = resourceFromWire(w); return `${r.kind}/${r.metadata.namespace}/${r.metadata.name}@${r.metadata.revision}`; }).sort();
  for (const a of agents) {
    await eventually(async () => (await configDump(a)).revision === want.revision, `${a.node} at revision ${want.revision}`, 15_000);
    const dump = await configDump(a);
    t.same(dump.resources.map((r) => `${r.kind}/${r.metadata.namespace}/${r.metadata.name}@${r.metadata.revision}`).sort(), wantKeys, `${a.node} holds exactly the store's state`);
  }

  // Node identity flows fail over too: a new workload on node-a gets its certificate from a live replica.
  await survivor.call('Apply', survivor.client.apply, {
    resources: [resourceToWire({ kind: 'Workload', metadata: { name: 'late', namespace: 'default', labels: {}, revision: 0 }, spec: { serviceAccount: 'late', node: 'node-a', address: `${NET}.63`, ports: [], weight: 1, locality: '', healthy: true } })],
    createOnly: false, dryRun: false,
  });
  await eventually(async () => {
    const certs = JSON.parse((await httpGet(hostPortOf(agents[0]!.admin), '/certs')).body) as { identity: string; state: string }[];
    return certs.some((c) => c.identity === 'spiffe://cluster.local/ns/default/sa/late' && c.state === 'valid');
  }, 'node-a gets the new workload\'s certificate after the failover', 15_000);
  t.pass('certificate issued by a surviving replica');

  // A join given every replica, the dead one first, goes through a live one.
  const { token } = await survivor.call('CreateJoinToken', survivor.client.createJoinToken, { node: 'node-late', ttlMs: 600_000 });
  const joined = await joinWithToken({ controller: [controllers[victim]!.grpc, ...controllers.filter((_, i) => i !== victim).map((c) => c.grpc)], node: 'node-late', token, caFingerprint: parseJoinToken(token).caFingerprint });
  t.match(joined.certChainPem, /BEGIN CERTIFICATE/, 'joined through a surviving replica');

  // ambitctl given every replica, the dead one among them, is answered by a live one.
  const others = controllers.filter((_, i) => i !== victim);
  const viaList = await ambitctl({ address: [controllers[victim]!.address, ...others.map((c) => c.address)].join(','), credentials: others[0]!.credentials }, ['service', 'get', 'race', '-o', 'json']);
  t.equal(viaList.code, 0, `ambitctl --controller with every replica: ${viaList.stderr}`);
});

async function etcdLeader(): Promise<number> {
  for (let i = 0; i < etcd.members.length; i++) {
    const c = new Etcd3({ hosts: [etcd.members[i]!.clientUrl] });
    try {
      const s = await c.maintenance.status({});
      if (s.leader === s.header.member_id) return i;
    } finally {
      c.close();
    }
  }
  return 0;
}

/** The replica whose log shows node's latest watch. */
function replicaWatching(node: string): number {
  let best = -1;
  let at = 0;
  controllers.forEach((c, i) => {
    for (const l of c.proc.logs) {
      if (l.node === node && /^watch (resumed|started)/.test(l.msg)) {
        const ts = Date.parse(String(l.time));
        if (ts >= at) {
          at = ts;
          best = i;
        }
      }
    }
  });
  return best;
}
