/**
 * An emptied store must not wipe the mesh, end to end: a controller and an
 * agent, workloads applied, the controller stopped and its database
 * truncated to 0 bytes. The controller refuses to start on it; with
 * --reinitialize-store it starts a new store (a new identity); the agent
 * refuses that store's state, keeps serving its cached workloads, and the
 * controller learns why through the nack (ambitctl node list). The operator's
 * way out, --accept-store, then makes the agent take the new state.
 * Loopback block 127.0.103.0/24 (.11 controller, .12 agent).
 */
import t from 'tap';
import { mkdtempSync, rmSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { agentsReady, ambitctl, eventually, hostPortOf, httpGet, metricValue, startAgent, startController, type RunningAgent, type RunningController } from './harness.ts';

const NET = '127.0.103';
const CTL = `${NET}.11`;
const AG = `${NET}.12`;
const PORTS = { grpc: 15012, monitoring: 15014 };

const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-store-id-'));
const ctlData = join(root, 'ctl');
const agentData = join(root, 'agent');
let ctl: RunningController | undefined;
let agent: RunningAgent | undefined;
t.teardown(async () => {
  await agent?.proc.stop();
  await ctl?.proc.stop();
  rmSync(root, { recursive: true, force: true });
});

async function ok(args: string[]): Promise<string> {
  const r = await ambitctl(ctl!, args);
  if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

const workloadNames = async (): Promise<string[]> => {
  const dump = JSON.parse((await httpGet(hostPortOf(agent!.admin), '/config_dump')).body) as { resources: { kind: string; metadata: { name: string } }[] };
  return dump.resources.filter((r) => r.kind === 'Workload').map((r) => r.metadata.name).sort();
};

t.test('an emptied store: the controller refuses it; reinitialized, the agent refuses its state and keeps serving', async (t) => {
  ctl = await startController(ctlData, [], CTL, PORTS);
  const firstStore = String((await ctl.proc.waitForLog((l) => l.msg === 'store identity')).storeId);
  await ok(['workload', 'register', '--name', 'local', '--service-account', 'local', '--node', 'node-a', '--address', `${NET}.21`, '--port', '8080']);
  await ok(['workload', 'register', '--name', 'remote', '--service-account', 'remote', '--node', 'node-b', '--address', `${NET}.22`, '--port', '8080']);
  const token = (await ok(['node', 'token', 'create', '--node', 'node-a'])).trim();
  agent = await startAgent({ node: 'node-a', address: AG, controller: ctl.address, dataDir: agentData, join: token });
  await agentsReady([agent]);
  await eventually(async () => (await workloadNames()).length === 2, 'the agent serves both workloads');

  await ctl.proc.stop();
  truncateSync(join(ctlData, 'ambit.db'), 0);
  await t.rejects(startController(ctlData, [], CTL, PORTS), new RegExp(`${join(ctlData, 'ca')} holds a CA but the store ${join(ctlData, 'ambit.db')} is empty \\(0 bytes\\)`), 'the controller refuses to start, naming both paths');

  ctl = await startController(ctlData, ['--reinitialize-store'], CTL, PORTS);
  const newStore = String((await ctl.proc.waitForLog((l) => l.msg === 'store identity')).storeId);
  t.not(newStore, firstStore, 'the reinitialized store has a new identity');
  t.ok(ctl.proc.logs.some((l) => l.msg === 'store identity changed (--reinitialize-store); agents will refuse its state until told to accept it'), 'and says what agents will do');

  const refused = await agent.proc.waitForLog((l) => l.msg === 'refusing controller state from another store or from behind the held revision; serving the state held', 40_000);
  t.match(refused, { storeId: newStore, heldStoreId: firstStore, reason: 'store_identity' }, 'the agent logs the refusal with both identities');
  t.same(await workloadNames(), ['local', 'remote'], 'it keeps serving its cached workloads');
  t.equal((await httpGet(hostPortOf(agent.ready), '/healthz/ready')).status, 200, 'and stays ready');
  const m = (await httpGet(hostPortOf(agent.metrics), '/metrics')).body;
  t.ok(metricValue(m, 'ambit_watch_rejected_total', { reason: 'store_identity' }) >= 1, 'ambit_watch_rejected_total{reason="store_identity"}');
  const node = await eventually(async () => {
    const nodes = JSON.parse(await ok(['node', 'list', '-o', 'json'])) as { name: string; nackReason: string }[];
    return nodes.find((n) => n.name === 'node-a' && n.nackReason !== '');
  }, 'the controller records the nack');
  t.match(node.nackReason, `refusing state from store ${newStore}`, 'ambitctl node list -o json shows why');
  t.match(node.nackReason, `--accept-store ${newStore}`, 'and the way out');

  // The way out: the operator accepts the new store on the agent.
  await agent.proc.stop();
  agent = await startAgent({ node: 'node-a', address: AG, controller: ctl.address, dataDir: agentData, extra: ['--accept-store', newStore] });
  await eventually(async () => (await workloadNames()).length === 0, 'with --accept-store the agent takes the new (empty) state');
  await agent.proc.waitForLog((l) => l.msg === 'took state from a new store identity (--accept-store)' && l.storeId === newStore);
  t.pass('the accepted store is taken and logged');
});
