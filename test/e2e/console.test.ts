/**
 * The web console in a real browser (docs/console.md): headless Debian
 * Chromium driven by playwright-core against real processes on 127.0.126.x —
 * a controller and two agents in the demo's shape (node-a: client, intruder;
 * node-b: web behind service web.demo, with the demo's ALLOW policy). An
 * admin logs in with a link from `ambitctl console`, sees both nodes, finds
 * the client → web edge with its rate in the service graph after traffic,
 * and the intruder's denial with its explanation. Without a session every
 * page and API answers 401 and shows nothing; bad, used and expired tokens
 * are refused. Screenshots go to the test's fixture directory.
 */
import t from 'tap';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import {
  agentKnowsNode, agentsReady, ambitctl, eventually, httpGet, metricValue, setUp, socksConnect, startAgentPair, startController, startEchoServer,
  type RunningAgent, type RunningController,
} from './harness.ts';
import { connect as netConnect, type Server, type Socket } from 'node:net';
import { Metadata } from '@grpc/grpc-js';
import { DiscoveryClient } from '../../shared/proto/gen/ambit.ts';
import { CONTROLLER_CHANNEL_OPTIONS, controllerCredentials } from '../../shared/controller-client.ts';
import { parseJoinToken } from '../../controller/registry/join-tokens.ts';
import { joinWithToken } from '../../agent/identity/ca-client.ts';
import { Agent as HttpAgent, createServer as createHttpServer, request as httpRequest, type Server as HttpServer } from 'node:http';

const ip = (n: number): string => `127.0.126.${n}`;
const CTL = ip(1);
const CLIENT = ip(12);
const WEB = ip(13);
const INTRUDER = ip(15);
const API = ip(14);
/** node-a's upstream listener for the client to api.demo:80 (an HTTP port: requests are counted). */
const API_UPSTREAM = 19126;
const CONNECTIONS = 12;

const MESH = `
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: { name: web, namespace: demo, labels: { app: web } }
spec: { serviceAccount: web, node: node-b, address: ${WEB}, ports: [8080] }
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: { name: client, namespace: demo, labels: { app: client } }
spec: { serviceAccount: client, node: node-a, address: ${CLIENT} }
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: { name: intruder, namespace: demo, labels: { app: intruder } }
spec: { serviceAccount: intruder, node: node-a, address: ${INTRUDER} }
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: { name: api, namespace: demo, labels: { app: api } }
spec: { serviceAccount: api, node: node-b, address: ${API}, ports: [8081] }
---
apiVersion: ambit.dev/v1alpha1
kind: Service
metadata: { name: api, namespace: demo }
spec:
  ports: [{ name: http, port: 80, targetPort: 8081, appProtocol: http }]
  selector: { app: api }
---
apiVersion: ambit.dev/v1alpha1
kind: Service
metadata: { name: web, namespace: demo }
spec:
  ports: [{ name: http, port: 80, targetPort: 8080 }]
  selector: { app: web }
---
apiVersion: ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: web-allow-client, namespace: demo }
spec:
  selector: { matchLabels: { app: web } }
  action: ALLOW
  rules:
    - from: [{ source: { principals: ["cluster.local/ns/demo/sa/client"] } }]
      to: [{ operation: { ports: [8080] } }]
`;

const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-console-'));
let ctl: RunningController;
let agentA: RunningAgent;
let agentB: RunningAgent;
let web: Server;
let api: HttpServer;

