/**
 * Per-request handling on HTTP service ports (docs/l7.md), with real
 * processes on 127.0.121.x: a controller, node-a (the client's agent) and
 * node-b, which runs real node:http, node:http2 and @grpc/grpc-js servers
 * as three endpoints per service. The client reaches each service through
 * an upstream listener of node-a, on ONE connection: its requests are
 * spread over the endpoints one by one; an endpoint answering 503 is
 * ejected and the client then sees its requests succeed; requests beyond
 * the service's cap are answered 503 with response flag UO; an Upgrade is
 * passed through as a byte stream; gRPC calls and their statuses go end to end.
 */
import t, { type Test } from 'tap';
import { once } from 'node:events';
import { mkdtempSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { grpcCall, grpcServer, httpServer, tally } from './http-apps.ts';
import { agentKnowsNode, agentsReady, ambitctl, eventually, hostPortOf, httpGet, metricValue, setUp, startAgentPair, startController, type RunningAgent, type RunningController } from './harness.ts';

const ip = (n: number): string => `127.0.121.${n}`;
const CTL = ip(1);
const A = ip(2);
const B = ip(3);
const CLIENT = ip(10);
const WEB = [ip(11), ip(12), ip(13)] as const;
const FLAKY = [ip(21), ip(22), ip(23)] as const; // the third answers 503
const SLOW = ip(31);
const HTTP_PORT = 8080;
const H2_PORT = 8082;
const GRPC_PORT = 50051;
const SLOW_MS = 700;
const MAX_PENDING = 4;
/** node-a's upstream listeners, one per service. */
const PORTS = { web: 19080, flaky: 19081, h2: 19082, grpc: 19083, slow: 19084 } as const;
const REQUESTS = 600;

const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-l7-'));
let ctl: RunningController;
let agentA: RunningAgent;
let agentB: RunningAgent;
/** The test servers' stops, run at teardown (setUp runs them only when the set-up fails). */
const servers: (() => unknown)[] = [];

t.before(async () => {
  await setUp(async (registered) => {
    const started = (stop: () => unknown): void => {
      registered(stop);
      servers.push(stop);
    };
    for (const [i, addr] of WEB.entries()) {
      const name = `web-${i + 1}`;
      const h1 = await httpServer(addr, HTTP_PORT, (_req, res) => res.end(name));
      started(() => h1.close());
      started(() => h1.closeAllConnections());
      const h2 = http2.createServer((_req, res) => res.end(name));
      h2.listen(H2_PORT, addr);
      await once(h2, 'listening');
      started(() => h2.close());
      const g = await grpcServer(addr, GRPC_PORT, name);
      started(() => g.forceShutdown());
    }
    for (const [i, addr] of FLAKY.entries()) {
      const s = await httpServer(addr, HTTP_PORT, (_req, res) => {
        res.statusCode = i === 2 ? 503 : 200;
        res.end(`flaky-${i + 1}`);
      });
      started(() => s.close());
      started(() => s.closeAllConnections());
    }
    const slow = await httpServer(SLOW, HTTP_PORT, (_req, res) => setTimeout(() => res.end('slow'), SLOW_MS));
    started(() => slow.close());
    started(() => slow.closeAllConnections());

    ctl = await startController(join(root, 'ctl'), [], CTL);
    registered(() => ctl.proc.stop());
    const ok = async (args: string[]): Promise<string> => {
      const r = await ambitctl(ctl, args);
      if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    };
    const register = (name: string, addr: string, app: string, ports: number[]): Promise<string> =>
      ok(['workload', 'register', '--name', name, '--service-account', app, '--node', 'node-b', '--address', addr, ...ports.flatMap((p) => ['--port', String(p)]), '--label', `app=${app}`]);
    await ok(['workload', 'register', '--name', 'client', '--service-account', 'client', '--node', 'node-a', '--address', CLIENT]);
    for (const [i, addr] of WEB.entries()) await register(`web-${i + 1}`, addr, 'web', [HTTP_PORT, H2_PORT, GRPC_PORT]);
    for (const [i, addr] of FLAKY.entries()) await register(`flaky-${i + 1}`, addr, 'flaky', [HTTP_PORT]);
    await register('slow', SLOW, 'slow', [HTTP_PORT]);
    await ok(['service', 'create', '--name', 'web', '--port', `80:${HTTP_PORT}/http`, '--selector', 'app=web']);
    await ok(['service', 'create', '--name', 'h2', '--port', `81:${H2_PORT}/http2`, '--selector', 'app=web']);
    await ok(['service', 'create', '--name', 'grpc', '--port', `${GRPC_PORT}/grpc`, '--selector', 'app=web']);
    await ok(['service', 'create', '--name', 'flaky', '--port', `80:${HTTP_PORT}/http`, '--selector', 'app=flaky']);
    await ok(['service', 'create', '--name', 'slow', '--port', `80:${HTTP_PORT}/http`, '--selector', 'app=slow']);
    const [ta, tb] = [(await ok(['node', 'token', 'create', '--node', 'node-a'])).trim(), (await ok(['node', 'token', 'create', '--node', 'node-b'])).trim()];
    const upstreams = [
      `default/client:${PORTS.web}=web.default:80`, `default/client:${PORTS.flaky}=flaky.default:80`, `default/client:${PORTS.h2}=h2.default:81`,
      `default/client:${PORTS.grpc}=grpc.default:${GRPC_PORT}`, `default/client:${PORTS.slow}=slow.default:80`,
    ].join(',');
    // A long ejection: the checks after the load must still see it, however slow the machine.
    [agentA, agentB] = await startAgentPair(registered, [
      {
        node: 'node-a', address: A, controller: ctl.address, dataDir: join(root, 'a'), join: ta,
        extra: ['--upstreams', upstreams, '--outlier-base-ejection', '120s', '--outlier-consecutive-failures', '3', '--http-max-pending-requests', String(MAX_PENDING), '--drain-timeout', '1s'],
      },
      // A short drain (both): the teardown need not wait for the data planes' idle pooled connections.
      { node: 'node-b', address: B, controller: ctl.address, dataDir: join(root, 'b'), join: tb, extra: ['--drain-timeout', '1s'] },
    ]);
    await agentsReady([agentA, agentB], 20_000);
    await agentKnowsNode(agentA, 'node-b');
  });
});
t.teardown(async () => {
  await Promise.all([agentA?.proc.stop(), agentB?.proc.stop()]);
  await ctl?.proc.stop();
  for (const stop of servers) await Promise.resolve().then(stop).catch(() => undefined);
});

/** An HTTP/1.1 keep-alive client with one connection at most, from the client workload's address. */
function oneConnection(): { agent: http.Agent; sockets: Set<number> } {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1, localAddress: CLIENT } as http.AgentOptions);
  const sockets = new Set<number>();
  agent.on('free', (s: Socket) => sockets.add(s.localPort ?? 0));
  return { agent, sockets };
}

