import t from 'tap';
import { MeshState, pickEndpoint } from '../../../agent/state/mesh-state.ts';
import { isAmbitError } from '../../../shared/errors.ts';
import type { AuthorizationPolicy, PolicySource, Resource, Service, Workload } from '../../../shared/resources/types.ts';
import type { FaultInjection, GRPCRoute, HTTPRoute, ReferenceGrant } from '../../../shared/resources/route-types.ts';
import { workloadId } from '../../../shared/spiffe-id.ts';

const TD = 'cluster.local';
const NODE = 'node-a';

function wl(name: string, o: Partial<Workload['spec']> & { namespace?: string; labels?: Record<string, string>; revision?: number } = {}): Workload {
  const { namespace = 'shop', labels = { app: name }, revision = 1, ...spec } = o;
  return {
    kind: 'Workload',
    metadata: { name, namespace, labels, revision },
    spec: { serviceAccount: name, node: NODE, address: '10.0.0.1', ports: [], weight: 1, locality: '', healthy: true, ...spec },
  };
}

function svc(name: string, o: Partial<Service['spec']> & { namespace?: string; revision?: number } = {}): Service {
  const { namespace = 'shop', revision = 1, ...spec } = o;
  return {
    kind: 'Service',
    metadata: { name, namespace, labels: {}, revision },
    spec: { addresses: [], ports: [{ name: 'http', port: 80, targetPort: 8080, appProtocol: 'tcp' }], selector: { app: name }, ...spec },
  };
}

function source(fields: Partial<PolicySource> = {}): PolicySource {
  return { principals: [], notPrincipals: [], namespaces: [], notNamespaces: [], serviceAccounts: [], notServiceAccounts: [], ipBlocks: [], notIpBlocks: [], ...fields };
}

function policy(name: string, from: PolicySource[] = [source({ namespaces: ['shop'] })], revision = 1): AuthorizationPolicy {
  return {
    kind: 'AuthorizationPolicy',
    metadata: { name, namespace: 'shop', labels: {}, revision },
    spec: { action: 'ALLOW', rules: [{ from, to: [] }] },
  };
}

const keys = (rs: readonly Resource[]): string[] => rs.map((r) => `${r.kind}/${r.metadata.namespace}/${r.metadata.name}`).sort();

t.test('a snapshot, then deltas', async (t) => {
  const s = new MeshState(NODE, TD);
  t.equal(s.revision, 0);
  const e1 = s.apply({
    revision: 5,
    snapshot: [wl('web', { address: '10.0.0.1' }), wl('db', { address: '10.0.0.2', node: 'node-b' }), svc('web', { addresses: ['10.96.0.10'] })],
    bundlePem: 'BUNDLE-1',
    nodes: [{ name: 'node-b', hboneAddress: '192.0.2.2:15008' }],
  });
  t.equal(s.revision, 5);
  t.same(keys(s.resources()), ['Service/shop/web', 'Workload/shop/db', 'Workload/shop/web']);
  t.same(e1, { policiesChanged: false, localWorkloadsChanged: true, bundleChanged: true, routesChanged: false });
  t.equal(s.bundlePem, 'BUNDLE-1');
  t.equal(s.hboneAddressOf('node-b'), '192.0.2.2:15008');
  t.same(s.nodes(), [{ name: 'node-b', hboneAddress: '192.0.2.2:15008' }]);

  // Deltas: add, replace, delete. Nodes and bundle are kept when not sent.
  const e2 = s.apply({
    revision: 6,
    changes: [
      { op: 'put', resource: wl('cart', { address: '10.0.0.3', revision: 6 }) },
      { op: 'put', resource: wl('db', { address: '10.0.0.22', node: 'node-b', revision: 6 }) },
      { op: 'delete', key: { kind: 'Service', namespace: 'shop', name: 'web' } },
    ],
  });
  t.equal(s.revision, 6);
  t.same(keys(s.resources()), ['Workload/shop/cart', 'Workload/shop/db', 'Workload/shop/web']);
  t.equal(s.workloadByAddress('10.0.0.22')?.metadata.name, 'db', 'a replaced workload is indexed at its new address');
  t.equal(s.workloadByAddress('10.0.0.2'), undefined, 'and no longer at its old one');
  t.equal(s.resolveService('10.96.0.10', 80), undefined, 'a deleted service no longer resolves');
  t.equal(s.bundlePem, 'BUNDLE-1', 'bundle kept');
  t.equal(s.hboneAddressOf('node-b'), '192.0.2.2:15008', 'nodes kept');
  t.same(e2, { policiesChanged: false, localWorkloadsChanged: true, bundleChanged: false, routesChanged: false });

  // A new snapshot replaces everything.
  s.apply({ revision: 9, snapshot: [wl('solo', { address: '10.0.0.9' })], nodes: [] });
  t.same(keys(s.resources()), ['Workload/shop/solo']);
  t.equal(s.workloadByAddress('10.0.0.1'), undefined, 'indexes are rebuilt from the snapshot');
  t.same(s.nodes(), []);
  t.equal(s.hboneAddressOf('node-b'), undefined);
});

