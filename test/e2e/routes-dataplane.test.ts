/**
 * The data plane's side of routes (docs/l7.md, "Route rules per request")
 * through two real agents on 127.0.133.x: what a retry sends again and
 * where. node-b runs two endpoints of Service `pair`: `good` (200) and
 * `bad` (always 503, and Service `bad` alone). An HTTPRoute on Service
 * `rdp` retries 503 once to `pair`, retries 503 twice to `bad`, and
 * matches nothing else. A retried request goes to the endpoint not tried
 * yet and carries the whole buffered body each time; a body longer than
 * --http-max-buffered-body is sent once; exhausted retries are flagged URX;
 * the access log names the rule and the attempts; no match is 404 NR. A
 * request timeout covers the response body too: `trickle` sends its
 * headers at once and the rest of its body after TRICKLE_MS, and is cut.
 */
import t from 'tap';
import { mkdtempSync } from 'node:fs';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { httpServer, request } from './http-apps.ts';
import { agentKnowsNode, agentsReady, ambitctl, eventually, hostPortOf, httpGet, metricValue, setUp, startAgentPair, startController, type RunningAgent, type RunningController } from './harness.ts';

const ip = (n: number): string => `127.0.133.${n}`;
const CTL = ip(1);
const A = ip(2);
const B = ip(3);
const CLIENT = ip(10);
const GOOD = ip(21);
const BAD = ip(22);
const TRICKLE = ip(23);
const TRICKLE_MS = 1_500;
const HTTP_PORT = 8080;
const PORT = 19133;
const MAX_BODY = 1024;

const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-routes-dp-'));
let ctl: RunningController;
let agentA: RunningAgent;
let agentB: RunningAgent;
const servers: (() => unknown)[] = [];

/** What each server got: per x-request-id, the body length of every attempt. */
const got = { good: new Map<string, number[]>(), bad: new Map<string, number[]>() };
function serve(name: 'good' | 'bad', status: number) {
  return (req: IncomingMessage, res: ServerResponse): void => {
    let length = 0;
    req.on('data', (d: Buffer) => (length += d.length));
    req.on('end', () => {
      const id = String(req.headers['x-request-id'] ?? '');
      got[name].set(id, [...(got[name].get(id) ?? []), length]);
      res.statusCode = status;
      res.end(name);
    });
  };
}

const yaml = (docs: string[]): string => docs.join('\n---\n');
const workload = (name: string, address: string, labels: Record<string, string>): string =>
  `apiVersion: ambit.dev/v1alpha1\nkind: Workload\nmetadata: {name: ${name}, namespace: mesh, labels: ${JSON.stringify(labels)}}\nspec: {serviceAccount: ${name}, node: node-b, address: ${address}, ports: [${HTTP_PORT}]}`;
const service = (name: string, selector: Record<string, string>): string =>
  `apiVersion: ambit.dev/v1alpha1\nkind: Service\nmetadata: {name: ${name}, namespace: mesh}\nspec:\n  selector: ${JSON.stringify(selector)}\n  ports: [{name: p, port: 80, targetPort: ${HTTP_PORT}, appProtocol: http}]`;
const ROUTE = `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: rdp, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: rdp, port: 80}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /retry}}]
      retry: {codes: [503], attempts: 1, backoff: 1ms}
      backendRefs: [{name: pair, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /exhaust}}]
      retry: {codes: [503], attempts: 2, backoff: 1ms}
      backendRefs: [{name: bad, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /trickle}}]
      timeouts: {request: 300ms}
      backendRefs: [{name: trickle, port: 80}]
`;

