/**
 * Connect failures are not user failures (docs/reliability.md "Endpoint
 * failures"), with real processes on 127.0.106.x: a controller, node-a (the
 * client's agent) and node-b, which runs the three endpoints of service
 * `web` — one of them not listening. Every new connection through the
 * service must open (a failed attempt moves on to another endpoint before
 * any byte flows), the dead endpoint is ejected and shown in /config_dump
 * and the metrics, and the endpoint that served is the one the access log
 * and the Istio metrics name. A service whose endpoints are all dead still
 * fails cleanly: a bounded number of attempts, then a SOCKS5 refusal.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import type { Server, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { agentKnowsNode, agentsReady, ambitctl, eventually, hostPortOf, httpGet, metricValue, setUp, socksConnect, startAgentPair, startController, startEchoServer, type RunningAgent, type RunningController } from './harness.ts';

const ip = (n: number): string => `127.0.106.${n}`;
const CTL = ip(1);
const A = ip(2);
const B = ip(3);
const CLIENT = ip(10);
const WEB = [ip(11), ip(12), ip(13)] as const; // the third listens on nothing
const DEAD = [ip(14), ip(15)] as const; // service `gone`: nothing listens on either
const PORT = 8080;
const CONNECTIONS = 100;
const CONNECT_TIMEOUT_MS = 3_000;

const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-outlier-'));
let ctl: RunningController;
let agentA: RunningAgent;
let agentB: RunningAgent;
const servers: Server[] = [];

t.before(async () => {
  await setUp(async (started) => {
    for (const addr of WEB.slice(0, 2)) {
      const s = await startEchoServer(addr, PORT);
      servers.push(s);
      started(() => s.close());
    }
    ctl = await startController(join(root, 'ctl'), [], CTL);
    started(() => ctl.proc.stop());
    const ok = async (args: string[]): Promise<string> => {
      const r = await ambitctl(ctl, args);
      if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    };
    await ok(['workload', 'register', '--name', 'client', '--service-account', 'client', '--node', 'node-a', '--address', CLIENT]);
    for (const [i, addr] of WEB.entries()) await ok(['workload', 'register', '--name', `web-${i + 1}`, '--service-account', 'web', '--node', 'node-b', '--address', addr, '--port', String(PORT), '--label', 'app=web']);
    for (const [i, addr] of DEAD.entries()) await ok(['workload', 'register', '--name', `gone-${i + 1}`, '--service-account', 'gone', '--node', 'node-b', '--address', addr, '--port', String(PORT), '--label', 'app=gone']);
    await ok(['service', 'create', '--name', 'web', '--port', `80:${PORT}`, '--selector', 'app=web']);
    await ok(['service', 'create', '--name', 'gone', '--port', `80:${PORT}`, '--selector', 'app=gone']);
    const [ta, tb] = [(await ok(['node', 'token', 'create', '--node', 'node-a'])).trim(), (await ok(['node', 'token', 'create', '--node', 'node-b'])).trim()];
    // A long first ejection: the checks after the load must still see it, however slow the machine.
    [agentA, agentB] = await startAgentPair(started, [
      { node: 'node-a', address: A, controller: ctl.address, dataDir: join(root, 'a'), join: ta, extra: ['--outlier-base-ejection', '120s', '--connect-timeout', `${CONNECT_TIMEOUT_MS}ms`] },
      { node: 'node-b', address: B, controller: ctl.address, dataDir: join(root, 'b'), join: tb },
    ]);
    await agentsReady([agentA, agentB], 20_000);
    await agentKnowsNode(agentA, 'node-b');
  });
});
t.teardown(async () => {
  await agentA?.proc.stop();
  await agentB?.proc.stop();
  await ctl?.proc.stop();
  for (const s of servers) s.close();
});

/** One new connection to `host`:80 through node-a's SOCKS5 as the client: its reply, and whether 1 KiB came back intact. */
async function once(host: string): Promise<{ reply: number; echoed: boolean }> {
  const { socket, reply } = await socksConnect(agentA.socks, CLIENT, 'default/client', host, 80, 10_000);
  try {
    return { reply, echoed: reply === 0 && (await echo(socket)) };
  } finally {
    socket.destroy();
  }
}

function echo(socket: Socket): Promise<boolean> {
  const chunk = randomBytes(1024);
  return new Promise((resolve) => {
    let got = Buffer.alloc(0);
    const timer = setTimeout(() => resolve(false), 5_000);
    socket.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length >= chunk.length) {
        clearTimeout(timer);
        resolve(got.equals(chunk));
      }
    });
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(false);
    });
    socket.resume();
    socket.write(chunk);
  });
}

const configDump = async (): Promise<{ ejectedEndpoints: { service: string; endpoint: string; workload: string; reason: string; since: string; until: string; ejections: number }[] }> =>
  JSON.parse((await httpGet(hostPortOf(agentA.admin), '/config_dump')).body);
