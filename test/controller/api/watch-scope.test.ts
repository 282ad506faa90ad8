import t from 'tap';
import { Registry } from '../../../controller/registry/registry.ts';
import { MAX_SUBSCRIPTIONS_PER_STREAM, ScopeIndex, type NodeScope } from '../../../controller/api/watch-scope.ts';
import { MESH_NAMESPACE, type AuthorizationPolicy, type Change, type ChangeSet, type Resource, type Service, type Workload } from '../../../shared/resources/types.ts';

function workload(name: string, o: { ns?: string; node?: string; address: string; labels?: Record<string, string> }): Workload {
  return {
    kind: 'Workload',
    metadata: { name, namespace: o.ns ?? 'default', labels: o.labels ?? { app: name }, revision: 0 },
    spec: { serviceAccount: name, node: o.node ?? 'node-1', address: o.address, ports: [8080], weight: 1, locality: '', healthy: true },
  };
}

function service(name: string, o: { ns?: string; vip: string; selector?: Record<string, string> }): Service {
  return {
    kind: 'Service',
    metadata: { name, namespace: o.ns ?? 'default', labels: {}, revision: 0 },
    spec: { addresses: [o.vip], ports: [{ name: 'tcp', port: 80, targetPort: 8080, appProtocol: 'tcp' }], selector: o.selector ?? { app: name } },
  };
}

function policy(name: string, ns: string): AuthorizationPolicy {
  return { kind: 'AuthorizationPolicy', metadata: { name, namespace: ns, labels: {}, revision: 0 }, spec: { action: 'DENY', rules: [] } } as unknown as AuthorizationPolicy;
}

const at = <R extends Resource>(r: R, revision: number): R => ({ ...r, metadata: { ...r.metadata, revision } });

/** A registry with a scope index and streams; each stream records what it was sent. */
function setup(resources: Resource[]) {
  const registry = new Registry();
  registry.load(1, resources.map((r) => at(r, 1)));
  const index = new ScopeIndex(registry);
  const sent = new Map<NodeScope, Change[][]>();
  // What the discovery service does: hand each change set to the streams the index says it concerns.
  const concerned: NodeScope[][] = [];
  registry.onChange((cs, before) => {
    const streams = [...index.concerned(cs, before)];
    concerned.push(streams);
    for (const s of streams) {
      const changes = s.filter(cs, before);
      if (changes.length > 0) sent.get(s)?.push(changes);
    }
  });
  let rev = 1;
  const apply = (...changes: Change[]): void => {
    rev++;
    registry.applyChangeSet({ revision: rev, changes: changes.map((c) => (c.op === 'put' ? { op: 'put', resource: at(c.resource, rev) } : c)) } as ChangeSet);
  };
  const open = (node: string, hosts: string[] = []) => {
    const s = index.open(node);
    sent.set(s, []);
    const snap = s.snapshot(hosts);
    return { s, snap, sent: sent.get(s)! };
  };
  return { registry, index, apply, open, concerned };
}

const names = (rs: readonly Resource[]): string[] => rs.map((r) => `${r.kind}/${r.metadata.namespace}/${r.metadata.name}`).sort();
const described = (cs: readonly Change[]): string[] => cs.map((c) => (c.op === 'put' ? `put ${c.resource.kind}/${c.resource.metadata.name}` : `delete ${c.key.kind}/${c.key.name}`)).sort();
const put = (r: Resource): Change => ({ op: 'put', resource: r });
const del = (r: Resource): Change => ({ op: 'delete', key: { kind: r.kind, namespace: r.metadata.namespace, name: r.metadata.name } });

const mesh = (): Resource[] => [
  workload('web', { node: 'node-1', address: '10.0.0.1' }),
  workload('api', { node: 'node-2', address: '10.0.0.2' }),
  workload('api-2', { node: 'node-3', address: '10.0.0.3', labels: { app: 'api' } }),
  workload('db', { ns: 'data', node: 'node-3', address: '10.0.0.4' }),
  service('web', { vip: '10.96.0.1' }),
  service('api', { vip: '10.96.0.2' }),
  service('db', { ns: 'data', vip: '10.96.0.4' }),
  policy('mesh-wide', MESH_NAMESPACE),
  policy('default-deny', 'default'),
  policy('data-deny', 'data'),
];