t.before(async () => {
  await setUp(async (registered) => {
    for (const [addr, name, status] of [[GOOD, 'good', 200], [BAD, 'bad', 503]] as const) {
      const s = await httpServer(addr, HTTP_PORT, serve(name, status));
      for (const stop of [() => s.close(), () => s.closeAllConnections()]) {
        registered(stop);
        servers.push(stop);
      }
    }
    const trickle = await httpServer(TRICKLE, HTTP_PORT, (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('first part;');
      const later = setTimeout(() => res.end('the rest'), TRICKLE_MS);
      res.on('close', () => clearTimeout(later));
    });
    for (const stop of [() => trickle.close(), () => trickle.closeAllConnections()]) {
      registered(stop);
      servers.push(stop);
    }
    ctl = await startController(join(root, 'ctl'), [], CTL);
    registered(() => ctl.proc.stop());
    const ok = async (args: string[], stdin?: string): Promise<string> => {
      const r = await ambitctl(ctl, args, stdin);
      if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    };
    await ok(['apply', '-f', '-'], yaml([
      `apiVersion: ambit.dev/v1alpha1\nkind: Workload\nmetadata: {name: client, namespace: app}\nspec: {serviceAccount: client, node: node-a, address: ${CLIENT}}`,
      workload('good', GOOD, { app: 'pair' }),
      workload('bad', BAD, { app: 'pair', role: 'bad' }),
      service('pair', { app: 'pair' }),
      service('bad', { role: 'bad' }),
      workload('trickle', TRICKLE, { app: 'trickle' }),
      service('trickle', { app: 'trickle' }),
      service('rdp', { app: 'pair' }),
    ]));
    await ok(['apply', '-f', '-'], ROUTE);
    const [ta, tb] = [(await ok(['node', 'token', 'create', '--node', 'node-a'])).trim(), (await ok(['node', 'token', 'create', '--node', 'node-b'])).trim()];
    [agentA, agentB] = await startAgentPair(registered, [
      // Passive health would eject `bad`: the retries, not ejection, must be what is seen.
      { node: 'node-a', address: A, controller: ctl.address, dataDir: join(root, 'a'), join: ta,
        extra: ['--upstreams', `app/client:${PORT}=rdp.mesh:80`, '--outlier-consecutive-failures', '1000', '--http-max-buffered-body', String(MAX_BODY)] },
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
  for (const stop of servers) await Promise.resolve().then(stop).catch(() => undefined);
});

const agent = new http.Agent({ keepAlive: true, maxSockets: 8, localAddress: CLIENT } as http.AgentOptions);
t.teardown(() => agent.destroy());
const to = { host: A, port: PORT };
let ids = 0;
const send = (path: string, body?: string) => {
  const id = `r${++ids}`;
  return request(agent, to, 'rdp.mesh', { path, method: body === undefined ? 'GET' : 'POST', body, headers: { 'x-request-id': id } }).then((r) => ({ ...r, id }));
};

t.test('the route decides: no rule matches is 404 NR', async (t) => {
  await eventually(async () => (await send('/retry')).status === 200, 'the route applies', 20_000);
  const r = await send('/nowhere');
  t.equal(r.status, 404);
  t.equal(r.flags, 'NR');
  t.same(got.good.get(r.id) ?? got.bad.get(r.id), undefined, 'no endpoint saw it');
});

t.test('a retry goes to the endpoint not tried yet, with the whole buffered body', async (t) => {
  const body = 'x'.repeat(600);
  const answers = [];
  for (let i = 0; i < 20; i += 5) answers.push(...await Promise.all(Array.from({ length: 5 }, (_, j) => send('/retry', (i + j) % 2 === 0 ? body : undefined))));
  t.same(answers.filter((r) => r.status !== 200).map((r) => `${r.status} ${r.flags}`), [], 'every request answered 200 (retries hid bad)');
  const retried = answers.filter((r) => got.bad.has(r.id));
  t.ok(retried.length > 0, `${retried.length} of 20 went to bad first`);
  t.ok(retried.every((r) => got.bad.get(r.id)?.length === 1 && got.good.get(r.id)?.length === 1), 'each went to bad once, then to good: the endpoint not tried yet');
  const posts = answers.filter((_, i) => i % 2 === 0);
  t.ok(posts.every((r) => got.good.get(r.id)?.[0] === 600), 'good got every POST body whole, first try or retry');
  t.ok(posts.filter((r) => got.bad.has(r.id)).every((r) => got.bad.get(r.id)?.[0] === 600), 'so did bad');
});

t.test('exhausted retries answer the last 503 with URX; each attempt carries the body; a long body is sent once', async (t) => {
  const r = await send('/exhaust', 'y'.repeat(500));
  t.equal(r.status, 503);
  t.equal(r.body, 'bad', 'the upstream\'s own answer');
  t.same(got.bad.get(r.id), [500, 500, 500], 'the first try and 2 retries, each with the 500-byte body');
  const line = await agentA.proc.waitForLog((l) => l.msg === 'request' && l.path === '/exhaust' && l.response_flags === 'URX');
  t.equal(line.route, 'HTTPRoute/mesh/rdp#1', 'the access log names the rule');
  t.equal(line.attempts, 3, 'and its attempts');
  t.equal(line['dst.service'], 'bad.mesh.svc.cluster.local', 'the backend is the destination service');

  const long = await send('/exhaust', 'z'.repeat(MAX_BODY * 4));
  t.equal(long.status, 503);
  t.same(got.bad.get(long.id), [MAX_BODY * 4], 'a body over --http-max-buffered-body goes once, whole');
  const once = await agentA.proc.waitForLog((l) => l.msg === 'request' && l.path === '/exhaust' && l.attempts === 1);
  t.equal(once.response_flags, '-', 'no URX: it could not be retried');

  const retries = await eventually(async () => {
    const m = (await httpGet(hostPortOf(agentA.metrics), '/metrics')).body;
    const n = metricValue(m, 'ambit_http_retries_total', { destination_service: 'bad.mesh.svc.cluster.local' });
    return n >= 2 ? n : undefined;
  }, 'ambit_http_retries_total for bad', 10_000);
  t.ok(retries >= 2, `ambit_http_retries_total{destination_service="bad.mesh.svc.cluster.local"} = ${retries}`);
});

t.test('a request timeout cuts a response body still streaming at the deadline: UT', async (t) => {
  const started = Date.now();
  const outcome = await new Promise<{ status: number; body: string; ended: boolean }>((resolve, reject) => {
    const req = http.request({ host: A, port: PORT, path: '/trickle', agent, headers: { host: 'rdp.mesh' } }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, ended: true }));
      res.on('error', () => resolve({ status: res.statusCode ?? 0, body, ended: false }));
      res.on('aborted', () => resolve({ status: res.statusCode ?? 0, body, ended: false }));
    });
    req.on('error', reject);
    req.end();
  });
  const took = Date.now() - started;
  t.equal(outcome.status, 200, 'the headers came in time');
  t.equal(outcome.body, 'first part;', 'what came before the deadline was passed on');
  t.notOk(outcome.ended, 'the body did not end normally');
  t.ok(took < TRICKLE_MS, `cut after ${took} ms, before the rest came (${TRICKLE_MS} ms)`);
  const line = await agentA.proc.waitForLog((l) => l.msg === 'request' && l.path === '/trickle');
  t.equal(line.response_flags, 'UT', 'the access log says the timeout cut it');
});

