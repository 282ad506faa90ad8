/**
 * Traces exported end to end: a controller and two agents (real processes)
 * export OTLP to receivers in this test, which decode the OTLP protobuf. One
 * connection tunnelled from a client workload on node-a to a server workload
 * on node-b yields one trace: the source agent's span, and the destination
 * agent's span as its child (the traceparent carried in the HBONE CONNECT).
 * On a service port declaring HTTP, each agent's data plane continues the
 * request's traceparent with a span per request: the source agent's is the
 * client app's span's child, the destination agent's the source agent's, and
 * the server app is sent the destination agent's. The agents export over OTLP/HTTP (configured by
 * the standard OTEL_* variables), the controller over OTLP/gRPC (flags).
 */
import t from 'tap';
import { mkdtempSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { agentKnowsNode, agentsReady, ambitctl, setUp, socksConnect, startAgentPair, startController, startEchoServer, type RunningAgent, type RunningController } from './harness.ts';
import { startOtlpGrpcReceiver, startOtlpHttpReceiver, type OtlpReceiver, type ReceivedSpan } from './otlp-receiver.ts';

const NET = '127.0.124';
const CTL = `${NET}.1`;
const A = `${NET}.2`;
const B = `${NET}.3`;
const RX = `${NET}.4`;
const CLIENT_IP = `${NET}.12`;
const WEB_IP = `${NET}.13`;
const WEB_PORT = 8080;
const HTTP_PORT = 8081;
/** Agent A's upstream listener for the client's HTTP requests to web.default:81. */
const LOCAL_HTTP = 19181;
const CLIENT_ID = 'spiffe://cluster.local/ns/default/sa/client';
const WEB_ID = 'spiffe://cluster.local/ns/default/sa/web';

const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-tracing-'));
let ctl: RunningController;
let agentA: RunningAgent;
let agentB: RunningAgent;
let httpRx: OtlpReceiver;
let grpcRx: OtlpReceiver;
/** The traceparent of each request the HTTP app received, in order. */
const appSaw: (string | undefined)[] = [];

t.setTimeout(90_000);

t.before(async () => {
  await setUp(async (started) => {
    httpRx = await startOtlpHttpReceiver(RX);
    started(() => httpRx.close());
    grpcRx = await startOtlpGrpcReceiver(RX);
    started(() => grpcRx.close());
    const web = await startEchoServer(WEB_IP, WEB_PORT);
    started(() => web.close());
    const app = http.createServer((req, res) => {
      const tp = req.headers.traceparent;
      appSaw.push(Array.isArray(tp) ? tp.join(', ') : tp);
      res.end('ok');
    });
    await new Promise<void>((r) => app.listen(HTTP_PORT, WEB_IP, r));
    started(() => {
      app.closeAllConnections();
      app.close();
    });
    ctl = await startController(join(root, 'ctl'), ['--traces-exporter', 'otlp', '--otlp-protocol', 'grpc', '--otlp-endpoint', grpcRx.url, '--traces-export-delay', '100'], CTL);
    started(() => ctl.proc.stop());
    const ok = async (args: string[]): Promise<string> => {
      const r = await ambitctl(ctl, args);
      if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')}: ${r.stderr}`);
      return r.stdout.trim();
    };
    await ok(['workload', 'register', '--name', 'web', '--service-account', 'web', '--node', 'node-b', '--address', WEB_IP, '--port', String(WEB_PORT), '--port', String(HTTP_PORT), '--label', 'app=web']);
    await ok(['workload', 'register', '--name', 'client', '--service-account', 'client', '--node', 'node-a', '--address', CLIENT_IP]);
    await ok(['service', 'create', '--name', 'web', '--port', `tcp=80:${WEB_PORT}`, '--port', `web=81:${HTTP_PORT}/http`, '--selector', 'app=web']);
    const ta = await ok(['node', 'token', 'create', '--node', 'node-a']);
    const tb = await ok(['node', 'token', 'create', '--node', 'node-b']);
    const env = { OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_ENDPOINT: httpRx.url, OTEL_BSP_SCHEDULE_DELAY: '100', OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment=e2e' };
    [agentA, agentB] = await startAgentPair(started, [
      { node: 'node-a', address: A, controller: ctl.address, dataDir: join(root, 'a'), join: ta, env, extra: ['--upstreams', `default/client:${LOCAL_HTTP}=web.default:81`] },
      { node: 'node-b', address: B, controller: ctl.address, dataDir: join(root, 'b'), join: tb, env },
    ]);
    await agentsReady([agentA, agentB]);
    await agentKnowsNode(agentA, 'node-b');
    t.teardown(async () => {
      await agentA.proc.stop();
      await agentB.proc.stop();
      await ctl.proc.stop();
      web.close();
      app.closeAllConnections();
      app.close();
      await httpRx.close();
      await grpcRx.close();
    });
  });
});

/** Opens a connection from the client workload to web.default:80 through agent A, echoes `payload`, closes. */
async function connection(payload: Buffer): Promise<number> {
  const { socket, reply } = await socksConnect(agentA.socks, CLIENT_IP, 'default/client', 'web.default', 80);
  if (reply !== 0) throw new Error(`SOCKS5 reply ${reply}`);
  let echoed = 0;
  socket.on('data', (d: Buffer) => (echoed += d.length));
  socket.resume();
  socket.end(payload);
  await new Promise((r) => socket.once('end', r));
  socket.destroy();
  return echoed;
}

t.test('one connection, one trace: source agent → destination agent, with the right links and attributes', async (t) => {
  const payload = Buffer.alloc(12_345, 7);
  t.equal(await connection(payload), payload.length, 'echoed through two agents');
  const [out, inb] = await httpRx.waitFor((spans) => {
    const o = spans.find((s) => s.name === 'ambit.outbound' && s.attributes['ambit.bytes_recv'] === payload.length);
    const i = o && spans.find((s) => s.name === 'ambit.inbound' && s.traceId === o.traceId);
    return o && i ? ([o, i] as const) : undefined;
  }, 'the outbound span from node-a and the inbound span of its trace from node-b');

  t.equal(out.resource['service.name'], 'ambit-agent');
  t.equal(out.resource['ambit.node'], 'node-a', 'the source span comes from node-a');
  t.equal(out.resource['ambit.mesh'], 'cluster.local', 'resource: the mesh (trust domain)');
  t.equal(out.resource['service.instance.id'], 'spiffe://cluster.local/ambit/node/node-a');
  t.equal(out.resource['deployment.environment'], 'e2e', 'OTEL_RESOURCE_ATTRIBUTES');
  t.equal(inb.resource['ambit.node'], 'node-b', 'the destination span comes from node-b');

  t.equal(out.kind, 3, 'source: a client span');
  t.equal(out.parentSpanId, '', 'the source span starts the trace (an L4 connection carries no app traceparent)');
  t.equal(inb.kind, 2, 'destination: a server span');
  t.equal(inb.traceId, out.traceId, 'one trace id across both agents');
  t.equal(inb.parentSpanId, out.spanId, 'the destination span is the child of the source span (traceparent in the CONNECT)');
  t.ok(inb.startNs >= out.startNs, 'the child starts after its parent (one machine\'s clock)');

  for (const [s, reporter] of [[out, 'source'], [inb, 'destination']] as [ReceivedSpan, string][]) {
    t.equal(s.attributes['ambit.source.workload'], 'client', `${reporter}: source workload`);
    t.equal(s.attributes['ambit.source.principal'], CLIENT_ID, `${reporter}: source identity`);
    t.equal(s.attributes['ambit.destination.workload'], 'web', `${reporter}: destination workload`);
    t.equal(s.attributes['ambit.destination.principal'], WEB_ID, `${reporter}: destination identity`);
    t.equal(s.attributes['ambit.bytes_recv'], payload.length, `${reporter}: bytes from the client`);
    t.equal(s.attributes['ambit.bytes_sent'], payload.length, `${reporter}: bytes back`);
    t.equal(s.attributes['ambit.response_flags'], '-', `${reporter}: no response flags`);
    t.equal(s.status.code, 0, `${reporter}: no error`);
  }
  t.equal(out.attributes['ambit.destination.service'], 'web.default.svc.cluster.local', 'the service the source resolved (its full name, as Istio\'s destination_service)');
});

t.test('a refused connection\'s span says why', async (t) => {
  const { socket, reply } = await socksConnect(agentA.socks, CLIENT_IP, 'default/client', 'nowhere.default', 80);
  socket.destroy();
  t.not(reply, 0, 'refused');
  const s = await httpRx.waitFor((spans) => spans.find((x) => x.name === 'ambit.outbound' && x.attributes['ambit.destination'] === 'nowhere.default:80'), 'the refused connection\'s span');
  t.equal(s.status.code, 2, 'an error status');
  t.ok(s.status.message.length > 0, `with the reason: ${s.status.message}`);
});

t.test('the controller exports over OTLP/gRPC: a span per certificate it signs', async (t) => {
  const spans = await grpcRx.waitFor((all) => {
    const csr = all.filter((s) => s.name === 'ambit.controller.CreateCertificate' && s.status.code === 0);
    const joins = all.filter((s) => s.name === 'ambit.controller.Join');
    return csr.length > 0 && joins.length >= 2 ? { csr, joins } : undefined;
  }, 'CreateCertificate and Join spans');
  t.equal(spans.joins.length, 2, 'one Join span per node');
  t.same(spans.joins.map((s) => s.attributes['ambit.node']).sort(), ['node-a', 'node-b']);
  const c = spans.csr.find((s) => s.attributes['ambit.identity'] === CLIENT_ID);
  t.ok(c, 'node-a\'s certificate for the client workload');
  t.equal(c?.attributes['ambit.node'], 'node-a');
  t.equal(c?.resource['service.name'], 'ambit-controller');
  t.equal(c?.resource['ambit.mesh'], 'cluster.local');
  t.equal(c?.via, 'grpc');
  t.notOk(httpRx.spans.some((s) => s.resource['service.name'] === 'ambit-controller'), 'the controller sent nothing to the agents\' HTTP receiver');
});

/** One HTTP request from the client workload to web.default:81 through agent A's upstream listener; resolves with the status. */
function request(path: string, headers: Record<string, string>): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: A, port: LOCAL_HTTP, localAddress: CLIENT_IP, path, headers: { host: 'web.default', ...headers }, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end();
  });
}

