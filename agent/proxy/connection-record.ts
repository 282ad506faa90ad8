import type { Logger } from '../../shared/logger.ts';
import type { Span } from '../../shared/tracing.ts';
import { serviceLabels, type WorkloadNames } from './istio-names.ts';
import type { AgentMetrics, TcpLabels, TcpSeries } from './metrics.ts';

export type Direction = 'inbound' | 'outbound';

export interface Peer {
  readonly addr: string;
  readonly workload: string;
  readonly namespace: string;
  readonly identity: string;
  /** Istio's app, version, canonical service and revision, cluster (istio-names.ts); absent for a peer not known as a workload. */
  readonly names?: WorkloadNames;
}

export const UNKNOWN_PEER: Peer = { addr: '', workload: 'unknown', namespace: 'unknown', identity: 'unknown' };

/**
 * One connection's telemetry, recorded exactly once (DESIGN §3: "record the
 * result once"): opened counted at start, bytes counted as they flow (so
 * long-lived connections show up in rates), closed counter + one access log
 * line + span end at finish(), whichever path ends the connection.
 */
export class ConnectionRecord {
  readonly direction: Direction;
  readonly started: number;
  /** When it started, as wall-clock time (what a connection tag carries across an agent restart). */
  readonly startedAt: number;
  src: Peer;
  dst: Peer;
  service: string;
  security: 'mutual_tls' | 'none';
  responseFlags = '-';
  error = '';
  /** The policy a denial is counted under ("ns/name" or '(no ALLOW matched)'); '' unless policy denied or closed it. */
  policy = '';
  bytesFromSource = 0;
  bytesToSource = 0;
  readonly #metrics: AgentMetrics;
  readonly #log: Logger;
  #span: Span | undefined;
  #traceId = '';
  /** The series this connection's bytes are counted in: its labels when it opened. */
  #series: TcpSeries | undefined;
  #opened = false;
  #finished = false;

  constructor(o: { direction: Direction; src: Peer; dst: Peer; service: string; security: 'mutual_tls' | 'none'; metrics: AgentMetrics; log: Logger; startedAt?: number }) {
    this.direction = o.direction;
    this.startedAt = o.startedAt ?? Date.now();
    this.started = performance.now() - (Date.now() - this.startedAt);
    this.src = o.src;
    this.dst = o.dst;
    this.service = o.service;
    this.security = o.security;
    this.#metrics = o.metrics;
    this.#log = o.log;
    o.metrics.tcp.active[o.direction]++;
  }

  setSpan(span: Span | undefined, traceId: string): void {
    this.#span = span;
    this.#traceId = traceId;
  }

  get traceId(): string {
    return this.#traceId;
  }

  /** Istio's TCP labels (metrics.ts TCP_LABELS) with Istio's values; what is not known is "unknown", as Istio reports it. */
  labels(): TcpLabels {
    const src = this.src;
    const dst = this.dst;
    const svc = serviceLabels(this.service);
    return {
      reporter: this.direction === 'outbound' ? 'source' : 'destination',
      source_workload: src.workload,
      source_canonical_service: src.names?.canonicalService ?? 'unknown',
      source_canonical_revision: src.names?.canonicalRevision ?? 'unknown',
      source_workload_namespace: src.namespace,
      source_principal: src.identity || 'unknown',
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
      destination_principal: dst.identity || 'unknown',
      destination_app: dst.names?.app ?? 'unknown',
      destination_version: dst.names?.version ?? 'unknown',
      destination_cluster: dst.names?.cluster ?? 'unknown',
      request_protocol: 'tcp',
      response_flags: this.responseFlags,
      connection_security_policy: this.security,
    };
  }

  /** The tunnel (or plaintext pipe) is established: count it opened and start counting bytes live. */
  open(): void {
    if (this.#opened || this.#finished) return;
    this.#opened = true;
    this.#series = this.#metrics.tcp.series(this.labels());
    this.#series.opened++;
  }

  // Bytes go straight into the series' totals (plain additions, see
  // TcpSeriesTable), so a scrape sees a live connection's exact count. Once
  // finished, the record is what the access log and span said: a relay's
  // late callbacks (after a policy close) are not counted.
  fromSource(n: number): void {
    this.bytesFromSource += n;
    if (this.#series !== undefined && !this.#finished) this.#series.received += n;
  }

  toSource(n: number): void {
    this.bytesToSource += n;
    if (this.#series !== undefined && !this.#finished) this.#series.sent += n;
  }

  /** Ends the record; later calls do nothing. A connection never opened is logged but not counted as opened/closed. */
  finish(error?: string, flags?: string): void {
    if (this.#finished) return;
    this.#finished = true;
    if (error && !this.error) this.error = error;
    if (flags) this.responseFlags = flags;
    this.#metrics.tcp.active[this.direction]--;
    // Closed under the labels at the end: response_flags may have changed (a policy close).
    if (this.#opened) this.#metrics.tcp.series(this.labels()).closed++;
    const duration = Math.round(performance.now() - this.started);
    this.#log.info({
      'src.addr': this.src.addr, 'src.workload': this.src.workload, 'src.namespace': this.src.namespace, 'src.identity': this.src.identity,
      'dst.addr': this.dst.addr, 'dst.workload': this.dst.workload, 'dst.namespace': this.dst.namespace, 'dst.identity': this.dst.identity,
      'dst.service': this.service, direction: this.direction, security: this.security, response_flags: this.responseFlags,
      bytes_sent: this.bytesToSource, bytes_recv: this.bytesFromSource, duration_ms: duration, error: this.error, policy: this.policy, trace_id: this.#traceId,
    }, 'connection');
    if (this.#span?.isRecording()) {
      // What is known only now (the destination resolved, the bytes moved),
      // named as the access log and Istio's metric labels name it.
      this.#span.setAttributes({
        'ambit.direction': this.direction,
        'ambit.source.workload': this.src.workload, 'ambit.source.namespace': this.src.namespace, 'ambit.source.principal': this.src.identity, 'ambit.source.address': this.src.addr,
        'ambit.destination.workload': this.dst.workload, 'ambit.destination.namespace': this.dst.namespace, 'ambit.destination.principal': this.dst.identity, 'ambit.destination.address': this.dst.addr,
        'ambit.destination.service': this.service, 'ambit.connection_security_policy': this.security,
        'ambit.bytes_sent': this.bytesToSource, 'ambit.bytes_recv': this.bytesFromSource, 'ambit.response_flags': this.responseFlags,
      });
      if (this.error) this.#span.setStatus({ code: 2, message: this.error });
    }
    this.#span?.end();
  }
}
