import { createServer, type Server } from 'node:http';
import { Server as GrpcServer, ServerCredentials, type ServerUnaryCall, type sendUnaryData } from '@grpc/grpc-js';
import protobuf from 'protobufjs';

/**
 * A test OTLP trace receiver: OTLP/HTTP (POST /v1/traces, protobuf body) and
 * OTLP/gRPC (opentelemetry.proto.collector.trace.v1.TraceService/Export).
 * Requests are decoded with the OTLP schema (the messages and field numbers
 * of opentelemetry-proto's collector/trace/v1, trace/v1, resource/v1 and
 * common/v1, the fields a span uses), so what the exporters put on the wire
 * is checked, not what they meant to send.
 */
const OTLP_SCHEMA = `
syntax = "proto3";
package otlp;
message ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1; }
message ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2; string schema_url = 3; }
message Resource { repeated KeyValue attributes = 1; uint32 dropped_attributes_count = 2; }
message ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2; string schema_url = 3; }
message InstrumentationScope { string name = 1; string version = 2; repeated KeyValue attributes = 3; uint32 dropped_attributes_count = 4; }
message KeyValue { string key = 1; AnyValue value = 2; }
message AnyValue {
  oneof value { string string_value = 1; bool bool_value = 2; int64 int_value = 3; double double_value = 4; ArrayValue array_value = 5; KeyValueList kvlist_value = 6; bytes bytes_value = 7; }
}
message ArrayValue { repeated AnyValue values = 1; }
message KeyValueList { repeated KeyValue values = 1; }
message Span {
  bytes trace_id = 1; bytes span_id = 2; string trace_state = 3; bytes parent_span_id = 4; fixed32 flags = 16;
  string name = 5; int32 kind = 6; fixed64 start_time_unix_nano = 7; fixed64 end_time_unix_nano = 8;
  repeated KeyValue attributes = 9; uint32 dropped_attributes_count = 10; Status status = 15;
}
message Status { string message = 2; int32 code = 3; }
`;

const root = protobuf.parse(OTLP_SCHEMA, { keepCase: false }).root;
const Request = root.lookupType('otlp.ExportTraceServiceRequest');

export type AttrValue = string | number | boolean;

/** One received span, ids in lower-case hex as a traceparent writes them. */
export interface ReceivedSpan {
  readonly traceId: string;
  readonly spanId: string;
  /** '' for a root span. */
  readonly parentSpanId: string;
  readonly name: string;
  /** OTLP SpanKind: 1 internal, 2 server, 3 client. */
  readonly kind: number;
  readonly startNs: bigint;
  readonly endNs: bigint;
  readonly attributes: Readonly<Record<string, AttrValue>>;
  readonly resource: Readonly<Record<string, AttrValue>>;
  readonly scope: string;
  readonly status: { readonly code: number; readonly message: string };
  readonly via: 'http' | 'grpc';
}

interface KV { key: string; value?: { stringValue?: string; boolValue?: boolean; intValue?: number | protobuf.Long; doubleValue?: number } }

function attrs(list: readonly KV[] | undefined): Record<string, AttrValue> {
  const out: Record<string, AttrValue> = {};
  for (const kv of list ?? []) {
    // A decoded oneof names its set field (unset fields read as defaults).
    const v = (kv.value ?? {}) as Record<string, unknown> & { value?: string };
    const set = v.value === undefined ? undefined : v[v.value];
    out[kv.key] = set === undefined ? '' : typeof set === 'object' && set !== null ? Number(String(set)) : (set as AttrValue);
  }
  return out;
}

const hex = (b: Uint8Array | undefined): string => Buffer.from(b ?? []).toString('hex');
const big = (v: number | protobuf.Long | undefined): bigint => (v === undefined ? 0n : typeof v === 'number' ? BigInt(v) : BigInt(v.toString()));

