import t from 'tap';
import type { V1ContainerPort, V1Node, V1Pod, V1Service } from '@kubernetes/client-node';
import { appProtocolOf, localityOf, podTcpPorts, policyFromCustomResource, serviceFromKubernetes, workloadFromPod } from '../../../controller/store/kubernetes/convert.ts';
import { diffResources, sameContent } from '../../../controller/store/kubernetes/diff.ts';
import type { Resource, Service, Workload } from '../../../shared/resources/types.ts';
import { resourceKey } from '../../../shared/resources/types.ts';

function pod(o: Partial<{ name: string; ip: string; phase: string; ready: boolean; hostNetwork: boolean; node: string; sa: string; labels: Record<string, string>; deleting: boolean; ports: V1ContainerPort[]; sidecarPorts: V1ContainerPort[] }> = {}): V1Pod {
  return {
    metadata: { name: o.name ?? 'web-1', namespace: 'shop', labels: o.labels ?? { app: 'web' }, ...(o.deleting ? { deletionTimestamp: new Date() } : {}) },
    spec: {
      nodeName: o.node ?? 'node-a',
      ...(o.sa === undefined ? { serviceAccountName: 'web' } : o.sa === '' ? {} : { serviceAccountName: o.sa }),
      ...(o.hostNetwork ? { hostNetwork: true } : {}),
      containers: [{ name: 'main', ports: o.ports ?? [{ containerPort: 8080, name: 'http' }, { containerPort: 9090, name: 'metrics' }] }],
      ...(o.sidecarPorts ? { initContainers: [{ name: 'side', restartPolicy: 'Always', ports: o.sidecarPorts }, { name: 'init', ports: [{ containerPort: 1 }] }] } : {}),
    },
    status: {
      phase: o.phase ?? 'Running',
      ...(o.ip === '' ? {} : { podIP: o.ip ?? '10.1.0.5' }),
      conditions: [{ type: 'Ready', status: o.ready === false ? 'False' : 'True' }],
    },
  };
}

t.test('pods → workloads', async (t) => {
  const ok = workloadFromPod(pod(), 'eu/eu-1');
  t.ok('resource' in ok, 'a running pod with an IP is a workload');
  const w = (ok as { resource: Workload }).resource;
  t.same(w.metadata, { name: 'web-1', namespace: 'shop', labels: { app: 'web' }, revision: 0 });
  t.same(w.spec, { serviceAccount: 'web', node: 'node-a', address: '10.1.0.5', ports: [8080, 9090], weight: 1, locality: 'eu/eu-1', healthy: true });

  t.match(workloadFromPod(pod({ ip: '' }), ''), { skip: /no pod IP/ }, 'no pod IP yet: skipped');
  t.match(workloadFromPod(pod({ phase: 'Pending' }), ''), { skip: /Pending/ }, 'pending: skipped');
  t.match(workloadFromPod(pod({ phase: 'Succeeded' }), ''), { skip: /Succeeded/ }, 'finished: skipped');
  t.match(workloadFromPod(pod({ hostNetwork: true }), ''), { skip: /hostNetwork/ }, 'hostNetwork: skipped (shares the node address)');
  t.match(workloadFromPod(pod({ node: '' }), ''), { skip: /not scheduled/ }, 'no node: skipped');

  const notReady = workloadFromPod(pod({ ready: false }), '') as { resource: Workload };
  t.equal(notReady.resource.spec.healthy, false, 'not Ready: a workload, unhealthy');
  const deleting = workloadFromPod(pod({ deleting: true }), '') as { resource: Workload };
  t.equal(deleting.resource.spec.healthy, false, 'terminating: kept (connections drain, certificate stays) but unhealthy');
  const defaultSa = workloadFromPod(pod({ sa: '' }), '') as { resource: Workload };
  t.equal(defaultSa.resource.spec.serviceAccount, 'default', 'no serviceAccountName: "default", as Kubernetes does');

  const v6 = workloadFromPod(pod({ ip: 'fd00:0:0::5' }), '') as { resource: Workload };
  t.equal(v6.resource.spec.address, 'fd00::5', 'IPv6 address in canonical form');

  const mixed = pod({ ports: [{ containerPort: 53, protocol: 'UDP' }, { containerPort: 8080 }, { containerPort: 80, protocol: 'TCP' }, { containerPort: 8080, name: 'again' }] });
  t.same(podTcpPorts(mixed), [80, 8080], 'ports: TCP only (absent protocol means TCP), unique, ascending');
  t.same(podTcpPorts(pod({ ports: [], sidecarPorts: [{ containerPort: 15090 }] })), [15090], 'native sidecar ports count, plain init containers do not');
  t.same((workloadFromPod(pod({ ports: [] }), '') as { resource: Workload }).resource.spec.ports, [], 'no ports: empty (any port)');

  t.match(workloadFromPod(pod({ labels: { 'bad key!': 'x' } }), ''), { skip: /metadata\.labels/ }, 'an object Ambit cannot represent is skipped with the reason, not half-converted');
});

