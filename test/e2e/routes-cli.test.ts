/**
 * HTTPRoute, GRPCRoute, ReferenceGrant and FaultInjection through ambitctl
 * and a real controller (SQLite store): apply -f, get with status (a
 * consumer route's cross-namespace backend resolved by a grant), delete -f, a bad file
 * that changes nothing, and a node's Watch stream carrying them to an agent's
 * mesh state.
 */
import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { Metadata } from '@grpc/grpc-js';
import { DiscoveryClient, type WatchResponse } from '../../shared/proto/gen/ambit.ts';
import { CONTROLLER_CHANNEL_OPTIONS, controllerCredentials } from '../../shared/controller-client.ts';
import { parseJoinToken } from '../../controller/registry/join-tokens.ts';
import { joinWithToken } from '../../agent/identity/ca-client.ts';
import { MeshState } from '../../agent/state/mesh-state.ts';
import { resourceFromWire } from '../../shared/resources/wire.ts';
import { ambitctl, startController, type RunningController } from './harness.ts';

const HOST = '127.0.131.1';
const dir = mkdtempSync(join(tmpdir(), 'ambit-e2e-routes-'));
let ctl: RunningController;

t.teardown(async () => {
  await ctl?.proc.stop();
});

async function ok(args: string[]): Promise<string> {
  const r = await ambitctl(ctl, args);
  if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
  return r.stdout;
}

function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

const MESH = `apiVersion: ambit.dev/v1alpha1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}, {name: raw, port: 9000, appProtocol: tcp}]
  selector: {app: web}
---
apiVersion: ambit.dev/v1alpha1
kind: Service
metadata: {name: web-canary, namespace: shop}
spec:
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
  selector: {app: web-canary}
`;

const ROUTES = `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: canary, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - backendRefs: [{name: web, port: 80, weight: 90}, {name: web-canary, port: 80, weight: 10}]
    timeouts: {request: 1m30s}
    retry: {codes: [503], attempts: 3}
    filters: [{type: ExtensionRef, extensionRef: {group: ambit.dev, kind: FaultInjection, name: slow}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: rpc, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{backendRefs: [{name: web, port: 80}], retry: {codes: [UNAVAILABLE]}}]
---
apiVersion: ambit.dev/v1alpha1
kind: FaultInjection
metadata: {name: slow, namespace: shop}
spec:
  delay: {fixedDelay: 1m30s, percentage: 10}
`;

