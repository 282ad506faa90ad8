/**
 * How the outbound edge (agent/dataplane/outbound.ts) gives the data plane
 * the route tables of HTTP service ports: a connection gets the backends'
 * service tables, then its port's route table for its client's namespace,
 * then its route naming it; a port without rules gets a table whose one
 * rule forwards to the service, so that routes applied later reach live
 * connections; every mesh change resends what changed in that order
 * (service tables, route tables, removals), and a table without rules is
 * removed once no connection names it. Without routes to give (no
 * `routes` option) connections name no table.
 */
import t from 'tap';
import { Registry } from 'prom-client';
import { NativeOutbound } from '../../../agent/dataplane/outbound.ts';
import type { FromDataplane, ToDataplane } from '../../../agent/dataplane/supervisor.ts';
import { OutlierDetector } from '../../../agent/connection/outlier.ts';
import { ConnectionTracker } from '../../../agent/proxy/connection-tracker.ts';
import { createAgentMetrics } from '../../../agent/proxy/metrics.ts';
import { MeshState } from '../../../agent/state/mesh-state.ts';
import { createLogger } from '../../../shared/logger.ts';
import type { RouteResource } from '../../../shared/resources/route-types.ts';
import type { Resource, Workload } from '../../../shared/resources/types.ts';
import { getTracer } from '../../../shared/tracing.ts';
import { backend, grant, httpRoute, parent, rule, service } from '../../shared/routes/route-fixtures.ts';

const WEB = 'web.shop.svc.cluster.local:80@';
const V2 = 'web-v2.shop.svc.cluster.local:80@';

function wl(name: string, namespace: string, app: string, node: string, address: string): Workload {
  return { kind: 'Workload', metadata: { name, namespace, labels: { app }, revision: 1 }, spec: { serviceAccount: app, node, address, ports: [], weight: 1, locality: '', healthy: true } };
}

const web = { ...service('shop', 'web', [{ port: 80 }]), spec: { ...service('shop', 'web', [{ port: 80 }]).spec, addresses: ['10.96.0.1'] } };
const BASE: Resource[] = [
  web,
  service('shop', 'web-v2', [{ port: 80 }]),
  wl('client', 'shop', 'client', 'node-a', '10.0.0.1'),
  wl('client-a', 'client-a', 'client', 'node-a', '10.0.0.2'),
  wl('web-1', 'shop', 'web', 'node-b', '10.0.1.1'),
  wl('web-v2-1', 'shop', 'web-v2', 'node-b', '10.0.1.2'),
];