t.test('node locality', async (t) => {
  const n = (labels: Record<string, string>): V1Node => ({ metadata: { name: 'n', labels } });
  t.equal(localityOf(n({ 'topology.kubernetes.io/region': 'eu-west', 'topology.kubernetes.io/zone': 'eu-west-1a' })), 'eu-west/eu-west-1a');
  t.equal(localityOf(n({ 'topology.kubernetes.io/region': 'eu-west' })), 'eu-west', 'region only');
  t.equal(localityOf(n({ 'topology.kubernetes.io/zone': 'a' })), '', 'a zone without region says nothing');
  t.equal(localityOf(undefined), '', 'unknown node');
});

function svc(o: Partial<{ ports: NonNullable<V1Service['spec']>['ports']; selector: Record<string, string>; clusterIPs: string[]; type: string }> = {}): V1Service {
  return {
    metadata: { name: 'web', namespace: 'shop', labels: { tier: 'front' } },
    spec: {
      type: o.type ?? 'ClusterIP',
      clusterIP: o.clusterIPs?.[0] ?? '10.96.0.10',
      clusterIPs: o.clusterIPs ?? ['10.96.0.10', 'fd00::a'],
      selector: o.selector ?? { app: 'web' },
      ports: o.ports ?? [{ name: 'http', port: 80, targetPort: 8080, protocol: 'TCP' }],
    },
  };
}

/** The converted service (the test fails loudly if it was skipped). */
function converted(r: ReturnType<typeof serviceFromKubernetes>): Service {
  if (!('resource' in r)) throw new Error(`skipped: ${r.skip}`);
  return r.resource;
}

t.test('a port\'s protocol as Istio reads a Service: appProtocol, else the port-name prefix', async (t) => {
  const cases: [string | undefined, string | undefined, string][] = [
    ['http', undefined, 'http'], ['http-web', undefined, 'http'], ['HTTP-web', undefined, 'http'], ['http2-x', undefined, 'http2'],
    ['grpc', undefined, 'grpc'], ['grpc-api', undefined, 'grpc'], ['grpc-web', undefined, 'http'], ['grpc-web-ui', undefined, 'http'],
    ['https', undefined, 'tcp'], ['tls-x', undefined, 'tcp'], ['httpx', undefined, 'tcp'], ['web', undefined, 'tcp'], [undefined, undefined, 'tcp'],
    ['tcp-x', 'http', 'http'], ['http-x', 'tcp', 'tcp'], ['x', 'kubernetes.io/h2c', 'http2'], ['x', 'kubernetes.io/ws', 'http'],
    ['http', 'kubernetes.io/wss', 'tcp'], ['x', 'GRPC', 'grpc'], ['http-web', 'mongo', 'tcp'],
  ];
  for (const [name, appProtocol, want] of cases) t.equal(appProtocolOf(name, appProtocol), want, `name ${name ?? '-'}, appProtocol ${appProtocol ?? '-'}`);
  const s = converted(serviceFromKubernetes(svc({ ports: [
    { name: 'http-web', port: 80, targetPort: 8080 }, { name: 'rpc', port: 81, targetPort: 8080, appProtocol: 'kubernetes.io/h2c' },
    { name: 'grpc', port: 82, targetPort: 8080 }, { name: 'db', port: 83, targetPort: 8080 },
  ] }), []));
  t.same(s.spec.ports.map((p) => [p.port, p.appProtocol]), [[80, 'http'], [81, 'http2'], [82, 'grpc'], [83, 'tcp']]);
});

