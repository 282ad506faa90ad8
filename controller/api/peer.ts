import type { sendUnaryData, ServerUnaryCall } from '@grpc/grpc-js';
import { AmbitError } from '../../shared/errors.ts';
import type { SpiffeId } from '../../shared/spiffe-id.ts';
import { toStatus } from '../../shared/grpc-errors.ts';
import { verifyPeer } from '../../shared/tls.ts';
import type { Logger } from '../../shared/logger.ts';
import type { CertificateAuthority } from '../ca/authority.ts';

/**
 * The controller's serving certificate and the client CA bundle; either may
 * change at run time (renewal, root rotation) and listeners apply the change
 * to new connections without restarting (established ones keep theirs).
 */
export class ServingCertificates {
  #options: ServingOptions;
  readonly #listeners = new Set<(o: ServingOptions) => void>();

  constructor(certChainPem: string, keyPem: string, caPem: string) {
    this.#options = { cert: certChainPem, key: keyPem, ca: caPem };
  }

  setIdentity(certChainPem: string, keyPem: string): void {
    this.#set({ ...this.#options, cert: certChainPem, key: keyPem });
  }

  setCa(caPem: string): void {
    this.#set({ ...this.#options, ca: caPem });
  }

  /** The current TLS options, and each later change. */
  watch(listener: (o: ServingOptions) => void): () => void {
    this.#listeners.add(listener);
    listener(this.#options);
    return () => this.#listeners.delete(listener);
  }

  #set(o: ServingOptions): void {
    this.#options = o;
    for (const l of this.#listeners) l(o);
  }
}

export interface ServingOptions {
  readonly cert: string;
  readonly key: string;
  readonly ca: string;
}

interface HasAuthContext {
  getAuthContext(): { sslPeerCertificate?: { raw?: Buffer } };
}

export interface PeerAuthenticator {
  /** The caller's verified SPIFFE ID, or undefined when it presented no certificate. Throws on a bad one. */
  optional(call: HasAuthContext): SpiffeId | undefined;
  /** The caller's verified SPIFFE ID; throws AMBIT_ERR_AUTH_UNAUTHENTICATED without one. */
  require(call: HasAuthContext): SpiffeId;
}

export function peerAuthenticator(ca: CertificateAuthority, now: () => number): PeerAuthenticator {
  const optional = (call: HasAuthContext): SpiffeId | undefined => {
    const raw = call.getAuthContext().sslPeerCertificate?.raw;
    if (!raw) return undefined;
    try {
      return verifyPeer(raw, ca.intermediates(), ca.bundle(), ca.trustDomain, now());
    } catch (cause) {
      throw new AmbitError('AMBIT_ERR_AUTH_UNAUTHENTICATED', `client certificate rejected: ${(cause as Error).message}`, { cause });
    }
  };
  return {
    optional,
    require: (call) => {
      const id = optional(call);
      if (!id) throw new AmbitError('AMBIT_ERR_AUTH_UNAUTHENTICATED', 'this call needs a client certificate (node or admin identity)');
      return id;
    },
  };
}

/**
 * Adapts an async handler to grpc-js: typed errors become statuses (with the
 * stable code in a trailer); unexpected errors are logged and reported as
 * INTERNAL without leaking their text to the caller.
 */
export function unary<Req, Res>(
  logger: Logger,
  method: string,
  fn: (call: ServerUnaryCall<Req, Res>) => Promise<Res>,
): (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>) => void {
  return (call, callback) => {
    fn(call).then(
      (res) => callback(null, res),
      (err: unknown) => {
        if (!(err instanceof AmbitError)) logger.error({ err, method }, 'unexpected error in handler');
        callback(toStatus(err), null);
      },
    );
  };
}
