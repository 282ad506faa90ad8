/**
 * Gateway API mesh routes (docs/traffic.md) end to end, modeled on the
 * Gateway API conformance suite's mesh tests: real processes on
 * 127.0.134.x — a controller, node-a (the clients' agent) and node-b, which
 * runs real node:http and @grpc/grpc-js servers. Every resource (workloads,
 * Services, HTTPRoutes, GRPCRoutes, FaultInjections) is applied with
 * `ambitctl apply -f -` as a user would. Each feature has its own parent
 * Service, reached by the client through its own upstream listener of
 * node-a, so that the routes of one subtest cannot decide another's
 * requests. Clients live in namespace `app` (which sees the producer
 * routes of namespace `mesh`) and `team` (which has consumer routes, one of
 * them using a Service of `mesh` once a ReferenceGrant allows it).
 */
import t, { type Test } from 'tap';
import { once } from 'node:events';
import { mkdtempSync } from 'node:fs';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import http2 from 'node:http2';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { grpcCall, grpcServer, httpServer, request, tally, type HttpAnswer } from '../http-apps.ts';
import { agentKnowsNode, agentsReady, ambitctl, eventually, hostPortOf, httpGet, metricValue, setUp, startAgentPair, startController, type RunningAgent, type RunningController } from '../harness.ts';

const ip = (n: number): string => `127.0.134.${n}`;
const CTL = ip(1);
const A = ip(2);
const B = ip(3);
const CLIENT = ip(10); // app/client
const TEAM_CLIENT = ip(11); // team/client
const HTTP_PORT = 8080;
const GRPC_PORT = 50051;
const SERVERS = {
  'echo-v1': ip(21), 'echo-v2': ip(22), mirror: ip(23), slow: ip(24), flaky: ip(25), broken: ip(26),
} as const;
/** A server of namespace team: what team's consumer route sends to (a backend must be in the route's namespace). */
const TEAM_ECHO = ip(27);
const GRPC_SERVERS = { 'grpc-v1': ip(31), 'grpc-v2': ip(32), 'grpc-flaky': ip(33) } as const;
/** node-a's upstream listeners: one per parent Service, from app/client (and one from team/client). */
const PORTS = {
  split: 19101, match: 19102, filters: 19103, timeout: 19104, retry: 19105, budget: 19106, grpc: 19107, fault: 19108, echo: 19109, dangling: 19110, teamEcho: 19111,
  teamDangling: 19112,
} as const;
const SLOW_MS = 1_000;
const BROKEN_MS = 30;
const SVC = (name: string): string => `${name}.mesh.svc.cluster.local`;

const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-routes-'));
let ctl: RunningController;
let agentA: RunningAgent;
let agentB: RunningAgent;
const servers: (() => unknown)[] = [];

/** What every echo-like server answers: who it is and the request as it arrived. */
interface Seen {
  readonly name: string;
  readonly method: string;
  readonly path: string;
  readonly host: string;
  readonly headers: Record<string, string | string[] | undefined>;
}

const seenBy = new Map<string, Seen[]>();
function answer(name: string, req: IncomingMessage, res: ServerResponse, status = 200): void {
  const seen: Seen = { name, method: req.method ?? '', path: req.url ?? '', host: req.headers.host ?? '', headers: req.headers };
  seenBy.set(name, [...(seenBy.get(name) ?? []), seen]);
  req.resume();
  req.on('end', () => {
    res.statusCode = status;
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(seen));
  });
}

/** flaky: every 5th request it receives is answered 503 (20 %); a path under /always always is. */
let flakyArrivals = 0;
/** broken: every request 503 after BROKEN_MS; it tracks attempts per x-request-id to tell retries from first tries. */
const broken = { attempts: new Map<string, number>(), retriesInFlight: 0, maxRetriesInFlight: 0, inFlight: 0, maxInFlight: 0, retries: 0 };
/** grpc-flaky: every 2nd call ends UNAVAILABLE. */
let grpcFlakyCalls = 0;

const yaml = (docs: string[]): string => docs.join('\n---\n');
const workload = (name: string, namespace: string, node: string, address: string, labels: Record<string, string>, ports: number[] = []): string =>
  `apiVersion: ambit.dev/v1alpha1\nkind: Workload\nmetadata: {name: ${name}, namespace: ${namespace}, labels: ${JSON.stringify(labels)}}\nspec: {serviceAccount: ${name}, node: ${node}, address: ${address}, ports: ${JSON.stringify(ports)}}`;
