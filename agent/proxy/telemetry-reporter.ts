import type { TelemetryDenial, TelemetryEdge, TelemetryReport } from '../../shared/proto/gen/ambit.ts';
import type { TcpLabels, TcpSeries, TcpSeriesTable } from './metrics.ts';

/** Denials held between two reports at most; more are counted as dropped (a flood must not grow the agent). */
export const MAX_PENDING_DENIALS = 100;
/** Edges in one report at most: the busiest first, the rest wait for the next report. */
export const MAX_EDGES_PER_REPORT = 500;

/** A connection refused by authorization policy, as the deciding agent saw it. */
export type DeniedConnection = Omit<TelemetryDenial, 'atMs'>;

interface Reported {
  opened: number;
  closed: number;
  sent: number;
  received: number;
}

/**
 * What the agent tells the controller about its traffic, for the console's
 * service graph and denials (sent on the Watch stream, see WatchClient): the
 * growth of each Istio TCP series since the last report, read from the
 * same counters /metrics serves (nothing is added to a connection's path),
 * and the denials since then. A report is taken only when it can be sent,
 * and what was taken is not sent again.
 */
export class TelemetryReporter {
  readonly #tcp: TcpSeriesTable;
  readonly #now: () => number;
  readonly #reported = new WeakMap<TcpSeries, Reported>();
  #denials: TelemetryDenial[] = [];
  #dropped = 0;
  /** Requests since the last report, per edge (the TCP labels of their series), with how many failed. */
  #requests = new Map<string, { labels: TcpLabels; count: number; errors: number }>();

  constructor(tcp: TcpSeriesTable, now: () => number = Date.now) {
    this.#tcp = tcp;
    this.#now = now;
  }

  denied(d: DeniedConnection): void {
    if (this.#denials.length >= MAX_PENDING_DENIALS) {
      this.#dropped++;
      return;
    }
    this.#denials.push({ ...d, atMs: this.#now() });
  }

  /**
   * Requests the data plane counted on HTTP ports (RequestMetrics' reports).
   * A request failed when it got a 5xx, no response (code 0) or a response
   * flag: what Kiali counts as an error.
   */
  requests(labels: TcpLabels & { readonly response_code: string }, count: number): void {
    if (count <= 0) return;
    const key = edgeKey(labels);
    let e = this.#requests.get(key);
    if (!e) {
      if (this.#requests.size >= MAX_EDGES_PER_REPORT) return;
      this.#requests.set(key, (e = { labels, count: 0, errors: 0 }));
    }
    e.count += count;
    const code = Number(labels.response_code);
    if (!(code > 0 && code < 500) || labels.response_flags !== '-') e.errors += count;
  }

  /** The report since the last one, or undefined when nothing happened. */
  take(): TelemetryReport | undefined {
    const grown: { edge: TelemetryEdge; series: TcpSeries; now: Reported }[] = [];
    for (const series of this.#tcp.all()) {
      const was = this.#reported.get(series) ?? { opened: 0, closed: 0, sent: 0, received: 0 };
      const now = { opened: series.opened, closed: series.closed, sent: series.sent, received: series.received };
      if (now.opened === was.opened && now.closed === was.closed && now.sent === was.sent && now.received === was.received) continue;
      const l = series.labels;
      const closed = now.closed - was.closed;
      grown.push({
        series,
        now,
        edge: {
          ...edgeOf(l),
          connectionsOpened: now.opened - was.opened,
          connectionsClosed: closed,
          // A series is one response flag: "-" is a clean end, anything else a failure (refused, denied, upstream failed).
          connectionsFailed: l.response_flags === '-' ? 0 : closed,
          bytesSent: now.sent - was.sent,
          bytesReceived: now.received - was.received,
          requests: 0,
          requestErrors: 0,
        },
      });
    }
    grown.sort((a, b) => b.edge.connectionsOpened + b.edge.connectionsClosed - (a.edge.connectionsOpened + a.edge.connectionsClosed));
    const sent = grown.slice(0, MAX_EDGES_PER_REPORT);
    const requests = [...this.#requests.values()].map((r) => ({
      ...edgeOf(r.labels), connectionsOpened: 0, connectionsClosed: 0, connectionsFailed: 0, bytesSent: 0, bytesReceived: 0, requests: r.count, requestErrors: r.errors,
    }));
    if (sent.length === 0 && requests.length === 0 && this.#denials.length === 0 && this.#dropped === 0) return undefined;
    for (const g of sent) this.#reported.set(g.series, g.now);
    const report: TelemetryReport = { edges: [...sent.map((g) => g.edge), ...requests], denials: this.#denials, denialsDropped: this.#dropped };
    this.#requests = new Map();
    this.#denials = [];
    this.#dropped = 0;
    return report;
  }
}

/** Who talks to whom in a series' labels: what the controller groups an edge by. */
function edgeOf(l: TcpLabels): Pick<TelemetryEdge, 'reporter' | 'sourceWorkload' | 'sourceNamespace' | 'sourcePrincipal' | 'destinationWorkload' | 'destinationNamespace' | 'destinationPrincipal' | 'destinationService' | 'security'> {
  return {
    reporter: l.reporter,
    sourceWorkload: l.source_workload,
    sourceNamespace: l.source_workload_namespace,
    sourcePrincipal: l.source_principal,
    destinationWorkload: l.destination_workload,
    destinationNamespace: l.destination_workload_namespace,
    destinationPrincipal: l.destination_principal,
    destinationService: l.destination_service,
    security: l.connection_security_policy,
  };
}

function edgeKey(l: TcpLabels): string {
  return [l.reporter, l.source_workload_namespace, l.source_workload, l.source_principal, l.destination_workload_namespace, l.destination_workload, l.destination_principal, l.destination_service, l.connection_security_policy].join('\0');
}
