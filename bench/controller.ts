// The controller at mesh scale, on loopback, against a real ambit-controller
// (SQLite store) run as a child process:
//
//   load     W workloads (spread over N nodes, 10 a service) and S services
//            applied through the Admin API (Apply, B resources a request, C
//            requests in flight): resources applied per second, and the
//            controller's RSS after the load (and its peak).
//   watch    N simulated agents in this process, each the agent's own
//            WatchClient (agent/state/watch-client.ts) with its own node
//            certificate, obtained as an agent does (a join token from the
//            Admin API, Bootstrap.Join with a CSR).
//            Time until all of them hold their first state, then one change
//            (a workload applied on node 0) and how long each agent takes to
//            see it: p50, p99, max.
//   --agent-memory (instead of the above)
//            one real ambit-agent (--capture none, with its ambit-dataplane)
//            whose node has 10 workloads, in a mesh of those 10 workloads
//            and 20 services, then in the same mesh grown to W workloads and
//            S services on other nodes: the agent's RSS in each, once it has
//            acknowledged the mesh's revision. In the large mesh its workloads
//            call 20 of its services (svc-0 … svc-19, two SOCKS5 connections
//            each: the first and the second connection's reply time);
//            --watch-scope node (the default here) or full.
//
// Every figure is printed with PASS/FAIL against its target; informational:
// the exit status is 0 whatever the numbers (1 when the bench cannot run).
//
// Run: node bench/controller.ts [--workloads 100000] [--services 10000] [--agents 1000]
//      node bench/controller.ts --quick      (2,000 workloads, 200 services, 50 agents)
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Metadata } from '@grpc/grpc-js';
import { AdminApi } from '../controller/cli/client.ts';
import { BootstrapClient, WatchResponse, type JoinResponse } from '../shared/proto/gen/ambit.ts';
import { WatchClient } from '../agent/state/watch-client.ts';
import type { HostPort } from '../shared/config-parse.ts';
import { createLogger } from '../shared/logger.ts';
import { CONTROLLER_CHANNEL_OPTIONS, controllerCredentials } from '../shared/controller-client.ts';
import { validateResource } from '../shared/resources/validate.ts';
import { resourceToWire } from '../shared/resources/wire.ts';
import { API_VERSION, type Resource } from '../shared/resources/types.ts';
import { nodeId } from '../shared/spiffe-id.ts';
import { createCsr } from '../shared/x509.ts';
import { EtcdCluster } from '../test/e2e/fixtures/etcd-cluster.ts';
import { writeMeshCa } from '../test/e2e/fixtures/test-pki.ts';
import { agentsReady, childPids, CONTROLLER_MAIN, hostPortOf, httpGet, Proc, socksConnect, startAgent, type RunningAgent, type RunningController } from '../test/e2e/harness.ts';

const HOST = '127.0.128.20';
/** What systemd/ambit-controller.service and daemonset/controller.yaml set. */
const CONTROLLER_NODE_OPTIONS = '--max-semi-space-size=2';
const MiB = 1024 * 1024;
/**
 * The simulated agents' logger: nothing is printed; of each warning that a
 * stream was lost, the delay the agent's backoff chose before reconnecting is
 * kept, by node, for the failover's breakdown.
 */
const retryInMs = new Map<string, number>();
const SIM_LOGGER = createLogger({
  name: 'sim-agent',
  level: 'warn',
  destination: {
    write: (line: string) => {
      const l = JSON.parse(line) as { node?: string; retryInMs?: number };
      if (l.node !== undefined && l.retryInMs !== undefined) retryInMs.set(l.node, l.retryInMs);
    },
  },
});

