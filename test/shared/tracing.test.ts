import t from 'tap';
import { trace } from '@opentelemetry/api';
import { formatTraceparent, getTracer, parseTraceparent, SpanKind, startConnectionSpan } from '../../shared/tracing.ts';

const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const SPAN = '00f067aa0ba902b7';

t.test('parseTraceparent / formatTraceparent round trip', async (t) => {
  for (const flags of ['01', '00', 'ff']) {
    const header = `00-${TRACE}-${SPAN}-${flags}`;
    const sc = parseTraceparent(header);
    t.same(sc, { traceId: TRACE, spanId: SPAN, traceFlags: parseInt(flags, 16), isRemote: true }, header);
    t.equal(formatTraceparent(sc!), header, `${header} formats back`);
  }
  t.same(parseTraceparent(`  00-${TRACE}-${SPAN}-01 `)?.traceId, TRACE, 'surrounding blanks ignored');
  t.equal(formatTraceparent({ traceId: TRACE, spanId: SPAN, traceFlags: 1 }), `00-${TRACE}-${SPAN}-01`, 'flags are two hex digits');
  t.equal(formatTraceparent({ traceId: TRACE, spanId: SPAN, traceFlags: 0x1ff }), `00-${TRACE}-${SPAN}-ff`, 'flags are one byte');
});

t.test('parseTraceparent refuses invalid headers', async (t) => {
  const bad = [
    undefined, '', 'garbage',
    `00-${'0'.repeat(32)}-${SPAN}-01`, // all-zero trace id
    `00-${TRACE}-${'0'.repeat(16)}-01`, // all-zero span id
    `ff-${TRACE}-${SPAN}-01`, // version ff is invalid
    `0-${TRACE}-${SPAN}-01`, `000-${TRACE}-${SPAN}-01`,
    `00-${TRACE.slice(1)}-${SPAN}-01`, `00-${TRACE}0-${SPAN}-01`, // trace id length
    `00-${TRACE}-${SPAN.slice(1)}-01`, `00-${TRACE}-${SPAN}0-01`, // span id length
    `00-${TRACE}-${SPAN}-1`, `00-${TRACE}-${SPAN}-001`, // flags length
    `00-${TRACE.toUpperCase()}-${SPAN}-01`, // upper case is not allowed
    `00-${TRACE.replace('4', 'g')}-${SPAN}-01`,
    `00-${TRACE}-${SPAN}-01-extra`, // version 00 has exactly four fields
    `00_${TRACE}_${SPAN}_01`,
  ];
  for (const h of bad) t.equal(parseTraceparent(h), undefined, JSON.stringify(h));
});

t.test('without an SDK, a connection span still carries a valid, fresh traceparent', async (t) => {
  const tracer = getTracer('ambit-test', '0.0.0');
  t.notOk(trace.isSpanContextValid(tracer.startSpan('probe').spanContext()), 'precondition: the no-op API gives no valid context');
  const a = startConnectionSpan(tracer, 'ambit.outbound', SpanKind.CLIENT, undefined, { 'ambit.destination': '10.0.0.1:80' });
  const b = startConnectionSpan(tracer, 'ambit.outbound', SpanKind.CLIENT, undefined, {});
  const parsed = parseTraceparent(a.traceparent);
  t.ok(parsed, `valid traceparent ${a.traceparent}`);
  t.equal(parsed?.traceId, a.context.traceId);
  t.equal(parsed?.spanId, a.context.spanId);
  t.equal(a.context.traceFlags, 1, 'sampled');
  t.equal(a.span.spanContext().traceId, a.context.traceId, 'the span carries the same context');
  t.not(a.context.traceId, b.context.traceId, 'each root span starts a new trace');
  t.not(a.context.spanId, b.context.spanId);
  a.span.end();
});

t.test('a child span keeps the parent trace id and gets its own span id', async (t) => {
  const tracer = getTracer('ambit-test', '0.0.0');
  const parent = startConnectionSpan(tracer, 'ambit.outbound', SpanKind.CLIENT, undefined, {});
  const remote = parseTraceparent(parent.traceparent)!;
  const child = startConnectionSpan(tracer, 'ambit.inbound', SpanKind.SERVER, remote, {});
  t.equal(child.context.traceId, parent.context.traceId, 'same trace');
  t.not(child.context.spanId, parent.context.spanId, 'a new span, not the parent itself');
  t.ok(parseTraceparent(child.traceparent), 'valid traceparent');
  t.equal(parseTraceparent(child.traceparent)?.traceId, parent.context.traceId);
  t.notOk(child.context.isRemote, 'the child is local');

  const unsampled = startConnectionSpan(tracer, 'ambit.inbound', SpanKind.SERVER, { traceId: TRACE, spanId: SPAN, traceFlags: 0, isRemote: true }, {});
  t.equal(unsampled.context.traceId, TRACE);
  t.equal(unsampled.context.traceFlags, 0, 'the parent sampling decision is kept');
  t.match(unsampled.traceparent, new RegExp(`^00-${TRACE}-[0-9a-f]{16}-00$`));
});
