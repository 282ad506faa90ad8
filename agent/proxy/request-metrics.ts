import { Counter, type Histogram, type Registry } from 'prom-client';
import type { RequestPeer, RequestSeries, RequestStats, RequestTelemetry } from '../../shared/proto/gen/dataplane.ts';
import { parseSpiffeId } from '../../shared/spiffe-id.ts';
import type { MeshState } from '../state/mesh-state.ts';
import { serviceLabels, type WorkloadNames } from './istio-names.ts';
import { TCP_LABELS } from './metrics.ts';

/*
 * Istio's request metrics, aggregated by ambit-dataplane per label set
 * (dataplane/src/l7/metrics.rs) and reported every second: each series is
 * declared once (what its id stands for), then only grows. The agent turns a
 * series into Istio's labels once, when it is declared, and adds each
 * report's growth to the exported counters and histograms. Nothing per
 * request reaches this process.
 */

/**
 * Istio's buckets for all three request histograms: Istio configures none of
 * its own, so Envoy's default histogram buckets apply (Envoy
 * source/common/stats/histogram_impl.h, `supportedBuckets`; the same list
 * is documented for istio_request_duration_milliseconds). Sent to the data
 * plane, which aggregates into them.
 */
export const ISTIO_HISTOGRAM_BUCKETS = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000] as const;

/** Istio's request labels: the TCP ones, then response_code and grpc_response_status. */
export const REQUEST_LABELS = [...TCP_LABELS, 'response_code', 'grpc_response_status'] as const;
export type RequestLabels = Record<(typeof REQUEST_LABELS)[number], string>;

/** What the data plane is told of request telemetry (its RequestTelemetry message). */
export function requestTelemetry(accessLog: boolean): RequestTelemetry {
  return { durationBoundsMs: [...ISTIO_HISTOGRAM_BUCKETS], bytesBounds: [...ISTIO_HISTOGRAM_BUCKETS], accessLog };
}

interface Series {
  labels: Record<string, string>;
  count: number;
  buckets: number[];
  sum: number;
}

/**
 * A Prometheus histogram that takes per-bucket growth instead of single
 * observations (prom-client's Histogram only observes values). Exposed as
 * a prom-client metric: `_bucket` series cumulative by `le`, `_sum`, `_count`.
 */
class BucketHistogram {
  readonly name: string;
  readonly help: string;
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  readonly #bounds: readonly number[];
  readonly #series = new Map<string, Series>();

  constructor(name: string, help: string, bounds: readonly number[]) {
    this.name = name;
    this.help = help;
    this.#bounds = bounds;
  }

