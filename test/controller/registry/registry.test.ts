import t from 'tap';
import path from 'node:path';
import { Registry } from '../../../controller/registry/registry.ts';
import { SqliteStore } from '../../../controller/store/sqlite-store.ts';
import type { Store } from '../../../controller/store/store.ts';
import type { AuthorizationPolicy, ChangeSet, Resource, Service, Workload } from '../../../shared/resources/types.ts';
import { adminId, controllerId, nodeId, workloadId } from '../../../shared/spiffe-id.ts';

const TD = 'cluster.local';

function workload(name: string, o: { ns?: string; sa?: string; node?: string; address?: string; revision?: number; weight?: number } = {}): Workload {
  return {
    kind: 'Workload',
    metadata: { name, namespace: o.ns ?? 'default', labels: { app: name }, revision: o.revision ?? 0 },
    spec: {
      serviceAccount: o.sa ?? name, node: o.node ?? 'node-1', address: o.address ?? '10.0.0.1', ports: [8080],
      weight: o.weight ?? 1, locality: '', healthy: true,
    },
  };
}

function service(name: string, ns = 'default'): Service {
  return {
    kind: 'Service',
    metadata: { name, namespace: ns, labels: {}, revision: 0 },
    spec: { addresses: ['10.96.0.10'], ports: [{ name: 'http', port: 80, targetPort: 8080, appProtocol: 'tcp' }], selector: { app: name } },
  };
}

function policy(name: string, ns = 'default'): AuthorizationPolicy {
  return { kind: 'AuthorizationPolicy', metadata: { name, namespace: ns, labels: {}, revision: 0 }, spec: { action: 'DENY', rules: [] } };
}

const at = <R extends Resource>(r: R, revision: number): R => ({ ...r, metadata: { ...r.metadata, revision } });
const put = (revision: number, ...rs: Resource[]): ChangeSet => ({ revision, changes: rs.map((r) => ({ op: 'put', resource: at(r, revision) })) });
const key = (r: Resource) => ({ kind: r.kind, namespace: r.metadata.namespace, name: r.metadata.name });

// ------------------------------------------------------------------ node authorization

t.test('mayIssue: a node may hold its own identity and those of its workloads, nothing else', async (t) => {
  const reg = new Registry();
  reg.load(3, [
    workload('web', { node: 'node-1', address: '10.0.0.1' }),
    workload('db', { ns: 'data', sa: 'postgres', node: 'node-2', address: '10.0.0.2' }),
  ]);
  t.ok(reg.mayIssue('node-1', nodeId(TD, 'node-1')), 'own node id');
  t.notOk(reg.mayIssue('node-1', nodeId(TD, 'node-2')), 'another node id');
  t.ok(reg.mayIssue('node-1', workloadId(TD, 'default', 'web')), 'a workload on its node');
  t.notOk(reg.mayIssue('node-1', workloadId(TD, 'data', 'postgres')), 'a workload on another node');
  t.ok(reg.mayIssue('node-2', workloadId(TD, 'data', 'postgres')));
  t.notOk(reg.mayIssue('node-2', workloadId(TD, 'default', 'web')));
  t.notOk(reg.mayIssue('node-1', workloadId(TD, 'default', 'postgres')), 'service account of another namespace');
  t.notOk(reg.mayIssue('node-1', workloadId(TD, 'data', 'web')), 'namespace with another service account');
  t.notOk(reg.mayIssue('node-1', adminId(TD, 'admin')), 'admin identity');
  t.notOk(reg.mayIssue('node-1', controllerId(TD)), 'controller identity');
  t.notOk(reg.mayIssue('node-3', workloadId(TD, 'default', 'web')), 'a node with no workloads');
});

t.test('mayIssue: same ns/sa registered only on another node is refused', async (t) => {
  const reg = new Registry();
  reg.load(1, [workload('a', { sa: 'shared', node: 'node-2', address: '10.0.0.1' }), workload('b', { sa: 'other', node: 'node-1', address: '10.0.0.2' })]);
  t.notOk(reg.mayIssue('node-1', workloadId(TD, 'default', 'shared')));
  t.ok(reg.mayIssue('node-2', workloadId(TD, 'default', 'shared')));
});

