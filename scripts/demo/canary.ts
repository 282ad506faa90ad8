/**
 * The demo's canary (examples/canary.yaml): read from the file the demo
 * applies, so the two cannot disagree — the Service clients call, the
 * HTTPRoute splitting it by weight over one Service per version, and the
 * instances behind each — and the traffic that shows it: requests on one
 * keep-alive connection counted per version, then the same while one
 * instance fails some of its requests, which the route's retry hides.
 */
import { Agent, get } from 'node:http';
import type { HTTPRoute } from '../../shared/resources/route-types.ts';
import type { Resource, Service, Workload } from '../../shared/resources/types.ts';
import { parseSourcedDocuments, validateAll } from '../../shared/resources/validate.ts';
import { parseAnswer, type RunningWebApp, type WebApp } from './apps.ts';
import { getJson } from './http-poll.ts';
import { identityOf } from './layout.ts';

export interface CanaryBackend {
  /** The backend Service's name (in the route's namespace). */
  readonly service: string;
  readonly weight: number;
  /** The workloads it selects. */
  readonly instances: readonly string[];
}

export interface Canary {
  /** "namespace/name" of the HTTPRoute. */
  readonly route: string;
  /** "name.namespace" and port of the parent Service clients call. */
  readonly host: string;
  readonly port: number;
  readonly backends: readonly CanaryBackend[];
  readonly retry: { readonly codes: readonly number[]; readonly attempts: number } | undefined;
  /** Every instance of every backend, each run by the demo as an HTTP server. */
  readonly apps: readonly (WebApp & { readonly identity: string })[];
  /** The instance the demo makes fail: the last one of the heaviest backend (it has another instance). */
  readonly failing: string;
}

const selects = (svc: Service, w: Workload): boolean =>
  w.metadata.namespace === svc.metadata.namespace && Object.entries(svc.spec.selector).every(([k, v]) => w.metadata.labels[k] === v);

/** Reads the canary out of examples/canary.yaml; throws naming what is missing. */
export function canaryFrom(yamlText: string, source: string): Canary {
  const resources: Resource[] = validateAll(parseSourcedDocuments(yamlText, source));
  const route = resources.find((r): r is HTTPRoute => r.kind === 'HTTPRoute');
  if (!route) throw new Error(`${source} has no HTTPRoute`);
  const services = resources.filter((r): r is Service => r.kind === 'Service');
  const workloads = resources.filter((r): r is Workload => r.kind === 'Workload');
  const parent = route.spec.parentRefs[0];
  const parentSvc = services.find((s) => s.metadata.name === parent?.name && s.metadata.namespace === parent.namespace);
  const port = parentSvc?.spec.ports.find((p) => parent?.port === undefined || p.port === parent.port);
  if (!parent || !parentSvc || !port) throw new Error(`${source}: the HTTPRoute's parent Service is not in the file`);
  const rule = route.spec.rules[0];
  if (!rule || rule.backendRefs.length < 2) throw new Error(`${source}: the HTTPRoute's first rule must split over two backends`);
  const backends = rule.backendRefs.map((b) => {
    const svc = services.find((s) => s.metadata.name === b.name && s.metadata.namespace === b.namespace);
    if (!svc) throw new Error(`${source}: backend Service ${b.namespace}/${b.name} is not in the file`);
    return { service: b.name, weight: b.weight, instances: workloads.filter((w) => selects(svc, w)).map((w) => w.metadata.name) };
  });
  const heaviest = [...backends].sort((a, b) => b.weight - a.weight)[0]!;
  const failing = heaviest.instances.at(-1);
  if (!failing || heaviest.instances.length < 2) throw new Error(`${source}: backend ${heaviest.service} needs two instances (one fails in the demo, the other answers its retries)`);
  const apps = workloads.filter((w) => selects(parentSvc, w)).map((w) => ({
    workload: w.metadata.name, node: w.spec.node, address: w.spec.address, port: port.targetPort, identity: identityOf(w.metadata.namespace, w.spec.serviceAccount),
  }));
  return {
    route: `${route.metadata.namespace}/${route.metadata.name}`,
    host: `${parentSvc.metadata.name}.${parentSvc.metadata.namespace}`,
    port: port.port,
    backends,
    retry: rule.retry ? { codes: rule.retry.codes, attempts: rule.retry.attempts } : undefined,
    apps,
    failing,
  };
}

export interface CanaryDeps {
  readonly canary: Canary;
  /** The source agent's upstream listener for the canary's Service, and the client's address. */
  readonly upstream: { readonly host: string; readonly port: number };
  readonly clientAddress: string;
  /** The source agent's metrics URL. */
  readonly metricsUrl: string;
  readonly apps: ReadonlyMap<string, RunningWebApp>;
}