const service = (name: string, selector: Record<string, string>, o: { namespace?: string; port?: number; target?: number; appProtocol?: string } = {}): string =>
  `apiVersion: ambit.dev/v1alpha1\nkind: Service\nmetadata: {name: ${name}, namespace: ${o.namespace ?? 'mesh'}}\nspec:\n  selector: ${JSON.stringify(selector)}\n`
  + `  ports: [{name: p, port: ${o.port ?? 80}, targetPort: ${o.target ?? HTTP_PORT}, appProtocol: ${o.appProtocol ?? 'http'}}]`;

/** The routes under test, as a user writes them. */
const ROUTES = `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: split, port: 80}]
  rules:
    - backendRefs:
        - {name: echo-v1, port: 80, weight: 90}
        - {name: echo-v2, port: 80, weight: 10}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: match, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: match}]
  rules:
    - matches: [{path: {type: Exact, value: /exact}}]
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-rule, value: exact}]}}]
      backendRefs: [{name: echo-v1, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /prefix}}]
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-rule, value: prefix}]}}]
      backendRefs: [{name: echo-v1, port: 80}]
    - matches: [{path: {type: RegularExpression, value: "/re/[0-9]+"}}]
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-rule, value: regex}]}}]
      backendRefs: [{name: echo-v2, port: 80}]
    - matches: [{headers: [{name: X-Canary, value: "true"}]}]
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-rule, value: header}]}}]
      backendRefs: [{name: echo-v2, port: 80}]
    - matches: [{queryParams: [{name: version, value: two}]}]
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-rule, value: query}]}}]
      backendRefs: [{name: echo-v2, port: 80}]
    - matches: [{method: POST}]
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-rule, value: method}]}}]
      backendRefs: [{name: echo-v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: filters, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: filters, port: 80}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /headers}}]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{name: x-set, value: "yes"}]
            add: [{name: x-add, value: added}]
            remove: [x-remove]
        - type: ResponseHeaderModifier
          responseHeaderModifier:
            set: [{name: x-resp, value: set-by-route}]
      backendRefs: [{name: echo-v1, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /mirror}}]
      filters: [{type: RequestMirror, requestMirror: {backendRef: {name: mirror, port: 80}}}]
      backendRefs: [{name: echo-v1, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /redirect}}]
      filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org, statusCode: 301, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}]
    - matches: [{path: {type: PathPrefix, value: /secure}}]
      filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]
    - matches: [{path: {type: PathPrefix, value: /rewrite}}]
      filters: [{type: URLRewrite, urlRewrite: {hostname: rewritten.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}]
      backendRefs: [{name: echo-v1, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /full}}]
      filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /replaced}}}]
      backendRefs: [{name: echo-v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: timeout, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: timeout}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /backend}}]
      timeouts: {request: 2s, backendRequest: 150ms}
      backendRefs: [{name: slow, port: 80}]
    - timeouts: {request: 200ms}
      backendRefs: [{name: slow, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: retry, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: retry}]
  rules:
    - retry: {codes: [503], attempts: 3, backoff: 5ms}
      backendRefs: [{name: flaky, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: budget, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: budget}]
  rules:
    - retry: {codes: [503], attempts: 3, backoff: 5ms}
      backendRefs: [{name: broken, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: grpc, port: ${GRPC_PORT}}]
  rules:
    - matches: [{method: {service: test.Echo, method: Say}}]
      backendRefs:
        - {name: grpc-v1, port: ${GRPC_PORT}, weight: 1}
        - {name: grpc-v2, port: ${GRPC_PORT}, weight: 1}
    - matches: [{method: {service: test.Echo, method: Shout}}]
      retry: {codes: [UNAVAILABLE], attempts: 2, backoff: 5ms}
      backendRefs: [{name: grpc-flaky, port: ${GRPC_PORT}}]
---
apiVersion: ambit.dev/v1alpha1
kind: FaultInjection
metadata: {name: abort-half, namespace: mesh}
spec:
  abort: {httpStatus: 418, percentage: 50}
---
apiVersion: ambit.dev/v1alpha1
kind: FaultInjection
metadata: {name: delay-half, namespace: mesh}
spec:
  delay: {fixedDelay: 200ms, percentage: 50}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: fault, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: fault}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /abort}}]
      filters: [{type: ExtensionRef, extensionRef: {group: ambit.dev, kind: FaultInjection, name: abort-half}}]
      backendRefs: [{name: echo-v1, port: 80}]
    - matches: [{path: {type: PathPrefix, value: /delay}}]
      filters: [{type: ExtensionRef, extensionRef: {group: ambit.dev, kind: FaultInjection, name: delay-half}}]
      backendRefs: [{name: echo-v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-producer, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
    - backendRefs: [{name: echo-v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-consumer, namespace: team}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, namespace: mesh}]
  rules:
    - backendRefs: [{name: echo-team, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cross, namespace: team}
spec:
  parentRefs: [{group: "", kind: Service, name: dangling, namespace: mesh}]
  rules:
    - backendRefs: [{name: echo-v1, namespace: mesh, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: dangling, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: dangling}]
  rules:
    - backendRefs: [{name: nowhere, port: 80}]
`;