t.test('services', async (t) => {
  t.same(converted(serviceFromKubernetes(svc(), [])).spec, { addresses: ['10.96.0.10', 'fd00::a'], ports: [{ name: 'http', port: 80, targetPort: 8080, appProtocol: 'http' }], selector: { app: 'web' } });

  t.same(converted(serviceFromKubernetes(svc({ clusterIPs: ['None'] }), [])).spec.addresses, [], 'headless: no addresses');

  t.same(converted(serviceFromKubernetes(svc({ ports: [{ port: 80 }] }), [])).spec.ports, [{ name: 'port-80', port: 80, targetPort: 80, appProtocol: 'tcp' }], 'no targetPort: the port itself');

  t.same(converted(serviceFromKubernetes(svc({ ports: [{ port: 53, protocol: 'UDP' }, { port: 80, targetPort: 8080 }] }), [])).spec.ports.map((p) => p.port), [80], 'UDP ports left out');
  t.match(serviceFromKubernetes(svc({ ports: [{ port: 53, protocol: 'UDP' }] }), []), { skip: /no TCP port/ }, 'only UDP: not a mesh service');
  t.match(serviceFromKubernetes(svc({ type: 'ExternalName' }), []), { skip: /ExternalName/ });

  const pods = [pod({ name: 'a' }), pod({ name: 'b' }), pod({ name: 'other', labels: { app: 'db' }, ports: [{ containerPort: 5432, name: 'http' }] })];
  const named = serviceFromKubernetes(svc({ ports: [{ port: 80, targetPort: 'http' }] }), pods);
  t.same(converted(named).spec.ports, [{ name: 'port-80', port: 80, targetPort: 8080, appProtocol: 'tcp' }], 'named targetPort resolved through the selected pods only');
  t.same(named.warnings, []);
  t.same(converted(serviceFromKubernetes(svc({ ports: [{ port: 80, targetPort: '8081' }] }), [])).spec.ports[0]!.targetPort, 8081, 'numeric string targetPort');

  const disagree = [pod({ name: 'a' }), pod({ name: 'b', ports: [{ containerPort: 8081, name: 'http' }] })];
  const both = serviceFromKubernetes(svc({ ports: [{ port: 80, targetPort: 'http' }, { port: 90, targetPort: 9000 }] }), disagree);
  t.same(converted(both).spec.ports.map((p) => p.port), [90], 'a named port meaning different numbers is left out…');
  t.match(both.warnings[0], /different ports in different pods \(8080, 8081\)/, '…with a warning');
  const none = serviceFromKubernetes(svc({ ports: [{ port: 80, targetPort: 'grpc' }] }), pods);
  t.match(none, { skip: /no usable TCP port.*grpc/ }, 'no port left: skipped, saying why');
  t.same(converted(serviceFromKubernetes(svc({ ports: [{ port: 80, targetPort: 'http' }] }), [])).spec.ports, [{ name: 'port-80', port: 80, targetPort: 80, appProtocol: 'tcp' }],
    'no pod selected: the service stays known, the named port standing in as the port (nothing to reach anyway)');
});

t.test('AuthorizationPolicy custom resources', async (t) => {
  const cr = {
    apiVersion: 'ambit.dev/v1alpha1', kind: 'AuthorizationPolicy',
    metadata: { name: 'allow-client', namespace: 'shop', labels: { team: 'a' }, resourceVersion: '7', uid: 'x', generation: 2 },
    spec: { selector: { matchLabels: { app: 'web' } }, action: 'ALLOW', rules: [{ from: [{ source: { principals: ['cluster.local/ns/shop/sa/client'] } }], to: [{ operation: { ports: ['8080'] } }] }] },
  };
  const ok = policyFromCustomResource(cr);
  t.ok('resource' in ok, 'valid CR converted (server-set metadata ignored)');
  t.equal((ok as { resource: Resource }).resource.metadata.name, 'allow-client');
  const bad = policyFromCustomResource({ ...cr, spec: { ...cr.spec, action: 'MAYBE' } });
  t.match(bad, { skip: /AuthorizationPolicy shop\/allow-client.*action/ }, 'invalid spec refused whole, naming the field');
});

t.test('diff: only differences, revision ignored, deterministic order', async (t) => {
  const w = (name: string, address: string, revision = 0): Workload => ({
    kind: 'Workload', metadata: { name, namespace: 'shop', labels: {}, revision },
    spec: { serviceAccount: 'sa', node: 'n', address, ports: [], weight: 1, locality: '', healthy: true },
  });
  const current = new Map<string, Resource>([[resourceKey(w('a', '10.0.0.1', 5)), w('a', '10.0.0.1', 5)], [resourceKey(w('b', '10.0.0.2', 6)), w('b', '10.0.0.2', 6)]]);
  t.ok(sameContent(w('a', '10.0.0.1', 5), w('a', '10.0.0.1', 0)), 'revision is not content');
  const desired = new Map<string, Resource | undefined>([
    ['Workload/shop/c', w('c', '10.0.0.3')],
    ['Workload/shop/a', w('a', '10.0.0.1')],
    ['Workload/shop/b', undefined],
    ['Workload/shop/zz', undefined],
  ]);
  t.same(diffResources(current, desired), [
    { op: 'delete', key: { kind: 'Workload', namespace: 'shop', name: 'b' } },
    { op: 'put', resource: w('c', '10.0.0.3') },
  ], 'unchanged a: nothing; gone b: delete; absent zz: nothing; new c: put');
  t.same(diffResources(current, new Map()), [], 'keys not asked about are left alone');
});