function get(agent: http.Agent, port: number, host: string, path = '/'): Promise<{ status: number; body: string; flags: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: A, port, path, agent, headers: { host } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, flags: String(res.headers['x-ambit-response-flags'] ?? '') }));
    });
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error('request timed out')));
  });
}

/** Each of the three endpoints got REQUESTS/3 ± 10 %. */
function evenly(t: Test, counts: Record<string, number>, what: string): void {
  const even = REQUESTS / 3;
  t.same(Object.keys(counts).sort(), ['web-1', 'web-2', 'web-3'], `${what}: all three endpoints served`);
  for (const [name, n] of Object.entries(counts)) t.ok(Math.abs(n - even) <= even * 0.1, `${what}: ${name} served ${n} of ${REQUESTS} (even: ${even} ± 10 %)`);
}

t.test('HTTP/1.1: 600 requests on one keep-alive connection spread evenly over three endpoints', async (t) => {
  const warm = oneConnection();
  await eventually(async () => (await get(warm.agent, PORTS.web, 'web.default')).status === 200, 'node-a serves web', 20_000);
  warm.agent.destroy();
  const one = oneConnection();
  t.teardown(() => one.agent.destroy());
  const names: string[] = [];
  for (let i = 0; i < REQUESTS; i++) {
    const r = await get(one.agent, PORTS.web, 'web.default');
    if (r.status !== 200) t.fail(`request ${i}: ${r.status} ${r.flags} ${r.body}`);
    names.push(r.body);
  }
  t.equal(one.sockets.size, 1, 'one client connection carried them all');
  evenly(t, tally(names), 'HTTP/1.1');
});

