import { randomFillSync } from 'node:crypto';
import { ProxyTracerProvider, trace, ROOT_CONTEXT, SpanKind, type Span, type Tracer, type SpanContext } from '@opentelemetry/api';
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace';
import type { Logger } from './logger.ts';
import type { TracingSettings } from './tracing-config.ts';

export type { Tracer, Span };
export { SpanKind };

/**
 * Tracing through @opentelemetry/api: one span per tunnelled connection, the
 * W3C traceparent carried in the CONNECT request (DESIGN §7).
 *
 * Without an OpenTelemetry SDK registered the API hands out non-recording
 * spans with an all-zero context, which would put an invalid traceparent on
 * the wire; so when the tracer gives no valid context we make real ids and
 * wrap them, and every hop still joins one trace that an SDK (or any log
 * reader) can follow.
 */
const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

export function parseTraceparent(header: string | undefined): SpanContext | undefined {
  const m = header ? TRACEPARENT.exec(header.trim()) : null;
  if (!m || /^0+$/.test(m[1]!) || /^0+$/.test(m[2]!)) return undefined;
  return { traceId: m[1]!, spanId: m[2]!, traceFlags: parseInt(m[3]!, 16), isRemote: true };
}

export function formatTraceparent(sc: SpanContext): string {
  return `00-${sc.traceId}-${sc.spanId}-${(sc.traceFlags & 0xff).toString(16).padStart(2, '0')}`;
}

export interface ConnectionSpan {
  readonly span: Span;
  readonly context: SpanContext;
  readonly traceparent: string;
}

/**
 * Random bytes for trace and span ids, drawn from a pool refilled 4 KiB at a
 * time: one randomFillSync per 170 connections instead of two randomBytes
 * calls (and buffers) per connection.
 */
const ID_POOL = Buffer.alloc(4096);
let idPoolOffset = ID_POOL.length;
function randomHex(bytes: number): string {
  if (idPoolOffset + bytes > ID_POOL.length) {
    randomFillSync(ID_POOL);
    idPoolOffset = 0;
  }
  const hex = ID_POOL.toString('hex', idPoolOffset, idPoolOffset + bytes);
  idPoolOffset += bytes;
  return hex;
}

/** Starts a connection span, child of `parent` when given (the CONNECT's traceparent), else a new trace. */
export function startConnectionSpan(
  tracer: Tracer,
  name: string,
  kind: SpanKind,
  parent: SpanContext | undefined,
  attributes: Record<string, string | number>,
): ConnectionSpan {
  const parentCtx = parent ? trace.setSpanContext(ROOT_CONTEXT, parent) : ROOT_CONTEXT;
  let span = tracer.startSpan(name, { kind, attributes }, parentCtx);
  let sc = span.spanContext();
  // The no-op API hands a child the parent's own context (same span id, isRemote):
  // that is no new span either.
  if (!trace.isSpanContextValid(sc) || (parent !== undefined && sc.spanId === parent.spanId)) {
    sc = { traceId: parent?.traceId ?? randomHex(16), spanId: randomHex(8), traceFlags: parent?.traceFlags ?? 1 };
    span = trace.wrapSpanContext(sc);
  }
  return { span, context: sc, traceparent: formatTraceparent(sc) };
}

/** The OpenTelemetry API's tracer for a component (a no-op until an SDK is registered). */
export function getTracer(name: string, version: string): Tracer {
  return trace.getTracer(name, version);
}

/** What a process's resource says of it beyond service.name (DESIGN §7: node, mesh). */
export interface TracingResource {
  readonly serviceVersion: string;
  /** The node (host) this process runs on. */
  readonly node?: string;
  /** The mesh: its SPIFFE trust domain. */
  readonly trustDomain?: string;
  /** This process's own SPIFFE identity (the agent's node identity). */
  readonly instance?: string;
}

/**
 * A process's tracing: the tracer its spans are made with and, when export
 * is on, the SDK behind it (a TracerProvider with a batch span processor and
 * the OTLP exporter). Built once in app.ts and passed down; nothing is
 * registered globally.
 */