t.test('apply -f, get with status, delete -f, and a bad file that changes nothing', async (t) => {
  ctl = await startController(join(dir, 'ctl'), [], HOST);
  await ok(['apply', '-f', file('mesh.yaml', MESH)]);
  const routes = file('routes.yaml', ROUTES);
  t.equal(await ok(['apply', '-f', routes]), 'HTTPRoute shop/canary created\nGRPCRoute shop/rpc created\nFaultInjection shop/slow created\n');
  t.equal(await ok(['apply', '-f', routes]), 'HTTPRoute shop/canary unchanged\nGRPCRoute shop/rpc unchanged\nFaultInjection shop/slow unchanged\n', 'stored as applied');

  const bad = file('bad.yaml', ROUTES.replace('weight: 10}', 'weight: 10}, {name: other, port: 80, kind: Gateway}').replace('fixedDelay: 1m30s', 'fixedDelay: 90'));
  const r = await ambitctl(ctl, ['apply', '-f', bad]);
  t.equal(r.code, 1, 'a bad file fails');
  t.match(r.stderr, /bad\.yaml#1 HTTPRoute shop\/canary: spec\.rules\[0\]\.backendRefs\[2\]\.kind: must be Service/);
  t.match(r.stderr, /2 of 3 documents are invalid; nothing was applied/);
  t.match(r.stderr, /AMBIT_ERR_RESOURCE_INVALID/);
  t.equal(await ok(['apply', '-f', routes]), 'HTTPRoute shop/canary unchanged\nGRPCRoute shop/rpc unchanged\nFaultInjection shop/slow unchanged\n', 'the bad file changed nothing');

  t.equal(await ok(['get', 'httproute', '-n', 'shop']),
    'NAMESPACE  NAME    PARENTS      ACCEPTED  RESOLVEDREFS\nshop       canary  shop/web:80  True      True\n', 'table');
  const yaml = await ok(['get', 'httproute', 'canary', '-n', 'shop', '-o', 'yaml']);
  const doc = parse(yaml) as Record<string, unknown>;
  t.match(doc, {
    apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'canary', namespace: 'shop' },
    spec: { parentRefs: [{ group: '', kind: 'Service', name: 'web', port: 80 }], rules: [{ timeouts: { request: '1m30s' }, retry: { codes: [503], attempts: 3 } }] },
    status: { parents: [{ parentRef: { name: 'web', port: 80 }, controllerName: 'ambit.dev/mesh', conditions: [{ type: 'Accepted', status: 'True' }, { type: 'ResolvedRefs', status: 'True' }] }] },
  }, '-o yaml: the upstream shape with status');
  t.match(await ok(['apply', '-f', file('got.yaml', yaml)]), /HTTPRoute shop\/canary unchanged/, 'what get -o yaml prints re-applies (status ignored)');
  t.match(JSON.parse(await ok(['get', 'grpcroute', '-o', 'json'])), [{ kind: 'GRPCRoute', spec: { rules: [{ retry: { codes: ['UNAVAILABLE'] } }] }, status: { parents: [{ conditions: [{ status: 'True' }, { status: 'True' }] }] } }]);
  t.equal(await ok(['get', 'faultinjection', 'slow', '-n', 'shop']), 'NAMESPACE  NAME  DELAY      ABORT\nshop       slow  1m30s 10%  -\n');

  // Status follows the mesh when read: the canary's Service gone, the route says so.
  await ok(['delete', '-f', file('canary-svc.yaml', MESH.split('---\n')[1] ?? '')]);
  t.equal(await ok(['get', 'httproute', 'canary', '-n', 'shop']),
    'NAMESPACE  NAME    PARENTS      ACCEPTED  RESOLVEDREFS\nshop       canary  shop/web:80  True      False (BackendNotFound)\n');
  t.match(parse(await ok(['get', 'httproute', 'canary', '-n', 'shop', '-o', 'yaml'])), {
    status: { parents: [{ conditions: [{ type: 'Accepted' }, { type: 'ResolvedRefs', status: 'False', reason: 'BackendNotFound', message: 'spec.rules[0].backendRefs[1]: Service shop/web-canary does not exist' }] }] },
  });
  const missing = await ambitctl(ctl, ['get', 'httproute', 'nope', '-n', 'shop']);
  t.equal(missing.code, 1);
  t.match(missing.stderr, /HTTPRoute shop\/nope not found.*AMBIT_ERR_RESOURCE_NOT_FOUND/);
  const usage = await ambitctl(ctl, ['get', 'gateway']);
  t.equal(usage.code, 2);
  t.match(usage.stderr, /unknown kind "gateway": use httproute, grpcroute, referencegrant or faultinjection/);

  t.equal(await ok(['delete', '-f', routes]), 'HTTPRoute shop/canary deleted\nGRPCRoute shop/rpc deleted\nFaultInjection shop/slow deleted\n');
  t.equal(await ok(['apply', '-f', routes]), 'HTTPRoute shop/canary created\nGRPCRoute shop/rpc created\nFaultInjection shop/slow created\n', 'gone after delete');
});

const CONSUMER = `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: timeouts, namespace: client}
spec:
  parentRefs: [{group: "", kind: Service, name: web, namespace: shop}]
  rules: [{backendRefs: [{name: web, namespace: shop, port: 80}], timeouts: {request: 2s}}]
`;

const GRANT = `apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: client-routes, namespace: shop}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: client}]
  to: [{group: "", kind: Service, name: web}]
`;

