/**
 * Issue 6, promise 6 "Load without loss", with real processes: a controller
 * and two agents on loopback as two hosts (127.0.14.2 = node-a, 127.0.14.3 =
 * node-b), a client workload on node-a (test/soak/load-client.ts, a child
 * process, 127.0.14.12) and an echo server workload on node-b
 * (test/soak/echo-server.ts, a child process on 127.0.14.13). Traffic goes client → agent A (its upstream listener, or
 * SOCKS5) → HBONE (mTLS HTTP/2 CONNECT) → agent B → server.
 *
 * Every payload is checksummed end to end: the client sends a frame with the
 * SHA-256 of its payload, the server checks the digest of what it received
 * and echoes the bytes, the client checks the digest of what came back.
 *
 * Phase 1 (two rounds): ≥ 5,000 tunnelled connections open at once, a
 * payload through each, a clean close; agent RSS and file descriptors idle,
 * at the peak and after (each agent's together with its ambit-dataplane
 * child when it runs the native data path, the default where built). Phase 2: new connections back to back for
 * AMBIT_SOAK_SECONDS (default 60) at bounded concurrency, each with a random
 * payload of 1 B–256 KiB.
 *
 * Not part of `npm test` (.taprc excludes test/soak): run with
 * `npm run test:soak`. Knobs: AMBIT_SOAK_SECONDS (phase 2 length, default
 * 60), AMBIT_SOAK_CONNECTIONS (phase 1 connections; the promise is 5,000),
 * AMBIT_SOAK_ROUNDS (phase 1 rounds, default 2); the whole run takes about
 * 40 s plus AMBIT_SOAK_SECONDS, and npm run test:soak gives tap 420 s (raise
 * --timeout for longer runs). The client and the server
 * are child processes (test/soak/load-client.ts, test/soak/echo-server.ts):
 * this process only drives them and watches the agents.
 */
import t, { type Test as Tap } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ambitctl, childPids, eventually, hostPortOf, httpGet, metricValue, startAgent, startController, type RunningAgent, type RunningController } from '../e2e/harness.ts';
import type { EchoServerStats } from './echo-server.ts';
import type { LoadAnswer, LoadClientConfig, LoadRequest } from './load-client.ts';

/** CONNECT streams per pooled HBONE connection in ambit-dataplane (dataplane/src/outbound.rs). */
const MAX_STREAMS_PER_SESSION = 100;
const HERE = dirname(fileURLToPath(import.meta.url));
const CTL = '127.0.14.1';
const A = '127.0.14.2';
const B = '127.0.14.3';
const CLIENT_IP = '127.0.14.12';
const SERVER_IP = '127.0.14.13';
const SERVER_PORT = 8080;
/** Agent A's upstream listener: connections to A:UPSTREAM_PORT from the client's address are the client's, to the server. */
const UPSTREAM_PORT = 19480;
const SOCKS_USER = 'default/client';

function envInt(name: string, def: number, min: number, max: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return def;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`${name} must be an integer ${min}-${max}, got ${raw}`);
  return n;
}

