import { connect as tlsConnect, type PeerCertificate, type DetailedPeerCertificate } from 'node:tls';
import { generateKeyPairSync, X509Certificate, type KeyObject } from 'node:crypto';
import { Metadata } from '@grpc/grpc-js';
import { BootstrapClient, CertificateAuthorityClient, type JoinRequest, type JoinResponse } from '../../shared/proto/gen/ambit.ts';
import { AmbitError } from '../../shared/errors.ts';
import { formatHostPort, type HostPort } from '../../shared/config-parse.ts';
import { fromServiceError } from '../../shared/grpc-errors.ts';
import { CONTROLLER_CHANNEL_OPTIONS, controllerCredentials } from '../../shared/controller-client.ts';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { controllerList, controllerTarget, type Controllers } from '../../shared/controller-target.ts';
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

/** The certificates a TLS server presented, leaf first (issuer links followed, loops cut). */
function presentedChain(socket: ReturnType<typeof tlsConnect>): X509Certificate[] {
  const presented: X509Certificate[] = [];
  const seen = new Set<string>();
  for (let c: DetailedPeerCertificate | PeerCertificate | undefined = socket.getPeerCertificate(true); c?.raw && !seen.has(c.fingerprint256); c = (c as DetailedPeerCertificate).issuerCertificate) {
    seen.add(c.fingerprint256);
    presented.push(new X509Certificate(c.raw));
  }
  return presented;
}

/**
 * One TLS handshake with the controller, verified by hand: `trust` picks the
 * root(s) the presented chain must lead to; the leaf must name the
 * controller. Resolves with the root it chained to and the trust domain the
 * controller's identity names. Nothing is sent over this connection.
 */
function probeController(controller: HostPort, trust: (presented: X509Certificate[]) => X509Certificate[], now: () => number, timeoutMs: number): Promise<{ rootPem: string; trustDomain: string }> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({
      host: controller.host,
      port: controller.port,
      servername: 'ambit-controller',
      ALPNProtocols: ['h2'],
      minVersion: TLS_MIN_VERSION,
      rejectUnauthorized: false, // verified by hand below
    });
    const fail = (err: unknown): void => {
      socket.destroy();
      reject(err instanceof AmbitError ? err : new AmbitError('AMBIT_ERR_RPC_UNAVAILABLE', `cannot reach the controller at ${formatHostPort(controller)}: ${(err as Error).message}`, { cause: err }));
    };
    socket.setTimeout(timeoutMs, () => fail(new Error('TLS handshake timed out')));
    socket.once('error', fail);
    socket.once('secureConnect', () => {
      try {
        const presented = presentedChain(socket);
        const leaf = presented[0];
        if (!leaf) throw new AmbitError('AMBIT_ERR_CERT_INVALID', `the controller at ${formatHostPort(controller)} presented no certificate`);
        const roots = trust(presented);
        const chain = verifyChain(leaf, presented.slice(1), roots, now());
        const id = spiffeIdOfCertificate(leaf);
        if (id.kind !== 'controller' || id.uri !== controllerId(id.trustDomain).uri) {
          throw new AmbitError('AMBIT_ERR_CERT_INVALID', `the server presented ${id.uri}, not a controller identity`);
        }
        const root = chain[chain.length - 1]!;
        socket.end();
        resolve({ rootPem: root.toString(), trustDomain: id.trustDomain });
      } catch (err) {
        fail(err);
      }
    });
  });
}

/**
 * Trust on first use, made safe by the token: connect without verification,
 * find among the certificates the controller presents the root whose SHA-256
 * equals the token's pin, and check the presented leaf really chains to it and
 * names the controller. Only then is the token sent (over a connection that
 * verifies against that root). A controller that cannot prove the pin never
 * sees the token.
 */
/**
 * Probes the replicas in turn until one answers: an unreachable one is
 * skipped, one that answers with the wrong CA fails the join (sending the
 * token elsewhere is not what its pin allows).
 */
async function probeFirstReachable(controllers: Controllers, probe: (c: HostPort) => Promise<{ rootPem: string; trustDomain: string }>): Promise<{ rootPem: string; trustDomain: string }> {
  let last: unknown;
  for (const c of await everyAddress(controllerList(controllers))) {
    try {
      return await probe(c);
    } catch (err) {
      if (!(err instanceof AmbitError) || err.code !== 'AMBIT_ERR_RPC_UNAVAILABLE') throw err;
      last = err;
    }
  }
  throw last;
}

/** A name stands for each address it resolves to (a name for every replica); one that does not resolve is kept, to fail with its own error. */
async function everyAddress(list: readonly HostPort[]): Promise<HostPort[]> {
  const out: HostPort[] = [];
  for (const hp of list) {
    if (isIP(hp.host) !== 0) {
      out.push(hp);
      continue;
    }
    const found = await lookup(hp.host, { all: true }).catch(() => []);
    if (found.length === 0) out.push(hp);
    for (const a of found) out.push({ host: a.address, port: hp.port });
  }
  return out;
}

