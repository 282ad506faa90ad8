/**
 * HTTPRoute, GRPCRoute and FaultInjection through ambitctl and a real
 * controller (SQLite store): apply -f, get with status, delete -f, and a bad
 * file that changes nothing.
 */
import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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
  delay: {fixedDelay: 100ms, percentage: 10}
`;

t.test('apply -f, delete -f, and a bad file that changes nothing', async (t) => {
  ctl = await startController(join(dir, 'ctl'), [], HOST);
  await ok(['apply', '-f', file('mesh.yaml', MESH)]);
  const routes = file('routes.yaml', ROUTES);
  t.equal(await ok(['apply', '-f', routes]), 'HTTPRoute shop/canary created\nGRPCRoute shop/rpc created\nFaultInjection shop/slow created\n');
  t.equal(await ok(['apply', '-f', routes]), 'HTTPRoute shop/canary unchanged\nGRPCRoute shop/rpc unchanged\nFaultInjection shop/slow unchanged\n', 'stored as applied');

  const bad = file('bad.yaml', ROUTES.replace('weight: 10}', 'weight: 10}, {name: other, port: 80, kind: Gateway}').replace('fixedDelay: 100ms', 'fixedDelay: 100'));
  const r = await ambitctl(ctl, ['apply', '-f', bad]);
  t.equal(r.code, 1, 'a bad file fails');
  t.match(r.stderr, /bad\.yaml#1 HTTPRoute shop\/canary: spec\.rules\[0\]\.backendRefs\[2\]\.kind: must be Service/);
  t.match(r.stderr, /AMBIT_ERR_RESOURCE_INVALID/);
  t.equal(await ok(['apply', '-f', routes]), 'HTTPRoute shop/canary unchanged\nGRPCRoute shop/rpc unchanged\nFaultInjection shop/slow unchanged\n', 'the bad file changed nothing');

  t.equal(await ok(['delete', '-f', routes]), 'HTTPRoute shop/canary deleted\nGRPCRoute shop/rpc deleted\nFaultInjection shop/slow deleted\n');
  t.equal(await ok(['apply', '-f', routes]), 'HTTPRoute shop/canary created\nGRPCRoute shop/rpc created\nFaultInjection shop/slow created\n', 'gone after delete');
});