t.before(async () => {
  await setUp(async (registered) => {
    const started = (stop: () => unknown): void => {
      registered(stop);
      servers.push(stop);
    };
    const serve = async (addr: string, handle: (req: IncomingMessage, res: ServerResponse) => void): Promise<void> => {
      const s = await httpServer(addr, HTTP_PORT, handle);
      started(() => s.close());
      started(() => s.closeAllConnections());
    };
    for (const name of ['echo-v1', 'echo-v2', 'mirror'] as const) await serve(SERVERS[name], (req, res) => answer(name, req, res));
    await serve(TEAM_ECHO, (req, res) => answer('echo-team', req, res));
    await serve(SERVERS.slow, (req, res) => setTimeout(() => answer('slow', req, res), SLOW_MS));
    await serve(SERVERS.flaky, (req, res) => answer('flaky', req, res, req.url?.startsWith('/always') || ++flakyArrivals % 5 === 0 ? 503 : 200));
    await serve(SERVERS.broken, (req, res) => {
      const id = String(req.headers['x-request-id']);
      const n = (broken.attempts.get(id) ?? 0) + 1;
      broken.attempts.set(id, n);
      const retry = n > 1;
      broken.inFlight++;
      broken.maxInFlight = Math.max(broken.maxInFlight, broken.inFlight);
      if (retry) {
        broken.retries++;
        broken.retriesInFlight++;
        broken.maxRetriesInFlight = Math.max(broken.maxRetriesInFlight, broken.retriesInFlight);
      }
      setTimeout(() => {
        broken.inFlight--;
        if (retry) broken.retriesInFlight--;
        answer('broken', req, res, 503);
      }, BROKEN_MS);
    });
    for (const [name, addr] of Object.entries(GRPC_SERVERS)) {
      const g = await grpcServer(addr, GRPC_PORT, name, () =>
        name === 'grpc-flaky' && ++grpcFlakyCalls % 2 === 0 ? { code: grpc.status.UNAVAILABLE, details: 'try again', name: 'Error', message: 'try again' } as grpc.ServiceError : null);
      started(() => g.forceShutdown());
    }

    ctl = await startController(join(root, 'ctl'), [], CTL);
    registered(() => ctl.proc.stop());
    const ok = async (args: string[], stdin?: string): Promise<string> => {
      const r = await ambitctl(ctl, args, stdin);
      if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    };
    await ok(['apply', '-f', '-'], yaml([
      workload('client', 'app', 'node-a', CLIENT, { app: 'client' }),
      workload('client', 'team', 'node-a', TEAM_CLIENT, { app: 'client' }),
      ...Object.entries(SERVERS).map(([name, addr]) => workload(name, 'mesh', 'node-b', addr, { app: name.replace(/-v[12]$/, ''), version: name }, [HTTP_PORT])),
      ...Object.entries(GRPC_SERVERS).map(([name, addr]) => workload(name, 'mesh', 'node-b', addr, { app: 'grpc', version: name }, [GRPC_PORT])),
      workload('echo-team', 'team', 'node-b', TEAM_ECHO, { app: 'echo-team' }, [HTTP_PORT]),
      service('echo-team', { app: 'echo-team' }, { namespace: 'team' }),
      // Parent Services: what clients call; their routes decide where each request goes.
      ...['split', 'match', 'filters', 'timeout', 'retry', 'budget', 'fault', 'echo', 'dangling'].map((p) => service(p, { app: 'echo' })),
      service('grpc', { app: 'grpc' }, { port: GRPC_PORT, target: GRPC_PORT, appProtocol: 'grpc' }),
      // Backend Services: one version each.
      ...Object.keys(SERVERS).map((name) => service(name, { version: name })),
      ...Object.keys(GRPC_SERVERS).map((name) => service(name, { version: name }, { port: GRPC_PORT, target: GRPC_PORT, appProtocol: 'grpc' })),
    ]));
    await ok(['apply', '-f', '-'], ROUTES);
    const [ta, tb] = [(await ok(['node', 'token', 'create', '--node', 'node-a'])).trim(), (await ok(['node', 'token', 'create', '--node', 'node-b'])).trim()];
    const upstreams = [
      ...(['split', 'match', 'filters', 'timeout', 'retry', 'budget', 'fault', 'echo', 'dangling'] as const).map((p) => `app/client:${PORTS[p]}=${p}.mesh:80`),
      `app/client:${PORTS.grpc}=grpc.mesh:${GRPC_PORT}`,
      `team/client:${PORTS.teamEcho}=echo.mesh:80`,
      `team/client:${PORTS.teamDangling}=dangling.mesh:80`,
    ].join(',');
    [agentA, agentB] = await startAgentPair(registered, [
      // Ejection would hide the servers that fail on purpose: the retries, not passive health, must hide them here.
      {
        node: 'node-a', address: A, controller: ctl.address, dataDir: join(root, 'a'), join: ta,
        extra: ['--upstreams', upstreams, '--outlier-consecutive-failures', '1000', '--drain-timeout', '1s'],
      },
      // A short drain: the teardown need not wait for the data plane's idle pooled connections.
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

/** A keep-alive HTTP/1.1 client from a client workload's address, closed at the end of the subtest. */
function client(t: Test, from = CLIENT, sockets = 16): http.Agent {
  const agent = new http.Agent({ keepAlive: true, maxSockets: sockets, localAddress: from } as http.AgentOptions);
  t.teardown(() => agent.destroy());
  return agent;
}

const to = (port: number): { host: string; port: number } => ({ host: A, port });
const seen = (r: HttpAnswer): Seen => JSON.parse(r.body) as Seen;
const metrics = async (agent: RunningAgent): Promise<string> => (await httpGet(hostPortOf(agent.metrics), '/metrics')).body;

/**
 * The value `read` gives once it reaches `want` (the agent reads its data
 * plane's counts every second), or the last one read after 10 s: the
 * caller's assertion shows it either way.
 */
async function reaches(read: () => Promise<number>, want: number): Promise<number> {
  let last = Number.NaN;
  await eventually(async () => (last = await read()) >= want, 'a count', 10_000).catch(() => undefined);
  return last;
}

/** Waits until the route decides requests through `port` (its first effect is visible). */
async function routed(agent: http.Agent, port: number, authority: string, ready: (r: HttpAnswer) => boolean, path = '/'): Promise<void> {
  await eventually(async () => ready(await request(agent, to(port), authority, { path })), `the route of ${authority} applies`, 20_000);
}

t.test('weights: 1,000 requests split 90/10 within ±4 points; destination_service is the chosen backend', async (t) => {
  const agent = client(t, CLIENT, 10);
  await routed(agent, PORTS.split, 'split.mesh', (r) => r.status === 200 && seen(r).name.startsWith('echo-v'));
  const before = await metrics(agentA);
  const count = (m: string, svc: string): number => metricValue(m, 'istio_requests_total', { reporter: 'source', destination_service: SVC(svc) });
  const names: string[] = [];
  for (let i = 0; i < 1000; i += 10) {
    for (const r of await Promise.all(Array.from({ length: 10 }, () => request(agent, to(PORTS.split), 'split.mesh')))) {
      if (r.status !== 200) t.fail(`${r.status} ${r.flags} ${r.body}`);
      names.push(seen(r).name);
    }
  }
  const c = tally(names);
  t.same(Object.keys(c).sort(), ['echo-v1', 'echo-v2'], 'only the two backends answered');
  const v2 = (c['echo-v2'] ?? 0) / 10;
  t.ok(Math.abs(v2 - 10) <= 4, `echo-v2 got ${v2} % of 1,000 (10 ± 4)`);
  // The warm-up request may be counted after `before` was read: one more at most.
  for (const svc of ['echo-v1', 'echo-v2']) {
    const n = await reaches(async () => count(await metrics(agentA), svc) - count(before, svc), c[svc]!);
    t.ok(n === c[svc] || n === c[svc]! + 1, `istio_requests_total{reporter="source",destination_service="${SVC(svc)}"} counts ${n} (answered: ${c[svc]})`);
  }
  t.equal(count(await metrics(agentA), 'split'), 0, 'none is reported for the parent Service');
});

t.test('matching: Exact, element-wise PathPrefix, RegularExpression, headers, query, method, and their precedence', async (t) => {
  const agent = client(t);
  const rule = async (path: string, o: { method?: string; headers?: Record<string, string> } = {}): Promise<string> => {
    const r = await request(agent, to(PORTS.match), 'match.mesh', { path, ...o });
    return r.status === 200 ? String(seen(r).headers['x-rule']) : `${r.status} ${r.flags}`;
  };
  await eventually(async () => (await rule('/exact')) === 'exact', 'the match route applies', 20_000);
  const cases: [string, Parameters<typeof rule>[1], string][] = [
    ['/exact', {}, 'exact'],
    ['/exact/', {}, '404 NR'],
    ['/exact?x=1', {}, 'exact'],
    ['/prefix', {}, 'prefix'],
    ['/prefix/', {}, 'prefix'],
    ['/prefix/a/b', {}, 'prefix'],
    ['/prefixes', {}, '404 NR'],
    ['/re/123', {}, 'regex'],
    ['/re/12a', {}, '404 NR'],
    ['/other', { headers: { 'x-canary': 'true' } }, 'header'],
    ['/other', { headers: { 'x-canary': 'false' } }, '404 NR'],
    ['/other?version=two', {}, 'query'],
    ['/other?version=one', {}, '404 NR'],
    ['/other', { method: 'POST' }, 'method'],
    ['/other', {}, '404 NR'],
    // Precedence (the Gateway API's order): an exact path beats a "/" prefix with a header match;
    ['/exact', { headers: { 'x-canary': 'true' } }, 'exact'],
    // a longer prefix beats a method match on "/";
    ['/prefix/x', { method: 'POST' }, 'prefix'],
    // a method match beats header matches, and header matches beat query matches.
    ['/other', { method: 'POST', headers: { 'x-canary': 'true' } }, 'method'],
    ['/other?version=two', { headers: { 'x-canary': 'true' } }, 'header'],
  ];
  for (const [path, o, want] of cases) t.equal(await rule(path, o), want, `${o?.method ?? 'GET'} ${path}${o?.headers ? ` ${JSON.stringify(o.headers)}` : ''} → ${want}`);
});

t.test('filters: request and response header modifiers', async (t) => {
  const agent = client(t);
  await routed(agent, PORTS.filters, 'filters.mesh', (r) => r.status === 200 && seen(r).headers['x-set'] === 'yes', '/headers');
  const r = await request(agent, to(PORTS.filters), 'filters.mesh', { path: '/headers', headers: { 'x-set': 'old', 'x-add': 'mine', 'x-remove': 'gone' } });
  t.equal(r.status, 200);
  const h = seen(r).headers;
  t.equal(h['x-set'], 'yes', 'set replaces the client\'s value');
  t.equal(h['x-add'], 'mine, added', 'add appends to it');
  t.equal(h['x-remove'], undefined, 'remove removes it');
  t.equal(r.headers['x-resp'], 'set-by-route', 'the response header was set');
});

t.test('RequestMirror: the mirror sees a copy of every request; the client gets the backend\'s answer', async (t) => {
  const agent = client(t);
  await routed(agent, PORTS.filters, 'filters.mesh', (r) => r.status === 200, '/mirror/warm');
  const ids = Array.from({ length: 20 }, (_, i) => `m-${i}`);
  for (const id of ids) {
    const r = await request(agent, to(PORTS.filters), 'filters.mesh', { path: `/mirror/${id}`, method: 'POST', body: `body-${id}` });
    t.equal(r.status === 200 && seen(r).name, 'echo-v1', `${id} answered by echo-v1`);
  }
  await eventually(async () => ids.every((id) => seenBy.get('mirror')?.some((s) => s.path === `/mirror/${id}` && s.method === 'POST')), 'the mirror saw every request', 10_000);
  t.pass('the mirror server received all 20 requests, method and path intact');
  await eventually(async () => metricValue(await metrics(agentA), 'ambit_http_mirrored_requests_total', { destination_service: SVC('mirror') }) >= 20, 'ambit_http_mirrored_requests_total', 10_000);
  t.pass('ambit_http_mirrored_requests_total counts the copies');
});

t.test('RequestRedirect and URLRewrite', async (t) => {
  const agent = client(t);
  await routed(agent, PORTS.filters, 'filters.mesh', (r) => r.status === 301, '/redirect/x');
  const moved = await request(agent, to(PORTS.filters), 'filters.mesh', { path: '/redirect/x?q=1' });
  t.equal(moved.status, 301, 'the status the route names');
  t.equal(moved.headers.location, 'http://example.org/new/x?q=1', 'hostname and prefix replaced, query kept');
  const secure = await request(agent, to(PORTS.filters), 'filters.mesh', { path: '/secure/y' });
  t.equal(secure.status, 302, 'the default status');
  t.equal(secure.headers.location, 'https://filters.mesh/secure/y', 'the scheme changed, host and path kept');

  const rewritten = await request(agent, to(PORTS.filters), 'filters.mesh', { path: '/rewrite/a/b?q=2' });
  t.equal(rewritten.status, 200);
  t.match(seen(rewritten), { name: 'echo-v1', path: '/v2/a/b?q=2', host: 'rewritten.example' }, 'the backend got the rewritten prefix and host');
  const full = await request(agent, to(PORTS.filters), 'filters.mesh', { path: '/full/whatever' });
  t.match(seen(full), { path: '/replaced' }, 'ReplaceFullPath');
});

t.test('timeouts: request 200ms answers 504 UT within 250 ms; backendRequest bounds each attempt', async (t) => {
  const agent = client(t);
  await routed(agent, PORTS.timeout, 'timeout.mesh', (r) => r.status === 504);
  for (let i = 0; i < 5; i++) {
    const began = performance.now();
    const r = await request(agent, to(PORTS.timeout), 'timeout.mesh', { path: `/t${i}` });
    const ms = performance.now() - began;
    t.equal(r.status, 504, 'gateway timeout');
    t.equal(r.flags, 'UT', 'response flag UT');
    t.ok(ms >= 195 && ms <= 250, `answered after ${ms.toFixed(0)} ms (200 ms + 50 ms at most)`);
  }
  const began = performance.now();
  const r = await request(agent, to(PORTS.timeout), 'timeout.mesh', { path: '/backend' });
  const ms = performance.now() - began;
  t.equal(r.status, 504);
  t.equal(r.flags, 'UT');
  t.ok(ms >= 145 && ms < 400, `timeouts.backendRequest 150ms: answered after ${ms.toFixed(0)} ms`);
  await eventually(async () => metricValue(await metrics(agentA), 'istio_requests_total', { reporter: 'source', destination_service: SVC('slow'), response_code: '504', response_flags: 'UT' }) >= 6, 'UT in istio_requests_total', 10_000);
  t.pass('istio_requests_total counts them with response_flags="UT"');
});

t.test('retries: a backend failing 20 % with 503 is hidden by retry {codes: [503], attempts: 3}', async (t) => {
  const agent = client(t, CLIENT, 1);
  await routed(agent, PORTS.retry, 'retry.mesh', (r) => r.status === 200 && seen(r).name === 'flaky');
  const arrivalsBefore = flakyArrivals;
  const retriesBefore = metricValue(await metrics(agentA), 'ambit_http_retries_total', { destination_service: SVC('flaky') });
  const statuses: number[] = [];
  for (let i = 0; i < 300; i++) statuses.push((await request(agent, to(PORTS.retry), 'retry.mesh', { path: `/r${i}` })).status);
  const ok = statuses.filter((s) => s === 200).length;
  t.ok(ok / 300 >= 0.99, `${ok} of 300 succeeded (≥ 99 %)`);
  const arrivals = flakyArrivals - arrivalsBefore;
  t.ok(arrivals > 300 && arrivals >= 300 * 1.2, `the server answered ${arrivals} attempts for 300 requests: the 503s were retried`);
  const retried = await eventually(async () => {
    const n = metricValue(await metrics(agentA), 'ambit_http_retries_total', { destination_service: SVC('flaky') }) - retriesBefore;
    return n >= arrivals - 300 ? n : undefined;
  }, 'ambit_http_retries_total', 10_000);
  t.equal(retried, arrivals - 300, `ambit_http_retries_total counts the ${arrivals - 300} retries`);
  const always = await request(agent, to(PORTS.retry), 'retry.mesh', { path: '/always' });
  t.equal(always.status, 503, 'a request failing every attempt gets the last answer');
  t.equal(seenBy.get('flaky')!.filter((s) => s.path === '/always').length, 4, 'after the first try and 3 retries');
  await eventually(async () => metricValue(await metrics(agentA), 'istio_requests_total', { reporter: 'source', destination_service: SVC('flaky'), response_flags: 'URX' }) === 1, 'URX in istio_requests_total', 10_000);
  t.pass('istio_requests_total counts it with response_flags="URX"');
});

t.test('retry budget: a backend failing every request under 50 concurrent clients gets at most max(3, 20 % of 50) retries at once', async (t) => {
  const agent = client(t, CLIENT, 50);
  await routed(agent, PORTS.budget, 'budget.mesh', (r) => r.status === 503);
  broken.attempts.clear();
  broken.maxRetriesInFlight = 0;
  broken.maxInFlight = 0;
  broken.retries = 0;
  let next = 0;
  const worker = async (): Promise<number[]> => {
    const got: number[] = [];
    // Bounded: 10 requests per client.
    for (let i = 0; i < 10; i++) got.push((await request(agent, to(PORTS.budget), 'budget.mesh', { headers: { 'x-request-id': `b-${next++}` } })).status);
    return got;
  };
  const statuses = (await Promise.all(Array.from({ length: 50 }, worker))).flat();
  t.equal(statuses.length, 500);
  t.ok(statuses.every((s) => s === 503), 'every request gets the backend\'s last answer, 503');
  t.ok(broken.maxInFlight >= 25, `the backend had up to ${broken.maxInFlight} requests at once`);
  t.ok(broken.retries > 0, `${broken.retries} retries were made`);
  t.ok(broken.maxRetriesInFlight <= 10, `at most ${broken.maxRetriesInFlight} retries in flight at once (budget: max(3, 20 % of ≤ 50 requests) = 10)`);
  t.ok(broken.retries < 500 * 3, `fewer than the 1,500 retries an unbudgeted client would make (${broken.retries})`);
  const exhausted = await eventually(async () => metricValue(await metrics(agentA), 'ambit_http_retry_budget_exhausted_total', { destination_service: SVC('broken') }), 'ambit_http_retry_budget_exhausted_total', 10_000);
  t.ok(exhausted > 0, `ambit_http_retry_budget_exhausted_total{destination_service="${SVC('broken')}"} = ${exhausted}: retries the budget refused`);
});

t.test('GRPCRoute: a method match splits calls over two grpc-js servers; another method retries UNAVAILABLE', async (t) => {
  const session = http2.connect(`http://${A}:${PORTS.grpc}`, { createConnection: () => connect({ host: A, port: PORTS.grpc, localAddress: CLIENT }) });
  t.teardown(() => session.close());
  const authority = `grpc.mesh:${GRPC_PORT}`;
  await eventually(async () => (await grpcCall(session, authority, 'warm')).grpcStatus === '0', 'the gRPC route applies', 20_000);
  const names: string[] = [];
  for (let i = 0; i < 40; i++) {
    const r = await grpcCall(session, authority, `hi-${i}`);
    t.equal(r.grpcStatus, '0', `Say ${i}: OK`);
    names.push(r.body.split(':')[0]!);
  }
  t.same(Object.keys(tally(names)).sort(), ['grpc-v1', 'grpc-v2'], `Say was split over both backends (${JSON.stringify(tally(names))})`);
  const callsBefore = grpcFlakyCalls;
  for (let i = 0; i < 20; i++) {
    const r = await grpcCall(session, authority, `shout-${i}`, '/test.Echo/Shout');
    t.equal(`${r.grpcStatus} ${r.body}`, `0 grpc-flaky:shout-${i}`, `Shout ${i}: OK from grpc-flaky`);
  }
  t.ok(grpcFlakyCalls - callsBefore >= 30, `grpc-flaky answered ${grpcFlakyCalls - callsBefore} calls for 20: every UNAVAILABLE was retried`);
  const other = await grpcCall(session, authority, 'x', '/test.Other/Call');
  t.not(other.grpcStatus, '0', `a method no rule matches is not served (HTTP ${other.status}, grpc-status ${other.grpcStatus}, flags ${other.flags})`);
});

t.test('FaultInjection: abort and delay for their percentage of requests, flags FI and DI', async (t) => {
  const agent = client(t, CLIENT, 1);
  await routed(agent, PORTS.fault, 'fault.mesh', (r) => r.status === 418 || (r.status === 200 && seen(r).name === 'echo-v1'), '/abort');
  const aborts: HttpAnswer[] = [];
  for (let i = 0; i < 200; i++) aborts.push(await request(agent, to(PORTS.fault), 'fault.mesh', { path: `/abort/${i}` }));
  const aborted = aborts.filter((r) => r.status === 418);
  t.ok(aborted.length + aborts.filter((r) => r.status === 200).length === 200, 'each request aborted or served');
  t.ok(Math.abs(aborted.length / 2 - 50) <= 12, `${aborted.length / 2} % aborted (50 ± 12)`);
  t.ok(aborted.every((r) => r.flags === 'FI'), 'an aborted request carries response flag FI');
  const delays: number[] = [];
  for (let i = 0; i < 40; i++) {
    const began = performance.now();
    const r = await request(agent, to(PORTS.fault), 'fault.mesh', { path: `/delay/${i}` });
    t.equal(r.status, 200);
    delays.push(performance.now() - began);
  }
  const delayed = delays.filter((ms) => ms >= 195).length;
  t.ok(delayed >= 8 && delayed <= 32, `${delayed} of 40 delayed by 200 ms (50 % ± 30 points)`);
  t.ok(delays.filter((ms) => ms < 150).length === 40 - delayed, 'the others were not delayed');
  const fi = await reaches(async () => metricValue(await metrics(agentA), 'istio_requests_total', { reporter: 'source', response_flags: 'FI' }), aborted.length);
  t.ok(fi === aborted.length || fi === aborted.length + 1, `istio_requests_total counts ${fi} with response_flags="FI" (aborted: ${aborted.length}, and maybe the warm-up request)`);
  const di = await reaches(async () => metricValue(await metrics(agentA), 'istio_requests_total', { reporter: 'source', response_flags: 'DI' }), delayed);
  t.equal(di, delayed, `istio_requests_total counts ${di} with response_flags="DI"`);
});

t.test('GAMMA: a consumer route overrides the producer route for its namespace only', async (t) => {
  const app = client(t, CLIENT);
  const team = client(t, TEAM_CLIENT);
  await routed(app, PORTS.echo, 'echo.mesh', (r) => r.status === 200 && seen(r).name === 'echo-v1');
  await routed(team, PORTS.teamEcho, 'echo.mesh', (r) => r.status === 200 && seen(r).name === 'echo-team');
  const names = { app: [] as string[], team: [] as string[] };
  for (let i = 0; i < 20; i++) {
    names.app.push(seen(await request(app, to(PORTS.echo), 'echo.mesh')).name);
    names.team.push(seen(await request(team, to(PORTS.teamEcho), 'echo.mesh')).name);
  }
  t.same(tally(names.app), { 'echo-v1': 20 }, 'app/client (no consumer route): the producer route mesh/echo-producer, echo-v1');
  t.same(tally(names.team), { 'echo-team': 20 }, 'team/client: its namespace\'s consumer route team/echo-consumer, echo-team');
});

t.test('status: a backendRef naming a missing Service is ResolvedRefs False in ambitctl get, and 500 for requests; another namespace\'s is RefNotPermitted', async (t) => {
  const r = await ambitctl(ctl, ['get', 'httproute', 'dangling', '-n', 'mesh', '-o', 'yaml']);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /type: ResolvedRefs\s+status: "?False"?\s+reason: BackendNotFound/, 'ResolvedRefs: False, reason BackendNotFound');
  t.match(r.stdout, /type: Accepted\s+status: "?True"?/, 'still Accepted');
  t.match(r.stdout, /nowhere/, 'the message names the missing Service');
  const agent = client(t);
  await routed(agent, PORTS.dangling, 'dangling.mesh', (x) => x.status === 500);
  t.pass('a request to it is answered 500');
  const cross = await ambitctl(ctl, ['get', 'httproute', 'cross', '-n', 'team', '-o', 'yaml']);
  t.match(cross.stdout, /type: ResolvedRefs\s+status: "?False"?\s+reason: RefNotPermitted/, 'a backend in another namespace without a ReferenceGrant: ResolvedRefs False, RefNotPermitted');
});

const GRANT = `apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: team-routes, namespace: mesh}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: team}]
  to: [{group: "", kind: Service, name: echo-v1}]
`;

t.test('ReferenceGrant: team\'s consumer route to a Service of mesh gets 500 without a grant, reaches it with one, and 500 again once it is deleted', async (t) => {
  const team = client(t, TEAM_CLIENT);
  const apply = async (verb: 'apply' | 'delete', text: string): Promise<string> => {
    const r = await ambitctl(ctl, [verb, '-f', '-'], text);
    if (r.code !== 0) throw new Error(`ambitctl ${verb}: ${r.stderr}`);
    return r.stdout;
  };
  const resolvedRefs = async (): Promise<string> => (await ambitctl(ctl, ['get', 'httproute', 'cross', '-n', 'team'])).stdout.split('\n')[1]?.trim().split(/\s+/).slice(4).join(' ') ?? '';
  // team/cross: attached to mesh/dangling, its backend mesh/echo-v1.
  await routed(team, PORTS.teamDangling, 'dangling.mesh', (r) => r.status === 500);
  t.pass('no grant: 500');
  t.equal(await resolvedRefs(), 'False (RefNotPermitted)', 'get httproute: ResolvedRefs False (RefNotPermitted)');

  t.equal(await apply('apply', GRANT), 'ReferenceGrant mesh/team-routes created\n', 'applied with ambitctl apply -f');
  await routed(team, PORTS.teamDangling, 'dangling.mesh', (r) => r.status === 200 && seen(r).name === 'echo-v1');
  const names: string[] = [];
  for (let i = 0; i < 10; i++) names.push(seen(await request(team, to(PORTS.teamDangling), 'dangling.mesh')).name);
  t.same(tally(names), { 'echo-v1': 10 }, 'granted: every request reaches mesh/echo-v1');
  t.equal(await resolvedRefs(), 'True', 'get httproute: ResolvedRefs True');
  const app = client(t, CLIENT);
  t.equal((await request(app, to(PORTS.dangling), 'dangling.mesh')).status, 500, 'app/client still follows mesh\'s producer route (its missing backend): the grant is about team\'s route only');

  t.equal(await apply('delete', GRANT), 'ReferenceGrant mesh/team-routes deleted\n', 'deleted with ambitctl delete -f');
  await routed(team, PORTS.teamDangling, 'dangling.mesh', (r) => r.status === 500);
  t.pass('the grant deleted: 500 again');
  t.equal(await resolvedRefs(), 'False (RefNotPermitted)', 'get httproute: RefNotPermitted again');
});
