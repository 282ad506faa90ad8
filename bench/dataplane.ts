// Benchmark of the Ambit data path on loopback: the real ambit-controller
// and two ambit-agents ("node-a" and "node-b", each with its ambit-dataplane
// child) run as child processes, and the same load goes through each path to
// one TCP server (bench/dataplane-server.ts):
//
//   direct   client → server
//   tunnel   client → agent A upstream listener → HBONE (HTTP/2 CONNECT over
//            mTLS, TLS 1.3) → agent B → server
//   socks5   client → SOCKS5 negotiation with agent A (:15080) → HBONE → agent B → server
//   capture  client (a registered workload uid) → iptables REDIRECT → agent A's
//            transparent capture (:15001) → HBONE → agent B → server
//   stunnel  client → stunnel (client mode) → TLS 1.3 mTLS → stunnel → server
//   nginx    client → nginx stream (proxy_ssl) → TLS 1.3 mTLS → nginx stream → server
//   haproxy  client → haproxy (mode tcp, ssl to the server) → TLS 1.3 mTLS → haproxy → server
//   rust-h2  Ambit's transport alone in tokio + h2 + rustls (bench/native-h2, built
//            with bench/native-h2/build.sh): a baseline, never the best peer
//
// Metrics per path: throughput over 1 and 4 connections, 1 KiB echo latency
// (p50/p99), new connections per second at concurrency 16, CPU seconds per
// GiB moved, and the proxies' RSS. Each measurement is repeated (--runs,
// interleaved across paths so that a noisy moment does not hit one path only)
// and the median is reported. Ends with the targets for each Ambit entry
// point, PASS/FAIL, informational: the exit status is 0 whatever the numbers.
//
// Run: npm run bench:dataplane   (node bench/dataplane.ts --help for options)
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ambitctl, childPids, eventually, hostPortOf, httpGet, startAgent, startController, type RunningAgent, type RunningController } from '../test/e2e/harness.ts';
import { InProcessLoad, latencyOf, type LoadDriver, type Probe, type Target } from './dataplane-load.ts';
import { RemoteLoad } from './dataplane-client.ts';
import {
  Children, clockTicksPerSecond, cpuSecondsOf, makePeerCerts, memoryOf, nginxStreamSupport, startHaproxy, startNginx, startRustH2, startStunnel, which,
  type ProxyPair, type TrackedChild,
} from './dataplane-peers.ts';

