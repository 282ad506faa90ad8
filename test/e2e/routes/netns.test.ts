/**
 * The same kind of route with transparent capture: three hosts built from
 * network namespaces (test/e2e/netns/topology.ts, named routes-e2e-…), each
 * agent capturing traffic with iptables, and unmodified clients — curl —
 * calling a Service's virtual address: on h1 from a pod (captured by its
 * source address), on h3, a VM, from a process of the client workload's
 * registered uid (captured by owner, `--capture-mode vm`). An HTTPRoute on
 * that Service sends requests with `x-version: v2` to web-v2 and splits the
 * rest 90/10 over web-v1 and web-v2, so the answers show that the client's
 * own agent decided each request by the route.
 *
 *   h1p1 client     app/client     10.201.1.11
 *   h3   vm-client  app/vm-client  10.200.0.13, uid 64301 (VM capture)
 *   h2p1 web-v1     mesh/web       10.201.2.11 :8080   app=web version=v1
 *   h2p2 web-v2     mesh/web       10.201.2.12 :8080   app=web version=v2
 *
 * As root this must run; without root or `ip netns` it fails, saying why.
 */
import t from 'tap';
import { join } from 'node:path';
import { eventually, metricValue, ROOT } from '../harness.ts';
import { run } from '../netns/processes.ts';
import { hostAddress, podAddress, requireNetns, Topology } from '../netns/topology.ts';
import { tally } from '../http-apps.ts';

const NAME_SERVER = join(ROOT, 'test/e2e/routes/fixtures/name-server.ts');
const VIP = '10.96.0.20';
const CLIENT = podAddress(1, 1);
const WEB_V1 = podAddress(2, 1);
const WEB_V2 = podAddress(2, 2);
const REQUESTS = 200;
const VM_CLIENT_UID = 64301;

const RESOURCES = `
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: client, namespace: app, labels: {app: client}}
spec: {serviceAccount: client, node: h1, address: ${CLIENT}}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: vm-client, namespace: app, labels: {app: vm-client}}
spec: {serviceAccount: vm-client, node: h3, address: ${hostAddress(3)}, uid: ${VM_CLIENT_UID}}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: web-v1, namespace: mesh, labels: {app: web, version: v1}}
spec: {serviceAccount: web, node: h2, address: ${WEB_V1}, ports: [8080]}
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: {name: web-v2, namespace: mesh, labels: {app: web, version: v2}}
spec: {serviceAccount: web, node: h2, address: ${WEB_V2}, ports: [8080]}
---
apiVersion: ambit.dev/v1alpha1
kind: Service
metadata: {name: web, namespace: mesh}
spec:
  addresses: [${VIP}]
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: ambit.dev/v1alpha1
kind: Service
metadata: {name: web-v1, namespace: mesh}
spec:
  selector: {app: web, version: v1}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: ambit.dev/v1alpha1
kind: Service
metadata: {name: web-v2, namespace: mesh}
spec:
  selector: {app: web, version: v2}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
    - matches: [{headers: [{name: x-version, value: v2}]}]
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-rule, value: by-header}]}}]
      backendRefs: [{name: web-v2, port: 80}]
    - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-rule, value: split}]}}]
      backendRefs:
        - {name: web-v1, port: 80, weight: 90}
        - {name: web-v2, port: 80, weight: 10}
`;

let preflight: Error | undefined;
try {
  await requireNetns();
} catch (err) {
  preflight = err as Error;
}
if (preflight) {
  t.fail(`the routes netns e2e test cannot run on this machine: ${preflight.message}`);
  t.end();
} else {
  await main();
}