  /** Adds per-bucket counts (one per bound, then +Inf) and their sum to the series of `key`. */
  add(key: string, labels: Record<string, string>, buckets: readonly number[], sum: number): void {
    let s = this.#series.get(key);
    if (s === undefined) {
      s = { labels, count: 0, buckets: new Array<number>(this.#bounds.length + 1).fill(0), sum: 0 };
      this.#series.set(key, s);
    }
    const n = Math.min(buckets.length, s.buckets.length);
    for (let i = 0; i < n; i++) {
      s.buckets[i]! += buckets[i]!;
      s.count += buckets[i]!;
    }
    s.sum += sum;
  }

  get(): { name: string; help: string; type: string; aggregator: string; values: { labels: Record<string, string | number>; value: number; metricName: string }[] } {
    const values: { labels: Record<string, string | number>; value: number; metricName: string }[] = [];
    for (const s of this.#series.values()) {
      let cumulative = 0;
      this.#bounds.forEach((le, i) => {
        cumulative += s.buckets[i]!;
        values.push({ labels: { ...s.labels, le }, value: cumulative, metricName: `${this.name}_bucket` });
      });
      values.push({ labels: { ...s.labels, le: '+Inf' }, value: s.count, metricName: `${this.name}_bucket` });
      values.push({ labels: s.labels, value: s.sum, metricName: `${this.name}_sum` });
      values.push({ labels: s.labels, value: s.count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  reset(): void {
    this.#series.clear();
  }
}

/** The istio_request* metrics of one agent, fed by the data plane's reports. */
export class RequestMetrics {
  readonly #state: MeshState;
  /** The attached data plane's series, by its id: their labels, and their key here. */
  #declared = new Map<number, { labels: RequestLabels; key: string }>();
  readonly #requests: Counter<(typeof REQUEST_LABELS)[number]>;
  readonly #duration: BucketHistogram;
  readonly #requestBytes: BucketHistogram;
  readonly #responseBytes: BucketHistogram;
  readonly #dropped: Counter;
  /** Routes' retries and mirrors, by the backend service they went to (RetryCount). */
  readonly #retries: Counter<'destination_service'>;
  readonly #retryBudgetExhausted: Counter<'destination_service'>;
  readonly #mirrored: Counter<'destination_service'>;

  /** Told of each report's request counts per label set (the controller's console: request rates on the service graph). */
  readonly #onRequests: ((labels: RequestLabels, count: number) => void) | undefined;

  constructor(registry: Registry, state: MeshState, onRequests?: (labels: RequestLabels, count: number) => void) {
    this.#state = state;
    this.#onRequests = onRequests;
    const registers = [registry];
    this.#requests = new Counter({ name: 'istio_requests_total', help: 'Requests handled, by Istio\'s labels.', labelNames: REQUEST_LABELS, registers });
    const histogram = (name: string, help: string): BucketHistogram => {
      const h = new BucketHistogram(name, help, ISTIO_HISTOGRAM_BUCKETS);
      registry.registerMetric(h as unknown as Histogram);
      return h;
    };
    this.#duration = histogram('istio_request_duration_milliseconds', 'Request durations, from the request\'s first byte to its response\'s last (milliseconds).');
    this.#requestBytes = histogram('istio_request_bytes', 'Request body sizes (bytes).');
    this.#responseBytes = histogram('istio_response_bytes', 'Response body sizes (bytes).');
    this.#dropped = new Counter({ name: 'ambit_requests_uncounted_total', help: 'Finished requests the data plane did not count: their label set would have passed its cap on series.', registers });
    const labelNames = ['destination_service'] as const;
    this.#retries = new Counter({ name: 'ambit_http_retries_total', help: 'Requests a route retried (each retry counted once), by the service retried.', labelNames, registers });
    this.#retryBudgetExhausted = new Counter({ name: 'ambit_http_retry_budget_exhausted_total', help: 'Retries a route asked for that the retry budget refused (the last answer was returned), by service.', labelNames, registers });
    this.#mirrored = new Counter({ name: 'ambit_http_mirrored_requests_total', help: 'Requests copied to a service by a route\'s RequestMirror, by the mirror\'s service.', labelNames, registers });
  }

  /** A data plane attached: the series it declares from now on are its own (ids of an earlier one mean nothing). */
  attached(): void {
    this.#declared = new Map();
  }

  /** One report of the data plane. A delta for a series never declared (cannot happen but for a bug) is ignored. */
  add(stats: RequestStats): void {
    for (const s of stats.series) {
      const labels = this.labelsOf(s);
      let key = '';
      for (const name of REQUEST_LABELS) key += `${labels[name]}\0`;
      this.#declared.set(s.id, { labels, key });
    }
    for (const d of stats.deltas) {
      const series = this.#declared.get(d.id);
      if (!series) continue;
      this.#requests.inc(series.labels, d.count);
      this.#onRequests?.(series.labels, d.count);
      this.#duration.add(series.key, series.labels, d.durationBuckets, d.durationSumMs);
      this.#requestBytes.add(series.key, series.labels, d.requestBytesBuckets, d.requestBytesSum);
      this.#responseBytes.add(series.key, series.labels, d.responseBytesBuckets, d.responseBytesSum);
    }
    if (stats.dropped > 0) this.#dropped.inc(stats.dropped);
    for (const r of stats.retries) {
      const labels = { destination_service: r.service || 'unknown' };
      // A counter's series appears only once something happened to that service.
      if (r.retried > 0) this.#retries.inc(labels, r.retried);
      if (r.budgetExhausted > 0) this.#retryBudgetExhausted.inc(labels, r.budgetExhausted);
      if (r.mirrored > 0) this.#mirrored.inc(labels, r.mirrored);
    }
  }

  /** Istio's labels of a series: its peers' names from the mesh state, as the TCP metrics name them. */
  labelsOf(s: RequestSeries): RequestLabels {
    const src = this.#peer(s.source);
    const dst = this.#peer(s.destination);
    const svc = serviceLabels(s.service);
    return {
      reporter: s.destinationSide ? 'destination' : 'source',
      source_workload: src.workload,
      source_canonical_service: src.names?.canonicalService ?? 'unknown',
      source_canonical_revision: src.names?.canonicalRevision ?? 'unknown',
      source_workload_namespace: src.namespace,
      source_principal: src.identity,
      source_app: src.names?.app ?? 'unknown',
      source_version: src.names?.version ?? 'unknown',
      source_cluster: src.names?.cluster ?? 'unknown',
      destination_service: svc.service,
      destination_service_namespace: svc.namespace,
      destination_service_name: svc.name,
      destination_workload: dst.workload,
      destination_canonical_service: dst.names?.canonicalService ?? 'unknown',
      destination_canonical_revision: dst.names?.canonicalRevision ?? 'unknown',
      destination_workload_namespace: dst.namespace,
      destination_principal: dst.identity,
      destination_app: dst.names?.app ?? 'unknown',
      destination_version: dst.names?.version ?? 'unknown',
      destination_cluster: dst.names?.cluster ?? 'unknown',
      request_protocol: s.protocol || 'http',
      response_flags: s.responseFlags || '-',
      connection_security_policy: s.mutualTls ? 'mutual_tls' : 'none',
      response_code: String(s.status),
      grpc_response_status: s.grpcStatus,
    };
  }

  #peer(p: RequestPeer | undefined): { workload: string; namespace: string; identity: string; names?: WorkloadNames } {
    let namespace = p?.namespace ?? '';
    if (!namespace && p?.identity) {
      try {
        namespace = parseSpiffeId(p.identity).namespace ?? '';
      } catch {
        namespace = '';
      }
    }
    const w = p?.workload && namespace ? this.#state.workloadByName(namespace, p.workload) : undefined;
    return {
      workload: p?.workload || 'unknown',
      namespace: namespace || 'unknown',
      identity: p?.identity || 'unknown',
      ...(w ? { names: this.#state.namesOf(w) } : {}),
    };
  }
}
