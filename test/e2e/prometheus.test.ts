/**
 * A real Prometheus (Debian's /usr/bin/prometheus) scraping two agents and
 * the controller after real traffic through both agents, answering queries
 * of Istio's standard dashboards (fixtures/istio-dashboards.ts) with the
 * numbers the traffic makes: exact byte and connection totals, and each
 * dashboard rate equal to the one the scraped samples give.
 * Loopback block 127.0.123.0/24.
 */
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import { once } from 'node:events';
import { mkdtempSync, writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { agentKnowsNode, agentsReady, ambitctl, eventually, socksConnect, startAgentPair, startController, startEchoServer, type RunningAgent, type RunningController } from './harness.ts';
import {
  grafanaQuery, SERVICE_SERVER_REQUEST_VOLUME, SERVICE_SERVER_SUCCESS_RATE, SERVICE_TCP_RECEIVED_BYTES, WORKLOAD_INCOMING_SUCCESS_RATE, WORKLOAD_TCP_BYTES_RECEIVED_BY_SOURCE, WORKLOAD_TCP_BYTES_SENT_BY_SOURCE, WORKLOAD_TCP_SERVER_TRAFFIC,
} from './fixtures/istio-dashboards.ts';

const NET = '127.0.123';
const CTL = `${NET}.1`;
const A = `${NET}.2`;
const B = `${NET}.3`;
const PROM = `${NET}.9:19090`;
const CLIENT_IP = `${NET}.12`;
const WEB_IP = `${NET}.13`;
const WEB_PORT = 8080;
const API_PORT = 8081;
/** node-a's upstream listener for the client to the HTTP service. */
const API_LOCAL = 19380;
const SERVICE = 'web.default.svc.cluster.local';
const API = 'api.default.svc.cluster.local';
/** Two bursts, each seen by a scrape of its own, so a dashboard rate has two different samples to work on. */
const FIRST = 30_000;
const SECOND = 50_000;

const workload = (name: string, node: string, address: string, version: string, ports: string): string => `apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: { name: ${name}, namespace: default, labels: { app: ${name}, version: ${version} } }
spec: { serviceAccount: ${name}, node: ${node}, address: ${address}, ports: ${ports} }
`;
const MESH = [
  workload('web', 'node-b', WEB_IP, 'v1', `[${WEB_PORT}, ${API_PORT}]`),
  // Its uid proves the client on node-a's upstream listener (as on a VM).
  workload('client', 'node-a', CLIENT_IP, 'v2', '[]').replace('ports: [] }', `ports: [], uid: ${process.getuid?.() ?? 0} }`),
  `apiVersion: ambit.dev/v1alpha1
kind: Service
metadata: { name: web, namespace: default }
spec: { ports: [{ name: tcp, port: 80, targetPort: ${WEB_PORT} }], selector: { app: web } }
`,
  `apiVersion: ambit.dev/v1alpha1
kind: Service
metadata: { name: api, namespace: default }
spec: { ports: [{ name: http, port: 80, targetPort: ${API_PORT}, appProtocol: http }], selector: { app: web } }
`,
].join('---\n');

const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-prometheus-'));

interface Sample { readonly metric: Record<string, string>; readonly value?: [number, string]; readonly values?: [number, string][] }

async function query(q: string, time?: number): Promise<Sample[]> {
  const params = new URLSearchParams({ query: q, ...(time === undefined ? {} : { time: String(time) }) });
  const res = await fetch(`http://${PROM}/api/v1/query?${params}`);
  const body = await res.json() as { status: string; error?: string; data: { result: Sample[] } };
  if (body.status !== 'success') throw new Error(`${q}: ${body.error}`);
  return body.data.result;
}

/** The single value of an instant query (undefined when it returns nothing). */
async function scalar(q: string, time?: number): Promise<number | undefined> {
  const r = await query(q, time);
  if (r.length > 1) throw new Error(`${q}: ${r.length} series`);
  return r[0] ? Number(r[0].value![1]) : undefined;
}

/** irate at the last sample at or before `time`: what Prometheus should answer, from the samples it holds. */
async function expectedIrate(selector: string, time: number): Promise<number> {
  const [series] = await query(`${selector}[1m]`, time);
  const v = series!.values!;
  const [t1, v1] = v[v.length - 2]!;
  const [t2, v2] = v[v.length - 1]!;
  // Timestamps are whole milliseconds, sent as float seconds.
  return (Number(v2) - Number(v1)) / (Math.round((t2 - t1) * 1000) / 1000);
}

function echo(socket: Socket, bytes: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let got = 0;
    const onData = (d: Buffer): void => {
      got += d.length;
      if (got >= bytes) {
        socket.off('data', onData);
        resolve();
      }
    };
    socket.on('data', onData);
    socket.once('error', reject);
    socket.resume();
    socket.write(Buffer.alloc(bytes, 7));
  });
}

