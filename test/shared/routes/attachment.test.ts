/**
 * Which route rules decide a client's requests to a service port
 * (shared/routes/attachment.ts), modeled on the Gateway API conformance
 * suite's mesh cases: producer routes for every client, a consumer route
 * replacing them for its own namespace only, port-specific parentRefs,
 * the standard's precedence across routes, and GRPCRoute with HTTPRoute
 * on one port.
 */
import t from 'tap';
import { attachesTo, rulesFor, routesFor } from '../../../shared/routes/attachment.ts';
import { escapeRegex, grpcPathMatch } from '../../../shared/routes/grpc-method.ts';
import { backend, grpcMatch, grpcRoute, grpcRule, httpRoute, match, parent, rule, service } from './route-fixtures.ts';

const web = service('shop', 'web', [{ port: 80 }, { port: 81, appProtocol: 'grpc' }, { port: 82, appProtocol: 'tcp' }]);
const port = (n: number) => web.spec.ports.find((p) => p.port === n)!;
const ids = (rs: ReturnType<typeof rulesFor>) => rs.map((r) => r.id);

t.test('a producer route applies to every client; a consumer route replaces it for its own namespace only (MeshConsumerRoute)', async (t) => {
  const producer = httpRoute('shop', 'web-split', [parent('shop', 'web')], [rule({ backendRefs: [backend('shop', 'web', 80)] })]);
  const consumer = httpRoute('client-a', 'web-for-a', [parent('shop', 'web', 80)], [rule()]);
  const other = httpRoute('client-a', 'other', [parent('shop', 'api')], [rule()]);
  const routes = [producer, consumer, other];
  t.same(ids(rulesFor(routes, web, port(80), 'client-a')), ['HTTPRoute/client-a/web-for-a#0'], 'client-a sees its consumer route only');
  t.same(ids(rulesFor(routes, web, port(80), 'client-b')), ['HTTPRoute/shop/web-split#0'], 'client-b sees the producer route');
  t.same(ids(rulesFor(routes, web, port(80), 'shop')), ['HTTPRoute/shop/web-split#0'], 'the Service\'s own namespace sees the producer route');
  t.same(ids(rulesFor(routes, web, port(81), 'client-a')), [], 'the consumer route replaces the producer routes on every port of the Service, even one it leaves unrouted');
  t.same(ids(rulesFor(routes, web, port(81), 'client-b')), ['HTTPRoute/shop/web-split#0']);
  t.same(ids(rulesFor([producer, other], web, port(80), 'client-a')), ['HTTPRoute/shop/web-split#0'], 'a consumer route of another Service changes nothing');
  const stray = httpRoute('client-c', 'nowhere', [parent('shop', 'web', 9999)], [rule()]);
  t.same(ids(rulesFor([producer, stray], web, port(80), 'client-c')), ['HTTPRoute/shop/web-split#0'], 'a consumer parentRef naming a port the Service lacks attaches nowhere, and hides nothing');
  const onTcp = httpRoute('client-d', 'tcp-only', [parent('shop', 'web', 82)], [rule()]);
  t.same(ids(rulesFor([producer, onTcp], web, port(80), 'client-d')), ['HTTPRoute/shop/web-split#0'], 'a consumer route on a TCP port only is not accepted, and hides nothing');
});

t.test('a parentRef with a port attaches to that port only; without, to every HTTP port; a TCP port has no routes', async (t) => {
  const only80 = httpRoute('shop', 'only-80', [parent('shop', 'web', 80)], [rule()]);
  const all = httpRoute('shop', 'all', [parent('shop', 'web')], [rule()]);
  const elsewhere = httpRoute('shop', 'elsewhere', [parent('other', 'web')], [rule()]);
  const routes = [only80, all, elsewhere];
  t.same(routesFor(routes, web, port(80), 'x').map((r) => r.metadata.name), ['only-80', 'all']);
  t.same(routesFor(routes, web, port(81), 'x').map((r) => r.metadata.name), ['all']);
  t.same(routesFor(routes, web, port(82), 'x'), [], 'appProtocol tcp: no routes');
  t.ok(attachesTo(only80, web, 80));
  t.notOk(attachesTo(only80, web, 81));
  t.ok(attachesTo(only80, web), 'attached to some port of the Service');
  t.notOk(attachesTo(httpRoute('shop', 'tcp', [parent('shop', 'web', 82)], [rule()]), web), 'attached to no HTTP port');
  t.notOk(attachesTo(elsewhere, web), 'a Service of the same name in another namespace is another Service');
  const producerElsewhere = httpRoute('other', 'p', [parent('shop', 'web')], [rule()]);
  t.same(routesFor([producerElsewhere], web, port(80), 'shop'), [], 'a route in a third namespace is a consumer route: not for the Service\'s own clients');
});