/** Phase 1: connections held open at once (the promise: ≥ 5,000). */
const N = envInt('AMBIT_SOAK_CONNECTIONS', 5000, 10, 8000);
/** Phase 1: rounds (open N, push, close), to see whether memory after a round keeps growing. */
const ROUNDS = envInt('AMBIT_SOAK_ROUNDS', 2, 2, 20);
/** Phase 2: seconds of new connections. */
const SOAK_SECONDS = envInt('AMBIT_SOAK_SECONDS', 60, 1, 3600);
/** Phase 2: concurrent connection loops; every 4th goes through SOCKS5, the others through the upstream listener. */
const LOOPS = 32;
/** Phase 1 ramp: connections opened (and first echoed) at a time, so connect storms stay far below the listen backlogs (511 on the agent's listener). */
const RAMP_BATCH = 200;
/** Phase 1: payload pushes and closes in flight at a time. */
const PUSH_CONCURRENCY = 1000;
const KiB = 1024;
const MiB = 1024 * KiB;
// Memory bounds, per agent, chosen from measurements on a loaded 2-core
// machine (agents without coverage hooks; figures in the commit message):
//
// - RSS a round's N connections add at their peak, per connection:
//   (peak - RSS before the round) / N; for round 1 that is (peak - idle) / N.
//   Measured 38-68 KiB in round 1 (sockets, HTTP/2 streams, relay state,
//   connection records, data in flight), 14-24 KiB in round 2 (it reuses
//   what round 1 left allocated). Bound: 100 KiB.
// - RSS after close does not return to idle: V8 keeps its heap pages and the
//   native allocator its freed memory. It grows from round to round by less
//   each time, with V8's heap in use flat: over 10 rounds node-a's RSS after
//   close went +101, +77, +18, +22, +6, +14, +5, +5, +14 MiB; round 1 to 2
//   measured +46 to +128 MiB (at most 26 KiB per connection). Bound for round
//   to round: 48 KiB per connection (234 MiB for 5,000): a connection that
//   leaks a 64 KiB read buffer fails it.
// - Phase 2 is the finer leak check: tens of thousands of connections, never
//   more than LOOPS at once. RSS first rises to a working size (relayed
//   Buffers are collected with the heap; measured
//   +169 to +194 MiB over 60 s and over 150 s, 1,045-1,063 connections/s;
//   -29 to +15 MiB before that GC setting, at 571-630 connections/s), bound
//   RSS_PHASE2_WORKING_MAX; then it must stay level over the last third of
//   the phase, ~20,000 connections at 60 s: bound +48 MiB, i.e. a leak of a
//   few KiB per connection.
const RSS_PER_CONNECTION_MAX = 100 * KiB;
const RSS_ROUND_GROWTH_PER_CONNECTION_MAX = 48 * KiB;
const RSS_PHASE2_GROWTH_MAX = 48 * MiB;
/** Phase 2 may take RSS to a working size above phase 1's (see the test); measured up to +194 MiB. */
const RSS_PHASE2_WORKING_MAX = 320 * MiB;
/**
 * The children (agents, server, client) run without tap's NODE_OPTIONS hooks
 * (coverage collection): the agents' memory is measured as they run in
 * production, and coverage of a soak run is not wanted.
 */
const CLEAN_ENV = { NODE_OPTIONS: '' };

const root = mkdtempSync(join(tmpdir(), 'ambit-soak-'));
let ctl: RunningController | undefined;
let agentA: RunningAgent | undefined;
let agentB: RunningAgent | undefined;
let server: ChildProcess | undefined;
let client: LoadClient | undefined;