let ctl: RunningController;
let agents: [RunningAgent, RunningAgent];
let prometheus: ChildProcess | undefined;

t.teardown(async () => {
  if (prometheus && prometheus.exitCode === null) {
    prometheus.kill('SIGTERM');
    await once(prometheus, 'exit');
  }
});

t.before(async () => {
  const web = await startEchoServer(WEB_IP, WEB_PORT);
  t.teardown(() => web.close());
  // The HTTP app: /fail answers 500, anything else 200 with a 100-byte body.
  const api = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(req.url === '/fail' ? 500 : 200, { 'content-type': 'text/plain' }).end('x'.repeat(100));
    });
  });
  await new Promise<void>((r) => api.listen(API_PORT, WEB_IP, r));
  t.teardown(() => api.close());
  ctl = await startController(join(root, 'ctl'), [], CTL);
  t.teardown(() => ctl.proc.stop());
  const ok = async (args: string[], stdin?: string): Promise<string> => {
    const r = await ambitctl(ctl, args, stdin);
    if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  await ok(['apply', '-f', '-'], MESH);
  const [ta, tb] = (await Promise.all(['node-a', 'node-b'].map((n) => ok(['node', 'token', 'create', '--node', n])))).map((s) => s.trim());
  agents = await startAgentPair((stop) => t.teardown(stop), [
    { node: 'node-a', address: A, controller: ctl.address, dataDir: join(root, 'a'), join: ta, extra: ['--upstreams', `default/client:${API_LOCAL}=api.default:80`] },
    { node: 'node-b', address: B, controller: ctl.address, dataDir: join(root, 'b'), join: tb },
  ]);
  await agentsReady(agents);
  await agentKnowsNode(agents[0], 'node-b');

  const config = join(root, 'prometheus.yml');
  writeFileSync(config, [
    'global:',
    '  scrape_interval: 1s',
    '  scrape_timeout: 1s',
    '  evaluation_interval: 1s',
    'scrape_configs:',
    '  - job_name: ambit-agent',
    '    static_configs:',
    `      - targets: ['${agents[0].metrics}', '${agents[1].metrics}']`,
    '  - job_name: ambit-controller',
    '    static_configs:',
    `      - targets: ['${ctl.monitoring.host}:${ctl.monitoring.port}']`,
    '',
  ].join('\n'));
  const proc = spawn('/usr/bin/prometheus', [
    `--config.file=${config}`, `--storage.tsdb.path=${join(root, 'tsdb')}`, `--web.listen-address=${PROM}`, '--log.level=warn',
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  prometheus = proc;
  let stderr = '';
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-4000)));
  await eventually(async () => {
    if (proc.exitCode !== null) throw new Error(`prometheus exited ${proc.exitCode}: ${stderr}`);
    return (await fetch(`http://${PROM}/-/ready`)).status === 200;
  }, 'prometheus ready', 20_000);
});

t.test('Prometheus scrapes both agents and the controller', async (t) => {
  await eventually(async () => (await scalar('sum(up{job="ambit-agent"})')) === 2 && (await scalar('up{job="ambit-controller"}')) === 1, 'every target up');
  t.equal(await scalar('sum(up{job="ambit-agent"})'), 2, 'both agents');
  t.equal(await scalar('up{job="ambit-controller"}'), 1, 'the controller');
  t.equal(await eventually(async () => (await scalar('ambit_controller_watch_streams')) === 2 && 2, 'watch streams'), 2, 'the controller\'s metrics: the two agents\' watch streams');
});