const { values: args } = parseArgs({
  options: {
    workloads: { type: 'string' }, services: { type: 'string' }, agents: { type: 'string' }, nodes: { type: 'string' },
    batch: { type: 'string' }, concurrency: { type: 'string' }, store: { type: 'string' }, 'etcd-members': { type: 'string' }, replicas: { type: 'string' }, quick: { type: 'boolean' }, help: { type: 'boolean' }, 'agent-memory': { type: 'boolean' }, 'watch-scope': { type: 'string' },
  },
});
if (args.help) {
  process.stdout.write('Usage: node bench/controller.ts [--workloads 100000] [--services 10000] [--agents 1000] [--nodes 1000] [--batch 1000] [--concurrency 2] [--store sqlite|etcd] [--etcd-members 1] [--replicas 1] [--quick] [--agent-memory [--watch-scope node|full]]\n');
  process.exit(0);
}
const WORKLOADS = Number(args.workloads ?? (args.quick ? 2000 : 100_000));
const SERVICES = Number(args.services ?? (args.quick ? 200 : 10_000));
const AGENTS = Number(args.agents ?? (args.quick ? 50 : 1000));
/** Nodes the workloads are spread over; simulated agent k is node k. */
const NODES = Math.max(AGENTS, Number(args.nodes ?? (args.quick ? 50 : 1000)));
const BATCH = Number(args.batch ?? 1000);
const CONCURRENCY = Number(args.concurrency ?? 2);
/** Workload i's namespace; a service's selected workloads share its namespace (NAMESPACES divides SERVICES). */
const NAMESPACES = 100;

const STORE = args.store ?? 'sqlite';
if (STORE !== 'sqlite' && STORE !== 'etcd') throw new Error(`--store ${STORE}: sqlite or etcd`);
/** etcd members (Debian's /usr/bin/etcd) on 127.0.128.51 and up, with --store etcd. */
const ETCD_MEMBERS = Number(args['etcd-members'] ?? 1);
/** Controller replicas sharing the etcd store; with more than one, the watch phase ends by killing one. */
const REPLICAS = Number(args.replicas ?? 1);
if (REPLICAS > 1 && STORE !== 'etcd') throw new Error('--replicas needs --store etcd');
const TARGET = { applyPerSecond: 5000, rssMiB: 300, changeP99Ms: 1000, agentGrowthMiB: 10 } as const;

function verdict(ok: boolean): string {
  return ok ? 'PASS' : 'FAIL';
}

