import { createHash, createPublicKey, randomBytes, sign, verify, X509Certificate, type KeyObject } from 'node:crypto';
import { createRequire } from 'node:module';
import type forge from 'node-forge';
import { AmbitError } from './errors.ts';
import { parseIp } from './net-address.ts';

/**
 * X.509 certificates and PKCS#10 CSRs as node-forge ASN.1 objects, signed and
 * verified with Node's native crypto.
 *
 * Why not forge.pki: it only understands RSA keys, and Ambit's keys are ECDSA
 * P-256; and forge's pure-JS signing costs ~45 ms a certificate where native
 * ECDSA costs ~0.05 ms. So forge.asn1 builds and walks the structures, and
 * node:crypto does every signature. Signed bytes (a CSR's info, a TBS
 * certificate) are always sliced from the original DER, never re-encoded, so a
 * signature is checked over exactly the bytes that were signed.
 */
// node-forge's index loads all of forge (ciphers, TLS, PKCS#12, ...: about
// 9 MiB of RSS in every agent and controller); only its ASN.1 codec and byte
// buffers are used here, so those two modules are loaded alone. Each exports
// the very object the index exposes as forge.asn1 / forge.util.
const requireForge = createRequire(import.meta.url);
const asn1 = requireForge('node-forge/lib/asn1') as typeof forge.asn1;
const forgeUtil = requireForge('node-forge/lib/util') as typeof forge.util;
type Asn1 = forge.asn1.Asn1;

const OID = {
  ecPublicKey: '1.2.840.10045.2.1',
  prime256v1: '1.2.840.10045.3.1.7',
  rsaEncryption: '1.2.840.113549.1.1.1',
  ecdsaSha256: '1.2.840.10045.4.3.2',
  ecdsaSha384: '1.2.840.10045.4.3.3',
  rsaSha256: '1.2.840.113549.1.1.11',
  rsaSha384: '1.2.840.113549.1.1.12',
  rsaSha512: '1.2.840.113549.1.1.13',
  extensionRequest: '1.2.840.113549.1.9.14',
  subjectAltName: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  keyUsage: '2.5.29.15',
  extKeyUsage: '2.5.29.37',
  subjectKeyId: '2.5.29.14',
  authorityKeyId: '2.5.29.35',
  serverAuth: '1.3.6.1.5.5.7.3.1',
  clientAuth: '1.3.6.1.5.5.7.3.2',
  organizationName: '2.5.4.10',
  commonName: '2.5.4.3',
} as const;

const SIG_HASH: Readonly<Record<string, string>> = {
  [OID.ecdsaSha256]: 'sha256',
  [OID.ecdsaSha384]: 'sha384',
  [OID.rsaSha256]: 'sha256',
  [OID.rsaSha384]: 'sha384',
  [OID.rsaSha512]: 'sha512',
};

/** Key usage bits (RFC 5280 §4.2.1.3), as a bit mask with bit 0 = digitalSignature. */
export const KeyUsage = {
  digitalSignature: 1 << 0,
  keyEncipherment: 1 << 2,
  keyCertSign: 1 << 5,
  cRLSign: 1 << 6,
} as const;

// ---------------------------------------------------------------- DER plumbing

const toBin = (b: Uint8Array): string => Buffer.from(b).toString('binary');
const fromBin = (s: string): Buffer => Buffer.from(s, 'binary');

/** Bounds of one DER element (tag-length-value) starting at `start`. */
function tlv(buf: Buffer, start: number): { start: number; valueStart: number; end: number; tag: number } {
  if (start + 2 > buf.length) throw new Error('truncated DER');
  const tag = buf[start]!;
  let len = buf[start + 1]!;
  let valueStart = start + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4 || valueStart + n > buf.length) throw new Error('bad DER length');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[valueStart + i]!;
    valueStart += n;
  }
  const end = valueStart + len;
  if (end > buf.length) throw new Error('truncated DER');
  return { start, valueStart, end, tag };
}

/** The DER bytes of the first and the second child of the SEQUENCE in `der`. */
function firstChildren(der: Buffer): [Buffer, Buffer] {
  const outer = tlv(der, 0);
  if (outer.tag !== 0x30 || outer.end !== der.length) throw new Error('not a single DER SEQUENCE');
  const a = tlv(der, outer.valueStart);
  const b = tlv(der, a.end);
  return [der.subarray(a.start, a.end), der.subarray(b.start, b.end)];
}