t.test('Istio dashboard queries answer with the numbers of real traffic', async (t) => {
  const { socket, reply } = await socksConnect(agents[0].socks, CLIENT_IP, 'default/client', 'web.default', 80);
  t.equal(reply, 0, 'tunnel open');
  const received = (reporter: string): string => `istio_tcp_received_bytes_total{reporter="${reporter}", destination_workload="web", source_workload="client"}`;
  const sent = (reporter: string): string => `istio_tcp_sent_bytes_total{reporter="${reporter}", destination_workload="web", source_workload="client"}`;
  const scraped = async (bytes: number): Promise<void> => {
    for (const reporter of ['source', 'destination']) {
      await eventually(async () => (await scalar(`sum(${received(reporter)})`)) === bytes && (await scalar(`sum(${sent(reporter)})`)) === bytes, `${reporter}: ${bytes} bytes scraped`);
    }
  };
  await echo(socket, FIRST);
  await scraped(FIRST);
  await echo(socket, SECOND);
  socket.end();
  await once(socket, 'close');
  await scraped(FIRST + SECOND);

  for (const reporter of ['source', 'destination']) {
    t.equal(await scalar(`sum(${received(reporter)})`), FIRST + SECOND, `${reporter}: every byte from the client, exactly`);
    t.equal(await scalar(`sum(${sent(reporter)})`), FIRST + SECOND, `${reporter}: every byte back, exactly`);
    t.equal(await eventually(async () => scalar(`sum(istio_tcp_connections_closed_total{reporter="${reporter}", destination_service="${SERVICE}", destination_app="web", destination_version="v1", source_app="client", source_version="v2"})`), `${reporter}: closed`), 1, `${reporter}: one connection closed, under the full service host and the app/version labels`);
    t.equal(await scalar(`sum(istio_tcp_connections_opened_total{reporter="${reporter}", destination_service_name="web", destination_service_namespace="default", request_protocol="tcp", source_cluster="Kubernetes", destination_cluster="Kubernetes"})`), 1, `${reporter}: one opened`);
  }

  // The moment the destination's last burst was first scraped: the rate there spans the second burst.
  const [series] = await query(`${received('destination')}[1m]`);
  const at = series!.values!.find(([, v]) => Number(v) === FIRST + SECOND)![0];
  const vars = { qrep: 'destination', namespace: 'default', workload: 'web', srcwl: 'client', srcns: 'default', service: SERVICE, __rate_interval: '1m' };
  const rateIn = await expectedIrate(received('destination'), at);
  const rateOut = await expectedIrate(sent('destination'), at);
  t.ok(rateIn > 0, `bytes were flowing at the moment queried (${rateIn.toFixed(1)} B/s)`);

  const byIn = await query(grafanaQuery(WORKLOAD_TCP_BYTES_RECEIVED_BY_SOURCE, vars), at);
  t.same(byIn.map((s) => s.metric), [{ source_workload: 'client', source_workload_namespace: 'default' }], 'Workload dashboard, bytes received by source: one source, named');
  t.ok(Math.abs(Number(byIn[0]!.value![1]) - rateIn) < 0.001, `… at the rate the samples give (${byIn[0]!.value![1]} vs ${rateIn})`);
  const byOut = await query(grafanaQuery(WORKLOAD_TCP_BYTES_SENT_BY_SOURCE, vars), at);
  t.same(byOut.map((s) => s.metric), [{ source_workload: 'client', source_workload_namespace: 'default' }], 'Workload dashboard, bytes sent by source');
  t.ok(Math.abs(Number(byOut[0]!.value![1]) - rateOut) < 0.001, `… at the rate the samples give (${byOut[0]!.value![1]} vs ${rateOut})`);
  const traffic = await scalar(grafanaQuery(WORKLOAD_TCP_SERVER_TRAFFIC, vars), at);
  t.ok(Math.abs(traffic! - (rateIn + rateOut)) < 1e-6, `Workload dashboard, TCP server traffic: both directions (${traffic} vs ${rateIn + rateOut})`);
  const svc = await scalar(grafanaQuery(SERVICE_TCP_RECEIVED_BYTES, vars), at);
  t.ok(Math.abs(svc! - rateIn) < 1e-6, `Service dashboard, TCP received bytes of ${SERVICE} (${svc} vs ${rateIn})`);
  const mtlsOnly = await query(grafanaQuery(WORKLOAD_TCP_BYTES_RECEIVED_BY_SOURCE.replace('connection_security_policy="mutual_tls"', 'connection_security_policy!="mutual_tls"'), vars), at);
  t.same(mtlsOnly, [], 'the dashboard\'s non-mTLS twin finds nothing: every connection was mutual_tls');
});

