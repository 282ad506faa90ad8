/**
 * Where everything of the demo mesh lives. The hosts (controller, node-a,
 * node-b) are fixed loopback addresses in 127.0.10.0/24, which is reserved
 * for the demo (tests use 127.0.1.x–127.0.9.x); the workloads come from
 * examples/demo.yaml, the file the demo applies with ambitctl, so the two
 * cannot disagree.
 */
import { parseSourcedDocuments, validateAll } from '../../shared/resources/validate.ts';
import type { Service, Workload } from '../../shared/resources/types.ts';
import type { WebApp } from './apps.ts';
import type { Endpoint } from './ports.ts';

export const TRUST_DOMAIN = 'cluster.local';
export const CONTROLLER = { host: '127.0.10.1', grpcPort: 15012, monitoringPort: 15014, consolePort: 15015 } as const;
/** ambit-agent's default ports (DESIGN §3): the demo passes none, so what it shows is what an operator gets. */
export const AGENT_PORTS = { hbone: 15008, metrics: 15020, ready: 15021, admin: 15000, socks: 15080 } as const;

export interface NodeSpec {
  readonly name: string;
  readonly address: string;
  /** An upstream listener (--upstreams): port on the agent's address, tunnelled as `workload` to `destination`. */
  readonly upstream?: Upstream;
  /** The client's upstream listener for the canary's Service (examples/canary.yaml). */
  readonly canaryUpstream?: Upstream;
}

export interface Upstream {
  readonly port: number;
  readonly workload: string;
  readonly destination: string;
}

export const NODES: readonly NodeSpec[] = [
  {
    name: 'node-a', address: '127.0.10.2',
    upstream: { port: 18080, workload: 'demo/client', destination: 'web.demo:80' },
    canaryUpstream: { port: 18081, workload: 'demo/client', destination: 'web.shop:80' },
  },
  { name: 'node-b', address: '127.0.10.3' },
];

/** The --upstreams value of a node: "workload:port=destination", comma-separated. */
export function upstreamsOf(n: NodeSpec): string | undefined {
  const all = [n.upstream, n.canaryUpstream].filter((u): u is Upstream => u !== undefined);
  return all.length === 0 ? undefined : all.map((u) => `${u.workload}:${u.port}=${u.destination}`).join(',');
}

export interface DemoWorkload {
  readonly name: string;
  readonly namespace: string;
  readonly node: string;
  readonly address: string;
  readonly identity: string;
}

export interface Layout {
  readonly client: DemoWorkload;
  readonly intruder: DemoWorkload;
  /** The web instances behind the service, each run by the demo as an HTTP server. */
  readonly web: readonly (WebApp & { readonly identity: string })[];
  /** "name.namespace" and port clients use. */
  readonly service: { readonly host: string; readonly port: number; readonly targetPort: number; readonly name: string };
}

export function identityOf(namespace: string, serviceAccount: string): string {
  return `spiffe://${TRUST_DOMAIN}/ns/${namespace}/sa/${serviceAccount}`;
}

function demoWorkload(w: Workload): DemoWorkload {
  return { name: w.metadata.name, namespace: w.metadata.namespace, node: w.spec.node, address: w.spec.address, identity: identityOf(w.metadata.namespace, w.spec.serviceAccount) };
}

/** Reads the demo's workloads and service out of examples/demo.yaml; throws naming what is missing. */
export function layoutFrom(yamlText: string, source: string): Layout {
  const resources = validateAll(parseSourcedDocuments(yamlText, source));
  const workloads = resources.filter((r): r is Workload => r.kind === 'Workload');
  const services = resources.filter((r): r is Service => r.kind === 'Service');
  const named = (name: string): Workload => {
    const w = workloads.find((x) => x.metadata.name === name);
    if (!w) throw new Error(`${source} has no Workload named ${name}; the demo needs client, intruder and a Service with its web workloads`);
    return w;
  };
  const svc = services[0];
  const port = svc?.spec.ports[0];
  if (!svc || !port) throw new Error(`${source} has no Service with a port`);
  const selected = workloads.filter((w) => w.metadata.namespace === svc.metadata.namespace
    && Object.entries(svc.spec.selector).every(([k, v]) => w.metadata.labels[k] === v));
  if (selected.length === 0) throw new Error(`${source}: Service ${svc.metadata.name} selects no workload`);
  for (const w of [...selected, named('client'), named('intruder')]) {
    if (!NODES.some((n) => n.name === w.spec.node)) throw new Error(`${source}: Workload ${w.metadata.name} is on node ${w.spec.node}; the demo runs ${NODES.map((n) => n.name).join(' and ')}`);
  }
  return {
    client: demoWorkload(named('client')),
    intruder: demoWorkload(named('intruder')),
    web: selected.map((w) => ({
      workload: w.metadata.name, node: w.spec.node, address: w.spec.address, port: port.targetPort,
      identity: identityOf(w.metadata.namespace, w.spec.serviceAccount),
    })),
    service: { host: `${svc.metadata.name}.${svc.metadata.namespace}`, port: port.port, targetPort: port.targetPort, name: `${svc.metadata.name}.${svc.metadata.namespace}.svc.cluster.local` },
  };
}

/** Every address:port the demo listens on, for the check before anything starts. */
export function demoEndpoints(layout: Layout, canaryApps: readonly WebApp[]): Endpoint[] {
  const out: Endpoint[] = [
    { host: CONTROLLER.host, port: CONTROLLER.grpcPort, what: 'controller gRPC' },
    { host: CONTROLLER.host, port: CONTROLLER.monitoringPort, what: 'controller monitoring' },
    { host: CONTROLLER.host, port: CONTROLLER.consolePort, what: 'controller web console' },
  ];
  for (const n of NODES) {
    for (const [what, port] of Object.entries(AGENT_PORTS)) out.push({ host: n.address, port, what: `${n.name} ${what}` });
    if (n.upstream) out.push({ host: n.address, port: n.upstream.port, what: `${n.name} upstream listener` });
    if (n.canaryUpstream) out.push({ host: n.address, port: n.canaryUpstream.port, what: `${n.name} canary upstream listener` });
  }
  for (const w of [...layout.web, ...canaryApps]) out.push({ host: w.address, port: w.port, what: `demo app ${w.workload}` });
  return out;
}