function seq(children: Asn1[]): Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, children);
}
function oid(o: string): Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer(o).getBytes());
}
function octets(bin: string): Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OCTETSTRING, false, bin);
}
function bool(v: boolean): Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.BOOLEAN, false, v ? '\xff' : '\x00');
}
function integerFromBytes(bytes: Buffer): Asn1 {
  // DER INTEGER is signed: a leading 1 bit needs a 0x00 pad to stay positive.
  const b = bytes[0]! & 0x80 ? Buffer.concat([Buffer.from([0]), bytes]) : bytes;
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.INTEGER, false, toBin(b));
}
function smallInt(n: number): Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.INTEGER, false, asn1.integerToDer(n).getBytes());
}
function bitString(bytes: Buffer, unusedBits = 0): Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.BITSTRING, false, String.fromCharCode(unusedBits) + toBin(bytes));
}
function der(a: Asn1): Buffer {
  return fromBin(asn1.toDer(a).getBytes());
}
// forge's typings only declare the legacy boolean `strict` argument; the
// options object is what its runtime takes.
const forgeFromDer = asn1.fromDer as unknown as (bytes: string, options: object) => Asn1;
function fromDer(b: Buffer): Asn1 {
  return forgeFromDer(toBin(b), { strict: true, parseAllBytes: true, decodeBitStrings: false });
}

function utcOrGeneralized(d: Date): Asn1 {
  // RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050.
  const y = d.getUTCFullYear();
  return y < 2050
    ? asn1.create(asn1.Class.UNIVERSAL, asn1.Type.UTCTIME, false, asn1.dateToUtcTime(d))
    : asn1.create(asn1.Class.UNIVERSAL, asn1.Type.GENERALIZEDTIME, false, asn1.dateToGeneralizedTime(d));
}

function nameDer(attrs: readonly { oid: string; value: string }[]): Buffer {
  const rdns = attrs.map((a) =>
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SET, true, [
      seq([oid(a.oid), asn1.create(asn1.Class.UNIVERSAL, asn1.Type.UTF8, false, forgeUtil.encodeUtf8(a.value))]),
    ]),
  );
  return der(seq(rdns));
}

function sigAlgFor(key: KeyObject): { oid: string; hash: string; asn1: () => Asn1 } {
  if (key.asymmetricKeyType === 'ec') {
    return { oid: OID.ecdsaSha256, hash: 'sha256', asn1: () => seq([oid(OID.ecdsaSha256)]) };
  }
  if (key.asymmetricKeyType === 'rsa') {
    return {
      oid: OID.rsaSha256,
      hash: 'sha256',
      asn1: () => seq([oid(OID.rsaSha256), asn1.create(asn1.Class.UNIVERSAL, asn1.Type.NULL, false, '')]),
    };
  }
  throw new AmbitError('AMBIT_ERR_CA_SIGN', `unsupported signing key type ${key.asymmetricKeyType ?? 'unknown'}`);
}

function sanExtensionValue(sans: { uris?: readonly string[]; dns?: readonly string[]; ips?: readonly string[] }): Buffer {
  const names: Asn1[] = [];
  for (const u of sans.uris ?? []) names.push(asn1.create(asn1.Class.CONTEXT_SPECIFIC, 6, false, u));
  for (const d of sans.dns ?? []) names.push(asn1.create(asn1.Class.CONTEXT_SPECIFIC, 2, false, d));
  for (const ip of sans.ips ?? []) names.push(asn1.create(asn1.Class.CONTEXT_SPECIFIC, 7, false, toBin(ipBytes(ip))));
  return der(seq(names));
}

function ipBytes(ip: string): Buffer {
  // net-address's parser handles every IPv6 spelling, including an embedded
  // IPv4 tail (::ffff:10.0.0.1), which a split on ":" would mis-encode.
  const parsed = parseIp(ip);
  if (parsed === undefined) throw new AmbitError('AMBIT_ERR_CA_SIGN', `not an IP address: ${ip}`);
  return Buffer.from(parsed.bytes);
}

function extension(o: string, critical: boolean, value: Buffer): Asn1 {
  const parts = [oid(o)];
  if (critical) parts.push(bool(true));
  parts.push(octets(toBin(value)));
  return seq(parts);
}

