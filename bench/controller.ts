// The controller at mesh scale, on loopback, against a real ambit-controller
// (SQLite store) run as a child process:
//
//   load     W workloads (spread over N nodes, 10 a service) and S services
//            applied through the Admin API (Apply, B resources a request, C
//            requests in flight): resources applied per second, and the
//            controller's RSS after the load (and its peak).
//   watch    N simulated agents: lightweight Watch clients in this process,
//            each with its own node certificate, obtained as an agent does
//            (a join token from the Admin API, Bootstrap.Join with a CSR).
//            Time until all of them hold their first state, then one change
//            (a workload applied on node 0) and how long each agent takes to
//            see it: p50, p99, max.
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
import { Metadata, type ClientDuplexStream } from '@grpc/grpc-js';
import { AdminApi } from '../controller/cli/client.ts';
import { BootstrapClient, DiscoveryClient, WatchResponse, type JoinResponse, type WatchRequest } from '../shared/proto/gen/ambit.ts';
import { CONTROLLER_CHANNEL_OPTIONS, controllerCredentials } from '../shared/controller-client.ts';
import { validateResource } from '../shared/resources/validate.ts';
import { resourceToWire } from '../shared/resources/wire.ts';
import { API_VERSION, type Resource } from '../shared/resources/types.ts';
import { nodeId } from '../shared/spiffe-id.ts';
import { createCsr } from '../shared/x509.ts';
import { startController, type RunningController } from '../test/e2e/harness.ts';

const HOST = '127.0.128.20';
const MiB = 1024 * 1024;

