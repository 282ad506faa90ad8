import { createPrivateKey, generateKeyPairSync, X509Certificate, type KeyObject } from 'node:crypto';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { AmbitError } from '../../shared/errors.ts';
import { ensurePrivateDir, writeFileAtomic } from '../../shared/files.ts';
import type { SpiffeId } from '../../shared/spiffe-id.ts';
import { certificateFingerprint, parseCertificates, verifyChain } from '../../shared/tls.ts';
import { EKU, issueCertificate, KeyUsage, NAME_OID, toPem, type ParsedCsr } from '../../shared/x509.ts';

/**
 * The mesh's certificate authority (DESIGN §2).
 *
 * On disk, under <data-dir>/ca (directory 0700, every file 0600):
 *   signer-cert.pem  the certificate that signs (a root Ambit created, or a
 *                    user-supplied root or intermediate)
 *   signer-key.pem   its private key
 *   signer-chain.pem intermediates from the signer up to (excluding) its root
 *   bundle.pem       every root agents must trust (the trust bundle)
 *   next-cert.pem / next-key.pem  a prepared, not yet active root (rotation)
 *
 * Root rotation runs in three phases so no peer ever sees a certificate it
 * cannot verify: prepare (new root published in the bundle; old still signs),
 * activate (new root signs; both still trusted, old certificates stay valid),
 * retire (old root dropped from the bundle, once every old certificate has
 * been renewed).
 */
export interface CaRoot {
  readonly pem: string;
  readonly subject: string;
  readonly fingerprint: string;
  readonly notBefore: number;
  readonly notAfter: number;
  readonly active: boolean;
}

export interface IssuedCertificate {
  readonly certPem: string;
  /** SHA-256 fingerprint of the root the certificate chains to. */
  readonly root: string;
  /** Leaf then intermediates (never the root). */
  readonly chainPem: string;
  readonly notAfter: number;
  readonly notBefore: number;
  readonly serial: string;
}

export interface LocalCredentials extends IssuedCertificate {
  readonly keyPem: string;
}

export interface CaOptions {
  readonly dir: string;
  readonly trustDomain: string;
  readonly now: () => number;
  /** User-supplied signing CA; when absent Ambit creates (or reloads) its own root. */
  readonly userCa?: { readonly certPem: string; readonly keyPem: string; readonly rootsPem?: string };
  readonly rootTtlMs?: number;
}

export const ROTATION_PHASES = ['prepare', 'activate', 'retire'] as const;
export type RotationPhase = (typeof ROTATION_PHASES)[number];
/** Where a rotation stands: one root; a new root published, the old one signs; the new one signs, the old one still trusted. */
export type RotationState = 'none' | 'prepared' | 'activated';

/** Backdating absorbs clock skew between controller and agents. */
const BACKDATE_MS = 5 * 60_000;
const DEFAULT_ROOT_TTL_MS = 10 * 365 * 86_400_000;

interface Signer {
  readonly cert: X509Certificate;
  readonly certDer: Buffer;
  readonly key: KeyObject;
  readonly chain: readonly X509Certificate[];
}

export class CertificateAuthority {
  readonly trustDomain: string;
  readonly #dir: string;
  readonly #now: () => number;
  readonly #rootTtlMs: number;
  readonly #userSupplied: boolean;
  #signer: Signer;
  #bundle: X509Certificate[];
  #listeners = new Set<(bundlePem: string) => void>();
  /** activeRootFingerprint() for the current signer and bundle (a signature check to find), '' until asked. */
  #activeRootFp = '';

  private constructor(o: CaOptions, signer: Signer, bundle: X509Certificate[]) {
    this.trustDomain = o.trustDomain;
    this.#dir = o.dir;
    this.#now = o.now;
    this.#rootTtlMs = o.rootTtlMs ?? DEFAULT_ROOT_TTL_MS;
    this.#userSupplied = o.userCa !== undefined;
    this.#signer = signer;
    this.#bundle = bundle;
  }

