// What the agent's telemetry costs per tunnelled connection, in-process:
// agent/proxy/connection-record.ts opening a record, counting bytes both ways
// and finishing it (Istio counters, active gauge, access log line to a
// discarding sink, span end with no SDK registered), on one core.
//
// Baseline, measured in the same process: JSON.stringify of the same access
// log fields, the floor for writing one JSON line per connection.
//
//   node bench/connection-record.ts [connections per timed round, default 100000]
//
// To compare with an older implementation, check out its
// agent/proxy/{connection-record,metrics}.ts and run this again.
import { Registry } from 'prom-client';
import { createLogger } from '../shared/logger.ts';
import { ConnectionRecord, type Peer } from '../agent/proxy/connection-record.ts';
import { createAgentMetrics } from '../agent/proxy/metrics.ts';

const n = Number(process.argv[2] ?? 100_000);
if (!Number.isInteger(n) || n < 1000 || n > 10_000_000) {
  process.stderr.write('usage: node bench/connection-record.ts [connections per round, 1000..10000000]\n');
  process.exit(2);
}
const ROUNDS = 5;

const peer = (name: string): Peer => ({ addr: '10.0.0.1:5000', workload: name, namespace: 'default', identity: `spiffe://cluster.local/ns/default/sa/${name}` });
const src = peer('client');
const dst = peer('server');

/** µs per connection: the median of ROUNDS timed rounds of n, after one warm-up round. */
function measure(one: () => void): number {
  const run = (): number => {
    const t0 = process.cpuUsage();
    for (let i = 0; i < n; i++) one();
    const c = process.cpuUsage(t0);
    return (c.user + c.system) / n;
  };
  run();
  const xs = Array.from({ length: ROUNDS }, run).sort((a, b) => a - b);
  return xs[Math.floor(ROUNDS / 2)]!;
}

function recordCost(level: 'info' | 'warn'): { us: number; registry: Registry } {
  const registry = new Registry();
  const metrics = createAgentMetrics(registry);
  const log = createLogger({ name: 'ambit-agent', level, destination: { write: () => undefined } }).child({ log: 'access' });
  const us = measure(() => {
    const r = new ConnectionRecord({ direction: 'outbound', src, dst, service: 'server.default.svc', security: 'mutual_tls', metrics, log });
    r.open();
    r.fromSource(1024);
    r.toSource(1024);
    r.finish();
  });
  return { us, registry };
}

let sink = 0;
const baseline = measure(() => {
  sink += JSON.stringify({
    level: 'info', time: new Date().toISOString(), pid: process.pid, name: 'ambit-agent', log: 'access',
    'src.addr': src.addr, 'src.workload': src.workload, 'src.namespace': src.namespace, 'src.identity': src.identity,
    'dst.addr': dst.addr, 'dst.workload': dst.workload, 'dst.namespace': dst.namespace, 'dst.identity': dst.identity,
    'dst.service': 'server.default.svc', direction: 'outbound', security: 'mutual_tls', response_flags: '-',
    bytes_sent: 1024, bytes_recv: 1024, duration_ms: 0, error: '', trace_id: '', msg: 'connection',
  }).length;
});
const full = recordCost('info');
const metricsOnly = recordCost('warn');
// A scrape must see every connection counted: a check that the loop did what it says.
const text = await full.registry.metrics();
const opened = /istio_tcp_connections_opened_total\{[^}]*\} (\d+)/.exec(text)?.[1];
const expected = n * (ROUNDS + 1);
if (Number(opened) !== expected) throw new Error(`opened counter is ${opened}, expected ${expected}`);

const line = (label: string, us: number): string => `${label.padEnd(44)} ${us.toFixed(2).padStart(7)} µs  ${(us / baseline).toFixed(2).padStart(6)}x baseline`;
process.stdout.write([
  `ConnectionRecord per connection — Node ${process.version}, ${n} connections per round, median of ${ROUNDS} rounds (CPU time)`,
  line('baseline: JSON.stringify of the access line', baseline),
  line('record: counters + access log + span', full.us),
  line('record with the access log off (level warn)', metricsOnly.us),
  `checked: istio_tcp_connections_opened_total = ${opened}`,
  '',
].join('\n'));
if (sink < 0) process.stdout.write('');
