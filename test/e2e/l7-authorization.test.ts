import t from 'tap';
import { mkdtempSync } from 'node:fs';
import http, { type IncomingMessage } from 'node:http';
import http2 from 'node:http2';
import { connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { agentKnowsNode, agentsReady, ambitctl, eventually, hostPortOf, httpGet, metricValue, startAgentPair, startController, type RunningAgent, type RunningController } from './harness.ts';

/*
 * Request-level authorization through two real agents: a client on node-a
 * reaches a web workload on node-b through node-a's upstream listeners, on
 * ports whose Service declares http (HTTP/1.1), http2 and grpc. A DENY on
 * method and path answers the denied requests 403 naming the policy (gRPC:
 * PERMISSION_DENIED) while the same client connection's other requests go
 * through to the app.
 */

const NET = '127.0.122';
const CTL = `${NET}.1`;
const A = `${NET}.2`;
const B = `${NET}.3`;
const CLIENT_IP = `${NET}.4`;
const WEB_IP = `${NET}.5`;
const PORTS = { http: 8080, h2: 8081, grpc: 8082 } as const;
const LOCAL = { http: 19180, h2: 19181, grpc: 19182 } as const;
const POLICY = 'default/web-no-admin-writes';

const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-l7-authz-'));
let ctl: RunningController;
let agentA: RunningAgent;
let agentB: RunningAgent;
/** Requests the apps saw, "METHOD path". */
const seen: string[] = [];

const echo = {
  Allowed: { path: '/test.Echo/Allowed', requestStream: false, responseStream: false, requestSerialize: (b: Buffer) => b, requestDeserialize: (b: Buffer) => b, responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b },
  Forbidden: { path: '/test.Echo/Forbidden', requestStream: false, responseStream: false, requestSerialize: (b: Buffer) => b, requestDeserialize: (b: Buffer) => b, responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b },
} satisfies grpc.ServiceDefinition;

async function ok(args: string[], stdin?: string): Promise<string> {
  const r = await ambitctl(ctl, args, stdin);
  if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

function listen(server: http.Server | http2.Http2Server, port: number): Promise<void> {
  return new Promise((r) => server.listen(port, WEB_IP, r));
}

t.before(async () => {
  const h1 = http.createServer((req, res) => {
    seen.push(`${req.method} ${req.url}`);
    res.end(`h1 ${req.method} ${req.url} host=${req.headers.host}`);
  });
  const h2 = http2.createServer((req, res) => {
    seen.push(`${req.method} ${req.url}`);
    res.end(`h2 ${req.method} ${req.url} authority=${req.headers[':authority']}`);
  });
  const g = new grpc.Server();
  g.addService(echo, {
    Allowed: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => cb(null, call.request),
    Forbidden: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => cb(null, call.request),
  });
  await listen(h1, PORTS.http);
  await listen(h2, PORTS.h2);
  await new Promise<void>((r, j) => g.bindAsync(`${WEB_IP}:${PORTS.grpc}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? j(e) : r())));
  t.teardown(() => {
    h1.closeAllConnections();
    h1.close();
    h2.close();
    g.forceShutdown();
  });
  ctl = await startController(join(root, 'ctl'), [], CTL);
  t.teardown(() => ctl.proc.stop());
  await ok(['workload', 'register', '--name', 'web', '--service-account', 'web', '--node', 'node-b', '--address', WEB_IP, '--port', String(PORTS.http), '--port', String(PORTS.h2), '--port', String(PORTS.grpc), '--label', 'app=web']);
  // Its uid proves the client on node-a's upstream listeners (as on a VM), whatever address a client socket has.
  await ok(['workload', 'register', '--name', 'client', '--service-account', 'client', '--node', 'node-a', '--address', CLIENT_IP, '--uid', String(process.getuid?.() ?? 0)]);
  await ok(['service', 'create', '--name', 'web', '--port', `web=80:${PORTS.http}/http`, '--port', `h2=81:${PORTS.h2}/http2`, '--port', `grpc=82:${PORTS.grpc}/grpc`, '--selector', 'app=web']);
  await ok(['apply', '-f', '-'], `
apiVersion: ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: web-no-admin-writes, namespace: default }
spec:
  selector: { matchLabels: { app: web } }
  action: DENY
  rules:
    - to:
        - operation: { methods: [POST, DELETE], paths: ["/admin/*"] }
        - operation: { paths: ["/test.Echo/Forbidden"] }
`);
  const ta = (await ok(['node', 'token', 'create', '--node', 'node-a'])).trim();
  const tb = (await ok(['node', 'token', 'create', '--node', 'node-b'])).trim();
  const upstreams = `default/client:${LOCAL.http}=web.default:80,default/client:${LOCAL.h2}=web.default:81,default/client:${LOCAL.grpc}=web.default:82`;
  [agentA, agentB] = await startAgentPair((stop) => t.teardown(stop), [
    { node: 'node-a', address: A, controller: ctl.address, dataDir: join(root, 'a'), join: ta, extra: ['--upstreams', upstreams] },
    { node: 'node-b', address: B, controller: ctl.address, dataDir: join(root, 'b'), join: tb },
  ]);
  await agentsReady([agentA, agentB]);
  await agentKnowsNode(agentA, 'node-b');
});

/** One HTTP/1.1 request on `socket` (kept alive): status, body, and whether the socket was reused. */
function h1Request(agent: http.Agent, method: string, path: string): Promise<{ status: number; body: string; reused: boolean }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: A, port: LOCAL.http, method, path, agent, headers: { host: 'web.default' } }, (res: IncomingMessage) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d)).on('end', () => resolve({ status: res.statusCode ?? 0, body, reused: req.reusedSocket }));
    });
    req.on('error', reject);
    req.end(method === 'POST' ? 'x' : undefined);
  });
}

t.test('HTTP/1.1 keep-alive: the denied request gets 403 naming the policy, the same connection serves the others', async (t) => {
  let sockets = 0;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  agent.on('free', () => undefined);
  const create = agent.createConnection.bind(agent);
  agent.createConnection = ((...args: Parameters<typeof create>) => {
    sockets++;
    return create(...args);
  }) as typeof agent.createConnection;
  t.teardown(() => agent.destroy());
  const before = seen.length;
  const first = await h1Request(agent, 'GET', '/admin/settings');
  t.equal(first.status, 200, 'GET /admin/settings is allowed');
  t.match(first.body, /^h1 GET \/admin\/settings host=web\.default$/, 'the app answered, with the Host the client sent');
  const denied = await h1Request(agent, 'POST', '/admin/settings');
  t.equal(denied.status, 403, 'POST /admin/settings is denied');
  t.match(denied.body, `access denied by policy ${POLICY}`, 'the body names the deciding policy');
  const normalised = await h1Request(agent, 'POST', '/public/../admin/%73ettings');
  t.equal(normalised.status, 403, 'the same path spelled with a dot segment and an escape is denied too');
  const after = await h1Request(agent, 'POST', '/public/form');
  t.equal(after.status, 200, 'POST elsewhere is allowed on the same connection');
  t.ok(denied.reused && normalised.reused && after.reused, 'every request after the first reused the one connection');
  t.equal(sockets, 1, 'one client connection carried all four requests');
  t.same(seen.slice(before), ['GET /admin/settings', 'POST /public/form'], 'the app saw only the allowed requests');
});

t.test('HTTP/2: denied streams get 403, the session\'s other streams go through', async (t) => {
  const session = http2.connect(`http://web.default:81`, { createConnection: () => netConnect(LOCAL.h2, A) });
  t.teardown(() => session.close());
  const ask = (method: string, path: string): Promise<{ status: number; body: string }> => new Promise((resolve, reject) => {
    const s = session.request({ ':method': method, ':path': path });
    let body = '';
    let status = 0;
    s.on('response', (h) => (status = Number(h[':status'])));
    s.setEncoding('utf8').on('data', (d: string) => (body += d)).on('end', () => resolve({ status, body })).on('error', reject);
    s.end();
  });
  const before = seen.length;
  const results = await Promise.all([ask('GET', '/admin/x'), ask('DELETE', '/admin/x'), ask('POST', '/other')]);
  t.equal(results[0]!.status, 200, 'GET allowed');
  t.match(results[0]!.body, 'authority=web.default:81', 'the app sees the :authority the client sent');
  t.equal(results[1]!.status, 403, 'DELETE /admin/x denied');
  t.match(results[1]!.body, POLICY);
  t.equal(results[2]!.status, 200, 'POST /other allowed');
  t.same(seen.slice(before).sort(), ['GET /admin/x', 'POST /other'], 'the app saw only the allowed requests');
});

t.test('gRPC: a denied method gets PERMISSION_DENIED naming the policy; the channel\'s other calls succeed', async (t) => {
  const Client = grpc.makeGenericClientConstructor(echo, 'Echo');
  const client = new Client(`${A}:${LOCAL.grpc}`, grpc.credentials.createInsecure()) as unknown as Record<'Allowed' | 'Forbidden', (req: Buffer, cb: (err: grpc.ServiceError | null, res?: Buffer) => void) => void> & grpc.Client;
  t.teardown(() => client.close());
  const call = (m: 'Allowed' | 'Forbidden'): Promise<{ err: grpc.ServiceError | null; res?: Buffer }> => new Promise((r) => client[m](Buffer.from('ping'), (err, res) => r({ err, res })));
  const a = await call('Allowed');
  t.equal(a.err, null, 'Allowed succeeds');
  t.equal(a.res?.toString(), 'ping');
  const f = await call('Forbidden');
  t.equal(f.err?.code, grpc.status.PERMISSION_DENIED, 'Forbidden: PERMISSION_DENIED');
  t.match(f.err?.details, POLICY, 'the status message names the policy');
  const again = await call('Allowed');
  t.equal(again.err, null, 'the channel still serves allowed calls');
});

t.test('denials are counted by the destination agent under the deciding policy', async (t) => {
  const count = await eventually(async () => {
    const v = metricValue((await httpGet(hostPortOf(agentB.metrics), '/metrics')).body, 'ambit_request_denials_total', { policy: POLICY, reason: 'denied_by_policy' });
    return v >= 4 ? v : undefined;
  }, 'ambit_request_denials_total counts the four denials');
  t.equal(count, 4, 'two HTTP/1.1, one HTTP/2, one gRPC');
  const log = await agentB.proc.waitForLog((l) => l.msg === 'requests denied by authorization policy');
  t.equal(log.policy, POLICY);
});

t.test('a policy change reaches live connections: the next request is decided by the new policy', async (t) => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  t.equal((await h1Request(agent, 'GET', '/reports')).status, 200, 'allowed before');
  await ok(['apply', '-f', '-'], `
apiVersion: ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: web-read-only, namespace: default }
spec:
  selector: { matchLabels: { app: web } }
  action: ALLOW
  rules:
    - to:
        - operation: { methods: [GET], paths: ["/public/*"] }
        - operation: { paths: ["/test.Echo/*"] }
`);
  const r = await eventually(async () => {
    const x = await h1Request(agent, 'GET', '/reports');
    return x.status === 403 ? x : undefined;
  }, 'GET /reports is denied once the ALLOW is in force');
  t.match(r.body, 'no ALLOW policy matched');
  t.ok(r.reused, 'on the connection that was open before the change');
  const pub = await h1Request(agent, 'GET', '/public/index.html');
  t.equal(pub.status, 200, 'what the ALLOW names still goes through');
  t.ok(pub.reused);
  await ok(['delete', '-f', '-'], 'apiVersion: ambit.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: { name: web-read-only, namespace: default }\n');
});

t.test('ambitctl apply refuses HTTP fields that can only reach TCP ports, naming the field; nothing is applied', async (t) => {
  const r = await ambitctl(ctl, ['apply', '-f', '-'], `
apiVersion: ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: web-tcp-methods, namespace: default }
spec:
  selector: { matchLabels: { app: web } }
  action: DENY
  rules:
    - to:
        - operation: { ports: [9999], methods: [GET] }
`);
  t.not(r.code, 0, 'refused');
  t.match(r.stderr, /spec\.rules\[0\]\.to\[0\]\.operation\.methods: HTTP fields apply only to ports a Service declares http, http2 or grpc/);
  t.match((await ambitctl(ctl, ['policy', 'list'])).stdout, /^(?![\s\S]*web-tcp-methods)/, 'not stored');
});