t.before(async () => {
  await setUp(async (started) => {
    web = await startEchoServer(WEB, 8080);
    started(() => web.close());
    // /fail answers 503: the graph's request error rate.
    api = createHttpServer((req, res) => res.writeHead(req.url === '/fail' ? 503 : 200).end('api\n'));
    await new Promise<void>((r) => api.listen(8081, API, r));
    started(() => api.close());
    ctl = await startController(join(root, 'ctl'), [], CTL);
    started(() => ctl.proc.stop());
    const ok = async (args: string[], stdin?: string): Promise<string> => {
      const r = await ambitctl(ctl, args, stdin);
      if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    };
    await ok(['apply', '-f', '-'], MESH);
    const [ta, tb] = [(await ok(['node', 'token', 'create', '--node', 'node-a'])).trim(), (await ok(['node', 'token', 'create', '--node', 'node-b'])).trim()];
    [agentA, agentB] = await startAgentPair(started, [
      { node: 'node-a', address: ip(2), controller: ctl.address, dataDir: join(root, 'a'), join: ta, extra: ['--telemetry-interval', '300ms', '--upstreams', `demo/client:${API_UPSTREAM}=api.demo:80`] },
      { node: 'node-b', address: ip(3), controller: ctl.address, dataDir: join(root, 'b'), join: tb, extra: ['--telemetry-interval', '300ms'] },
    ]);
    await agentsReady([agentA, agentB], 20_000);
    await agentKnowsNode(agentA, 'node-b');
  });
});
t.teardown(async () => {
  await agentA?.proc.stop();
  await agentB?.proc.stop();
  await ctl?.proc.stop();
  web?.close();
  api?.close();
  rmSync(root, { recursive: true, force: true });
});

interface Answer {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
}

/** One HTTPS request to the console (its certificate is the mesh CA's, which ambitctl's ca.pem holds). */
function fetchConsole(path: string, o: { method?: string; body?: string; cookie?: string; admin?: boolean; headers?: Record<string, string> } = {}): Promise<Answer> {
  const url = new URL(path, ctl.console);
  const creds = ctl.credentials;
  return new Promise((resolve, reject) => {
    const req = request(url, {
      method: o.method ?? 'GET',
      ca: readFileSync(join(creds, 'ca.pem')),
      ...(o.admin ? { cert: readFileSync(join(creds, 'cert.pem')), key: readFileSync(join(creds, 'key.pem')) } : {}),
      headers: { ...(o.cookie ? { cookie: o.cookie } : {}), ...(o.body !== undefined ? { 'content-type': 'application/x-www-form-urlencoded' } : {}), ...o.headers },
    }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d)).on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end(o.body);
  });
}