t.test('the authorization index follows applied change sets', async (t) => {
  const reg = new Registry();
  const web = workload('web', { node: 'node-1', address: '10.0.0.1' });
  const web2 = workload('web-2', { sa: 'web', node: 'node-1', address: '10.0.0.2' });
  reg.applyChangeSet(put(1, web, web2));
  t.ok(reg.mayIssue('node-1', workloadId(TD, 'default', 'web')));
  t.notOk(reg.mayIssue('node-2', workloadId(TD, 'default', 'web')));

  reg.applyChangeSet(put(2, workload('web', { node: 'node-2', address: '10.0.0.1' })));
  t.ok(reg.mayIssue('node-2', workloadId(TD, 'default', 'web')), 'the new node gains the identity');
  t.ok(reg.mayIssue('node-1', workloadId(TD, 'default', 'web')), 'node-1 still runs web-2 with that service account');

  reg.applyChangeSet(put(3, workload('web-2', { sa: 'web', node: 'node-3', address: '10.0.0.2' })));
  t.notOk(reg.mayIssue('node-1', workloadId(TD, 'default', 'web')), 'moved away: node-1 loses authorization');

  reg.applyChangeSet({ revision: 4, changes: [{ op: 'delete', key: key(web) }] });
  t.notOk(reg.mayIssue('node-2', workloadId(TD, 'default', 'web')), 'deleted: node-2 loses authorization');
  t.ok(reg.mayIssue('node-3', workloadId(TD, 'default', 'web')));
  t.same(reg.workloadsOnNode('node-3').map((w) => w.metadata.name), ['web-2']);
  t.same(reg.workloadsOnNode('node-2'), []);
});

t.test('applyChangeSet: revision order, stale sets skipped, listeners told', async (t) => {
  const reg = new Registry();
  const seen: number[] = [];
  const off = reg.onChange((cs) => seen.push(cs.revision));
  reg.load(5, [workload('web')]);
  t.equal(reg.revision, 5);
  reg.applyChangeSet(put(4, workload('old', { address: '10.0.0.9' })));
  t.equal(reg.get({ kind: 'Workload', namespace: 'default', name: 'old' }), undefined, 'a set at or below the revision is ignored');
  reg.applyChangeSet(put(5, workload('old', { address: '10.0.0.9' })));
  t.equal(reg.revision, 5);
  reg.applyChangeSet(put(6, service('web')));
  t.equal(reg.revision, 6);
  t.same(seen, [6], 'listeners see applied sets only');
  off();
  reg.applyChangeSet(put(7, policy('p')));
  t.same(seen, [6], 'unsubscribed');
  t.same(reg.counts(), { Workload: 1, Service: 1, AuthorizationPolicy: 1, HTTPRoute: 0, GRPCRoute: 0, FaultInjection: 0, ReferenceGrant: 0 });
  t.same(reg.list().map((r) => r.kind), ['AuthorizationPolicy', 'Service', 'Workload']);
  t.same(reg.list('Workload', 'other'), []);
  t.equal(reg.all().length, 3);
});

t.test('list orders by kind, namespace, name', async (t) => {
  const reg = new Registry();
  reg.load(1, [workload('b', { ns: 'z', address: '10.0.0.1' }), workload('a', { ns: 'z', address: '10.0.0.2' }), workload('c', { ns: 'a', address: '10.0.0.3' })]);
  t.same(reg.list('Workload').map((r) => `${r.metadata.namespace}/${r.metadata.name}`), ['a/c', 'z/a', 'z/b']);
  t.same(reg.list('Workload', 'z').map((r) => r.metadata.name), ['a', 'b']);
});

// ------------------------------------------------------------------ planning

t.test('planApply: created, configured, unchanged', async (t) => {
  const reg = new Registry();
  reg.load(2, [at(workload('web', { address: '10.0.0.1' }), 2), at(service('web'), 2)]);
  const plan = reg.planApply([
    workload('web', { address: '10.0.0.1' }), // same content, revision 0 as from a file
    { ...service('web'), spec: { ...service('web').spec, addresses: ['10.96.0.11'] } },
    workload('db', { address: '10.0.0.2' }),
  ], false);
  t.same(plan.results.map((r) => [r.key.kind, r.key.name, r.outcome]), [
    ['Workload', 'web', 'unchanged'],
    ['Service', 'web', 'configured'],
    ['Workload', 'db', 'created'],
  ]);
  t.same(plan.changes.map((c) => (c.op === 'put' ? `${c.resource.kind}/${c.resource.metadata.name}` : 'delete')), ['Service/web', 'Workload/db'], 'unchanged resources are not written');
  t.same(reg.planApply([workload('web', { address: '10.0.0.1' })], false).changes, [], 're-applying the same workload writes nothing');
  t.equal(reg.revision, 2, 'planning changes nothing');
  t.equal(reg.list().length, 2);
});

