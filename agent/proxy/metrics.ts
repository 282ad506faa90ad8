import { Counter, Gauge, type Registry } from 'prom-client';
import type { RefusalCounter } from '../connection/refusals.ts';

/**
 * Istio's standard TCP labels, in the order Istio's proxy and ztunnel emit
 * them (DESIGN §7), so existing dashboards and Kiali work unchanged;
 * test/agent/proxy/istio-metrics.test.ts checks them against Istio's own
 * definitions.
 */
export const TCP_LABELS = [
  'reporter',
  'source_workload', 'source_canonical_service', 'source_canonical_revision', 'source_workload_namespace',
  'source_principal', 'source_app', 'source_version', 'source_cluster',
  'destination_service', 'destination_service_namespace', 'destination_service_name',
  'destination_workload', 'destination_canonical_service', 'destination_canonical_revision', 'destination_workload_namespace',
  'destination_principal', 'destination_app', 'destination_version', 'destination_cluster',
  'request_protocol', 'response_flags', 'connection_security_policy',
] as const;
export type TcpLabels = Record<(typeof TCP_LABELS)[number], string>;

/** One label set's connection counts, added to with plain arithmetic by ConnectionRecord. */
export interface TcpSeries {
  readonly labels: TcpLabels;
  opened: number;
  closed: number;
  /** Bytes towards the source (istio_tcp_sent_bytes_total). */
  sent: number;
  /** Bytes from the source (istio_tcp_received_bytes_total). */
  received: number;
}

type Field = 'opened' | 'closed' | 'sent' | 'received';

/**
 * The per-connection counters, kept as numbers per label set and handed to
 * prom-client when /metrics is scraped. prom-client hashes and validates the
 * Istio labels on every inc(); done for each open, close and byte batch,
 * and for the active gauge, a record cost 6.4–6.7 µs without its access log
 * line, 1.1–1.7 µs this way (bench/connection-record.ts; about 1 % of the
 * agents' CPU per tunnelled connection, too little for bench/dataplane.ts to
 * resolve). Here a connection pays
 * one Map lookup when it opens and one when it closes; bytes are counted
 * exactly (no batching lag) by adding to the series the connection opened
 * with. Label sets are kept for the agent's life, as prom-client keeps its
 * own: one per source, destination, service and flags seen since start
 * (workloads that come and go with new names add series, as with any
 * Prometheus client).
 */
export class TcpSeriesTable {
  /** Each label set's series, with how much of it prom-client has been given already. */
  readonly #series = new Map<string, { readonly series: TcpSeries; readonly reported: Record<Field, number> }>();
  /** Connections open now, by direction (ambit_connections_active). */
  readonly active = { inbound: 0, outbound: 0 };

  series(labels: TcpLabels): TcpSeries {
    let key = '';
    for (const name of TCP_LABELS) key += `${labels[name]}\0`;
    let entry = this.#series.get(key);
    if (entry === undefined) {
      entry = { series: { labels, opened: 0, closed: 0, sent: 0, received: 0 }, reported: { opened: 0, closed: 0, sent: 0, received: 0 } };
      this.#series.set(key, entry);
    }
    return entry.series;
  }

