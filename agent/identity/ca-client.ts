import { connect as tlsConnect, type PeerCertificate, type DetailedPeerCertificate } from 'node:tls';
import { generateKeyPairSync, X509Certificate, type KeyObject } from 'node:crypto';
import { Metadata } from '@grpc/grpc-js';
import { BootstrapClient, CertificateAuthorityClient, type JoinResponse } from '../../shared/proto/gen/ambit.ts';
import { AmbitError } from '../../shared/errors.ts';
import { formatHostPort, type HostPort } from '../../shared/config-parse.ts';
import { fromServiceError } from '../../shared/grpc-errors.ts';
import { CONTROLLER_CHANNEL_OPTIONS, controllerCredentials } from '../../shared/controller-client.ts';
import { controllerId, nodeId, type SpiffeId } from '../../shared/spiffe-id.ts';
import { certificateFingerprint, parseCertificates, spiffeIdOfCertificate, TLS_MIN_VERSION, verifyChain } from '../../shared/tls.ts';
import { createCsr } from '../../shared/x509.ts';

/** A node's own credentials: its key never leaves the host. */
export interface NodeCredentials {
  readonly keyPem: string;
  /** Leaf then intermediates. */
  readonly certChainPem: string;
  readonly bundlePem: string;
  readonly trustDomain: string;
  readonly node: string;
  readonly expiresAt: number;
}

export interface IssuedWorkloadCertificate {
  readonly certChainPem: string;
  readonly bundlePem: string;
  readonly expiresAt: number;
}

const DEFAULT_TIMEOUT_MS = 10_000;

export function newKeyPair(): { privateKey: KeyObject; publicKey: KeyObject } {
  return generateKeyPairSync('ec', { namedCurve: 'P-256' });
}

/**
 * Trust on first use, made safe by the token: connect without verification,
 * find among the certificates the controller presents the root whose SHA-256
 * equals the token's pin, and check the presented leaf really chains to it and
 * names the controller. Only then is the token sent (over a connection that
 * verifies against that root). A controller that cannot prove the pin never
 * sees the token.
 */
export function discoverPinnedRoot(controller: HostPort, fingerprint: string, now: () => number = Date.now, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<{ rootPem: string; trustDomain: string }> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({
      host: controller.host,
      port: controller.port,
      servername: 'ambit-controller',
      ALPNProtocols: ['h2'],
      minVersion: TLS_MIN_VERSION,
      rejectUnauthorized: false, // verified by hand below against the pin
    });
    const fail = (err: unknown): void => {
      socket.destroy();
      reject(err instanceof AmbitError ? err : new AmbitError('AMBIT_ERR_RPC_UNAVAILABLE', `cannot reach the controller at ${formatHostPort(controller)}: ${(err as Error).message}`, { cause: err }));
    };
    socket.setTimeout(timeoutMs, () => fail(new Error('TLS handshake timed out')));
    socket.once('error', fail);
    socket.once('secureConnect', () => {
      try {
        const presented: X509Certificate[] = [];
        const seen = new Set<string>();
        for (let c: DetailedPeerCertificate | PeerCertificate | undefined = socket.getPeerCertificate(true); c?.raw && !seen.has(c.fingerprint256); c = (c as DetailedPeerCertificate).issuerCertificate) {
          seen.add(c.fingerprint256);
          presented.push(new X509Certificate(c.raw));
        }
        const leaf = presented[0];
        const pinned = presented.find((c) => certificateFingerprint(c) === fingerprint);
        if (!leaf || !pinned) {
          throw new AmbitError('AMBIT_ERR_CERT_INVALID', `the controller at ${formatHostPort(controller)} did not present the CA pinned by the join token (sha256 ${fingerprint.slice(0, 16)}…); refusing to send the token`, {
            details: { reason: 'ca-pin-mismatch' },
          });
        }
        verifyChain(leaf, presented.slice(1), [pinned], now());
        const id = spiffeIdOfCertificate(leaf);
        if (id.kind !== 'controller' || id.uri !== controllerId(id.trustDomain).uri) {
          throw new AmbitError('AMBIT_ERR_CERT_INVALID', `the server presented ${id.uri}, not a controller identity`);
        }
        socket.end();
        resolve({ rootPem: pinned.toString(), trustDomain: id.trustDomain });
      } catch (err) {
        fail(err);
      }
    });
  });
}

function deadline(timeoutMs: number): { deadline: number } {
  return { deadline: Date.now() + timeoutMs };
}