function memoryOf(pid: number): { rssMiB: number; hwmMiB: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+)\\s+kB`, 'm').exec(status)?.[1] ?? Number.NaN);
  return { rssMiB: kib('VmRSS') / 1024, hwmMiB: kib('VmHWM') / 1024 };
}

/** CPU time (user + system) a process has used, in seconds. */
function cpuSecondsOf(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '').split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

function percentile(sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((sorted.length * p) / 100) - 1)] ?? Number.NaN;
}

function nodeName(i: number): string {
  return `node-${i}`;
}

/** Workload i: on node i mod AGENTS, in namespace i mod NAMESPACES, selected by service i mod SERVICES; address 10.x.y.z from i. */
function workload(i: number): Resource {
  return validateResource({
    apiVersion: API_VERSION,
    kind: 'Workload',
    metadata: { name: `w-${i}`, namespace: `ns-${i % NAMESPACES}`, labels: { app: `svc-${i % SERVICES}` } },
    spec: { serviceAccount: `sa-${i % SERVICES}`, node: nodeName(i % NODES), address: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, ports: [8080] },
  }, `workload ${i}`);
}

function service(j: number): Resource {
  return validateResource({
    apiVersion: API_VERSION,
    kind: 'Service',
    metadata: { name: `svc-${j}`, namespace: `ns-${j % NAMESPACES}` },
    spec: { ports: [{ name: 'http', port: 80, targetPort: 8080 }], selector: { app: `svc-${j}` }, addresses: [`100.64.${(j >> 8) & 255}.${j & 255}`] },
  }, `service ${j}`);
}

async function loadMesh(api: AdminApi, extra: readonly Resource[] = []): Promise<{ seconds: number; applied: number }> {
  const all: Resource[] = [...extra];
  for (let j = 0; j < SERVICES; j++) all.push(service(j));
  for (let i = 0; i < WORKLOADS; i++) all.push(workload(i));
  const batches: Resource[][] = [];
  for (let k = 0; k < all.length; k += BATCH) batches.push(all.slice(k, k + BATCH));
  const started = performance.now();
  let next = 0;
  let applied = 0;
  const worker = async (): Promise<void> => {
    for (let b = batches[next++]; b; b = batches[next++]) {
      const res = await api.call('Apply', api.client.apply, { resources: b.map(resourceToWire), createOnly: false, dryRun: false });
      applied += res.results.length;
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  return { seconds: (performance.now() - started) / 1000, applied };
}

interface NodeCreds {
  readonly node: string;
  readonly keyPem: string;
  readonly certChainPem: string;
  readonly bundlePem: string;
  readonly trustDomain: string;
}

/** A node certificate as an agent gets one: a join token from the Admin API, then Bootstrap.Join with a CSR for the node identity. */
async function joinNode(api: AdminApi, controller: RunningController, caPem: string, node: string): Promise<NodeCreds> {
  const token = await api.call('CreateJoinToken', api.client.createJoinToken, { node, ttlMs: 600_000 });
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const trustDomain = api.trustDomain;
  const client = new BootstrapClient(controller.address, controllerCredentials({ caPem, trustDomain }), CONTROLLER_CHANNEL_OPTIONS);
  try {
    const res = await new Promise<JoinResponse>((resolve, reject) => {
      client.join(
        { node, credential: { $case: 'joinToken', joinToken: token.token }, csrPem: createCsr(privateKey, publicKey, nodeId(trustDomain, node).uri) },
        new Metadata(), { deadline: Date.now() + 30_000 },
        (err, r) => (err ? reject(err) : resolve(r)),
      );
    });
    return { node, keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), certChainPem: res.certificateChainPem, bundlePem: res.trustBundlePem, trustDomain: res.trustDomain };
  } finally {
    client.close();
  }
}

/**
 * A simulated agent: the agent's own WatchClient (agent/state/watch-client.ts:
 * the same target over every replica, channel options, backoff, validation
 * and acks) with its node's certificate, applying nothing but recording what
 * it receives: the revision, the resources held, and when a workload of a
 * given name first reaches it.
 */
class SimAgent {
  readonly node: string;
  readonly #watch: WatchClient;
  revision = 0;
  resources = 0;
  firstStateAt = 0;
  /** When the stream last broke, and when it was answered again (0: not since). */
  brokeAt = 0;
  rewatchedAt = 0;
  snapshotBytes = 0;
  readonly seen = new Map<string, number>();

  /** measureSnapshot: encode the snapshot received once more to report its size (one agent is enough). */
  constructor(controllers: readonly HostPort[], creds: NodeCreds, onUpdate: () => void, measureSnapshot = false) {
    this.node = creds.node;
    this.#watch = new WatchClient({
      controller: controllers,
      credentials: () => ({ ...creds, expiresAt: 0 }),
      hboneAddress: '',
      revision: () => this.revision,
      certExpiresAt: () => 0,
      logger: SIM_LOGGER.child({ node: creds.node }),
      onStatus: (connected) => {
        if (connected || this.firstStateAt === 0) return;
        this.brokeAt = performance.now();
        this.rewatchedAt = 0;
      },
      apply: (u) => {
        const at = performance.now();
        if (u.snapshot) {
          this.resources = u.snapshot.length;
          if (measureSnapshot) this.snapshotBytes = WatchResponse.encode(WatchResponse.fromPartial({ resources: u.snapshot.map(resourceToWire) })).finish().length;
        }
        for (const ch of u.changes ?? []) {
          if (ch.op !== 'put') continue;
          this.resources++;
          if (ch.resource.kind === 'Workload') this.seen.set(`${ch.resource.metadata.namespace}/${ch.resource.metadata.name}`, at);
        }
        this.revision = u.revision;
        if (this.firstStateAt === 0) this.firstStateAt = at;
        if (this.brokeAt > 0 && this.rewatchedAt === 0) this.rewatchedAt = at;
        onUpdate();
      },
    });
  }

  start(): void {
    this.#watch.start();
  }

  /** The replica ("host:port") the stream is on, '' while none answers. */
  get replica(): string {
    return this.#watch.peer;
  }

  get error(): string {
    return this.#watch.lastError;
  }

  close(): void {
    this.#watch.close();
  }
}

/** Resolves when pred holds, checked after each update; rejects after timeoutMs. */
function until(pred: () => boolean, subscribe: (fn: () => void) => void, timeoutMs: number, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    if (pred()) return resolve();
    const timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
    subscribe(() => {
      if (pred()) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

/**
 * ambit-controller as its systemd unit and Deployment run it: with
 * NODE_OPTIONS=--max-semi-space-size=2 (V8's young generation at 2 MiB
 * semi-spaces instead of Node 24's 32 MiB, which a controller applying large
 * batches grows to and keeps as RSS).
 */
async function startController(dataDir: string, extra: readonly string[], host = HOST): Promise<RunningController> {
  const proc = new Proc(CONTROLLER_MAIN, ['--data-dir', dataDir, '--listen', `${host}:0`, '--monitoring', `${host}:0`, '--console', 'none', ...extra], { NODE_OPTIONS: CONTROLLER_NODE_OPTIONS });
  const ready = await proc.startedWhen((l) => l.msg === 'controller ready', 60_000);
  const port = (v: unknown): number => Number(String(v).split(':').pop());
  const grpc = { host, port: port(ready.grpc) };
  return { proc, grpc, monitoring: { host, port: port(ready.monitoring) }, dataDir, credentials: join(dataDir, 'admin'), address: `${host}:${grpc.port}`, console: 'off' };
}

/** Thrown to end the bench early without an error. */
class Done extends Error {}

const out = (s: string): void => void process.stdout.write(`${s}\n`);
const dir = mkdtempSync(join(tmpdir(), 'ambit-bench-controller-'));
let failed = false;
let controller: RunningController | undefined;
let etcd: EtcdCluster | undefined;
/** Replicas besides `controller` (--replicas, on etcd). */
const replicas: RunningController[] = [];
const agents: SimAgent[] = [];
try {
  out(`node ${process.version}; ${WORKLOADS} workloads on ${NODES} nodes, ${SERVICES} services, ${BATCH} resources an Apply, ${CONCURRENCY} in flight; load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  // Every simulated agent connects from the same address, and the controller
  // admits at most --max-connections-per-source unauthenticated connections
  // from one (32): a fleet's agents each have their own address.
  const storeArgs: string[] = [];
  if (STORE === 'etcd') {
    etcd = new EtcdCluster({ hosts: Array.from({ length: ETCD_MEMBERS }, (_, i) => `127.0.128.${51 + i}`), dir: join(dir, 'etcd') });
    await etcd.start();
    // Replicas on etcd sign with a CA given to each as files (docs/ha.md).
    const ca = writeMeshCa(dir);
    storeArgs.push('--store', 'etcd', '--etcd-endpoints', etcd.endpoints, '--ca-cert', ca.caCert, '--ca-key', ca.caKey);
  }
  controller = await startController(join(dir, 'controller'), ['--max-connections-per-source', String(AGENTS + 100), ...storeArgs]);
  for (let k = 1; k < REPLICAS; k++) {
    replicas.push(await startController(join(dir, `controller-${k}`), ['--max-connections-per-source', String(AGENTS + 100), ...storeArgs], `127.0.128.${20 + k}`));
  }
  const pid = controller.proc.child.pid!;
  const api = new AdminApi({ controller: controller.grpc, credentialsDir: controller.credentials }, 600_000);
  if (args['agent-memory']) {
    await agentMemory(api, controller);
    api.close();
    throw new Done();
  }
  const idle = memoryOf(pid);
  out(`\nload (${STORE === 'etcd' ? `etcd store, ${ETCD_MEMBERS} member${ETCD_MEMBERS > 1 ? 's' : ''}` : 'SQLite store'})`);
  out(`  controller RSS idle                 ${idle.rssMiB.toFixed(1)} MiB`);
  const load = await loadMesh(api);
  const rate = load.applied / load.seconds;
  const loaded = memoryOf(pid);
  out(`  applied                             ${load.applied} resources in ${load.seconds.toFixed(1)} s`);
  out(`  apply rate                          ${rate.toFixed(0)} resources/s   target >= ${TARGET.applyPerSecond}: ${verdict(rate >= TARGET.applyPerSecond)}`);
  out(`  controller RSS after the load       ${loaded.rssMiB.toFixed(1)} MiB   target <= ${TARGET.rssMiB}: ${verdict(loaded.rssMiB <= TARGET.rssMiB)}`);
  out(`  controller peak RSS (VmHWM)         ${loaded.hwmMiB.toFixed(1)} MiB   target <= ${TARGET.rssMiB}: ${verdict(loaded.hwmMiB <= TARGET.rssMiB)}`);

  if (AGENTS > 0) await watchPhase(api, [controller, ...replicas], pid);
  api.close();
} catch (err) {
  failed = !(err instanceof Done);
  if (failed) out(`ERROR: ${(err as Error).stack ?? String(err)}`);
} finally {
  for (const a of agents) a.close();
  await controller?.proc.stop();
  for (const r of replicas) await r.proc.stop();
  await etcd?.stop();
  rmSync(dir, { recursive: true, force: true });
}
process.exitCode = failed ? 1 : 0;