t.test('planApply: createOnly refuses an existing name', async (t) => {
  const reg = new Registry();
  reg.load(1, [at(workload('web'), 1)]);
  t.throws(() => reg.planApply([workload('other', { address: '10.0.0.5' }), workload('web')], true), {
    code: 'AMBIT_ERR_RESOURCE_CONFLICT', message: /Workload default\/web already exists/, details: { field: 'metadata.name' },
  });
  t.equal(reg.planApply([workload('other', { address: '10.0.0.5' })], true).results[0]!.outcome, 'created');
});

t.test('planApply: an update based on a revision the resource has moved past is refused, naming it', async (t) => {
  const reg = new Registry();
  reg.load(5, [at(workload('web'), 3), at(service('web'), 5)]);
  const changed = { ...workload('web', { weight: 2 }) };
  t.equal(reg.planApply([changed], false, [3]).results[0]!.outcome, 'configured', 'based on the current revision: applied');
  t.throws(() => reg.planApply([service('web'), changed], false, [0, 2]), {
    code: 'AMBIT_ERR_RESOURCE_CONFLICT',
    message: /Workload default\/web was changed at revision 3, after revision 2/,
    details: { kind: 'Workload', namespace: 'default', name: 'web', baseRevision: 2, revision: 3 },
  }, 'a stale base refuses the whole batch');
  t.throws(() => reg.planApply([workload('gone', { address: '10.0.0.9' })], false, [4]), { code: 'AMBIT_ERR_RESOURCE_CONFLICT', message: /Workload default\/gone was deleted after revision 4/ });
  t.throws(() => reg.planApply([at(service('web'), 0)], false, [4]), { code: 'AMBIT_ERR_RESOURCE_CONFLICT' }, 'even an unchanged resource: the caller read an old version');
  t.equal(reg.planApply([changed], false, [0]).results[0]!.outcome, 'configured', 'no base: applied over whatever is there');
});

t.test('planApply: an address another workload holds is a conflict', async (t) => {
  const reg = new Registry();
  reg.load(1, [at(workload('web', { address: '10.0.0.1' }), 1), at(workload('db', { address: '10.0.0.2' }), 1)]);
  t.throws(() => reg.planApply([workload('api', { address: '10.0.0.1' })], false), {
    code: 'AMBIT_ERR_RESOURCE_CONFLICT', details: { field: 'spec.address', value: '10.0.0.1', owner: 'Workload/default/web' },
  }, 'a new workload on a taken address');
  t.throws(() => reg.planApply([workload('db', { address: '10.0.0.1' })], false), { code: 'AMBIT_ERR_RESOURCE_CONFLICT' }, 'moving onto a taken address');
  t.throws(() => reg.planApply([workload('x', { address: '10.0.0.7' }), workload('y', { address: '10.0.0.7' })], false), {
    code: 'AMBIT_ERR_RESOURCE_CONFLICT',
  }, 'two workloads of one batch on one address');
  const sameNs = workload('web', { ns: 'other', address: '10.0.0.1' });
  t.throws(() => reg.planApply([sameNs], false), { code: 'AMBIT_ERR_RESOURCE_CONFLICT' }, 'same name in another namespace is another workload');

  const swap = reg.planApply([workload('web', { address: '10.0.0.2' }), workload('db', { address: '10.0.0.1' })], false);
  t.same(swap.results.map((r) => r.outcome), ['configured', 'configured'], 'two workloads may swap addresses in one batch');
  const move = reg.planApply([workload('web', { address: '10.0.0.9' }), workload('api', { address: '10.0.0.1' })], false);
  t.same(move.results.map((r) => r.outcome), ['configured', 'created'], 'an address freed in the batch may be taken in it');
});