function rig(o: { routes?: boolean } = {}) {
  const state = new MeshState('node-a', 'cluster.local');
  let revision = 1;
  const apply = (resources: Resource[]) => state.apply({ revision: revision++, snapshot: resources, nodes: [{ name: 'node-b', hboneAddress: '10.9.0.2:15008' }] });
  apply(BASE);
  const mesh = { routes: [] as RouteResource[] };
  const withRoutes = o.routes ?? true;
  const sent: ToDataplane[] = [];
  const waiters: (() => void)[] = [];
  const outbound = new NativeOutbound({
    listeners: [{ entry: { kind: 'capture', captureMode: 'pod' }, addr: '10.0.0.100:15001', label: 'capture' }],
    outbound: {
      state, metrics: createAgentMetrics(new Registry()), accessLog: createLogger({ name: 'access', level: 'silent' }), tracer: getTracer('test', '0'),
      tracker: new ConnectionTracker(), passthrough: 'allow', connectTimeoutMs: 1000,
      outlier: new OutlierDetector({ consecutiveFailures: 5, baseEjectionMs: 10_000, maxEjectionMs: 300_000, maxEjectionPercent: 100 }),
    },
    trustDomain: 'cluster.local', bundle: () => [], logger: createLogger({ name: 'agent', level: 'silent' }), agentAddress: '10.0.0.100',
    http: { consecutiveFailures: 5, baseEjectionMs: 30_000, maxEjectionMs: 300_000, maxEjectionPercent: 10, maxPendingRequests: 1024, maxConnections: 1024, retryBudgetPercent: 20, minRetryConcurrency: 3, maxBufferedBodyBytes: 65536 },
    ...(withRoutes ? { routes: () => ({ routes: mesh.routes, fault: () => undefined, grants: (ns: string) => state.referenceGrants(ns) }) } : {}),
  });
  const send = (m: ToDataplane) => {
    sent.push(m);
    waiters.splice(0).forEach((w) => w());
  };
  void outbound.listen(send);
  outbound.handle({ $case: 'bound', bound: { lid: 0, addr: '10.0.0.100:15001' } });
  sent.length = 0;
  /** Opens a captured connection from `from` to web's VIP, resolving with everything sent up to its route. */
  const connect = async (id: number, from: string): Promise<ToDataplane[]> => {
    const before = sent.length;
    const m: FromDataplane = { $case: 'out', out: { id, lid: 0, remote: { address: from, port: 40000 + id }, local: { address: '10.0.0.100', port: 15001 }, user: '', dst: { address: '10.96.0.1', port: 80 }, dstError: '' } };
    t.ok(outbound.handle(m));
    while (!sent.slice(before).some((x) => x.$case === 'route')) await new Promise<void>((r) => waiters.push(r));
    return sent.slice(before);
  };
  /** The mesh changed: what refreshHttpServices sends. */
  const change = (resources: Resource[], routes: RouteResource[]): ToDataplane[] => {
    const before = sent.length;
    mesh.routes = routes;
    apply(resources);
    outbound.refreshHttpServices();
    return sent.slice(before);
  };
  const end = (id: number) => outbound.handle({ $case: 'end', end: { id, fromSource: 0, toSource: 0, error: '', tag: '', status: 0, flags: '', failed: false, reason: '' } });
  return { outbound, connect, change, end, mesh, send };
}

/** A compact view of what was sent: kind and the keys it carries. */
function summary(ms: readonly ToDataplane[]): unknown[] {
  return ms.map((m) => {
    if (m.$case === 'httpServices') return { services: m.httpServices.services.map((s) => s.key), removed: m.httpServices.removed };
    if (m.$case === 'httpRoutes') return { routes: m.httpRoutes.tables.map((x) => x.key), removed: m.httpRoutes.removed };
    if (m.$case === 'route') return { route: m.route.id, service: m.route.service, routeTable: m.route.routeTable };
    return { other: m.$case };
  });
}

const split = (v1: number, v2: number, more: Parameters<typeof backend>[] = []) => httpRoute('shop', 'split', [parent('shop', 'web')], [rule({ backendRefs: [backend('shop', 'web', 80, v1), backend('shop', 'web-v2', 80, v2), ...more.map((b) => backend(...b))] })]);

t.test('a port without rules: its service table, then a table forwarding to it, then the route naming that table', async (t) => {
  const { connect } = rig();
  const sent = await connect(1, '10.0.0.1');
  t.same(summary(sent), [{ services: [WEB], removed: [] }, { routes: [`${WEB} for shop`], removed: [] }, { route: 1, service: WEB, routeTable: `${WEB} for shop` }]);
  const table = sent[1]!.$case === 'httpRoutes' ? sent[1]!.httpRoutes.tables[0]! : undefined;
  t.same(table?.rules.map((r) => [r.matches, r.backends.map((b) => [b.table, b.weight]), r.retry, r.mirrors]), [[[], [[WEB, 1]], undefined, []]], 'one rule: every request to the service as it is');
  const none = rig({ routes: false });
  t.same(summary(await none.connect(1, '10.0.0.1')), [{ services: [WEB], removed: [] }, { route: 1, service: WEB, routeTable: '' }], 'no routes to give: no table');
});

