/**
 * The route tables the agent compiles for the data plane
 * (agent/connection/http-routes.ts): every field of a rule from the
 * HTTPRoute or GRPCRoute it comes from, the backends' service tables named
 * by key (unresolved ones kept with their weight and no table), and a port
 * without rules gets one rule forwarding to its own service table.
 */
import t from 'tap';
import { compileBackendService, compileHttpRoutes, millionths, routeTableKey, type RouteInputs } from '../../../agent/connection/http-routes.ts';
import { MeshState } from '../../../agent/state/mesh-state.ts';
import { MatchType, PathModifierType } from '../../../shared/proto/gen/dataplane.ts';
import type { FaultInjection, HTTPRouteFilter, ReferenceGrant, RouteResource } from '../../../shared/resources/route-types.ts';
import type { Resource, Workload } from '../../../shared/resources/types.ts';
import { backend, fault, grant, grpcBackend, grpcMatch, grpcRoute, grpcRule, httpRoute, match, parent, rule, service } from '../../shared/routes/route-fixtures.ts';

function wl(name: string, namespace: string, app: string, address: string): Workload {
  return { kind: 'Workload', metadata: { name, namespace, labels: { app }, revision: 1 }, spec: { serviceAccount: app, node: 'node-b', address, ports: [], weight: 1, locality: '', healthy: true } };
}

const RESOURCES: Resource[] = [
  service('shop', 'web', [{ port: 80 }, { port: 81, appProtocol: 'grpc' }, { port: 82, appProtocol: 'tcp' }]),
  service('shop', 'web-v2', [{ port: 80 }]),
  service('shop', 'raw', [{ port: 9000, appProtocol: 'tcp' }]),
  service('other', 'web', [{ port: 80 }]),
  wl('web-1', 'shop', 'web', '10.0.0.1'),
  wl('web-v2-1', 'shop', 'web-v2', '10.0.0.2'),
  wl('raw-1', 'shop', 'raw', '10.0.0.3'),
  wl('other-1', 'other', 'web', '10.0.0.4'),
];

function state(): MeshState {
  const s = new MeshState('node-a', 'cluster.local');
  s.apply({ revision: 1, snapshot: RESOURCES, nodes: [{ name: 'node-b', hboneAddress: '10.9.0.2:15008' }] });
  return s;
}

const inputs = (routes: RouteResource[], faults: FaultInjection[] = [], grants: ReferenceGrant[] = []): RouteInputs => ({
  routes,
  fault: (ns, name) => faults.find((f) => f.metadata.namespace === ns && f.metadata.name === name),
  grants: (ns) => grants.filter((g) => g.metadata.namespace === ns),
});

const WEB = 'web.shop.svc.cluster.local';

t.test('no rule for the port: one rule to the port\'s own service table; a TCP port: no table', async (t) => {
  const s = state();
  const r = httpRoute('shop', 'r', [parent('shop', 'web', 80)], [rule()]);
  const web81 = s.resolveService('web.shop', 81)!;
  const plain = compileHttpRoutes(s, web81, 'eu/a', 'shop', inputs([r]))!;
  t.equal(plain.routed, false);
  t.same(plain.table, {
    key: `${WEB}:81@eu/a for shop`,
    rules: [{
      route: '', matches: [], backends: [{ table: `${WEB}:81@eu/a`, weight: 1, requestHeaders: undefined, responseHeaders: undefined }], requestHeaders: undefined, responseHeaders: undefined,
      mirrors: [], redirect: undefined, rewrite: undefined, fault: undefined, requestTimeoutMs: 0, backendTimeoutMs: 0, retry: undefined,
    }],
  });
  t.same(plain.services.map((b) => [b.table.key, b.table.protocol]), [[`${WEB}:81@eu/a`, 'grpc']], 'the port\'s own table');
  t.equal(compileHttpRoutes(s, s.resolveService('web.shop', 80)!, '', 'shop', inputs([]))?.routed, false);
  t.equal(compileHttpRoutes(s, s.resolveService('web.shop', 80)!, '', 'shop', inputs([r]))?.routed, true);
  t.equal(compileHttpRoutes(s, s.resolveService('web.shop', 82)!, '', 'shop', inputs([httpRoute('shop', 't', [parent('shop', 'web')], [rule()])])), undefined);
});