  /** Loads the CA from the data dir, or creates a root at first start. */
  static open(o: CaOptions): CertificateAuthority {
    ensurePrivateDir(o.dir);
    const p = (f: string): string => join(o.dir, f);
    try {
      if (o.userCa) {
        const signer = loadSigner(o.userCa.certPem, o.userCa.keyPem);
        const roots = o.userCa.rootsPem ? parseCertificates(o.userCa.rootsPem) : [signer.cert];
        const intermediates = signer.chain;
        const chain = verifyChain(signer.cert, intermediates, roots, o.now());
        if (!signer.cert.ca) throw new Error('the supplied certificate is not a CA (basicConstraints CA:TRUE)');
        const full: Signer = { ...signer, chain: chain.slice(1).filter((c) => !roots.some((r) => r.fingerprint256 === c.fingerprint256)) };
        return new CertificateAuthority(o, full, roots);
      }
      if (existsSync(p('signer-cert.pem'))) {
        const signer = loadSigner(readFileSync(p('signer-cert.pem'), 'utf8'), readFileSync(p('signer-key.pem'), 'utf8'));
        const chainPem = existsSync(p('signer-chain.pem')) ? readFileSync(p('signer-chain.pem'), 'utf8') : '';
        const bundle = parseCertificates(readFileSync(p('bundle.pem'), 'utf8'));
        return new CertificateAuthority(o, { ...signer, chain: parseCertificates(chainPem) }, bundle);
      }
    } catch (cause) {
      if (cause instanceof AmbitError) throw cause;
      throw new AmbitError('AMBIT_ERR_CA_LOAD', `cannot load the CA from ${o.userCa ? 'the supplied files' : o.dir}: ${(cause as Error).message}`, { cause });
    }
    const root = createRoot(o.trustDomain, o.now(), o.rootTtlMs ?? DEFAULT_ROOT_TTL_MS);
    // signer-cert.pem is written last: its presence means "the CA is complete",
    // so a crash part-way leaves a directory that simply starts over.
    writeFileAtomic(p('signer-key.pem'), root.keyPem);
    writeFileAtomic(p('signer-chain.pem'), '');
    writeFileAtomic(p('bundle.pem'), root.certPem);
    writeFileAtomic(p('signer-cert.pem'), root.certPem);
    const signer = loadSigner(root.certPem, root.keyPem);
    return new CertificateAuthority(o, signer, [signer.cert]);
  }

  bundlePem(): string {
    return this.#bundle.map((c) => c.toString()).join('');
  }

  bundle(): readonly X509Certificate[] {
    return this.#bundle;
  }

  /** Certificates a verifier may need between a leaf we issued and the bundle. */
  intermediates(): readonly X509Certificate[] {
    return [this.#signer.cert, ...this.#signer.chain];
  }

  /** Fingerprint of the root the active signer chains to: what join tokens pin. */
  activeRootFingerprint(): string {
    if (this.#activeRootFp !== '') return this.#activeRootFp;
    const top = this.#signer.chain.length > 0 ? this.#signer.chain[this.#signer.chain.length - 1]! : this.#signer.cert;
    const root = this.#bundle.find((r) => r.fingerprint256 === top.fingerprint256 || (top.checkIssued(r) && top.verify(r.publicKey)));
    this.#activeRootFp = certificateFingerprint(root ?? top);
    return this.#activeRootFp;
  }

  /** PEM of the root the active signer chains to. */
  activeRootPem(): string {
    const fp = this.activeRootFingerprint();
    return this.#bundle.find((c) => certificateFingerprint(c) === fp)?.toString() ?? '';
  }

  roots(): CaRoot[] {
    const activeFp = this.activeRootFingerprint();
    return this.#bundle.map((c) => {
      const fp = certificateFingerprint(c);
      return {
        pem: c.toString(),
        subject: c.subject.replace(/\n/g, ', '),
        fingerprint: fp,
        notBefore: Date.parse(c.validFrom),
        notAfter: Date.parse(c.validTo),
        active: fp === activeFp,
      };
    });
  }

