import {
  boolOption, durationOption, enumOption, hostPortOption, parseConfig, stringOption,
  type ConfigSources, type ConfigValues,
} from '../shared/config-parse.ts';
import { LOG_LEVELS } from '../shared/logger.ts';
import { AmbitError } from '../shared/errors.ts';

/** ambit-controller's options (DESIGN §6). */
export const CONTROLLER_OPTIONS = {
  dataDir: { ...stringOption('directory for the store, the CA and the admin credentials'), required: true },
  listen: hostPortOption('gRPC API address (TLS 1.3)', { host: '0.0.0.0', port: 15012 }, 15012),
  monitoring: hostPortOption('/metrics and /healthz/ready address', { host: '0.0.0.0', port: 15014 }, 15014),
  trustDomain: stringOption('SPIFFE trust domain', 'cluster.local', { re: /^[a-z0-9._-]{1,255}$/, what: 'lower-case letters, digits, ".", "-", "_"' }),
  reinitializeStore: boolOption('start a new, empty store even though the data directory holds a CA whose store is missing, empty or another one (agents keep their cached state and refuse the new store until told to accept it)'),
  store: enumOption('state store backend', ['sqlite', 'kubernetes', 'etcd'] as const, 'sqlite'),
  kubeconfig: stringOption('--store kubernetes: kubeconfig file of the API server (default: the in-cluster service account)'),
  agentServiceAccount: stringOption('--store kubernetes: NAMESPACE/NAME of the agents\' service account; only its tokens may join', 'ambit-system/ambit-agent', {
    re: /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\/[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/, what: 'NAMESPACE/NAME, e.g. ambit-system/ambit-agent',
  }),
  certTtl: durationOption('lifetime of workload certificates', 24 * 3_600_000, { minMs: 60_000, maxMs: 90 * 86_400_000 }),
  nodeCertTtl: durationOption('lifetime of node (agent) certificates', 7 * 86_400_000, { minMs: 60_000, maxMs: 365 * 86_400_000 }),
  caCert: stringOption('PEM file of a user-supplied signing CA (root or intermediate, optionally followed by its chain)'),
  caKey: stringOption('PEM file of the private key of --ca-cert'),
  caRoots: stringOption('PEM file of the root(s) --ca-cert chains to (default: --ca-cert itself, when self-signed)'),
  adminName: stringOption('name of the admin identity written to <data-dir>/admin', 'admin', { re: /^[A-Za-z0-9._-]+$/, what: 'letters, digits, ".", "-", "_"' }),
  logLevel: enumOption('log level', LOG_LEVELS, 'info'),
} as const;

export type ControllerConfig = ConfigValues<typeof CONTROLLER_OPTIONS>;

export function parseControllerConfig(sources: ConfigSources): ControllerConfig & { readonly help: boolean } {
  const cfg = parseConfig(CONTROLLER_OPTIONS, sources);
  if ((cfg.caCert === undefined) !== (cfg.caKey === undefined)) {
    throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', '--ca-cert and --ca-key must be given together', { details: { key: cfg.caCert === undefined ? 'ca-cert' : 'ca-key' } });
  }
  return cfg;
}
