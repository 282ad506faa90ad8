import t from 'tap';
import { Explainer, type ExplainQuery, type ExplainView, type Explanation } from '../../../controller/explain/explain.ts';
import { explainQuery, explainRequestFromWire, explainRequestToWire, explanationFromWire, explanationToWire } from '../../../controller/api/explain-wire.ts';
import { ExplainRequest, ExplainResponse } from '../../../shared/proto/gen/ambit.ts';
import { isAmbitError } from '../../../shared/errors.ts';
import type { AuthorizationPolicy, PolicySource, Resource, Service, Workload } from '../../../shared/resources/types.ts';

const TD = 'cluster.local';

function wl(name: string, ns: string, node: string, address: string, o: { labels?: Record<string, string>; sa?: string; ports?: number[]; weight?: number; healthy?: boolean } = {}): Workload {
  return {
    kind: 'Workload',
    metadata: { name, namespace: ns, labels: o.labels ?? { app: name }, revision: 1 },
    spec: { serviceAccount: o.sa ?? name, node, address, ports: o.ports ?? [], weight: o.weight ?? 1, locality: '', healthy: o.healthy ?? true },
  };
}

function src(f: Partial<PolicySource>): PolicySource {
  return { principals: [], notPrincipals: [], namespaces: [], notNamespaces: [], serviceAccounts: [], notServiceAccounts: [], ipBlocks: [], notIpBlocks: [], ...f };
}

function policy(name: string, action: 'ALLOW' | 'DENY', selector: Record<string, string>, rules: PolicySource[][], ns = 'demo'): AuthorizationPolicy {
  return { kind: 'AuthorizationPolicy', metadata: { name, namespace: ns, labels: {}, revision: 1 }, spec: { action, selector, rules: rules.map((from) => ({ from, to: [] })) } };
}

const CLIENT = wl('client', 'demo', 'node-a', '10.0.0.1');
const INTRUDER = wl('intruder', 'demo', 'node-a', '10.0.0.2');
const SPY = wl('spy', 'demo', 'node-a', '10.0.0.3');
const WEB1 = wl('web-1', 'demo', 'node-b', '10.0.1.1', { labels: { app: 'web' }, sa: 'web', ports: [8080], weight: 3 });
const WEB2 = wl('web-2', 'demo', 'node-c', '10.0.1.2', { labels: { app: 'web' }, sa: 'web', ports: [8080], healthy: false });
const DB = wl('db', 'demo', 'node-b', '10.0.2.1', { ports: [5432] });
const WEB: Service = {
  kind: 'Service',
  metadata: { name: 'web', namespace: 'demo', labels: {}, revision: 1 },
  spec: { addresses: ['10.96.0.10'], ports: [{ name: 'http', port: 80, targetPort: 8080, appProtocol: 'http' }], selector: { app: 'web' } },
};
const EMPTY: Service = { kind: 'Service', metadata: { name: 'empty', namespace: 'demo', labels: {}, revision: 1 }, spec: { addresses: [], ports: [{ name: '', port: 80, targetPort: 80, appProtocol: 'tcp' }], selector: { app: 'nothing' } } };
// web admits the client (rule 1) and the spy's service account is denied by rule 1 of a DENY.
const ALLOW_CLIENT = policy('web-allow', 'ALLOW', { app: 'web' }, [[src({ namespaces: ['prod'] })], [src({ principals: [`${TD}/ns/demo/sa/client`] })]]);
const DENY_SPY = policy('no-spy', 'DENY', { app: 'web' }, [[src({ namespaces: ['evil'] })], [src({ serviceAccounts: ['demo/spy'] })]]);
const DB_FROM_WEB = policy('db-from-web', 'ALLOW', { app: 'db' }, [[src({ serviceAccounts: ['demo/web'] })]]);

const BASE: Resource[] = [CLIENT, INTRUDER, SPY, WEB1, WEB2, DB, WEB, EMPTY, ALLOW_CLIENT, DENY_SPY, DB_FROM_WEB];
const NODES: Record<string, string> = { 'node-a': '127.0.0.2:15008', 'node-b': '127.0.0.3:15008' };

function explainer(resources: Resource[] = BASE, revision = 7): { e: Explainer; view: { current: ExplainView } } {
  const view = { current: { revision, trustDomain: TD, resources, nodeAddress: (n: string) => NODES[n] } };
  return { e: new Explainer(() => view.current), view };
}

const from = (ns: string, name: string): ExplainQuery['from'] => ({ kind: 'workload', namespace: ns, name });
const ask = (q: ExplainQuery, resources?: Resource[]): Explanation => explainer(resources).e.explain(q);