t.test('a port with rules: backends\' service tables, then the route table, then the route naming it; held tables are not sent again', async (t) => {
  const { connect, mesh, outbound } = rig();
  mesh.routes = [split(90, 10)];
  const first = await connect(1, '10.0.0.1');
  t.same(summary(first), [
    { services: [WEB], removed: [] },
    { services: [V2], removed: [] },
    { routes: [`${WEB} for shop`], removed: [] },
    { route: 1, service: WEB, routeTable: `${WEB} for shop` },
  ]);
  const routes = first.find((m) => m.$case === 'httpRoutes');
  t.same(routes?.$case === 'httpRoutes' && routes.httpRoutes.tables[0]!.rules[0]!.backends.map((b) => [b.table, b.weight]), [[WEB, 90], [V2, 10]]);
  t.same(summary(await connect(2, '10.0.0.1')), [{ route: 2, service: WEB, routeTable: `${WEB} for shop` }], 'the second connection: everything already held');
  t.same(outbound.httpRouteTables(), routes?.$case === 'httpRoutes' ? routes.httpRoutes.tables : [], 'the tables held, as sent');
  t.same(summary(await connect(3, '10.0.0.2')), [{ routes: [`${WEB} for client-a`], removed: [] }, { route: 3, service: WEB, routeTable: `${WEB} for client-a` }], 'another namespace: a table of its own');
});

t.test('a connection opened before any route follows a route applied later', async (t) => {
  const { connect, change } = rig();
  t.same(summary(await connect(1, '10.0.0.1')), [{ services: [WEB], removed: [] }, { routes: [`${WEB} for shop`], removed: [] }, { route: 1, service: WEB, routeTable: `${WEB} for shop` }]);
  const applied = change(BASE, [split(90, 10)]);
  t.same(summary(applied), [{ services: [V2], removed: [] }, { routes: [`${WEB} for shop`], removed: [] }], 'the new backend\'s table, then the table connection 1 names');
  const table = applied[1]!.$case === 'httpRoutes' ? applied[1]!.httpRoutes.tables[0]! : undefined;
  t.same(table?.rules.map((r) => [r.route, r.backends.map((b) => [b.table, b.weight])]), [['HTTPRoute/shop/split#0', [[WEB, 90], [V2, 10]]]]);
});

t.test('mesh changes: changed tables resent in order, a route table whose routes are gone forwards plainly while named, then is removed', async (t) => {
  const { connect, change, end, mesh } = rig();
  mesh.routes = [split(90, 10)];
  await connect(1, '10.0.0.1');
  t.same(summary(change(BASE, [split(90, 10)])), [], 'nothing changed: nothing sent');
  const reweighted = change(BASE, [split(50, 50)]);
  t.same(summary(reweighted), [{ routes: [`${WEB} for shop`], removed: [] }]);

  // A new backend: its service table before the route table naming it.
  const withV3 = [...BASE, service('shop', 'web-v3', [{ port: 80 }]), wl('web-v3-1', 'shop', 'web-v3', 'node-b', '10.0.1.3')];
  t.same(summary(change(withV3, [split(50, 50, [['shop', 'web-v3', 80, 5]])])), [
    { services: ['web-v3.shop.svc.cluster.local:80@'], removed: [] },
    { routes: [`${WEB} for shop`], removed: [] },
  ]);
  // Its Service deleted: the route table stops naming it before its table is removed.
  const gone = change(BASE, [split(50, 50, [['shop', 'web-v3', 80, 5]])]);
  t.same(summary(gone), [{ routes: [`${WEB} for shop`], removed: [] }, { services: [], removed: ['web-v3.shop.svc.cluster.local:80@'] }]);
  const table = gone[0]!.$case === 'httpRoutes' ? gone[0]!.httpRoutes.tables[0]! : undefined;
  t.same(table?.rules[0]!.backends.map((b) => [b.table, b.weight]), [[WEB, 50], [V2, 50], ['', 5]], 'the unresolved backend keeps its weight');

  // Endpoints of a backend change: its service table is resent.
  t.same(summary(change([...BASE, wl('web-v2-2', 'shop', 'web-v2', 'node-b', '10.0.1.4')], [split(50, 50)])), [{ services: [V2], removed: [] }, { routes: [`${WEB} for shop`], removed: [] }]);

  // The route deleted while connection 1 names its table: one rule to the service as it is.
  const plain = change(BASE, []);
  t.same(summary(plain), [{ services: [V2], removed: [] }, { routes: [`${WEB} for shop`], removed: [] }]);
  const rules = plain[1]!.$case === 'httpRoutes' ? plain[1]!.httpRoutes.tables[0]!.rules : [];
  t.same(rules.map((r) => [r.matches, r.backends.map((b) => [b.table, b.weight])]), [[[], [[WEB, 1]]]]);
  t.same(summary(await connect(2, '10.0.0.1')), [{ route: 2, service: WEB, routeTable: `${WEB} for shop` }], 'a new connection names the held table');
  end(1);
  t.same(summary(change(BASE, [])), [], 'connection 2 still names it: kept');
  end(2);
  t.same(summary(change(BASE, [])), [{ routes: [], removed: [`${WEB} for shop`] }], 'a table without rules no connection names: removed');

  // Routes back: compiled afresh for the next connection.
  mesh.routes = [split(1, 1)];
  t.same(summary(await connect(3, '10.0.0.1')), [{ routes: [`${WEB} for shop`], removed: [] }, { route: 3, service: WEB, routeTable: `${WEB} for shop` }]);
  end(3);
  t.same(summary(change(BASE, [split(1, 1)])), [], 'a table with rules is kept though no connection names it');
  t.same(summary(change(BASE.filter((r) => !(r.kind === 'Service' && r.metadata.name === 'web')), [split(1, 1)])), [{ routes: [], removed: [`${WEB} for shop`] }, { services: [], removed: [WEB] }], 'its service gone: the route table goes, then the service table');
});