function keyUsageValue(bits: number): Buffer {
  // BIT STRING with bit 0 as the most significant bit of the first byte; DER
  // wants trailing zero bits trimmed and counted as unused.
  let highest = 0;
  for (let i = 0; i < 16; i++) if (bits & (1 << i)) highest = i;
  const nbytes = highest < 8 ? 1 : 2;
  const out = Buffer.alloc(nbytes);
  for (let i = 0; i <= highest; i++) if (bits & (1 << i)) out[i >> 3]! |= 0x80 >> (i & 7);
  const unused = nbytes * 8 - 1 - highest;
  return der(bitString(out, unused));
}

/** SHA-1 of the subjectPublicKey BIT STRING contents (RFC 5280 §4.2.1.2 method 1). */
export function keyIdentifier(spkiDer: Buffer): Buffer {
  const [, key] = firstChildren(spkiDer);
  const t = tlv(key, 0);
  return createHash('sha1').update(key.subarray(t.valueStart + 1, t.end)).digest();
}

// ---------------------------------------------------------------- keys

export interface CheckedKey {
  readonly key: KeyObject;
  readonly spkiDer: Buffer;
  readonly description: string;
}

/** Accept only ECDSA P-256 or RSA ≥ 2048 public keys (DESIGN §2, issue: CSR rules). */
export function checkPublicKey(spkiDer: Buffer): CheckedKey {
  let key: KeyObject;
  try {
    key = createPublicKey({ key: spkiDer, format: 'der', type: 'spki' });
  } catch (cause) {
    throw new AmbitError('AMBIT_ERR_CSR_INVALID', 'CSR public key cannot be parsed', { cause });
  }
  const d = key.asymmetricKeyDetails ?? {};
  if (key.asymmetricKeyType === 'ec' && d.namedCurve === 'prime256v1') return { key, spkiDer, description: 'ECDSA P-256' };
  if (key.asymmetricKeyType === 'rsa' && (d.modulusLength ?? 0) >= 2048) {
    return { key, spkiDer, description: `RSA ${d.modulusLength}` };
  }
  const what = key.asymmetricKeyType === 'ec' ? `EC ${d.namedCurve ?? '?'}` : `${key.asymmetricKeyType ?? '?'} ${d.modulusLength ?? ''}`.trim();
  throw new AmbitError('AMBIT_ERR_CSR_KEY_UNSUPPORTED', `CSR key ${what} is not allowed: use ECDSA P-256 or RSA of at least 2048 bits`, {
    details: { key: what },
  });
}

// ---------------------------------------------------------------- CSR

export interface ParsedCsr {
  readonly publicKey: KeyObject;
  readonly spkiDer: Buffer;
  readonly keyDescription: string;
  readonly uris: readonly string[];
  /** Every requested SAN that is not a URI (DNS, IP, email, ...), as "type:value". */
  readonly otherSans: readonly string[];
  /** OIDs of requested extensions other than subjectAltName. */
  readonly otherExtensions: readonly string[];
  /** The subject's attributes as "oid=value", for refusing CSRs that try to smuggle names. */
  readonly subject: readonly string[];
}

/** Builds a PKCS#10 CSR for the given key pair asking for one URI SAN. */
export function createCsr(privateKey: KeyObject, publicKey: KeyObject, uri: string): string {
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  const extReq = seq([oid(OID.extensionRequest),
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SET, true, [
      seq([extension(OID.subjectAltName, true, sanExtensionValue({ uris: [uri] }))]),
    ])]);
  const info = seq([
    smallInt(0),
    fromDer(nameDer([])),
    fromDer(spki),
    asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, true, [extReq]),
  ]);
  const infoDer = der(info);
  const alg = sigAlgFor(privateKey);
  const sig = sign(alg.hash, infoDer, privateKey);
  const csr = seq([fromDer(infoDer), alg.asn1(), bitString(sig)]);
  return toPem('CERTIFICATE REQUEST', der(csr));
}

/**
 * Parses and verifies a CSR (PEM or DER). Throws AMBIT_ERR_CSR_INVALID on any
 * malformation or a bad signature, AMBIT_ERR_CSR_KEY_UNSUPPORTED on a weak key.
 * It does not decide what may be issued: the caller checks uris/otherSans.
 */