t.test('the indexes follow moves and deletes: addresses freed, node authorization and counts updated', async (t) => {
  const reg = new Registry();
  reg.load(1, [at(workload('web', { address: '10.0.0.1', node: 'node-1' }), 1), at(workload('db', { address: '10.0.0.2', node: 'node-1' }), 1), at(service('web'), 1)]);
  t.same(reg.counts(), { Workload: 2, Service: 1, AuthorizationPolicy: 0, HTTPRoute: 0, GRPCRoute: 0, FaultInjection: 0, ReferenceGrant: 0 });
  t.same(reg.workloadsOnNode('node-1').map((w) => w.metadata.name), ['db', 'web']);
  // web moves to node-2 and to another address: its old address is free, node-1 may no longer hold its identity.
  reg.applyChangeSet(put(2, workload('web', { address: '10.0.0.3', node: 'node-2' })));
  t.same(reg.workloadsOnNode('node-1').map((w) => w.metadata.name), ['db']);
  t.same(reg.workloadsOnNode('node-2').map((w) => w.metadata.name), ['web']);
  t.notOk(reg.mayIssue('node-1', workloadId(TD, 'default', 'web')), 'the old node lost the identity');
  t.ok(reg.mayIssue('node-2', workloadId(TD, 'default', 'web')), 'the new node has it');
  t.same(reg.planApply([workload('api', { address: '10.0.0.1' })], false).results.map((r) => r.outcome), ['created'], 'the old address is free');
  t.throws(() => reg.planApply([workload('api', { address: '10.0.0.3' })], false), { code: 'AMBIT_ERR_RESOURCE_CONFLICT', details: { owner: 'Workload/default/web' } }, 'the new one is taken');
  t.same(reg.counts(), { Workload: 2, Service: 1, AuthorizationPolicy: 0, HTTPRoute: 0, GRPCRoute: 0, FaultInjection: 0, ReferenceGrant: 0 }, 'a move counts once');
  // Deleted: its address and identity go with it.
  reg.applyChangeSet({ revision: 3, changes: [{ op: 'delete', key: key(workload('web')) }, { op: 'delete', key: key(service('web')) }] });
  t.same(reg.workloadsOnNode('node-2'), []);
  t.notOk(reg.mayIssue('node-2', workloadId(TD, 'default', 'web')));
  t.same(reg.planApply([workload('api', { address: '10.0.0.3' })], false).results.map((r) => r.outcome), ['created']);
  t.same(reg.counts(), { Workload: 1, Service: 0, AuthorizationPolicy: 0, HTTPRoute: 0, GRPCRoute: 0, FaultInjection: 0, ReferenceGrant: 0 });
  t.same(reg.all().map((r) => r.metadata.name), ['db'], 'the listing follows too');
  // Two workloads of one identity on a node: removing one keeps the node's right to the identity.
  reg.applyChangeSet(put(4, workload('a1', { sa: 'shared', address: '10.0.1.1' }), workload('a2', { sa: 'shared', address: '10.0.1.2' })));
  reg.applyChangeSet({ revision: 5, changes: [{ op: 'delete', key: key(workload('a1')) }] });
  t.ok(reg.mayIssue('node-1', workloadId(TD, 'default', 'shared')));
});

t.test('planDelete', async (t) => {
  const reg = new Registry();
  const web = workload('web');
  reg.load(1, [at(web, 1)]);
  const missing = { kind: 'Service' as const, namespace: 'default', name: 'nope' };
  t.throws(() => reg.planDelete([key(web), missing], false), { code: 'AMBIT_ERR_RESOURCE_NOT_FOUND', details: missing });
  const plan = reg.planDelete([key(web), missing, key(web)], true);
  t.same(plan.changes, [{ op: 'delete', key: key(web) }], 'missing ignored, duplicates collapsed');
  t.same(plan.deleted, [key(web)]);
  t.same(reg.planDelete([missing], true).changes, []);
  t.ok(reg.get(key(web)), 'planning deletes nothing');
});

// ------------------------------------------------------------------ following a real store

