import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { Metadata, type CallOptions, type ClientUnaryCall, type ServiceError } from '@grpc/grpc-js';
import { AdminClient } from '../../shared/proto/gen/ambit.ts';
import { AmbitError } from '../../shared/errors.ts';
import { fromServiceError } from '../../shared/grpc-errors.ts';
import { CONTROLLER_CHANNEL_OPTIONS, controllerCredentials } from '../../shared/controller-client.ts';
import { controllerTarget } from '../../shared/controller-target.ts';
import { spiffeIdOfCertificate } from '../../shared/tls.ts';
import type { CliConnection } from './config.ts';

type UnaryMethod<Req, Res> = (req: Req, metadata: Metadata, options: Partial<CallOptions>, cb: (err: ServiceError | null, res: Res) => void) => ClientUnaryCall;

/** The admin API as promises with a deadline, errors mapped to AmbitError. */
export class AdminApi {
  readonly #client: AdminClient;
  readonly #timeoutMs: number;
  readonly trustDomain: string;

  constructor(conn: CliConnection, timeoutMs = 15_000) {
    let certPem: string;
    let keyPem: string;
    let caPem: string;
    try {
      certPem = readFileSync(join(conn.credentialsDir, 'cert.pem'), 'utf8');
      keyPem = readFileSync(join(conn.credentialsDir, 'key.pem'), 'utf8');
      caPem = readFileSync(join(conn.credentialsDir, 'ca.pem'), 'utf8');
    } catch (cause) {
      throw new AmbitError('AMBIT_ERR_CLI_USAGE', `cannot read admin credentials in ${conn.credentialsDir}: ${(cause as Error).message}`, { cause });
    }
    const id = spiffeIdOfCertificate(new X509Certificate(certPem));
    this.trustDomain = id.trustDomain;
    this.#client = new AdminClient(
      controllerTarget(conn.controller),
      controllerCredentials({ caPem, keyPem, certChainPem: certPem, trustDomain: id.trustDomain }),
      CONTROLLER_CHANNEL_OPTIONS,
    );
    this.#timeoutMs = timeoutMs;
  }

  call<Req, Res>(name: string, method: UnaryMethod<Req, Res>, req: Req): Promise<Res> {
    return new Promise((resolve, reject) => {
      method.call(this.#client, req, new Metadata(), { deadline: Date.now() + this.#timeoutMs }, (err, res) =>
        err ? reject(fromServiceError(err, name)) : resolve(res),
      );
    });
  }

  get client(): AdminClient {
    return this.#client;
  }

  close(): void {
    this.#client.close();
  }
}