export interface Tracing {
  readonly enabled: boolean;
  readonly tracer: Tracer;
  /**
   * Exports spans made elsewhere (the data plane) through the same batch
   * processor and exporter, ids and parents as they were made. Only sampled
   * spans are exported; does nothing when export is off.
   */
  exportFinished(spans: readonly ReadableSpan[]): void;
  /** The resource and scope spans from exportFinished are given (so they read as this process's). */
  readonly resource: ReadableSpan['resource'] | undefined;
  /** Sends what is queued and stops exporting (graceful shutdown). */
  shutdown(): Promise<void>;
}

/** Tracing that exports nothing: the default. It loads no SDK and keeps no state. */
export function disabledTracing(name: string, version: string): Tracing {
  return {
    enabled: false,
    tracer: new ProxyTracerProvider().getTracer(name, version),
    exportFinished: () => undefined,
    resource: undefined,
    shutdown: async () => undefined,
  };
}

/** An exporter that says when an export fails: without it the SDK drops the batch silently. */
function loggingExporter(inner: SpanExporter, logger: Logger, url: string): SpanExporter {
  let failing = false;
  return {
    export: (spans, done) => inner.export(spans, (result) => {
      // Logged once per outage, not once per batch.
      if (result.code !== 0 && !failing) logger.warn({ url, err: result.error?.message, spans: spans.length }, 'trace export failed; spans are dropped until the collector answers');
      if (result.code === 0 && failing) logger.info({ url }, 'trace export works again');
      failing = result.code !== 0;
      done(result);
    }),
    shutdown: () => inner.shutdown(),
    forceFlush: () => inner.forceFlush?.() ?? Promise.resolve(),
  };
}

/**
 * Builds the SDK from `settings`. The SDK and exporter modules are loaded
 * only when export is on: an agent that does not trace pays nothing for them.
 * `exporter` replaces the OTLP exporter (tests).
 */
export async function createTracing(settings: TracingSettings, name: string, res: TracingResource, deps: { logger: Logger; exporter?: SpanExporter }): Promise<Tracing> {
  if (!settings.enabled) return disabledTracing(name, res.serviceVersion);
  const sdk = await import('@opentelemetry/sdk-trace');
  const { resourceFromAttributes } = await import('@opentelemetry/resources');
  const attrs: Record<string, string> = {
    ...settings.resourceAttributes,
    'service.name': settings.serviceName,
    'service.version': res.serviceVersion,
  };
  if (res.node !== undefined) attrs['ambit.node'] = res.node;
  if (res.trustDomain !== undefined) attrs['ambit.mesh'] = res.trustDomain;
  if (res.instance !== undefined) attrs['service.instance.id'] = res.instance;
  const resource = resourceFromAttributes(attrs);
  const ratio = new sdk.TraceIdRatioBasedSampler(settings.ratio);
  const root = {
    always_on: new sdk.AlwaysOnSampler(), always_off: new sdk.AlwaysOffSampler(), traceidratio: ratio,
    parentbased_always_on: new sdk.ParentBasedSampler({ root: new sdk.AlwaysOnSampler() }),
    parentbased_always_off: new sdk.ParentBasedSampler({ root: new sdk.AlwaysOffSampler() }),
    parentbased_traceidratio: new sdk.ParentBasedSampler({ root: ratio }),
  }[settings.sampler];
  let exporter = deps.exporter;
  if (exporter === undefined) {
    if (settings.protocol === 'grpc') {
      const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-grpc');
      exporter = new OTLPTraceExporter({ url: settings.url });
    } else {
      const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-proto');
      exporter = new OTLPTraceExporter({ url: settings.url });
    }
  }
  const processor = new sdk.BatchSpanProcessor({ exporter: loggingExporter(exporter, deps.logger, settings.url), scheduledDelayMillis: settings.exportDelayMs });
  const provider = new sdk.TracerProvider({ resource, sampler: root, spanProcessors: [processor] });
  deps.logger.info({ protocol: settings.protocol, url: settings.url, sampler: settings.sampler, serviceName: settings.serviceName }, 'exporting traces (OTLP)');
  return {
    enabled: true,
    tracer: provider.getTracer(name, res.serviceVersion),
    // Straight into the batch processor: the spans keep the ids and parents
    // they were made with, where a tracer would make new ones.
    exportFinished: (spans) => {
      for (const s of spans) processor.onEnd(s);
    },
    resource,
    // A collector that is down was already reported by loggingExporter; a
    // stop must not fail over spans it could not send.
    shutdown: () => provider.shutdown().catch((err: unknown) => deps.logger.debug({ err }, 'trace export at shutdown failed')),
  };
}