t.test('Registry.follow: snapshot, then every commit of a real SqliteStore', async (t) => {
  const store = SqliteStore.open({ path: path.join(t.testdir(), 'ambit.db') });
  t.teardown(() => store.close());
  await store.commit([{ op: 'put', resource: workload('web', { node: 'node-1', address: '10.0.0.1' }) }]);
  await store.commit([{ op: 'put', resource: service('web') }]);

  const { registry, stop } = await Registry.follow(store);
  t.equal(registry.revision, 2);
  t.equal(registry.list().length, 2);
  t.equal(registry.get({ kind: 'Workload', namespace: 'default', name: 'web' })?.metadata.revision, 1);
  t.ok(registry.mayIssue('node-1', workloadId(TD, 'default', 'web')));

  // The admin flow: plan against the registry, commit to the store, see it in the registry.
  const plan = registry.planApply([workload('web', { node: 'node-2', address: '10.0.0.1' })], false);
  t.same(plan.results.map((r) => r.outcome), ['configured']);
  await store.commit(plan.changes, registry.revision);
  t.equal(registry.revision, 3);
  t.notOk(registry.mayIssue('node-1', workloadId(TD, 'default', 'web')), 'moved workload: old node refused');
  t.ok(registry.mayIssue('node-2', workloadId(TD, 'default', 'web')));
  t.same(registry.planApply([workload('web', { node: 'node-2', address: '10.0.0.1' })], false).results.map((r) => r.outcome), ['unchanged'],
    'the stored copy (with its revision) counts as the same content');

  await store.commit(registry.planDelete([{ kind: 'Service', namespace: 'default', name: 'web' }], false).changes);
  t.equal(registry.revision, 4);
  t.same(registry.counts(), { Workload: 1, Service: 0, AuthorizationPolicy: 0, HTTPRoute: 0, GRPCRoute: 0, FaultInjection: 0, ReferenceGrant: 0 });

  stop();
  await store.commit([{ op: 'put', resource: policy('p') }]);
  t.equal(registry.revision, 4, 'stopped following');
});

t.test('Registry.follow: a commit that lands while the snapshot is read is not lost or doubled', async (t) => {
  const store = SqliteStore.open({ path: path.join(t.testdir(), 'ambit.db') });
  t.teardown(() => store.close());
  await store.commit([{ op: 'put', resource: workload('a', { address: '10.0.0.1' }) }]);
  // Commits race the snapshot: one before it is read (so the snapshot holds it and the
  // early queue does too), one after it is read but before follow() loads it.
  const racing = {
    subscribe: (l: (cs: ChangeSet) => void) => store.subscribe(l),
    snapshot: async () => {
      await store.commit([{ op: 'put', resource: workload('b', { address: '10.0.0.2' }) }]);
      const snap = await store.snapshot();
      await store.commit([{ op: 'put', resource: workload('c', { address: '10.0.0.3' }) }]);
      return snap;
    },
  } as unknown as Store;
  const seen: number[] = [];
  const { registry, stop } = await Registry.follow(racing);
  t.teardown(stop);
  registry.onChange((cs) => seen.push(cs.revision));
  t.equal(registry.revision, 3);
  t.same(registry.list('Workload').map((w) => w.metadata.name), ['a', 'b', 'c']);
  await store.commit([{ op: 'delete', key: { kind: 'Workload', namespace: 'default', name: 'b' } }]);
  t.same(seen, [4]);
  t.same(registry.list('Workload').map((w) => w.metadata.name), ['a', 'c']);
});

// ------------------------------------------------------------------ HTTP operation fields

t.test('planApply: a policy whose HTTP fields reach its workloads only on TCP ports is refused, naming the field', async (t) => {
  const web = workload('web', { address: '10.0.0.1' });
  const tcp = service('web');
  const http: Service = { ...tcp, spec: { ...tcp.spec, ports: [{ name: 'web', port: 80, targetPort: 8080, appProtocol: 'http' }, { name: 'db', port: 5432, targetPort: 5432, appProtocol: 'tcp' }] } };
  const l7 = (op: Record<string, unknown>): AuthorizationPolicy => ({
    ...policy('web-l7'),
    spec: { selector: { app: 'web' }, action: 'DENY', rules: [{ from: [], to: [{ ports: [], notPorts: [], ...op }] }] },
  });
  const reg = new Registry();
  reg.load(3, [web, tcp]);
  t.throws(() => reg.planApply([l7({ methods: ['POST'] })], false), {
    code: 'AMBIT_ERR_RESOURCE_INVALID',
    message: /^AuthorizationPolicy default\/web-l7: spec\.rules\[0\]\.to\[0\]\.operation\.methods: HTTP fields apply only to ports a Service declares http, http2 or grpc .*\(default\/web\) through only TCP ports \(8080\)/,
  }, 'the only Service declares its port tcp');
  t.same(reg.planApply([http, l7({ methods: ['POST'] })], false).results.map((r) => r.outcome), ['configured', 'created'], 'accepted when the same apply declares the port http');
  reg.load(4, [web, http]);
  t.throws(() => reg.planApply([l7({ ports: [5432], paths: ['/x'] })], false), { message: /operation\.paths: .*only TCP ports \(5432\)/ }, 'an operation limited to a TCP port');
  t.throws(() => reg.planApply([l7({ notPorts: [8080], hosts: ['a'] })], false), { message: /operation\.hosts: .*only TCP ports \(5432\)/ }, 'notPorts leaves only the TCP port');
  t.equal(reg.planApply([l7({ ports: [8080], notMethods: ['GET'] })], false).changes.length, 1, 'the HTTP port: accepted');
  t.equal(reg.planApply([{ ...l7({ methods: ['GET'] }), spec: { ...l7({}).spec, selector: { app: 'none' } } }], false).changes.length, 1, 'a policy selecting no workload yet is accepted');
  t.equal(reg.planApply([l7({ ports: [5432] })], false).changes.length, 1, 'port-only operations are not concerned');
});