t.teardown(async () => {
  client?.stop();
  await Promise.all([agentA?.proc.stop(), agentB?.proc.stop()]);
  await ctl?.proc.stop();
  server?.stdin?.end();
  server?.kill();
  rmSync(root, { recursive: true, force: true });
});
// A set-up step that throws ends this process without the teardown: leave no
// agent or controller behind (the client and the server exit by themselves
// when this process goes away).
process.on('exit', () => {
  for (const c of [agentA?.proc.child, agentB?.proc.child, ctl?.proc.child, server, client?.child]) {
    if (c && c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  }
  rmSync(root, { recursive: true, force: true });
});

// ------------------------------------------------------------------ helpers

/** Resident set size of a process, in bytes (VmRSS from /proc). */
function rssOf(pid: number): number {
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * KiB;
}

function fdsOf(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

const mib = (bytes: number): string => `${(bytes / MiB).toFixed(1)} MiB`;
const kib = (bytes: number): string => `${(bytes / KiB).toFixed(1)} KiB`;

async function metric(agent: RunningAgent, name: string, labels: Record<string, string> = {}): Promise<number> {
  return metricValue((await httpGet(hostPortOf(agent.metrics), '/metrics')).body, name, labels);
}

/** What an agent's stderr said: access log lines (and those with an error), and its other warnings. */
interface LogCount {
  /** Lines that are not one whole JSON object (a write cut short). */
  malformed: number;
  malformedSamples: string[];
  access: number;
  accessErrors: number;
  accessErrorSamples: string[];
  warnings: string[];
}

/**
 * Replaces the harness's log collection (which parses and keeps every line)
 * with counting: tens of thousands of access log lines must cost this process
 * neither memory nor much CPU. Keeps the first few interesting lines.
 */
function countLogs(agent: RunningAgent): LogCount {
  const c: LogCount = { malformed: 0, malformedSamples: [], access: 0, accessErrors: 0, accessErrorSamples: [], warnings: [] };
  const stderr = agent.proc.child.stderr!;
  stderr.removeAllListeners('data');
  let buf = '';
  stderr.on('data', (d: string) => {
    buf += d;
    let start = 0;
    let i: number;
    while ((i = buf.indexOf('\n', start)) >= 0) {
      const line = buf.slice(start, i);
      start = i + 1;
      // A log line cut short merges with the next: not one whole {"level":...} object.
      if (line.includes('"level":"') && (!line.startsWith('{"level":"') || !line.endsWith('}') || line.indexOf('{"level":"', 1) > 0)) {
        c.malformed++;
        if (c.malformedSamples.length < 3) c.malformedSamples.push(line.slice(0, 300));
      }
      if (line.includes('"log":"access"')) {
        c.access++;
        if (!line.includes('"error":""')) {
          c.accessErrors++;
          if (c.accessErrorSamples.length < 5) c.accessErrorSamples.push(line);
        }
      } else if (/"level":"(warn|error|fatal)"/.test(line) && c.warnings.length < 20) {
        c.warnings.push(line);
      }
    }
    buf = buf.slice(start);
  });
  return c;
}

/** The echo server child: resolves once it listens. */
async function startServer(): Promise<ChildProcess> {
  const child = spawn(process.execPath, [join(HERE, 'echo-server.ts'), SERVER_IP, String(SERVER_PORT)], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...CLEAN_ENV } });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-4000)));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`echo server did not start: ${stderr}`)), 10_000);
    child.stdout!.setEncoding('utf8').once('data', () => {
      clearTimeout(timer);
      resolve();
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`echo server exited (${code}): ${stderr}`));
    });
  });
  return child;
}

/** Asks the echo server for its counters. */
function serverStats(child: ChildProcess): Promise<EchoServerStats> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => {
      child.stdout!.off('data', onData);
      reject(new Error('echo server did not answer "stats"'));
    }, 5_000);
    const onData = (d: string): void => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      child.stdout!.off('data', onData);
      resolve(JSON.parse(buf.slice(0, nl)) as EchoServerStats);
    };
    child.stdout!.on('data', onData);
    child.stdin!.write('stats\n');
  });
}

/** The load client child: one request at a time over IPC. */
class LoadClient {
  readonly child: ChildProcess;
  #next = 1;
  readonly #pending = new Map<number, (a: LoadAnswer) => void>();
  stderr = '';

  constructor(cfg: LoadClientConfig) {
    this.child = spawn(process.execPath, [join(HERE, 'load-client.ts'), JSON.stringify(cfg)], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'], env: { ...process.env, ...CLEAN_ENV } });
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.stderr = (this.stderr + d).slice(-4000)));
    this.child.on('message', (a: LoadAnswer) => {
      this.#pending.get(a.id)?.(a);
      this.#pending.delete(a.id);
    });
    this.child.once('exit', (code, signal) => {
      const a = { error: `load client exited (${code ?? signal}): ${this.stderr}`, ok: 0, viaSocks: 0, frames: 0, bytes: 0, seconds: 0, held: 0, failures: { resets: 0, other: 0, samples: [] } };
      for (const [id, resolve] of this.#pending) resolve({ id, ...a });
      this.#pending.clear();
    });
  }