t.test('HTTP/2 with prior knowledge: 600 requests on one connection spread evenly', async (t) => {
  const session = http2.connect(`http://${A}:${PORTS.h2}`, { createConnection: () => connect({ host: A, port: PORTS.h2, localAddress: CLIENT }) });
  t.teardown(() => session.close());
  const request = (): Promise<{ status: number; body: string }> => new Promise((resolve, reject) => {
    const s = session.request({ ':path': '/', ':authority': 'h2.default:81' });
    let status = 0;
    let body = '';
    s.setEncoding('utf8');
    s.on('response', (h) => (status = Number(h[':status'])));
    s.on('data', (d: string) => (body += d));
    s.on('end', () => resolve({ status, body }));
    s.on('error', reject);
  });
  const names: string[] = [];
  // Several at a time (as many as the pending cap allows): requests in flight together on the one connection.
  for (let i = 0; i < REQUESTS; i += MAX_PENDING) {
    for (const r of await Promise.all(Array.from({ length: Math.min(MAX_PENDING, REQUESTS - i) }, request))) {
      if (r.status !== 200) t.fail(`${r.status} ${r.body}`);
      names.push(r.body);
    }
  }
  evenly(t, tally(names), 'HTTP/2');
});

t.test('gRPC: a real @grpc/grpc-js server answers calls end to end, statuses included, spread over its endpoints', async (t) => {
  const session = http2.connect(`http://${A}:${PORTS.grpc}`, { createConnection: () => connect({ host: A, port: PORTS.grpc, localAddress: CLIENT }) });
  t.teardown(() => session.close());
  const names: string[] = [];
  for (let i = 0; i < 60; i++) {
    const r = await grpcCall(session, `grpc.default:${GRPC_PORT}`, `hi-${i}`);
    t.equal(r.grpcStatus, '0', `call ${i}: OK`);
    t.match(r.body, new RegExp(`^web-[123]:hi-${i}$`));
    names.push(r.body.split(':')[0]!);
  }
  t.same(Object.keys(tally(names)).sort(), ['web-1', 'web-2', 'web-3'], 'calls of one connection reached all three endpoints');
  const failed = await grpcCall(session, `grpc.default:${GRPC_PORT}`, 'fail');
  t.equal(failed.status, 200);
  t.equal(failed.grpcStatus, String(grpc.status.NOT_FOUND), 'the server\'s status reaches the client');

  // Each data plane reads the answer's grpc-status (from trailers) into Istio's grpc_response_status, on both sides.
  for (const [agent, reporter] of [[agentA, 'source'], [agentB, 'destination']] as const) {
    const count = async (status: string): Promise<number> => metricValue((await httpGet(hostPortOf(agent.metrics), '/metrics')).body, 'istio_requests_total', { reporter, request_protocol: 'grpc', grpc_response_status: status });
    await eventually(async () => (await count('5')) === 1 && (await count('0')) === 60, `${reporter} reporter: 60 calls with grpc_response_status 0, one with 5`, 10_000);
    t.pass(`${reporter} reporter: istio_requests_total carries the gRPC statuses (0 ×60, NOT_FOUND ×1)`);
  }
});