t.test('a ReferenceGrant: apply -f, get, and the consumer route\'s status following it', async (t) => {
  await ok(['apply', '-f', file('consumer.yaml', CONSUMER)]);
  const status = () => ok(['get', 'httproute', 'timeouts', '-n', 'client']);
  t.equal(await status(), 'NAMESPACE  NAME      PARENTS   ACCEPTED  RESOLVEDREFS\nclient     timeouts  shop/web  True      False (RefNotPermitted)\n', 'no grant');
  const grant = file('grant.yaml', GRANT);
  t.equal(await ok(['apply', '-f', grant]), 'ReferenceGrant shop/client-routes created\n');
  t.equal(await ok(['get', 'referencegrant', '-n', 'shop']), 'NAMESPACE  NAME           FROM              TO\nshop       client-routes  HTTPRoute/client  Service/web\n');
  const yaml = await ok(['get', 'referencegrant', 'client-routes', '-n', 'shop', '-o', 'yaml']);
  t.same(parse(yaml), {
    apiVersion: 'gateway.networking.k8s.io/v1beta1', kind: 'ReferenceGrant', metadata: { name: 'client-routes', namespace: 'shop', labels: {}, revision: (parse(yaml) as { metadata: { revision: number } }).metadata.revision },
    spec: { from: [{ group: 'gateway.networking.k8s.io', kind: 'HTTPRoute', namespace: 'client' }], to: [{ group: '', kind: 'Service', name: 'web' }] },
  });
  t.match(await ok(['apply', '-f', file('grant-got.yaml', yaml)]), /ReferenceGrant shop\/client-routes unchanged/, 'what get -o yaml prints re-applies');
  t.equal(await status(), 'NAMESPACE  NAME      PARENTS   ACCEPTED  RESOLVEDREFS\nclient     timeouts  shop/web  True      True\n', 'granted');
  const bad = await ambitctl(ctl, ['apply', '-f', file('bad-grant.yaml', GRANT.replace('name: web}', 'name: web, port: 80}'))]);
  t.equal(bad.code, 1);
  t.match(bad.stderr, /ReferenceGrant shop\/client-routes: spec\.to\[0\]\.port: unknown field/);
  t.equal(await ok(['delete', '-f', grant]), 'ReferenceGrant shop/client-routes deleted\n');
  t.equal(await status(), 'NAMESPACE  NAME      PARENTS   ACCEPTED  RESOLVEDREFS\nclient     timeouts  shop/web  True      False (RefNotPermitted)\n', 'revoked');
  // The grant stays for the next test to find in an agent's mesh state; the consumer route goes.
  await ok(['apply', '-f', grant]);
  await ok(['delete', '-f', file('consumer.yaml', CONSUMER)]);
});

t.test('an agent\'s watch receives the routes, decoded and validated into its mesh state', async (t) => {
  const node = 'node-r';
  const token = (await ok(['node', 'token', 'create', '--node', node])).trim();
  const creds = await joinWithToken({ controller: ctl.grpc, node, token, caFingerprint: parseJoinToken(token).caFingerprint });
  const client = new DiscoveryClient(ctl.address, controllerCredentials({ caPem: creds.bundlePem, trustDomain: 'cluster.local', keyPem: creds.keyPem, certChainPem: creds.certChainPem }), CONTROLLER_CHANNEL_OPTIONS);
  const call = client.watch(new Metadata());
  t.teardown(() => {
    call.cancel();
    client.close();
  });
  const first = await new Promise<WatchResponse>((resolve, reject) => {
    call.once('data', resolve);
    call.once('error', reject);
    call.write({ request: { $case: 'start', start: { resumeRevision: 0, certExpiresAtMs: creds.expiresAt, hboneAddress: '', scope: '', subscriptions: [] } } });
  });
  t.ok(first.snapshot, 'a snapshot');
  const mesh = new MeshState(node, 'cluster.local');
  const effect = mesh.apply({ revision: first.revision, snapshot: first.resources.map(resourceFromWire) });
  t.equal(effect.routesChanged, true);
  t.same(mesh.httpRoutes().map((r) => `${r.metadata.namespace}/${r.metadata.name}`), ['shop/canary']);
  t.same(mesh.httpRoutes()[0]?.spec.rules[0]?.backendRefs.map((b) => `${b.name}:${b.weight}`), ['web:90', 'web-canary:10']);
  t.same(mesh.grpcRoutes()[0]?.spec.rules[0]?.retry?.codes, [14], 'UNAVAILABLE as its code');
  t.same(mesh.faultInjection('shop', 'slow')?.spec.delay, { fixedDelayMs: 90_000, percentage: 10 });
  t.same(mesh.referenceGrants('shop').map((g) => g.spec.from), [[{ group: 'gateway.networking.k8s.io', kind: 'HTTPRoute', namespace: 'client' }]], 'the ReferenceGrant too');
});
