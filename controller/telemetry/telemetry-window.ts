import type { TelemetryDenial, TelemetryEdge, TelemetryReport } from '../../shared/proto/gen/ambit.ts';
import type { Workload } from '../../shared/resources/types.ts';

/** How far back rates look (the console shows "per second over the last minute"). */
export const WINDOW_MS = 60_000;
/** Bounds on memory: edges beyond this (in one window) are dropped and counted; denials kept newest first. */
export const MAX_EDGES = 2_000;
export const MAX_DENIALS = 200;
/** Per edge: one sample per report, so a minute of 1 s reports fits with room for a burst. */
const MAX_SAMPLES_PER_EDGE = 240;

type Counts = Pick<TelemetryEdge, 'connectionsOpened' | 'connectionsClosed' | 'connectionsFailed' | 'bytesSent' | 'bytesReceived' | 'requests' | 'requestErrors'>;
const COUNT_FIELDS = ['connectionsOpened', 'connectionsClosed', 'connectionsFailed', 'bytesSent', 'bytesReceived', 'requests', 'requestErrors'] as const;

interface EdgeSeries {
  readonly source: { readonly workload: string; readonly namespace: string; readonly principal: string };
  readonly destination: { readonly workload: string; readonly namespace: string; readonly principal: string; readonly service: string };
  readonly reporter: 'source' | 'destination';
  readonly security: string;
  readonly node: string;
  readonly samples: { at: number; counts: Counts }[];
}

/** One edge of the service graph: per-second rates over the window, from one reporter's counts. */
export interface EdgeView {
  readonly source: { readonly workload: string; readonly namespace: string; readonly principal: string };
  readonly destination: { readonly workload: string; readonly namespace: string; readonly principal: string; readonly service: string };
  /** Whose counts these are: the source's agent when it reports, else the destination's. */
  readonly reporter: 'source' | 'destination';
  readonly nodes: readonly string[];
  /** "mutual_tls", "none", or "mixed" when both were seen. */
  readonly security: string;
  readonly connectionsPerSecond: number;
  readonly requestsPerSecond: number;
  /** Share of connections (or requests, when there are any) that failed: 0..1. */
  readonly errorRate: number;
  readonly bytesPerSecond: number;
  /** Totals over the window. */
  readonly connections: number;
  readonly failed: number;
  readonly requests: number;
  readonly windowMs: number;
}

export interface DenialView extends Omit<TelemetryDenial, 'atMs'> {
  readonly at: number;
  readonly node: string;
}

export interface ReportOutcome {
  readonly edges: number;
  readonly denials: number;
  /** Items refused because they do not concern the reporting node's own workloads, described for the log. */
  readonly refusedEdges: readonly string[];
  readonly refusedDenials: readonly string[];
}

/**
 * The agents' recent traffic, as they report it over their Watch streams: a
 * bounded in-memory window (rates over the last minute, the last denials).
 * Node authorization, as for certificates: an agent speaks only for its own
 * node's workloads — the source of an edge it reports as the source, the
 * destination of one it reports as the destination, the denying side of a
 * denial. Anything else is refused (and reported back to the caller to log),
 * so a compromised node cannot paint traffic or denials onto other nodes.
 */
export class TelemetryWindow {
  readonly #now: () => number;
  readonly #workload: (namespace: string, name: string) => Workload | undefined;
  readonly #edges = new Map<string, EdgeSeries>();
  #denials: DenialView[] = [];
  droppedEdges = 0;

  constructor(o: { readonly now: () => number; readonly workload: (namespace: string, name: string) => Workload | undefined }) {
    this.#now = o.now;
    this.#workload = o.workload;
  }

