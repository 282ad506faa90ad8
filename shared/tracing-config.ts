import { enumOption, intOption, stringOption, type Option } from './config-parse.ts';

/**
 * Trace export options of the daemons, read from OpenTelemetry's standard
 * environment variables (each also a flag, which wins): an operator who
 * exports OTEL_* for every process on a host configures Ambit with them too.
 * Spread into AGENT_OPTIONS and CONTROLLER_OPTIONS; `tracingSettings` turns
 * the parsed values into what shared/tracing.ts builds its SDK from.
 */
export const SAMPLERS = ['always_on', 'always_off', 'traceidratio', 'parentbased_always_on', 'parentbased_always_off', 'parentbased_traceidratio'] as const;
export type SamplerName = (typeof SAMPLERS)[number];
export const OTLP_PROTOCOLS = ['http/protobuf', 'grpc'] as const;
export type OtlpProtocol = (typeof OTLP_PROTOCOLS)[number];

/** An http(s) URL, as OTEL_EXPORTER_OTLP_*ENDPOINT takes it. */
function urlOption(description: string, env: string): Option<string> {
  return {
    description,
    env,
    parse: (raw) => {
      let url: URL;
      try {
        url = new URL(String(raw));
      } catch {
        throw new Error('must be an http:// or https:// URL');
      }
      if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error('must be an http:// or https:// URL');
      return url.toString();
    },
  };
}

/**
 * OTEL_RESOURCE_ATTRIBUTES: "key=value,key2=value2" with values
 * percent-encoded (the W3C Baggage format the specification names).
 */
export function parseResourceAttributes(raw: unknown): Readonly<Record<string, string>> {
  if (typeof raw !== 'string') throw new Error('must be a list like "deployment.environment=prod,team=payments"');
  const out: Record<string, string> = {};
  for (const item of raw.split(',')) {
    if (item.trim() === '') continue;
    const eq = item.indexOf('=');
    const key = eq === -1 ? '' : item.slice(0, eq).trim();
    if (eq === -1 || key === '' || !/^[\x21-\x7e]+$/.test(key)) throw new Error(`${JSON.stringify(item)} is not KEY=VALUE`);
    let value: string;
    try {
      value = decodeURIComponent(item.slice(eq + 1).trim());
    } catch {
      throw new Error(`${JSON.stringify(item)}: the value is not valid percent-encoding`);
    }
    out[key] = value;
  }
  return Object.freeze(out);
}

export const TRACING_OPTIONS = {
  tracesExporter: { ...enumOption('trace export: otlp sends spans to an OpenTelemetry collector; none (default) makes no span', ['otlp', 'none'] as const, 'none'), env: 'OTEL_TRACES_EXPORTER' },
  otlpEndpoint: urlOption('OTLP collector base URL; traces go to <url>/v1/traces over http/protobuf, to <url> over grpc; unset: http://localhost:4318, over grpc http://localhost:4317', 'OTEL_EXPORTER_OTLP_ENDPOINT'),
  otlpTracesEndpoint: urlOption('OTLP traces URL, used as given (wins over --otlp-endpoint)', 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'),
  otlpProtocol: { ...enumOption('OTLP transport', OTLP_PROTOCOLS, 'http/protobuf'), env: 'OTEL_EXPORTER_OTLP_PROTOCOL' },
  tracesSampler: { ...enumOption('which traces are recorded', SAMPLERS, 'parentbased_always_on'), env: 'OTEL_TRACES_SAMPLER' },
  tracesSamplerArg: {
    description: 'the traceidratio samplers\' ratio, 0 to 1; unset: 1',
    env: 'OTEL_TRACES_SAMPLER_ARG',
    parse: (raw: unknown): number => {
      const n = typeof raw === 'number' ? raw : typeof raw === 'string' && /^\s*(\d+(\.\d*)?|\.\d+)\s*$/.test(raw) ? Number(raw) : NaN;
      if (!(n >= 0 && n <= 1)) throw new Error('must be a number from 0 to 1');
      return n;
    },
  } as Option<number>,
  tracesServiceName: { ...stringOption('service.name of the spans (default: the program\'s name)'), env: 'OTEL_SERVICE_NAME' },
  tracesResourceAttributes: { description: 'more resource attributes of the spans, "key=value,key2=value2" (values percent-encoded)', parse: parseResourceAttributes, env: 'OTEL_RESOURCE_ATTRIBUTES' } as Option<Readonly<Record<string, string>>>,
  tracesExportDelay: { ...intOption('milliseconds between two exports of the batch span processor', 5000, 1, 3_600_000), env: 'OTEL_BSP_SCHEDULE_DELAY' },
} as const;

interface TracingValues {
  readonly tracesExporter: 'otlp' | 'none';
  readonly otlpEndpoint: string | undefined;
  readonly otlpTracesEndpoint: string | undefined;
  readonly otlpProtocol: OtlpProtocol;
  readonly tracesSampler: SamplerName;
  readonly tracesSamplerArg: number | undefined;
  readonly tracesServiceName: string | undefined;
  readonly tracesResourceAttributes: Readonly<Record<string, string>> | undefined;
  readonly tracesExportDelay: number;
}

/** What shared/tracing.ts builds the SDK from; `enabled: false` builds nothing. */
export interface TracingSettings {
  readonly enabled: boolean;
  readonly protocol: OtlpProtocol;
  /** Where spans are sent: the traces URL itself (http/protobuf), or the collector's address (grpc). */
  readonly url: string;
  readonly sampler: SamplerName;
  readonly ratio: number;
  readonly serviceName: string;
  readonly resourceAttributes: Readonly<Record<string, string>>;
  readonly exportDelayMs: number;
}

const DEFAULT_ENDPOINT: Readonly<Record<OtlpProtocol, string>> = { 'http/protobuf': 'http://localhost:4318/', grpc: 'http://localhost:4317/' };

/**
 * The settings from parsed options. `program` is the default service.name;
 * OTEL_SERVICE_NAME wins over a service.name in OTEL_RESOURCE_ATTRIBUTES, as
 * the specification says. A ratio given to a sampler that takes none is
 * ignored, as the specification says too.
 */
export function tracingSettings(v: TracingValues, program: string): TracingSettings {
  const base = v.otlpEndpoint ?? DEFAULT_ENDPOINT[v.otlpProtocol];
  const url = v.otlpTracesEndpoint ?? (v.otlpProtocol === 'grpc' ? base : `${base.replace(/\/$/, '')}/v1/traces`);
  const attrs = v.tracesResourceAttributes ?? {};
  return Object.freeze({
    enabled: v.tracesExporter === 'otlp',
    protocol: v.otlpProtocol,
    url,
    sampler: v.tracesSampler,
    ratio: v.tracesSamplerArg ?? 1,
    serviceName: v.tracesServiceName ?? attrs['service.name'] ?? program,
    resourceAttributes: attrs,
    exportDelayMs: v.tracesExportDelay,
  });
}