t.test('matches, weighted backends and their service tables; unresolved backends keep their weight with no table', async (t) => {
  const s = state();
  const web80 = s.resolveService('web.shop', 80)!;
  const r = httpRoute('shop', 'split', [parent('shop', 'web')], [
    rule({
      matches: [match({
        path: { type: 'Exact', value: '/cart' },
        headers: [{ type: 'Exact', name: 'x-user', value: 'beta' }, { type: 'RegularExpression', name: 'x-tier', value: 'gold|silver' }],
        queryParams: [{ type: 'Exact', name: 'v', value: '2' }],
        method: 'POST',
      })],
      backendRefs: [backend('shop', 'web', 80, 90), backend('shop', 'web-v2', 80, 10), backend('shop', 'gone', 80, 5), backend('shop', 'web-v2', 81, 3), backend('other', 'web', 80, 2)],
    }),
    rule({ matches: [match({ path: { type: 'RegularExpression', value: '/item/[0-9]+' } })], backendRefs: [backend('shop', 'raw', 9000)] }),
  ]);
  const c = compileHttpRoutes(s, web80, 'eu/a', 'client', inputs([r]))!;
  t.equal(c.table.key, `${WEB}:80@eu/a for client`);
  t.equal(c.table.key, routeTableKey(s, web80, 'eu/a', 'client'));
  const [cart, item] = c.table.rules;
  t.equal(cart!.route, 'HTTPRoute/shop/split#0');
  t.same(cart!.matches, [{
    path: { type: MatchType.MATCH_TYPE_EXACT, value: '/cart' },
    headers: [{ name: 'x-user', type: MatchType.MATCH_TYPE_EXACT, value: 'beta' }, { name: 'x-tier', type: MatchType.MATCH_TYPE_REGEX, value: 'gold|silver' }],
    query: [{ name: 'v', type: MatchType.MATCH_TYPE_EXACT, value: '2' }],
    method: 'POST',
  }]);
  t.same(cart!.backends.map((b) => [b.table, b.weight]), [
    [`${WEB}:80@eu/a`, 90],
    ['web-v2.shop.svc.cluster.local:80@eu/a', 10],
    ['', 5], // no such Service
    ['', 3], // no such port
    ['', 2], // another namespace with no ReferenceGrant: RefNotPermitted
  ]);
  t.same(item!.matches[0]!.path, { type: MatchType.MATCH_TYPE_REGEX, value: '/item/[0-9]+' });
  t.same(item!.backends.map((b) => b.table), ['raw.shop.svc.cluster.local:9000@eu/a as http'], 'a tcp backend port is spoken to with the parent port\'s protocol, under its own key');
  t.same(c.services.map((b) => [b.table.key, b.table.protocol, b.table.endpoints.map((e) => e.workload)]), [
    [`${WEB}:80@eu/a`, 'http', ['web-1']],
    ['web-v2.shop.svc.cluster.local:80@eu/a', 'http', ['web-v2-1']],
    ['raw.shop.svc.cluster.local:9000@eu/a as http', 'http', ['raw-1']],
  ], 'each backend table once, with its endpoints');
  t.same(cart!.requestHeaders, undefined);
  t.same(cart!.retry, undefined);
  t.equal(cart!.requestTimeoutMs, 0);
  t.equal(cart!.backendTimeoutMs, 0);
  t.same(cart!.mirrors, []);
  t.equal(cart!.redirect, undefined);
  t.equal(cart!.fault, undefined);

  const raw = compileBackendService(s, s.resolveService('raw.shop', 9000)!, '', 'grpc');
  t.equal(raw.table.protocol, 'grpc');
  t.equal(raw.as, 'grpc');
  t.equal(raw.table.key, 'raw.shop.svc.cluster.local:9000@ as grpc');
  t.equal(compileBackendService(s, web80, '', 'grpc').table.protocol, 'http', 'an HTTP backend port keeps its own protocol');
});