t.test('the snapshot: the node\'s workloads, the services selecting them, their namespaces\' and the mesh namespace\'s policies, and subscriptions', async (t) => {
  const m = setup(mesh());
  const a = m.open('node-1');
  t.same(names(a.snap.resources), [
    'AuthorizationPolicy/ambit-system/mesh-wide', 'AuthorizationPolicy/default/default-deny', 'Service/default/web', 'Workload/default/web',
  ]);
  t.same(a.snap.answers, []);
  const b = m.open('node-1', ['api.default', '10.96.0.4', '10.0.0.9']);
  t.same(names(b.snap.resources), [
    'AuthorizationPolicy/ambit-system/mesh-wide', 'AuthorizationPolicy/default/default-deny',
    'Service/data/db', 'Service/default/api', 'Service/default/web',
    'Workload/data/db', 'Workload/default/api', 'Workload/default/api-2', 'Workload/default/web',
  ], 'a service by name and by VIP brings its endpoints; the policies of data do not come with its service');
  t.same(b.snap.answers, [{ host: 'api.default', found: true }, { host: '10.96.0.4', found: true }, { host: '10.0.0.9', found: false }]);
});

t.test('a change to a subscribed service reaches its subscribers; a change to an unsubscribed one reaches nobody', async (t) => {
  const m = setup(mesh());
  const a = m.open('node-1', ['api.default']);
  const other = m.open('node-2');
  m.apply(put(service('db', { ns: 'data', vip: '10.96.0.5' })));
  t.same(m.concerned.at(-1), [], 'no stream is even asked about db');
  t.same(a.sent, []);
  m.apply(put(workload('api-3', { node: 'node-4', address: '10.0.0.5', labels: { app: 'api' } })));
  t.same(described(a.sent.at(-1)!), ['put Workload/api-3'], 'a new endpoint of a subscribed service');
  t.same(other.sent, [], 'node-2 holds api (its workload) but not the service\'s other endpoints');
  m.apply(put(workload('api-3', { node: 'node-4', address: '10.0.0.5', labels: { app: 'other' } })));
  t.same(described(a.sent.at(-1)!), ['delete Workload/api-3'], 'an endpoint that stops matching is taken away');
  m.apply(put({ ...service('api', { vip: '10.96.0.2' }), spec: { ...service('api', { vip: '10.96.0.2' }).spec, ports: [{ name: 'tcp', port: 81, targetPort: 8080, appProtocol: 'tcp' }] } }));
  t.same(described(a.sent.at(-1)!), ['put Service/api'], 'a port change of the subscribed service');
  t.same(described(other.sent.at(-1)!), ['put Service/api'], 'and of a service selecting a workload of node-2');
});

t.test('workloads coming to a node bring their namespace\'s policies and services; leaving takes them away', async (t) => {
  const m = setup(mesh());
  const a = m.open('node-1');
  m.apply(put(workload('cache', { ns: 'data', node: 'node-1', address: '10.0.0.6', labels: { app: 'db' } })));
  t.same(described(a.sent.at(-1)!), ['put AuthorizationPolicy/data-deny', 'put Service/db', 'put Workload/cache']);
  m.apply(put(policy('data-allow', 'data')), put(policy('other', 'elsewhere')));
  t.same(described(a.sent.at(-1)!), ['put AuthorizationPolicy/data-allow'], 'a new policy of a followed namespace, not of another');
  m.apply(del(workload('cache', { ns: 'data', node: 'node-1', address: '10.0.0.6' })));
  t.same(described(a.sent.at(-1)!), ['delete AuthorizationPolicy/data-allow', 'delete AuthorizationPolicy/data-deny', 'delete Service/db', 'delete Workload/cache']);
  m.apply(put(policy('mesh-2', MESH_NAMESPACE)));
  t.same(described(a.sent.at(-1)!), ['put AuthorizationPolicy/mesh-2'], 'mesh-namespace policies reach every stream');
});