const HERE = dirname(fileURLToPath(import.meta.url));
const ADDR = {
  controller: '127.0.107.1',
  agentA: '127.0.107.2',
  agentB: '127.0.107.3',
  client: '127.0.107.12',
  server: '127.0.107.13',
  stunnelClient: '127.0.107.22',
  stunnelServer: '127.0.107.23',
  nginxClient: '127.0.107.32',
  nginxServer: '127.0.107.33',
  haproxyClient: '127.0.107.42',
  haproxyServer: '127.0.107.43',
  rustH2Client: '127.0.107.52',
  rustH2Server: '127.0.107.53',
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
/**
 * The capture path: the whole bench runs in a network namespace of its own
 * (NETNS_PREFIX<pid>-host), where agent A may install iptables rules without
 * touching the machine's. The server gets CAPTURE_SERVER there, an address
 * outside 127.0.0.0/8 (the rules never capture loopback destinations), and the
 * capture client runs as CAPTURE_UID, registered as a workload on node-a.
 */
const NETNS_PREFIX = 'ambit-bench-';
const CAPTURE_SERVER = '10.107.0.13';
const CAPTURE_UID = 65534;
/** Agent A's capture ports (fixed: the iptables rules name them; the namespace is the bench's alone). */
const CAPTURE_PORTS = ['--hbone-port', '15008', '--outbound-port', '15001', '--inbound-plaintext-port', '15006'];

/**
 * Creates the bench's network namespace, runs this script again inside it
 * (with --in-netns) and deletes the namespace when that run ends. Resolves
 * with the inner run's exit code.
 */
async function runInNetns(argv: readonly string[]): Promise<number> {
  const ip = (args: string[]): { ok: boolean; err: string } => {
    const r = spawnSync('ip', args, { encoding: 'utf8', timeout: 10_000 });
    return { ok: r.status === 0, err: `${r.stderr ?? ''}${r.error?.message ?? ''}`.trim() };
  };
  // Namespaces of earlier runs that were killed before their clean-up.
  const list = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout ?? '';
  for (const line of list.split('\n')) {
    const m = new RegExp(`^(${NETNS_PREFIX}(\\d+)-\\S+)`).exec(line);
    if (!m?.[1] || Number(m[2]) === process.pid) continue;
    try {
      process.kill(Number(m[2]), 0);
    } catch {
      ip(['netns', 'del', m[1]]);
    }
  }
  const ns = `${NETNS_PREFIX}${process.pid}-host`;
  const steps = [
    ['netns', 'add', ns],
    ['-n', ns, 'link', 'set', 'lo', 'up'],
    // On lo, but outside 127.0.0.0/8: the capture rules see it as a mesh destination.
    ['-n', ns, 'addr', 'add', `${CAPTURE_SERVER}/32`, 'dev', 'lo'],
  ];
  for (const step of steps) {
    const r = ip(step);
    if (!r.ok) {
      ip(['netns', 'del', ns]);
      throw new Error(`ip ${step.join(' ')} failed: ${r.err}`);
    }
  }
  log(`running inside network namespace ${ns}`);
  try {
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, ...process.execArgv, fileURLToPath(import.meta.url), ...argv, '--in-netns', ns], { stdio: 'inherit' });
    const forward = (sig: NodeJS.Signals): void => {
      child.kill(sig);
    };
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, forward);
    const code = await new Promise<number>((resolve) => child.once('exit', (c, sig) => resolve(c ?? (sig ? 130 : 1))));
    return code;
  } finally {
    ip(['netns', 'del', ns]);
  }
}

/** Agent A's explicit upstream listener: connections to agentA:UPSTREAM_PORT are the client workload's, to the server. */
const UPSTREAM_PORT = 19080;
/** The whole bench stops starting new measurements after this long (setup included). */
const TIME_BUDGET_MS = 270_000;
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

const PATHS = ['direct', 'tunnel', 'socks5', 'capture', 'rust-h2', 'stunnel', 'nginx', 'haproxy'] as const;
type PathName = (typeof PATHS)[number];
/** Ambit's entry points: each one is held to the targets. */
const AMBIT: readonly PathName[] = ['tunnel', 'socks5', 'capture'];
/**
 * Baselines: measured and reported, never chosen as the best peer. rust-h2
 * pools its HTTP/2 connection as Ambit does, so it is the floor of Ambit's
 * own transport, not a proxy a user would put in its place.
 */
const BASELINES: readonly PathName[] = ['rust-h2'];
/** The peers: TLS proxies that make one mTLS connection per client connection. */
const PEERS: readonly PathName[] = ['stunnel', 'nginx', 'haproxy'];
/** Idle and after-the-runs RSS limits of one agent with its data plane. */
const RSS_IDLE_MIB = 80;
const RSS_AFTER_MIB = 96;