t.test('an endpoint answering 503 is ejected: the client then sees at least 99 % success', async (t) => {
  const { agent } = oneConnection();
  t.teardown(() => agent.destroy());
  const results: { status: number; body: string }[] = [];
  for (let i = 0; i < REQUESTS; i++) results.push(await get(agent, PORTS.flaky, 'flaky.default'));
  const failed = results.filter((r) => r.status !== 200);
  t.ok(failed.every((r) => r.status === 503 && r.body === 'flaky-3'), 'the failures are the flaky endpoint\'s own answers');
  t.ok(failed.length <= 3, `${failed.length} failures: the three in a row that ejected it, no more`);
  const success = (results.length - failed.length) / results.length;
  t.ok(success >= 0.99, `${(success * 100).toFixed(1)} % of ${REQUESTS} requests succeeded`);
  t.notOk(results.slice(-REQUESTS / 2).some((r) => r.body === 'flaky-3'), 'once ejected it gets no request');

  const dump = JSON.parse((await httpGet(hostPortOf(agentA.admin), '/config_dump')).body) as { ejectedHttpEndpoints: { service: string; endpoint: string; workload: string; reason: string; ejections: number; until: string }[] };
  t.match(dump.ejectedHttpEndpoints, [{ service: 'flaky.default.svc.cluster.local', endpoint: `${FLAKY[2]}:${HTTP_PORT}`, workload: 'default/flaky-3', reason: 'status_503', ejections: 1 }], '/config_dump shows who is ejected and why');
  t.equal(dump.ejectedHttpEndpoints.length, 1, 'only the failing one');
  const metrics = (await httpGet(hostPortOf(agentA.metrics), '/metrics')).body;
  t.equal(metricValue(metrics, 'ambit_endpoint_ejections_total', { service: 'flaky.default.svc.cluster.local' }), 1, 'counted');
  t.equal(metricValue(metrics, 'ambit_endpoint_ejected', { service: 'flaky.default.svc.cluster.local', endpoint: `${FLAKY[2]}:${HTTP_PORT}` }), 1, 'and out now');
});

t.test('circuit breaking: requests beyond the service\'s pending cap are answered 503 with flag UO', async (t) => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 20, localAddress: CLIENT } as http.AgentOptions);
  t.teardown(() => agent.destroy());
  const results = await Promise.all(Array.from({ length: 20 }, () => get(agent, PORTS.slow, 'slow.default')));
  const ok = results.filter((r) => r.status === 200);
  const overflow = results.filter((r) => r.status === 503 && r.flags === 'UO');
  t.equal(ok.length + overflow.length, 20, 'each answered by the server or by the circuit breaker');
  t.ok(ok.length >= 1 && ok.length <= MAX_PENDING, `${ok.length} served: at most the cap of ${MAX_PENDING} at once`);
  t.ok(overflow.length >= 20 - MAX_PENDING, `${overflow.length} answered 503 UO at once`);
  t.match(overflow[0]?.body, /overflow/);
  const after = await get(agent, PORTS.slow, 'slow.default');
  t.equal(after.status, 200, 'once the load is gone the service answers again');
});

t.test('an Upgrade is answered and then passes through as a byte stream', async (t) => {
  const socket = connect({ host: A, port: PORTS.web, localAddress: CLIENT });
  t.teardown(() => socket.destroy());
  await once(socket, 'connect');
  let got = '';
  socket.setEncoding('utf8');
  socket.on('data', (d: string) => (got += d));
  socket.write('GET /ws HTTP/1.1\r\nHost: web.default\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n');
  await eventually(async () => got.includes('\r\n\r\n'), 'the upgrade answer', 10_000);
  t.match(got, /^HTTP\/1\.1 101 /, 'switching protocols');
  const head = got.slice(0, got.indexOf('\r\n\r\n') + 4);
  for (const word of ['hello', ' binary \u0000 bytes', ' and more']) socket.write(word);
  await eventually(async () => got.slice(head.length) === 'hello binary \u0000 bytes and more', 'the bytes echoed back', 10_000);
  t.pass('bytes flow both ways after the 101');
});
