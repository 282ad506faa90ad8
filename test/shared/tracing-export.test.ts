import t from 'tap';
import { SpanKind, TraceFlags } from '@opentelemetry/api';
import { createLogger } from '../../shared/logger.ts';
import { createTracing, formatTraceparent, parseTraceparent, startConnectionSpan } from '../../shared/tracing.ts';
import { tracingSettings, type TracingSettings } from '../../shared/tracing-config.ts';
import { startOtlpGrpcReceiver, startOtlpHttpReceiver } from '../e2e/otlp-receiver.ts';

// This file's loopback block (docs: tests use their own 127.0.X.0/24).
const HOST = '127.0.124.10';
const logger = createLogger({ name: 'test', level: 'silent' });
const RES = { serviceVersion: '9.9.9', node: 'node-a', trustDomain: 'mesh.example', instance: 'spiffe://mesh.example/ambit/node/node-a' };

function settings(over: Partial<Parameters<typeof tracingSettings>[0]>): TracingSettings {
  return tracingSettings({
    tracesExporter: 'otlp', otlpEndpoint: undefined, otlpTracesEndpoint: undefined, otlpProtocol: 'http/protobuf', tracesSampler: 'parentbased_always_on',
    tracesSamplerArg: undefined, tracesServiceName: undefined, tracesResourceAttributes: undefined, tracesExportDelay: 50, ...over,
  }, 'ambit-agent');
}

t.test('off: no SDK, spans record nothing and export nothing', async (t) => {
  const tracing = await createTracing(settings({ tracesExporter: 'none' }), 'ambit-agent', RES, { logger });
  t.equal(tracing.enabled, false);
  const span = tracing.tracer.startSpan('x');
  t.equal(span.isRecording(), false, 'a non-recording span');
  t.equal(tracing.resource, undefined);
  await tracing.shutdown();
});

for (const protocol of ['http/protobuf', 'grpc'] as const) {
  t.test(`${protocol}: spans reach an OTLP receiver with the resource, parent links and attributes`, async (t) => {
    const rx = protocol === 'grpc' ? await startOtlpGrpcReceiver(HOST) : await startOtlpHttpReceiver(HOST);
    t.teardown(() => rx.close());
    const tracing = await createTracing(
      settings({ otlpProtocol: protocol, otlpEndpoint: rx.url, tracesResourceAttributes: { 'deployment.environment': 'test' } }),
      'ambit-agent', RES, { logger },
    );
    t.equal(tracing.enabled, true);
    const parent = startConnectionSpan(tracing.tracer, 'ambit.outbound', SpanKind.CLIENT, undefined, { 'ambit.destination': '10.0.0.1:80' });
    t.ok(parent.span.isRecording(), 'recording');
    const child = startConnectionSpan(tracing.tracer, 'ambit.inbound', SpanKind.SERVER, parseTraceparent(parent.traceparent), {});
    child.span.setAttribute('ambit.bytes_sent', 42);
    child.span.end();
    parent.span.end();
    // The batch processor exports on its schedule (50 ms here), not at shutdown.
    const got = await rx.waitFor((s) => (s.length >= 2 ? s : undefined), 'two spans');
    const out = got.find((s) => s.name === 'ambit.outbound')!;
    const inn = got.find((s) => s.name === 'ambit.inbound')!;
    t.equal(out.via, protocol === 'grpc' ? 'grpc' : 'http');
    t.equal(out.traceId, parent.context.traceId, 'the trace id of the traceparent sent');
    t.equal(out.spanId, parent.context.spanId, 'the span id of the traceparent sent');
    t.equal(out.parentSpanId, '', 'a root span');
    t.equal(out.kind, 3, 'client');
    t.equal(inn.traceId, out.traceId, 'one trace');
    t.equal(inn.parentSpanId, out.spanId, 'the child names its parent');
    t.equal(inn.kind, 2, 'server');
    t.equal(inn.attributes['ambit.bytes_sent'], 42);
    t.equal(out.attributes['ambit.destination'], '10.0.0.1:80');
    t.same(
      { ...out.resource, 'telemetry.sdk.language': undefined, 'telemetry.sdk.name': undefined, 'telemetry.sdk.version': undefined },
      {
        'service.name': 'ambit-agent', 'service.version': '9.9.9', 'ambit.node': 'node-a', 'ambit.mesh': 'mesh.example', 'service.instance.id': RES.instance, 'deployment.environment': 'test',
        'telemetry.sdk.language': undefined, 'telemetry.sdk.name': undefined, 'telemetry.sdk.version': undefined,
      },
      'resource: service, node, mesh, instance and the configured attributes',
    );
    t.equal(out.scope, 'ambit-agent', 'instrumentation scope');
    t.ok(out.endNs >= out.startNs && out.startNs > BigInt(Date.now() - 60_000) * 1_000_000n, 'real start and end times');
    await tracing.shutdown();
  });
}

t.test('shutdown sends what is queued', async (t) => {
  const rx = await startOtlpHttpReceiver(HOST);
  t.teardown(() => rx.close());
  const tracing = await createTracing(settings({ otlpEndpoint: rx.url, tracesExportDelay: 3_600_000 }), 'ambit-agent', RES, { logger });
  tracing.tracer.startSpan('queued').end();
  t.equal(rx.spans.length, 0, 'nothing sent before the (hour-long) schedule');
  await tracing.shutdown();
  t.equal(rx.spans.map((s) => s.name).join(), 'queued', 'sent by the shutdown');
});

