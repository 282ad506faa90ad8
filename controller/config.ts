import {
  boolOption, durationOption, enumOption, hostPortOption, intOption, parseConfig, stringOption,
  formatHostPort, parseHostPort, type ConfigSources, type ConfigValues, type HostPort, type Option,
} from '../shared/config-parse.ts';
import { descriptorLimit } from '../shared/connection-admission.ts';
import { LOG_LEVELS } from '../shared/logger.ts';
import { AmbitError } from '../shared/errors.ts';
import { TRACING_OPTIONS, tracingSettings, type TracingSettings } from '../shared/tracing-config.ts';

/**
 * Descriptors --max-connections auto leaves to the controller itself: the
 * store's files, the monitoring port, outgoing connections (Kubernetes API),
 * Node's own handles, and the accept of the connection that evicts another.
 */
export const DESCRIPTOR_RESERVE = 64;
/** Used when the descriptor limit cannot be read (not Linux) or is unlimited. */
const FALLBACK_MAX_CONNECTIONS = 4096;

/** ambit-controller's options (DESIGN §6). */
export const CONTROLLER_OPTIONS = {
  dataDir: { ...stringOption('directory for the store, the CA and the admin credentials'), required: true },
  listen: hostPortOption('gRPC API address (TLS 1.3)', { host: '0.0.0.0', port: 15012 }, 15012),
  monitoring: hostPortOption('/metrics and /healthz/ready address', { host: '0.0.0.0', port: 15014 }, 15014),
  console: {
    description: 'web console address (HTTPS, admin only: docs/console.md), or "none" to turn it off',
    default: { host: '127.0.0.1', port: 15015 },
    parse: (raw: unknown): HostPort | 'none' => (raw === 'none' ? 'none' : parseHostPort(raw, 15015)),
    format: (v: HostPort | 'none') => (v === 'none' ? v : formatHostPort(v)),
  } as Option<HostPort | 'none'> & { readonly default: HostPort | 'none' },
  trustDomain: stringOption('SPIFFE trust domain', 'cluster.local', { re: /^[a-z0-9._-]{1,255}$/, what: 'lower-case letters, digits, ".", "-", "_"' }),
  reinitializeStore: boolOption('start a new, empty store even though the data directory holds a CA whose store is missing, empty or another one (agents keep their cached state and refuse the new store until told to accept it)'),
  store: enumOption('state store backend', ['sqlite', 'kubernetes', 'etcd'] as const, 'sqlite'),
  kubernetesJoin: boolOption('--store etcd or sqlite: let agents join with their Kubernetes service-account tokens (TokenReview against the API server of --kubeconfig; --store kubernetes always does)'),
  kubeconfig: stringOption('--store kubernetes or --kubernetes-join: kubeconfig file of the API server (default: the in-cluster service account)'),
  agentServiceAccount: stringOption('--store kubernetes or --kubernetes-join: NAMESPACE/NAME of the agents\' service account; only its tokens may join', 'ambit-system/ambit-agent', {
    re: /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\/[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/, what: 'NAMESPACE/NAME, e.g. ambit-system/ambit-agent',
  }),
  etcdEndpoints: stringOption('--store etcd: the etcd cluster\'s client URLs, comma-separated (https://10.0.0.1:2379,https://10.0.0.2:2379; host:port takes https with --etcd-ca, else http)'),
  etcdCa: stringOption('--store etcd: PEM file of the CA that signed the etcd members\' certificates (turns on TLS)'),
  etcdCert: stringOption('--store etcd: PEM file of this controller\'s client certificate for etcd'),
  etcdKey: stringOption('--store etcd: PEM file of the private key of --etcd-cert (mode 0600)'),
  etcdPrefix: stringOption('--store etcd: key prefix of this mesh in etcd', '/ambit/', { re: /^[A-Za-z0-9._\/-]{1,128}$/, what: 'letters, digits, ".", "-", "_", "/"' }),
  certTtl: durationOption('lifetime of workload certificates', 24 * 3_600_000, { minMs: 60_000, maxMs: 90 * 86_400_000 }),
  nodeCertTtl: durationOption('lifetime of node (agent) certificates', 7 * 86_400_000, { minMs: 60_000, maxMs: 365 * 86_400_000 }),
  caCert: stringOption('PEM file of a user-supplied signing CA (root or intermediate, optionally followed by its chain)'),
  caKey: stringOption('PEM file of the private key of --ca-cert'),
  caRoots: stringOption('PEM file of the root(s) --ca-cert chains to (default: --ca-cert itself, when self-signed)'),
  adminName: stringOption('name of the admin identity written to <data-dir>/admin', 'admin', { re: /^[A-Za-z0-9._-]+$/, what: 'letters, digits, ".", "-", "_"' }),
  connectDeadline: durationOption('gRPC port: a connection must finish TLS and, without a valid client certificate, have a call in progress within this', 10_000, { minMs: 1_000, maxMs: 300_000 }),
  idleTimeout: durationOption('gRPC port: a connection with no call in progress for this long is closed', 300_000, { minMs: 1_000, maxMs: 86_400_000 }),
  maxConnections: {
    description: `gRPC port: open connections at most; "auto" is the descriptor limit less ${DESCRIPTOR_RESERVE} kept for the controller itself`,
    default: 'auto',
    parse: (raw: unknown): number | 'auto' => {
      if (raw === 'auto') return 'auto';
      const n = typeof raw === 'number' ? raw : typeof raw === 'string' && /^\d+$/.test(raw.trim()) ? Number(raw) : NaN;
      if (!Number.isInteger(n) || n < 2 || n > 1_000_000) throw new Error('must be "auto" or an integer from 2 to 1000000');
      return n;
    },
  } as Option<number | 'auto'> & { readonly default: number | 'auto' },
  maxConnectionsPerSource: intOption('gRPC port: connections at most per source address that have not yet authenticated', 32, 1, 100_000),
  logLevel: enumOption('log level', LOG_LEVELS, 'info'),
  ...TRACING_OPTIONS,
} as const;

export type ControllerConfig = Omit<ConfigValues<typeof CONTROLLER_OPTIONS>, 'maxConnections'> & { readonly maxConnections: number; readonly tracing: TracingSettings };

/** "auto" resolved against the soft RLIMIT_NOFILE the controller runs under. */
export function autoMaxConnections(limit: number | undefined): number {
  return limit === undefined ? FALLBACK_MAX_CONNECTIONS : Math.max(16, limit - DESCRIPTOR_RESERVE);
}

export function parseControllerConfig(sources: ConfigSources, readLimit: () => number | undefined = () => descriptorLimit()): ControllerConfig & { readonly help: boolean } {
  const parsed = parseConfig(CONTROLLER_OPTIONS, sources);
  const cfg = Object.freeze({ ...parsed, maxConnections: parsed.maxConnections === 'auto' ? autoMaxConnections(readLimit()) : parsed.maxConnections, tracing: tracingSettings(parsed, 'ambit-controller') });
  if ((cfg.caCert === undefined) !== (cfg.caKey === undefined)) {
    throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', '--ca-cert and --ca-key must be given together', { details: { key: cfg.caCert === undefined ? 'ca-cert' : 'ca-key' } });
  }
  if (cfg.store === 'etcd' && !cfg.help) checkEtcdConfig(cfg);
  if (cfg.kubeconfig !== undefined && cfg.store !== 'kubernetes' && !cfg.kubernetesJoin) {
    // Said rather than ignored: the operator meant the controller to talk to a cluster.
    throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', `--kubeconfig is used by --store kubernetes or --kubernetes-join; --store ${cfg.store} without --kubernetes-join does not talk to Kubernetes`, { details: { key: 'kubeconfig' } });
  }
  return cfg;
}

/**
 * --store etcd: endpoints are required, TLS files come as a set, and the CA is
 * the operator's (--ca-cert/--ca-key, the same files on every replica; its key
 * is never written to etcd: docs/ha.md, "The CA").
 */
function checkEtcdConfig(cfg: ControllerConfig): void {
  if (cfg.etcdEndpoints === undefined) {
    throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', '--store etcd needs --etcd-endpoints (the etcd cluster\'s client URLs, comma-separated)', { details: { key: 'etcd-endpoints' } });
  }
  parseEtcdEndpoints(cfg.etcdEndpoints, cfg.etcdCa !== undefined);
  if ((cfg.etcdCert === undefined) !== (cfg.etcdKey === undefined)) {
    throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', '--etcd-cert and --etcd-key must be given together', { details: { key: cfg.etcdCert === undefined ? 'etcd-cert' : 'etcd-key' } });
  }
  if (cfg.etcdCert !== undefined && cfg.etcdCa === undefined) {
    throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', '--etcd-cert needs --etcd-ca: a client certificate is only sent over TLS', { details: { key: 'etcd-ca' } });
  }
  if (cfg.caCert === undefined) {
    throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', '--store etcd needs --ca-cert and --ca-key: every replica signs with the same CA, given to each as files (its key is never stored in etcd; see docs/ha.md)', { details: { key: 'ca-cert' } });
  }
}

/**
 * The etcd client URLs: "scheme://host:port" or "host:port" (https when TLS
 * is on, else http). A scheme that contradicts the TLS setting is refused
 * rather than silently sending the client key over plain text or failing later.
 */
export function parseEtcdEndpoints(raw: string, tls: boolean): string[] {
  const list = raw.split(',').map((s) => s.trim()).filter(Boolean);
  if (list.length === 0) throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', `invalid --etcd-endpoints ${JSON.stringify(raw)}: no endpoint`, { details: { key: 'etcd-endpoints', value: raw } });
  return list.map((e) => {
    const m = /^(?:(https?):\/\/)?(.+)$/.exec(e)!;
    const scheme = m[1] ?? (tls ? 'https' : 'http');
    if ((scheme === 'https') !== tls) {
      throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', `invalid --etcd-endpoints ${JSON.stringify(e)}: ${scheme} ${tls ? 'while --etcd-ca turns TLS on' : 'needs --etcd-ca'}`, { details: { key: 'etcd-endpoints', value: e } });
    }
    let hp;
    try {
      hp = parseHostPort(m[2]!.replace(/\/$/, ''));
    } catch (err) {
      throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', `invalid --etcd-endpoints ${JSON.stringify(e)}: ${(err as Error).message}`, { details: { key: 'etcd-endpoints', value: e } });
    }
    if (hp.port < 1) throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', `invalid --etcd-endpoints ${JSON.stringify(e)}: port must be 1-65535`, { details: { key: 'etcd-endpoints', value: e } });
    return `${scheme}://${formatHostPort(hp)}`;
  });
}
