import t from 'tap';
import { Registry } from 'prom-client';
import { admitInbound, admitPlaintext } from '../../../agent/connection/admission.ts';
import { OutlierDetector } from '../../../agent/connection/outlier.ts';
import { planOutbound } from '../../../agent/connection/routing.ts';
import { ConnectionTracker } from '../../../agent/proxy/connection-tracker.ts';
import { createAgentMetrics } from '../../../agent/proxy/metrics.ts';
import { MeshState } from '../../../agent/state/mesh-state.ts';
import { createLogger } from '../../../shared/logger.ts';
import type { Service, Workload } from '../../../shared/resources/types.ts';
import { workloadId } from '../../../shared/spiffe-id.ts';
import { getTracer } from '../../../shared/tracing.ts';
import { ISTIO_STANDARD_METRICS, ISTIO_TCP_LABELS } from './fixtures/istio-standard-metrics.ts';

/**
 * The agent's Istio TCP metrics as a scrape of /metrics sees them, held to
 * Istio's own definitions (fixtures/istio-standard-metrics.ts): the names,
 * the Prometheus types, every label and nothing else, and Istio's values for
 * connections resolved and admitted the way the agent does it.
 */

const TD = 'cluster.local';
const wl = (name: string, node: string, address: string, labels: Record<string, string>): Workload => ({
  kind: 'Workload',
  metadata: { name, namespace: 'shop', labels, revision: 1 },
  spec: { serviceAccount: name, node, address, ports: [], weight: 1, locality: '', healthy: true },
});
const CLIENT = wl('client-v1', 'node-a', '10.1.0.5', { app: 'client', version: 'v1' });
const WEB = wl('web-7f9', 'node-b', '10.2.0.7', { 'app.kubernetes.io/name': 'web', 'app.kubernetes.io/version': '2.1', 'service.istio.io/canonical-revision': 'canary' });
const WEB_SVC: Service = {
  kind: 'Service',
  metadata: { name: 'web', namespace: 'shop', labels: {}, revision: 1 },
  spec: { addresses: [], ports: [{ name: 'tcp', port: 80, targetPort: 8080, appProtocol: 'tcp' }], selector: { 'app.kubernetes.io/name': 'web' } },
};

function agent(node: string) {
  const state = new MeshState(node, TD, { clusterId: 'east' });
  state.apply({ revision: 1, snapshot: [CLIENT, WEB, WEB_SVC], nodes: [{ name: 'node-a', hboneAddress: '10.1.0.1:15008' }, { name: 'node-b', hboneAddress: '10.2.0.1:15008' }] });
  const registry = new Registry();
  const common = {
    state, metrics: createAgentMetrics(registry), accessLog: createLogger({ name: 'access', level: 'silent' }), tracer: getTracer('test', '0'),
    tracker: new ConnectionTracker(), connectTimeoutMs: 1000,
  };
  return { registry, common };
}

/** Each metric family of the exposition: TYPE and its series' labels. */
function parse(text: string): Map<string, { type: string; series: Record<string, string>[] }> {
  const out = new Map<string, { type: string; series: Record<string, string>[] }>();
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) out.set(type[1]!, { type: type[2]!, series: [] });
    const sample = /^(\w+)\{(.*)\} \S+$/.exec(line);
    if (!sample) continue;
    const family = out.get(sample[1]!);
    if (!family) continue;
    const labels: Record<string, string> = {};
    for (const m of sample[2]!.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[m[1]!] = m[2]!;
    family.series.push(labels);
  }
  return out;
}

async function traffic() {
  const a = agent('node-a');
  const { record, plan } = planOutbound({ ...a.common, passthrough: 'allow', outlier: new OutlierDetector({ consecutiveFailures: 3, baseEjectionMs: 1000, maxEjectionMs: 1000, maxEjectionPercent: 50, now: Date.now }) }, { source: CLIENT, srcAddr: '10.1.0.5', host: 'web.shop', port: 80 });
  t.equal(plan.kind, 'tunnel');
  record.open();
  record.fromSource(11);
  record.toSource(22);
  record.finish();

  const b = agent('node-b');
  const admitted = admitInbound(b.common, { method: 'CONNECT', authority: '10.2.0.7:8080', forwarded: 'for=10.1.0.5', baggage: undefined, traceparent: undefined },
    { identity: workloadId(TD, 'shop', 'client-v1'), servedIdentity: workloadId(TD, 'shop', 'web-7f9').uri, remoteAddress: '10.1.0.1' });
  if (!admitted.allowed) throw new Error(`refused: ${admitted.reason}`);
  admitted.record.open();
  admitted.record.fromSource(11);
  admitted.record.toSource(22);
  admitted.record.finish();
  return { source: parse(await a.registry.metrics()), destination: parse(await b.registry.metrics()), b };
}

