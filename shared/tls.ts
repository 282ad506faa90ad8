import { createHash, X509Certificate } from 'node:crypto';
import { AmbitError } from './errors.ts';
import { parseSpiffeId, type SpiffeId } from './spiffe-id.ts';
import { certificateUris, splitPemCertificates } from './x509.ts';

/** TLS settings every Ambit listener and client shares: TLS 1.3 only (DESIGN §3). */
export const TLS_MIN_VERSION = 'TLSv1.3' as const;

export function parseCertificates(pem: string): X509Certificate[] {
  return splitPemCertificates(pem).map((p) => new X509Certificate(p));
}

/** The trust bundle's certificates, parsed again only when its PEM changes (asked on every TLS session). */
export function bundleCertificates(bundlePem: () => string): () => X509Certificate[] {
  let seen = '';
  let certs: X509Certificate[] = [];
  return () => {
    const pem = bundlePem();
    if (pem !== seen) {
      certs = parseCertificates(pem);
      seen = pem;
    }
    return certs;
  };
}

/** Lower-case hex SHA-256 of a certificate's DER: what join tokens pin. */
export function certificateFingerprint(cert: X509Certificate): string {
  return createHash('sha256').update(cert.raw).digest('hex');
}

/** The SPIFFE ID of an X.509-SVID: exactly one URI SAN, and it must parse. */
export function spiffeIdOfCertificate(cert: X509Certificate): SpiffeId {
  const uris = certificateUris(cert);
  if (uris.length !== 1) {
    throw new AmbitError('AMBIT_ERR_CERT_INVALID', `certificate has ${uris.length} URI SANs; an X.509-SVID has exactly one`);
  }
  try {
    return parseSpiffeId(uris[0]!);
  } catch (cause) {
    throw new AmbitError('AMBIT_ERR_CERT_INVALID', `certificate URI SAN is not a valid SPIFFE ID`, { cause });
  }
}

function checkValidity(cert: X509Certificate, now: number, what: string): void {
  const from = Date.parse(cert.validFrom);
  const to = Date.parse(cert.validTo);
  if (!(now >= from && now <= to)) {
    throw new AmbitError('AMBIT_ERR_CERT_INVALID', `${what} is not valid now (valid ${cert.validFrom} to ${cert.validTo})`, {
      details: { validFrom: cert.validFrom, validTo: cert.validTo },
    });
  }
}

/**
 * Verifies that `leaf` chains through `intermediates` (any order) to one of
 * `roots`, with every certificate in its validity period, every issuer a CA,
 * and every signature good. Returns the chain from leaf to root.
 */
export function verifyChain(
  leaf: X509Certificate,
  intermediates: readonly X509Certificate[],
  roots: readonly X509Certificate[],
  now: number,
): X509Certificate[] {
  checkValidity(leaf, now, 'certificate');
  const chain = [leaf];
  let current = leaf;
  for (let depth = 0; depth < 6; depth++) {
    const root = roots.find((r) => current.checkIssued(r) && current.verify(r.publicKey));
    if (root) {
      if (!root.ca) throw new AmbitError('AMBIT_ERR_CERT_INVALID', 'trust bundle entry is not a CA certificate');
      checkValidity(root, now, 'root certificate');
      if (root.fingerprint256 !== current.fingerprint256) chain.push(root);
      return chain;
    }
    const next = intermediates.find((c) => c.ca && current.checkIssued(c) && current.verify(c.publicKey));
    if (!next) break;
    checkValidity(next, now, 'intermediate certificate');
    chain.push(next);
    current = next;
  }
  throw new AmbitError('AMBIT_ERR_CERT_INVALID', 'certificate does not chain to the trust bundle');
}

/**
 * Authenticates a peer: its certificate chains to the bundle and carries a
 * SPIFFE ID in our trust domain. Throws AMBIT_ERR_CERT_INVALID otherwise.
 */
export function verifyPeer(
  leafDer: Buffer,
  intermediates: readonly X509Certificate[],
  roots: readonly X509Certificate[],
  trustDomain: string,
  now: number,
): SpiffeId {
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(leafDer);
  } catch (cause) {
    throw new AmbitError('AMBIT_ERR_CERT_INVALID', 'peer certificate cannot be parsed', { cause });
  }
  if (leaf.ca) throw new AmbitError('AMBIT_ERR_CERT_INVALID', 'peer certificate is a CA certificate');
  verifyChain(leaf, intermediates, roots, now);
  const id = spiffeIdOfCertificate(leaf);
  if (id.trustDomain !== trustDomain) {
    throw new AmbitError('AMBIT_ERR_CERT_INVALID', `peer identity ${id.uri} is not in trust domain ${trustDomain}`, {
      details: { identity: id.uri, trustDomain },
    });
  }
  return id;
}
