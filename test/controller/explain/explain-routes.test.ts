/**
 * explain's routes (controller/explain/explain-routes.ts): the rules that
 * decide a source's requests to a service's HTTP port, in the order the
 * agents try them, with producer/consumer choice, unresolved backends and
 * what each rule does; carried across the Admin API and printed by ambitctl.
 */
import t from 'tap';
import { Explainer, type ExplainQuery } from '../../../controller/explain/explain.ts';
import { explainRoutes } from '../../../controller/explain/explain-routes.ts';
import { explanationFromWire, explanationToWire } from '../../../controller/api/explain-wire.ts';
import { explanationText } from '../../../controller/cli/commands/explain.ts';
import { ExplainResponse } from '../../../shared/proto/gen/ambit.ts';
import type { Resource, Workload } from '../../../shared/resources/types.ts';
import { backend, fault, grant, grpcMatch, grpcRoute, grpcRule, httpRoute, match, parent, rule, service } from '../../shared/routes/route-fixtures.ts';

function wl(name: string, ns: string, app: string, address: string): Workload {
  return { kind: 'Workload', metadata: { name, namespace: ns, labels: { app }, revision: 1 }, spec: { serviceAccount: app, node: 'node-a', address, ports: [], weight: 1, locality: '', healthy: true } };
}

const WEB = service('shop', 'web', [{ port: 80 }, { port: 81, appProtocol: 'grpc' }, { port: 82, appProtocol: 'tcp' }]);
const SPLIT = httpRoute('shop', 'split', [parent('shop', 'web')], [
  rule({ matches: [match({ path: { type: 'PathPrefix', value: '/api' }, method: 'GET', headers: [{ type: 'Exact', name: 'x-user', value: 'beta' }] })], backendRefs: [backend('shop', 'web', 80, 90), backend('shop', 'gone', 80, 10)], timeouts: { requestMs: 200 }, retry: { codes: [503], attempts: 3, backoffMs: 25 } }),
  rule({
    matches: [match({ path: { type: 'Exact', value: '/old' } })],
    filters: [{ type: 'RequestRedirect', requestRedirect: { scheme: 'https', statusCode: 301 } }],
  }),
  rule({ filters: [{ type: 'ExtensionRef', extensionRef: { group: 'ambit.dev', kind: 'FaultInjection', name: 'flaky' } }], backendRefs: [backend('other', 'web', 80)] }),
]);
const CALLS = grpcRoute('shop', 'calls', [parent('shop', 'web', 81)], [grpcRule({ matches: [grpcMatch({ method: { type: 'Exact', service: 'shop.Cart', method: 'Add' } })], backendRefs: [{ ...backend('shop', 'web', 81), filters: [] }] })]);
const CONSUMER = httpRoute('client-a', 'mine', [parent('shop', 'web', 80)], [rule({ backendRefs: [backend('shop', 'web', 80)] })]);
const RESOURCES: Resource[] = [WEB, SPLIT, CALLS, CONSUMER, wl('client', 'shop', 'client', '10.0.0.1'), wl('client-a', 'client-a', 'client', '10.0.0.2'), wl('web-1', 'shop', 'web', '10.0.1.1')];

const ask = (q: ExplainQuery, resources = RESOURCES) => new Explainer(() => ({ revision: 3, trustDomain: 'cluster.local', resources, nodeAddress: () => '127.0.0.3:15008' })).explain(q);
const from = (namespace: string, name: string): ExplainQuery['from'] => ({ kind: 'workload', namespace, name });

t.test('producer routes, in precedence order, with matches, backends and actions', async (t) => {
  const x = ask({ from: from('shop', 'client'), host: 'web.shop', port: 80 });
  t.equal(x.routes?.kind, 'producer');
  t.match(x.routes?.summary, /producer routes of shop\/web: HTTPRoute\/shop\/split; a request no rule matches is answered 404/);
  t.same(x.routes?.rules, [
    { rule: 'HTTPRoute/shop/split#1', match: 'Exact /old', backends: [], actions: ['redirect 301 scheme https'] },
    {
      rule: 'HTTPRoute/shop/split#0', match: 'PathPrefix /api, method GET, header x-user = beta',
      backends: [{ service: 'web.shop:80', weight: 90, unresolved: '' }, { service: 'gone.shop:80', weight: 10, unresolved: 'BackendNotFound' }],
      actions: ['timeout 200ms', 'retry up to 3 on 503'],
    },
    { rule: 'HTTPRoute/shop/split#2', match: 'PathPrefix /', backends: [{ service: 'web.other:80', weight: 1, unresolved: 'RefNotPermitted' }], actions: ['FaultInjection shop/flaky (not found: every request answered 500)'] },
  ]);
  const withFault = ask({ from: from('shop', 'client'), host: 'web.shop', port: 80 }, [...RESOURCES, fault('shop', 'flaky', { abort: { httpStatus: 503, percentage: 5 } })]);
  t.same(withFault.routes?.rules[2]?.actions, ['FaultInjection shop/flaky']);
  const grpc = ask({ from: from('shop', 'client'), host: 'web.shop', port: 81 });
  t.same(grpc.routes?.rules.map((r) => [r.rule, r.match]), [
    ['GRPCRoute/shop/calls#0', 'gRPC shop.Cart/Add'],
    ['HTTPRoute/shop/split#1', 'Exact /old'],
    ['HTTPRoute/shop/split#0', 'PathPrefix /api, method GET, header x-user = beta'],
    ['HTTPRoute/shop/split#2', 'PathPrefix /'],
  ], 'port 81: the GRPCRoute of that port and the HTTPRoute of every port, in one order');
});