async function watchPhase(api: AdminApi, replicas: readonly RunningController[], pid: number): Promise<void> {
  const controller = replicas[0]!;
  out(`\nwatch: ${AGENTS} simulated agents${replicas.length > 1 ? `, spread over ${replicas.length} replicas` : ''}`);
  const caPem = readFileSync(join(controller.credentials, 'ca.pem'), 'utf8');
  const joinStarted = performance.now();
  const creds: NodeCreds[] = [];
  for (let k = 0; k < AGENTS; k += 20) {
    creds.push(...(await Promise.all(Array.from({ length: Math.min(20, AGENTS - k) }, (_, x) => joinNode(api, controller, caPem, nodeName(k + x))))));
  }
  out(`  node certificates (join token + Join)  ${AGENTS} in ${((performance.now() - joinStarted) / 1000).toFixed(1)} s`);
  const listeners = new Set<() => void>();
  const notify = (): void => {
    for (const l of listeners) l();
  };
  const subscribe = (fn: () => void): void => void listeners.add(fn);
  // Connected in waves of 50, each once the previous holds its first state:
  // a thousand TLS handshakes at one instant outlast the controller's
  // connect deadline on a small machine (a fleet's agents come up spread
  // out, and reconnect with jittered backoff).
  const watchStarted = performance.now();
  for (let k = 0; k < creds.length; k += 50) {
    const wave = creds.slice(k, k + 50).map((c, x) => new SimAgent(replicas.map((r) => r.grpc), c, notify, k + x === 0));
    agents.push(...wave);
    for (const a of wave) a.start();
    await until(() => wave.every((a) => a.firstStateAt > 0), subscribe, 120_000, `the first state of agents ${k}-${k + wave.length - 1}`).catch((err: Error) => {
      const errors = wave.map((a) => a.error).filter(Boolean);
      throw new Error(`${err.message}; ${wave.filter((a) => a.firstStateAt === 0).length} without, ${errors.length} errors, the first: ${errors[0] ?? 'none'}`);
    });
  }
  listeners.clear();
  const firstState = agents.map((a) => a.firstStateAt - watchStarted).sort((a, b) => a - b);
  out(`  first state, all agents             ${(firstState[firstState.length - 1]! / 1000).toFixed(1)} s (p50 ${(percentile(firstState, 50) / 1000).toFixed(1)} s); resources held each ${agents[0]!.resources}, snapshot ${(agents[0]!.snapshotBytes / MiB).toFixed(1)} MiB`);
  if (replicas.length > 1) out(`  agents on each replica (each agent's watch starts on the first of its shuffled list)  ${replicas.map((r) => agents.filter((a) => a.replica === r.address).length).join(', ')}`);
  const afterWatch = memoryOf(pid);
  // With several replicas, `pid` is replica 0's: the streams it holds are its agents'.
  const streams = replicas.length > 1 ? agents.filter((a) => a.replica === controller.address).length : AGENTS;
  out(`  controller RSS with ${streams} streams${replicas.length > 1 ? ' (replica 0)' : ''}     ${afterWatch.rssMiB.toFixed(1)} MiB (peak ${afterWatch.hwmMiB.toFixed(1)} MiB)   target <= ${TARGET.rssMiB}: ${verdict(afterWatch.hwmMiB <= TARGET.rssMiB)}`);

  // One change, seen by every agent: a new workload on node 0.
  const probe = validateResource({
    apiVersion: API_VERSION, kind: 'Workload', metadata: { name: 'probe', namespace: 'ns-0', labels: {} },
    spec: { serviceAccount: 'probe', node: nodeName(0), address: '10.255.255.254', ports: [8080] },
  }, 'probe');
  const applyAt = performance.now();
  await api.call('Apply', api.client.apply, { resources: [resourceToWire(probe)], createOnly: false, dryRun: false });
  const committedAt = performance.now();
  await until(() => agents.every((a) => a.seen.has('ns-0/probe')), subscribe, 60_000, 'the change at every agent');
  const lat = agents.map((a) => a.seen.get('ns-0/probe')! - applyAt).sort((a, b) => a - b);
  out(`  one change (Apply returned in ${(committedAt - applyAt).toFixed(0)} ms), seen by each agent after:`);
  out(`    p50 ${percentile(lat, 50).toFixed(0)} ms, p99 ${percentile(lat, 99).toFixed(0)} ms, max ${lat[lat.length - 1]!.toFixed(0)} ms   target p99 <= ${TARGET.changeP99Ms} ms: ${verdict(percentile(lat, 99) <= TARGET.changeP99Ms)}`);
  if (replicas.length > 1) await failover(api, replicas, subscribe);
}