t.test('local workloads: only this node, sorted, by name', async (t) => {
  const s = new MeshState(NODE, TD);
  s.apply({
    revision: 1,
    snapshot: [
      wl('zeta', { address: '10.0.0.1' }),
      wl('alpha', { address: '10.0.0.2' }),
      wl('remote', { address: '10.0.0.3', node: 'node-b' }),
      wl('alpha', { address: '10.0.0.4', namespace: 'aaa' }),
    ],
  });
  t.same(s.localWorkloads().map((w) => `${w.metadata.namespace}/${w.metadata.name}`), ['aaa/alpha', 'shop/alpha', 'shop/zeta']);
  t.equal(s.localWorkloadByName('shop', 'alpha')?.spec.address, '10.0.0.2');
  t.equal(s.localWorkloadByName('shop', 'remote'), undefined, 'a remote workload is not local');
  t.equal(s.identityOf(s.localWorkloadByName('shop', 'zeta')!).uri, workloadId(TD, 'shop', 'zeta').uri);
});

t.test('workloadByAddress matches any spelling of an address', async (t) => {
  const s = new MeshState(NODE, TD);
  s.apply({ revision: 1, snapshot: [wl('v6', { address: '2001:db8::1' }), wl('v4', { address: '10.1.2.3' })] });
  for (const spelling of ['2001:db8::1', '2001:DB8::1', '2001:db8:0:0:0:0:0:1', '2001:0db8:0000::0001']) {
    t.equal(s.workloadByAddress(spelling)?.metadata.name, 'v6', spelling);
  }
  t.equal(s.workloadByAddress('10.1.2.3')?.metadata.name, 'v4');
  t.equal(s.workloadByAddress('::ffff:10.1.2.3')?.metadata.name, 'v4', 'an IPv4-mapped peer address (dual-stack socket) is the IPv4 workload');
  t.equal(s.workloadByAddress('::FFFF:a01:203')?.metadata.name, 'v4', 'in any spelling');
  t.equal(s.workloadByAddress('2001:db8::2'), undefined);
  t.equal(s.workloadByAddress('10.1.2.30'), undefined);
  t.equal(s.workloadByAddress('not-an-ip'), undefined);
});

t.test('localWorkloadAt: local only, and only its ports (none listed: any)', async (t) => {
  const s = new MeshState(NODE, TD);
  s.apply({
    revision: 1,
    snapshot: [
      wl('any', { address: '10.0.0.1', ports: [] }),
      wl('some', { address: '10.0.0.2', ports: [8080, 9090] }),
      wl('remote', { address: '10.0.0.3', node: 'node-b' }),
      wl('v6', { address: 'fd00::5', ports: [443] }),
    ],
  });
  t.equal(s.localWorkloadAt('10.0.0.1', 1)?.metadata.name, 'any');
  t.equal(s.localWorkloadAt('10.0.0.1', 65535)?.metadata.name, 'any');
  t.equal(s.localWorkloadAt('10.0.0.2', 9090)?.metadata.name, 'some');
  t.equal(s.localWorkloadAt('10.0.0.2', 8081), undefined, 'a port it does not serve');
  t.equal(s.localWorkloadAt('10.0.0.3', 80), undefined, 'a workload on another node');
  t.equal(s.localWorkloadAt('fd00:0::5', 443)?.metadata.name, 'v6');
  t.equal(s.localWorkloadAt('10.0.0.9', 80), undefined);
});

