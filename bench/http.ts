// Benchmark of HTTP requests on loopback: the real ambit-controller and two
// ambit-agents (each with its ambit-dataplane) as child processes, and the
// same HTTP/1.1 keep-alive load (POST of 1 KiB, answered with 1 KiB) through
// each path to one HTTP server:
//
//   direct   client → server
//   ambit    client → agent A upstream listener → HBONE (mTLS) → agent B,
//            which serves the port as HTTP (Service appProtocol http: each
//            request authorized, counted and logged by its data plane) → server
//   nginx    client → nginx (http proxy, upstream keepalive, TLS 1.3 mTLS) →
//            nginx (ssl_verify_client) → server
//   haproxy  client → haproxy (mode http, ssl to the server with a client
//            certificate) → haproxy (verify required) → server
//
// Metrics per path: requests/s at saturation (CONNS keep-alive connections
// each sending back to back), latency at a fixed 1,000 requests/s (open
// loop: p50/p99, and what each adds to direct), and the CPU the two agents
// (each agent and its data plane) use per 1,000 requests/s at that rate.
// Ends with issue 17's targets, PASS/FAIL, informational: the exit status is
// 0 whatever the numbers. The load generator is one Node.js process on the
// same machine: at saturation it and the server share the cores with the
// path measured.
//
// Run: node bench/http.ts [--seconds N] [--net 127.0.108] [--host-offset N] [--quick]
import http from 'node:http';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ambitctl, agentKnowsNode, agentsReady, childPids, startAgentPair, startController, type RunningAgent } from '../test/e2e/harness.ts';
import { Children, clockTicksPerSecond, cpuSecondsOf, freePort, makePeerCerts, which, type HostPort, type ProxyPair } from './dataplane-peers.ts';
import { startHaproxyHttp, startNginxHttp } from './http-peers.ts';

const { values: opts } = parseArgs({
  options: {
    seconds: { type: 'string', default: '5' },
    net: { type: 'string', default: '127.0.108' },
    quick: { type: 'boolean', default: false },
    'host-offset': { type: 'string', default: '0' },
  },
});
const SECONDS = opts.quick ? 1 : Number(opts.seconds);
if (!(SECONDS > 0 && SECONDS <= 600)) throw new Error('--seconds must be in (0, 600]');
if (!/^127\.\d{1,3}\.\d{1,3}$/.test(opts.net!)) throw new Error('--net must be three octets of 127/8, like 127.0.108');
const NET = opts.net!;
/** Added to the last octet of every address (--host-offset), so that two runs can share a /24. */
const OFF = Number(opts['host-offset']);
if (!(Number.isInteger(OFF) && OFF >= 0 && OFF <= 200)) throw new Error('--host-offset must be an integer in [0, 200]');
const at = (n: number): string => `${NET}.${n + OFF}`;
const ADDR = { ctl: at(1), a: at(2), b: at(3), client: at(12), server: at(13), nginxC: at(32), nginxS: at(33), haproxyC: at(42), haproxyS: at(43) };
const BODY = Buffer.alloc(1024, 97);
/** Keep-alive connections at saturation. */
const CONNS = 16;
/** The fixed rate of the latency and CPU measurement. */
const RATE = 1000;

const children = new Children();
process.on('exit', () => children.killAllNow());

interface PathResult {
  readonly rps: number;
  readonly p50: number;
  readonly p99: number;
  readonly errors: number;
  /** Both agents' vCPU per 1,000 requests/s (ambit only). */
  readonly agentCpu?: number;
}

function request(agent: http.Agent, at: HostPort): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: at.host, port: at.port, method: 'POST', path: '/echo', agent, headers: { host: 'api.bench', 'content-length': BODY.length } }, (res) => {
      let n = 0;
      res.on('data', (d: Buffer) => (n += d.length));
      res.on('end', () => (res.statusCode === 200 && n === BODY.length ? resolve() : reject(new Error(`status ${res.statusCode}, ${n} bytes`))));
    });
    req.on('error', reject);
    req.end(BODY);
  });
}