const { values: args } = parseArgs({
  options: {
    workloads: { type: 'string' }, services: { type: 'string' }, agents: { type: 'string' }, nodes: { type: 'string' },
    batch: { type: 'string' }, concurrency: { type: 'string' }, quick: { type: 'boolean' }, help: { type: 'boolean' },
  },
});
if (args.help) {
  process.stdout.write('Usage: node bench/controller.ts [--workloads 100000] [--services 10000] [--agents 1000] [--nodes 1000] [--batch 1000] [--concurrency 2] [--quick]\n');
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

const TARGET = { applyPerSecond: 5000, rssMiB: 300, changeP99Ms: 1000 } as const;

function verdict(ok: boolean): string {
  return ok ? 'PASS' : 'FAIL';
}

function memoryOf(pid: number): { rssMiB: number; hwmMiB: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+)\\s+kB`, 'm').exec(status)?.[1] ?? Number.NaN);
  return { rssMiB: kib('VmRSS') / 1024, hwmMiB: kib('VmHWM') / 1024 };
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

async function loadMesh(api: AdminApi): Promise<{ seconds: number; applied: number }> {
  const all: Resource[] = [];
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
 * A simulated agent: one Watch stream with its node's certificate; it counts
 * what it receives, acks each response, and records when a workload of a
 * given name first reaches it.
 */
class SimAgent {
  readonly node: string;
  readonly #client: DiscoveryClient;
  #call: ClientDuplexStream<WatchRequest, WatchResponse> | undefined;
  revision = 0;
  resources = 0;
  firstStateAt = 0;
  error = '';
  snapshotBytes = 0;
  readonly seen = new Map<string, number>();
  #onUpdate: (() => void) | undefined;

  constructor(address: string, creds: NodeCreds) {
    this.node = creds.node;
    this.#client = new DiscoveryClient(address, controllerCredentials({ caPem: creds.bundlePem, trustDomain: creds.trustDomain, keyPem: creds.keyPem, certChainPem: creds.certChainPem }), CONTROLLER_CHANNEL_OPTIONS);
  }

  start(onUpdate: () => void): void {
    this.#onUpdate = onUpdate;
    const call = this.#client.watch();
    this.#call = call;
    call.on('data', (res: WatchResponse) => {
      const at = performance.now();
      if (res.snapshot) {
        this.resources = res.resources.length;
        this.snapshotBytes = WatchResponse.encode(res).finish().length;
      }
      for (const c of res.changes) {
        if (c.change?.$case === 'put') {
          this.resources++;
          const k = c.change.put.kind;
          const m = k?.$case === 'workload' ? k.workload.metadata : undefined;
          if (m) this.seen.set(`${m.namespace}/${m.name}`, at);
        }
      }
      this.revision = res.revision;
      if (this.firstStateAt === 0) this.firstStateAt = at;
      call.write({ request: { $case: 'ack', ack: { revision: res.revision, ok: true, reason: '', certExpiresAtMs: 0, trustedRoots: [] } } });
      this.#onUpdate?.();
    });
    call.on('error', (err: Error) => { this.error = err.message; });
    call.write({ request: { $case: 'start', start: { resumeRevision: 0, certExpiresAtMs: 0, hboneAddress: '' } } });
  }

  close(): void {
    this.#call?.cancel();
    this.#client.close();
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

const out = (s: string): void => void process.stdout.write(`${s}\n`);
const dir = mkdtempSync(join(tmpdir(), 'ambit-bench-controller-'));
let failed = false;
let controller: RunningController | undefined;
const agents: SimAgent[] = [];
try {
  out(`node ${process.version}; ${WORKLOADS} workloads on ${NODES} nodes, ${SERVICES} services, ${BATCH} resources an Apply, ${CONCURRENCY} in flight; load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  // Every simulated agent connects from the same address, and the controller
  // admits at most --max-connections-per-source unauthenticated connections
  // from one (32): a fleet's agents each have their own address.
  controller = await startController(join(dir, 'controller'), ['--max-connections-per-source', String(AGENTS + 100)], HOST);
  const pid = controller.proc.child.pid!;
  const api = new AdminApi({ controller: controller.grpc, credentialsDir: controller.credentials }, 600_000);
  const idle = memoryOf(pid);
  out(`\nload (SQLite store)`);
  out(`  controller RSS idle                 ${idle.rssMiB.toFixed(1)} MiB`);
  const load = await loadMesh(api);
  const rate = load.applied / load.seconds;
  const loaded = memoryOf(pid);
  out(`  applied                             ${load.applied} resources in ${load.seconds.toFixed(1)} s`);
  out(`  apply rate                          ${rate.toFixed(0)} resources/s   target >= ${TARGET.applyPerSecond}: ${verdict(rate >= TARGET.applyPerSecond)}`);
  out(`  controller RSS after the load       ${loaded.rssMiB.toFixed(1)} MiB   target <= ${TARGET.rssMiB}: ${verdict(loaded.rssMiB <= TARGET.rssMiB)}`);
  out(`  controller peak RSS (VmHWM)         ${loaded.hwmMiB.toFixed(1)} MiB   target <= ${TARGET.rssMiB}: ${verdict(loaded.hwmMiB <= TARGET.rssMiB)}`);

  if (AGENTS > 0) await watchPhase(api, controller, pid);
  api.close();
} catch (err) {
  failed = true;
  out(`ERROR: ${(err as Error).stack ?? String(err)}`);
} finally {
  for (const a of agents) a.close();
  await controller?.proc.stop();
  rmSync(dir, { recursive: true, force: true });
}
process.exitCode = failed ? 1 : 0;

async function watchPhase(api: AdminApi, controller: RunningController, pid: number): Promise<void> {
  out(`\nwatch: ${AGENTS} simulated agents`);
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
  const watchStarted = performance.now();
  for (const c of creds) {
    const a = new SimAgent(controller.address, c);
    agents.push(a);
    a.start(notify);
  }
  await until(() => agents.every((a) => a.firstStateAt > 0), subscribe, 120_000, 'every agent\'s first state').catch((err: Error) => {
    throw new Error(`${err.message}; ${agents.filter((a) => a.firstStateAt === 0).length} without, errors: ${[...new Set(agents.map((a) => a.error).filter(Boolean))].join('; ')}`);
  });
  listeners.clear();
  const firstState = agents.map((a) => a.firstStateAt - watchStarted).sort((a, b) => a - b);
  out(`  first state, all agents             ${(firstState[firstState.length - 1]! / 1000).toFixed(1)} s (p50 ${(percentile(firstState, 50) / 1000).toFixed(1)} s); resources held each ${agents[0]!.resources}, snapshot ${(agents[0]!.snapshotBytes / MiB).toFixed(1)} MiB`);
  const afterWatch = memoryOf(pid);
  out(`  controller RSS with ${AGENTS} streams     ${afterWatch.rssMiB.toFixed(1)} MiB (peak ${afterWatch.hwmMiB.toFixed(1)} MiB)   target <= ${TARGET.rssMiB}: ${verdict(afterWatch.hwmMiB <= TARGET.rssMiB)}`);

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
}