t.test('resolveService by VIP and by name forms, with the port', async (t) => {
  const s = new MeshState(NODE, TD);
  const web = svc('web', { addresses: ['10.96.0.10', 'fd00:96::a'], ports: [{ name: 'http', port: 80, targetPort: 8080, appProtocol: 'tcp' }, { name: 'grpc', port: 9000, targetPort: 9001, appProtocol: 'tcp' }] });
  const api = svc('api', { namespace: 'github' });
  s.apply({ revision: 1, snapshot: [web, api] });

  const r = s.resolveService('10.96.0.10', 80);
  t.equal(r?.service, web);
  t.same(r?.port, { name: 'http', port: 80, targetPort: 8080, appProtocol: 'tcp' });
  t.equal(s.resolveService('10.96.0.10', 9000)?.port.targetPort, 9001);
  t.equal(s.resolveService('FD00:96:0::A', 80)?.service, web, 'an IPv6 VIP in another spelling');
  t.equal(s.resolveService('10.96.0.10', 81), undefined, 'a port the service does not have');
  t.equal(s.resolveService('10.96.0.11', 80), undefined, 'an unknown VIP');

  for (const host of ['web.shop', 'web.shop.svc', 'web.shop.svc.cluster.local', 'WEB.Shop.SVC.cluster.local.', 'web.shop.']) {
    t.equal(s.resolveService(host, 80)?.service, web, host);
  }
  t.equal(s.resolveService('web.shop', 443), undefined, 'name with a port the service lacks');
  t.equal(s.resolveService('web', 80), undefined, 'a bare name is ambiguous');
  t.equal(s.resolveService('web.other', 80), undefined, 'another namespace');
  t.equal(s.resolveService('api.github', 80)?.service, api);
  t.equal(s.resolveService('api.github.com', 80), undefined, 'an outside hostname that happens to start with name.namespace is not the service');
  t.equal(s.resolveService('web.shop.example.org', 80), undefined);
});

t.test('endpointsOf: same namespace, every selector pair; an empty selector selects none', async (t) => {
  const s = new MeshState(NODE, TD);
  const a = wl('a', { address: '10.0.0.1', labels: { app: 'web', tier: 'front' } });
  const b = wl('b', { address: '10.0.0.2', labels: { app: 'web' }, node: 'node-b' });
  const c = wl('c', { address: '10.0.0.3', labels: { app: 'web', tier: 'front' }, namespace: 'other' });
  const d = wl('d', { address: '10.0.0.4', labels: { app: 'db' } });
  s.apply({ revision: 1, snapshot: [a, b, c, d] });
  const names = (ws: Workload[]): string[] => ws.map((w) => w.metadata.name).sort();
  t.same(names(s.endpointsOf(svc('web', { selector: { app: 'web' } }))), ['a', 'b'], 'local and remote; not another namespace');
  t.same(names(s.endpointsOf(svc('web', { selector: { app: 'web', tier: 'front' } }))), ['a'], 'every pair must match');
  t.same(s.endpointsOf(svc('web', { selector: {} })), [], 'an empty selector selects nothing');
  t.same(s.endpointsOf(svc('web', { selector: { constructor: 'x' } })), [], 'inherited properties are not labels');
});

t.test('serviceNameFor: first matching service by name targeting the port', async (t) => {
  const s = new MeshState(NODE, TD);
  const w = wl('web', { address: '10.0.0.1', labels: { app: 'web' } });
  s.apply({
    revision: 1,
    snapshot: [
      w,
      svc('zz-web', { selector: { app: 'web' } }),
      svc('aa-web', { selector: { app: 'web' } }),
      svc('all', { selector: {} }),
      svc('grpc', { selector: { app: 'web' }, ports: [{ name: 'g', port: 9000, targetPort: 9001, appProtocol: 'tcp' }] }),
      svc('elsewhere', { selector: { app: 'web' }, namespace: 'other' }),
    ],
  });
  t.equal(s.serviceNameFor(w, 8080), 'aa-web.shop.svc.cluster.local', 'the first by name, as its host name');
  t.equal(s.serviceNameFor(w, 9001), 'grpc.shop.svc.cluster.local', 'matched by target port');
  t.equal(s.serviceNameFor(w, 80), '', 'the service port is not the target port');
  t.equal(s.serviceNameFor(wl('db', { labels: { app: 'db' } }), 8080), '', 'no service selects it (an empty selector does not)');
  const other = new MeshState(NODE, TD, { clusterDomain: 'corp.example' });
  other.apply({ revision: 1, snapshot: [w, svc('web', { selector: { app: 'web' } })] });
  t.equal(other.serviceNameFor(w, 8080), 'web.shop.svc.corp.example', 'in the configured cluster domain');
});

