/**
 * planOutbound's tunnel attempts (agent/connection/routing.ts): a connection to
 * a service gets up to CONNECT_ATTEMPTS distinct endpoints, ejected ones
 * left out while another is left (all ejected: tried anyway); a workload
 * address gets exactly one; the record names the first until another serves.
 * Every refusal planOutbound can make, and how tunnelFailure maps a peer
 * agent's answer, with the registry's flags (connection/refusals.ts).
 */
import t from 'tap';
import { Registry } from 'prom-client';
import { OutlierDetector } from '../../../agent/connection/outlier.ts';
import { ConnectionTracker } from '../../../agent/proxy/connection-tracker.ts';
import { createAgentMetrics } from '../../../agent/proxy/metrics.ts';
import { CONNECT_ATTEMPTS, isConnectFailure, planOutbound, refuseOutbound, TunnelError, tunnelFailure, type OutboundDeps, type OutboundFailure, type TunnelRequest } from '../../../agent/connection/routing.ts';
import { flagOf } from '../../../agent/connection/refusals.ts';
import { MeshState } from '../../../agent/state/mesh-state.ts';
import { createLogger } from '../../../shared/logger.ts';
import type { Service, Workload } from '../../../shared/resources/types.ts';
import { getTracer } from '../../../shared/tracing.ts';

const SVC = 'web.shop.svc.cluster.local';

function wl(name: string, node: string, address: string, app = 'web'): Workload {
  return {
    kind: 'Workload',
    metadata: { name, namespace: 'shop', labels: { app }, revision: 1 },
    spec: { serviceAccount: name, node, address, ports: [], weight: 1, locality: '', healthy: true },
  };
}

const web: Service = {
  kind: 'Service',
  metadata: { name: 'web', namespace: 'shop', labels: {}, revision: 1 },
  spec: { addresses: [], ports: [{ name: 'tcp', port: 80, targetPort: 8080, appProtocol: 'tcp' }], selector: { app: 'web' } },
};

function setUp(endpoints: number, extra: readonly Workload[] = []): { d: OutboundDeps; client: Workload; clock: { now: number }; registry: Registry } {
  const state = new MeshState('node-a', 'cluster.local');
  const client = wl('client', 'node-a', '10.0.0.1', 'client');
  const webs = Array.from({ length: endpoints }, (_, i) => wl(`web-${i + 1}`, i % 2 ? 'node-c' : 'node-b', `10.0.1.${i + 1}`));
  state.apply({ revision: 1, snapshot: [client, ...webs, ...extra, web], nodes: [{ name: 'node-b', hboneAddress: '10.9.0.2:15008' }, { name: 'node-c', hboneAddress: '10.9.0.3:15008' }] });
  const clock = { now: 0 };
  const outlier = new OutlierDetector({ consecutiveFailures: 1, baseEjectionMs: 10_000, maxEjectionMs: 300_000, maxEjectionPercent: 100, now: () => clock.now });
  const accessLog = createLogger({ name: 'access', level: 'silent' });
  const registry = new Registry();
  return { registry, d: { state, metrics: createAgentMetrics(registry), accessLog, tracer: getTracer('test', '0'), tracker: new ConnectionTracker(), passthrough: 'allow', connectTimeoutMs: 1000, outlier }, client, clock };
}

function plan(d: OutboundDeps, client: Workload, host: string, port: number): { request: TunnelRequest; dst: string } {
  const { record, plan } = planOutbound(d, { source: client, srcAddr: '10.0.0.1', host, port });
  record.finish();
  if (plan.kind !== 'tunnel') throw new Error(`not a tunnel: ${plan.kind}`);
  return { request: plan.request, dst: record.dst.addr };
}

