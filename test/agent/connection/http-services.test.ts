/**
 * The HTTP endpoint tables the agent compiles for the data plane
 * (agent/connection/http-services.ts): TCP ports get none; ready endpoints
 * only (all when none is ready); locality ranks as the L4 routing orders
 * zone, region, elsewhere; endpoints whose node has no known agent left out.
 */
import t from 'tap';
import { compileHttpService, httpTableKey, localityRank } from '../../../agent/connection/http-services.ts';
import { MeshState } from '../../../agent/state/mesh-state.ts';
import type { AppProtocol, Service, Workload } from '../../../shared/resources/types.ts';

function wl(name: string, node: string, address: string, o: Partial<Workload['spec']> = {}): Workload {
  return {
    kind: 'Workload',
    metadata: { name, namespace: 'shop', labels: { app: 'web' }, revision: 1 },
    spec: { serviceAccount: 'web', node, address, ports: [], weight: 1, locality: '', healthy: true, ...o },
  };
}

function svc(appProtocol: AppProtocol): Service {
  return {
    kind: 'Service',
    metadata: { name: 'web', namespace: 'shop', labels: {}, revision: 1 },
    spec: { addresses: ['10.96.0.1'], ports: [{ name: 'web', port: 80, targetPort: 8080, appProtocol }], selector: { app: 'web' } },
  };
}

function state(protocol: AppProtocol, workloads: readonly Workload[]): MeshState {
  const s = new MeshState('node-a', 'cluster.local');
  s.apply({ revision: 1, snapshot: [...workloads, svc(protocol)], nodes: [{ name: 'node-b', hboneAddress: '10.9.0.2:15008' }, { name: 'node-c', hboneAddress: '10.9.0.3:15008' }] });
  return s;
}

t.test('a TCP port has no table; an HTTP port lists its endpoints with what the data plane needs', async (t) => {
  const ws = [wl('web-2', 'node-c', '10.0.1.2', { weight: 5, locality: 'eu/b' }), wl('web-1', 'node-b', 'fd00::1', { locality: 'eu/a' }), wl('web-3', 'node-x', '10.0.1.3')];
  const tcp = state('tcp', ws);
  t.equal(compileHttpService(tcp, tcp.resolveService('web.shop', 80)!, 'eu/a'), undefined);
  const s = state('grpc', ws);
  const resolved = s.resolveService('10.96.0.1', 80)!;
  const table = compileHttpService(s, resolved, 'eu/a');
  t.same(table, {
    key: 'web.shop.svc.cluster.local:80@eu/a',
    service: 'web.shop.svc.cluster.local',
    protocol: 'grpc',
    endpoints: [
      { authority: '10.0.1.2:8080', hbone: '10.9.0.3:15008', sni: table?.endpoints[0]?.sni, expect: 'spiffe://cluster.local/ns/shop/sa/web', weight: 5, rank: 1, workload: 'web-2', namespace: 'shop' },
      { authority: '[fd00::1]:8080', hbone: '10.9.0.2:15008', sni: table?.endpoints[1]?.sni, expect: 'spiffe://cluster.local/ns/shop/sa/web', weight: 1, rank: 0, workload: 'web-1', namespace: 'shop' },
    ],
  }, 'node-x has no known agent: left out');
  t.ok(table?.endpoints.every((e) => e.sni.length > 0), 'each with the TLS server name of its identity');
  t.equal(httpTableKey(s, resolved, ''), 'web.shop.svc.cluster.local:80@');
});

t.test('ready endpoints only, unless none is', async (t) => {
  const some = state('http', [wl('a', 'node-b', '10.0.1.1', { healthy: false }), wl('b', 'node-b', '10.0.1.2')]);
  t.same(compileHttpService(some, some.resolveService('web.shop', 80)!, '')?.endpoints.map((e) => e.workload), ['b']);
  const none = state('http', [wl('a', 'node-b', '10.0.1.1', { healthy: false })]);
  t.same(compileHttpService(none, none.resolveService('web.shop', 80)!, '')?.endpoints.map((e) => e.workload), ['a']);
  const ported = state('http', [wl('a', 'node-b', '10.0.1.1', { ports: [9090] }), wl('b', 'node-b', '10.0.1.2', { ports: [8080] })]);
  t.same(compileHttpService(ported, ported.resolveService('web.shop', 80)!, '')?.endpoints.map((e) => e.workload), ['b'], 'only workloads serving the target port');
});

t.test('locality rank: zone, region, elsewhere; no source locality ranks all alike', async (t) => {
  t.equal(localityRank('eu/a', 'eu/a/rack1'), 0);
  t.equal(localityRank('eu/a', 'eu/b'), 1);
  t.equal(localityRank('eu/a', 'us/a'), 2);
  t.equal(localityRank('eu/a', ''), 2);
  t.equal(localityRank('', 'us/a'), 0);
});
