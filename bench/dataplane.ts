// Benchmark of the agent data plane on loopback: the real ambit-controller
// and two ambit-agents ("node-a" and "node-b") run as child processes, and
// the same load goes through each path to one TCP server (bench/dataplane-server.ts):
//
//   direct   client → server
//   tunnel   client → agent A upstream listener → HBONE (HTTP/2 CONNECT over
//            mTLS, TLS 1.3) → agent B → server
//   stunnel  client → stunnel (client mode) → TLS 1.3 mTLS → stunnel → server
//   nginx    client → nginx stream (proxy_ssl) → TLS 1.3 mTLS → nginx stream → server
//   node-h2  client → the agents' HTTP/2 CONNECT transport and relay alone, no
//            identity, policy or telemetry (bench/dataplane-nodeh2.ts) → server:
//            the floor of an agent built on node:http2 + node:tls here
//   rust-h2  the same transport in tokio + h2 + rustls (bench/native-h2, built
//            with bench/native-h2/build.sh): what a native data path reaches here
//
// Metrics per path: throughput over 1 and 4 connections, 1 KiB echo latency
// (p50/p99), new connections per second at concurrency 16, CPU seconds per
// GiB moved, and the proxies' RSS. Each measurement is repeated (--runs,
// interleaved across paths so that a noisy moment does not hit one path only)
// and the median is reported. Ends with the targets, PASS/FAIL,
// informational: the exit status is 0 whatever the numbers.
//
// Run: npm run bench:dataplane   (node bench/dataplane.ts --help for options)
import { execFileSync, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ambitctl, childPids, eventually, hostPortOf, httpGet, startAgent, startController, type RunningAgent, type RunningController } from '../test/e2e/harness.ts';
import { defaultDataplaneBinary, resolveDataplane } from '../agent/proxy/native-inbound.ts';
import { connectionRate, EchoProbe, latencyOf, probeOnce, throughput, type Target } from './dataplane-load.ts';
import {
  Children, clockTicksPerSecond, cpuSecondsOf, makePeerCerts, memoryOf, nginxStreamSupport, startNginx, startNodeH2, startRustH2, startStunnel, which,
  type ProxyPair, type TrackedChild,
} from './dataplane-peers.ts';

const HERE = dirname(fileURLToPath(import.meta.url));
const ADDR = {
  controller: '127.0.9.1',
  agentA: '127.0.9.2',
  agentB: '127.0.9.3',
  client: '127.0.9.12',
  server: '127.0.9.13',
  stunnelClient: '127.0.9.22',
  stunnelServer: '127.0.9.23',
  nginxClient: '127.0.9.32',
  nginxServer: '127.0.9.33',
  nodeH2Client: '127.0.9.42',
  nodeH2Server: '127.0.9.43',
  rustH2Client: '127.0.9.52',
  rustH2Server: '127.0.9.53',
} as const;
/** The rust-h2 baseline's executable, once bench/native-h2/build.sh has built it. */
const RUST_H2_BINARY = join(dirname(fileURLToPath(import.meta.url)), 'native-h2', 'target', 'release', 'ambit-bench-native-h2');

/** Why rust-h2 cannot run (not built, or built from older sources than those checked out), or undefined. */
function rustH2Missing(): string | undefined {
  if (!existsSync(RUST_H2_BINARY)) return 'not built (bash bench/native-h2/build.sh)';
  const built = statSync(RUST_H2_BINARY).mtimeMs;
  const sources = ['src/main.rs', 'Cargo.toml'].map((f) => statSync(join(dirname(fileURLToPath(import.meta.url)), 'native-h2', f)).mtimeMs);
  return sources.some((m) => m > built) ? 'built from older sources than bench/native-h2 now has (bash bench/native-h2/build.sh)' : undefined;
}
/** Agent A's explicit upstream listener: connections to agentA:UPSTREAM_PORT are the client workload's, to the server. */
const UPSTREAM_PORT = 19080;
/** The whole bench stops starting new measurements after this long (setup included). */
const TIME_BUDGET_MS = 170_000;
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

const PATHS = ['direct', 'tunnel', 'node-h2', 'rust-h2', 'stunnel', 'nginx'] as const;
/** Baselines: measured and reported, never chosen as the best peer. */
const BASELINES: readonly PathName[] = ['node-h2', 'rust-h2'];
type PathName = (typeof PATHS)[number];
const PEERS: readonly PathName[] = ['stunnel', 'nginx'];

interface PathUnderTest {
  readonly name: PathName;
  readonly target: Target;
  /** Proxy processes on this path: their CPU and memory are counted. */
  readonly procs: readonly { readonly label: string; readonly pid: number }[];
}