  /** Runs one request; the answer says what failed (a request that could not run at all rejects). */
  async run(req: LoadRequest, timeoutMs: number): Promise<LoadAnswer> {
    const id = this.#next++;
    const a = await new Promise<LoadAnswer>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`load client did not answer ${req.op} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, (ans) => {
        clearTimeout(timer);
        resolve(ans);
      });
      this.child.send({ id, ...req });
    });
    if (a.error) throw new Error(`load client ${req.op}: ${a.error}`);
    return a;
  }

  stop(): void {
    if (this.child.connected) this.child.disconnect();
  }
}

const failed = (a: LoadAnswer): number => a.failures.resets + a.failures.other;
const why = (a: LoadAnswer): string => a.failures.samples.join('; ');

interface AgentSample {
  readonly rss: number;
  readonly fds: number;
  /** V8 heap in use and memory outside it (Buffers, from the agent's own process metrics): where RSS goes. */
  readonly heapUsed: number;
  readonly heapTotal: number;
  readonly external: number;
}

/**
 * The agent and its ambit-dataplane child, if it runs one (the native data
 * path holds the inbound sockets and the upstream listeners' connections):
 * what the agent costs the host is both processes.
 */
function agentPids(agent: RunningAgent): number[] {
  const pid = agent.proc.child.pid!;
  return [pid, ...childPids(pid)];
}

async function sample(agent: RunningAgent): Promise<AgentSample> {
  const pids = agentPids(agent);
  const rss = pids.reduce((sum, p) => sum + rssOf(p), 0);
  const fds = pids.reduce((sum, p) => sum + fdsOf(p), 0);
  const body = (await httpGet(hostPortOf(agent.metrics), '/metrics')).body;
  return { rss, fds, heapUsed: metricValue(body, 'nodejs_heap_size_used_bytes'), heapTotal: metricValue(body, 'nodejs_heap_size_total_bytes'), external: metricValue(body, 'nodejs_external_memory_bytes') };
}

async function sampleAll(): Promise<Map<RunningAgent, AgentSample>> {
  return new Map(await Promise.all(agents.map(async (a) => [a, await sample(a)] as const)));
}

const memText = (s: AgentSample): string => `RSS ${mib(s.rss)} (heap ${mib(s.heapUsed)} used of ${mib(s.heapTotal)}, external ${mib(s.external)})`;

/**
 * An agent's descriptors beyond its pooled HBONE connections: each pooled
 * connection (a socket on agent A, and the matching accepted socket on agent
 * B) stays open up to 60 s after its last stream, by design, so it is not a
 * leak. Everything else must go back to the idle count.
 */
async function fdsBeyondPool(agent: RunningAgent): Promise<{ fds: number; pool: number; beyond: number }> {
  const pool = await metric(agentA!, 'ambit_tunnel_pool_connections');
  const fds = agentPids(agent).reduce((sum, p) => sum + fdsOf(p), 0);
  return { fds, pool, beyond: fds - pool };
}

// ------------------------------------------------------------------ set-up

const testStart = performance.now();
{
  // Each process on the path holds N sockets: the children inherit this limit.
  const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
  const limit = m?.[1] === 'unlimited' ? Infinity : Number(m?.[1] ?? 0);
  if (limit < N + 1000) throw new Error(`the open files limit is ${limit}: ${N} connections need at least ${N + 1000} (ulimit -n)`);
}
server = await startServer();
ctl = await startController(join(root, 'ctl'), [], CTL);
async function ok(args: string[]): Promise<string> {
  const r = await ambitctl(ctl!, args);
  if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout.trim();
}
await ok(['workload', 'register', '--name', 'server', '--service-account', 'server', '--node', 'node-b', '--address', SERVER_IP, '--port', String(SERVER_PORT)]);
await ok(['workload', 'register', '--name', 'client', '--service-account', 'client', '--node', 'node-a', '--address', CLIENT_IP]);
const tokenA = await ok(['node', 'token', 'create', '--node', 'node-a']);
const tokenB = await ok(['node', 'token', 'create', '--node', 'node-b']);
const ports = ['--hbone-port', '0', '--socks-port', '0', '--admin-port', '0', '--metrics-port', '0', '--ready-port', '0', '--drain-timeout', '2s'];
// allSettled: when one agent fails to start, the other is known (and stopped) too.
for (const r of await Promise.allSettled([
  startAgent({ node: 'node-a', address: A, controller: ctl.address, dataDir: join(root, 'a'), join: tokenA, env: CLEAN_ENV,
    extra: [...ports, '--upstreams', `default/client:${UPSTREAM_PORT}=${SERVER_IP}:${SERVER_PORT}`] }).then((a) => (agentA = a)),
  startAgent({ node: 'node-b', address: B, controller: ctl.address, dataDir: join(root, 'b'), join: tokenB, env: CLEAN_ENV, extra: ports }).then((b) => (agentB = b)),
])) if (r.status === 'rejected') throw r.reason;
const agents = [agentA!, agentB!] as const;
const logs = new Map(agents.map((a) => [a, countLogs(a)]));
for (const ag of agents) await eventually(async () => (await httpGet(hostPortOf(ag.ready), '/healthz/ready')).status === 200, `${ag.node} ready`, 30_000);
client = new LoadClient({
  clientIp: CLIENT_IP, upstream: { host: A, port: UPSTREAM_PORT }, socks: agents[0].socks, socksUser: SOCKS_USER, server: { host: SERVER_IP, port: SERVER_PORT },
});
const lc = client;
// The first connection waits for node-a to learn node-b and for the certificates.
await eventually(async () => (await lc.run({ op: 'once', maxPayload: 1024 }, 30_000)).ok === 1, 'a first connection through the tunnel', 30_000);
// Warm-up: a few hundred connections so the idle baseline already includes
// what the first load allocates once (JIT code, buffer pools, HBONE sessions).
{
  const w = await lc.run({ op: 'warmup', count: 400, concurrency: 50, maxPayload: 16 * KiB }, 120_000);
  if (failed(w) > 0) throw new Error(`warm-up failed: ${why(w)}`);
}
// Every connection and pooled stream closed (streams close on END_STREAM both
// ways; relay.ts's 5 s fallback destroy is only for those that do not).
await allClosed('the warm-up');

// Counters from here on: the checks at the end compare what changed since.
const base = {
  server: await serverStats(server),
  closedA: await metric(agents[0], 'istio_tcp_connections_closed_total', { reporter: 'source' }),
  closedB: await metric(agents[1], 'istio_tcp_connections_closed_total', { reporter: 'destination' }),
  access: new Map(agents.map((a) => [a, logs.get(a)!.access])),
};
const idle = await sampleAll();
const idleBeyond = new Map<RunningAgent, number>();
for (const ag of agents) idleBeyond.set(ag, (await fdsBeyondPool(ag)).beyond);
t.comment(`set-up and warm-up done in ${((performance.now() - testStart) / 1000).toFixed(1)} s; phase 1: ${ROUNDS} rounds of ${N} connections, phase 2: ${SOAK_SECONDS} s (AMBIT_SOAK_SECONDS)`);
for (const ag of agents) t.comment(`${ag.node} idle: ${memText(idle.get(ag)!)}, ${idle.get(ag)!.fds} fds`);

/** Connections the test completed through the mesh since the warm-up: each was opened and closed on both agents. */
let connectionsDone = 0;
/** Echo frames the server verified since the warm-up. */
let framesDone = 0;

/** Descriptors may exceed the idle count by this many once the load is gone. */
const FD_MARGIN = 10;

async function allClosed(what: string): Promise<void> {
  await eventually(async () => (await metric(agentA!, 'ambit_connections_active', { direction: 'outbound' })) === 0, `node-a has no active connection after ${what}`, 30_000);
  await eventually(async () => (await metric(agentB!, 'ambit_connections_active', { direction: 'inbound' })) === 0, `node-b has no active connection after ${what}`, 30_000);
  await eventually(async () => (await metric(agentA!, 'ambit_tunnel_pool_streams')) === 0, `node-a has no open pooled stream after ${what}`, 30_000);
}

/** Waits until each agent's descriptors beyond its pooled HBONE connections are back to the idle count (fails the test if not within 30 s). */
async function fdsReleased(tt: Tap, what: string): Promise<Map<RunningAgent, { fds: number; pool: number; beyond: number }>> {
  const out = new Map<RunningAgent, { fds: number; pool: number; beyond: number }>();
  for (const ag of agents) {
    // relay.ts destroys a finished HTTP/2 stream 5 s after the relay ends: allow for it.
    let f: { fds: number; pool: number; beyond: number };
    try {
      f = await eventually(async () => {
        const x = await fdsBeyondPool(ag);
        return x.beyond <= idleBeyond.get(ag)! + FD_MARGIN ? x : undefined;
      }, `${ag.node} file descriptors released after ${what}`, 30_000);
    } catch {
      f = await fdsBeyondPool(ag);
    }
    tt.ok(f.beyond <= idleBeyond.get(ag)! + FD_MARGIN,
      `${ag.node}: file descriptors released after ${what}: ${f.fds} open, ${f.pool} of them pooled HBONE connections (kept up to 60 s idle, by design); idle ${idle.get(ag)!.fds} with ${idle.get(ag)!.fds - idleBeyond.get(ag)!} pooled`);
    out.set(ag, f);
  }
  return out;
}

// ------------------------------------------------------------------ phase 1

/** RSS after close of each round, to see it does not keep growing. */
const rssAfterRounds = new Map<RunningAgent, number[]>(agents.map((a) => [a, []]));

for (let round = 1; round <= ROUNDS; round++) {
  await t.test(`phase 1, round ${round}: ${N} concurrent tunnelled connections, checksummed, closed cleanly`, async (t) => {
    const start = performance.now();
    const before = round === 1 ? idle : await sampleAll();
    // Ramp: RAMP_BATCH connections at a time, each proven end to end by a first echo, all held open.
    const ramp = await lc.run({ op: 'ramp', count: N, batch: RAMP_BATCH, maxPayload: 2 * KiB }, 300_000);
    framesDone += ramp.frames;
    t.equal(failed(ramp), 0, `every connection opened and echoed its first frame (${why(ramp)})`);
    t.equal(ramp.held, N, `${N} connections held open`);
    if (failed(ramp) > 0) {
      await lc.run({ op: 'close', concurrency: PUSH_CONCURRENCY }, 120_000);
      return;
    }

    // The peak: every connection is open on both agents at once.
    const activeA = await metric(agentA!, 'ambit_connections_active', { direction: 'outbound' });
    const activeB = await metric(agentB!, 'ambit_connections_active', { direction: 'inbound' });
    const streams = await metric(agentA!, 'ambit_tunnel_pool_streams');
    const pooled = await metric(agentA!, 'ambit_tunnel_pool_connections');
    t.ok(activeA >= N, `node-a ambit_connections_active{direction="outbound"} ${activeA} >= ${N}`);
    t.ok(activeB >= N, `node-b ambit_connections_active{direction="inbound"} ${activeB} >= ${N}`);
    t.ok(streams >= N, `node-a ambit_tunnel_pool_streams ${streams} >= ${N} (on ${pooled} pooled HBONE connections)`);
    // A burst waiting on one dial must not overfill it: at most MAX_STREAMS_PER_SESSION streams each.
    t.ok(pooled >= Math.ceil(N / MAX_STREAMS_PER_SESSION), `${pooled} pooled HBONE connections carry ${streams} streams: none over ${MAX_STREAMS_PER_SESSION}`);
    const atPeak = await sampleAll();

    // A payload through each one, while all are open.
    const push = await lc.run({ op: 'push', concurrency: PUSH_CONCURRENCY, maxPayload: 64 * KiB }, 300_000);
    framesDone += push.frames;
    t.equal(failed(push), 0, `every connection echoed a second frame of 1 B-64 KiB intact while all were open (${why(push)})`);
    const afterPush = await sampleAll();
    // The peak: the larger of the two samples (before and after the payloads).
    const peak = new Map(agents.map((a) => {
      const s1 = atPeak.get(a)!;
      const s2 = afterPush.get(a)!;
      return [a, s2.rss > s1.rss ? s2 : s1];
    }));

    // Clean close of all of them: no reset anywhere.
    const close = await lc.run({ op: 'close', concurrency: PUSH_CONCURRENCY }, 120_000);
    connectionsDone += close.ok;
    t.equal(close.failures.resets, 0, `no connection was reset (${why(close)})`);
    t.equal(failed(close), 0, `every connection closed cleanly: the server's FIN, then ours (${why(close)})`);
    const elapsed = (performance.now() - start) / 1000;

    await allClosed(`round ${round}`);
    const released = await fdsReleased(t, `round ${round}`);
    const after = await sampleAll();

    t.comment(`round ${round}: ${N} connections opened in ${ramp.seconds.toFixed(1)} s, ${mib(ramp.bytes + push.bytes)} echoed (each way), all closed after ${elapsed.toFixed(1)} s; peak: node-a ${activeA} outbound, node-b ${activeB} inbound, ${streams} streams on ${pooled} HBONE connections`);
    for (const ag of agents) {
      const i = idle.get(ag)!;
      const p = peak.get(ag)!;
      const a = after.get(ag)!;
      const r = released.get(ag)!;
      const bf = before.get(ag)!;
      const perConnIdle = (p.rss - i.rss) / N;
      const perConnRound = (p.rss - bf.rss) / N;
      rssAfterRounds.get(ag)!.push(a.rss);
      t.comment(`${ag.node}: idle ${memText(i)}; before the round ${memText(bf)}; peak ${memText(p)}; after close ${memText(a)}`);
      t.comment(`${ag.node}: RSS per connection at the peak ${kib(perConnIdle)} over idle, ${kib(perConnRound)} over the start of the round; fds idle ${i.fds}, peak ${p.fds}, after ${r.fds} (${r.pool} pooled HBONE connections)`);
      t.ok(perConnRound < RSS_PER_CONNECTION_MAX, `${ag.node}: RSS the ${N} connections added at their peak, ${kib(perConnRound)} per connection < ${kib(RSS_PER_CONNECTION_MAX)}`);
    }
  });
}