t.test('allowed: each endpoint of a service by name, with the ALLOW and rule that decide', async (t) => {
  const x = ask({ from: from('demo', 'client'), host: 'web.demo', port: 80 });
  t.equal(x.error, null);
  t.same(x.source, { kind: 'workload', workload: 'demo/client', identity: `spiffe://${TD}/ns/demo/sa/client`, node: 'node-a', address: '10.0.0.1', peerAuthentication: 'mutual_tls' });
  t.match(x.destination, { kind: 'service', host: 'web.demo', port: 80, service: 'web.demo.svc.cluster.local', serviceAddresses: ['10.96.0.10'], servicePort: { name: 'http', port: 80, targetPort: 8080, appProtocol: 'http' } });
  t.same(x.endpoints.map((p) => [p.workload, p.address, p.port, p.node, p.nodeAddress, p.weight, p.healthy, p.serving]), [
    ['demo/web-1', '10.0.1.1', 8080, 'node-b', '127.0.0.3:15008', 3, true, true],
    ['demo/web-2', '10.0.1.2', 8080, 'node-c', '', 1, false, true],
  ], 'both endpoints, their nodes (node-c has no known agent) and weights');
  for (const p of x.endpoints) {
    t.same(p.verdict, {
      allowed: true, reason: 'allowed_by_policy', policy: 'demo/web-allow', rule: 1, allowPolicies: [], summary: 'allowed: ALLOW demo/web-allow rule 1 matches',
      // web's port is http: requests are authorized too, and no policy here tests them.
      request: { outcome: 'all_allowed', reason: '', policy: '', denyPolicies: [], allowPolicies: [], allowRequired: false, summary: 'every request allowed (no policy tests methods, paths or hosts here)' },
    }, p.workload);
  }
  t.same(x.query, { from: 'demo/client', to: 'web.demo:80', request: '' });
  t.equal(x.revision, 7);
});

t.test('the service resolves the same by every name the agent accepts and by its VIP', async (t) => {
  const by = (host: string): unknown => ask({ from: from('demo', 'client'), host, port: 80 }).destination?.service;
  for (const host of ['web.demo', 'web.demo.svc', 'web.demo.svc.cluster.local', 'WEB.demo.svc.cluster.local.', '10.96.0.10']) t.equal(by(host), 'web.demo.svc.cluster.local', host);
});

t.test('denied by a DENY: the policy and rule are named', async (t) => {
  const x = ask({ from: from('demo', 'spy'), host: 'web.demo', port: 80 });
  for (const p of x.endpoints) t.same(p.verdict, { allowed: false, reason: 'denied_by_policy', policy: 'demo/no-spy', rule: 1, allowPolicies: [], summary: 'denied: DENY demo/no-spy rule 1 matches', request: null });
});

t.test('denied for a missing ALLOW: the ALLOW policies that need a rule are named', async (t) => {
  const x = ask({ from: from('demo', 'intruder'), host: 'web.demo.svc.cluster.local', port: 80 });
  t.equal(x.endpoints.length, 2);
  for (const p of x.endpoints) {
    t.same(p.verdict, {
      allowed: false, reason: 'no_allow_match', policy: '(no ALLOW matched)', rule: -1, allowPolicies: ['demo/web-allow'],
      summary: `denied: no ALLOW policy matches: ${p.workload} is selected by ALLOW demo/web-allow, one of which needs a rule for this source`,
      request: null,
    });
  }
});

t.test('no policy selects the destination: allowed, no policy named', async (t) => {
  const x = ask({ from: from('demo', 'intruder'), host: '10.0.0.1', port: 9000 });
  t.match(x.destination, { kind: 'workload', service: '', servicePort: null });
  t.same(x.endpoints.map((p) => [p.workload, p.port, p.verdict.allowed, p.verdict.reason, p.verdict.policy, p.verdict.rule]), [['demo/client', 9000, true, 'no_policies', '', -1]]);
});

t.test('a workload address: that workload, whether it serves the port', async (t) => {
  const ok = ask({ from: from('demo', 'web-1'), host: '10.0.2.1', port: 5432 });
  t.match(ok.destination, { kind: 'workload', detail: /workload demo\/db on node node-b/ });
  t.match(ok.endpoints, [{ workload: 'demo/db', serving: true, verdict: { allowed: true, policy: 'demo/db-from-web', rule: 0 } }]);
  const other = ask({ from: from('demo', 'web-1'), host: '10.0.2.1', port: 80 });
  t.match(other.endpoints, [{ workload: 'demo/db', serving: false }]);
  t.match(other.destination, { detail: /does not serve port 80/ });
});

