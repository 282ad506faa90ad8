import type { HrTime, SpanKind } from '@opentelemetry/api';
import type { ReadableSpan } from '@opentelemetry/sdk-trace';
import type { Logger } from '../../shared/logger.ts';
import type { Span as SpanRecord, SpanBatch, Tracing as TracingMessage } from '../../shared/proto/gen/dataplane.ts';
import type { Tracing } from '../../shared/tracing.ts';
import type { TracingSettings } from '../../shared/tracing-config.ts';

/**
 * The data plane's request spans (dataplane/src/spans.rs), exported by this
 * agent's SDK. They are handed to the batch span processor as ReadableSpan
 * objects built from the records, not re-made through a tracer: a tracer
 * gives every span new ids, and these ids are already on the wire (in the
 * traceparent the data plane forwarded to the next hop), so the trace holds
 * together only if they are exported as they were made.
 */
export interface DataplaneSpans {
  /** What the data plane is told on every attach (`tracing`). */
  readonly config: TracingMessage;
  /** A batch it sent (`spans`). */
  export(batch: SpanBatch): void;
}

/** The data plane's sampling, from the agent's own: the same ratio and parent rule. */
export function dataplaneTracingConfig(s: TracingSettings): TracingMessage {
  const ratio = s.sampler.endsWith('traceidratio') ? s.ratio : s.sampler.endsWith('always_off') ? 0 : 1;
  return { enabled: s.enabled, ratio, parentBased: s.sampler.startsWith('parentbased_') };
}

const hrTime = (unixMicros: number): HrTime => [Math.floor(unixMicros / 1e6), (unixMicros % 1e6) * 1000];
const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

function attributes(r: SpanRecord): Record<string, string | number> {
  const out: Record<string, string | number> = {};
  for (const a of r.attributes) {
    const v = a.value;
    if (v?.$case === 'stringValue') out[a.key] = v.stringValue;
    else if (v?.$case === 'intValue') out[a.key] = v.intValue;
  }
  return out;
}

/** One record as the SDK's exporters read a finished span. */
export function readableSpan(r: SpanRecord, resource: ReadableSpan['resource']): ReadableSpan {
  const traceId = hex(r.traceId);
  // Every span the data plane sends was sampled (it records no other).
  const context = { traceId, spanId: hex(r.spanId), traceFlags: 1 };
  const start = hrTime(r.startUnixMicros);
  const end = hrTime(Math.max(r.endUnixMicros, r.startUnixMicros));
  const durationUs = Math.max(0, r.endUnixMicros - r.startUnixMicros);
  return {
    name: r.name,
    kind: r.kind as SpanKind,
    spanContext: () => context,
    ...(r.parentSpanId.length > 0 ? { parentSpanContext: { traceId, spanId: hex(r.parentSpanId), traceFlags: 1, isRemote: true } } : {}),
    startTime: start,
    endTime: end,
    duration: [Math.floor(durationUs / 1e6), (durationUs % 1e6) * 1000],
    status: r.error ? { code: 2, message: r.statusMessage } : { code: 0 },
    attributes: attributes(r),
    links: [],
    events: [],
    ended: true,
    resource,
    instrumentationScope: { name: 'ambit-dataplane' },
    droppedAttributesCount: 0,
    droppedEventsCount: 0,
    droppedLinksCount: 0,
  };
}

/** The agent's side of the data plane's spans: its config, and export of its batches through `tracing`. */
export function dataplaneSpans(settings: TracingSettings, tracing: Tracing, logger: Logger): DataplaneSpans {
  return {
    config: dataplaneTracingConfig(settings),
    export: (batch) => {
      if (batch.dropped > 0) logger.warn({ dropped: batch.dropped }, 'ambit-dataplane dropped request spans: the agent did not take them in time');
      const resource = tracing.resource;
      if (!tracing.enabled || resource === undefined) return;
      tracing.exportFinished(batch.spans.map((r) => readableSpan(r, resource)));
    },
  };
}