t.test('HTTP: per-request metrics from the data plane answer Istio\'s request dashboards; one access-log line per request', async (t) => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  const get = (path: string): Promise<number> => new Promise((resolve, reject) => {
    const req = http.request({ host: A, port: API_LOCAL, path, agent, headers: { host: 'api.default' } }, (res) => {
      res.resume().on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end();
  });
  const requests = (code: string) => `sum(istio_requests_total{reporter="destination", destination_service="${API}", response_code="${code}"})`;
  const burst = async (ok: number, failed: number): Promise<void> => {
    for (let i = 0; i < ok; i++) t.equal(await get('/ok'), 200, 'ok', { diagnostic: false });
    for (let i = 0; i < failed; i++) t.equal(await get('/fail'), 500, 'fail', { diagnostic: false });
  };
  // Two bursts, each scraped on its own: a dashboard rate needs two samples of each series.
  await burst(1, 1);
  await eventually(async () => (await scalar(requests('200'))) === 1 && (await scalar(requests('500'))) === 1, 'first burst scraped');
  await burst(20, 5);
  await eventually(async () => (await scalar(requests('200'))) === 21 && (await scalar(requests('500'))) === 6, 'second burst scraped');

  t.equal(await scalar(`sum(istio_requests_total{reporter="destination", destination_service="${API}"})`), 27, 'every request counted once, by the destination agent');
  t.equal(await scalar(`sum(istio_requests_total{reporter="destination", destination_service_name="api", destination_workload="web", destination_app="web", destination_version="v1", source_workload="client", source_app="client", source_version="v2", request_protocol="http", connection_security_policy="mutual_tls", response_flags="-", grpc_response_status=""})`), 27, 'with Istio\'s labels and values');
  t.equal(await scalar(`sum(istio_request_duration_milliseconds_count{reporter="destination", destination_service="${API}"})`), 27, 'a duration for each');
  t.equal(await scalar(`sum(istio_response_bytes_sum{reporter="destination", destination_service="${API}"})`), 2700, 'response body bytes, exactly');
  t.equal(await scalar(`sum(istio_response_bytes_bucket{reporter="destination", destination_service="${API}", le="100"}) - sum(istio_response_bytes_bucket{reporter="destination", destination_service="${API}", le="50"})`), 27, 'each 100-byte body in the (50, 100] bucket');
  t.equal(await scalar(`sum(istio_request_bytes_bucket{reporter="destination", destination_service="${API}", le="0.5"})`), 27, 'empty request bodies in the first bucket');
  // The source agent serves the same port per request too, and reports each request once as the source.
  await eventually(async () => (await scalar(`sum(istio_requests_total{reporter="source", destination_service="${API}"})`)) === 27, 'the source reporter scraped');
  t.equal(await scalar(`sum(istio_requests_total{reporter="source", destination_service="${API}", response_code="500", source_workload="client", destination_workload="web", request_protocol="http"})`), 6, 'the source agent counts the same requests, failures included');

  // At the moment the second burst was first scraped, both series' last two samples span it: 20 ok of 25.
  const [series] = await query(`istio_requests_total{reporter="destination", destination_service="${API}", response_code="200"}[1m]`);
  const at = series!.values!.find(([, v]) => Number(v) === 21)![0];
  const vars = { qrep: 'destination', namespace: 'default', workload: 'web', service: API, __rate_interval: '1m' };
  const volume = await scalar(grafanaQuery(SERVICE_SERVER_REQUEST_VOLUME, vars), at);
  const ok200 = await expectedIrate(`istio_requests_total{reporter="destination", destination_service="${API}", response_code="200"}`, at);
  const failed500 = await expectedIrate(`istio_requests_total{reporter="destination", destination_service="${API}", response_code="500"}`, at);
  const expected = ok200 + failed500;
  // 20 of 25 when the agent's one-second flush put the whole burst in one scrape; when a flush split it, the
  // rates at that instant differ, so the dashboards are checked against the rates the scraped samples give.
  const successRate = ok200 / expected;
  t.ok(volume! > 0 && Math.abs(volume! - expected) < 0.001, `Service dashboard, server request volume (${volume} vs ${expected} req/s)`);
  t.ok(successRate > 0 && successRate <= 1, `the burst's successes in the window (${successRate})`);
  t.ok(Math.abs((await scalar(grafanaQuery(SERVICE_SERVER_SUCCESS_RATE, vars), at))! - successRate) < 1e-9, `Service dashboard, server success rate (${successRate}; 20 of 25 = 0.8 in one scrape)`);
  t.ok(Math.abs((await scalar(grafanaQuery(WORKLOAD_INCOMING_SUCCESS_RATE, vars), at))! - successRate) < 1e-9, `Workload dashboard, incoming success rate (${successRate})`);

  const lines = await eventually(async () => {
    const l = agents[1].proc.logs.filter((l) => l.msg === 'request' && l['dst.service'] === API);
    return l.length >= 27 && l;
  }, 'access log lines');
  t.equal(lines.length, 27, 'one access-log line per request, from the destination\'s data plane');
  t.match(lines.find((l) => l.status === 500), { log: 'access', method: 'GET', path: '/fail', authority: 'api.default', bytes_sent: 100, 'src.workload': 'client', 'dst.workload': 'web', direction: 'inbound', response_flags: '-' });
});