  /** Every series, for readers other than prom-client (the telemetry reporter). */
  *all(): IterableIterator<TcpSeries> {
    for (const { series } of this.#series.values()) yield series;
  }

  /** Passes what `field` grew by since the last call to `counter` (a prom-client collect() step). */
  report(field: Field, counter: Counter<string>): void {
    for (const { series, reported } of this.#series.values()) {
      const delta = series[field] - reported[field];
      if (delta > 0) {
        counter.inc(series.labels, delta);
        reported[field] = series[field];
      }
    }
  }
}

/** `ejected`: the endpoints ejected now (OutlierDetector.ejected), read at each scrape. */
export function createAgentMetrics(registry: Registry, o: { readonly ejected?: () => readonly { service: string; endpoint: string; workload: string }[] } = {}) {
  const registers = [registry];
  const tcp = new TcpSeriesTable();
  const counted = (name: string, help: string, field: Field) =>
    new Counter({ name, help, labelNames: TCP_LABELS, registers, collect(this: Counter<string>) { tcp.report(field, this); } });
  return {
    tcp,
    opened: counted('istio_tcp_connections_opened_total', 'TCP connections opened.', 'opened'),
    closed: counted('istio_tcp_connections_closed_total', 'TCP connections closed.', 'closed'),
    sent: counted('istio_tcp_sent_bytes_total', 'Bytes sent toward the source (response direction).', 'sent'),
    received: counted('istio_tcp_received_bytes_total', 'Bytes received from the source (request direction).', 'received'),
    denials: new Counter({ name: 'ambit_policy_denials_total', help: 'Connections refused or closed by authorization policy.', labelNames: ['direction', 'policy', 'reason'] as const, registers }),
    requestDenials: new Counter({ name: 'ambit_request_denials_total', help: 'HTTP requests on HTTP ports answered 403 (gRPC: PERMISSION_DENIED) by authorization policy, by deciding policy.', labelNames: ['policy', 'reason'] as const, registers }),
    refused: new Counter({ name: 'ambit_connections_refused_total', help: 'Connections refused before a tunnel opened, by reason (docs/refusals.md).', labelNames: ['direction', 'reason'] as const, registers }) as RefusalCounter,
    active: new Gauge({
      name: 'ambit_connections_active', help: 'Connections currently open, by direction.', labelNames: ['direction'] as const, registers,
      collect(this: Gauge<'direction'>) {
        this.set({ direction: 'inbound' }, tcp.active.inbound);
        this.set({ direction: 'outbound' }, tcp.active.outbound);
      },
    }),
    poolConnections: new Gauge({ name: 'ambit_tunnel_pool_connections', help: 'Pooled HBONE HTTP/2 connections to peer agents.', registers }),
    poolStreams: new Gauge({ name: 'ambit_tunnel_pool_streams', help: 'CONNECT streams open on pooled connections.', registers }),
    poolDials: new Counter({ name: 'ambit_tunnel_pool_dials_total', help: 'New HBONE connections dialled, by result.', labelNames: ['result'] as const, registers }),
    certExpiry: new Gauge({ name: 'ambit_certificate_expiry_timestamp_seconds', help: 'Expiry of each certificate the agent holds (Unix seconds).', labelNames: ['identity'] as const, registers }),
    certRenewals: new Counter({ name: 'ambit_certificate_renewals_total', help: 'Certificates obtained from the controller.', labelNames: ['identity'] as const, registers }),
    survival: new Gauge({ name: 'ambit_agent_controller_independence_seconds', help: 'How long the agent can keep serving without the controller: until its earliest certificate expires.', registers }),
    watchConnected: new Gauge({ name: 'ambit_watch_connected', help: '1 while the controller watch stream is up.', registers }),
    watchRevision: new Gauge({ name: 'ambit_watch_revision', help: 'Mesh state revision the agent serves.', registers }),
    watchRejected: new Counter({ name: 'ambit_watch_rejected_total', help: 'Controller updates refused because they come from another store identity or from behind the held revision, by reason (store_identity, revision_behind).', labelNames: ['reason'] as const, registers }),
    watchUpdates: new Counter({ name: 'ambit_watch_updates_total', help: 'Controller updates by result (ack, nack).', labelNames: ['result'] as const, registers }),
    persistFailures: new Counter({ name: 'ambit_agent_persist_failures_total', help: 'Failed writes to the data directory (each attempt), by path relative to it and errno.', labelNames: ['path', 'errno'] as const, registers }),
    connectRetries: new Counter({ name: 'ambit_connect_retries_total', help: 'Outbound tunnel attempts after the first (another endpoint of the service, before any byte flowed), by result (ok: it opened; failed).', labelNames: ['result'] as const, registers }),
    endpointEjections: new Counter({ name: 'ambit_endpoint_ejections_total', help: 'Service endpoints ejected from balancing after consecutive connect failures (passive health).', labelNames: ['service'] as const, registers }),
    endpointEjected: new Gauge({
      name: 'ambit_endpoint_ejected', help: 'Service endpoints out of balancing now (1 per ejected endpoint).', labelNames: ['service', 'endpoint', 'workload'] as const, registers,
      collect(this: Gauge<'service' | 'endpoint' | 'workload'>) {
        this.reset();
        for (const e of o.ejected?.() ?? []) this.set({ service: e.service, endpoint: e.endpoint, workload: e.workload }, 1);
      },
    }),
    persistHealthy: new Gauge({ name: 'ambit_agent_persist_healthy', help: '1 when every write to the data directory has landed; 0 while one is failing and being retried.', registers }),
  };
}

export type AgentMetrics = ReturnType<typeof createAgentMetrics>;
