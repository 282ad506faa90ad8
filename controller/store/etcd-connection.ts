import { readFileSync } from 'node:fs';
import type { IOptions } from 'etcd3';
import { AmbitError } from '../../shared/errors.ts';

export interface EtcdConnectionConfig {
  /** Client URLs, already checked (parseEtcdEndpoints). */
  readonly endpoints: readonly string[];
  readonly caFile?: string;
  readonly certFile?: string;
  readonly keyFile?: string;
}

function read(path: string, flag: string): Buffer {
  try {
    return readFileSync(path);
  } catch (cause) {
    throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', `cannot read --${flag} ${JSON.stringify(path)}: ${(cause as Error).message}`, { cause, details: { key: flag, value: path } });
  }
}

/**
 * The etcd3 client's options: the members, and TLS from files (a client key
 * is only ever read from a file, never taken on the command line).
 * Messages up to 64 MiB are accepted: a snapshot page or a large commit's
 * change set can exceed grpc's 4 MiB default.
 */
export function etcdClientOptions(c: EtcdConnectionConfig): IOptions {
  const grpcOptions = { 'grpc.max_receive_message_length': 64 * 1024 * 1024, 'grpc.keepalive_time_ms': 10_000, 'grpc.keepalive_timeout_ms': 5_000 };
  if (c.caFile === undefined) return { hosts: [...c.endpoints], grpcOptions, dialTimeout: 3_000 };
  return {
    hosts: [...c.endpoints],
    grpcOptions,
    dialTimeout: 3_000,
    credentials: {
      rootCertificate: read(c.caFile, 'etcd-ca'),
      ...(c.certFile !== undefined && c.keyFile !== undefined ? { certChain: read(c.certFile, 'etcd-cert'), privateKey: read(c.keyFile, 'etcd-key') } : {}),
    },
  };
}