t.test('namesOf: Istio\'s app, version, canonical service and revision, and the cluster', async (t) => {
  const s = new MeshState(NODE, TD, { clusterId: 'east' });
  const named = (labels: Record<string, string>) => s.namesOf(wl('web-v1', { labels }));
  t.same(named({}), { app: 'web-v1', version: 'latest', canonicalService: 'web-v1', canonicalRevision: 'latest', cluster: 'east' }, 'no labels: the workload name and "latest"');
  t.same(named({ app: 'web', version: 'v1' }), { app: 'web', version: 'v1', canonicalService: 'web', canonicalRevision: 'v1', cluster: 'east' }, 'app and version');
  t.same(named({ 'app.kubernetes.io/name': 'web', 'app.kubernetes.io/version': '2.0' }), { app: 'web', version: '2.0', canonicalService: 'web', canonicalRevision: '2.0', cluster: 'east' }, 'the recommended Kubernetes labels');
  t.same(named({ app: 'web', 'app.kubernetes.io/name': 'webapp', version: 'v1', 'app.kubernetes.io/version': '1.0.3' }),
    { app: 'web', version: 'v1', canonicalService: 'webapp', canonicalRevision: '1.0.3', cluster: 'east' }, 'app/version win for app and version, the Kubernetes labels for the canonical ones');
  t.same(named({ app: 'web', version: 'v1', 'service.istio.io/canonical-name': 'frontend', 'service.istio.io/canonical-revision': 'r7' }),
    { app: 'web', version: 'v1', canonicalService: 'frontend', canonicalRevision: 'r7', cluster: 'east' }, 'Istio\'s canonical labels win for the canonical names only');
  t.same(named({ 'service.istio.io/canonical-name': 'frontend' }), { app: 'frontend', version: 'latest', canonicalService: 'frontend', canonicalRevision: 'latest', cluster: 'east' }, 'no app label: the canonical service');
  t.equal(new MeshState(NODE, TD).namesOf(wl('x', {})).cluster, 'Kubernetes', 'Istio\'s default cluster id');
});

t.test('an update that cannot be applied changes nothing', async (t) => {
  const s = new MeshState(NODE, TD);
  const good = policy('good');
  s.apply({ revision: 3, snapshot: [wl('web', { address: '10.0.0.1' }), svc('web', { addresses: ['10.96.0.1'] }), good], bundlePem: 'B1', nodes: [{ name: 'n', hboneAddress: '1.2.3.4:15008' }] });
  const before = { resources: s.resources(), authorizer: s.authorizer, local: s.localWorkloads(), nodes: s.nodes() };

  const bad = policy('bad', [source({ ipBlocks: ['not-a-cidr'] })], 4);
  let thrown: unknown;
  try {
    s.apply({
      revision: 4,
      changes: [{ op: 'put', resource: bad }, { op: 'delete', key: { kind: 'Workload', namespace: 'shop', name: 'web' } }, { op: 'put', resource: wl('new', { address: '10.0.0.2' }) }],
      bundlePem: 'B2',
      nodes: [],
    });
  } catch (err) {
    thrown = err;
  }
  t.ok(isAmbitError(thrown, 'AMBIT_ERR_RESOURCE_INVALID'), 'the engine refuses the policy');
  t.equal(s.revision, 3, 'revision unchanged');
  t.same(s.resources(), before.resources, 'resources unchanged');
  t.equal(s.authorizer, before.authorizer, 'authorizer unchanged');
  t.equal(s.localWorkloads(), before.local, 'local workloads unchanged');
  t.equal(s.bundlePem, 'B1', 'bundle unchanged');
  t.same(s.nodes(), before.nodes, 'nodes unchanged');
  t.equal(s.workloadByAddress('10.0.0.1')?.metadata.name, 'web', 'address index unchanged');
  t.equal(s.workloadByAddress('10.0.0.2'), undefined);
  t.equal(s.resolveService('10.96.0.1', 80)?.service.metadata.name, 'web');

  // A snapshot with the bad policy is refused the same way.
  t.throws(() => s.apply({ revision: 5, snapshot: [bad] }));
  t.equal(s.revision, 3);
  t.equal(s.resources().length, 3);
});