export interface CanaryRun {
  readonly requests: number;
  /** Answers per backend Service. */
  readonly split: ReadonlyMap<string, number>;
  /** Requests that were not answered 200. */
  readonly failed: number;
}

export interface CanaryResult {
  readonly split: CanaryRun;
  readonly withFailures: CanaryRun & { readonly failEvery: number; readonly injected: number; readonly retries: number };
}

/** `n` GETs on one keep-alive connection, each counted by the backend Service whose instance answered. */
async function send(d: CanaryDeps, n: number, label: string): Promise<CanaryRun> {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const serviceOf = new Map(d.canary.backends.flatMap((b) => b.instances.map((i) => [i, b.service] as const)));
  const split = new Map<string, number>(d.canary.backends.map((b) => [b.service, 0]));
  let failed = 0;
  try {
    for (let k = 0; k < n; k++) {
      const path = `/${label}?n=${k + 1}`;
      const { status, body } = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = get({ agent, host: d.upstream.host, port: d.upstream.port, localAddress: d.clientAddress, path, headers: { host: d.canary.host }, timeout: 10_000 }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
          res.on('error', reject);
        });
        req.on('timeout', () => req.destroy(new Error(`GET http://${d.canary.host}${path}: no answer within 10 s`)));
        req.on('error', reject);
      });
      const svc = serviceOf.get(parseAnswer(body)?.workload ?? '');
      if (status !== 200 || !svc) failed++;
      else split.set(svc, (split.get(svc) ?? 0) + 1);
    }
  } finally {
    agent.destroy();
  }
  return { requests: n, split, failed };
}

/** The retries the source agent counts for `service` (Prometheus text), 0 when none yet. */
async function retriesOf(metricsUrl: string, service: string): Promise<number> {
  const text = String((await getJson<string>(metricsUrl)).body);
  let total = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('ambit_http_retries_total{') && line.includes(`destination_service="${service}"`)) total += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return total;
}

/**
 * The split over `n` requests; then, with the failing instance answering 503
 * to every `failEvery`-th request it gets, `n / 2` more, and the retries
 * the source agent counted for that instance's Service meanwhile.
 */
export async function canaryTraffic(d: CanaryDeps, n: number, failEvery: number): Promise<CanaryResult> {
  const split = await send(d, n, 'canary');
  const failing = d.apps.get(d.canary.failing);
  if (!failing) throw new Error(`no demo app runs ${d.canary.failing}`);
  const service = d.canary.backends.find((b) => b.instances.includes(d.canary.failing))!.service;
  const fqdn = `${service}.${d.canary.host.split('.')[1]}.svc.cluster.local`;
  const retriesBefore = await retriesOf(d.metricsUrl, fqdn);
  const injectedBefore = failing.failed;
  failing.failEvery = failEvery;
  let run: CanaryRun;
  try {
    run = await send(d, Math.round(n / 2), 'retried');
  } finally {
    failing.failEvery = 0;
  }
  const injected = failing.failed - injectedBefore;
  // The agent reads its data plane's counts every second: wait for them to cover every retry made.
  let retries = 0;
  for (const deadline = Date.now() + 5_000; Date.now() < deadline;) {
    retries = (await retriesOf(d.metricsUrl, fqdn)) - retriesBefore;
    if (retries >= injected) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  return { split, withFailures: { ...run, failEvery, injected, retries } };
}

const pct = (n: number, of: number): string => `${of === 0 ? 0 : ((100 * n) / of).toFixed(1)} %`;

/** What the demo prints of the canary's traffic. */
export function describeCanary(c: Canary, r: CanaryResult, source: string): string[] {
  const split = c.backends.map((b) => `${b.service} ${r.split.split.get(b.service) ?? 0} (${pct(r.split.split.get(b.service) ?? 0, r.split.requests)})`).join(', ');
  const weights = c.backends.map((b) => `${b.service} ${b.weight}`).join(', ');
  const w = r.withFailures;
  const ok = w.requests - w.failed;
  const retry = c.retry ? `retry codes [${c.retry.codes.join(', ')}], attempts ${c.retry.attempts}` : 'no retry';
  return [
    `split over ${r.split.requests} requests: ${split} (the route's weights: ${weights})${r.split.failed > 0 ? `; ${r.split.failed} failed` : ''}`,
    `${c.failing} now answers 503 to every ${ordinal(w.failEvery)} request it gets: ${w.requests} more requests, ${ok} of ${w.requests} answered 200 to the client`,
    `${c.failing} answered 503 ${w.injected} times; ${source} retried them (${retry}): ambit_http_retries_total +${w.retries}`,
  ];
}

function ordinal(n: number): string {
  return n === 2 ? '2nd' : n === 3 ? '3rd' : `${n}th`;
}
