import { randomFillSync } from 'node:crypto';
import { trace, ROOT_CONTEXT, SpanKind, type Span, type Tracer, type SpanContext } from '@opentelemetry/api';

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