t.test('filters: header modifiers (rule and backend), mirrors, redirect, rewrite; timeouts and retry', async (t) => {
  const s = state();
  const mod = { set: [{ name: 'x-set', value: '1' }], add: [{ name: 'x-add', value: '2' }], remove: ['x-gone'] };
  const filters: HTTPRouteFilter[] = [
    { type: 'RequestHeaderModifier', requestHeaderModifier: mod },
    { type: 'ResponseHeaderModifier', responseHeaderModifier: { set: [], add: [{ name: 'x-served-by', value: 'ambit' }], remove: [] } },
    { type: 'RequestMirror', requestMirror: { backendRef: backend('shop', 'web-v2', 80), percent: 12.5 } },
    { type: 'RequestMirror', requestMirror: { backendRef: backend('shop', 'gone', 80), percent: 100 } },
    { type: 'URLRewrite', urlRewrite: { hostname: 'web.internal', path: { type: 'ReplacePrefixMatch', replacePrefixMatch: '/v2' } } },
  ];
  const r = httpRoute('shop', 'f', [parent('shop', 'web', 80)], [
    rule({
      filters,
      backendRefs: [backend('shop', 'web', 80, 1, [{ type: 'RequestHeaderModifier', requestHeaderModifier: { set: [{ name: 'x-backend', value: 'v1' }], add: [], remove: [] } }])],
      timeouts: { requestMs: 200, backendRequestMs: 50 },
      retry: { codes: [503, 502], attempts: 3, backoffMs: 25 },
    }),
    rule({
      matches: [match({ path: { type: 'PathPrefix', value: '/old' } })],
      filters: [{ type: 'RequestRedirect', requestRedirect: { scheme: 'https', hostname: 'new.example', path: { type: 'ReplaceFullPath', replaceFullPath: '/new' }, port: 8443, statusCode: 301 } }],
    }),
    rule({
      matches: [match({ path: { type: 'PathPrefix', value: '/older' } })],
      filters: [{ type: 'RequestRedirect', requestRedirect: { statusCode: 302 } }],
    }),
  ]);
  const c = compileHttpRoutes(s, s.resolveService('web.shop', 80)!, '', 'shop', inputs([r]))!;
  const [older, old, main] = c.table.rules;
  t.same(main!.requestHeaders, mod);
  t.same(main!.responseHeaders, { set: [], add: [{ name: 'x-served-by', value: 'ambit' }], remove: [] });
  t.same(main!.backends[0]!.requestHeaders, { set: [{ name: 'x-backend', value: 'v1' }], add: [], remove: [] });
  t.equal(main!.backends[0]!.responseHeaders, undefined);
  t.same(main!.mirrors, [{ table: 'web-v2.shop.svc.cluster.local:80@', millionths: 125_000 }], 'percent in millionths; a mirror that does not resolve is dropped');
  t.ok(c.services.some((b) => b.table.key === 'web-v2.shop.svc.cluster.local:80@'), 'the mirror\'s table is compiled to be sent first');
  t.same(main!.rewrite, { hostname: 'web.internal', path: { type: PathModifierType.PATH_MODIFIER_PREFIX, value: '/v2' } });
  t.equal(main!.requestTimeoutMs, 200);
  t.equal(main!.backendTimeoutMs, 50);
  t.same(main!.retry, { attempts: 3, backoffMs: 25, codes: [503, 502], grpcCodes: [] });
  t.same(old!.redirect, { scheme: 'https', hostname: 'new.example', path: { type: PathModifierType.PATH_MODIFIER_FULL, value: '/new' }, port: 8443, status: 301 });
  t.same(older!.redirect, { scheme: '', hostname: '', path: undefined, port: 0, status: 302 }, 'unset parts keep the request\'s');
  t.equal(main!.matches.length, 1);
  t.same(main!.matches[0]!.path, { type: MatchType.MATCH_TYPE_PREFIX, value: '/' });

  t.equal(millionths(100), 1_000_000);
  t.equal(millionths(0.0001), 1);
  t.equal(millionths(33.3333), 333_333);
});

t.test('FaultInjection by ExtensionRef in the route\'s namespace; a missing one makes the rule answer 500 (no backends)', async (t) => {
  const s = state();
  const ext = (name: string): HTTPRouteFilter => ({ type: 'ExtensionRef', extensionRef: { group: 'ambit.dev', kind: 'FaultInjection', name } });
  const r = httpRoute('shop', 'faulty', [parent('shop', 'web', 80)], [
    rule({ matches: [match({ path: { type: 'Exact', value: '/both' } })], filters: [ext('both')], backendRefs: [backend('shop', 'web', 80)] }),
    rule({ matches: [match({ path: { type: 'Exact', value: '/grpc' } })], filters: [ext('grpc')], backendRefs: [backend('shop', 'web', 80)] }),
    rule({ matches: [match({ path: { type: 'Exact', value: '/missing' } })], filters: [ext('elsewhere')], backendRefs: [backend('shop', 'web', 80)] }),
  ]);
  const faults = [
    fault('shop', 'both', { delay: { fixedDelayMs: 150, percentage: 50 }, abort: { httpStatus: 503, percentage: 10 } }),
    fault('shop', 'grpc', { abort: { httpStatus: 500, grpcStatus: 14, percentage: 100 } }),
    fault('other', 'elsewhere', { abort: { httpStatus: 500, percentage: 100 } }),
  ];
  const c = compileHttpRoutes(s, s.resolveService('web.shop', 80)!, '', 'shop', inputs([r], faults))!;
  const byPath = new Map(c.table.rules.map((x) => [x.matches[0]!.path!.value, x]));
  t.same(byPath.get('/both')!.fault, { delayMs: 150, delayMillionths: 500_000, abortStatus: 503, abortGrpcStatus: 0, abortGrpc: false, abortMillionths: 100_000 });
  t.equal(byPath.get('/both')!.backends.length, 1);
  t.same(byPath.get('/grpc')!.fault, { delayMs: 0, delayMillionths: 0, abortStatus: 500, abortGrpcStatus: 14, abortGrpc: true, abortMillionths: 1_000_000 });
  t.equal(byPath.get('/missing')!.fault, undefined);
  t.same(byPath.get('/missing')!.backends, [], 'a FaultInjection of another namespace is not found: the rule has no backends (500)');
});

