import t from 'tap';
import { routeStatus, type RouteStatusMesh } from '../../../shared/routes/status.ts';
import { validateResource } from '../../../shared/resources/validate.ts';
import { grant } from './route-fixtures.ts';
import type { FaultInjection, ReferenceGrant, RouteResource } from '../../../shared/resources/route-types.ts';
import type { AppProtocol, Service } from '../../../shared/resources/types.ts';

function svc(namespace: string, name: string, ports: [number, AppProtocol][]): Service {
  return {
    kind: 'Service', metadata: { name, namespace, labels: {}, revision: 1 },
    spec: { addresses: [], selector: { app: name }, ports: ports.map(([port, appProtocol]) => ({ name: `p${port}`, port, targetPort: port, appProtocol })) },
  };
}
const slow: FaultInjection = { kind: 'FaultInjection', metadata: { name: 'slow', namespace: 'shop', labels: {}, revision: 1 }, spec: { delay: { fixedDelayMs: 10, percentage: 1 } } };

function mesh(services: Service[], faults: FaultInjection[] = [slow], grants: ReferenceGrant[] = []): RouteStatusMesh {
  return {
    service: (ns, name) => services.find((s) => s.metadata.namespace === ns && s.metadata.name === name),
    faultInjection: (ns, name) => faults.find((f) => f.metadata.namespace === ns && f.metadata.name === name),
    referenceGrants: (ns) => grants.filter((g) => g.metadata.namespace === ns),
  };
}

const MESH = mesh([svc('shop', 'web', [[80, 'http'], [9000, 'tcp']]), svc('shop', 'canary', [[80, 'http']]), svc('db', 'sql', [[5432, 'tcp']])]);

function route(spec: Record<string, unknown>, namespace = 'shop', kind = 'HTTPRoute'): RouteResource {
  return validateResource({ apiVersion: 'gateway.networking.k8s.io/v1', kind, metadata: { name: 'r', namespace }, spec }, 'x') as RouteResource;
}
const parent = (o: Record<string, unknown> = {}) => ({ group: '', kind: 'Service', name: 'web', ...o });

t.test('accepted and resolved', async (t) => {
  const s = routeStatus(route({ parentRefs: [parent({ port: 80 })], rules: [{ backendRefs: [{ name: 'web', port: 80, weight: 9 }, { name: 'canary', port: 80, weight: 1 }], filters: [{ type: 'ExtensionRef', extensionRef: { group: 'ambit.dev', kind: 'FaultInjection', name: 'slow' } }] }] }), MESH);
  t.equal(s.parents.length, 1);
  t.same(s.parents[0]?.parentRef, { group: '', kind: 'Service', namespace: 'shop', name: 'web', port: 80 });
  t.equal(s.parents[0]?.controllerName, 'ambit.dev/mesh');
  t.match(s.parents[0]?.conditions, [
    { type: 'Accepted', status: 'True', reason: 'Accepted', message: /Service shop\/web port 80 as a producer route/ },
    { type: 'ResolvedRefs', status: 'True', reason: 'ResolvedRefs' },
  ]);
});

t.test('Accepted: False for a missing parent or port, or a TCP-only one', async (t) => {
  const s = routeStatus(route({ parentRefs: [parent({ name: 'nope' }), parent({ port: 81 }), parent({ port: 9000 }), parent({ namespace: 'db', name: 'sql' })] }), MESH);
  const accepted = s.parents.map((p) => p.conditions.find((c) => c.type === 'Accepted'));
  t.match(accepted[0], { status: 'False', reason: 'NoMatchingParent', message: 'Service shop/nope does not exist' });
  t.match(accepted[1], { status: 'False', reason: 'NoMatchingParent', message: 'Service shop/web has no port 81' });
  t.match(accepted[2], { status: 'False', reason: 'UnsupportedValue', message: /port 9000 of Service shop\/web does not declare appProtocol http, http2 or grpc/ });
  t.match(accepted[3], { status: 'False', reason: 'UnsupportedValue', message: /no port of Service db\/sql declares/ });
  const all = routeStatus(route({ parentRefs: [parent()] }), MESH);
  t.match(all.parents[0]?.conditions[0], { status: 'True', message: /Service shop\/web port 80 / }, 'no port: the HTTP ports only');
});

t.test('a consumer route says so', async (t) => {
  const s = routeStatus(route({ parentRefs: [parent({ namespace: 'shop' })] }, 'client'), MESH);
  t.match(s.parents[0]?.conditions[0], { status: 'True', message: /consumer route: for clients in namespace client/ });
});