await t.test('phase 1: agent memory after close does not grow by a round\'s worth', async (t) => {
  for (const ag of agents) {
    const after = rssAfterRounds.get(ag)!;
    t.equal(after.length, ROUNDS, `${ag.node}: every round measured`);
    for (let i = 1; i < after.length; i++) {
      const growth = after[i]! - after[i - 1]!;
      t.ok(growth / N < RSS_ROUND_GROWTH_PER_CONNECTION_MAX,
        `${ag.node}: RSS after round ${i + 1} ${mib(after[i]!)} vs after round ${i} ${mib(after[i - 1]!)}: ${growth >= 0 ? '+' : ''}${mib(growth)}, ${kib(growth / N)} per connection < ${kib(RSS_ROUND_GROWTH_PER_CONNECTION_MAX)}`);
    }
  }
});

// ------------------------------------------------------------------ phase 2

await t.test(`phase 2: new connections for ${SOAK_SECONDS} s at concurrency ${LOOPS}, each with a random checksummed payload`, async (t) => {
  const before = await sampleAll();
  // Memory two thirds of the way through: from there to the end, RSS must
  // stay level (bounded), whatever it took to reach its working size.
  let late: Awaited<ReturnType<typeof sampleAll>> | undefined;
  const lateTimer = setTimeout(() => void sampleAll().then((m) => (late = m)), (SOAK_SECONDS * 1000 * 2) / 3);
  t.teardown(() => clearTimeout(lateTimer));
  // Bounds: the deadline, and a count no 2-core machine reaches in that time.
  const churn = await lc.run({ op: 'churn', seconds: SOAK_SECONDS, loops: LOOPS, socksEvery: 4, maxPayload: 256 * KiB, maxConnections: SOAK_SECONDS * 5_000 }, SOAK_SECONDS * 1000 + 120_000);
  connectionsDone += churn.ok;
  framesDone += churn.frames;
  t.ok(churn.ok > 0, `connections completed: ${churn.ok}`);
  t.equal(churn.failures.resets, 0, `no connection was reset (${why(churn)})`);
  t.equal(failed(churn), 0, `no connection failed (${why(churn)})`);
  await allClosed('phase 2');
  const released = await fdsReleased(t, 'phase 2');
  const after = await sampleAll();
  t.comment(`phase 2: ${SOAK_SECONDS} s requested, ${churn.seconds.toFixed(1)} s run: ${churn.ok} connections (${churn.viaSocks} via SOCKS5), ${(churn.ok / churn.seconds).toFixed(0)} connections/s, ${mib(churn.bytes)} payload echoed (${mib(2 * churn.bytes)} both ways, ${(2 * churn.bytes / MiB / churn.seconds).toFixed(1)} MiB/s), ${failed(churn)} failures, ${churn.failures.resets} resets`);
  for (const ag of agents) {
    const b = before.get(ag)!;
    const a = after.get(ag)!;
    const r = released.get(ag)!;
    t.comment(`${ag.node}: before ${memText(b)}, after ${memText(a)}; fds before ${b.fds}, after ${r.fds} (${r.pool} pooled HBONE connections)`);
    // Phase 2 never has more than LOOPS connections open, but it moves bytes
    // several times faster than phase 1: relayed chunks are Buffers that V8
    // collects with the heap, so RSS first rises to
    // a working size (measured: +169 to +194 MiB over 60 s and the same over
    // 150 s) and then stays level. What grows with the number of connections
    // keeps growing in the last third: that is what the second bound catches.
    t.ok(a.rss - b.rss < RSS_PHASE2_WORKING_MAX, `${ag.node}: RSS after phase 2 ${mib(a.rss)} vs before ${mib(b.rss)} (${a.rss >= b.rss ? '+' : ''}${mib(a.rss - b.rss)}) < +${mib(RSS_PHASE2_WORKING_MAX)}`);
    const l = late?.get(ag);
    t.ok(l !== undefined, `${ag.node}: memory sampled two thirds of the way through phase 2`);
    if (l) t.ok(a.rss - l.rss < RSS_PHASE2_GROWTH_MAX, `${ag.node}: RSS over the last third of phase 2 ${mib(l.rss)} → ${mib(a.rss)} (${a.rss >= l.rss ? '+' : ''}${mib(a.rss - l.rss)}) < +${mib(RSS_PHASE2_GROWTH_MAX)}`);
  }
});