interface Samples {
  tp1: number[];
  tp4: number[];
  p50: number[];
  p99: number[];
  rate: number[];
  failures: number;
  firstError: string;
  cpuProxy: number[];
  cpuAll: number[];
  cpuConn: number[];
  /** CPU ms per new connection of each proxy process, by label. */
  cpuConnBy: Map<string, number[]>;
  errors: string[];
}

/** Echo round trips each path takes before the next path's turn in the latency phase. */
const LATENCY_BLOCK = 50;
/** Untimed new connections on each path before the timed runs. */
const CONN_WARMUP_MS = 1_000;

const USAGE = `Usage: node bench/dataplane.ts [options]
  --runs N            repetitions of each measurement; the median is reported (default 3)
  --paths LIST        comma-separated subset of ${PATHS.join(',')} (default: all available)
  --mib N             MiB sent in the throughput runs (default 256)
  --rounds N          timed echo round trips (default 2000)
  --rate-seconds N    length of one new-connections run (default 5)
  --concurrency N     concurrent clients in the new-connections run (default 16)
  --cpu-prof DIR      run the agents with --cpu-prof, profiles written to DIR at exit
  --agent-arg ARG     extra ambit-agent argument (repeatable)
  --dataplane node|native
                      both agents' data path (ambit-agent --dataplane; default: native when
                      dataplane/build.sh has built ambit-dataplane, as the agent's auto); native
                      counts each agent's ambit-dataplane child's CPU and memory with the agent's
  --agent-env K=V     extra environment variable for both agents (repeatable), e.g. NODE_OPTIONS=--perf-basic-prof
  --agent-logs DIR    also write each agent's stderr (JSON logs, access log included) to DIR/<node>.log
  --from-source       run the controller, agents and node-h2 from the TypeScript sources instead of
                      building dist/ first and running that (the default, as shipped)
`;

function intArg(v: string | undefined, def: number, min: number, max: number, what: string): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`${what} must be an integer ${min}-${max}`);
  return n;
}

const median = (xs: readonly number[]): number => {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

const fmt = (v: number, digits = 0): string =>
  Number.isFinite(v) ? v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits }) : '-';

const ratio = (a: number, b: number): string => (Number.isFinite(a) && Number.isFinite(b) && b !== 0 ? `${(a / b).toFixed(2)}x` : '-');

function log(msg: string): void {
  process.stderr.write(`[dataplane] ${msg}\n`);
}

/** Spawns the bench server on ADDR.server; resolves with its port once it listens. */
async function startServer(children: Children): Promise<{ proc: TrackedChild; port: number }> {
  const proc = children.spawn(process.execPath, [join(HERE, 'dataplane-server.ts'), ADDR.server], { stdio: ['pipe', 'pipe', 'pipe'] });
  const port = await new Promise<number>((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`bench server did not start: ${proc.tail}`)), 10_000);
    proc.child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const nl = buf.indexOf('\n');
      if (nl >= 0) {
        clearTimeout(timer);
        resolve((JSON.parse(buf.slice(0, nl)) as { port: number }).port);
      }
    });
    proc.child.once('exit', () => {
      clearTimeout(timer);
      reject(new Error(`bench server exited: ${proc.tail}`));
    });
  });
  return { proc, port };
}