async function loginLink(ttl?: string): Promise<{ url: string; token: string }> {
  const r = await ambitctl(ctl, ['console', ...(ttl ? ['--ttl', ttl] : [])]);
  if (r.code !== 0) throw new Error(`ambitctl console: ${r.stderr}`);
  const m = /^Log in:\s+(\S+#token=(\S+))$/m.exec(r.stdout);
  if (!m) throw new Error(`no login link in: ${r.stdout}`);
  return { url: m[1]!, token: m[2]! };
}

/** Opens and closes one connection as `user` from `from` to web.demo:80; resolves with the SOCKS reply (0: tunnel opened, bytes echoed). */
async function connectAs(user: string, from: string): Promise<number> {
  const { socket, reply } = await socksConnect(agentA.socks, from, user, 'web.demo', 80, 10_000);
  if (reply !== 0) {
    socket.destroy();
    return reply;
  }
  await new Promise<void>((resolve, reject) => {
    socket.once('data', () => resolve());
    socket.once('error', reject);
    socket.resume();
    socket.write('ping');
  });
  socket.end();
  await new Promise((r) => socket.once('close', r));
  return 0;
}

t.test('without a session: 401 and nothing else, for pages and the API; bad tokens are refused', async (t) => {
  t.match(ctl.console, /^https:\/\/127\.0\.126\.1:\d+$/, 'the controller logged where its console listens');
  for (const path of ['/', '/api/nodes', '/api/status', '/api/graph', '/api/denials', '/vendor/preact.mjs', '/assets/app.js', '/nothing-here']) {
    const r = await fetchConsole(path);
    t.equal(r.status, 401, `${path}: 401`);
    for (const secret of ['node-a', 'node-b', 'demo', '0.1.0', 'cluster.local', 'web-allow-client']) t.notOk(r.body.includes(secret), `${path}: the body names no ${secret}`);
    t.notOk(r.headers.server, `${path}: no server banner`);
    t.notOk(r.headers['x-powered-by'], `${path}: no x-powered-by`);
    t.notOk(r.headers['access-control-allow-origin'], `${path}: no CORS`);
    t.match(r.headers['content-security-policy'], /default-src 'none'/, `${path}: CSP`);
    t.match(r.headers['content-security-policy'], /frame-ancestors 'none'/, `${path}: framing forbidden by CSP`);
    t.equal(r.headers['x-frame-options'], 'DENY', `${path}: X-Frame-Options`);
  }
  const pre = await fetchConsole('/api/nodes', { headers: { origin: 'https://evil.example' }, method: 'OPTIONS' });
  t.equal(pre.status, 401, 'a CORS preflight gets 401 too');
  t.notOk(pre.headers['access-control-allow-origin'], 'and no CORS header');

  const bogus = await fetchConsole('/login', { method: 'POST', body: 'token=ambit-console-notatoken' });
  t.equal(bogus.status, 401, 'an unknown token is refused');
  t.notOk(bogus.headers['set-cookie'], 'and no cookie is set');

  const expired = await loginLink('1ms');
  await new Promise((r) => setTimeout(r, 20));
  const late = await fetchConsole('/login', { method: 'POST', body: `token=${expired.token}` });
  t.equal(late.status, 401, 'an expired token is refused');

  const fresh = await loginLink();
  const crossSite = await fetchConsole('/login', { method: 'POST', body: `token=${fresh.token}`, headers: { 'sec-fetch-site': 'cross-site' } });
  t.equal(crossSite.status, 403, 'a login posted from another site is refused');
  const first = await fetchConsole('/login', { method: 'POST', body: `token=${fresh.token}` });
  t.equal(first.status, 303, 'a fresh token logs in');
  const cookie = String(first.headers['set-cookie']);
  t.match(cookie, /^__Host-ambit-console=[A-Za-z0-9_-]{43}; Path=\/; Secure; HttpOnly; SameSite=Strict; Max-Age=\d+$/, 'session cookie: HttpOnly, Secure, SameSite=Strict');
  const again = await fetchConsole('/login', { method: 'POST', body: `token=${fresh.token}` });
  t.equal(again.status, 401, 'the same token a second time is refused (single use)');
  const session = cookie.split(';')[0]!;
  t.equal((await fetchConsole('/api/nodes', { cookie: session })).status, 200, 'the session opens the API');
  t.equal((await fetchConsole('/api/nodes', { cookie: session, method: 'DELETE' })).status, 405, 'read-only: any other method is refused');
  t.equal((await fetchConsole('/api/nodes', { cookie: `${session}x` })).status, 401, 'a forged session is refused');
  t.equal((await fetchConsole('/logout', { cookie: session, method: 'POST', headers: { origin: ctl.console } })).status, 303, 'logout');
  t.equal((await fetchConsole('/api/nodes', { cookie: session })).status, 401, 'the session is gone after logout');

  const admin = await fetchConsole('/api/nodes', { admin: true });
  t.equal(admin.status, 200, 'the admin certificate (mTLS) opens the API without a token');
  t.match(JSON.parse(admin.body), { nodes: [{ name: 'node-a' }, { name: 'node-b' }] });

  const ctlLog = JSON.stringify(ctl.proc.logs);
  t.notOk(ctlLog.includes(fresh.token) || ctlLog.includes(expired.token), 'no token appears in the controller log');
  t.notOk(ctlLog.includes(session.split('=')[1]!), 'nor the session');
});

// The fixture directory is kept (saveFixture): the screenshots are the test's output to look at.
t.test('in Chromium: log in, nodes, the client → web edge with its rate, the intruder\'s denial explained', { saveFixture: true }, async (t) => {
  const shots = t.testdir();
  // A fresh, empty profile for this run only.
  const profile = join(root, 'chromium-profile');
  mkdirSync(profile);
  const context: BrowserContext = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    // The console's certificate is issued by the mesh CA, which this browser profile does not trust.
    ignoreHTTPSErrors: true,
    viewport: { width: 1280, height: 800 },
  });
  t.teardown(() => context.close());
  const page: Page = context.pages()[0] ?? await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(m.text());
  });
  const external: string[] = [];
  page.on('request', (r) => {
    if (!r.url().startsWith(ctl.console)) external.push(r.url());
  });

  const plain = await page.goto(ctl.console);
  t.equal(plain?.status(), 401, 'the console page without a session: 401');
  await page.getByRole('button', { name: 'Log in' }).waitFor();

  const { url } = await loginLink();
  await page.goto(url);
  await page.waitForURL(`${ctl.console}/`);
  t.notOk(page.url().includes('token'), 'the token is gone from the address bar');
  await page.getByRole('link', { name: 'Nodes' }).click();
  for (const node of ['node-a', 'node-b']) {
    await page.locator(`tr[data-node="${node}"]`, { hasText: 'connected' }).waitFor();
  }
  t.pass('both nodes are listed as connected');
  t.match(await page.locator('tr[data-node="node-b"]').innerText(), /\d+ (h|d)/, 'with their certificate runway');
  await page.screenshot({ path: join(shots, 'nodes.png'), fullPage: true });

  for (let i = 0; i < CONNECTIONS; i++) t.equal(await connectAs('demo/client', CLIENT), 0, `client → web.demo connection ${i + 1}`, { diagnostic: false });
  await page.getByRole('link', { name: 'Service graph' }).click();
  const edge = page.locator('table[data-testid="edges"] tr[data-edge^="demo/client → web.demo"]');
  // The table and the graph refresh every 2 s; the agents report every 300 ms.
  await eventually(async () => /\(12 in window\)/.test(await edge.locator('[data-testid="conn-rate"]').innerText().catch(() => '')), 'the client → web edge with all 12 connections', 20_000);
  const row = await edge.innerText();
  t.match(row, /0\.20 \(12 in window\)/, 'the edge shows its rate: 12 connections over the last minute = 0.20/s');
  t.match(row, /mTLS/, 'and mTLS');
  t.match(row, /0\.0%/, 'and no errors');
  t.ok(await page.locator('svg[data-testid="graph"] g[data-edge^="demo/client → web.demo"]').count(), 'the edge is drawn in the graph');
  await page.screenshot({ path: join(shots, 'graph.png'), fullPage: true });

  t.not(await connectAs('demo/intruder', INTRUDER), 0, 'the intruder is refused');
  await page.getByRole('link', { name: 'Denials' }).click();
  const denial = page.locator('tr[data-denial="demo/intruder → demo/web"]');
  await denial.waitFor({ timeout: 20_000 });
  const text = await denial.innerText();
  t.match(text, /spiffe:\/\/cluster\.local\/ns\/demo\/sa\/intruder/, 'the denial names the source identity');
  t.match(text, /no ALLOW matched/, 'the deciding "policy": no ALLOW matched');
  t.match(text, /denied: no ALLOW policy matches: demo\/web is selected by ALLOW demo\/web-allow-client, one of which needs a rule for this source/, 'the explain engine\'s verdict');
  t.match(text, /demo\/web-allow-client \(ALLOW\) rule 0 admits from principals cluster\.local\/ns\/demo\/sa\/client to ports 8080/, 'and what the ALLOW policy admits');
  await page.screenshot({ path: join(shots, 'denials.png'), fullPage: true });

  await page.getByRole('link', { name: 'Policies' }).click();
  t.match(await page.locator('tr[data-policy="demo/web-allow-client"]').innerText(), /demo\/web/, 'the policy lists the workload it selects');

  await page.getByRole('button', { name: 'Log out' }).click();
  await page.waitForURL(`${ctl.console}/login`);
  const after = await page.request.get(`${ctl.console}/api/nodes`);
  t.equal(after.status(), 401, 'after logout the browser\'s requests get 401');

  t.same(external, [], 'the browser asked nothing of any other origin');
  t.same(errors.filter((e) => !/401/.test(e)), [], 'no script errors (CSP let every script the console needs run)');
  writeFileSync(join(shots, 'README'), 'Screenshots of test/e2e/console.test.ts\n');
  t.comment(`screenshots in ${shots}`);
});