/** Requests/s with CONNS connections sending back to back for `seconds`. */
async function saturate(at: HostPort, seconds: number): Promise<{ rps: number; errors: number }> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONNS });
  const end = performance.now() + seconds * 1000;
  let done = 0;
  let errors = 0;
  await Promise.all(Array.from({ length: CONNS }, async () => {
    while (performance.now() < end) {
      try {
        await request(agent, at);
        done++;
      } catch {
        errors++;
      }
    }
  }));
  agent.destroy();
  return { rps: done / seconds, errors };
}

/** Latencies (ms) of requests sent at RATE per second for `seconds` (open loop), and the CPU `pids` used meanwhile. */
async function fixedRate(at: HostPort, seconds: number, pids: () => number[]): Promise<{ p50: number; p99: number; errors: number; cpu: number }> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  // Warm the pool: connections opened during the measurement would count their handshakes.
  await Promise.all(Array.from({ length: 8 }, () => request(agent, at)));
  const ticks = clockTicksPerSecond();
  const cpu = (): number => pids().reduce((a, p) => a + cpuSecondsOf(p, ticks), 0);
  const lat: number[] = [];
  let errors = 0;
  const total = Math.round(RATE * seconds);
  const start = performance.now();
  const cpu0 = cpu();
  const pending: Promise<void>[] = [];
  for (let i = 0; i < total; i++) {
    const due = start + (i * 1000) / RATE;
    const wait = due - performance.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    const t0 = performance.now();
    pending.push(request(agent, at).then(() => void lat.push(performance.now() - t0), () => void errors++));
  }
  await Promise.all(pending);
  const elapsed = (performance.now() - start) / 1000;
  const used = cpu() - cpu0;
  agent.destroy();
  lat.sort((a, b) => a - b);
  const q = (p: number): number => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] ?? Number.NaN;
  return { p50: q(0.5), p99: q(0.99), errors, cpu: used / elapsed / (total / elapsed / 1000) };
}