t.test('GRPCRoute: method matches as paths, headers, gRPC retry codes; every call when it has no match', async (t) => {
  const s = state();
  const g = grpcRoute('shop', 'calls', [parent('shop', 'web', 81)], [
    grpcRule({
      matches: [grpcMatch({ method: { type: 'Exact', service: 'shop.Cart', method: 'Add' }, headers: [{ type: 'Exact', name: 'x-canary', value: '1' }] })],
      backendRefs: [grpcBackend('shop', 'web-v2', 80)],
      retry: { codes: [14, 4], attempts: 2, backoffMs: 10 },
    }),
    grpcRule({ backendRefs: [grpcBackend('shop', 'web', 81)] }),
  ]);
  const c = compileHttpRoutes(s, s.resolveService('web.shop', 81)!, '', 'shop', inputs([g]))!;
  const [add, all] = c.table.rules;
  t.equal(add!.route, 'GRPCRoute/shop/calls#0');
  t.same(add!.matches, [{ path: { type: MatchType.MATCH_TYPE_EXACT, value: '/shop.Cart/Add' }, headers: [{ name: 'x-canary', type: MatchType.MATCH_TYPE_EXACT, value: '1' }], query: [], method: '' }]);
  t.same(add!.retry, { attempts: 2, backoffMs: 10, codes: [], grpcCodes: [14, 4] });
  t.same(all!.matches, [], 'no match: every call');
  t.same(all!.backends.map((b) => b.table), [`${WEB}:81@`]);
  t.same(c.services.map((b) => [b.table.key, b.table.protocol]), [['web-v2.shop.svc.cluster.local:80@', 'http'], [`${WEB}:81@`, 'grpc']]);
});

t.test('a consumer route gives its namespace a table of its own', async (t) => {
  const s = state();
  const web80 = s.resolveService('web.shop', 80)!;
  const producer = httpRoute('shop', 'p', [parent('shop', 'web')], [rule({ backendRefs: [backend('shop', 'web', 80)] })]);
  const consumer = httpRoute('client-a', 'c', [parent('shop', 'web')], [rule({ backendRefs: [backend('shop', 'web-v2', 80)] })]);
  const a = compileHttpRoutes(s, web80, '', 'client-a', inputs([producer, consumer]))!;
  const b = compileHttpRoutes(s, web80, '', 'client-b', inputs([producer, consumer]))!;
  t.equal(a.table.key, `${WEB}:80@ for client-a`);
  t.same(a.table.rules.map((r) => r.route), ['HTTPRoute/client-a/c#0']);
  t.same(a.table.rules[0]!.backends.map((x) => x.table), [''], 'a consumer route\'s backend in the Service\'s namespace is another namespace: not permitted without a grant');
  t.same(b.table.rules.map((r) => r.route), ['HTTPRoute/shop/p#0']);
  const granted = compileHttpRoutes(s, web80, '', 'client-a', inputs([producer, consumer], [], [grant('shop', 'g', 'client-a', 'HTTPRoute', { name: 'web-v2' })]))!;
  t.same(granted.table.rules[0]!.backends.map((x) => x.table), ['web-v2.shop.svc.cluster.local:80@'], 'a ReferenceGrant in shop from client-a\'s HTTPRoutes: permitted');
  t.same(granted.services.map((x) => x.table.key), ['web-v2.shop.svc.cluster.local:80@'], 'and its service table compiled');
  const wrongKind = compileHttpRoutes(s, web80, '', 'client-a', inputs([producer, consumer], [], [grant('shop', 'g', 'client-a', 'GRPCRoute')]))!;
  t.same(wrongKind.table.rules[0]!.backends.map((x) => x.table), [''], 'a grant for GRPCRoutes does not cover an HTTPRoute');
  const mirrored = httpRoute('client-a', 'm', [parent('shop', 'web')], [rule({
    backendRefs: [backend('client-a', 'nothing', 80)], filters: [{ type: 'RequestMirror', requestMirror: { backendRef: { group: '', kind: 'Service', namespace: 'shop', name: 'web-v2', port: 80 }, percent: 100 } }],
  })]);
  t.same(compileHttpRoutes(s, web80, '', 'client-a', inputs([mirrored]))!.table.rules[0]!.mirrors, [], 'a mirror to another namespace without a grant: not mirrored');
  t.same(compileHttpRoutes(s, web80, '', 'client-a', inputs([mirrored], [], [grant('shop', 'g', 'client-a')]))!.table.rules[0]!.mirrors.map((m) => m.table), ['web-v2.shop.svc.cluster.local:80@'], 'with one: mirrored');
});