t.test('a service: up to three distinct endpoints, each with its own agent and identity', async (t) => {
  const { d, client } = setUp(5);
  const { request, dst } = plan(d, client, 'web.shop', 80);
  t.equal(request.attempts.length, CONNECT_ATTEMPTS, 'three of five');
  t.equal(new Set(request.attempts.map((a) => a.authority)).size, CONNECT_ATTEMPTS, 'distinct');
  t.equal(request.attempts[0]!.authority, request.authority, 'the first is the plan\'s own choice');
  t.equal(dst, request.attempts[0]!.peer.addr, 'which the record names until another serves');
  for (const a of request.attempts) {
    const n = Number(a.authority.split('.')[3]!.split(':')[0]);
    t.equal(a.hboneAddress, n % 2 ? '10.9.0.2:15008' : '10.9.0.3:15008', `${a.authority} through its own node's agent`);
    t.equal(a.destination.uri, `spiffe://cluster.local/ns/shop/sa/web-${n}`, 'expecting its own identity');
  }
  t.same({ service: request.service, size: request.serviceSize }, { service: SVC, size: 5 });
  const two = setUp(2);
  t.equal(plan(two.d, two.client, 'web.shop', 80).request.attempts.length, 2, 'a service of two: two attempts');
});

t.test('ejected endpoints are left out, unless all are', async (t) => {
  const { d, client, clock } = setUp(3);
  d.outlier.failure(SVC, '10.0.1.3:8080', 3, 'workload_unreachable');
  for (let i = 0; i < 50; i++) {
    const { request } = plan(d, client, 'web.shop', 80);
    if (request.attempts.some((a) => a.authority === '10.0.1.3:8080')) return t.fail('an ejected endpoint was planned');
    t.equal(request.attempts.length, 2, 'the two others only', { diagnostic: false });
  }
  d.outlier.failure(SVC, '10.0.1.1:8080', 3, 'connect_failed');
  d.outlier.failure(SVC, '10.0.1.2:8080', 3, 'connect_failed');
  t.equal(d.outlier.ejectedIn(SVC), 3, 'all three ejected (the cap is 100 % here)');
  t.equal(plan(d, client, 'web.shop', 80).request.attempts.length, 3, 'all ejected: all are tried rather than none');
  clock.now += 10_000;
  t.equal(d.outlier.ejectedIn(SVC), 0, 'back after the interval');
});

t.test('a workload address: one attempt, no service', async (t) => {
  const { d, client } = setUp(3);
  const { request } = plan(d, client, '10.0.1.2', 8080);
  t.same(request.attempts.map((a) => a.authority), ['10.0.1.2:8080']);
  t.equal(request.service, '');
});

t.test('what counts against an endpoint\'s health', async (t) => {
  t.ok(isConnectFailure(503, 'workload_unreachable'), 'the peer\'s 503');
  for (const reason of ['connect_failed', 'timeout', 'stream_error', 'stream_failed']) t.ok(isConnectFailure(0, reason), reason);
  t.notOk(isConnectFailure(401, 'policy_denied'), 'not a denial');
  t.notOk(isConnectFailure(400, 'unknown_destination'), 'not a 400');
  t.notOk(isConnectFailure(0, 'no_source_certificate'), 'not a failure every endpoint would share');
});

