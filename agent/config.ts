import { readFileSync, statSync } from 'node:fs';
import { isIP } from 'node:net';
import {
  durationOption, enumOption, hostPortListOption, intOption, ipOption, parseConfig, parseHostPort, stringOption,
  formatHostPort, type ConfigSources, type ConfigValues, type HostPort,
} from '../shared/config-parse.ts';
import { AmbitError } from '../shared/errors.ts';
import { LOG_LEVELS } from '../shared/logger.ts';
import { TRACING_OPTIONS, tracingSettings, type TracingSettings } from '../shared/tracing-config.ts';
import { controllerListProblem } from '../shared/controller-target.ts';

/**
 * An explicit (no-iptables) outbound listener: the named local workload's
 * clients connect to 127.0.0.1:localPort (or the agent's loopback address) and
 * are tunnelled to `destination` (a service name "name.namespace", a service
 * VIP or a workload address, with a port).
 */
export interface UpstreamListener {
  readonly namespace: string;
  readonly workload: string;
  readonly localPort: number;
  readonly destination: HostPort;
}

/** "ns/name:localPort=host:port", comma-separated. */
export function parseUpstreams(raw: unknown): UpstreamListener[] {
  if (typeof raw !== 'string') throw new Error('must be a list like "shop/client:9080=web.shop:80"');
  return raw.split(',').map((s) => s.trim()).filter(Boolean).map((item) => {
    const m = /^([a-z0-9][a-z0-9-]*)\/([a-z0-9][a-z0-9.-]*):(\d{1,5})=(.+)$/.exec(item);
    if (!m) throw new Error(`${JSON.stringify(item)} is not NAMESPACE/WORKLOAD:LOCAL_PORT=HOST:PORT`);
    const localPort = Number(m[3]);
    if (localPort < 1 || localPort > 65535) throw new Error(`${JSON.stringify(item)}: local port must be 1-65535`);
    const destination = parseHostPort(m[4]);
    if (destination.port < 1) throw new Error(`${JSON.stringify(item)}: destination port must be 1-65535`);
    return { namespace: m[1]!, workload: m[2]!, localPort, destination };
  });
}

const port = (description: string, def: number) => intOption(description, def, 0, 65535);