export function parseCsr(input: string | Buffer): ParsedCsr {
  const bytes = typeof input === 'string' ? fromPem(input, 'CERTIFICATE REQUEST') : input;
  if (bytes.length > 16 * 1024) throw new AmbitError('AMBIT_ERR_CSR_INVALID', `CSR is ${bytes.length} bytes; the limit is 16 KiB`);
  let infoDer: Buffer;
  let parsed: Asn1;
  try {
    [infoDer] = firstChildren(bytes);
    parsed = fromDer(bytes);
  } catch (cause) {
    throw new AmbitError('AMBIT_ERR_CSR_INVALID', 'CSR is not valid DER', { cause });
  }
  const top = parsed.value as Asn1[];
  const info = top[0]?.value as Asn1[] | undefined;
  const sigAlg = (top[1]?.value as Asn1[] | undefined)?.[0];
  const sigBits = top[2];
  if (top.length !== 3 || !Array.isArray(info) || info.length < 3 || !sigAlg || !sigBits || sigBits.type !== asn1.Type.BITSTRING) {
    throw new AmbitError('AMBIT_ERR_CSR_INVALID', 'CSR structure is not a PKCS#10 CertificationRequest');
  }
  const algOid = asn1.derToOid(forgeUtil.createBuffer(sigAlg.value as string));
  const hash = SIG_HASH[algOid];
  if (hash === undefined) throw new AmbitError('AMBIT_ERR_CSR_INVALID', `CSR signature algorithm ${algOid} is not supported`);

  const infoInner = tlv(infoDer, 0);
  const ver = tlv(infoDer, infoInner.valueStart);
  const subj = tlv(infoDer, ver.end);
  const spkiT = tlv(infoDer, subj.end);
  const spkiDer = Buffer.from(infoDer.subarray(spkiT.start, spkiT.end));
  const checked = checkPublicKey(spkiDer);

  const sigValue = fromBin(sigBits.value as string);
  if (sigValue[0] !== 0) throw new AmbitError('AMBIT_ERR_CSR_INVALID', 'CSR signature has unused bits');
  let ok = false;
  try {
    ok = verify(hash, infoDer, checked.key, sigValue.subarray(1));
  } catch {
    ok = false;
  }
  if (!ok) throw new AmbitError('AMBIT_ERR_CSR_INVALID', 'CSR signature does not verify with its own public key');

  const subject: string[] = [];
  const uris: string[] = [];
  const otherSans: string[] = [];
  const otherExtensions: string[] = [];
  const attrs = info[3];
  // The signature is good, but its signer controls every byte: a malformed
  // name or extension must be refused as an invalid CSR, not escape as a TypeError.
  try {
    for (const rdn of (info[1]?.value as Asn1[]) ?? []) {
      for (const atv of (rdn.value as Asn1[]) ?? []) {
        const [o, v] = atv.value as Asn1[];
        if (o && v) subject.push(`${asn1.derToOid(forgeUtil.createBuffer(o.value as string))}=${String(v.value)}`);
      }
    }
    for (const attr of attrs && Array.isArray(attrs.value) ? (attrs.value as Asn1[]) : []) {
      const [aOid, aSet] = attr.value as Asn1[];
      if (!aOid || !aSet) continue;
      const attrOid = asn1.derToOid(forgeUtil.createBuffer(aOid.value as string));
      if (attrOid !== OID.extensionRequest) {
        otherExtensions.push(`attribute:${attrOid}`);
        continue;
      }
      for (const exts of aSet.value as Asn1[]) {
        for (const ext of exts.value as Asn1[]) {
          const parts = ext.value as Asn1[];
          const extOid = asn1.derToOid(forgeUtil.createBuffer(parts[0]!.value as string));
          const valueNode = parts[parts.length - 1]!;
          if (extOid !== OID.subjectAltName) {
            otherExtensions.push(extOid);
            continue;
          }
          const names = fromDer(fromBin(valueNode.value as string)).value;
          if (!Array.isArray(names)) throw new Error('subjectAltName is not a SEQUENCE of names');
          for (const n of names) {
            if (n.tagClass === asn1.Class.CONTEXT_SPECIFIC && n.type === 6) uris.push(String(n.value));
            else otherSans.push(`${n.type}:${typeof n.value === 'string' ? n.value : '(structured)'}`);
          }
        }
      }
    }
  } catch (cause) {
    throw new AmbitError('AMBIT_ERR_CSR_INVALID', 'CSR subject, attributes or extensions are malformed', { cause });
  }
  return { publicKey: checked.key, spkiDer, keyDescription: checked.description, uris, otherSans, otherExtensions, subject };
}