  rotationState(): RotationState {
    if (this.#userSupplied) return 'none';
    if (existsSync(join(this.#dir, 'next-cert.pem'))) return 'prepared';
    return this.#bundle.length > 1 ? 'activated' : 'none';
  }

  /** Called with the new bundle whenever it changes (rotation); returns an unsubscribe function. */
  onBundleChange(listener: (bundlePem: string) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Signs an already parsed and authorized CSR for exactly `identity`. The
   * CSR must ask for that one URI SAN and nothing else; the certificate's
   * names come from `identity`, never copied from the CSR.
   */
  signCsr(csr: ParsedCsr, identity: SpiffeId, ttlMs: number): IssuedCertificate {
    if (csr.uris.length !== 1 || csr.uris[0] !== identity.uri) {
      throw new AmbitError('AMBIT_ERR_CSR_INVALID', `CSR must ask for exactly one URI SAN ${identity.uri}; it asks for ${JSON.stringify(csr.uris)}`, {
        details: { requested: csr.uris, identity: identity.uri },
      });
    }
    if (csr.otherSans.length > 0) {
      throw new AmbitError('AMBIT_ERR_CSR_INVALID', `CSR asks for SANs other than its SPIFFE ID: ${csr.otherSans.join(', ')}`, {
        details: { otherSans: csr.otherSans },
      });
    }
    if (csr.otherExtensions.length > 0) {
      throw new AmbitError('AMBIT_ERR_CSR_INVALID', `CSR asks for extensions Ambit does not grant: ${csr.otherExtensions.join(', ')}`, {
        details: { extensions: csr.otherExtensions },
      });
    }
    return this.#issue(csr.spkiDer, identity, ttlMs, {});
  }

  /**
   * Issues credentials for a component on the controller's own host (its
   * serving certificate, the admin's client certificate). The key is made
   * here because this *is* the host that uses it.
   */
  issueLocal(identity: SpiffeId, ttlMs: number, sans: { dnsNames?: readonly string[]; ips?: readonly string[] } = {}): LocalCredentials {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const issued = this.#issue(publicKey.export({ type: 'spki', format: 'der' }), identity, ttlMs, sans);
    return { ...issued, keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() };
  }

  #issue(spkiDer: Buffer, identity: SpiffeId, ttlMs: number, sans: { dnsNames?: readonly string[]; ips?: readonly string[] }): IssuedCertificate {
    if (identity.trustDomain !== this.trustDomain) {
      throw new AmbitError('AMBIT_ERR_CSR_INVALID', `identity ${identity.uri} is not in trust domain ${this.trustDomain}`);
    }
    const now = this.#now();
    const signerEnd = Date.parse(this.#signer.cert.validTo);
    // Never outlive the signer: a leaf valid past its issuer fails verification anyway.
    const notAfter = Math.min(now + ttlMs, signerEnd);
    const notBefore = now - BACKDATE_MS;
    const der = issueCertificate({
      subjectPublicKey: spkiDer,
      uris: [identity.uri],
      dnsNames: sans.dnsNames ?? [],
      ips: sans.ips ?? [],
      notBefore: new Date(notBefore),
      notAfter: new Date(notAfter),
      isCa: false,
      keyUsage: KeyUsage.digitalSignature,
      extKeyUsage: [EKU.serverAuth, EKU.clientAuth],
      issuer: { certDer: this.#signer.certDer, key: this.#signer.key },
    });
    const certPem = toPem('CERTIFICATE', der);
    // Peers hold the roots; they need every certificate between the leaf and a root.
    const chainPem = certPem + [this.#signer.cert, ...this.#signer.chain].filter((c) => !this.#isRoot(c)).map((c) => c.toString()).join('');
    return { certPem, chainPem, root: this.activeRootFingerprint(), notAfter, notBefore, serial: new X509Certificate(der).serialNumber };
  }

  #isRoot(c: X509Certificate): boolean {
    return this.#bundle.some((r) => r.fingerprint256 === c.fingerprint256);
  }

  /** Advances root rotation by one phase; see the class comment. Persists before publishing. */
  rotate(phase: RotationPhase): void {
    if (this.#userSupplied) {
      throw new AmbitError('AMBIT_ERR_CA_LOAD', 'the CA was supplied by the operator (--ca-cert/--ca-key); rotate it by supplying new files');
    }
    const p = (f: string): string => join(this.#dir, f);
    const now = this.#now();
    if (phase === 'prepare') {
      if (existsSync(p('next-cert.pem'))) throw new AmbitError('AMBIT_ERR_CA_LOAD', 'a rotation is already prepared; activate it first');
      if (this.#bundle.length > 1) throw new AmbitError('AMBIT_ERR_CA_LOAD', 'the bundle still holds a previous root; retire it before preparing another rotation');
      const root = createRoot(this.trustDomain, now, this.#rootTtlMs);
      // Publish before the root can ever sign: bundle first, then the prepared root.
      this.#setBundle([...this.#bundle, new X509Certificate(root.certPem)]);
      writeFileAtomic(p('next-key.pem'), root.keyPem);
      writeFileAtomic(p('next-cert.pem'), root.certPem);
      return;
    }
    if (phase === 'activate') {
      if (!existsSync(p('next-cert.pem'))) throw new AmbitError('AMBIT_ERR_CA_LOAD', 'no prepared root; run the prepare phase first');
      const certPem = readFileSync(p('next-cert.pem'), 'utf8');
      const keyPem = readFileSync(p('next-key.pem'), 'utf8');
      const next = new X509Certificate(certPem);
      if (!this.#bundle.some((c) => c.fingerprint256 === next.fingerprint256)) {
        throw new AmbitError('AMBIT_ERR_CA_LOAD', 'the prepared root was never published in the trust bundle; run the prepare phase again');
      }
      writeFileAtomic(p('previous-cert.pem'), this.#signer.cert.toString());
      writeFileAtomic(p('signer-key.pem'), keyPem);
      writeFileAtomic(p('signer-cert.pem'), certPem);
      writeFileAtomic(p('signer-chain.pem'), '');
      rmSync(p('next-cert.pem'));
      rmSync(p('next-key.pem'));
      this.#signer = loadSigner(certPem, keyPem);
      this.#activeRootFp = '';
      for (const l of this.#listeners) l(this.bundlePem());
      return;
    }
    const active = this.#signer.cert.fingerprint256;
    if (existsSync(p('next-cert.pem'))) throw new AmbitError('AMBIT_ERR_CA_LOAD', 'a prepared root is not active yet; activate it before retiring');
    const kept = this.#bundle.filter((c) => c.fingerprint256 === active);
    if (kept.length === this.#bundle.length) throw new AmbitError('AMBIT_ERR_CA_LOAD', 'nothing to retire: the bundle holds only the active root');
    rmSync(p('previous-cert.pem'), { force: true });
    this.#setBundle(kept);
  }

  #setBundle(bundle: X509Certificate[]): void {
    writeFileAtomic(join(this.#dir, 'bundle.pem'), bundle.map((c) => c.toString()).join(''));
    this.#bundle = bundle;
    this.#activeRootFp = '';
    const pem = this.bundlePem();
    for (const l of this.#listeners) l(pem);
  }
}

function loadSigner(certPem: string, keyPem: string): Signer {
  const certs = parseCertificates(certPem);
  const cert = certs[0];
  if (!cert) throw new AmbitError('AMBIT_ERR_CA_LOAD', 'CA certificate file holds no certificate');
  let key: KeyObject;
  try {
    key = createPrivateKey(keyPem);
  } catch (cause) {
    throw new AmbitError('AMBIT_ERR_CA_LOAD', 'CA private key cannot be parsed', { cause });
  }
  if (!cert.checkPrivateKey(key)) throw new AmbitError('AMBIT_ERR_CA_LOAD', 'CA private key does not match the CA certificate');
  return { cert, certDer: cert.raw, key, chain: certs.slice(1) };
}

function createRoot(trustDomain: string, now: number, ttlMs: number): { certPem: string; keyPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const der = issueCertificate({
    subjectPublicKey: publicKey.export({ type: 'spki', format: 'der' }),
    subject: [
      { oid: NAME_OID.organization, value: 'ambit' },
      { oid: NAME_OID.commonName, value: `ambit root CA ${trustDomain} ${new Date(now).toISOString()}` },
    ],
    uris: [`spiffe://${trustDomain}`],
    notBefore: new Date(now - BACKDATE_MS),
    notAfter: new Date(now + ttlMs),
    isCa: true,
    pathLen: 1,
    keyUsage: KeyUsage.keyCertSign | KeyUsage.cRLSign | KeyUsage.digitalSignature,
    selfSignKey: privateKey,
  });
  return { certPem: toPem('CERTIFICATE', der), keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() };
}