  #onNode(node: string, namespace: string, name: string): boolean {
    return this.#workload(namespace, name)?.spec.node === node;
  }

  record(node: string, report: TelemetryReport): ReportOutcome {
    const now = this.#now();
    this.#prune(now);
    const refusedEdges: string[] = [];
    const refusedDenials: string[] = [];
    let edges = 0;
    for (const e of report.edges) {
      const reporter = e.reporter === 'source' ? 'source' : e.reporter === 'destination' ? 'destination' : undefined;
      const own = reporter === 'source' ? [e.sourceNamespace, e.sourceWorkload] : [e.destinationNamespace, e.destinationWorkload];
      if (!reporter || !this.#onNode(node, own[0]!, own[1]!)) {
        refusedEdges.push(`edge ${e.sourceNamespace}/${e.sourceWorkload} → ${e.destinationNamespace}/${e.destinationWorkload} reported as ${e.reporter || '(none)'}`);
        continue;
      }
      const key = [reporter, e.sourceNamespace, e.sourceWorkload, e.sourcePrincipal, e.destinationNamespace, e.destinationWorkload, e.destinationPrincipal, e.destinationService, e.security].join('\0');
      let series = this.#edges.get(key);
      if (!series) {
        if (this.#edges.size >= MAX_EDGES) {
          this.droppedEdges++;
          continue;
        }
        series = {
          reporter, node, security: e.security || 'none', samples: [],
          source: { workload: e.sourceWorkload, namespace: e.sourceNamespace, principal: e.sourcePrincipal },
          destination: { workload: e.destinationWorkload, namespace: e.destinationNamespace, principal: e.destinationPrincipal, service: e.destinationService },
        };
        this.#edges.set(key, series);
      }
      const counts = Object.fromEntries(COUNT_FIELDS.map((f) => [f, e[f]])) as Counts;
      series.samples.push({ at: now, counts });
      if (series.samples.length > MAX_SAMPLES_PER_EDGE) series.samples.shift();
      edges++;
    }
    let denials = 0;
    for (const d of report.denials) {
      const inbound = d.direction === 'inbound';
      const own = inbound ? [d.destinationNamespace, d.destinationWorkload] : [d.sourceNamespace, d.sourceWorkload];
      if ((d.direction !== 'inbound' && d.direction !== 'outbound') || !this.#onNode(node, own[0]!, own[1]!)) {
        refusedDenials.push(`denial ${d.sourcePrincipal || d.sourceAddress} → ${d.destinationNamespace}/${d.destinationWorkload} reported as ${d.direction || '(none)'}`);
        continue;
      }
      const { atMs, ...rest } = d;
      // The agent's clock says when; the controller's bounds it, so a skewed clock cannot push a denial to the top forever.
      this.#denials.unshift({ ...rest, at: Math.min(atMs > 0 ? atMs : now, now), node });
      denials++;
    }
    if (this.#denials.length > MAX_DENIALS) this.#denials.length = MAX_DENIALS;
    if (denials > 0) this.#denials.sort((a, b) => b.at - a.at);
    return { edges, denials, refusedEdges, refusedDenials };
  }

  #prune(now: number): void {
    for (const [key, s] of this.#edges) {
      while (s.samples.length > 0 && s.samples[0]!.at <= now - WINDOW_MS) s.samples.shift();
      if (s.samples.length === 0) this.#edges.delete(key);
    }
  }

  /** Edges with rates over the last minute; for an edge both agents report, the source's view (the destination's only when the source reported none). */
  edges(): EdgeView[] {
    const now = this.#now();
    this.#prune(now);
    const groups = new Map<string, EdgeSeries[]>();
    for (const s of this.#edges.values()) {
      const key = [s.source.namespace, s.source.workload, s.destination.namespace, s.destination.workload, s.destination.service].join('\0');
      let g = groups.get(key);
      if (!g) groups.set(key, (g = []));
      g.push(s);
    }
    const out: EdgeView[] = [];
    for (const g of groups.values()) {
      const bySource = g.filter((s) => s.reporter === 'source');
      const chosen = bySource.length > 0 ? bySource : g;
      const total = (list: readonly EdgeSeries[]): Record<(typeof COUNT_FIELDS)[number], number> => {
        const sum = Object.fromEntries(COUNT_FIELDS.map((f) => [f, 0])) as Record<(typeof COUNT_FIELDS)[number], number>;
        for (const s of list) for (const smp of s.samples) for (const f of COUNT_FIELDS) sum[f] += smp.counts[f];
        return sum;
      };
      const sum = total(chosen);
      // Requests are counted where HTTP is handled, which may be the destination's side only: its counts when the source's have none.
      if (sum.requests === 0) {
        const dst = total(g.filter((s) => s.reporter === 'destination'));
        sum.requests = dst.requests;
        sum.requestErrors = dst.requestErrors;
      }
      const securities = new Set(chosen.map((s) => s.security));
      const first = chosen[0]!;
      const perSecond = (n: number): number => n / (WINDOW_MS / 1000);
      out.push({
        source: first.source,
        destination: first.destination,
        reporter: first.reporter,
        nodes: [...new Set(g.map((s) => s.node))].sort(),
        security: securities.size === 1 ? first.security : 'mixed',
        connectionsPerSecond: perSecond(sum.connectionsOpened),
        requestsPerSecond: perSecond(sum.requests),
        errorRate: sum.requests > 0 ? sum.requestErrors / sum.requests : sum.connectionsClosed > 0 ? Math.min(1, sum.connectionsFailed / sum.connectionsClosed) : 0,
        bytesPerSecond: perSecond(sum.bytesSent + sum.bytesReceived),
        connections: sum.connectionsOpened,
        failed: sum.connectionsFailed,
        requests: sum.requests,
        windowMs: WINDOW_MS,
      });
    }
    return out.sort((a, b) => `${a.source.namespace}/${a.source.workload}`.localeCompare(`${b.source.namespace}/${b.source.workload}`) || a.destination.service.localeCompare(b.destination.service));
  }

  denials(): readonly DenialView[] {
    return this.#denials;
  }
}