// ---------------------------------------------------------------- certificates

export interface IssueOptions {
  readonly subjectPublicKey: Buffer; // SPKI DER
  /** Subject name attributes; empty → empty subject with a critical SAN (RFC 5280 §4.2.1.6). */
  readonly subject?: readonly { oid: string; value: string }[];
  readonly uris?: readonly string[];
  readonly dnsNames?: readonly string[];
  readonly ips?: readonly string[];
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly isCa: boolean;
  readonly pathLen?: number;
  readonly keyUsage: number;
  readonly extKeyUsage?: readonly string[];
  /** Issuer: the signing CA cert (DER) and key; absent for a self-signed root. */
  readonly issuer?: { readonly certDer: Buffer; readonly key: KeyObject };
  /** Self-signed: the subject's own private key. */
  readonly selfSignKey?: KeyObject;
}

export const EKU = { serverAuth: OID.serverAuth, clientAuth: OID.clientAuth } as const;
export const NAME_OID = { organization: OID.organizationName, commonName: OID.commonName } as const;

/** DER of the OID 2.5.29.14 (subjectKeyIdentifier), to find the extension without a full parse. */
const SKI_OID_DER = Buffer.from([0x06, 0x03, 0x55, 0x1d, 0x0e]);

/**
 * Subject name DER, subjectPublicKeyInfo DER and subjectKeyIdentifier (if the
 * certificate has one) of a certificate, sliced from its TBS.
 */
function certParts(certDer: Buffer): { subjectDer: Buffer; spkiDer: Buffer; subjectKeyId: Buffer | undefined } {
  const [tbs] = firstChildren(certDer);
  const t = tlv(tbs, 0);
  let e = tlv(tbs, t.valueStart);
  if (e.tag === 0xa0) e = tlv(tbs, e.end); // explicit version
  e = tlv(tbs, e.end); // signature alg
  e = tlv(tbs, e.end); // issuer
  e = tlv(tbs, e.end); // validity
  const subject = tlv(tbs, e.end);
  const spki = tlv(tbs, subject.end);
  let subjectKeyId: Buffer | undefined;
  for (let f = spki.end; f < t.end && subjectKeyId === undefined; ) {
    const field = tlv(tbs, f);
    if (field.tag === 0xa3) {
      const exts = tlv(tbs, field.valueStart);
      for (let x = exts.valueStart; x < exts.end; ) {
        const ext = tlv(tbs, x);
        const o = tlv(tbs, ext.valueStart);
        if (tbs.subarray(o.start, o.end).equals(SKI_OID_DER)) {
          let v = tlv(tbs, o.end);
          if (v.tag === 0x01) v = tlv(tbs, v.end); // critical flag
          const keyId = tlv(tbs, v.valueStart); // the OCTET STRING inside the extnValue
          subjectKeyId = Buffer.from(tbs.subarray(keyId.valueStart, keyId.end));
          break;
        }
        x = ext.end;
      }
    }
    f = field.end;
  }
  return { subjectDer: tbs.subarray(subject.start, subject.end), spkiDer: tbs.subarray(spki.start, spki.end), subjectKeyId };
}