t.test('ResolvedRefs: False names every unresolved reference, the first one\'s reason', async (t) => {
  const s = routeStatus(route({
    parentRefs: [parent(), parent({ name: 'canary' })],
    rules: [{
      backendRefs: [{ name: 'web', port: 80 }, { name: 'gone', port: 80 }, { name: 'web', port: 81 }, { name: 'web', namespace: 'other', port: 80 }],
      filters: [{ type: 'ExtensionRef', extensionRef: { group: 'ambit.dev', kind: 'FaultInjection', name: 'missing' } }, { type: 'RequestMirror', requestMirror: { backendRef: { name: 'shadow', port: 80 } } }],
    }],
  }), MESH);
  const refs = s.parents.map((p) => p.conditions.find((c) => c.type === 'ResolvedRefs'));
  t.same(refs[0], refs[1], 'the same on every parent');
  t.equal(refs[0]?.status, 'False');
  t.equal(refs[0]?.reason, 'FilterNotFound');
  t.equal(refs[0]?.message, [
    'spec.rules[0].filters[0].extensionRef: FaultInjection shop/missing does not exist',
    'spec.rules[0].filters[1].requestMirror.backendRef: Service shop/shadow does not exist',
    'spec.rules[0].backendRefs[1]: Service shop/gone does not exist',
    'spec.rules[0].backendRefs[2]: Service shop/web has no port 81',
    'spec.rules[0].backendRefs[3]: Service other/web is in another namespace and no ReferenceGrant in namespace other lets HTTPRoutes of namespace shop use it',
  ].join('; '));
  const cross = routeStatus(route({ parentRefs: [parent()], rules: [{ backendRefs: [{ name: 'web', namespace: 'other', port: 80 }] }] }), MESH);
  t.match(cross.parents[0]?.conditions[1], { status: 'False', reason: 'RefNotPermitted' });
  const missing = routeStatus(route({ parentRefs: [parent()], rules: [{ backendRefs: [{ name: 'gone', port: 80 }] }] }), MESH);
  t.match(missing.parents[0]?.conditions[1], { status: 'False', reason: 'BackendNotFound', message: 'spec.rules[0].backendRefs[0]: Service shop/gone does not exist' });
});

t.test('GRPCRoute too', async (t) => {
  const s = routeStatus(route({ parentRefs: [parent({ port: 80 })], rules: [{ backendRefs: [{ name: 'gone', port: 80 }] }] }, 'shop', 'GRPCRoute'), MESH);
  t.match(s.parents[0]?.conditions, [{ type: 'Accepted', status: 'True' }, { type: 'ResolvedRefs', status: 'False', reason: 'BackendNotFound' }]);
});

t.test('a consumer route whose backend is the producer Service: RefNotPermitted until a ReferenceGrant in its namespace allows it', async (t) => {
  const services = [svc('shop', 'web', [[80, 'http']]), svc('shop', 'shadow', [[80, 'http']])];
  const consumer = route({
    parentRefs: [parent({ namespace: 'shop' })],
    rules: [{ backendRefs: [{ name: 'web', namespace: 'shop', port: 80 }], filters: [{ type: 'RequestMirror', requestMirror: { backendRef: { name: 'shadow', namespace: 'shop', port: 80 } } }] }],
  }, 'client');
  const refs = (grants: ReferenceGrant[]) => routeStatus(consumer, mesh(services, [], grants)).parents[0]?.conditions.find((c) => c.type === 'ResolvedRefs');
  t.match(refs([]), {
    status: 'False', reason: 'RefNotPermitted',
    message: 'spec.rules[0].filters[0].requestMirror.backendRef: Service shop/shadow is in another namespace and no ReferenceGrant in namespace shop lets HTTPRoutes of namespace client use it; '
      + 'spec.rules[0].backendRefs[0]: Service shop/web is in another namespace and no ReferenceGrant in namespace shop lets HTTPRoutes of namespace client use it',
  });
  t.match(refs([grant('shop', 'g', 'client')]), { status: 'True', reason: 'ResolvedRefs' }, 'a grant to every Service of shop');
  t.match(refs([grant('shop', 'g', 'client', 'HTTPRoute', { name: 'web' })]), { status: 'False', reason: 'RefNotPermitted', message: /Service shop\/shadow is in another namespace/ }, 'a grant naming web only: the mirror stays refused');
  t.match(refs([grant('client', 'g', 'client')]), { status: 'False', reason: 'RefNotPermitted' }, 'a grant in the route\'s namespace does not count');
  t.match(refs([grant('shop', 'g', 'client', 'GRPCRoute')]), { status: 'False', reason: 'RefNotPermitted' }, 'a grant for GRPCRoutes does not cover HTTPRoutes');
  const granted = routeStatus(consumer, mesh([svc('shop', 'web', [[80, 'http']])], [], [grant('shop', 'g', 'client')])).parents[0]?.conditions.find((c) => c.type === 'ResolvedRefs');
  t.match(granted, { status: 'False', reason: 'BackendNotFound', message: 'spec.rules[0].filters[0].requestMirror.backendRef: Service shop/shadow does not exist' }, 'permitted, then looked up');
});