t.test('a consumer route for its namespace only; no route; TCP ports and sources outside the mesh have none', async (t) => {
  const a = ask({ from: from('client-a', 'client-a'), host: 'web.shop', port: 80 });
  t.equal(a.routes?.kind, 'consumer');
  t.same(a.routes?.rules.map((r) => r.rule), ['HTTPRoute/client-a/mine#0']);
  t.same(a.routes?.rules[0]?.backends, [{ service: 'web.shop:80', weight: 1, unresolved: 'RefNotPermitted' }]);
  const granted = ask({ from: from('client-a', 'client-a'), host: 'web.shop', port: 80 }, [...RESOURCES, grant('shop', 'consumers', 'client-a', 'HTTPRoute', { name: 'web' })]);
  t.same(granted.routes?.rules[0]?.backends, [{ service: 'web.shop:80', weight: 1, unresolved: '' }], 'a ReferenceGrant in shop from client-a\'s HTTPRoutes: resolved');
  const elsewhere = ask({ from: from('client-a', 'client-a'), host: 'web.shop', port: 80 }, [...RESOURCES, grant('client-a', 'self', 'client-a')]);
  t.same(elsewhere.routes?.rules[0]?.backends, [{ service: 'web.shop:80', weight: 1, unresolved: 'RefNotPermitted' }], 'a grant in the route\'s own namespace: still not permitted');
  const a81 = ask({ from: from('client-a', 'client-a'), host: 'web.shop', port: 81 });
  t.equal(a81.routes?.kind, 'none');
  t.match(a81.routes?.summary, /namespace client-a's routes of shop\/web replace its producer routes and leave this port unrouted/);
  t.equal(ask({ from: from('shop', 'client'), host: 'web.shop', port: 80 }, [WEB, wl('client', 'shop', 'client', '10.0.0.1')]).routes?.kind, 'none');
  t.equal(ask({ from: from('shop', 'client'), host: 'web.shop', port: 82 }).routes, null, 'tcp port');
  t.equal(ask({ from: { kind: 'address', address: '192.0.2.9' }, host: 'web.shop', port: 80 }).routes, null, 'no agent routes an outside source\'s requests');
  t.equal(ask({ from: { kind: 'identity', identity: 'spiffe://cluster.local/ns/client-a/sa/other' }, host: 'web.shop', port: 80 }).routes?.kind, 'consumer', 'an identity\'s namespace chooses');
  t.equal(ask({ from: from('shop', 'client'), host: '10.0.1.1', port: 80 }).routes, null, 'a workload address: no service, no routes');
  t.equal(explainRoutes(RESOURCES, WEB, WEB.spec.ports[2]!, 'shop'), null);
});

t.test('across the Admin API and in ambitctl\'s text', async (t) => {
  const x = ask({ from: from('shop', 'client'), host: 'web.shop', port: 80 });
  const back = explanationFromWire(ExplainResponse.decode(ExplainResponse.encode(explanationToWire(x)).finish()));
  t.same(back.routes, x.routes);
  t.equal(explanationFromWire(ExplainResponse.decode(ExplainResponse.encode(explanationToWire(ask({ from: from('shop', 'client'), host: 'web.shop', port: 82 }))).finish())).routes, null);
  const text = explanationText(x);
  t.match(text, /routes {7}producer routes of shop\/web/);
  t.match(text, /RULE\s+MATCH\s+BACKENDS\s+ALSO/);
  t.match(text, /HTTPRoute\/shop\/split#0\s+PathPrefix \/api, method GET, header x-user = beta\s+web\.shop:80 weight 90, gone\.shop:80 weight 10 \(BackendNotFound: 500\)\s+timeout 200ms; retry up to 3 on 503/);
  t.match(text, /HTTPRoute\/shop\/split#1\s+Exact \/old\s+-\s+redirect 301 scheme https/);
});