export function discoverPinnedRoot(controllers: Controllers, fingerprint: string, now: () => number = Date.now, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<{ rootPem: string; trustDomain: string }> {
  return probeFirstReachable(controllers, (controller) => probeController(controller, (presented) => {
    const pinned = presented.find((c) => certificateFingerprint(c) === fingerprint);
    if (!pinned) {
      throw new AmbitError('AMBIT_ERR_CERT_INVALID', `the controller at ${formatHostPort(controller)} did not present the CA pinned by the join token (sha256 ${fingerprint.slice(0, 16)}…); refusing to send the token`, {
        details: { reason: 'ca-pin-mismatch' },
      });
    }
    return [pinned];
  }, now, timeoutMs));
}

/**
 * A Kubernetes token pins no CA, so the controller must chain to a bundle
 * the agent was given (--ca-bundle); the trust domain is read from the
 * verified controller certificate. A controller that cannot chain to the
 * bundle never sees the token.
 */
export function discoverTrustedController(controllers: Controllers, bundlePem: string, now: () => number = Date.now, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<{ rootPem: string; trustDomain: string }> {
  const roots = parseCertificates(bundlePem);
  if (roots.length === 0) throw new AmbitError('AMBIT_ERR_CERT_INVALID', 'the CA bundle holds no certificate', { details: { reason: 'empty-bundle' } });
  return probeFirstReachable(controllers, (controller) => probeController(controller, () => roots, now, timeoutMs).catch((err: unknown) => {
    if (err instanceof AmbitError && err.code === 'AMBIT_ERR_CERT_INVALID') {
      throw new AmbitError('AMBIT_ERR_CERT_INVALID', `the controller at ${formatHostPort(controller)} is not trusted by the CA bundle (${err.message}); refusing to send the token`, {
        cause: err, details: { reason: 'ca-bundle-mismatch' },
      });
    }
    throw err;
  }));
}

function deadline(timeoutMs: number): { deadline: number } {
  return { deadline: Date.now() + timeoutMs };
}

/** First start of a VM agent: prove the node with a join token, get a node certificate. */
export async function joinWithToken(o: {
  readonly controller: Controllers;
  readonly node: string;
  readonly token: string;
  readonly caFingerprint: string;
  readonly now?: () => number;
  readonly timeoutMs?: number;
}): Promise<NodeCredentials> {
  const trusted = await discoverPinnedRoot(o.controller, o.caFingerprint, o.now, o.timeoutMs);
  return join(o, trusted, { $case: 'joinToken', joinToken: o.token });
}

/**
 * First start of an agent pod: prove the node with the pod's projected
 * service-account token (the controller checks it with TokenReview and that
 * the pod runs on `node`); the controller is verified against `bundlePem`.
 */
export async function joinWithKubernetesToken(o: {
  readonly controller: Controllers;
  readonly node: string;
  readonly token: string;
  readonly bundlePem: string;
  readonly now?: () => number;
  readonly timeoutMs?: number;
}): Promise<NodeCredentials> {
  const trusted = await discoverTrustedController(o.controller, o.bundlePem, o.now, o.timeoutMs);
  return join(o, { rootPem: o.bundlePem, trustDomain: trusted.trustDomain }, { $case: 'kubernetesToken', kubernetesToken: o.token });
}

async function join(
  o: { readonly controller: Controllers; readonly node: string; readonly now?: () => number; readonly timeoutMs?: number },
  trusted: { readonly rootPem: string; readonly trustDomain: string },
  credential: JoinRequest['credential'],
): Promise<NodeCredentials> {
  const { privateKey, publicKey } = newKeyPair();
  const identity = nodeId(trusted.trustDomain, o.node);
  // Any replica: they share the CA the probe verified, and the connection verifies it again.
  const client = new BootstrapClient(controllerTarget(o.controller), controllerCredentials({ caPem: trusted.rootPem, trustDomain: trusted.trustDomain }), CONTROLLER_CHANNEL_OPTIONS);
  try {
    const res = await new Promise<JoinResponse>((resolve, reject) => {
      client.join(
        { node: o.node, credential, csrPem: createCsr(privateKey, publicKey, identity.uri) },
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

  /** `controllers`: every replica; a call after the one in use failed goes to another that answers (controller-target.ts). */
  constructor(controllers: Controllers, creds: NodeCredentials, o: { timeoutMs?: number; now?: () => number } = {}) {
    this.#client = new CertificateAuthorityClient(
      controllerTarget(controllers),
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