t.test('HTTP port: client app → source agent → destination agent → server app in one trace, the app\'s traceparent continued', async (t) => {
  // The client app's own span, as an instrumented app sends it.
  const clientTrace = '5b8efff798038103d269b633813fc60c';
  const clientSpan = 'eee19b7ec3c1b174';
  const before = appSaw.length;
  t.equal(await request('/orders/7?x=1', { traceparent: `00-${clientTrace}-${clientSpan}-01` }), 200, 'answered by the app');
  const outbound = await httpRx.waitFor((spans) => spans.find((s) => s.name === 'ambit.request.outbound' && s.traceId === clientTrace), 'the source agent\'s request span');
  t.equal(outbound.resource['ambit.node'], 'node-a', 'made by the source agent (its data plane)');
  t.equal(outbound.scope, 'ambit-dataplane');
  t.equal(outbound.parentSpanId, clientSpan, 'its parent is the client app\'s span (the app\'s traceparent)');
  t.equal(outbound.kind, 3, 'a client span');
  t.equal(outbound.attributes['url.path'], '/orders/7?x=1');
  t.equal(outbound.attributes['http.response.status_code'], 200);
  t.equal(outbound.attributes['ambit.destination.workload'], 'web');
  const inbound = await httpRx.waitFor((spans) => spans.find((s) => s.name === 'ambit.request.inbound' && s.traceId === clientTrace), 'the destination agent\'s request span');
  t.equal(inbound.resource['ambit.node'], 'node-b', 'made by the destination agent (its data plane)');
  t.equal(inbound.scope, 'ambit-dataplane');
  t.equal(inbound.parentSpanId, outbound.spanId, 'its parent is the source agent\'s request span (the traceparent the source agent forwarded)');
  t.not(inbound.spanId, outbound.spanId, 'a span of its own');
  t.equal(inbound.kind, 2, 'a server span');
  const seen = appSaw[before];
  t.equal(seen, `00-${clientTrace}-${inbound.spanId}-01`, 'the server app got a traceparent: the same trace, the destination agent\'s span as its parent');
  t.equal(inbound.attributes['http.request.method'], 'GET');
  t.equal(inbound.attributes['url.path'], '/orders/7?x=1');
  t.equal(inbound.attributes['http.response.status_code'], 200);
  t.equal(inbound.attributes['ambit.source.principal'], CLIENT_ID, 'the verified source');
  t.equal(inbound.attributes['ambit.destination.workload'], 'web');
  t.equal(inbound.attributes['ambit.destination.service'], 'web.default.svc.cluster.local');
  t.equal(inbound.status.code, 0);
  t.ok(inbound.endNs > inbound.startNs, 'a real duration');
  const line = await agentA.proc.waitForLog((l) => l.msg === 'request' && l.path === '/orders/7?x=1');
  t.equal(line.trace_id, clientTrace, 'the source agent\'s access-log line names the app\'s trace');
});

