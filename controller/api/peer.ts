import { experimental, type ServerCredentials, type sendUnaryData, type ServerUnaryCall } from '@grpc/grpc-js';
import { AmbitError } from '../../shared/errors.ts';
import type { SpiffeId } from '../../shared/spiffe-id.ts';
import { toStatus } from '../../shared/grpc-errors.ts';
import { verifyPeer } from '../../shared/tls.ts';
import type { Logger } from '../../shared/logger.ts';
import type { CertificateAuthority } from '../ca/authority.ts';

type IdentityListener = experimental.IdentityCertificateUpdateListener;
type CaListener = experimental.CaCertificateUpdateListener;

/**
 * Feeds grpc-js the controller's serving certificate and the client CA bundle,
 * and lets either change at run time (renewal, root rotation) without
 * restarting the listener.
 */
export class ServingCertificates implements experimental.CertificateProvider {
  #identity: experimental.IdentityCertificateUpdate;
  #ca: experimental.CaCertificateUpdate;
  readonly #identityListeners = new Set<IdentityListener>();
  readonly #caListeners = new Set<CaListener>();

  constructor(certChainPem: string, keyPem: string, caPem: string) {
    this.#identity = { certificate: Buffer.from(certChainPem), privateKey: Buffer.from(keyPem) };
    this.#ca = { caCertificate: Buffer.from(caPem) };
  }

  setIdentity(certChainPem: string, keyPem: string): void {
    this.#identity = { certificate: Buffer.from(certChainPem), privateKey: Buffer.from(keyPem) };
    for (const l of this.#identityListeners) l(this.#identity);
  }

  setCa(caPem: string): void {
    this.#ca = { caCertificate: Buffer.from(caPem) };
    for (const l of this.#caListeners) l(this.#ca);
  }

  // The first update is delivered asynchronously: grpc-js registers its own
  // watcher only after adding this listener, so a synchronous call is lost and
  // the server drops every connection as having "unloaded credentials".
  addCaCertificateListener(l: CaListener): void {
    this.#caListeners.add(l);
    queueMicrotask(() => this.#caListeners.has(l) && l(this.#ca));
  }
  removeCaCertificateListener(l: CaListener): void {
    this.#caListeners.delete(l);
  }
  addIdentityCertificateListener(l: IdentityListener): void {
    this.#identityListeners.add(l);
    queueMicrotask(() => this.#identityListeners.has(l) && l(this.#identity));
  }
  removeIdentityCertificateListener(l: IdentityListener): void {
    this.#identityListeners.delete(l);
  }

  /**
   * Client certificates are requested but not required at the TLS layer:
   * Bootstrap is called by nodes that have none yet. Every other handler
   * authenticates the peer itself (authenticate below), so an unverified
   * certificate never grants anything.
   */
  credentials(handshakeTimeoutMs: number): ServerCredentials {
    const creds = experimental.createCertificateProviderServerCredentials(this, this, false);
    // grpc-js has no option for the TLS handshake timeout, so a client that
    // opens TCP and never finishes its ClientHello would hold a socket for
    // Node's default 120 s. grpc-js builds its http2 secure server from these
    // constructor options (read once, at bindAsync), which Node passes on to
    // tls.Server: `handshakeTimeout` bounds the handshake only, never an
    // established connection.
    const base = creds._getConstructorOptions.bind(creds);
    creds._getConstructorOptions = () => ({ ...base(), handshakeTimeout: handshakeTimeoutMs });
    return creds;
  }
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