t.test('an HTTP port: the edge carries request rate and request error rate', async (t) => {
  const agent = new HttpAgent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  const get = (path: string): Promise<number> => new Promise((resolve, reject) => {
    const req = httpRequest({ host: ip(2), port: API_UPSTREAM, path, agent, localAddress: CLIENT, headers: { host: 'api.demo' } }, (res) => {
      res.resume().on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end();
  });
  const codes: number[] = [];
  for (let i = 0; i < 10; i++) codes.push(await get(i < 2 ? '/fail' : '/ok'));
  t.same(codes.sort(), [200, 200, 200, 200, 200, 200, 200, 200, 503, 503], '8 answered 200, 2 answered 503');
  const edge = await eventually(async () => {
    const r = await fetchConsole('/api/graph', { admin: true });
    const list = (JSON.parse(r.body) as { edges: { sourceLabel: string; destinationLabel: string; requests: number; requestsPerSecond: number; errorRate: number }[] }).edges;
    return list.find((e) => e.sourceLabel === 'demo/client' && e.destinationLabel.startsWith('api.demo') && e.requests === 10);
  }, 'the client → api edge with 10 requests', 15_000);
  t.match(edge, { requestsPerSecond: 10 / 60, errorRate: 0.2 }, '10 requests over the minute, 2 of them failed');
});

t.test('a live connection a policy change closes shows as a denial, explained by the DENY that closed it', async (t) => {
  const { socket, reply } = await socksConnect(agentA.socks, CLIENT, 'demo/client', 'web.demo', 80, 10_000);
  t.equal(reply, 0, 'client → web.demo open');
  const closed = new Promise((r) => socket.once('close', r));
  socket.on('error', () => undefined);
  socket.resume();
  const deny = `
apiVersion: ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: deny-client, namespace: demo }
spec:
  selector: { matchLabels: { app: web } }
  action: DENY
  rules:
    - from: [{ source: { principals: ["cluster.local/ns/demo/sa/client"] } }]
`;
  const applied = await ambitctl(ctl, ['apply', '-f', '-'], deny);
  t.equal(applied.code, 0, 'DENY for the client applied');
  await closed;
  t.pass('the live connection was closed');
  const found = await eventually(async () => {
    const r = await fetchConsole('/api/denials', { admin: true });
    const list = (JSON.parse(r.body) as { denials: { reason: string; policy: string; sourceLabel: string; explanation: { summary: string } }[] }).denials;
    return list.find((d) => d.reason === 'policy_change');
  }, 'the policy_change denial reported', 15_000);
  t.match(found, { policy: 'demo/deny-client', sourceLabel: 'demo/client', explanation: { summary: 'denied: DENY demo/deny-client rule 0 matches' } });
});

t.test('node authorization: a node\'s report about other nodes\' workloads is refused, not shown', async (t) => {
  const token = (await ambitctl(ctl, ['node', 'token', 'create', '--node', 'node-x'])).stdout.trim();
  const node = await joinWithToken({ controller: ctl.grpc, node: 'node-x', token, caFingerprint: parseJoinToken(token).caFingerprint });
  const client = new DiscoveryClient(ctl.address, controllerCredentials({ keyPem: node.keyPem, certChainPem: node.certChainPem, caPem: node.bundlePem, trustDomain: 'cluster.local' }), CONTROLLER_CHANNEL_OPTIONS);
  t.teardown(() => client.close());
  const call = client.watch(new Metadata());
  t.teardown(() => call.cancel());
  call.on('error', () => undefined);
  const first = new Promise((r) => call.once('data', r));
  call.write({ request: { $case: 'start', start: { resumeRevision: 0, certExpiresAtMs: 0, hboneAddress: '', scope: '', subscriptions: [] } } });
  await first;
  const principal = (sa: string): string => `spiffe://cluster.local/ns/demo/sa/${sa}`;
  // node-x runs no workload: it may speak for none. It claims client's outbound traffic (node-a's) and web's denial (node-b's).
  call.write({ request: { $case: 'report', report: {
    edges: [{
      reporter: 'source', sourceWorkload: 'client', sourceNamespace: 'demo', sourcePrincipal: principal('client'), destinationWorkload: 'web', destinationNamespace: 'demo',
      destinationPrincipal: principal('web'), destinationService: 'spoofed.demo.svc.cluster.local', security: 'mutual_tls',
      connectionsOpened: 1000, connectionsClosed: 1000, connectionsFailed: 1000, bytesSent: 0, bytesReceived: 0, requests: 0, requestErrors: 0,
    }],
    denials: [{
      atMs: Date.now(), direction: 'inbound', sourcePrincipal: principal('client'), sourceWorkload: 'client', sourceNamespace: 'demo', sourceAddress: CLIENT,
      destinationWorkload: 'web', destinationNamespace: 'demo', destinationPort: 9999, destinationService: '', policy: 'demo/made-up', reason: 'denied_by_policy',
    }],
    denialsDropped: 0,
  } } });
  const line = await ctl.proc.waitForLog((l) => l.msg === 'telemetry about workloads of other nodes refused' && l.node === 'node-x', 15_000);
  t.match(line, { code: 'AMBIT_ERR_NODE_UNAUTHORIZED', count: 2 }, 'the controller logs the refusal, naming the node');
  const metrics = (await httpGet(ctl.monitoring, '/metrics')).body;
  t.equal(metricValue(metrics, 'ambit_controller_telemetry_items_total', { kind: 'edge', result: 'refused' }), 1, 'the refused edge is counted');
  t.equal(metricValue(metrics, 'ambit_controller_telemetry_items_total', { kind: 'denial', result: 'refused' }), 1, 'and the refused denial');
  const graph = (await fetchConsole('/api/graph', { admin: true })).body;
  const denials = (await fetchConsole('/api/denials', { admin: true })).body;
  t.notOk(graph.includes('spoofed'), 'the claimed edge is not in the graph');
  t.notOk(denials.includes('made-up') || denials.includes('9999'), 'nor the claimed denial');
});

t.test('a flood of idle connections does not keep the admin out', async (t) => {
  const url = new URL(ctl.console);
  const flood: Socket[] = [];
  t.teardown(() => flood.forEach((s) => s.destroy()));
  // 10 sources × 14: more than any fixed connection cap of 128 would take, each source under the per-source limit.
  for (let src = 40; src < 50; src++) {
    for (let i = 0; i < 14; i++) {
      const s = netConnect({ host: url.hostname, port: Number(url.port), localAddress: ip(src) });
      s.on('error', () => undefined);
      flood.push(s);
    }
  }
  await Promise.all(flood.map((s) => new Promise((r) => (s.connecting ? s.once('connect', r).once('close', r) : r(undefined)))));
  for (const s of flood) s.resume();
  const open = (): number => flood.filter((s) => !s.closed).length;
  // The flood is connected once the kernel has it; the console takes it when it
  // accepts. Until then a later connection — the admin's, still in its TLS
  // handshake and so idle — could be the oldest idle one when the flood's
  // accepts catch up: the admin comes once the console holds the flood.
  await eventually(async () => open() <= 64, 'the console to hold at most 64 connections', 10_000).catch(() => undefined);
  t.ok(open() <= 64, `the console keeps at most 64 connections open: ${flood.length - open()} of ${flood.length} idle ones closed`);
  const started = performance.now();
  const r = await fetchConsole('/api/nodes', { admin: true });
  t.equal(r.status, 200, `the admin is served during the flood (${Math.round(performance.now() - started)} ms), ${open()} idle connections still open`);
  t.ok(open() > 0, 'the flood is still there');
});

t.test('--console none: no console, and ambitctl console says so', async (t) => {
  const off = await startController(join(root, 'ctl-off'), ['--console', 'none'], ip(30));
  t.teardown(() => off.proc.stop());
  t.equal(off.console, 'off', 'the controller logs the console as off');
  const r = await ambitctl(off, ['console']);
  t.equal(r.code, 1, 'ambitctl console fails');
  t.match(r.stderr, /the web console is off \(ambit-controller --console none\) \[AMBIT_ERR_CONSOLE_LOGIN\]/);
  t.equal(r.stdout, '', 'and prints no link');
});
