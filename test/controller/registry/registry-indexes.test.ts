import t from 'tap';
import { Registry } from '../../../controller/registry/registry.ts';
import type { ChangeSet, Resource, Service, Workload } from '../../../shared/resources/types.ts';

/*
 * The registry's indexes a node-scoped watch reads (controller/api/watch-scope.ts):
 * resources by kind and namespace, workloads and services by address, and
 * what each changed key held before a change set, all following change sets.
 */

const workload = (name: string, ns: string, address: string): Workload => ({
  kind: 'Workload',
  metadata: { name, namespace: ns, labels: { app: name }, revision: 0 },
  spec: { serviceAccount: name, node: 'node-1', address, ports: [], weight: 1, locality: '', healthy: true },
});
const service = (name: string, ns: string, addresses: string[]): Service => ({
  kind: 'Service',
  metadata: { name, namespace: ns, labels: {}, revision: 0 },
  spec: { addresses, ports: [{ name: 'tcp', port: 80, targetPort: 8080, appProtocol: 'tcp' }], selector: { app: name } },
});
const names = (rs: Iterable<Resource>): string[] => [...rs].map((r) => r.metadata.name).sort();

t.test('by namespace and by address, following puts and deletes', async (t) => {
  const reg = new Registry();
  reg.load(1, [workload('a', 'x', '10.0.0.1'), workload('b', 'x', '10.0.0.2'), workload('c', 'y', '10.0.0.3'), service('s', 'x', ['10.96.0.1', 'fd00::1'])]);
  t.same(names(reg.inNamespace('Workload', 'x')), ['a', 'b']);
  t.same(names(reg.inNamespace('Service', 'x')), ['s']);
  t.same(names(reg.inNamespace('Service', 'y')), []);
  t.same(names(reg.workloadsAt('10.0.0.3')), ['c']);
  t.same(names(reg.servicesAt('10.96.0.1')), ['s']);
  t.same(names(reg.servicesAt('fd00:0::1')), ['s'], 'an address in any spelling');
  t.equal(reg.byKey('Workload/x/a')?.metadata.name, 'a');

  const seen: { revision: number; before: [string, string | undefined][] }[] = [];
  reg.onChange((cs, before) => seen.push({ revision: cs.revision, before: [...before].map(([k, r]) => [k, r?.kind === 'Service' ? r.spec.addresses.join() : r?.metadata.namespace]) }));
  const cs: ChangeSet = { revision: 2, changes: [
    { op: 'put', resource: { ...service('s', 'x', ['10.96.0.2']), metadata: { ...service('s', 'x', []).metadata, revision: 2 } } },
    { op: 'delete', key: { kind: 'Workload', namespace: 'x', name: 'a' } },
    { op: 'put', resource: { ...workload('d', 'y', '10.0.0.4'), metadata: { ...workload('d', 'y', '').metadata, revision: 2 } } },
  ] };
  reg.applyChangeSet(cs);
  t.same(seen, [{ revision: 2, before: [['Service/x/s', '10.96.0.1,fd00::1'], ['Workload/x/a', 'x'], ['Workload/y/d', undefined]] }], 'listeners get what each changed key held before');
  t.same(names(reg.servicesAt('10.96.0.1')), [], 'an address the service no longer lists');
  t.same(names(reg.servicesAt('10.96.0.2')), ['s']);
  t.same(names(reg.inNamespace('Workload', 'x')), ['b']);
  t.same(names(reg.inNamespace('Workload', 'y')), ['c', 'd']);
  t.same(names(reg.workloadsAt('10.0.0.1')), []);
});