const metrics = async (): Promise<string> => (await httpGet(hostPortOf(agentA.metrics), '/metrics')).body;

t.test('one dead endpoint of three: 100 new connections, none fails; the dead one is ejected', async (t) => {
  // The first connection also proves node-a has the service and node-b's address.
  await eventually(async () => (await once('web.default')).echoed, 'node-a carries client → web', 20_000);
  const failures: string[] = [];
  // Ten at a time: connections in flight together while the dead endpoint is
  // still in balancing (before its third failure) are retried too.
  for (let i = 0; i < CONNECTIONS; i += 10) {
    const batch = await Promise.all(Array.from({ length: 10 }, () => once('web.default').catch((e: Error) => ({ reply: -1, echoed: false, error: e.message }))));
    for (const r of batch) if (!r.echoed) failures.push(JSON.stringify(r));
  }
  t.same(failures, [], `${CONNECTIONS} new connections through the service, none failed`);

  // A record is logged when its connection ends, which the client's close
  // starts, after every report of its attempts: once all are logged, the
  // agent has counted everything below.
  const live = new Set(WEB.slice(0, 2).map((a) => `${a}:${PORT}`));
  const served = () => agentA.proc.logs.filter((l) => l.msg === 'connection' && l.direction === 'outbound' && l['dst.service'] === 'web.default.svc.cluster.local');
  await eventually(async () => served().filter((l) => live.has(String(l['dst.addr']))).length >= CONNECTIONS + 1, 'an access log line for each connection');
  t.ok(served().filter((l) => live.has(String(l['dst.addr']))).length >= CONNECTIONS + 1, 'each connection is logged naming the endpoint that served');
  t.same(served().filter((l) => !live.has(String(l['dst.addr']))), [], 'no access log line names the dead endpoint');

  const dump = await configDump();
  const ejected = dump.ejectedEndpoints.find((e) => e.endpoint === `${WEB[2]}:${PORT}`);
  t.match(ejected, { service: 'web.default.svc.cluster.local', workload: 'default/web-3', reason: 'workload_unreachable', ejections: 1 }, '/config_dump shows the dead endpoint ejected, and why');
  t.ok(ejected && Date.parse(ejected.until) - Date.parse(ejected.since) === 120_000, 'since and until: the configured first ejection');
  t.equal(dump.ejectedEndpoints.filter((e) => e.service === 'web.default.svc.cluster.local').length, 1, 'only the dead one');

  const m = await metrics();
  t.equal(metricValue(m, 'ambit_endpoint_ejected', { service: 'web.default.svc.cluster.local', endpoint: `${WEB[2]}:${PORT}` }), 1, 'ambit_endpoint_ejected names it');
  t.equal(metricValue(m, 'ambit_endpoint_ejections_total', { service: 'web.default.svc.cluster.local' }), 1, 'one ejection counted');
  t.ok(metricValue(m, 'ambit_connect_retries_total', { result: 'ok' }) >= 1, 'the retries that saved connections are counted');
  t.equal(metricValue(m, 'istio_tcp_connections_opened_total', { reporter: 'source', destination_workload: 'web-3' }), 0, 'no connection is counted against the endpoint that never served');
  t.ok(metricValue(m, 'istio_tcp_connections_opened_total', { reporter: 'source', destination_service: 'web.default.svc.cluster.local' }) >= CONNECTIONS + 1, 'every connection counted against the endpoint that served');

  // Ejected: new connections do not even try it.
  const retriesBefore = metricValue(m, 'ambit_connect_retries_total');
  let after = 0;
  for (let i = 0; i < 20; i++) if ((await once('web.default')).echoed) after++;
  t.equal(after, 20, '20 more connections after the ejection opened');
  t.equal(metricValue(await metrics(), 'ambit_connect_retries_total'), retriesBefore, 'after the ejection no connection needed a retry');
});

t.test('every endpoint dead: a bounded number of attempts, then a clean refusal', async (t) => {
  const before = metricValue(await metrics(), 'ambit_connect_retries_total', { result: 'failed' });
  const started = Date.now();
  const r = await once('gone.default');
  t.equal(r.reply, 5, 'the client hears "connection refused", not a hang');
  t.ok(Date.now() - started < CONNECT_TIMEOUT_MS, `within the connect timeout (${Date.now() - started} ms)`);
  // The end (and the attempts before it) reach the agent after the client's refusal: wait for the record.
  const log = await agentA.proc.waitForLog((l) => l.msg === 'connection' && l['dst.service'] === 'gone.default.svc.cluster.local');
  // Two endpoints: the first attempt and one retry, both failed.
  t.equal(metricValue(await metrics(), 'ambit_connect_retries_total', { result: 'failed' }) - before, 1, 'one retry, to the other endpoint, then no more');
  t.match(log, { response_flags: 'UF' }, 'the access log records an upstream failure');
});