t.test('HTTP port: a request without a traceparent starts a trace at the source agent, and the app gets it', async (t) => {
  const before = appSaw.length;
  t.equal(await request('/no-context', {}), 200);
  const seen = appSaw[before];
  const m = /^00-([0-9a-f]{32})-([0-9a-f]{16})-01$/.exec(seen ?? '');
  t.ok(m, `the app got a traceparent: ${seen}`);
  const span = await httpRx.waitFor((spans) => spans.find((s) => s.name === 'ambit.request.inbound' && s.traceId === m?.[1]), 'its span');
  t.equal(span.spanId, m?.[2], 'the app\'s parent is the destination agent\'s span');
  t.equal(span.attributes['url.path'], '/no-context');
  const root = await httpRx.waitFor((spans) => spans.find((s) => s.name === 'ambit.request.outbound' && s.traceId === m?.[1]), 'the source agent\'s span');
  t.equal(span.parentSpanId, root.spanId, 'whose parent is the source agent\'s span');
  t.equal(root.parentSpanId, '', 'which starts the trace');
  const lineA = await agentA.proc.waitForLog((l) => l.msg === 'request' && l.path === '/no-context');
  t.equal(lineA.trace_id, m?.[1], 'the source agent\'s access-log line names the trace it started');
  const line = await agentB.proc.waitForLog((l) => l.msg === 'request' && l.path === '/no-context');
  t.equal(line.trace_id, m?.[1], 'the destination agent\'s access-log line names the same trace');
});