t.test('precedence: Exact, longest PathPrefix, RegularExpression, then method, headers, query; ties by namespace/name then rule index', async (t) => {
  const hdr = (n: number) => Array.from({ length: n }, (_, i) => ({ type: 'Exact' as const, name: `h${i}`, value: 'v' }));
  const a = httpRoute('shop', 'a', [parent('shop', 'web')], [
    rule({ matches: [match()] }), // a#0: prefix "/"
    rule({ matches: [match({ path: { type: 'RegularExpression', value: '/api/v[0-9]+/items/.*' } })] }), // a#1
    rule({ matches: [match({ path: { type: 'PathPrefix', value: '/api' }, method: 'GET' })] }), // a#2
    rule({ matches: [match({ path: { type: 'PathPrefix', value: '/api' }, headers: hdr(2) })] }), // a#3
  ]);
  const b = httpRoute('shop', 'b', [parent('shop', 'web')], [
    rule({ matches: [match({ path: { type: 'PathPrefix', value: '/api' }, headers: hdr(1), queryParams: [{ type: 'Exact', name: 'q', value: '1' }] })] }), // b#0
    rule({ matches: [match({ path: { type: 'Exact', value: '/' } })] }), // b#1
    rule({ matches: [match({ path: { type: 'PathPrefix', value: '/api/v1' } })] }), // b#2
    rule({ matches: [match({ path: { type: 'PathPrefix', value: '/api' }, headers: hdr(1) })] }), // b#3
    rule({ matches: [match({ path: { type: 'PathPrefix', value: '/api' }, headers: hdr(1) })] }), // b#4: b#3's twin, later
  ]);
  const c = httpRoute('aaa', 'z', [parent('shop', 'web')], [rule()]); // a consumer route: not for these clients
  const order = ids(rulesFor([b, a, c], web, port(80), 'shop'));
  t.same(order, [
    'HTTPRoute/shop/b#1', // Exact
    'HTTPRoute/shop/b#2', // longest prefix
    'HTTPRoute/shop/a#2', // "/api" with a method
    'HTTPRoute/shop/a#3', // "/api" with 2 headers
    'HTTPRoute/shop/b#0', // 1 header and a query match
    'HTTPRoute/shop/b#3', // 1 header
    'HTTPRoute/shop/b#4', // same, later rule
    'HTTPRoute/shop/a#0', // prefix "/"
    'HTTPRoute/shop/a#1', // a regular expression, however long
  ]);
  const twinA = httpRoute('shop', 'twin-a', [parent('shop', 'web')], [rule()]);
  const twinB = httpRoute('shop', 'twin-b', [parent('shop', 'web')], [rule()]);
  const earlierNs = httpRoute('alpha', 'twin-z', [parent('shop', 'web')], [rule()]);
  t.same(ids(rulesFor([twinB, twinA], web, port(80), 'shop')), ['HTTPRoute/shop/twin-a#0', 'HTTPRoute/shop/twin-b#0'], 'equal matches: the route first by namespace/name');
  t.same(ids(rulesFor([earlierNs, twinA], web, port(80), 'alpha')), ['HTTPRoute/alpha/twin-z#0'], 'consumer routes alone for their namespace');
});

