/**
 * Passive health (outlier ejection) of service endpoints, as Envoy's outlier
 * detection does it for consecutive connect failures: the data plane reports
 * every attempt to open a tunnel (dataplane/outbound.ts); after
 * `consecutiveFailures` failures in a row an endpoint is ejected from its
 * service's balancing for `baseEjectionMs × 2^(n-1)` (n: its ejections,
 * capped at `maxEjectionMs`), then returns on its own. A success resets the
 * count; each base interval an endpoint stays back takes one off n, so an
 * endpoint that recovered for good is ejected briefly again if it fails.
 * Never more than `maxEjectionPercent` of a service's endpoints are ejected
 * at once (at least one, unless it is 0): a service whose endpoints all fail
 * keeps being tried rather than emptied by its own health check.
 *
 * Pure: time comes from `now`, nothing is scheduled (an ejection ends when a
 * reader asks after its end). Endpoints are counted per service, as Envoy
 * counts hosts per cluster: a workload behind two services is judged by each.
 */

export interface OutlierOptions {
  /** Failures in a row that eject an endpoint. */
  readonly consecutiveFailures: number;
  /** The first ejection's length; each further one doubles it. */
  readonly baseEjectionMs: number;
  /** No ejection lasts longer. */
  readonly maxEjectionMs: number;
  /** The share of a service's endpoints (0–100) that may be ejected at once. */
  readonly maxEjectionPercent: number;
  readonly now?: () => number;
  /** Called for each new ejection (metrics, a log line). */
  readonly onEject?: (e: Ejection) => void;
}

/** An endpoint out of its service's balancing, for /config_dump and metrics. */
export interface Ejection {
  /** "name.namespace.svc". */
  readonly service: string;
  /** The endpoint's "address:port" (the CONNECT authority). */
  readonly endpoint: string;
  /** "namespace/name" of the workload. */
  readonly workload: string;
  /** The last failure's reason, as the data plane reported it. */
  readonly reason: string;
  readonly since: number;
  readonly until: number;
  /** How many times it has been ejected (decayed while healthy). */
  readonly ejections: number;
}

interface EndpointHealth {
  failures: number;
  ejections: number;
  /** When it last came back (or was first seen): the decay of `ejections` counts from here. */
  back: number;
  ejected?: Ejection;
}

export class OutlierDetector {
  readonly #o: OutlierOptions;
  readonly #now: () => number;
  /** By service, then endpoint. */
  readonly #services = new Map<string, Map<string, EndpointHealth>>();

  constructor(o: OutlierOptions) {
    this.#o = o;
    this.#now = o.now ?? Date.now;
  }

  /**
   * A failed connect to `endpoint` of `service`, which has `serviceSize`
   * endpoints now. Returns the ejection it caused, if any.
   */
  failure(service: string, endpoint: string, serviceSize: number, reason: string, workload = ''): Ejection | undefined {
    const now = this.#now();
    const h = this.#health(service, endpoint, now);
    if (this.#current(h, now)) return undefined; // already out: an attempt that started before its ejection
    h.failures++;
    if (h.failures < this.#o.consecutiveFailures) return undefined;
    if (this.ejectedIn(service) >= this.#allowed(serviceSize)) return undefined; // the cap: it stays in, its count goes on
    // Envoy's decay: one ejection forgiven per base interval spent back in service.
    h.ejections = Math.max(0, h.ejections - Math.floor((now - h.back) / this.#o.baseEjectionMs)) + 1;
    const length = Math.min(this.#o.maxEjectionMs, this.#o.baseEjectionMs * 2 ** (h.ejections - 1));
    h.failures = 0;
    h.ejected = { service, endpoint, workload, reason, since: now, until: now + length, ejections: h.ejections };
    this.#o.onEject?.(h.ejected);
    return h.ejected;
  }

  /** A tunnel opened to `endpoint`: its failures are forgotten. */
  success(service: string, endpoint: string): void {
    const byEndpoint = this.#services.get(service);
    const h = byEndpoint?.get(endpoint);
    if (!byEndpoint || !h) return;
    h.failures = 0;
    // Nothing left to remember: the map holds only endpoints with a history.
    if (!this.#current(h, this.#now()) && h.ejections === 0) {
      byEndpoint.delete(endpoint);
      if (byEndpoint.size === 0) this.#services.delete(service);
    }
  }

  isEjected(service: string, endpoint: string): boolean {
    const h = this.#services.get(service)?.get(endpoint);
    return h !== undefined && this.#current(h, this.#now()) !== undefined;
  }

  /** Endpoints of `service` ejected now. */
  ejectedIn(service: string): number {
    const now = this.#now();
    let n = 0;
    for (const h of this.#services.get(service)?.values() ?? []) if (this.#current(h, now)) n++;
    return n;
  }

  /** Every ejection in force now, oldest first. */
  ejected(): Ejection[] {
    const now = this.#now();
    const out: Ejection[] = [];
    for (const byEndpoint of this.#services.values()) for (const h of byEndpoint.values()) {
      const e = this.#current(h, now);
      if (e) out.push(e);
    }
    return out.sort((a, b) => a.since - b.since);
  }

  /** The ejection in force, ending one whose time has passed. */
  #current(h: EndpointHealth, now: number): Ejection | undefined {
    if (h.ejected && now >= h.ejected.until) {
      h.back = h.ejected.until;
      h.ejected = undefined;
    }
    return h.ejected;
  }

  #allowed(serviceSize: number): number {
    if (this.#o.maxEjectionPercent <= 0) return 0;
    return Math.max(1, Math.floor((serviceSize * this.#o.maxEjectionPercent) / 100));
  }

  #health(service: string, endpoint: string, now: number): EndpointHealth {
    let byEndpoint = this.#services.get(service);
    if (!byEndpoint) this.#services.set(service, (byEndpoint = new Map()));
    let h = byEndpoint.get(endpoint);
    if (!h) byEndpoint.set(endpoint, (h = { failures: 0, ejections: 0, back: now }));
    return h;
  }
}