/** Issues a certificate; returns its DER. The caller has already authorized every name in it. */
export function issueCertificate(o: IssueOptions): Buffer {
  const signKey = o.issuer?.key ?? o.selfSignKey;
  if (!signKey) throw new AmbitError('AMBIT_ERR_CA_SIGN', 'no signing key');
  const subjectDer = nameDer(o.subject ?? []);
  const issuerParts = o.issuer ? certParts(o.issuer.certDer) : undefined;
  const issuerNameDer = issuerParts ? issuerParts.subjectDer : subjectDer;
  const alg = sigAlgFor(signKey);
  const serial = randomBytes(16);
  serial[0]! &= 0x7f;
  if (serial[0] === 0) serial[0] = 1;

  const exts: Asn1[] = [];
  const bc = o.isCa
    ? seq(o.pathLen === undefined ? [bool(true)] : [bool(true), smallInt(o.pathLen)])
    : seq([]);
  exts.push(extension(OID.basicConstraints, true, der(bc)));
  exts.push(extension(OID.keyUsage, true, keyUsageValue(o.keyUsage)));
  if (o.extKeyUsage && o.extKeyUsage.length > 0) {
    exts.push(extension(OID.extKeyUsage, false, der(seq(o.extKeyUsage.map(oid)))));
  }
  if (o.isCa) exts.push(extension(OID.subjectKeyId, false, der(octets(toBin(keyIdentifier(o.subjectPublicKey))))));
  // The authority key id must equal the issuer's own subjectKeyIdentifier, which
  // a user-supplied CA may have computed by another method than ours: verifiers
  // (OpenSSL) reject a leaf whose AKI differs from its issuer's SKI.
  const authorityKeyId = issuerParts
    ? issuerParts.subjectKeyId ?? keyIdentifier(Buffer.from(issuerParts.spkiDer))
    : keyIdentifier(o.subjectPublicKey);
  exts.push(extension(OID.authorityKeyId, false, der(seq([
    asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, false, toBin(authorityKeyId)),
  ]))));
  const hasSan = (o.uris?.length ?? 0) + (o.dnsNames?.length ?? 0) + (o.ips?.length ?? 0) > 0;
  if (hasSan) {
    const sanValue = sanExtensionValue({ uris: o.uris ?? [], dns: o.dnsNames ?? [], ips: o.ips ?? [] });
    exts.push(extension(OID.subjectAltName, (o.subject ?? []).length === 0, sanValue));
  }

  const tbs = seq([
    asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, true, [smallInt(2)]),
    integerFromBytes(serial),
    alg.asn1(),
    fromDer(Buffer.from(issuerNameDer)),
    seq([utcOrGeneralized(o.notBefore), utcOrGeneralized(o.notAfter)]),
    fromDer(subjectDer),
    fromDer(o.subjectPublicKey),
    asn1.create(asn1.Class.CONTEXT_SPECIFIC, 3, true, [seq(exts)]),
  ]);
  const tbsDer = der(tbs);
  let signature: Buffer;
  try {
    signature = sign(alg.hash, tbsDer, signKey);
  } catch (cause) {
    throw new AmbitError('AMBIT_ERR_CA_SIGN', 'signing the certificate failed', { cause });
  }
  // Splice DER by hand: fromDer(tbsDer) would cost a second parse of the TBS on every issuance.
  const algDer = der(alg.asn1());
  const sigDer = der(bitString(signature));
  const body = Buffer.concat([tbsDer, algDer, sigDer]);
  return Buffer.concat([derHeader(0x30, body.length), body]);
}

function derHeader(tag: number, len: number): Buffer {
  if (len < 0x80) return Buffer.from([tag, len]);
  const bytes: number[] = [];
  for (let l = len; l > 0; l = Math.floor(l / 256)) bytes.unshift(l & 0xff);
  return Buffer.from([tag, 0x80 | bytes.length, ...bytes]);
}

// ---------------------------------------------------------------- PEM and inspection

export function toPem(label: string, bytes: Buffer): string {
  const b64 = bytes.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '');
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

export function fromPem(pem: string, label: string): Buffer {
  const re = new RegExp(`-----BEGIN ${label}-----([\\s\\S]*?)-----END ${label}-----`);
  const m = re.exec(pem);
  if (!m || m[1] === undefined) {
    throw new AmbitError(label === 'CERTIFICATE REQUEST' ? 'AMBIT_ERR_CSR_INVALID' : 'AMBIT_ERR_CERT_INVALID', `no PEM block labelled ${label}`);
  }
  return Buffer.from(m[1].replace(/\s+/g, ''), 'base64');
}

/** Every CERTIFICATE block of a PEM bundle, in order. */
export function splitPemCertificates(pem: string): string[] {
  return pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----\n?/g)?.map((s) => (s.endsWith('\n') ? s : `${s}\n`)) ?? [];
}

/**
 * URI SANs of a certificate. Node renders subjectAltName as "URI:a, DNS:b";
 * a value holding a comma or quote is rendered JSON-quoted, which a SPIFFE ID
 * can never need, so such entries are reported as-is and fail SPIFFE parsing.
 */
export function certificateUris(cert: X509Certificate): string[] {
  const san = cert.subjectAltName;
  if (!san) return [];
  return san
    .split(', ')
    .filter((e) => e.startsWith('URI:'))
    .map((e) => e.slice(4));
}