const TCP = Object.entries(ISTIO_STANDARD_METRICS).filter(([name]) => name.startsWith('istio_tcp_'));

t.test('every Istio TCP metric: its name, type and exactly Istio\'s labels, from both reporters', async (t) => {
  const { source, destination } = await traffic();
  for (const [reporter, families] of [['source', source], ['destination', destination]] as const) {
    for (const [name, def] of TCP) {
      const family = families.get(name);
      if (!family) {
        t.fail(`${reporter}: ${name} is missing`);
        continue;
      }
      t.equal(family.type, def.type, `${reporter}: ${name} is a ${def.type}`);
      t.equal(family.series.length, 1, `${reporter}: ${name} has the connection's series`);
      t.same(Object.keys(family.series[0]!).sort(), [...def.labels].sort(), `${reporter}: ${name} has Istio's labels, no more, no fewer`);
    }
  }
  t.same([...ISTIO_TCP_LABELS].sort(), [...ISTIO_STANDARD_METRICS.istio_tcp_sent_bytes_total.labels].sort());
});

t.test('Istio\'s values: names from labels, the full service host, the cluster, tcp, mTLS', async (t) => {
  const { source, destination } = await traffic();
  const common = {
    source_workload: 'client-v1', source_workload_namespace: 'shop', source_principal: 'spiffe://cluster.local/ns/shop/sa/client-v1',
    source_app: 'client', source_version: 'v1', source_canonical_service: 'client', source_canonical_revision: 'v1', source_cluster: 'east',
    destination_workload: 'web-7f9', destination_workload_namespace: 'shop', destination_principal: 'spiffe://cluster.local/ns/shop/sa/web-7f9',
    destination_app: 'web', destination_version: '2.1', destination_canonical_service: 'web', destination_canonical_revision: 'canary', destination_cluster: 'east',
    destination_service: 'web.shop.svc.cluster.local', destination_service_name: 'web', destination_service_namespace: 'shop',
    request_protocol: 'tcp', response_flags: '-', connection_security_policy: 'mutual_tls',
  };
  t.same(source.get('istio_tcp_sent_bytes_total')!.series[0], { reporter: 'source', ...common }, 'the source agent');
  t.same(destination.get('istio_tcp_sent_bytes_total')!.series[0], { reporter: 'destination', ...common }, 'the destination agent, the same but the reporter');
});

t.test('what is not known is "unknown", as Istio reports it; plaintext is connection_security_policy none', async (t) => {
  const { b } = await traffic();
  const b2 = agent('node-b');
  const admitted = admitPlaintext({ ...b2.common, mode: 'permissive' }, { remote: { address: '10.9.9.9', port: 4000 }, local: { address: '10.2.0.1', port: 15006 }, destination: { address: '10.2.0.7', port: 8080 } });
  if (!admitted.allowed) throw new Error(`refused: ${admitted.reason}`);
  admitted.record.open();
  admitted.record.finish();
  const series = parse(await b2.registry.metrics()).get('istio_tcp_connections_opened_total')!.series[0];
  t.match(series, {
    reporter: 'destination', source_workload: 'unknown', source_workload_namespace: 'unknown', source_principal: 'unknown', source_app: 'unknown', source_version: 'unknown',
    source_canonical_service: 'unknown', source_canonical_revision: 'unknown', source_cluster: 'unknown',
    destination_workload: 'web-7f9', destination_service: 'web.shop.svc.cluster.local', connection_security_policy: 'none', request_protocol: 'tcp',
  });
  t.ok(b, 'the mTLS agent of the first test is untouched');
});

t.test('passthrough: destination_service_name PassthroughCluster, the rest unknown (Istio\'s client side)', async (t) => {
  const a = agent('node-a');
  const { record, plan } = planOutbound({ ...a.common, passthrough: 'allow', outlier: new OutlierDetector({ consecutiveFailures: 3, baseEjectionMs: 1000, maxEjectionMs: 1000, maxEjectionPercent: 50, now: Date.now }) }, { source: CLIENT, srcAddr: '10.1.0.5', host: '192.0.2.1', port: 443 });
  t.equal(plan.kind, 'direct');
  record.open();
  record.finish();
  t.match(parse(await a.registry.metrics()).get('istio_tcp_connections_opened_total')!.series[0], {
    destination_service: 'unknown', destination_service_name: 'PassthroughCluster', destination_service_namespace: 'unknown',
    destination_workload: 'unknown', destination_principal: 'unknown', connection_security_policy: 'none', source_app: 'client',
  });
});
