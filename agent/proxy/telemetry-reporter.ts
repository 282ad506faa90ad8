import type { TelemetryDenial, TelemetryEdge, TelemetryReport } from '../../shared/proto/gen/ambit.ts';
import type { TcpSeries, TcpSeriesTable } from './metrics.ts';

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
          reporter: l.reporter,
          sourceWorkload: l.source_workload,
          sourceNamespace: l.source_workload_namespace,
          sourcePrincipal: l.source_principal,
          destinationWorkload: l.destination_workload,
          destinationNamespace: l.destination_workload_namespace,
          destinationPrincipal: l.destination_principal,
          destinationService: l.destination_service,
          security: l.connection_security_policy,
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
    if (sent.length === 0 && this.#denials.length === 0 && this.#dropped === 0) return undefined;
    for (const g of sent) this.#reported.set(g.series, g.now);
    const report: TelemetryReport = { edges: sent.map((g) => g.edge), denials: this.#denials, denialsDropped: this.#dropped };
    this.#denials = [];
    this.#dropped = 0;
    return report;
  }
}