async function main(): Promise<void> {
  const topo = new Topology({ prefix: `routes-e2e-${process.pid}` });
  t.teardown(() => topo.destroy());
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.once(sig, () => void topo.destroy().finally(() => process.kill(process.pid, sig)));
  }

  t.before(async () => {
    await topo.build({ hosts: 3, pods: { 1: 1, 2: 2 } });
    // A VM's own processes reach a Service address through its default route; the agent's owner-match capture redirects them.
    await run(['ip', '-n', topo.host(3).ns, 'route', 'add', '10.96.0.0/16', 'dev', 'eth0']);
    await topo.startController();
    await topo.ambitctlOk(['apply', '-f', '-'], RESOURCES);
    const servers = [topo.spawn(topo.podNs(2, 1), NAME_SERVER, [WEB_V1, '8080', 'web-v1']), topo.spawn(topo.podNs(2, 2), NAME_SERVER, [WEB_V2, '8080', 'web-v2'])];
    await Promise.all(servers.map((s) => s.waitForOut((l) => l.listening === true, 30_000, 'the name server listening')));
    await Promise.all([1, 2, 3].map((h) => topo.startAgent(h, { join: true, ...(h === 3 ? { captureMode: 'vm' as const } : {}) })));
    for (const h of [1, 2, 3]) {
      await eventually(async () => topo.ready(h), `h${h} ready`, 30_000);
      await eventually(async () => {
        const nodes = (await topo.configDump(h)).nodes as { name: string }[];
        return ['h1', 'h2', 'h3'].every((n) => nodes.some((x) => x.name === n));
      }, `h${h} knows every node's HBONE address`, 30_000);
    }
  });

  /**
   * `count` GETs by curl (one connection each) in the client pod, or on the
   * VM as the vm-client's uid: "<server> <x-rule it saw>", or the status
   * when not 200.
   */
  const curl = async (count: number, headers: string[] = [], from: 'pod' | 'vm' = 'pod'): Promise<string[]> => {
    const script = `for i in $(seq ${count}); do curl -s --max-time 5 ${headers.map((h) => `-H '${h}'`).join(' ')} -w ' %{http_code}\\n' http://${VIP}/; done`;
    const where = from === 'pod'
      ? ['ip', 'netns', 'exec', topo.podNs(1, 1)]
      : ['ip', 'netns', 'exec', topo.host(3).ns, 'setpriv', `--reuid=${VM_CLIENT_UID}`, `--regid=${VM_CLIENT_UID}`, '--clear-groups'];
    const r = await run([...where, 'sh', '-c', script], { timeoutMs: 120_000 });
    return r.stdout.split('\n').filter(Boolean).map((line) => {
      const i = line.lastIndexOf(' ');
      const status = line.slice(i + 1);
      if (status !== '200') return status;
      try {
        const a = JSON.parse(line.slice(0, i)) as { name: string; headers: Record<string, string> };
        return `${a.name} ${a.headers['x-rule'] ?? '(no rule)'}`;
      } catch {
        return `unparsable ${line}`;
      }
    });
  };

  t.test('captured: the client\'s agent decides each request by the HTTPRoute (header match, then a 90/10 split)', async (t) => {
    await eventually(async () => (await curl(1))[0]?.endsWith(' split'), 'the route applies to captured requests', 30_000);
    t.same(tally(await curl(20, ['x-version: v2'])), { 'web-v2 by-header': 20 }, 'x-version: v2 → web-v2, every time, by the header rule');
    const got = tally(await curl(REQUESTS));
    t.same(Object.keys(got).sort(), ['web-v1 split', 'web-v2 split'], `the rest go to both versions by the split rule (${JSON.stringify(got)})`);
    const split = { 'web-v1': got['web-v1 split'] ?? 0, 'web-v2': got['web-v2 split'] ?? 0 };
    const v2 = (split['web-v2'] * 100) / REQUESTS;
    t.ok(v2 >= 3 && v2 <= 20, `web-v2 got ${v2} % of ${REQUESTS} (the route's 10 %; loose over ${REQUESTS} requests)`);
    // The data plane hands its request counts to the agent once a second: wait for this burst's.
    const count = (text: string, backend: string): number => metricValue(text, 'istio_requests_total', { reporter: 'source', destination_service: `${backend}.mesh.svc.cluster.local` });
    const m = await eventually(async () => {
      const text = await topo.metrics(1);
      return count(text, 'web-v1') >= split['web-v1'] && count(text, 'web-v2') >= 20 + split['web-v2'] ? text : undefined;
    }, 'h1 reports the requests by backend', 15_000).catch(() => '');
    t.ok(count(m, 'web-v1') >= split['web-v1'], `h1 reports web-v1's requests (${count(m, 'web-v1')})`);
    t.ok(count(m, 'web-v2') >= 20 + split['web-v2'], 'and web-v2\'s, on the client\'s agent (h1)');
  });

  t.test('on a VM (capture by the workload\'s uid): the same route decides the requests of the VM\'s client', async (t) => {
    await eventually(async () => (await curl(1, [], 'vm'))[0]?.endsWith(' split'), 'the route applies to the VM client\'s requests', 30_000);
    t.same(tally(await curl(10, ['x-version: v2'], 'vm')), { 'web-v2 by-header': 10 }, 'x-version: v2 → web-v2, by the header rule');
    const got = tally(await curl(60, [], 'vm'));
    t.ok(Object.keys(got).every((k) => k === 'web-v1 split' || k === 'web-v2 split') && (got['web-v1 split'] ?? 0) > (got['web-v2 split'] ?? 0),
      `the rest by the 90/10 split rule (${JSON.stringify(got)})`);
    // The data plane hands its request counts to the agent once a second: wait for this burst's.
    const toV2 = 10 + (got['web-v2 split'] ?? 0);
    const reported = await eventually(async () => {
      const n = metricValue(await topo.metrics(3), 'istio_requests_total', { reporter: 'source', source_workload: 'vm-client', destination_service: 'web-v2.mesh.svc.cluster.local' });
      return n >= toV2 ? n : undefined;
    }, 'h3 reports the VM client\'s requests to web-v2', 15_000).catch(() => 0);
    t.ok(reported >= toV2, `h3 (the VM's agent) reports them as the source, by backend (${reported} to web-v2, ${toV2} sent)`);
  });
}