t.test('subscribing and dropping: answers, what comes, what goes, addresses taken later', async (t) => {
  const m = setup(mesh());
  const a = m.open('node-1');
  const out = new Map<string, Change>();
  t.same(a.s.subscribe(['10.96.0.2', '10.0.0.8'], out), [{ host: '10.96.0.2', found: true }, { host: '10.0.0.8', found: false }]);
  t.same(described([...out.values()]), ['put Service/api', 'put Workload/api', 'put Workload/api-2']);
  m.apply(put(workload('new', { ns: 'x', node: 'node-9', address: '10.0.0.8' })));
  t.same(described(a.sent.at(-1)!), ['put Workload/new'], 'a workload taking a subscribed "not in the mesh" address');
  const gone = new Map<string, Change>();
  a.s.drop(['10.96.0.2'], gone);
  t.same(described([...gone.values()]), ['delete Service/api', 'delete Workload/api', 'delete Workload/api-2'], 'dropping takes away what nothing else needs');
  m.apply(put(workload('api-4', { node: 'node-4', address: '10.0.0.7', labels: { app: 'api' } })));
  t.equal(a.sent.length, 1, 'a dropped service\'s changes no longer come');
  t.same(a.s.subscribe(['bogus'], new Map()), [{ host: 'bogus', found: false }], 'a name that is no service is not found');
});

t.test('a closed stream leaves the index; the subscription bound holds', async (t) => {
  const m = setup(mesh());
  const a = m.open('node-1', ['api.default']);
  a.s.close();
  m.apply(put(workload('api-3', { node: 'node-4', address: '10.0.0.5', labels: { app: 'api' } })));
  t.same(m.concerned.at(-1), []);
  t.same(a.sent, []);
  const b = m.open('node-2');
  const hosts = Array.from({ length: MAX_SUBSCRIPTIONS_PER_STREAM + 1 }, (_, i) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`).map((h) => `1${h}`);
  const answers = b.s.subscribe(hosts, new Map());
  t.equal(b.s.hosts.size, MAX_SUBSCRIPTIONS_PER_STREAM);
  t.same(answers.at(-1), { host: hosts.at(-1), found: false });
});

t.test('kinds other than Workload, Service and AuthorizationPolicy reach every stream whole', async (t) => {
  const route = { kind: 'HTTPRoute', metadata: { name: 'split', namespace: 'data', labels: {}, revision: 0 }, spec: { parentRefs: [{ group: '', kind: 'Service', namespace: 'data', name: 'db' }], hostnames: [], rules: [] } } as unknown as Resource;
  const m = setup([...mesh(), route]);
  const a = m.open('node-1');
  t.ok(names(a.snap.resources).includes('HTTPRoute/data/split'), 'in the snapshot, though nothing of data is on node-1');
  m.apply(put({ ...route, metadata: { ...route.metadata, labels: { v: '2' } } } as Resource));
  t.same(described(a.sent.at(-1)!), ['put HTTPRoute/split']);
  m.apply(del(route));
  t.same(described(a.sent.at(-1)!), ['delete HTTPRoute/split']);
});

t.test('a ReferenceGrant reaches every stream whole: an agent decides routes of any namespace with it', async (t) => {
  const grant: Resource = {
    kind: 'ReferenceGrant', metadata: { name: 'g', namespace: 'data', labels: {}, revision: 0 },
    spec: { from: [{ group: 'gateway.networking.k8s.io', kind: 'HTTPRoute', namespace: 'web' }], to: [{ group: '', kind: 'Service' }] },
  };
  const m = setup([...mesh(), grant]);
  const a = m.open('node-1');
  t.ok(names(a.snap.resources).includes('ReferenceGrant/data/g'), 'in the snapshot, though nothing of data is on node-1');
  m.apply(del(grant));
  t.same(described(a.sent.at(-1)!), ['delete ReferenceGrant/g']);
});
