import t from 'tap';
import { createLogger } from '../../../shared/logger.ts';
import { createTracing, disabledTracing } from '../../../shared/tracing.ts';
import { tracingSettings } from '../../../shared/tracing-config.ts';
import type { Span as SpanRecord } from '../../../shared/proto/gen/dataplane.ts';
import { dataplaneSpans, dataplaneTracingConfig, readableSpan } from '../../../agent/dataplane/span-export.ts';
import { startOtlpHttpReceiver } from '../../e2e/otlp-receiver.ts';

const HOST = '127.0.124.11';
const logger = createLogger({ name: 'test', level: 'silent' });
const base = {
  tracesExporter: 'otlp', otlpEndpoint: undefined, otlpTracesEndpoint: undefined, otlpProtocol: 'http/protobuf', tracesSampler: 'parentbased_always_on',
  tracesSamplerArg: undefined, tracesServiceName: undefined, tracesResourceAttributes: undefined, tracesExportDelay: 50,
} as const;

const TRACE = '0af7651916cd43dd8448eb211c80319c';
const record = (over: Partial<SpanRecord> = {}): SpanRecord => ({
  traceId: Buffer.from(TRACE, 'hex'), spanId: Buffer.from('b7ad6b7169203331', 'hex'), parentSpanId: Buffer.from('00f067aa0ba902b7', 'hex'),
  name: 'ambit.request.inbound', kind: 1, startUnixMicros: 1_700_000_000_250_000, endUnixMicros: 1_700_000_000_253_001,
  attributes: [{ key: 'http.request.method', value: { $case: 'stringValue', stringValue: 'GET' } }, { key: 'http.response.status_code', value: { $case: 'intValue', intValue: 503 } }],
  error: true, statusMessage: 'HTTP 503', ...over,
});

t.test('the data plane samples as the agent does', async (t) => {
  const cfg = (tracesSampler: typeof base.tracesSampler | 'always_on' | 'always_off' | 'traceidratio' | 'parentbased_always_off' | 'parentbased_traceidratio', arg?: number, exporter: 'otlp' | 'none' = 'otlp') =>
    dataplaneTracingConfig(tracingSettings({ ...base, tracesExporter: exporter, tracesSampler, tracesSamplerArg: arg }, 'ambit-agent'));
  t.same(cfg('parentbased_always_on'), { enabled: true, ratio: 1, parentBased: true });
  t.same(cfg('always_on'), { enabled: true, ratio: 1, parentBased: false });
  t.same(cfg('always_off'), { enabled: true, ratio: 0, parentBased: false });
  t.same(cfg('parentbased_always_off'), { enabled: true, ratio: 0, parentBased: true });
  t.same(cfg('traceidratio', 0.1), { enabled: true, ratio: 0.1, parentBased: false });
  t.same(cfg('parentbased_traceidratio', 0.25), { enabled: true, ratio: 0.25, parentBased: true });
  t.same(cfg('parentbased_always_on', undefined, 'none'), { enabled: false, ratio: 1, parentBased: true }, 'export off: the data plane records nothing');
});

t.test('a record becomes a finished span with its own ids, parent, times and status', async (t) => {
  const tracing = await createTracing(tracingSettings(base, 'ambit-agent'), 'ambit-agent', { serviceVersion: '1', node: 'node-b' }, { logger });
  const s = readableSpan(record(), tracing.resource!);
  t.same(s.spanContext(), { traceId: TRACE, spanId: 'b7ad6b7169203331', traceFlags: 1 });
  t.same(s.parentSpanContext, { traceId: TRACE, spanId: '00f067aa0ba902b7', traceFlags: 1, isRemote: true });
  t.same(s.startTime, [1_700_000_000, 250_000_000]);
  t.same(s.endTime, [1_700_000_000, 253_001_000]);
  t.same(s.duration, [0, 3_001_000]);
  t.same(s.status, { code: 2, message: 'HTTP 503' });
  t.same(s.attributes, { 'http.request.method': 'GET', 'http.response.status_code': 503 });
  t.equal(s.kind, 1, 'server');
  t.equal(readableSpan(record({ parentSpanId: Buffer.alloc(0) }), tracing.resource!).parentSpanContext, undefined, 'a root span has no parent');
  await tracing.shutdown();
});

t.test('batches are exported over OTLP as they were made', async (t) => {
  const rx = await startOtlpHttpReceiver(HOST);
  t.teardown(() => rx.close());
  const lines: Record<string, unknown>[] = [];
  const log = createLogger({ name: 'test', level: 'info', destination: { write: (l: string) => void lines.push(JSON.parse(l)) } });
  const settings = tracingSettings({ ...base, otlpEndpoint: rx.url }, 'ambit-agent');
  const tracing = await createTracing(settings, 'ambit-agent', { serviceVersion: '1', node: 'node-b', trustDomain: 'td' }, { logger });
  const spans = dataplaneSpans(settings, tracing, log);
  spans.export({ spans: [record(), record({ spanId: Buffer.from('c7ad6b7169203331', 'hex'), name: 'ambit.request.outbound', kind: 2, error: false, statusMessage: '' })], dropped: 3 });
  const got = await rx.waitFor((s) => (s.length >= 2 ? s : undefined), 'two spans');
  const inb = got.find((s) => s.name === 'ambit.request.inbound')!;
  t.same([inb.traceId, inb.spanId, inb.parentSpanId, inb.kind, inb.scope], [TRACE, 'b7ad6b7169203331', '00f067aa0ba902b7', 2, 'ambit-dataplane'], 'ids, parent, kind (OTLP server) and scope as made');
  t.equal(inb.startNs, 1_700_000_000_250_000_000n);
  t.equal(inb.status.code, 2);
  t.equal(inb.resource['ambit.node'], 'node-b', 'under the agent\'s resource');
  t.equal(got.find((s) => s.name === 'ambit.request.outbound')?.kind, 3, 'OTLP client');
  t.equal(lines.filter((l) => l.dropped === 3).length, 1, 'what the data plane dropped is logged');
  await tracing.shutdown();
});

t.test('export off: batches are ignored', async (t) => {
  const off = disabledTracing('ambit-agent', '1');
  const settings = tracingSettings({ ...base, tracesExporter: 'none' }, 'ambit-agent');
  t.doesNotThrow(() => dataplaneSpans(settings, off, logger).export({ spans: [record()], dropped: 0 }));
});