t.test('samplers: always_off records nothing, but the context still propagates', async (t) => {
  const rx = await startOtlpHttpReceiver(HOST);
  t.teardown(() => rx.close());
  const tracing = await createTracing(settings({ otlpEndpoint: rx.url, tracesSampler: 'always_off' }), 'ambit-agent', RES, { logger });
  const s = startConnectionSpan(tracing.tracer, 'ambit.outbound', SpanKind.CLIENT, undefined, {});
  t.equal(s.span.isRecording(), false);
  t.ok(parseTraceparent(s.traceparent), 'still a valid traceparent');
  t.equal(s.context.traceFlags & TraceFlags.SAMPLED, 0, 'marked unsampled');
  s.span.end();
  await tracing.shutdown();
  t.equal(rx.spans.length, 0, 'nothing exported');

  const ratio = await createTracing(settings({ otlpEndpoint: rx.url, tracesSampler: 'traceidratio', tracesSamplerArg: 0 }), 'ambit-agent', RES, { logger });
  t.equal(ratio.tracer.startSpan('r').isRecording(), false, 'traceidratio 0: none');
  await ratio.shutdown();
  const parentBased = await createTracing(settings({ otlpEndpoint: rx.url, tracesSampler: 'parentbased_traceidratio', tracesSamplerArg: 0 }), 'ambit-agent', RES, { logger });
  const sampledParent = parseTraceparent(`00-${'a'.repeat(32)}-${'b'.repeat(16)}-01`);
  t.equal(startConnectionSpan(parentBased.tracer, 'c', SpanKind.SERVER, sampledParent, {}).span.isRecording(), true, 'parentbased: a sampled parent is followed even at ratio 0');
  await parentBased.shutdown();
});

t.test('exportFinished: spans made elsewhere keep their ids and parent', async (t) => {
  const rx = await startOtlpHttpReceiver(HOST);
  t.teardown(() => rx.close());
  const tracing = await createTracing(settings({ otlpEndpoint: rx.url }), 'ambit-agent', RES, { logger });
  const traceId = '0af7651916cd43dd8448eb211c80319c';
  const made = { traceId, spanId: 'b7ad6b7169203331', traceFlags: 1 };
  tracing.exportFinished([{
    name: 'ambit.request', kind: SpanKind.SERVER, spanContext: () => made,
    parentSpanContext: { traceId, spanId: '00f067aa0ba902b7', traceFlags: 1, isRemote: true },
    startTime: [1_700_000_000, 0], endTime: [1_700_000_001, 500_000_000], duration: [1, 500_000_000], ended: true,
    status: { code: 0 }, attributes: { 'http.response.status_code': 200 }, links: [], events: [],
    resource: tracing.resource!, instrumentationScope: { name: 'ambit-dataplane' },
    droppedAttributesCount: 0, droppedEventsCount: 0, droppedLinksCount: 0,
  }, {
    name: 'unsampled', kind: SpanKind.SERVER, spanContext: () => ({ ...made, spanId: 'c7ad6b7169203331', traceFlags: 0 }),
    startTime: [1_700_000_000, 0], endTime: [1_700_000_001, 0], duration: [1, 0], ended: true,
    status: { code: 0 }, attributes: {}, links: [], events: [], resource: tracing.resource!, instrumentationScope: { name: 'ambit-dataplane' },
    droppedAttributesCount: 0, droppedEventsCount: 0, droppedLinksCount: 0,
  }]);
  const [s] = await rx.waitFor((x) => (x.length > 0 ? x : undefined), 'the span');
  await tracing.shutdown();
  t.equal(rx.spans.length, 1, 'the unsampled one is not exported');
  t.same([s!.traceId, s!.spanId, s!.parentSpanId, s!.name, s!.scope], [traceId, 'b7ad6b7169203331', '00f067aa0ba902b7', 'ambit.request', 'ambit-dataplane']);
  t.equal(s!.startNs, 1_700_000_000_000_000_000n);
  t.equal(s!.endNs, 1_700_000_001_500_000_000n);
  t.equal(s!.resource['ambit.node'], 'node-a', 'with this process\'s resource');
  t.equal(formatTraceparent(made), `00-${traceId}-b7ad6b7169203331-01`);
});

t.test('a failing collector is logged once, not per batch', async (t) => {
  const lines: Record<string, unknown>[] = [];
  const log = createLogger({ name: 'test', level: 'info', destination: { write: (l: string) => void lines.push(JSON.parse(l)) } });
  const rx = await startOtlpHttpReceiver(HOST);
  const url = rx.url;
  await rx.close(); // nothing listens there now
  const tracing = await createTracing(settings({ otlpEndpoint: url }), 'ambit-agent', RES, { logger: log });
  tracing.tracer.startSpan('a').end();
  await tracing.shutdown();
  const failed = lines.filter((l) => l.msg === 'trace export failed; spans are dropped until the collector answers');
  t.equal(failed.length, 1, 'one warning');
  t.equal(failed[0]?.url, `${url}/v1/traces`);
});