t.test('effects: which parts changed', async (t) => {
  const s = new MeshState(NODE, TD);
  const w = wl('web', { address: '10.0.0.1' });
  const p = policy('p');
  t.same(s.apply({ revision: 1, snapshot: [w, p], bundlePem: 'B1' }), { policiesChanged: true, localWorkloadsChanged: true, bundleChanged: true, routesChanged: false });
  const authz = s.authorizer;

  // Same content at a new revision: nothing changed that matters.
  t.same(
    s.apply({ revision: 2, changes: [{ op: 'put', resource: { ...p, metadata: { ...p.metadata, revision: 2 } } }, { op: 'put', resource: { ...w, metadata: { ...w.metadata, revision: 2 } } }], bundlePem: 'B1' }),
    { policiesChanged: false, localWorkloadsChanged: false, bundleChanged: false, routesChanged: false },
    'a revision bump alone changes nothing',
  );
  t.equal(s.authorizer, authz, 'the authorizer is reused when policies did not change');

  t.same(s.apply({ revision: 3, changes: [{ op: 'put', resource: wl('remote', { address: '10.0.0.9', node: 'node-b' }) }] }), { policiesChanged: false, localWorkloadsChanged: false, bundleChanged: false, routesChanged: false }, 'a remote workload is not a local change');
  t.same(s.apply({ revision: 4, changes: [{ op: 'put', resource: svc('web') }] }), { policiesChanged: false, localWorkloadsChanged: false, bundleChanged: false, routesChanged: false }, 'a service is neither');
  t.same(s.apply({ revision: 5, changes: [{ op: 'put', resource: wl('web', { address: '10.0.0.1', ports: [80] }) }] }), { policiesChanged: false, localWorkloadsChanged: true, bundleChanged: false, routesChanged: false }, 'a local workload spec change');
  t.same(s.apply({ revision: 6, changes: [{ op: 'put', resource: policy('p', [source({ namespaces: ['other'] })]) }] }), { policiesChanged: true, localWorkloadsChanged: false, bundleChanged: false, routesChanged: false }, 'a policy change');
  t.not(s.authorizer, authz, 'a new authorizer after a policy change');
  t.same(s.apply({ revision: 7, changes: [{ op: 'delete', key: { kind: 'AuthorizationPolicy', namespace: 'shop', name: 'p' } }] }).policiesChanged, true, 'a policy delete');
  t.same(s.apply({ revision: 8, bundlePem: '' }).bundleChanged, false, 'an empty bundle is no bundle');
  t.equal(s.bundlePem, 'B1');
  t.same(s.apply({ revision: 9, bundlePem: 'B2' }).bundleChanged, true);
  t.equal(s.bundlePem, 'B2');
  t.same(s.apply({ revision: 10, changes: [{ op: 'delete', key: { kind: 'Workload', namespace: 'shop', name: 'web' } }] }).localWorkloadsChanged, true, 'a local workload removed');
});

// ------------------------------------------------------------------ pickEndpoint

/** A seeded PRNG (mulberry32), so statistical checks are repeatable. */
function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

function counts(pool: Workload[], locality: string, port: number, n: number, seed = 1): Map<string, number> {
  const random = seeded(seed);
  const out = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    const w = pickEndpoint(pool, locality, port, random);
    const k = w?.metadata.name ?? 'none';
    out.set(k, (out.get(k) ?? 0) + 1);
  }
  return out;
}