/** Replaces the harness's log collection with a cheap tail: access logs must not cost the bench process CPU. */
function quietStderr(agent: { proc: { child: ChildProcess; stderrText: string } }, copyTo: string | undefined): void {
  const stderr = agent.proc.child.stderr;
  if (!stderr) return;
  stderr.removeAllListeners('data');
  if (copyTo) {
    const file = createWriteStream(copyTo, { flags: 'a' });
    file.on('error', (err) => log(`cannot write ${copyTo}: ${err.message}`));
    file.write(agent.proc.stderrText);
    stderr.pipe(file);
  }
  agent.proc.stderrText = agent.proc.stderrText.slice(-65536);
  stderr.on('data', (d: string | Buffer) => {
    agent.proc.stderrText = (agent.proc.stderrText + d.toString()).slice(-65536);
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      runs: { type: 'string' },
      paths: { type: 'string' },
      mib: { type: 'string' },
      rounds: { type: 'string' },
      'rate-seconds': { type: 'string' },
      concurrency: { type: 'string' },
      'cpu-prof': { type: 'string' },
      'agent-arg': { type: 'string', multiple: true },
      'agent-logs': { type: 'string' },
      'agent-env': { type: 'string', multiple: true },
      dataplane: { type: 'string' },
      'from-source': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  const runs = intArg(values.runs, 3, 1, 9, '--runs');
  const totalBytes = intArg(values.mib, 256, 1, 4096, '--mib') * MiB;
  const rounds = intArg(values.rounds, 2000, 10, 100_000, '--rounds');
  const rateMs = intArg(values['rate-seconds'], 5, 1, 30, '--rate-seconds') * 1000;
  const concurrency = intArg(values.concurrency, 16, 1, 256, '--concurrency');
  const dataplane = values.dataplane ?? resolveDataplane('auto', defaultDataplaneBinary()).path;
  if (dataplane !== 'node' && dataplane !== 'native') throw new Error(`--dataplane must be node or native, got ${dataplane}`);
  // What ships is the compiled JavaScript (dist/, `npm run build`), so that is
  // what is measured: running from source through type stripping adds about
  // 30 MiB of RSS and 5 MiB of heap to every Node.js process (measured with
  // the agent's module graph), which would count against the agents and
  // node-h2 but not against the peers.
  const fromSource = values['from-source'] === true;
  const ROOT = join(HERE, '..');
  if (!fromSource) {
    log('building dist/ (tsc -p tsconfig.json; --from-source skips this)');
    try {
      execFileSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(ROOT, 'tsconfig.json')], { stdio: ['ignore', 'inherit', 'inherit'] });
    } catch {
      // tsc still writes dist/ when it finds type errors (noEmitOnError is off):
      // a type error in a test file must not stop a benchmark of the agents.
      log('tsc reported errors (above); measuring the dist/ it wrote anyway');
    }
  }
  const mains = fromSource
    ? { agent: join(ROOT, 'agent', 'main.ts'), controller: join(ROOT, 'controller', 'main.ts'), nodeH2: join(HERE, 'dataplane-nodeh2.ts') }
    : { agent: join(ROOT, 'dist', 'agent', 'main.js'), controller: join(ROOT, 'dist', 'controller', 'main.js'), nodeH2: join(ROOT, 'dist', 'bench', 'dataplane-nodeh2.js') };
  const wanted = new Set((values.paths ?? PATHS.join(',')).split(',').map((s) => s.trim()).filter(Boolean));
  for (const p of wanted) if (!(PATHS as readonly string[]).includes(p)) throw new Error(`unknown path ${p}; known: ${PATHS.join(', ')}`);
  wanted.add('direct'); // the baseline every ratio needs

  const t0 = performance.now();
  const remainingMs = (): number => TIME_BUDGET_MS - (performance.now() - t0);
  const clk = clockTicksPerSecond();
  const children = new Children();
  const tmp = mkdtempSync(join(tmpdir(), 'dataplane-bench-'));
  let cleaned = false;
  const cleanupNow = (): void => {
    if (cleaned) return;
    cleaned = true;
    children.killAllNow();
    rmSync(tmp, { recursive: true, force: true });
  };
  process.on('exit', cleanupNow);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      log(`${sig}: stopping everything`);
      cleanupNow();
      process.exit(130);
    });
  }

  let controller: RunningController | undefined;
  const agents: RunningAgent[] = [];
  const pairs: ProxyPair[] = [];
  let server: TrackedChild | undefined;
  const skipped: string[] = [];
  try {
    // ------------------------------------------------------------ setup
    const srv = await startServer(children);
    server = srv.proc;
    const serverAt = { host: ADDR.server, port: srv.port };
    const paths: PathUnderTest[] = [{ name: 'direct', target: { ...serverAt, localAddress: ADDR.client }, procs: [] }];

    if (wanted.has('tunnel')) {
      log('starting ambit-controller and two agents');
      mkdirSync(join(tmp, 'controller'));
      controller = await startController(join(tmp, 'controller'), [], ADDR.controller, {}, mains.controller);
      children.track(controller.proc.child);
      const ctl = controller;
      const ok = async (args: string[]): Promise<string> => {
        const r = await ambitctl(ctl, args);
        if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
        return r.stdout.trim();
      };
      await ok(['workload', 'register', '--name', 'server', '--namespace', 'default', '--service-account', 'server', '--node', 'node-b', '--address', ADDR.server, '--port', String(srv.port)]);
      await ok(['workload', 'register', '--name', 'client', '--namespace', 'default', '--service-account', 'client', '--node', 'node-a', '--address', ADDR.client]);
      const tokenA = await ok(['node', 'token', 'create', '--node', 'node-a']);
      const tokenB = await ok(['node', 'token', 'create', '--node', 'node-b']);
      const ports = ['--hbone-port', '0', '--socks-port', '0', '--admin-port', '0', '--metrics-port', '0', '--ready-port', '0', '--drain-timeout', '2s'];
      const env: Record<string, string> = values['cpu-prof'] ? { NODE_OPTIONS: `--cpu-prof --cpu-prof-dir=${values['cpu-prof']}` } : {};
      for (const kv of values['agent-env'] ?? []) {
        const eq = kv.indexOf('=');
        if (eq < 1) throw new Error(`--agent-env wants NAME=VALUE, got ${kv}`);
        env[kv.slice(0, eq)] = kv.slice(eq + 1);
      }
      const extra = values['agent-arg'] ?? [];
      if (values['agent-logs']) mkdirSync(values['agent-logs'], { recursive: true });
      const [a, b] = await Promise.all([
        startAgent({ node: 'node-a', address: ADDR.agentA, controller: ctl.address, dataDir: join(tmp, 'agent-a'), join: tokenA, env, main: mains.agent,
          extra: [...ports, '--dataplane', dataplane, '--upstreams', `default/client:${UPSTREAM_PORT}=${ADDR.server}:${srv.port}`, ...extra] }),
        startAgent({ node: 'node-b', address: ADDR.agentB, controller: ctl.address, dataDir: join(tmp, 'agent-b'), join: tokenB, env, main: mains.agent, extra: [...ports, '--dataplane', dataplane, ...extra] }),
      ]);
      for (const ag of [a, b]) {
        children.track(ag.proc.child);
        agents.push(ag);
        quietStderr(ag, values['agent-logs'] ? join(values['agent-logs'], `${ag.node}.log`) : undefined);
      }
      for (const ag of agents) await eventually(async () => (await httpGet(hostPortOf(ag.ready), '/healthz/ready')).status === 200, `${ag.node} ready`, 30_000);
      const target = { host: ADDR.agentA, port: UPSTREAM_PORT, localAddress: ADDR.client };
      await eventually(async () => (await probeOnce(target, 3_000), true), 'a first connection through the tunnel', 30_000);
      // With --dataplane native, node-a's upstream listener and node-b's inbound
      // run in each agent's ambit-dataplane child: its CPU and memory are the agent's too.
      const dataplaneOf = (ag: typeof a): { label: string; pid: number }[] => {
        if (dataplane !== 'native') return [];
        const pids = childPids(ag.proc.child.pid ?? 0);
        if (pids.length !== 1) throw new Error(`${ag.node} should have one ambit-dataplane child, has ${pids.length}`);
        return [{ label: `agent-${ag.node.slice(-1)}-dataplane`, pid: pids[0]! }];
      };
      paths.push({ name: 'tunnel', target, procs: [{ label: 'agent-a', pid: a.proc.child.pid ?? 0 }, { label: 'agent-b', pid: b.proc.child.pid ?? 0 }, ...dataplaneOf(a), ...dataplaneOf(b)] });
    }

    const openssl = which('openssl');
    const wantPeers = [...PEERS, ...BASELINES].filter((p) => wanted.has(p));
    const certsDir = join(tmp, 'peers');
    mkdirSync(certsDir);
    const certs = wantPeers.length > 0 && openssl ? makePeerCerts(certsDir, openssl) : undefined;
    if (wantPeers.length > 0 && !openssl) skipped.push(`${wantPeers.join(', ')}: openssl (to make their certificates) is not installed`);
    /** Starts one proxy pair and adds its path once a first connection goes through; a pair that cannot start is skipped with the reason. */
    const addPair = async (name: PathName, missing: string | undefined, start: () => Promise<ProxyPair>): Promise<void> => {
      if (!certs || !wanted.has(name)) return;
      if (missing) {
        skipped.push(`${name}: ${missing}`);
        return;
      }
      try {
        const pair = await start();
        pairs.push(pair);
        const target = { ...pair.entry, localAddress: ADDR.client };
        await eventually(async () => (await probeOnce(target, 3_000), true), `a first connection through ${name}`, 15_000);
        paths.push({ name, target, procs: pair.procs });
      } catch (err) {
        skipped.push(`${name}: failed to start: ${(err as Error).message}`);
      }
    };
    const upstream = serverAt;
    if (certs) {
      await addPair('node-h2', undefined, () => startNodeH2(children, mains.nodeH2, certs, { clientSide: ADDR.nodeH2Client, serverSide: ADDR.nodeH2Server, upstream }));
      await addPair('rust-h2', rustH2Missing(),
        () => startRustH2(children, RUST_H2_BINARY, certs, { clientSide: ADDR.rustH2Client, serverSide: ADDR.rustH2Server, upstream }));
      const stunnel = which('stunnel') ?? which('stunnel4');
      await addPair('stunnel', stunnel ? undefined : 'not installed',
        () => startStunnel(children, stunnel!, certsDir, certs, { clientSide: ADDR.stunnelClient, serverSide: ADDR.stunnelServer, upstream }));
      const nginx = which('nginx');
      const support = nginx ? nginxStreamSupport(nginx) : { missing: 'not installed' };
      await addPair('nginx', support.missing,
        () => startNginx(children, nginx!, support.loadModule, certsDir, certs, { clientSide: ADDR.nginxClient, serverSide: ADDR.nginxServer, upstream }));
    }
    for (const s of skipped) log(`skipped ${s}`);
    log(`setup done in ${fmt((performance.now() - t0) / 1000, 1)} s; paths: ${paths.map((p) => p.name).join(', ')}`);

    const idleRss = new Map(paths.flatMap((p) => p.procs.map((pr) => [pr.label, memoryOf(pr.pid)] as const)));
    const samples = new Map<PathName, Samples>(paths.map((p) => [p.name, { tp1: [], tp4: [], p50: [], p99: [], rate: [], failures: 0, firstError: '', cpuProxy: [], cpuAll: [], cpuConn: [], cpuConnBy: new Map(), errors: [] }]));
    const S = (p: PathUnderTest): Samples => samples.get(p.name)!;
    const notes: string[] = [];
    const loadBefore = loadavg();

    /** Runs fn for every run and path (paths interleaved), if the time budget allows `estimateMs` for each. */
    const phase = async (name: string, estimateMs: number, fn: (p: PathUnderTest) => Promise<void>): Promise<void> => {
      for (let r = 0; r < runs; r++) {
        for (const p of paths) {
          if (remainingMs() < estimateMs) {
            notes.push(`${name}: run ${r + 1} of ${p.name} skipped, time budget (${TIME_BUDGET_MS / 1000} s) used up`);
            continue;
          }
          try {
            await fn(p);
          } catch (err) {
            S(p).errors.push(`${name}: ${(err as Error).message}`);
          }
        }
      }
    };

    // ------------------------------------------------------------ a. throughput (+ d. CPU per GiB)
    log(`throughput: ${totalBytes / MiB} MiB over 1 connection, then over 4 (x${runs})`);
    await phase('throughput 1 conn', 5_000, async (p) => {
      const cpu0 = process.cpuUsage();
      const srv0 = cpuSecondsOf(srv.proc.pid, clk);
      const proxy0 = p.procs.reduce((s, pr) => s + cpuSecondsOf(pr.pid, clk), 0);
      const r = await throughput(p.target, totalBytes, 1, Math.min(30_000, remainingMs()));
      const cpu1 = process.cpuUsage(cpu0);
      const proxy = p.procs.reduce((s, pr) => s + cpuSecondsOf(pr.pid, clk), 0) - proxy0;
      const endpoints = (cpu1.user + cpu1.system) / 1e6 + (cpuSecondsOf(srv.proc.pid, clk) - srv0);
      S(p).tp1.push(r.mibPerSecond);
      S(p).cpuProxy.push(proxy / (r.bytes / GiB));
      S(p).cpuAll.push((proxy + endpoints) / (r.bytes / GiB));
    });
    await phase('throughput 4 conns', 5_000, async (p) => {
      S(p).tp4.push((await throughput(p.target, totalBytes, 4, Math.min(30_000, remainingMs()))).mibPerSecond);
    });

    // ------------------------------------------------------------ b. latency
    // One echo connection per path, held for the run; the rounds go in
    // blocks of LATENCY_BLOCK, path after path (the order turning each
    // block), so that all paths share the machine's state of the moment.
    log(`latency: ${rounds} echo round trips of 1 KiB (x${runs}), paths interleaved every ${LATENCY_BLOCK} rounds`);
    for (let r = 0; r < runs; r++) {
      if (remainingMs() < 3_000 * paths.length) {
        notes.push(`latency: run ${r + 1} skipped, time budget (${TIME_BUDGET_MS / 1000} s) used up`);
        continue;
      }
      const probes = new Map<PathUnderTest, EchoProbe>();
      const taken = new Map<PathUnderTest, number[]>();
      for (const p of paths) {
        let probe: EchoProbe | undefined;
        try {
          probe = await EchoProbe.open(p.target, 1024, 5_000);
          await probe.rounds(200); // warm-up, untimed
          probes.set(p, probe);
          taken.set(p, []);
        } catch (err) {
          probe?.close();
          S(p).errors.push(`latency: ${(err as Error).message}`);
        }
      }
      const live = [...probes.keys()];
      const deadline = performance.now() + Math.min(60_000, remainingMs());
      for (let block = 0; block * LATENCY_BLOCK < rounds && performance.now() < deadline; block++) {
        const n = Math.min(LATENCY_BLOCK, rounds - block * LATENCY_BLOCK);
        for (let i = 0; i < live.length; i++) {
          const p = live[(block + i) % live.length]!;
          if (!probes.has(p)) continue;
          try {
            await probes.get(p)!.rounds(n, taken.get(p));
          } catch (err) {
            S(p).errors.push(`latency: ${(err as Error).message}`);
            probes.get(p)!.close();
            probes.delete(p);
          }
        }
      }
      for (const [p, probe] of probes) {
        probe.close();
        const l = latencyOf(taken.get(p)!);
        S(p).p50.push(l.p50Us);
        S(p).p99.push(l.p99Us);
      }
    }

    // ------------------------------------------------------------ c. new connections
    log(`new connections: ${rateMs / 1000} s at concurrency ${concurrency} (x${runs}), after ${CONN_WARMUP_MS / 1000} s untimed on each path`);
    // Untimed first: until now each path has opened only a handful of
    // connections, and the first timed run came out low for the paths run
    // by Node.js processes (most likely their JIT compiling the
    // per-connection code).
    for (const p of paths) {
      if (remainingMs() < CONN_WARMUP_MS + 1_000) break;
      await connectionRate(p.target, CONN_WARMUP_MS, concurrency, 200_000, 5_000).catch(() => undefined);
      await new Promise((res) => setTimeout(res, 300));
    }
    await phase('new connections', rateMs + 3_000, async (p) => {
      const each0 = p.procs.map((pr) => cpuSecondsOf(pr.pid, clk));
      const r = await connectionRate(p.target, rateMs, concurrency, 200_000, 5_000);
      const each = p.procs.map((pr, i) => cpuSecondsOf(pr.pid, clk) - each0[i]!);
      const proxy = each.reduce((s, x) => s + x, 0);
      S(p).rate.push(r.perSecond);
      if (p.procs.length > 0 && r.ok > 0) {
        S(p).cpuConn.push((proxy * 1000) / r.ok);
        p.procs.forEach((pr, i) => {
          const by = S(p).cpuConnBy;
          by.set(pr.label, [...(by.get(pr.label) ?? []), (each[i]! * 1000) / r.ok]);
        });
      }
      S(p).failures += r.failures;
      S(p).firstError ||= r.firstError;
      // Let the closing connections of this run leave the accept queues before the next path starts.
      await new Promise((res) => setTimeout(res, 300));
    });

    // ------------------------------------------------------------ e. memory
    const rss = new Map(paths.flatMap((p) => p.procs.map((pr) => [pr.label, memoryOf(pr.pid)] as const)));
    const loadAfter = loadavg();

    // ------------------------------------------------------------ report
    const med = new Map(paths.map((p) => {
      const s = S(p);
      const procRss = p.procs.reduce((sum, pr) => sum + (rss.get(pr.label)?.rssMiB ?? Number.NaN), 0);
      return [p.name, {
        tp1: median(s.tp1), tp4: median(s.tp4), p50: median(s.p50), p99: median(s.p99), rate: median(s.rate),
        failures: s.failures, cpuProxy: median(s.cpuProxy), cpuAll: median(s.cpuAll), cpuConn: median(s.cpuConn), rss: p.procs.length ? procRss : Number.NaN,
      }] as const;
    }));
    const direct = med.get('direct')!;
    const added = (n: PathName): number => (med.get(n)?.p50 ?? Number.NaN) - direct.p50;
    type Key = 'tp1' | 'tp4' | 'p50' | 'p99' | 'rate' | 'failures' | 'cpuProxy' | 'cpuAll' | 'cpuConn' | 'rss' | 'added';
    const value = (n: PathName, k: Key): number => (k === 'added' ? (n === 'direct' ? Number.NaN : added(n)) : med.get(n)?.[k] ?? Number.NaN);
    const peersHere = paths.filter((p) => PEERS.includes(p.name)).map((p) => p.name);
    const bestPeer = (k: Key, higherIsBetter: boolean): { name: PathName | undefined; v: number } => {
      let best: { name: PathName | undefined; v: number } = { name: undefined, v: Number.NaN };
      for (const n of peersHere) {
        const v = value(n, k);
        if (!Number.isFinite(v)) continue;
        if (best.name === undefined || (higherIsBetter ? v > best.v : v < best.v)) best = { name: n, v };
      }
      return best;
    };
    const rows: { label: string; k: Key; digits: number; higher: boolean; vsDirect: boolean; vsPeer: boolean }[] = [
      { label: 'throughput, 1 conn (MiB/s)', k: 'tp1', digits: 0, higher: true, vsDirect: true, vsPeer: true },
      { label: 'throughput, 4 conns (MiB/s)', k: 'tp4', digits: 0, higher: true, vsDirect: true, vsPeer: true },
      { label: 'latency p50, 1 KiB echo (µs)', k: 'p50', digits: 0, higher: false, vsDirect: true, vsPeer: true },
      { label: 'latency p99, 1 KiB echo (µs)', k: 'p99', digits: 0, higher: false, vsDirect: true, vsPeer: true },
      { label: 'added p50 over direct (µs)', k: 'added', digits: 0, higher: false, vsDirect: false, vsPeer: true },
      { label: `new conns/s (concurrency ${concurrency})`, k: 'rate', digits: 0, higher: true, vsDirect: true, vsPeer: true },
      { label: 'CPU ms per new conn, proxies', k: 'cpuConn', digits: 3, higher: false, vsDirect: false, vsPeer: true },
      { label: 'new conn failures (all runs)', k: 'failures', digits: 0, higher: false, vsDirect: false, vsPeer: false },
      { label: 'CPU s/GiB, proxies', k: 'cpuProxy', digits: 2, higher: false, vsDirect: false, vsPeer: true },
      { label: 'CPU s/GiB, proxies+client+server', k: 'cpuAll', digits: 2, higher: false, vsDirect: true, vsPeer: true },
      { label: 'proxy RSS after runs (MiB)', k: 'rss', digits: 1, higher: false, vsDirect: false, vsPeer: true },
    ];
    const names = paths.map((p) => p.name);
    const hasTunnel = names.includes('tunnel');
    const W = 34;
    const C = 11;
    const out: string[] = [];
    out.push('');
    out.push(`Ambit data plane benchmark — Node ${process.version}, ${availableParallelism()} CPUs (${cpus()[0]?.model ?? '?'}), load average ${loadBefore.map((l) => l.toFixed(2)).join(' ')} before, ${loadAfter.map((l) => l.toFixed(2)).join(' ')} after`);
    out.push(`Node.js processes run ${fromSource ? 'from source (type stripping: about 30 MiB more RSS each)' : 'the built JavaScript (dist/), as shipped'}`);
    out.push(`the agents' data path: ${dataplane === 'native' ? "ambit-dataplane (--dataplane native: node-a's upstream listener and node-b's inbound HBONE; each one's CPU and memory count as its agent's)" : 'node:http2 in the agents (--dataplane node)'}`);
    out.push(`${runs} run(s) per measurement, median shown; throughput ${totalBytes / MiB} MiB; latency ${rounds} rounds after 200 warm-up, paths interleaved every ${LATENCY_BLOCK}; new connections ${rateMs / 1000} s at concurrency ${concurrency} after ${CONN_WARMUP_MS / 1000} s untimed`);
    for (const s of skipped) out.push(`skipped ${s}`);
    out.push('');
    out.push(['metric'.padEnd(W), ...names.map((n) => n.padStart(C)), ...(hasTunnel ? ['tunnel/direct'.padStart(15), '  tunnel/best-peer'] : [])].join(''));
    for (const row of rows) {
      const cells = names.map((n) => fmt(value(n, row.k), row.digits).padStart(C));
      let extra: string[] = [];
      if (hasTunnel) {
        const tv = value('tunnel', row.k);
        const bp = bestPeer(row.k, row.higher);
        extra = [
          (row.vsDirect ? ratio(tv, value('direct', row.k)) : '').padStart(15),
          row.vsPeer && bp.name ? `${ratio(tv, bp.v).padStart(9)} (${bp.name})` : '',
        ];
      }
      out.push([row.label.padEnd(W), ...cells, ...extra].join(''));
    }
    out.push('');
    out.push('per-run values (in run order):');
    for (const p of paths) {
      const s = S(p);
      const list = (xs: number[], d = 0): string => xs.map((x) => fmt(x, d)).join(', ') || '-';
      out.push(`  ${p.name.padEnd(8)} tp1 [${list(s.tp1)}]  tp4 [${list(s.tp4)}]  p50 [${list(s.p50)}]  p99 [${list(s.p99)}]  conns/s [${list(s.rate)}]  CPU s/GiB proxies [${list(s.cpuProxy, 2)}]`);
      if (s.failures > 0) out.push(`  ${p.name.padEnd(8)} new connection failures: ${s.failures}, first: ${s.firstError}`);
      for (const e of s.errors) out.push(`  ${p.name.padEnd(8)} ERROR ${e}`);
    }
    out.push('proxy memory (VmRSS idle → after runs, VmHWM peak):');
    for (const p of paths) for (const pr of p.procs) {
      const i = idleRss.get(pr.label);
      const m = rss.get(pr.label);
      out.push(`  ${pr.label.padEnd(15)} ${fmt(i?.rssMiB ?? Number.NaN, 1).padStart(7)} → ${fmt(m?.rssMiB ?? Number.NaN, 1).padStart(7)} MiB, peak ${fmt(m?.hwmMiB ?? Number.NaN, 1)} MiB`);
    }
    out.push('proxy CPU ms per new connection, by process (median of runs):');
    for (const p of paths) for (const pr of p.procs) {
      out.push(`  ${pr.label.padEnd(18)} ${fmt(median(S(p).cpuConnBy.get(pr.label) ?? []), 3)}`);
    }
    for (const n of notes) out.push(`note: ${n}`);
    for (const ag of agents) {
      const c = ag.proc.child;
      if (c.exitCode !== null || c.signalCode !== null) {
        out.push(`ERROR agent ${ag.node} exited during the bench (code ${c.exitCode}, signal ${c.signalCode}); its last output:`);
        out.push(ag.proc.stderrText.split('\n').filter((l) => !l.includes('"log":"access"')).slice(-15).map((l) => `    ${l.slice(0, 600)}`).join('\n'));
      }
    }

    out.push('');
    out.push('targets (informational):');
    if (!hasTunnel) out.push('  tunnel not measured');
    else if (peersHere.length === 0) out.push('  no peer (stunnel/nginx) measured: the targets compare with the best peer, n/a');
    else {
      const t = med.get('tunnel')!;
      const tp = bestPeer('tp1', true);
      const cr = bestPeer('rate', true);
      const lat = bestPeer('added', false);
      const verdict = (ok: boolean): string => (ok ? 'PASS' : 'FAIL');
      const tpRatio = t.tp1 / tp.v;
      out.push(`  tunnel throughput >= 0.8x best peer:           ${fmt(t.tp1)} vs ${fmt(tp.v)} MiB/s (${tp.name}) = ${tpRatio.toFixed(2)}x  ${verdict(tpRatio >= 0.8)}`);
      const crRatio = t.rate / cr.v;
      out.push(`  new connections/s >= 3x best peer:            ${fmt(t.rate)} vs ${fmt(cr.v)}/s (${cr.name}) = ${crRatio.toFixed(2)}x  ${verdict(crRatio >= 3)}`);
      const la = added('tunnel');
      const laRatio = la / lat.v;
      out.push(`  added p50 latency <= 1.5x best peer's added:  ${fmt(la)} vs ${fmt(lat.v)} µs (${lat.name}) = ${Number.isFinite(laRatio) ? laRatio.toFixed(2) : '-'}x  ${verdict(la <= 1.5 * lat.v)}`);
      const h = med.get('node-h2');
      if (h) {
        // The same three ratios for the bare transport: what node:http2 + node:tls allow here at all.
        out.push(`  node-h2 (the transport alone) vs best peer:   throughput ${(h.tp1 / tp.v).toFixed(2)}x, new connections/s ${(h.rate / cr.v).toFixed(2)}x, added p50 ${(added('node-h2') / lat.v).toFixed(2)}x`);
        out.push(`  tunnel vs node-h2 (Ambit's own cost):         throughput ${(t.tp1 / h.tp1).toFixed(2)}x, new connections/s ${(t.rate / h.rate).toFixed(2)}x, CPU per new connection ${(t.cpuConn / h.cpuConn).toFixed(2)}x`);
      }
      const r = med.get('rust-h2');
      if (r) {
        // The same three ratios for a native transport: what a data path outside node:http2 would allow here.
        out.push(`  rust-h2 (a native transport) vs best peer:    throughput ${(r.tp1 / tp.v).toFixed(2)}x, new connections/s ${(r.rate / cr.v).toFixed(2)}x, added p50 ${(added('rust-h2') / lat.v).toFixed(2)}x`);
      }
    }
    out.push(`total time ${fmt((performance.now() - t0) / 1000, 1)} s`);
    process.stdout.write(`${out.join('\n')}\n`);
  } finally {
    // ------------------------------------------------------------ teardown
    await Promise.all(agents.map((a) => a.proc.stop('SIGTERM', 8_000).catch(() => undefined)));
    await controller?.proc.stop('SIGTERM', 5_000).catch(() => undefined);
    await Promise.all(pairs.map((p) => p.stop().catch(() => undefined)));
    if (server) {
      server.child.stdin?.end();
      await server.stop(2_000);
    }
    cleanupNow();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench/dataplane.ts: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