/** First start of a VM agent: prove the node with a join token, get a node certificate. */
export async function joinWithToken(o: {
  readonly controller: HostPort;
  readonly node: string;
  readonly token: string;
  readonly caFingerprint: string;
  readonly now?: () => number;
  readonly timeoutMs?: number;
}): Promise<NodeCredentials> {
  const { rootPem, trustDomain } = await discoverPinnedRoot(o.controller, o.caFingerprint, o.now, o.timeoutMs);
  const { privateKey, publicKey } = newKeyPair();
  const identity = nodeId(trustDomain, o.node);
  const client = new BootstrapClient(formatHostPort(o.controller), controllerCredentials({ caPem: rootPem, trustDomain }), CONTROLLER_CHANNEL_OPTIONS);
  try {
    const res = await new Promise<JoinResponse>((resolve, reject) => {
      client.join(
        { node: o.node, credential: { $case: 'joinToken', joinToken: o.token }, csrPem: createCsr(privateKey, publicKey, identity.uri) },
        new Metadata(),
        deadline(o.timeoutMs ?? DEFAULT_TIMEOUT_MS),
        (err, r) => (err ? reject(fromServiceError(err, 'Join')) : resolve(r)),
      );
    });
    checkIssued(res.certificateChainPem, res.trustBundlePem, identity, publicKey, o.now?.() ?? Date.now());
    return {
      keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
      certChainPem: res.certificateChainPem,
      bundlePem: res.trustBundlePem,
      trustDomain: res.trustDomain,
      node: o.node,
      expiresAt: res.expiresAtMs,
    };
  } finally {
    client.close();
  }
}

/**
 * The controller returned a certificate: make sure it is the one asked for —
 * our public key, exactly the identity requested, chaining to the bundle —
 * before anything uses it. A compromised or buggy controller must not be able
 * to hand the agent someone else's identity.
 */
export function checkIssued(chainPem: string, bundlePem: string, identity: SpiffeId, publicKey: KeyObject, now: number): void {
  const chain = parseCertificates(chainPem);
  const leaf = chain[0];
  if (!leaf) throw new AmbitError('AMBIT_ERR_CERT_INVALID', 'controller returned no certificate');
  const got = spiffeIdOfCertificate(leaf);
  if (got.uri !== identity.uri) throw new AmbitError('AMBIT_ERR_CERT_INVALID', `controller returned a certificate for ${got.uri}, expected ${identity.uri}`);
  if (!leaf.publicKey.equals(publicKey)) throw new AmbitError('AMBIT_ERR_CERT_INVALID', 'controller returned a certificate for another key');
  verifyChain(leaf, chain.slice(1), parseCertificates(bundlePem), now);
}

/** CreateCertificate over mTLS with the node's credentials. */
export class CaClient {
  readonly #client: CertificateAuthorityClient;
  readonly #timeoutMs: number;
  readonly #now: () => number;

  constructor(controller: HostPort, creds: NodeCredentials, o: { timeoutMs?: number; now?: () => number } = {}) {
    this.#client = new CertificateAuthorityClient(
      formatHostPort(controller),
      controllerCredentials({ caPem: creds.bundlePem, trustDomain: creds.trustDomain, keyPem: creds.keyPem, certChainPem: creds.certChainPem }),
      CONTROLLER_CHANNEL_OPTIONS,
    );
    this.#timeoutMs = o.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#now = o.now ?? Date.now;
  }

  /** Asks for `identity` with a key pair made here; checks what comes back. */
  createCertificate(identity: SpiffeId, keys: { privateKey: KeyObject; publicKey: KeyObject }): Promise<IssuedWorkloadCertificate> {
    return new Promise((resolve, reject) => {
      this.#client.createCertificate(
        { csrPem: createCsr(keys.privateKey, keys.publicKey, identity.uri), identity: identity.uri },
        new Metadata(),
        deadline(this.#timeoutMs),
        (err, res) => {
          if (err) return reject(fromServiceError(err, 'CreateCertificate'));
          try {
            checkIssued(res.certificateChainPem, res.trustBundlePem, identity, keys.publicKey, this.#now());
            resolve({ certChainPem: res.certificateChainPem, bundlePem: res.trustBundlePem, expiresAt: res.expiresAtMs });
          } catch (e) {
            reject(e);
          }
        },
      );
    });
  }

  close(): void {
    this.#client.close();
  }
}