t.test('a rule\'s matches are ranked each on its own; a rule without matches matches every request', async (t) => {
  const r = httpRoute('shop', 'multi', [parent('shop', 'web')], [
    rule({ matches: [match(), match({ path: { type: 'Exact', value: '/login' } })] }),
    rule({ matches: [match({ path: { type: 'PathPrefix', value: '/static' } })] }),
  ]);
  const rules = rulesFor([r], web, port(80), 'x');
  t.same(rules.map((e) => [e.id, e.path.value]), [['HTTPRoute/shop/multi#0', '/login'], ['HTTPRoute/shop/multi#1', '/static'], ['HTTPRoute/shop/multi#0', '/']]);
  t.equal(rules[0]!.rule, r.spec.rules[0], 'each entry carries its rule');
  const none = httpRoute('shop', 'none', [parent('shop', 'web')], [rule({ matches: [] })]);
  const [only] = rulesFor([none], web, port(80), 'x');
  t.equal(only?.match, undefined);
  t.same(only?.path, { type: 'PathPrefix', value: '/' });
});

t.test('GRPCRoute and HTTPRoute on one port: one order, a gRPC method match ranked as the path it matches', async (t) => {
  const grpc = grpcRoute('shop', 'calls', [parent('shop', 'web', 81)], [
    grpcRule({ matches: [grpcMatch({ method: { type: 'Exact', method: 'Get' } })] }), // regex over any service
    grpcRule({ matches: [grpcMatch({ method: { type: 'Exact', service: 'shop.Cart' } })] }), // prefix "/shop.Cart"
    grpcRule({ matches: [grpcMatch({ method: { type: 'Exact', service: 'shop.Cart', method: 'Add' } })] }), // exact
    grpcRule(), // every call
  ]);
  const http = httpRoute('shop', 'calls', [parent('shop', 'web', 81)], [rule({ matches: [match({ path: { type: 'PathPrefix', value: '/shop.Cart' } })] })]);
  t.same(ids(rulesFor([grpc, http], web, port(81), 'x')), [
    'GRPCRoute/shop/calls#2',
    'HTTPRoute/shop/calls#0', // same path as GRPCRoute#1, same name: HTTPRoute first
    'GRPCRoute/shop/calls#1',
    'GRPCRoute/shop/calls#3',
    'GRPCRoute/shop/calls#0',
  ]);
  t.same(ids(rulesFor([grpc], web, port(80), 'x')), [], 'attached to port 81 only');
});

t.test('a gRPC method match as a path match', async (t) => {
  t.same(grpcPathMatch(undefined), { type: 'PathPrefix', value: '/' });
  t.same(grpcPathMatch({ type: 'Exact' }), { type: 'PathPrefix', value: '/' });
  t.same(grpcPathMatch({ type: 'Exact', service: 'pkg.Svc', method: 'Get' }), { type: 'Exact', value: '/pkg.Svc/Get' });
  t.same(grpcPathMatch({ type: 'Exact', service: 'pkg.Svc' }), { type: 'PathPrefix', value: '/pkg.Svc' });
  t.same(grpcPathMatch({ type: 'Exact', method: 'Get' }), { type: 'RegularExpression', value: '/[^/]+/Get' });
  t.same(grpcPathMatch({ type: 'RegularExpression', service: 'pkg\\..*', method: 'Get|Put' }), { type: 'RegularExpression', value: '/(?:pkg\\..*)/(?:Get|Put)' });
  t.same(grpcPathMatch({ type: 'RegularExpression', method: 'List.*' }), { type: 'RegularExpression', value: '/[^/]+/(?:List.*)' });
  t.equal(escapeRegex('a.b+c*(d)[e]{f}^$|?\\#&-~'), 'a\\.b\\+c\\*\\(d\\)\\[e\\]\\{f\\}\\^\\$\\|\\?\\\\\\#\\&\\-\\~');
  const re = new RegExp(`^${grpcPathMatch({ type: 'Exact', method: 'Get' }).value}$`);
  t.ok(re.test('/pkg.Svc/Get'));
  t.notOk(re.test('/pkg.Svc/GetAll'));
  t.notOk(re.test('/a/b/Get'));
});