// ------------------------------------------------------------------ after

await t.test('after the load: agents healthy, every connection counted, nothing lost', async (t) => {
  for (const ag of agents) {
    const r = await httpGet(hostPortOf(ag.ready), '/healthz/ready');
    t.equal(r.status, 200, `${ag.node} /healthz/ready answers 200`);
  }
  const closedA = (await metric(agentA!, 'istio_tcp_connections_closed_total', { reporter: 'source' })) - base.closedA;
  const closedB = (await metric(agentB!, 'istio_tcp_connections_closed_total', { reporter: 'destination' })) - base.closedB;
  t.equal(closedA, connectionsDone, `node-a counted ${closedA} closed connections, the ${connectionsDone} the test made`);
  t.equal(closedB, connectionsDone, `node-b counted ${closedB} closed connections, the ${connectionsDone} the test made`);
  for (const ag of agents) {
    const l = logs.get(ag)!;
    const lines = (): number => l.access - base.access.get(ag)!;
    // The access log is batched (10 ms): wait for the last lines.
    await eventually(async () => lines() >= connectionsDone, `${ag.node} access log lines`, 10_000).catch(() => undefined);
    t.equal(lines(), connectionsDone, `${ag.node} wrote an access log line for each of the ${connectionsDone} connections`);
    t.equal(l.malformed, 0, `${ag.node}: every log line is one whole JSON object ${l.malformedSamples.join('\n')}`);
    t.equal(l.accessErrors, 0, `${ag.node}: no access log line has an error ${l.accessErrorSamples.join('\n')}`);
    if (l.warnings.length > 0) t.comment(`${ag.node} warnings:\n${l.warnings.join('\n')}`);
  }
  const s = await serverStats(server!);
  const b = base.server;
  t.equal(s.badDigests, 0, 'the server found no payload whose digest differed');
  t.equal(s.protocolErrors, 0, 'the server saw no malformed frame');
  t.same(s.errors, {}, 'the server saw no socket error (no reset)');
  t.equal(s.framesOk - b.framesOk, framesDone, `the server verified every frame (${s.framesOk - b.framesOk})`);
  t.equal(s.accepted - b.accepted, connectionsDone, `the server accepted exactly the test's connections (${s.accepted - b.accepted})`);
  t.equal(s.cleanCloses - b.cleanCloses, connectionsDone, `every connection closed cleanly at the server (${s.cleanCloses - b.cleanCloses})`);
  t.equal(s.open, 0, 'the server has no connection left open');
  t.comment(`server: ${s.accepted - b.accepted} connections, ${s.framesOk - b.framesOk} frames, ${mib(s.bytes - b.bytes)} verified since the warm-up; total test time ${((performance.now() - testStart) / 1000).toFixed(1)} s`);
});
