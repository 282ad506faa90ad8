import t from 'tap';
import { Registry } from 'prom-client';
import { ISTIO_HISTOGRAM_BUCKETS, REQUEST_LABELS, RequestMetrics, requestTelemetry } from '../../../agent/proxy/request-metrics.ts';
import { MeshState } from '../../../agent/state/mesh-state.ts';
import { DataplaneMessage, type RequestSeries, type RequestStats } from '../../../shared/proto/gen/dataplane.ts';
import type { Workload } from '../../../shared/resources/types.ts';
import { ISTIO_HTTP_LABELS, ISTIO_STANDARD_METRICS } from './fixtures/istio-standard-metrics.ts';

/**
 * The data plane's request reports (aggregated per series in
 * dataplane/src/l7/metrics.rs) → Istio's request metrics as a scrape of
 * /metrics sees them, held to Istio's definitions.
 */

const wl = (name: string, labels: Record<string, string>): Workload => ({
  kind: 'Workload',
  metadata: { name, namespace: 'shop', labels, revision: 1 },
  spec: { serviceAccount: name, node: 'node-b', address: '10.0.0.7', ports: [], weight: 1, locality: '', healthy: true },
});

function rig() {
  const state = new MeshState('node-b', 'cluster.local');
  state.apply({ revision: 1, snapshot: [wl('client', { app: 'client', version: 'v2' }), wl('web-1', { app: 'web', version: 'v1' })] });
  const registry = new Registry();
  return { registry, metrics: new RequestMetrics(registry, state) };
}

const NB = ISTIO_HISTOGRAM_BUCKETS.length + 1;
/** Per-bucket counts with `n` at bucket index `i`. */
const at = (...pairs: [number, number][]): number[] => {
  const b = new Array<number>(NB).fill(0);
  for (const [i, n] of pairs) b[i] = n;
  return b;
};

const SERIES: RequestSeries = {
  id: 7, destinationSide: true, protocol: 'http', status: 200, grpcStatus: '', responseFlags: '-', service: 'web.shop.svc.cluster.local',
  source: { identity: 'spiffe://cluster.local/ns/shop/sa/client', workload: 'client', namespace: 'shop' },
  destination: { identity: 'spiffe://cluster.local/ns/shop/sa/web-1', workload: 'web-1', namespace: 'shop' },
  mutualTls: true,
};

/** name → [{labels, value}] from the exposition text, with each family's TYPE. */
function parse(text: string) {
  const types = new Map<string, string>();
  const samples: { name: string; labels: Record<string, string>; value: number }[] = [];
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) types.set(type[1]!, type[2]!);
    const m = /^(\w+)\{(.*)\} (\S+)$/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const kv of m[2]!.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[kv[1]!] = kv[2]!;
    samples.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return { types, samples };
}

t.test('the buckets sent to the data plane are Istio\'s, for all three histograms', async (t) => {
  const rt = requestTelemetry(true);
  t.same(rt.durationBoundsMs, [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000]);
  t.same(rt.bytesBounds, rt.durationBoundsMs);
  t.equal(rt.accessLog, true);
  t.equal(requestTelemetry(false).accessLog, false);
  t.same([...REQUEST_LABELS].sort(), [...ISTIO_HTTP_LABELS].sort(), 'Istio\'s HTTP labels');
});

t.test('every Istio request metric: name, type, exactly Istio\'s labels (and le), Istio\'s values', async (t) => {
  const { registry, metrics } = rig();
  // Through the wire format, as the data plane sends it.
  const wire = DataplaneMessage.encode({ msg: { $case: 'requests', requests: { series: [SERIES], deltas: [{ id: 7, count: 3, durationBuckets: at([2, 2], [4, 1]), durationSumMs: 21.5, requestBytesBuckets: at([0, 3]), requestBytesSum: 0, responseBytesBuckets: at([5, 3]), responseBytesSum: 120 }], dropped: 0, retries: [] } } }).finish();
  const m = DataplaneMessage.decode(wire).msg;
  if (m?.$case !== 'requests') throw new Error('not a requests message');
  metrics.add(m.requests);
  const { types, samples } = parse(await registry.metrics());
  for (const [name, def] of Object.entries(ISTIO_STANDARD_METRICS).filter(([n]) => !n.startsWith('istio_tcp_'))) {
    t.equal(types.get(name), def.type, `${name} is a ${def.type}`);
    const own = samples.filter((s) => s.name === name || s.name.startsWith(`${name}_`));
    t.ok(own.length > 0, `${name} has samples`);
    for (const s of own) {
      const expected = s.name.endsWith('_bucket') ? [...def.labels, 'le'] : [...def.labels];
      t.same(Object.keys(s.labels).sort(), expected.sort(), `${s.name}: Istio's labels`, { diagnostic: false });
    }
  }
  const count = samples.find((s) => s.name === 'istio_requests_total')!;
  t.equal(count.value, 3);
  t.match(count.labels, {
    reporter: 'destination', source_workload: 'client', source_app: 'client', source_version: 'v2', source_canonical_service: 'client', source_canonical_revision: 'v2',
    source_principal: 'spiffe://cluster.local/ns/shop/sa/client', source_cluster: 'Kubernetes',
    destination_workload: 'web-1', destination_app: 'web', destination_version: 'v1', destination_service: 'web.shop.svc.cluster.local',
    destination_service_name: 'web', destination_service_namespace: 'shop', request_protocol: 'http', response_code: '200', grpc_response_status: '',
    response_flags: '-', connection_security_policy: 'mutual_tls',
  });
  const bucket = (name: string, le: string) => samples.find((s) => s.name === `${name}_bucket` && s.labels.le === le)?.value;
  t.same(['5', '10', '25', '50', '+Inf'].map((le) => bucket('istio_request_duration_milliseconds', le)), [2, 2, 3, 3, 3], 'duration buckets are cumulative by le');
  t.equal(samples.find((s) => s.name === 'istio_request_duration_milliseconds_sum')!.value, 21.5);
  t.equal(samples.find((s) => s.name === 'istio_request_duration_milliseconds_count')!.value, 3);
  t.equal(bucket('istio_request_bytes', '0.5'), 3, 'empty bodies in the first bucket');
  t.equal(bucket('istio_response_bytes', '25'), 0);
  t.equal(bucket('istio_response_bytes', '50'), 3, 'the bucket index is the bound\'s (0.5, 1, 5, 10, 25, 50, …)');
  t.equal(samples.find((s) => s.name === 'istio_response_bytes_sum')!.value, 120);
});