t.test('pickEndpoint: healthy first, all if none is healthy', async (t) => {
  const up = wl('up', { healthy: true });
  const down1 = wl('down1', { healthy: false });
  const down2 = wl('down2', { healthy: false });
  t.same([...counts([down1, up, down2], '', 80, 500).keys()], ['up'], 'only the healthy one while there is one');
  const c = counts([down1, down2], '', 80, 1000);
  t.ok((c.get('down1') ?? 0) > 400 && (c.get('down2') ?? 0) > 400, `all unhealthy: any of them (${JSON.stringify([...c])})`);
});

t.test('pickEndpoint: same zone, then same region, then anywhere', async (t) => {
  const zoneA = wl('zoneA', { locality: 'eu/a' });
  const zoneB = wl('zoneB', { locality: 'eu/b' });
  const us = wl('us', { locality: 'us/a' });
  const nowhere = wl('nowhere', { locality: '' });
  t.same([...counts([us, zoneB, zoneA, nowhere], 'eu/a', 80, 300).keys()], ['zoneA'], 'same zone');
  t.same([...counts([us, zoneB, nowhere], 'eu/a', 80, 300).keys()], ['zoneB'], 'same region when no same zone');
  t.same([...counts([us, zoneB], 'eu/a/rack1', 80, 300).keys()], ['zoneB'], 'subzone ignored');
  t.same([...counts([zoneA, zoneB], 'us/a', 80, 1000).keys()].sort(), ['zoneA', 'zoneB'], 'another region only: any of them');
  const anywhere = counts([zoneA, zoneB, nowhere], 'ap/x', 80, 3000);
  t.equal(anywhere.size, 3, 'no match: every endpoint is a candidate');
  const noLocality = counts([us, zoneA], '', 80, 2000);
  t.equal(noLocality.size, 2, 'a caller without locality does not prefer any');
  const unhealthyLocal = wl('local-down', { locality: 'eu/a', healthy: false });
  t.same([...counts([unhealthyLocal, us], 'eu/a', 80, 300).keys()], ['us'], 'health beats locality');
});

t.test('pickEndpoint: weights', async (t) => {
  const heavy = wl('heavy', { weight: 3 });
  const light = wl('light', { weight: 1 });
  const n = 10_000;
  const c = counts([light, heavy], '', 80, n, 42);
  const share = (c.get('heavy') ?? 0) / n;
  t.ok(share > 0.73 && share < 0.77, `weight 3 vs 1 → ~75 % (${(share * 100).toFixed(1)} %)`);
  t.equal(pickEndpoint([light, heavy], '', 80, () => 0), light, 'random 0 → the first');
  t.equal(pickEndpoint([light, heavy], '', 80, () => 0.2499), light, 'just under the first weight');
  t.equal(pickEndpoint([light, heavy], '', 80, () => 0.25), heavy, 'at the boundary: the next');
  t.equal(pickEndpoint([light, heavy], '', 80, () => 0.999999), heavy);
});

t.test('pickEndpoint: ports filter; nothing serving → undefined', async (t) => {
  const p80 = wl('p80', { ports: [80] });
  const p81 = wl('p81', { ports: [81, 82] });
  const any = wl('any', { ports: [] });
  t.same([...counts([p80, p81], '', 82, 200).keys()], ['p81']);
  t.same([...counts([p80, p81, any], '', 80, 2000).keys()].sort(), ['any', 'p80']);
  t.equal(pickEndpoint([p80, p81], '', 443, () => 0.5), undefined, 'no endpoint serves the port');
  t.equal(pickEndpoint([], 'eu/a', 80, () => 0.5), undefined, 'no endpoints');
  // A healthy endpoint that does not serve the port does not hide an unhealthy one that does.
  const downButServing = wl('downButServing', { ports: [443], healthy: false });
  t.equal(pickEndpoint([p80, downButServing], '', 443, () => 0.5), downButServing);
});