/** A POST whose body goes chunked (no content-length): `parts` written `pauseMs` apart. */
function chunked(path: string, parts: string[], pauseMs: number): Promise<{ status: number; id: string }> {
  const id = `r${++ids}`;
  return new Promise((resolve, reject) => {
    const req = http.request({ host: A, port: PORT, path, method: 'POST', agent, headers: { host: 'rdp.mesh', 'x-request-id': id } }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, id }));
    });
    req.on('error', reject);
    const write = (i: number): void => {
      if (i === parts.length) {
        req.end();
        return;
      }
      req.write(parts[i]);
      setTimeout(() => write(i + 1), pauseMs);
    };
    write(0);
  });
}

t.test('a body of unknown length is buffered when it keeps coming, and sent once when it pauses', async (t) => {
  const quick = await chunked('/exhaust', ['a'.repeat(100), 'b'.repeat(100), 'c'.repeat(100)], 5);
  t.equal(quick.status, 503);
  t.same(got.bad.get(quick.id), [300, 300, 300], 'parts 5 ms apart: buffered, retried whole');
  const slow = await chunked('/exhaust', ['a'.repeat(100), 'b'.repeat(100)], 400);
  t.equal(slow.status, 503);
  t.same(got.bad.get(slow.id), [200], 'a pause longer than the grace: streamed once, whole');
});