t.test('reports add up; a series is declared once; a new data plane declares its own', async (t) => {
  const { registry, metrics } = rig();
  const grpc: RequestSeries = { ...SERIES, id: 8, destinationSide: false, protocol: 'grpc', grpcStatus: '14', status: 200 };
  const delta = (id: number, count: number): RequestStats['deltas'][number] => ({ id, count, durationBuckets: at([0, count]), durationSumMs: 0.1 * count, requestBytesBuckets: at([0, count]), requestBytesSum: 0, responseBytesBuckets: at([0, count]), responseBytesSum: 0 });
  metrics.add({ series: [SERIES, grpc], deltas: [delta(7, 1), delta(8, 2)], dropped: 0, retries: [] });
  metrics.add({ series: [], deltas: [delta(7, 4), delta(99, 1000)], dropped: 5, retries: [] });
  let { samples } = parse(await registry.metrics());
  const total = (labels: Record<string, string>) => samples.filter((s) => s.name === 'istio_requests_total' && Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((a, s) => a + s.value, 0);
  t.equal(total({ reporter: 'destination', request_protocol: 'http' }), 5, 'a later report adds to the series');
  t.equal(total({ reporter: 'source', request_protocol: 'grpc', grpc_response_status: '14' }), 2, 'gRPC status in grpc_response_status');
  t.equal(total({}), 7, 'a delta for an undeclared series is not counted');
  t.equal(samples.find((s) => s.name === 'istio_request_duration_milliseconds_count' && s.labels.reporter === 'destination')!.value, 5);
  t.match(await registry.getSingleMetricAsString('ambit_requests_uncounted_total'), /ambit_requests_uncounted_total 5/, 'requests past the data plane\'s series cap are counted');

  metrics.attached();
  metrics.add({ series: [], deltas: [delta(7, 1)], dropped: 0, retries: [] });
  ({ samples } = parse(await registry.metrics()));
  t.equal(total({}), 7, 'after an attach, ids of the earlier data plane mean nothing until declared');
  metrics.add({ series: [{ ...SERIES, id: 1, status: 503, responseFlags: 'UO' }], deltas: [delta(1, 2)], dropped: 0, retries: [] });
  ({ samples } = parse(await registry.metrics()));
  t.equal(total({ response_code: '503', response_flags: 'UO' }), 2);
});

t.test('unknown peers are "unknown"; the namespace of an unnamed peer comes from its identity', async (t) => {
  const { metrics } = rig();
  const labels = metrics.labelsOf({ ...SERIES, source: { identity: 'spiffe://cluster.local/ns/other/sa/x', workload: '', namespace: '' }, service: '', mutualTls: false });
  t.match(labels, {
    source_workload: 'unknown', source_workload_namespace: 'other', source_app: 'unknown', source_principal: 'spiffe://cluster.local/ns/other/sa/x',
    destination_service: 'unknown', destination_service_name: 'unknown', connection_security_policy: 'none',
  });
});

t.test('routes\' retries, budget refusals and mirrors, by destination_service, added up across reports', async (t) => {
  const { registry, metrics } = rig();
  const wire = DataplaneMessage.encode({ msg: { $case: 'requests', requests: { series: [], deltas: [], dropped: 0, retries: [
    { service: 'web.shop.svc.cluster.local', retried: 4, budgetExhausted: 2, mirrored: 0 },
    { service: 'shadow.shop.svc.cluster.local', retried: 0, budgetExhausted: 0, mirrored: 9 },
  ] } } }).finish();
  const m = DataplaneMessage.decode(wire).msg;
  if (m?.$case !== 'requests') throw new Error('not a requests message');
  metrics.add(m.requests);
  metrics.add({ series: [], deltas: [], dropped: 0, retries: [{ service: 'web.shop.svc.cluster.local', retried: 1, budgetExhausted: 3, mirrored: 0 }] });
  const { types, samples } = parse(await registry.metrics());
  const values = (name: string) => samples.filter((s) => s.name === name).map((s) => [s.labels.destination_service, s.value]);
  t.same(values('ambit_http_retries_total'), [['web.shop.svc.cluster.local', 5]]);
  t.same(values('ambit_http_retry_budget_exhausted_total'), [['web.shop.svc.cluster.local', 5]]);
  t.same(values('ambit_http_mirrored_requests_total'), [['shadow.shop.svc.cluster.local', 9]], 'no series for a service nothing happened to');
  for (const name of ['ambit_http_retries_total', 'ambit_http_retry_budget_exhausted_total', 'ambit_http_mirrored_requests_total']) t.equal(types.get(name), 'counter', name);
  t.ok(samples.filter((s) => s.name.startsWith('ambit_http_')).every((s) => Object.keys(s.labels).join() === 'destination_service'), 'labelled by destination_service alone');
});