/** Decodes an ExportTraceServiceRequest into spans. */
export function decodeTraces(body: Uint8Array, via: 'http' | 'grpc'): ReceivedSpan[] {
  const decoded = Request.decode(body) as unknown as { resourceSpans?: { resource?: { attributes?: KV[] }; scopeSpans?: { scope?: { name?: string }; spans?: { traceId: Uint8Array; spanId: Uint8Array; parentSpanId?: Uint8Array; name: string; kind?: number; startTimeUnixNano?: protobuf.Long; endTimeUnixNano?: protobuf.Long; attributes?: KV[]; status?: { code?: number; message?: string } }[] }[] }[] };
  const out: ReceivedSpan[] = [];
  for (const rs of decoded.resourceSpans ?? []) {
    const resource = attrs(rs.resource?.attributes);
    for (const ss of rs.scopeSpans ?? []) {
      for (const s of ss.spans ?? []) {
        out.push({
          traceId: hex(s.traceId), spanId: hex(s.spanId), parentSpanId: hex(s.parentSpanId), name: s.name, kind: s.kind ?? 0,
          startNs: big(s.startTimeUnixNano), endNs: big(s.endTimeUnixNano), attributes: attrs(s.attributes), resource,
          scope: ss.scope?.name ?? '', status: { code: s.status?.code ?? 0, message: s.status?.message ?? '' }, via,
        });
      }
    }
  }
  return out;
}

export interface OtlpReceiver {
  /** Every span received so far, in arrival order. */
  readonly spans: ReceivedSpan[];
  /** http://host:port (OTLP/HTTP: POST <url>/v1/traces; gRPC: the server's address). */
  readonly url: string;
  /** Resolves with the spans once `pick` finds what it waits for among them; rejects after timeoutMs. */
  waitFor<T>(pick: (spans: readonly ReceivedSpan[]) => T | undefined, what: string, timeoutMs?: number): Promise<T>;
  close(): Promise<void>;
}

function receiver(spans: ReceivedSpan[], url: string, close: () => Promise<void>): OtlpReceiver {
  const waiters = new Set<() => void>();
  const notify = (): void => {
    for (const w of [...waiters]) w();
  };
  (spans as ReceivedSpan[] & { notify?: () => void }).notify = notify;
  return {
    spans,
    url,
    waitFor: (pick, what, timeoutMs = 40_000) => new Promise((resolve, reject) => {
      const check = (): void => {
        const found = pick(spans);
        if (found !== undefined) {
          waiters.delete(check);
          clearTimeout(timer);
          resolve(found);
        }
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(new Error(`timed out waiting for ${what}; received ${spans.length} spans: ${JSON.stringify(spans.map((s) => [s.name, s.resource['service.name'], s.traceId, s.spanId, s.parentSpanId]))}`));
      }, timeoutMs);
      waiters.add(check);
      check();
    }),
    close,
  };
}

function received(spans: ReceivedSpan[], more: readonly ReceivedSpan[]): void {
  spans.push(...more);
  (spans as ReceivedSpan[] & { notify?: () => void }).notify?.();
}

/** An OTLP/HTTP receiver on host (port 0: any free port). */
export async function startOtlpHttpReceiver(host: string): Promise<OtlpReceiver> {
  const spans: ReceivedSpan[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.method !== 'POST' || req.url !== '/v1/traces' || req.headers['content-type'] !== 'application/x-protobuf') {
        res.writeHead(404).end();
        return;
      }
      try {
        received(spans, decodeTraces(Buffer.concat(chunks), 'http'));
      } catch {
        res.writeHead(400).end();
        return;
      }
      // An empty ExportTraceServiceResponse: everything accepted.
      res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, host, r));
  const { port } = server.address() as { port: number };
  return receiver(spans, `http://${host}:${port}`, () => new Promise((r) => {
    server.closeAllConnections();
    server.close(() => r());
  }));
}

/** An OTLP/gRPC receiver (plaintext, as an http:// endpoint asks) on host. */
export async function startOtlpGrpcReceiver(host: string): Promise<OtlpReceiver> {
  const spans: ReceivedSpan[] = [];
  const server = new GrpcServer();
  server.addService({
    Export: {
      path: '/opentelemetry.proto.collector.trace.v1.TraceService/Export',
      requestStream: false,
      responseStream: false,
      requestSerialize: (b: Buffer) => b,
      requestDeserialize: (b: Buffer) => b,
      responseSerialize: (b: Buffer) => b,
      responseDeserialize: (b: Buffer) => b,
    },
  }, {
    Export: (call: ServerUnaryCall<Buffer, Buffer>, done: sendUnaryData<Buffer>) => {
      received(spans, decodeTraces(call.request, 'grpc'));
      done(null, Buffer.alloc(0));
    },
  });
  const port = await new Promise<number>((resolve, reject) => server.bindAsync(`${host}:0`, ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
  return receiver(spans, `http://${host}:${port}`, () => new Promise((r) => server.tryShutdown(() => r())));
}