t.test('planOutbound: every refusal it can make, each with its registered flag', async (t) => {
  const cases: { name: string; host: string; port: number; passthrough?: 'allow' | 'deny'; extra?: Workload[]; failure: OutboundFailure; detail: RegExp }[] = [
    { name: 'a service with no endpoint serving the port', host: 'web.shop', port: 80, failure: 'no_route', detail: /^service web\.shop\.svc\.cluster\.local has no endpoint serving port 8080$/ },
    { name: 'a workload whose node has no known agent', host: '10.0.2.1', port: 8080, extra: [wl('lost', 'node-x', '10.0.2.1', 'lost')], failure: 'no_route', detail: /^node node-x of shop\/lost has no known agent address$/ },
    { name: 'outside the mesh, --passthrough deny', host: '192.0.2.1', port: 443, passthrough: 'deny', failure: 'passthrough_denied', detail: /^192\.0\.2\.1:443 is outside the mesh and --passthrough is deny$/ },
  ];
  for (const c of cases) {
    const { d: base, client, registry } = setUp(0, c.extra);
    const d = { ...base, passthrough: c.passthrough ?? base.passthrough };
    const { record, plan } = planOutbound(d, { source: client, srcAddr: '10.0.0.1', host: c.host, port: c.port });
    t.match(plan, { kind: 'refuse', failure: c.failure, detail: c.detail, flags: 'NR' }, c.name);
    t.equal(plan.kind === 'refuse' && plan.flags, flagOf(c.failure), `${c.name}: the registry's flag`);
    if (plan.kind === 'refuse') refuseOutbound(d, record, plan.failure, plan.detail);
    t.equal(record.responseFlags, 'NR', `${c.name}: the record ends with it`);
    const counted = (await registry.getSingleMetric('ambit_connections_refused_total')!.get()).values.filter((v) => v.value > 0);
    t.same(counted.map((v) => [v.labels.direction, v.labels.reason, v.value]), [['outbound', c.failure, 1]], `${c.name}: counted once as outbound ${c.failure}`);
  }
  const { d, client } = setUp(1);
  t.match(planOutbound(d, { source: client, srcAddr: '10.0.0.1', host: '192.0.2.1', port: 443 }).plan, { kind: 'direct', host: '192.0.2.1', port: 443 }, '--passthrough allow: dialled directly');
});

t.test('tunnelFailure: the peer agent\'s answer as the registry maps it', async (t) => {
  const cases: [status: number, reason: string, failure: OutboundFailure, flags: string][] = [
    [401, 'denied: no_allow_match', 'denied', 'DENY'],
    [401, 'unverified_source_address', 'denied', 'DENY'],
    [400, 'not_a_local_workload', 'no_route', 'NR'],
    [405, 'not_connect', 'unreachable', 'UF'],
    [503, 'workload_unreachable: ECONNREFUSED', 'refused', 'UF'],
    [503, 'agent_unavailable', 'refused', 'UF'],
    [0, 'connect_failed', 'unreachable', 'UF'],
    [0, 'timeout', 'unreachable', 'UF'],
  ];
  for (const [status, reason, failure, flags] of cases) {
    const { d, registry } = setUp(1);
    t.same(tunnelFailure(d, new TunnelError(status, reason, 'x')), { failure, flags }, `${status} ${reason}: ${failure} ${flags}`);
    const denials = (await registry.getSingleMetric('ambit_policy_denials_total')!.get()).values.filter((v) => v.value > 0);
    t.equal(denials.length, status === 401 ? 1 : 0, `${status}: ${status === 401 ? 'also a denial' : 'not a denial'}`);
  }
});

t.test('tunnelFailure: a denial is counted and logged under the policy the peer\'s answer names', async (t) => {
  const cases: [answer: string, policy: string, reason: string][] = [
    ['denied: denied_by_policy by shop/no-web', 'shop/no-web', 'denied_by_policy'],
    ['denied: no_allow_match', '(no ALLOW matched)', 'no_allow_match'],
    ['unverified_source_address', '', 'unverified_source_address'],
    ['denied: denied_by_policy by {"evil"}', '', 'denied: denied_by_policy by {"evil"}'],
  ];
  for (const [answer, policy, reason] of cases) {
    const { d, registry, client } = setUp(1);
    const { record } = planOutbound(d, { source: client, srcAddr: '10.0.0.1', host: '192.0.2.1', port: 443 });
    tunnelFailure(d, new TunnelError(401, answer, 'x'), record);
    const denials = (await registry.getSingleMetric('ambit_policy_denials_total')!.get()).values.filter((v) => v.value > 0);
    t.same(denials.map((v) => ({ ...v.labels })), [{ direction: 'outbound', policy, reason }], `${answer}: counted under ${JSON.stringify(policy)}`);
    t.equal(record.policy, policy, `${answer}: the record names it`);
  }
});
