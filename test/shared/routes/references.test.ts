/**
 * The one decision whether a route may use a backend in another namespace
 * (shared/routes/references.ts): the Gateway API's ReferenceGrant rule.
 */
import t from 'tap';
import { backendPermitted } from '../../../shared/routes/references.ts';
import type { ReferenceGrant } from '../../../shared/resources/route-types.ts';
import { backend, grant, grpcRoute, httpRoute, parent, rule } from './route-fixtures.ts';

// A consumer route in "client" attached to shop/web, whose backend is shop/web itself.
const consumer = httpRoute('client', 'timeouts', [parent('shop', 'web')], [rule({ backendRefs: [backend('shop', 'web', 80)] })]);
const consumerGrpc = grpcRoute('client', 'retries', [parent('shop', 'web')], []);
const WEB = backend('shop', 'web', 80);

t.test('same namespace: always permitted, grants or not', async (t) => {
  const producer = httpRoute('shop', 'p', [parent('shop', 'web')], []);
  t.equal(backendPermitted(producer, WEB, []), true);
});

t.test('another namespace without a grant: refused', async (t) => {
  t.equal(backendPermitted(consumer, WEB, []), false);
});

t.test('a grant in the Service\'s namespace, to every Service or to the one named', async (t) => {
  t.equal(backendPermitted(consumer, WEB, [grant('shop', 'g', 'client')]), true, 'to every Service (no name)');
  t.equal(backendPermitted(consumer, WEB, [grant('shop', 'g', 'client', 'HTTPRoute', { name: 'web' })]), true, 'to the Service named');
  t.equal(backendPermitted(consumer, WEB, [grant('shop', 'g', 'client', 'HTTPRoute', { name: 'db' })]), false, 'to another Service only');
  t.equal(backendPermitted(consumer, backend('shop', 'db', 80), [grant('shop', 'g', 'client', 'HTTPRoute', { name: 'web' })]), false, 'name limits it to that Service');
});

t.test('a grant anywhere else, or from another namespace, says nothing', async (t) => {
  t.equal(backendPermitted(consumer, WEB, [grant('client', 'g', 'client')]), false, 'in the route\'s own namespace: a route cannot grant itself');
  t.equal(backendPermitted(consumer, WEB, [grant('other', 'g', 'client')]), false, 'in a third namespace');
  t.equal(backendPermitted(consumer, WEB, [grant('shop', 'g', 'elsewhere')]), false, 'from another namespace');
});

t.test('the from kind must be the route\'s: HTTPRoute and GRPCRoute apart', async (t) => {
  t.equal(backendPermitted(consumer, WEB, [grant('shop', 'g', 'client', 'GRPCRoute')]), false, 'an HTTPRoute is not granted by a GRPCRoute grant');
  t.equal(backendPermitted(consumerGrpc, WEB, [grant('shop', 'g', 'client', 'GRPCRoute')]), true);
  t.equal(backendPermitted(consumerGrpc, WEB, [grant('shop', 'g', 'client', 'HTTPRoute')]), false, 'a GRPCRoute is not granted by an HTTPRoute grant');
});

t.test('other groups and kinds are accepted by validation and have no effect', async (t) => {
  const g = grant('shop', 'g', 'client');
  const wrongFromGroup: ReferenceGrant = { ...g, spec: { ...g.spec, from: [{ group: 'example.com', kind: 'HTTPRoute', namespace: 'client' }] } };
  const toSecrets: ReferenceGrant = { ...g, spec: { ...g.spec, to: [{ group: '', kind: 'Secret' }] } };
  const toOtherGroup: ReferenceGrant = { ...g, spec: { ...g.spec, to: [{ group: 'example.com', kind: 'Service' }] } };
  for (const x of [wrongFromGroup, toSecrets, toOtherGroup]) t.equal(backendPermitted(consumer, WEB, [x]), false, JSON.stringify(x.spec));
  const several: ReferenceGrant = {
    ...g, spec: {
      from: [{ group: 'gateway.networking.k8s.io', kind: 'Gateway', namespace: 'client' }, { group: 'gateway.networking.k8s.io', kind: 'HTTPRoute', namespace: 'client' }],
      to: [{ group: '', kind: 'Secret' }, { group: '', kind: 'Service', name: 'web' }],
    },
  };
  t.equal(backendPermitted(consumer, WEB, [several]), true, 'any entry of from and any of to may match');
});