/** The mesh of the agent under test: 10 workloads on its node, 20 services over them (two a workload, one port each). */
function agentMesh(node: string): Resource[] {
  const out: Resource[] = [];
  for (let i = 0; i < 10; i++) {
    out.push(validateResource({
      apiVersion: API_VERSION, kind: 'Workload', metadata: { name: `local-${i}`, namespace: 'mem', labels: { app: `local-${i}` } },
      spec: { serviceAccount: `local-${i}`, node, address: `127.0.128.${100 + i}`, ports: [8080] },
    }, `local ${i}`));
  }
  for (let j = 0; j < 20; j++) {
    out.push(validateResource({
      apiVersion: API_VERSION, kind: 'Service', metadata: { name: `called-${j}`, namespace: 'mem' },
      spec: { ports: [{ name: 'http', port: 80, targetPort: 8080 }], selector: { app: `local-${j % 10}` }, addresses: [`100.127.0.${j + 1}`] },
    }, `called ${j}`));
  }
  return out;
}

/** Resolves once `node` has acknowledged the controller's current revision. */
async function acked(api: AdminApi, node: string, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const res = await api.call('ListNodes', api.client.listNodes, {});
    const n = res.nodes.find((x) => x.name === node);
    if (n && n.ackedRevision >= res.revision) return res.revision;
    if (Date.now() > deadline) throw new Error(`${node} did not acknowledge revision ${res.revision} within ${timeoutMs} ms (at ${n?.ackedRevision ?? 'none'})`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

/**
 * The agent's workloads call 20 services of the large mesh (each local-k one
 * connection to svc-j.ns-j): in node scope, what it subscribes to. Their
 * endpoints' nodes run no agent, so each connection ends refused; what
 * matters is what the agent then holds. Returns how long the first
 * connection to each took to be answered (the cost of a subscription).
 */
async function callServices(agent: RunningAgent): Promise<number[]> {
  const took: number[] = [];
  for (let j = 0; j < 20; j++) {
    const start = performance.now();
    const { socket } = await socksConnect(agent.socks, `127.0.128.${100 + (j % 10)}`, `mem/local-${j % 10}`, `svc-${j}.ns-${j % NAMESPACES}`, 80, 10_000);
    took.push(performance.now() - start);
    socket.destroy();
  }
  return took.sort((a, b) => a - b);
}

/** How many resources the agent holds (its /config_dump). */
async function heldCount(agent: RunningAgent): Promise<number> {
  return (JSON.parse((await httpGet(hostPortOf(agent.admin), '/config_dump')).body) as { resources: unknown[] }).resources.length;
}

async function agentMemory(api: AdminApi, controller: RunningController): Promise<void> {
  const node = 'mem-1';
  const scope = args['watch-scope'] ?? 'node';
  out(`\nagent memory: one ambit-agent (--capture none, --watch-scope ${scope}) with 10 local workloads, 20 services over them, calling 20 services of the mesh`);
  await api.call('Apply', api.client.apply, { resources: agentMesh(node).map(resourceToWire), createOnly: false, dryRun: false });
  const token = await api.call('CreateJoinToken', api.client.createJoinToken, { node, ttlMs: 600_000 });
  let agent: RunningAgent | undefined;
  try {
    agent = await startAgent({ node, address: '127.0.128.30', controller: controller.address, dataDir: join(dir, 'agent'), join: token.token, extra: ['--watch-scope', scope] });
    await agentsReady([agent], 60_000);
    const pid = agent.proc.child.pid!;
    const measure = async (): Promise<{ agent: number; dataplane: number; hwm: number }> => {
      // Settled: a few seconds after the ack, so the figure is what the agent holds, not what it was still allocating.
      await new Promise((r) => setTimeout(r, 5000));
      const a = memoryOf(pid);
      const dp = childPids(pid).map(memoryOf).reduce((sum, m) => sum + m.rssMiB, 0);
      return { agent: a.rssMiB, dataplane: dp, hwm: a.hwmMiB };
    };
    const small = await acked(api, node, 60_000);
    const inSmall = await measure();
    out(`  mesh of 10 workloads, 20 services (revision ${small})`);
    out(`    agent RSS ${inSmall.agent.toFixed(1)} MiB (peak ${inSmall.hwm.toFixed(1)}), its ambit-dataplane ${inSmall.dataplane.toFixed(1)} MiB; resources held ${await heldCount(agent)}`);
    const load = await loadMesh(api);
    out(`  mesh grown by ${WORKLOADS} workloads and ${SERVICES} services on other nodes (applied in ${load.seconds.toFixed(1)} s)`);
    const first = await callServices(agent);
    const again = await callServices(agent);
    out(`    its workloads call 20 services of the mesh: SOCKS5 reply after p50 ${percentile(first, 50).toFixed(1)} ms, max ${first[first.length - 1]!.toFixed(1)} ms (first connection to each); p50 ${percentile(again, 50).toFixed(1)} ms, max ${again[again.length - 1]!.toFixed(1)} ms (second)`);
    const large = await acked(api, node, 900_000);
    const inLarge = await measure();
    out(`    at revision ${large}: agent RSS ${inLarge.agent.toFixed(1)} MiB (peak ${inLarge.hwm.toFixed(1)}), its ambit-dataplane ${inLarge.dataplane.toFixed(1)} MiB; resources held ${await heldCount(agent)}`);
    const growth = inLarge.agent + inLarge.dataplane - (inSmall.agent + inSmall.dataplane);
    out(`  growth (agent + data plane)         ${growth.toFixed(1)} MiB   target <= +${TARGET.agentGrowthMiB} MiB: ${verdict(growth <= TARGET.agentGrowthMiB)}`);
  } finally {
    await agent?.proc.stop();
  }
}

/**
 * Kills the replica other than 0 with the most agents (SIGKILL) under the
 * agents watching it and applies a change through replica 0 at once: how
 * long until each of them is answered by another replica (resuming from its
 * revision), whether every agent sees the change, and where the time went.
 */
async function failover(api: AdminApi, replicas: readonly RunningController[], subscribe: (fn: () => void) => void): Promise<void> {
  const onReplica = (r: RunningController): SimAgent[] => agents.filter((a) => a.replica === r.address);
  const victim = replicas.slice(1).reduce((best, r) => (onReplica(r).length > onReplica(best).length ? r : best));
  const v = replicas.indexOf(victim);
  const moved = onReplica(victim);
  const others = replicas.filter((r) => r !== victim);
  const etcdPids = (etcd?.members ?? []).map((m) => m.child?.pid).filter((p): p is number => p !== undefined);
  const cpu = (): number[] => [process.pid, ...others.map((r) => r.proc.child.pid!), ...etcdPids].map(cpuSecondsOf);
  const cpuBefore = cpu();
  const logsBefore = others.map((r) => r.proc.logs.length);
  retryInMs.clear();
  await victim.proc.stop('SIGKILL');
  const killedAt = performance.now();
  const killedAtMs = Date.now();
  const probe = validateResource({
    apiVersion: API_VERSION, kind: 'Workload', metadata: { name: 'probe-failover', namespace: 'ns-0', labels: {} },
    spec: { serviceAccount: 'probe', node: nodeName(0), address: '10.255.255.253', ports: [8080] },
  }, 'probe-failover');
  await api.call('Apply', api.client.apply, { resources: [resourceToWire(probe)], createOnly: false, dryRun: false });
  const appliedAt = performance.now();
  const done = (): boolean => moved.every((a) => a.rewatchedAt > 0) && agents.every((a) => a.seen.has('ns-0/probe-failover'));
  await until(done, subscribe, 60_000, 'the failover').catch(() => undefined);
  const window = (performance.now() - killedAt) / 1000;
  const cpuUsed = cpu().map((c, i) => c - cpuBefore[i]!);
  const rewatch = moved.filter((a) => a.rewatchedAt > 0).map((a) => a.rewatchedAt - killedAt).sort((a, b) => a - b);
  const seen = agents.filter((a) => a.seen.has('ns-0/probe-failover')).map((a) => a.seen.get('ns-0/probe-failover')! - killedAt).sort((a, b) => a - b);
  const worst = rewatch.length === moved.length ? rewatch[rewatch.length - 1]! : Number.POSITIVE_INFINITY;
  out(`  replica ${v} killed (SIGKILL) with ${moved.length} agents on it; a change applied through replica 0 ${(appliedAt - killedAt).toFixed(0)} ms later`);
  out(`    re-watching on another replica: ${rewatch.length}/${moved.length}, after p50 ${percentile(rewatch, 50).toFixed(0)} ms, p99 ${percentile(rewatch, 99).toFixed(0)} ms, max ${worst.toFixed(0)} ms   target every one <= 5000 ms: ${verdict(worst <= 5000)}`);
  out(`    the change, seen by ${seen.length}/${agents.length} agents (p99 ${percentile(seen, 99).toFixed(0)} ms after the kill)   target none missing: ${verdict(seen.length === agents.length)}`);
  // Where the time went: the agents' backoff, then when the replicas answered (their log), and who used the CPU meanwhile.
  const backoff = moved.map((a) => retryInMs.get(a.node) ?? Number.NaN).sort((a, b) => a - b);
  if (moved.length === 0) return;
  const answered = others.flatMap((r, i) => r.proc.logs.slice(logsBefore[i]).filter((l) => l.msg === 'watch resumed with deltas' || l.msg === 'watch started with snapshot'))
    .map((l) => Date.parse(String(l.time)) - killedAtMs).sort((a, b) => a - b);
  out(`    breakdown: the agents' backoff before reconnecting p50 ${percentile(backoff, 50).toFixed(0)} ms, max ${backoff[backoff.length - 1]!.toFixed(0)} ms; the replicas answered ${answered.length} WatchStarts after p50 ${percentile(answered, 50).toFixed(0)} ms, max ${answered[answered.length - 1]?.toFixed(0) ?? '-'} ms`);
  out(`    CPU over those ${window.toFixed(1)} s: simulated agents (this process) ${cpuUsed[0]!.toFixed(1)} s, ${others.map((r, i) => `replica ${replicas.indexOf(r)} ${cpuUsed[1 + i]!.toFixed(1)} s`).join(', ')}, etcd ${cpuUsed.slice(1 + others.length).reduce((a, b) => a + b, 0).toFixed(1)} s; load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
}