t.test('routes, fault injections and reference grants are counted and listed by kind', async (t) => {
  const reg = new Registry();
  const route: Resource = { kind: 'HTTPRoute', metadata: { name: 'r', namespace: 'shop', labels: {}, revision: 0 }, spec: { parentRefs: [{ group: '', kind: 'Service', namespace: 'shop', name: 'web' }], hostnames: [], rules: [] } };
  const grpc: Resource = { kind: 'GRPCRoute', metadata: { name: 'g', namespace: 'shop', labels: {}, revision: 0 }, spec: { parentRefs: [{ group: '', kind: 'Service', namespace: 'shop', name: 'web' }], hostnames: [], rules: [] } };
  const fault: Resource = { kind: 'FaultInjection', metadata: { name: 'f', namespace: 'shop', labels: {}, revision: 0 }, spec: { abort: { httpStatus: 503, percentage: 1 } } };
  const grant: Resource = {
    kind: 'ReferenceGrant', metadata: { name: 'rg', namespace: 'shop', labels: {}, revision: 0 },
    spec: { from: [{ group: 'gateway.networking.k8s.io', kind: 'HTTPRoute', namespace: 'client' }], to: [{ group: '', kind: 'Service' }] },
  };
  reg.applyChangeSet(put(1, route, grpc, fault, grant, service('web', 'shop')));
  t.same(reg.counts(), { Workload: 0, Service: 1, AuthorizationPolicy: 0, HTTPRoute: 1, GRPCRoute: 1, FaultInjection: 1, ReferenceGrant: 1 });
  t.same(reg.list('HTTPRoute', 'shop').map((r) => r.metadata.name), ['r']);
  t.same(reg.list('ReferenceGrant', 'shop').map((r) => r.metadata.name), ['rg']);
  reg.applyChangeSet({ revision: 2, changes: [{ op: 'delete', key: key(route) }] });
  t.equal(reg.counts().HTTPRoute, 0);
});

// ------------------------------------------------------------------ resume history

t.test('changesSince: the change sets after a revision, while the history holds them all', async (t) => {
  const reg = new Registry(3);
  reg.load(10, [workload('a', { address: '10.0.0.1' })]);
  t.same(reg.changesSince(10), [], 'current: nothing to send');
  t.equal(reg.changesSince(9), undefined, 'from before the snapshot it loaded: ask the store');
  t.equal(reg.changesSince(11), undefined, 'from beyond its revision');
  const s11 = put(11, workload('b', { address: '10.0.0.2' }));
  const s12 = put(12, workload('c', { address: '10.0.0.3' }), workload('d', { address: '10.0.0.4' }));
  reg.applyChangeSet(s11);
  reg.applyChangeSet(s12);
  t.same(reg.changesSince(10)?.map((cs) => cs.revision), [11, 12]);
  t.same(reg.changesSince(11)?.map((cs) => cs.revision), [12]);
  t.same(reg.changesSince(12), []);
  // 3 changes held at most: a fourth evicts revision 11, so revision 10 can no longer be answered.
  reg.applyChangeSet(put(13, workload('e', { address: '10.0.0.5' })));
  t.equal(reg.changesSince(10), undefined, 'evicted: the store answers (or a snapshot)');
  t.same(reg.changesSince(11)?.map((cs) => cs.revision), [12, 13], 'still whole from 11 on');
  reg.load(20, []);
  t.equal(reg.changesSince(13), undefined, 'a reload starts the history again');
  t.same(reg.changesSince(20), []);
});