t.test('routes and fault injections: sorted accessors, lookups and routesChanged', async (t) => {
  const route = (name: string, namespace: string, revision = 1): HTTPRoute => ({
    kind: 'HTTPRoute',
    metadata: { name, namespace, labels: {}, revision },
    spec: {
      parentRefs: [{ group: '', kind: 'Service', namespace: 'shop', name: 'web' }], hostnames: [],
      rules: [{ matches: [{ path: { type: 'PathPrefix', value: '/' }, headers: [], queryParams: [] }], filters: [], backendRefs: [] }],
    },
  });
  const grpc: GRPCRoute = { kind: 'GRPCRoute', metadata: { name: 'g', namespace: 'shop', labels: {}, revision: 1 }, spec: { parentRefs: [{ group: '', kind: 'Service', namespace: 'shop', name: 'web' }], hostnames: [], rules: [] } };
  const fault: FaultInjection = { kind: 'FaultInjection', metadata: { name: 'slow', namespace: 'shop', labels: {}, revision: 1 }, spec: { delay: { fixedDelayMs: 100, percentage: 50 } } };
  const s = new MeshState(NODE, TD);
  const e = s.apply({ revision: 1, snapshot: [route('b', 'shop'), route('a', 'zoo'), route('a', 'shop'), grpc, fault, svc('web')] });
  t.equal(e.routesChanged, true);
  t.same(s.httpRoutes().map((r) => `${r.metadata.namespace}/${r.metadata.name}`), ['shop/a', 'shop/b', 'zoo/a'], 'by namespace, then name');
  t.same(s.grpcRoutes().map((r) => r.metadata.name), ['g']);
  t.equal(s.faultInjection('shop', 'slow'), fault);
  t.equal(s.faultInjection('other', 'slow'), undefined);
  t.equal(s.serviceByName('shop', 'web')?.metadata.name, 'web');
  t.equal(s.serviceByName('shop', 'nope'), undefined);
  t.equal(s.apply({ revision: 2, changes: [{ op: 'put', resource: route('a', 'shop', 2) }] }).routesChanged, false, 'a new revision of the same route is no change');
  t.equal(s.apply({ revision: 3, changes: [{ op: 'put', resource: svc('web', { revision: 3, addresses: ['10.96.0.1'] }) }] }).routesChanged, false, 'a service is not a route');
  t.equal(s.apply({ revision: 4, changes: [{ op: 'delete', key: { kind: 'FaultInjection', namespace: 'shop', name: 'slow' } }] }).routesChanged, true);
  t.equal(s.faultInjection('shop', 'slow'), undefined);
  t.equal(s.apply({ revision: 5, changes: [{ op: 'delete', key: { kind: 'HTTPRoute', namespace: 'zoo', name: 'a' } }] }).routesChanged, true);
  t.same(s.httpRoutes().map((r) => r.metadata.name), ['a', 'b']);
});

t.test('ReferenceGrants: by namespace, and a change to one recompiles route tables', async (t) => {
  const grant = (name: string, namespace: string, from: string, revision = 1): ReferenceGrant => ({
    kind: 'ReferenceGrant', metadata: { name, namespace, labels: {}, revision },
    spec: { from: [{ group: 'gateway.networking.k8s.io', kind: 'HTTPRoute', namespace: from }], to: [{ group: '', kind: 'Service' }] },
  });
  const s = new MeshState(NODE, TD);
  t.equal(s.apply({ revision: 1, snapshot: [svc('web'), grant('b', 'shop', 'client'), grant('a', 'shop', 'client'), grant('a', 'other', 'client')] }).routesChanged, true);
  t.same(s.referenceGrants('shop').map((g) => g.metadata.name), ['a', 'b'], 'the namespace\'s own, by name');
  t.same(s.referenceGrants('other').map((g) => g.metadata.name), ['a']);
  t.same(s.referenceGrants('client'), []);
  t.equal(s.apply({ revision: 2, changes: [{ op: 'put', resource: grant('a', 'shop', 'client', 2) }] }).routesChanged, false, 'a new revision of the same grant is no change');
  t.equal(s.apply({ revision: 3, changes: [{ op: 'put', resource: grant('a', 'shop', 'elsewhere', 3) }] }).routesChanged, true, 'a grant changed');
  t.same(s.referenceGrants('shop').find((g) => g.metadata.name === 'a')?.spec.from[0]?.namespace, 'elsewhere');
  t.equal(s.apply({ revision: 4, changes: [{ op: 'delete', key: { kind: 'ReferenceGrant', namespace: 'shop', name: 'b' } }] }).routesChanged, true, 'a grant deleted');
  t.same(s.referenceGrants('shop').map((g) => g.metadata.name), ['a']);
});