async function measure(label: string, at: HostPort, pids?: () => number[]): Promise<PathResult> {
  process.stderr.write(`measuring ${label}\n`);
  const s = await saturate(at, SECONDS);
  const f = await fixedRate(at, SECONDS, pids ?? (() => []));
  return { rps: s.rps, p50: f.p50, p99: f.p99, errors: s.errors + f.errors, ...(pids ? { agentCpu: f.cpu } : {}) };
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ambit-bench-http-'));
  const server = http.createServer({ keepAliveTimeout: 60_000 }, (req, res) => {
    req.resume();
    req.on('end', () => res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': BODY.length }).end(BODY));
  });
  const serverPort = await freePort(ADDR.server);
  await new Promise<void>((r) => server.listen(serverPort, ADDR.server, r));
  const upstream = { host: ADDR.server, port: serverPort };

  const ctl = await startController(join(dir, 'ctl'), [], ADDR.ctl);
  children.track(ctl.proc.child);
  const ok = async (args: string[], stdin?: string): Promise<string> => {
    const r = await ambitctl(ctl, args, stdin);
    if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  await ok(['apply', '-f', '-'], `apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: { name: server, namespace: bench, labels: { app: server } }
spec: { serviceAccount: server, node: node-b, address: ${ADDR.server}, ports: [${serverPort}] }
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: { name: client, namespace: bench, labels: { app: client } }
spec: { serviceAccount: client, node: node-a, address: ${ADDR.client}, ports: [], uid: ${process.getuid?.() ?? 0} }
---
apiVersion: ambit.dev/v1alpha1
kind: Service
metadata: { name: api, namespace: bench }
spec: { ports: [{ name: http, port: 80, targetPort: ${serverPort}, appProtocol: http }], selector: { app: server } }
`);
  const [ta, tb] = (await Promise.all(['node-a', 'node-b'].map((n) => ok(['node', 'token', 'create', '--node', n])))).map((s) => s.trim());
  const local = await freePort(ADDR.a);
  const agents: RunningAgent[] = await startAgentPair((stop) => void stop, [
    { node: 'node-a', address: ADDR.a, controller: ctl.address, dataDir: join(dir, 'a'), join: ta, extra: ['--upstreams', `bench/client:${local}=api.bench:80`] },
    { node: 'node-b', address: ADDR.b, controller: ctl.address, dataDir: join(dir, 'b'), join: tb },
  ]);
  for (const a of agents) children.track(a.proc.child);
  await agentsReady(agents);
  await agentKnowsNode(agents[0]!, 'node-b');
  // No access log, as the peers keep none: the bench measures the data path.
  for (const a of agents) {
    const res = await fetch(`http://${a.admin}/logging?level=warn`, { method: 'POST' });
    if (res.status !== 200) throw new Error(`${a.node}: POST /logging answered ${res.status}`);
  }
  const agentPids = (): number[] => agents.flatMap((a) => [a.proc.child.pid!, ...childPids(a.proc.child.pid!)]);

  const certs = makePeerCerts(dir, which('openssl') ?? 'openssl');
  const peers: [string, ProxyPair][] = [];
  const nginx = which('nginx');
  if (nginx) peers.push(['nginx', await startNginxHttp(children, nginx, dir, certs, { clientSide: ADDR.nginxC, serverSide: ADDR.nginxS, upstream })]);
  else process.stdout.write('skipped nginx: not installed\n');
  const haproxy = which('haproxy');
  if (haproxy) peers.push(['haproxy', await startHaproxyHttp(children, haproxy, dir, certs, { clientSide: ADDR.haproxyC, serverSide: ADDR.haproxyS, upstream })]);
  else process.stdout.write('skipped haproxy: not installed\n');

  const results = new Map<string, PathResult>();
  results.set('direct', await measure('direct', upstream));
  results.set('ambit', await measure('ambit', { host: ADDR.a, port: local }, agentPids));
  for (const [name, pair] of peers) results.set(name, await measure(name, pair.entry));

  const direct = results.get('direct')!;
  const cols = [...results.keys()];
  const row = (name: string, f: (r: PathResult) => string): string => `${name.padEnd(34)}${cols.map((c) => f(results.get(c)!).padStart(12)).join('')}`;
  const out = [
    `HTTP/1.1 keep-alive, POST 1 KiB → 1 KiB, ${SECONDS} s per measurement, ${CONNS} connections at saturation, ${RATE} req/s fixed`,
    row('metric', () => '').slice(0, 34) + cols.map((c) => c.padStart(12)).join(''),
    row('requests/s at saturation', (r) => r.rps.toFixed(0)),
    row(`p50 at ${RATE} req/s (ms)`, (r) => r.p50.toFixed(3)),
    row(`p99 at ${RATE} req/s (ms)`, (r) => r.p99.toFixed(3)),
    row('added p50 over direct (ms)', (r) => (r.p50 - direct.p50).toFixed(3)),
    row('added p99 over direct (ms)', (r) => (r.p99 - direct.p99).toFixed(3)),
    row('agents vCPU per 1,000 req/s', (r) => (r.agentCpu === undefined ? '-' : r.agentCpu.toFixed(3))),
    row('errors', (r) => String(r.errors)),
    '',
  ];
  const ambit = results.get('ambit')!;
  const best = Math.max(...peers.map(([n]) => results.get(n)!.rps));
  const verdict = (okay: boolean): string => (okay ? 'PASS' : 'FAIL');
  if (peers.length === 0) out.push('targets: no peer measured (install nginx or haproxy)');
  else out.push(`target requests/s ≥ 1.0× the best peer: ${(ambit.rps / best).toFixed(2)}× (${ambit.rps.toFixed(0)} vs ${best.toFixed(0)})  ${verdict(ambit.rps >= best)}`);
  const added = ambit.p99 - direct.p99;
  // Direct requests slower than this mean the client or the machine, not the path, set the latency.
  if (direct.p99 > 5) out.push(`target added p99 at ${RATE} req/s ≤ 1 ms: not judged (direct p99 ${direct.p99.toFixed(1)} ms: the load generator or the machine was saturated)`);
  else out.push(`target added p99 at ${RATE} req/s ≤ 1 ms: ${added.toFixed(3)} ms  ${verdict(added <= 1)}`);
  out.push(`target both agents ≤ 0.12 vCPU per 1,000 req/s: ${ambit.agentCpu!.toFixed(3)}  ${verdict(ambit.agentCpu! <= 0.12)}`);
  process.stdout.write(`${out.join('\n')}\n`);

  for (const [, pair] of peers) await pair.stop();
  for (const a of agents) await a.proc.stop();
  await ctl.proc.stop();
  server.close();
}

main().catch((err: Error) => {
  process.stderr.write(`ERROR ${err.stack ?? err.message}\n`);
  process.exitCode = 1;
});