t.test('passthrough: an address or name nothing in the mesh has', async (t) => {
  for (const host of ['192.0.2.9', 'api.github.com']) {
    const x = ask({ from: from('demo', 'client'), host, port: 443 });
    t.equal(x.error, null, host);
    t.match(x.destination, { kind: 'passthrough', host, port: 443, service: '', servicePort: null, detail: /passthrough/ }, host);
    t.same(x.endpoints, [], `${host}: no endpoint, no mesh policy`);
  }
});

t.test('unknown source: a typed answer naming what is missing', async (t) => {
  const cases: [ExplainQuery['from'], RegExp][] = [
    [from('demo', 'nobody'), /no workload demo\/nobody is registered \(namespace demo has client, db, intruder, spy, web-1, web-2\)/],
    [from('ghost', 'x'), /namespace ghost has no workloads/],
    [{ kind: 'identity', identity: 'not-a-spiffe-id' }, /is not a SPIFFE ID/],
    [{ kind: 'identity', identity: 'spiffe://other.td/ns/demo/sa/client' }, /trust domain other\.td; this mesh's is cluster\.local/],
    [{ kind: 'identity', identity: `spiffe://${TD}/ambit/node/node-a` }, /a node identity/],
    [{ kind: 'address', address: 'nope' }, /not an IP address/],
  ];
  for (const [f, message] of cases) {
    const x = ask({ from: f, host: 'web.demo', port: 80 });
    t.match(x, { source: null, destination: null, endpoints: [], error: { code: 'AMBIT_ERR_EXPLAIN_UNKNOWN_SOURCE', message } }, JSON.stringify(f));
  }
});

t.test('unknown destination: a service name or port that does not exist', async (t) => {
  const cases: [string, number, RegExp][] = [
    ['nosuch.demo', 80, /no service nosuch\.demo is registered/],
    ['web.other.svc.cluster.local', 80, /no service web\.other is registered/],
    ['web.demo', 8080, /service web\.demo has no port 8080 \(its ports: 80\)/],
    ['10.96.0.10', 81, /service web\.demo has no port 81/],
  ];
  for (const [host, port, message] of cases) {
    const x = ask({ from: from('demo', 'client'), host, port });
    t.match(x, { source: { workload: 'demo/client' }, destination: null, endpoints: [], error: { code: 'AMBIT_ERR_EXPLAIN_UNKNOWN_DESTINATION', message } }, `${host}:${port}`);
  }
});

t.test('a service that selects nothing: no endpoint, and why the source agent refuses', async (t) => {
  const x = ask({ from: from('demo', 'client'), host: 'empty.demo', port: 80 });
  t.match(x, { error: null, endpoints: [], destination: { kind: 'service', detail: /selects no workload: the source's agent refuses with no_route/ } });
});

t.test('--from-identity: one holder stands for the source; otherwise no verified address', async (t) => {
  const one = ask({ from: { kind: 'identity', identity: `spiffe://${TD}/ns/demo/sa/spy` }, host: 'web.demo', port: 80 });
  t.match(one, { source: { kind: 'workload', workload: 'demo/spy', address: '10.0.0.3' }, endpoints: [{ verdict: { policy: 'demo/no-spy', rule: 1 } }] });
  const none = ask({ from: { kind: 'identity', identity: `spiffe://${TD}/ns/prod/sa/api` }, host: 'web.demo', port: 80 });
  t.same(none.source, { kind: 'identity', workload: '', identity: `spiffe://${TD}/ns/prod/sa/api`, node: '', address: '', peerAuthentication: 'mutual_tls' });
  t.match(none.endpoints, [{ verdict: { allowed: true, policy: 'demo/web-allow', rule: 0 } }, { verdict: { allowed: true } }], 'namespace prod matches rule 0');
});

t.test('--from-address: a workload\'s address is that workload; any other is plaintext from outside the mesh', async (t) => {
  t.match(ask({ from: { kind: 'address', address: '10.0.0.2' }, host: 'web.demo', port: 80 }).source, { kind: 'workload', workload: 'demo/intruder' });
  const ext = ask({ from: { kind: 'address', address: '203.0.113.5' }, host: 'web.demo', port: 80 });
  t.same(ext.source, { kind: 'external', workload: '', identity: '', node: '', address: '203.0.113.5', peerAuthentication: 'plaintext' });
  t.match(ext.endpoints, [{ verdict: { allowed: false, reason: 'denied_by_policy', policy: 'demo/no-spy', rule: 0 } }, {}], 'no identity: a DENY on namespaces fails closed, as on the agent');
  const noDeny = BASE.filter((r) => r !== DENY_SPY);
  t.match(ask({ from: { kind: 'address', address: '203.0.113.5' }, host: 'web.demo', port: 80 }, noDeny).endpoints, [{ verdict: { allowed: false, reason: 'no_allow_match' } }, {}], 'no identity: the ALLOW by principal cannot match');
  const byIp = policy('web-from-lan', 'ALLOW', { app: 'web' }, [[src({ ipBlocks: ['203.0.113.0/24'] })]]);
  t.match(ask({ from: { kind: 'address', address: '203.0.113.5' }, host: 'web.demo', port: 80 }, [...noDeny, byIp]).endpoints, [{ verdict: { allowed: true, policy: 'demo/web-from-lan', rule: 0 } }, {}], 'an ipBlocks ALLOW matches the address');
});

t.test('the Explainer follows the state: a new revision with new policies changes the verdict', async (t) => {
  const { e, view } = explainer();
  const q: ExplainQuery = { from: from('demo', 'intruder'), host: 'web.demo', port: 80 };
  t.equal(e.explain(q).endpoints[0]!.verdict.allowed, false);
  const allowIntruder = policy('web-intruder', 'ALLOW', { app: 'web' }, [[src({ serviceAccounts: ['demo/intruder'] })]]);
  view.current = { ...view.current, revision: 8, resources: [...BASE, allowIntruder] };
  t.match(e.explain(q).endpoints[0]!.verdict, { allowed: true, policy: 'demo/web-intruder', rule: 0 });
});

t.test('across the Admin API: the query and the answer survive protobuf unchanged', async (t) => {
  const queries: ExplainQuery[] = [
    { from: from('demo', 'client'), host: 'web.demo', port: 80 },
    { from: from('demo', 'intruder'), host: 'web.demo', port: 80 },
    { from: from('demo', 'nobody'), host: 'web.demo', port: 80 },
    { from: from('demo', 'client'), host: 'web.demo', port: 81 },
    { from: { kind: 'address', address: '203.0.113.5' }, host: '2001:db8::1', port: 443 },
    { from: { kind: 'identity', identity: `spiffe://${TD}/ns/demo/sa/spy` }, host: '10.96.0.10', port: 80 },
    { from: from('demo', 'client'), host: 'web.demo', port: 80, request: { method: 'DELETE', path: '/a?b=c', host: 'web.demo' } },
    { from: from('demo', 'client'), host: 'web.demo', port: 80, request: { method: 'GET', path: '/', host: undefined } },
  ];
  const { e } = explainer();
  for (const q of queries) {
    const req = ExplainRequest.decode(ExplainRequest.encode(explainRequestToWire(q)).finish());
    t.same(explainRequestFromWire(req), q, `query ${JSON.stringify(q)}`);
    const x = e.explain(q);
    t.same(explanationFromWire(ExplainResponse.decode(ExplainResponse.encode(explanationToWire(x)).finish())), x, `answer to ${x.query.from} → ${x.query.to}`);
  }
});

function httpPolicy(name: string, action: 'ALLOW' | 'DENY', from: PolicySource[], op: { methods?: string[]; paths?: string[]; hosts?: string[] }): AuthorizationPolicy {
  return { kind: 'AuthorizationPolicy', metadata: { name, namespace: 'demo', labels: {}, revision: 1 }, spec: { action, selector: { app: 'web' }, rules: [{ from, to: [{ ports: [], notPorts: [], ...op }] }] } };
}

t.test('on an HTTP port: how requests are authorized, and the verdict on one request', async (t) => {
  // The client may GET anything, and POST only under /api; nobody may touch /admin.
  const rs: Resource[] = [
    ...BASE.filter((r) => r !== ALLOW_CLIENT),
    httpPolicy('client-get', 'ALLOW', [src({ principals: [`${TD}/ns/demo/sa/client`] })], { methods: ['GET'] }),
    httpPolicy('client-post-api', 'ALLOW', [src({ principals: [`${TD}/ns/demo/sa/client`] })], { methods: ['POST'], paths: ['/api/*'] }),
    httpPolicy('no-admin', 'DENY', [], { paths: ['/admin', '/admin/*'] }),
  ];
  const q = (request?: ExplainQuery['request']): Explanation => ask({ from: from('demo', 'client'), host: 'web.demo', port: 80, ...(request ? { request } : {}) }, rs);
  const none = q();
  t.match(none.endpoints[0]!.verdict, { allowed: true, reason: 'allowed_by_policy', policy: 'demo/client-get', request: {
    outcome: 'per_request', denyPolicies: ['demo/no-admin'], allowPolicies: ['demo/client-get', 'demo/client-post-api'], allowRequired: true,
    summary: 'requests decided one by one: DENY demo/no-admin deny the requests they match; each request must match ALLOW demo/client-get, demo/client-post-api (ask with --method, --path, --host)',
  } }, 'no request asked: which policies decide each one');
  const cases: [ExplainQuery['request'], string, string, string, RegExp][] = [
    [{ method: 'GET', path: '/', host: 'web.demo' }, 'allowed', 'allowed_by_policy', 'demo/client-get', /^request GET \/ Host web\.demo: allowed by ALLOW demo\/client-get$/],
    [{ method: 'POST', path: '/api/orders', host: 'web.demo' }, 'allowed', 'allowed_by_policy', 'demo/client-post-api', /allowed by ALLOW demo\/client-post-api/],
    [{ method: 'POST', path: '/other', host: undefined }, 'denied', 'no_allow_match', '(no ALLOW matched)', /^request POST \/other \(no Host\): denied: matches none of ALLOW demo\/client-get, demo\/client-post-api$/],
    [{ method: 'GET', path: '/x/../admin/users', host: 'web.demo' }, 'denied', 'denied_by_policy', 'demo/no-admin', /denied by DENY demo\/no-admin/],
  ];
  for (const [request, outcome, reason, policy, summary] of cases) {
    const x = q(request);
    t.equal(x.query.request, `${request!.method} ${request!.path}${request!.host === undefined ? ' (no Host)' : ` Host ${request!.host}`}`);
    t.match(x.endpoints[0]!.verdict.request, { outcome, reason, policy, summary }, `${request!.method} ${request!.path}: ${outcome} (${policy})`);
  }
  // A TCP port: L7 rules do not apply per request; a denied connection has no request verdict.
  t.equal(ask({ from: from('demo', 'web-1'), host: '10.0.2.1', port: 5432, request: { method: 'GET', path: '/', host: undefined } }).endpoints[0]!.verdict.request, null, 'a tcp port: no request verdict');
  t.equal(ask({ from: from('demo', 'spy'), host: 'web.demo', port: 80, request: { method: 'GET', path: '/', host: undefined } }).endpoints[0]!.verdict.request, null, 'a denied connection: no request verdict');
});

t.test('a malformed query is refused with the flag named', async (t) => {
  const cases: [Parameters<typeof explainQuery>[0], string, RegExp][] = [
    [{ to: 'web.demo:80' }, 'from', /give the source/],
    [{ from: 'demo/client', fromAddress: '10.0.0.1', to: 'web.demo:80' }, 'from', /give one source, not --from and --from-address/],
    [{ from: 'client', to: 'web.demo:80' }, 'from', /expected NAMESPACE\/WORKLOAD/],
    [{ from: 'demo/client', to: 'web.demo' }, 'to', /expected HOST:PORT/],
    [{ from: 'demo/client', to: 'web.demo:0' }, 'to', /expected HOST:PORT/],
    [{ from: 'demo/client', to: 'web.demo:70000' }, 'to', /expected HOST:PORT/],
    [{ from: 'demo/client', to: 'web.demo:80', method: 'GET /' }, 'method', /not an HTTP method/],
    [{ from: 'demo/client', to: 'web.demo:80', path: 'admin' }, 'path', /starting with \//],
  ];
  for (const [o, field, message] of cases) {
    try {
      explainQuery(o);
      t.fail(`accepted ${JSON.stringify(o)}`);
    } catch (err) {
      t.ok(isAmbitError(err, 'AMBIT_ERR_EXPLAIN_QUERY_INVALID') && err.details.field === field, `${JSON.stringify(o)}: code and field ${field}`);
      t.match((err as Error).message, message);
    }
  }
  t.same(explainQuery({ fromIdentity: 'spiffe://x/ns/a/sa/b', to: '[2001:db8::1]:443' }), { from: { kind: 'identity', identity: 'spiffe://x/ns/a/sa/b' }, host: '2001:db8::1', port: 443 });
  // A request's defaults, as curl sends them.
  t.same(explainQuery({ from: 'a/b', to: 'web.demo:80', path: '/x' }).request, { method: 'GET', path: '/x', host: 'web.demo' }, 'port 80: Host without it');
  t.same(explainQuery({ from: 'a/b', to: 'web.demo:8080', method: 'POST' }).request, { method: 'POST', path: '/', host: 'web.demo:8080' }, 'another port: Host with it');
  t.same(explainQuery({ from: 'a/b', to: 'web.demo:80', host: 'shop.example' }).request, { method: 'GET', path: '/', host: 'shop.example' }, '--host as given');
});