interface PathUnderTest {
  readonly name: PathName;
  readonly target: Target;
  /** Proxy processes on this path: their CPU and memory are counted. */
  readonly procs: readonly { readonly label: string; readonly pid: number }[];
  /** Where the client runs: in the bench process, or (capture) as the workload uid in a process of its own. */
  readonly load: LoadDriver;
  /** The client process when it is not the bench's own (its CPU counts as the endpoints'). */
  readonly clientPid?: number;
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

const USAGE = `Usage: node bench/dataplane.ts [options]
  --quick             a smoke run (about 40 s): 1 run, 32 MiB, 300 rounds, 1 s of new connections;
                      the figures mean little, the run shows every path works
  --runs N            repetitions of each measurement; the median is reported (default 3)
  --paths LIST        comma-separated subset of ${PATHS.join(',')} (default: all available)
  --mib N             MiB sent in the throughput runs (default 256)
  --rounds N          timed echo round trips (default 2000)
  --rate-seconds N    length of one new-connections run (default 3)
  --concurrency N     concurrent clients in the new-connections run (default 16)
  --cpu-prof DIR      run the agents with --cpu-prof, profiles written to DIR at exit
  --agent-arg ARG     extra ambit-agent argument (repeatable)
  --agent-env K=V     extra environment variable for both agents (repeatable), e.g. NODE_OPTIONS=--perf-basic-prof
  --agent-logs DIR    also write each agent's stderr (JSON logs, access log included) to DIR/<node>.log
  --from-source       run the controller and agents from the TypeScript sources instead of
                      building dist/ first and running that (the default, as shipped)
The capture path needs root: the bench then runs itself again inside a network namespace of its
own (${NETNS_PREFIX}<pid>-host, passing --in-netns NAME) and deletes it at the end; without root
it skips capture.
`;

/** A process's command name ("" once it is gone). */
function commOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

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

/** Spawns the bench server on `host`; resolves with its port once it listens. */
async function startServer(children: Children, host: string): Promise<{ proc: TrackedChild; port: number }> {
  const proc = children.spawn(process.execPath, [join(HERE, 'dataplane-server.ts'), host], { stdio: ['pipe', 'pipe', 'pipe'] });
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
      quick: { type: 'boolean' },
      'in-netns': { type: 'string' },
      'from-source': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  const quick = values.quick === true;
  const inNetns = values['in-netns'];
  const preSkipped: string[] = [];
  const wantCapture = (values.paths ?? PATHS.join(',')).split(',').map((x) => x.trim()).includes('capture');
  if (wantCapture && !inNetns) {
    if (process.getuid?.() !== 0) preSkipped.push(`capture: needs root (a network namespace and iptables rules); running as uid ${process.getuid?.()}`);
    else {
      process.exitCode = await runInNetns(process.argv.slice(2));
      return;
    }
  }
  const runs = intArg(values.runs, quick ? 1 : 3, 1, 9, '--runs');
  const totalBytes = intArg(values.mib, quick ? 32 : 256, 1, 4096, '--mib') * MiB;
  const rounds = intArg(values.rounds, quick ? 300 : 2000, 10, 100_000, '--rounds');
  const rateMs = intArg(values['rate-seconds'], quick ? 1 : 3, 1, 30, '--rate-seconds') * 1000;
  const concurrency = intArg(values.concurrency, 16, 1, 256, '--concurrency');
  /** Untimed new connections on each path before the timed runs. */
  const connWarmupMs = quick ? 300 : 1_000;
  // What ships is the compiled JavaScript (dist/, `npm run build`), so that is
  // what is measured: running from source through type stripping adds about
  // 30 MiB of RSS and 5 MiB of heap to every Node.js process (measured with
  // the agent's module graph), which would count against the agents but not
  // against the peers.
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
    ? { agent: join(ROOT, 'agent', 'main.ts'), controller: join(ROOT, 'controller', 'main.ts') }
    : { agent: join(ROOT, 'dist', 'agent', 'main.js'), controller: join(ROOT, 'dist', 'controller', 'main.js') };
  const wanted = new Set((values.paths ?? PATHS.join(',')).split(',').map((s) => s.trim()).filter(Boolean));
  for (const p of wanted) if (!(PATHS as readonly string[]).includes(p)) throw new Error(`unknown path ${p}; known: ${PATHS.join(', ')}`);
  wanted.add('direct'); // the baseline every ratio needs
  if (!inNetns) wanted.delete('capture');

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
  const skipped: string[] = [...preSkipped];
  let captureClient: RemoteLoad | undefined;
  try {
    // ------------------------------------------------------------ setup
    // The capture rules leave loopback destinations alone (local traffic is
    // not mesh traffic), so inside the namespace the server has an address
    // outside 127.0.0.0/8.
    const serverHost = inNetns ? CAPTURE_SERVER : ADDR.server;
    const srv = await startServer(children, serverHost);
    server = srv.proc;
    const serverAt = { host: serverHost, port: srv.port };
    const paths: PathUnderTest[] = [{ name: 'direct', target: { ...serverAt, localAddress: ADDR.client }, procs: [], load: InProcessLoad }];

    if (AMBIT.some((n) => wanted.has(n))) {
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
      await ok(['workload', 'register', '--name', 'server', '--namespace', 'default', '--service-account', 'server', '--node', 'node-b', '--address', serverHost, '--port', String(srv.port)]);
      await ok(['workload', 'register', '--name', 'client', '--namespace', 'default', '--service-account', 'client', '--node', 'node-a', '--address', ADDR.client]);
      // The capture client: a VM workload on node-a whose processes run as
      // CAPTURE_UID (the uid proves it; the address is node-a's).
      const capturing = wanted.has('capture');
      if (capturing) {
        await ok(['workload', 'register', '--name', 'capture-client', '--namespace', 'default', '--service-account', 'client', '--node', 'node-a', '--address', ADDR.agentA, '--uid', String(CAPTURE_UID)]);
        captureClient = new RemoteLoad(['setpriv', `--reuid=${CAPTURE_UID}`, `--regid=${CAPTURE_UID}`, '--clear-groups', process.execPath, join(HERE, 'dataplane-client.ts')]);
      }
      const captureArgs = capturing ? ['--capture', 'transparent', '--capture-mode', 'vm', ...CAPTURE_PORTS] : [];
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
          extra: [...ports, ...captureArgs, '--upstreams', `default/client:${UPSTREAM_PORT}=${serverHost}:${srv.port}`, ...extra] }),
        startAgent({ node: 'node-b', address: ADDR.agentB, controller: ctl.address, dataDir: join(tmp, 'agent-b'), join: tokenB, env, main: mains.agent, extra: [...ports, ...extra] }),
      ]);
      for (const ag of [a, b]) {
        children.track(ag.proc.child);
        agents.push(ag);
        quietStderr(ag, values['agent-logs'] ? join(values['agent-logs'], `${ag.node}.log`) : undefined);
      }
      for (const ag of agents) await eventually(async () => (await httpGet(hostPortOf(ag.ready), '/healthz/ready')).status === 200, `${ag.node} ready`, 30_000);
      // Every byte goes through each agent's ambit-dataplane child: its CPU and
      // memory are the agent's too.
      const dataplaneOf = (ag: typeof a): { label: string; pid: number }[] => {
        // By name: the agent may have a short-lived helper child too (iptables while capture is set up).
        const pids = childPids(ag.proc.child.pid ?? 0).filter((pid) => commOf(pid) === 'ambit-dataplane');
        if (pids.length !== 1) throw new Error(`${ag.node} should have one ambit-dataplane child, has ${pids.length}`);
        return [{ label: `agent-${ag.node.slice(-1)}-dataplane`, pid: pids[0]! }];
      };
      const procs = [{ label: 'agent-a', pid: a.proc.child.pid ?? 0 }, { label: 'agent-b', pid: b.proc.child.pid ?? 0 }, ...dataplaneOf(a), ...dataplaneOf(b)];
      const entries: { name: PathName; target: Target }[] = [
        { name: 'tunnel', target: { host: ADDR.agentA, port: UPSTREAM_PORT, localAddress: ADDR.client } },
        { name: 'socks5', target: { ...hostPortOf(a.socks), localAddress: ADDR.client, socks: { user: 'default/client', to: serverAt } } },
      ];
      for (const e of entries) {
        if (!wanted.has(e.name)) continue;
        await eventually(async () => (await InProcessLoad.probeOnce(e.target, 3_000), true), `a first connection through ${e.name}`, 30_000);
        paths.push({ name: e.name, target: e.target, procs, load: InProcessLoad });
      }
      if (captureClient) {
        // No source address: the uid owning the socket proves the workload.
        const target = { ...serverAt };
        const remote = captureClient;
        await eventually(async () => (await remote.probeOnce(target, 3_000), true), 'a first connection through capture', 30_000);
        paths.push({ name: 'capture', target, procs, load: remote, clientPid: remote.pid });
      }
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
        await eventually(async () => (await InProcessLoad.probeOnce(target, 3_000), true), `a first connection through ${name}`, 15_000);
        paths.push({ name, target, procs: pair.procs, load: InProcessLoad });
      } catch (err) {
        skipped.push(`${name}: failed to start: ${(err as Error).message}`);
      }
    };
    const upstream = serverAt;
    if (certs) {
      await addPair('rust-h2', rustH2Missing(),
        () => startRustH2(children, RUST_H2_BINARY, certs, { clientSide: ADDR.rustH2Client, serverSide: ADDR.rustH2Server, upstream }));
      const stunnel = which('stunnel') ?? which('stunnel4');
      await addPair('stunnel', stunnel ? undefined : 'not installed',
        () => startStunnel(children, stunnel!, certsDir, certs, { clientSide: ADDR.stunnelClient, serverSide: ADDR.stunnelServer, upstream }));
      const nginx = which('nginx');
      const support = nginx ? nginxStreamSupport(nginx) : { missing: 'not installed' };
      await addPair('nginx', support.missing,
        () => startNginx(children, nginx!, support.loadModule, certsDir, certs, { clientSide: ADDR.nginxClient, serverSide: ADDR.nginxServer, upstream }));
      const haproxy = which('haproxy');
      await addPair('haproxy', haproxy ? undefined : 'not installed (Debian: apt-get install haproxy)',
        () => startHaproxy(children, haproxy!, certsDir, certs, { clientSide: ADDR.haproxyClient, serverSide: ADDR.haproxyServer, upstream }));
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
      const client0 = p.clientPid ? cpuSecondsOf(p.clientPid, clk) : 0;
      const r = await p.load.throughput(p.target, totalBytes, 1, Math.min(30_000, remainingMs()));
      const cpu1 = process.cpuUsage(cpu0);
      const proxy = p.procs.reduce((s, pr) => s + cpuSecondsOf(pr.pid, clk), 0) - proxy0;
      const client = p.clientPid ? cpuSecondsOf(p.clientPid, clk) - client0 : 0;
      const endpoints = (cpu1.user + cpu1.system) / 1e6 + (cpuSecondsOf(srv.proc.pid, clk) - srv0) + client;
      S(p).tp1.push(r.mibPerSecond);
      S(p).cpuProxy.push(proxy / (r.bytes / GiB));
      S(p).cpuAll.push((proxy + endpoints) / (r.bytes / GiB));
    });
    await phase('throughput 4 conns', 5_000, async (p) => {
      S(p).tp4.push((await p.load.throughput(p.target, totalBytes, 4, Math.min(30_000, remainingMs()))).mibPerSecond);
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
      const probes = new Map<PathUnderTest, Probe>();
      const taken = new Map<PathUnderTest, number[]>();
      for (const p of paths) {
        let probe: Probe | undefined;
        try {
          probe = await p.load.openProbe(p.target, 1024, 5_000);
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
    log(`new connections: ${rateMs / 1000} s at concurrency ${concurrency} (x${runs}), after ${connWarmupMs / 1000} s untimed on each path`);
    // Untimed first: until now each path has opened only a handful of
    // connections, and the first timed run came out low for the paths run
    // by Node.js processes (most likely their JIT compiling the
    // per-connection code).
    for (const p of paths) {
      if (remainingMs() < connWarmupMs + 1_000) break;
      await p.load.connectionRate(p.target, connWarmupMs, concurrency, 200_000, 5_000).catch(() => undefined);
      await new Promise((res) => setTimeout(res, 300));
    }
    await phase('new connections', rateMs + 3_000, async (p) => {
      const each0 = p.procs.map((pr) => cpuSecondsOf(pr.pid, clk));
      const r = await p.load.connectionRate(p.target, rateMs, concurrency, 200_000, 5_000);
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
    type Key = 'tp1' | 'tp4' | 'p50' | 'p99' | 'rate' | 'failures' | 'cpuProxy' | 'cpuAll' | 'cpuConn' | 'rss' | 'added50' | 'added99';
    const value = (n: PathName, k: Key): number => {
      if (k === 'added50' || k === 'added99') {
        if (n === 'direct') return Number.NaN;
        const own = med.get(n);
        return k === 'added50' ? (own?.p50 ?? Number.NaN) - direct.p50 : (own?.p99 ?? Number.NaN) - direct.p99;
      }
      return med.get(n)?.[k] ?? Number.NaN;
    };
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
    const rows: { label: string; k: Key; digits: number; higher: boolean }[] = [
      { label: 'throughput, 1 conn (MiB/s)', k: 'tp1', digits: 0, higher: true },
      { label: 'throughput, 4 conns (MiB/s)', k: 'tp4', digits: 0, higher: true },
      { label: 'latency p50, 1 KiB echo (µs)', k: 'p50', digits: 0, higher: false },
      { label: 'latency p99, 1 KiB echo (µs)', k: 'p99', digits: 0, higher: false },
      { label: 'added p50 over direct (µs)', k: 'added50', digits: 0, higher: false },
      { label: 'added p99 over direct (µs)', k: 'added99', digits: 0, higher: false },
      { label: `new conns/s (concurrency ${concurrency})`, k: 'rate', digits: 0, higher: true },
      { label: 'CPU ms per new conn, proxies', k: 'cpuConn', digits: 3, higher: false },
      { label: 'new conn failures (all runs)', k: 'failures', digits: 0, higher: false },
      { label: 'CPU s/GiB, proxies', k: 'cpuProxy', digits: 2, higher: false },
      { label: 'CPU s/GiB, proxies+client+server', k: 'cpuAll', digits: 2, higher: false },
      { label: 'proxy RSS after runs (MiB)', k: 'rss', digits: 1, higher: false },
    ];
    const names = paths.map((p) => p.name);
    const ambitHere = names.filter((n) => AMBIT.includes(n));
    const W = 34;
    const C = 10;
    const out: string[] = [];
    out.push('');
    out.push(`Ambit data plane benchmark — Node ${process.version}, ${availableParallelism()} CPUs (${cpus()[0]?.model ?? '?'}), load average ${loadBefore.map((l) => l.toFixed(2)).join(' ')} before, ${loadAfter.map((l) => l.toFixed(2)).join(' ')} after`);
    out.push(`Node.js processes run ${fromSource ? 'from source (type stripping: about 30 MiB more RSS each)' : 'the built JavaScript (dist/), as shipped'}; each agent's ambit-dataplane child counts with it`);
    out.push(`${runs} run(s) per measurement${quick ? ' (--quick: a smoke run, not a measurement)' : ''}, median shown; throughput ${totalBytes / MiB} MiB; latency ${rounds} rounds after 200 warm-up, paths interleaved every ${LATENCY_BLOCK}; new connections ${rateMs / 1000} s at concurrency ${concurrency} after ${connWarmupMs / 1000} s untimed`);
    if (inNetns) out.push(`run inside network namespace ${inNetns} (the capture path's iptables rules live there)`);
    for (const s of skipped) out.push(`skipped ${s}`);
    out.push('');
    out.push(['metric'.padEnd(W), ...names.map((n) => n.padStart(C)), '  best peer'].join(''));
    for (const row of rows) {
      const cells = names.map((n) => fmt(value(n, row.k), row.digits).padStart(C));
      const bp = bestPeer(row.k, row.higher);
      out.push([row.label.padEnd(W), ...cells, bp.name && row.k !== 'failures' ? `  ${bp.name}` : ''].join(''));
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
    const seen = new Set<string>();
    for (const p of paths) for (const pr of p.procs) {
      if (seen.has(pr.label)) continue;
      seen.add(pr.label);
      const i = idleRss.get(pr.label);
      const m = rss.get(pr.label);
      out.push(`  ${pr.label.padEnd(18)} ${fmt(i?.rssMiB ?? Number.NaN, 1).padStart(7)} → ${fmt(m?.rssMiB ?? Number.NaN, 1).padStart(7)} MiB, peak ${fmt(m?.hwmMiB ?? Number.NaN, 1)} MiB`);
    }
    out.push('proxy CPU ms per new connection, by process (median of runs):');
    for (const p of paths) for (const pr of p.procs) {
      out.push(`  ${`${p.name}: ${pr.label}`.padEnd(30)} ${fmt(median(S(p).cpuConnBy.get(pr.label) ?? []), 3)}`);
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
    out.push(`targets (informational; the best peer of each metric among ${PEERS.join(', ')}):`);
    const verdict = (ok: boolean): string => (ok ? 'PASS' : 'FAIL');
    const line = (what: string, got: number, best: { name: PathName | undefined; v: number }, unit: string, digits: number, limit: number, atLeast: boolean): string => {
      const r = got / best.v;
      const ok = Number.isFinite(r) && (atLeast ? r >= limit : r <= limit);
      return `  ${what.padEnd(44)} ${fmt(got, digits)} vs ${fmt(best.v, digits)} ${unit} (${best.name ?? '-'}) = ${Number.isFinite(r) ? r.toFixed(2) : '-'}x  ${Number.isFinite(r) ? verdict(ok) : 'n/a'}`;
    };
    if (ambitHere.length === 0) out.push('  no Ambit entry point measured');
    else if (peersHere.length === 0) out.push('  no peer measured: the targets compare with the best peer, n/a');
    else {
      for (const n of ambitHere) {
        out.push(` ${n}:`);
        out.push(line('throughput, 1 conn >= 1.0x', value(n, 'tp1'), bestPeer('tp1', true), 'MiB/s', 0, 1.0, true));
        out.push(line('throughput, 4 conns >= 1.0x', value(n, 'tp4'), bestPeer('tp4', true), 'MiB/s', 0, 1.0, true));
        out.push(line('new connections/s >= 4x', value(n, 'rate'), bestPeer('rate', true), '/s', 0, 4.0, true));
        out.push(line('added p50 over direct <= 1.0x', value(n, 'added50'), bestPeer('added50', false), 'µs', 0, 1.0, false));
        out.push(line('added p99 over direct <= 1.2x', value(n, 'added99'), bestPeer('added99', false), 'µs', 0, 1.2, false));
        out.push(line('proxy CPU s/GiB <= 1.0x', value(n, 'cpuProxy'), bestPeer('cpuProxy', false), 's/GiB', 2, 1.0, false));
      }
      const r = med.get('rust-h2');
      if (r) {
        // Ambit's transport alone, natively: how far Ambit's own work is from it.
        const b = (k: Key, hi: boolean): number => value('rust-h2', k) / bestPeer(k, hi).v;
        out.push(` rust-h2 (baseline) vs best peer: throughput ${b('tp1', true).toFixed(2)}x, new connections/s ${b('rate', true).toFixed(2)}x, added p50 ${b('added50', false).toFixed(2)}x, CPU s/GiB ${b('cpuProxy', false).toFixed(2)}x`);
      }
    }
    if (agents.length > 0) {
      // Each agent with its data plane child: what a node pays for Ambit.
      out.push(` agent + data plane RSS (idle <= ${RSS_IDLE_MIB} MiB, after the runs <= ${RSS_AFTER_MIB} MiB):`);
      for (const ag of agents) {
        const tag = ag.node.slice(-1);
        const sum = (m: Map<string, { rssMiB: number }>): number => [`agent-${tag}`, `agent-${tag}-dataplane`].reduce((s, l) => s + (m.get(l)?.rssMiB ?? Number.NaN), 0);
        const i = sum(idleRss);
        const f = sum(rss);
        out.push(`  ${ag.node.padEnd(8)} idle ${fmt(i, 1)} MiB ${verdict(i <= RSS_IDLE_MIB)}, after ${fmt(f, 1)} MiB ${verdict(f <= RSS_AFTER_MIB)}`);
      }
    }
    out.push(`total time ${fmt((performance.now() - t0) / 1000, 1)} s`);
    process.stdout.write(`${out.join('\n')}\n`);
  } finally {
    // ------------------------------------------------------------ teardown
    await Promise.all(agents.map((a) => a.proc.stop('SIGTERM', 8_000).catch(() => undefined)));
    await controller?.proc.stop('SIGTERM', 5_000).catch(() => undefined);
    await Promise.all(pairs.map((p) => p.stop().catch(() => undefined)));
    captureClient?.stop();
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