/** ambit-agent's options (DESIGN §6). */
export const AGENT_OPTIONS = {
  node: { ...stringOption('this host\'s node name', undefined, { re: /^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/, what: 'a DNS-1123 name' }), required: true },
  controller: { ...hostPortListOption('controller gRPC address HOST:PORT; several replicas as a comma-separated list of IP addresses, or a DNS name that resolves to each', undefined, 15012), required: true },
  address: { ...ipOption('this host\'s address: HBONE, metrics and readiness listen here'), required: true },
  dataDir: { ...stringOption('directory for node credentials, workload certificates and cached state'), required: true },
  join: stringOption('join token from "ambitctl node token create" (first start of a VM); on the command line it is visible to every local user (ps): prefer --join-file or AMBIT_JOIN'),
  joinFile: stringOption('file holding the join token, mode 0600 or stricter (refused if group or others can read it)'),
  kubernetesTokenFile: stringOption('path of a projected service-account token (audience ambit) to join with'),
  caBundle: stringOption('PEM file of the controller\'s CA bundle (a ConfigMap on Kubernetes); needed with --kubernetes-token-file, whose token pins no CA'),
  capture: enumOption('transparent: iptables capture (needs CAP_NET_ADMIN); none: SOCKS5 and upstream listeners only', ['transparent', 'none'] as const, 'transparent'),
  captureMode: enumOption('what the transparent capture matches: vm (by workload uid) or pod (by pod source address)', ['vm', 'pod'] as const, 'vm'),
  podCidrs: stringOption('pod mode: comma-separated CIDRs of this node\'s pod network'),
  mode: enumOption('plaintext to captured workloads: strict refuses it, permissive allows it subject to policy', ['strict', 'permissive'] as const, 'strict'),
  hbonePort: port('HBONE (mTLS HTTP/2 CONNECT) port', 15008),
  outboundPort: port('transparent outbound capture port', 15001),
  inboundPlaintextPort: port('inbound plaintext capture port', 15006),
  socksPort: port('SOCKS5 port (loopback)', 15080),
  adminPort: port('admin port (loopback)', 15000),
  metricsPort: port('Prometheus /metrics port', 15020),
  readyPort: port('readiness /healthz/ready port', 15021),
  upstreams: { description: 'explicit outbound listeners "ns/workload:localPort=host:port", comma-separated', parse: parseUpstreams, default: [] as UpstreamListener[] },
  passthrough: enumOption('outbound connections to destinations outside the mesh', ['allow', 'deny'] as const, 'allow'),
  drainTimeout: durationOption('how long SIGTERM waits for open connections', 20_000, { maxMs: 3_600_000 }),
  dataplaneBinary: stringOption('path of the ambit-dataplane executable, which carries every byte (default: dataplane/target/release/ambit-dataplane in the package)'),
  acceptStore: stringOption('take the controller\'s state from this store identity even when it is another store than the one whose state the agent holds, or behind it (after the controller\'s store was reinitialized or restored; remove once taken)', undefined, { re: /^[A-Za-z0-9._:\/-]{1,200}$/, what: 'a store identity as the agent logs it' }),
  connectTimeout: durationOption('timeout for dialling workloads and peer agents', 5_000, { minMs: 100, maxMs: 120_000 }),
  // Full by default: an agent in node scope waits a round trip to the
  // controller on the first connection to each destination, and cannot reach
  // a destination it has not used before while the controller is away; a
  // mesh that outgrows an agent's memory turns node scope on (docs/scale.md).
  watchScope: enumOption('what the controller sends: full (the whole mesh) or node (this node\'s workloads, their policies and services, and the destinations its workloads use, subscribed on first use)', ['full', 'node'] as const, 'full'),
  watchSubscriptions: intOption('node scope: most destinations followed at once (the least recently used beyond it is dropped)', 1_000, 1, 100_000),
  // Passive health (agent/connection/outlier.ts), Envoy's outlier detection
  // for consecutive connect failures: 3 in a row is past a single lost SYN
  // or restart race yet found within a handful of connections (each retried
  // elsewhere meanwhile); 10 s doubling to 5 min and 50 % are Envoy's base
  // and maximum ejection time and a cap that keeps half a service serving.
  // On HTTP ports the data plane applies the same numbers per request (5xx
  // answers count as failures too), each ejection lasting base × its number
  // (docs/l7.md).
  outlierConsecutiveFailures: intOption('connect failures (on HTTP ports also 5xx answers) in a row that eject a service endpoint from balancing', 3, 1, 1000),
  outlierBaseEjection: durationOption('how long an endpoint is first ejected; each further ejection doubles it (on HTTP ports: base × ejections)', 10_000, { minMs: 100, maxMs: 3_600_000 }),
  outlierMaxEjection: durationOption('the longest an endpoint stays ejected', 300_000, { minMs: 100, maxMs: 86_400_000 }),
  outlierMaxEjectionPercent: intOption('the share (percent) of a service\'s endpoints that may be ejected at once (at least one; 0: none)', 50, 0, 100),
  // Circuit breaking on HTTP ports, per service and per agent: Envoy's
  // defaults for a cluster's pending requests and connections.
  httpMaxPendingRequests: intOption('HTTP requests per service waiting for their answer at once; beyond, 503 with response flag UO', 1024, 1, 1_000_000),
  httpMaxConnections: intOption('upstream HTTP connections per service; beyond, 503 with response flag UO', 1024, 1, 1_000_000),
  // Retry budget (Envoy's): a brown-out must not become an outage because
  // every client retries it. At least 1 each: the control protocol's 0 means
  // "the data plane's default" (proto3 has no unset), so 0 cannot be asked for.
  retryBudgetPercent: intOption('retries in flight to a service, as a percent of its requests in flight, beyond which a route\'s retry is not made', 20, 1, 100),
  retryBudgetMinConcurrency: intOption('retries in flight to a service always allowed, whatever the budget (so that low traffic still retries)', 3, 1, 10_000),
  httpMaxBufferedBody: intOption('the largest request body (bytes) buffered so that it can be retried or mirrored; longer bodies are sent once', 65_536, 1, 16_777_216),
  // Istio's telemetry names (agent/proxy/istio-names.ts): its defaults, so
  // Istio's dashboards and Kiali see the values they expect.
  clusterDomain: stringOption('DNS domain of service host names in telemetry and logs (name.namespace.svc.DOMAIN), as Istio\'s domainSuffix', 'cluster.local', { re: /^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/, what: 'a DNS name' }),
  clusterId: stringOption('cluster name reported as source_cluster and destination_cluster, as Istio\'s CLUSTER_ID', 'Kubernetes', { re: /^[A-Za-z0-9._-]{1,253}$/, what: 'letters, digits, ".", "-", "_"' }),
  telemetryInterval: durationOption('how often the agent reports its traffic (edge counters, denials) to the controller for the web console', 5_000, { minMs: 200, maxMs: 300_000 }),
  logLevel: enumOption('log level', LOG_LEVELS, 'info'),
  ...TRACING_OPTIONS,
} as const;