t.test('a ReferenceGrant applied or deleted: the consumer route table naming the other namespace\'s backend is resent', async (t) => {
  const { connect, change, mesh } = rig();
  // client-a's consumer route of shop/web, whose backend is shop/web itself (to add a timeout, say).
  const consumer = httpRoute('client-a', 'c', [parent('shop', 'web')], [rule({ backendRefs: [backend('shop', 'web', 80)], timeouts: { requestMs: 500 } })]);
  mesh.routes = [consumer];
  const backends = (ms: readonly ToDataplane[]) => ms.flatMap((m) => (m.$case === 'httpRoutes' ? m.httpRoutes.tables.map((x) => x.rules[0]!.backends.map((b) => b.table)) : []));
  const first = await connect(1, '10.0.0.2');
  t.same(backends(first), [['']], 'no grant: the backend is not permitted (500)');
  const granted = change([...BASE, grant('shop', 'client-a-routes', 'client-a')], [consumer]);
  t.same(summary(granted), [{ routes: [`${WEB} for client-a`], removed: [] }], 'granted: the route table is resent (the backend\'s table is the one the connection already holds)');
  t.same(backends(granted), [[WEB]]);
  t.same(change([...BASE, grant('shop', 'client-a-routes', 'client-a')], [consumer]), [], 'nothing changed: nothing sent');
  const revoked = change(BASE, [consumer]);
  t.same(backends(revoked), [['']], 'the grant deleted: not permitted again');
  t.same(backends(change([...BASE, grant('client-a', 'self', 'client-a')], [consumer])), [], 'a grant in the route\'s own namespace changes nothing');
});

t.test('a data plane started again holds no table: all sent again', async (t) => {
  const { connect, outbound, mesh, send } = rig();
  mesh.routes = [split(90, 10)];
  await connect(1, '10.0.0.1');
  void outbound.listen(send);
  outbound.handle({ $case: 'bound', bound: { lid: 0, addr: '10.0.0.100:15001' } });
  t.same(summary((await connect(2, '10.0.0.1')).filter((m) => m.$case !== 'listen')), [
    { services: [WEB], removed: [] },
    { services: [V2], removed: [] },
    { routes: [`${WEB} for shop`], removed: [] },
    { route: 2, service: WEB, routeTable: `${WEB} for shop` },
  ]);
});