export type AgentConfig = ConfigValues<typeof AGENT_OPTIONS> & { readonly tracing: TracingSettings };

/**
 * The token of --join-file. A file that group or others can read is refused,
 * not warned about: a join token lets whoever reads it first join as this
 * node, and a warning in a log is easily missed (ssh refuses loose private
 * keys for the same reason).
 */
function readJoinFile(path: string, readFile: (p: string) => string): string {
  let mode: number;
  let token: string;
  try {
    mode = statSync(path).mode;
    token = readFile(path).trim();
  } catch (cause) {
    throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', `invalid --join-file ${JSON.stringify(path)}: ${(cause as Error).message}`, { cause, details: { key: 'join-file', value: path } });
  }
  if ((mode & 0o077) !== 0) {
    throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', `invalid --join-file ${JSON.stringify(path)}: mode ${(mode & 0o777).toString(8).padStart(4, '0')} lets other users read the join token; chmod 600 it`, { details: { key: 'join-file', value: path } });
  }
  if (token === '') throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', `invalid --join-file ${JSON.stringify(path)}: the file is empty`, { details: { key: 'join-file', value: path } });
  return token;
}

export function parseAgentConfig(sources: ConfigSources): AgentConfig & { readonly help: boolean } {
  const parsed = parseConfig(AGENT_OPTIONS, sources);
  let cfg = Object.freeze({ ...parsed, tracing: tracingSettings(parsed, 'ambit-agent') });
  const listProblem = cfg.help ? undefined : controllerListProblem(cfg.controller);
  if (listProblem !== undefined) {
    throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', `invalid --controller ${cfg.controller.map(formatHostPort).join(',')}: ${listProblem}`, { details: { key: 'controller' } });
  }
  if (!cfg.help && cfg.joinFile !== undefined) {
    if (cfg.join !== undefined) {
      throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', '--join and --join-file (or AMBIT_JOIN and AMBIT_JOIN_FILE) are alternatives: give one', { details: { key: 'join-file' } });
    }
    cfg = Object.freeze({ ...cfg, join: readJoinFile(cfg.joinFile, sources.readFile ?? ((p) => readFileSync(p, 'utf8'))) });
  }
  if (!cfg.help && cfg.kubernetesTokenFile && !cfg.caBundle) {
    throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', '--kubernetes-token-file needs --ca-bundle: a Kubernetes token pins no CA, so the controller is verified against the bundle', { details: { key: 'ca-bundle' } });
  }
  if (!cfg.help && cfg.captureMode === 'pod' && cfg.capture === 'transparent' && !cfg.podCidrs) {
    throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', '--capture-mode pod needs --pod-cidrs', { details: { key: 'pod-cidrs' } });
  }
  return cfg;
}

/**
 * Loopback-only listeners (SOCKS5, admin, upstreams) bind to --address when
 * it is itself a loopback address (several agents on one machine as several
 * hosts), else to 127.0.0.1 (DESIGN §6).
 */
export function loopbackAddressFor(address: string): string {
  if (isIP(address) === 4 && address.startsWith('127.')) return address;
  if (address === '::1') return address;
  return '127.0.0.1';
}
