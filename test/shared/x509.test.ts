import t from 'tap';
import { execFileSync } from 'node:child_process';
import { generateKeyPairSync, randomBytes, sign, X509Certificate, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import forge from 'node-forge';
import {
  certificateUris, createCsr, EKU, fromPem, issueCertificate, KeyUsage, NAME_OID, parseCsr, splitPemCertificates, toPem,
} from '../../shared/x509.ts';

const asn1 = forge.asn1;
type Asn1 = forge.asn1.Asn1;

const ID = 'spiffe://cluster.local/ns/a/sa/b';
const HOUR = 3_600_000;

interface Pair {
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
}

const ec = (): Pair => generateKeyPairSync('ec', { namedCurve: 'P-256' });
const spki = (k: KeyObject): Buffer => k.export({ type: 'spki', format: 'der' });
const pkcs8Pem = (k: KeyObject): string => k.export({ type: 'pkcs8', format: 'pem' }).toString();
const csrDer = (pem: string): Buffer => fromPem(pem, 'CERTIFICATE REQUEST');

// The only two RSA keys of this file (RSA generation is slow).
const rsa2048 = generateKeyPairSync('rsa', { modulusLength: 2048 });
const rsa1024 = generateKeyPairSync('rsa', { modulusLength: 1024 });

function openssl(args: string[], cwd: string): string {
  return execFileSync('openssl', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Extensions of a certificate, by OID, with their critical flag and raw value, read with forge.asn1 (independent of the code under test). */
function extensionsOf(der: Buffer): Map<string, { critical: boolean; value: Buffer }> {
  const cert = asn1.fromDer(der.toString('binary'));
  const tbs = (cert.value as Asn1[])[0]!.value as Asn1[];
  const wrapped = tbs.find((n) => n.tagClass === asn1.Class.CONTEXT_SPECIFIC && n.type === 3);
  const out = new Map<string, { critical: boolean; value: Buffer }>();
  if (!wrapped) return out;
  for (const ext of ((wrapped.value as Asn1[])[0]!.value as Asn1[])) {
    const parts = ext.value as Asn1[];
    const o = asn1.derToOid(forge.util.createBuffer(parts[0]!.value as string));
    const critical = parts.length === 3 && (parts[1]!.value as string) === '\xff';
    out.set(o, { critical, value: Buffer.from(parts[parts.length - 1]!.value as string, 'binary') });
  }
  return out;
}

/** A signed PKCS#10 CSR with the given attributes ([0] contents), built by hand to reach parser paths createCsr never produces. */
function handmadeCsr(pair: Pair, attributes: Asn1[], subject: Asn1[] = []): Buffer {
  const info = asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.INTEGER, false, '\x00'),
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, subject),
    asn1.fromDer(spki(pair.publicKey).toString('binary')),
    asn1.create(asn1.Class.CONTEXT_SPECIFIC, 0, true, attributes),
  ]);
  const infoDer = Buffer.from(asn1.toDer(info).getBytes(), 'binary');
  const sig = sign('sha256', infoDer, pair.privateKey);
  const csr = asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
    asn1.fromDer(infoDer.toString('binary')),
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
      asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer('1.2.840.10045.4.3.2').getBytes()),
    ]),
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.BITSTRING, false, '\x00' + sig.toString('binary')),
  ]);
  return Buffer.from(asn1.toDer(csr).getBytes(), 'binary');
}

function extensionRequest(extensions: Asn1[]): Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer('1.2.840.113549.1.9.14').getBytes()),
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SET, true, [asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, extensions)]),
  ]);
}

function sanExtension(valueBin: string): Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer('2.5.29.17').getBytes()),
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OCTETSTRING, false, valueBin),
  ]);
}

function makeRoot(now = Date.now(), name = 'test root'): { pair: Pair; der: Buffer; cert: X509Certificate } {
  const pair = ec();
  const der = issueCertificate({
    subjectPublicKey: spki(pair.publicKey),
    subject: [{ oid: NAME_OID.organization, value: 'ambit-test' }, { oid: NAME_OID.commonName, value: name }],
    notBefore: new Date(now - HOUR),
    notAfter: new Date(now + 24 * HOUR),
    isCa: true,
    pathLen: 1,
    keyUsage: KeyUsage.keyCertSign | KeyUsage.cRLSign,
    selfSignKey: pair.privateKey,
  });
  return { pair, der, cert: new X509Certificate(der) };
}

function issueLeaf(root: { pair: Pair; der: Buffer }, subjectKey: KeyObject, notBefore: Date, notAfter: Date): Buffer {
  return issueCertificate({
    subjectPublicKey: spki(subjectKey),
    uris: [ID],
    notBefore,
    notAfter,
    isCa: false,
    keyUsage: KeyUsage.digitalSignature,
    extKeyUsage: [EKU.serverAuth, EKU.clientAuth],
    issuer: { certDer: root.der, key: root.pair.privateKey },
  });
}

// ------------------------------------------------------------------ CSR

t.test('createCsr → parseCsr round trip with an ECDSA P-256 key', async (t) => {
  const pair = ec();
  const pem = createCsr(pair.privateKey, pair.publicKey, ID);
  t.match(pem, /^-----BEGIN CERTIFICATE REQUEST-----\n/);
  for (const input of [pem, csrDer(pem)]) {
    const p = parseCsr(input);
    t.same(p.uris, [ID]);
    t.same(p.otherSans, []);
    t.same(p.otherExtensions, []);
    t.same(p.subject, []);
    t.equal(p.keyDescription, 'ECDSA P-256');
    t.ok(p.spkiDer.equals(spki(pair.publicKey)), 'the SPKI is the CSR key');
    t.ok(p.publicKey.equals(pair.publicKey));
  }
});

t.test('createCsr output is a CSR OpenSSL verifies and reads', async (t) => {
  const dir = t.testdir();
  const pair = ec();
  fs.writeFileSync(path.join(dir, 'req.pem'), createCsr(pair.privateKey, pair.publicKey, ID));
  const text = openssl(['req', '-in', 'req.pem', '-verify', '-noout', '-text'], dir);
  t.match(text, `URI:${ID}`);
  t.match(text, /X509v3 Subject Alternative Name: critical/);
});

t.test('RSA 2048 keys are accepted', async (t) => {
  const p = parseCsr(createCsr(rsa2048.privateKey, rsa2048.publicKey, ID));
  t.equal(p.keyDescription, 'RSA 2048');
  t.same(p.uris, [ID]);
});

t.test('weak or unsupported keys are refused with AMBIT_ERR_CSR_KEY_UNSUPPORTED', async (t) => {
  const p384 = generateKeyPairSync('ec', { namedCurve: 'P-384' });
  t.throws(() => parseCsr(createCsr(p384.privateKey, p384.publicKey, ID)), { code: 'AMBIT_ERR_CSR_KEY_UNSUPPORTED', details: { key: 'EC secp384r1' } });
  t.throws(() => parseCsr(createCsr(rsa1024.privateKey, rsa1024.publicKey, ID)), { code: 'AMBIT_ERR_CSR_KEY_UNSUPPORTED', details: { key: 'rsa 1024' } });
});

t.test('a CSR whose signature algorithm is not supported (Ed25519, from OpenSSL) is invalid', async (t) => {
  const dir = t.testdir();
  openssl(['genpkey', '-algorithm', 'ed25519', '-out', 'k.pem'], dir);
  openssl(['req', '-new', '-key', 'k.pem', '-subj', '/', '-addext', `subjectAltName=URI:${ID}`, '-out', 'r.pem'], dir);
  t.throws(() => parseCsr(fs.readFileSync(path.join(dir, 'r.pem'), 'utf8')), { code: /^AMBIT_ERR_CSR_(INVALID|KEY_UNSUPPORTED)$/ });
});

t.test('a tampered CSR info fails the signature check', async (t) => {
  const pair = ec();
  const der = csrDer(createCsr(pair.privateKey, pair.publicKey, ID));
  const at = der.indexOf('ns/a/sa/b');
  t.ok(at > 0, 'found the URI inside the CSR info');
  const tampered = Buffer.from(der);
  tampered[at + 3] = 'c'.charCodeAt(0); // ns/a/sa/b → ns/a/sc/b: still well-formed DER
  t.throws(() => parseCsr(tampered), { code: 'AMBIT_ERR_CSR_INVALID', message: /signature/ });
  // Flipping a bit of the signature itself fails too.
  const badSig = Buffer.from(der);
  badSig[badSig.length - 5]! ^= 0x01;
  t.throws(() => parseCsr(badSig), { code: 'AMBIT_ERR_CSR_INVALID' });
  // A CSR signed by another key than the one it carries.
  const other = ec();
  const info = asn1.fromDer(der.toString('binary'));
  const infoDer = Buffer.from(asn1.toDer((info.value as Asn1[])[0]!).getBytes(), 'binary');
  const sig = sign('sha256', infoDer, other.privateKey);
  (info.value as Asn1[])[2] = asn1.create(asn1.Class.UNIVERSAL, asn1.Type.BITSTRING, false, '\x00' + sig.toString('binary'));
  t.throws(() => parseCsr(Buffer.from(asn1.toDer(info).getBytes(), 'binary')), { code: 'AMBIT_ERR_CSR_INVALID', message: /signature/ });
});

t.test('truncated, garbage, non-CSR and oversized input is AMBIT_ERR_CSR_INVALID', async (t) => {
  const pair = ec();
  const der = csrDer(createCsr(pair.privateKey, pair.publicKey, ID));
  for (const cut of [1, 10, der.length - 1, der.length - 20]) {
    t.throws(() => parseCsr(der.subarray(0, cut)), { code: 'AMBIT_ERR_CSR_INVALID' }, `truncated to ${cut}`);
  }
  t.throws(() => parseCsr(Buffer.concat([der, Buffer.from([0])])), { code: 'AMBIT_ERR_CSR_INVALID' }, 'trailing byte');
  t.throws(() => parseCsr(Buffer.alloc(0)), { code: 'AMBIT_ERR_CSR_INVALID' }, 'empty');
  for (let i = 0; i < 20; i++) {
    const junk = randomBytes(64 + i * 13);
    t.throws(() => parseCsr(junk), { code: 'AMBIT_ERR_CSR_INVALID' }, `garbage ${i}`);
  }
  t.throws(() => parseCsr('not a pem'), { code: 'AMBIT_ERR_CSR_INVALID' }, 'no PEM block');
  // A certificate is not a CSR, even though it is a SEQUENCE of three.
  const root = makeRoot();
  t.throws(() => parseCsr(root.der), { code: 'AMBIT_ERR_CSR_INVALID' }, 'certificate DER');
  const big = Buffer.concat([Buffer.from([0x30, 0x82, 0x44, 0x00]), Buffer.alloc(0x4400)]);
  t.throws(() => parseCsr(big), { code: 'AMBIT_ERR_CSR_INVALID', message: /16 KiB/ }, 'oversized DER');
  t.throws(() => parseCsr(toPem('CERTIFICATE REQUEST', big)), { code: 'AMBIT_ERR_CSR_INVALID', message: /16 KiB/ }, 'oversized PEM');
});

t.test('an OpenSSL CSR with an extra DNS SAN reports it in otherSans', async (t) => {
  const dir = t.testdir();
  const pair = ec();
  fs.writeFileSync(path.join(dir, 'k.pem'), pkcs8Pem(pair.privateKey));
  openssl(['req', '-new', '-key', 'k.pem', '-subj', '/', '-addext', `subjectAltName=URI:${ID},DNS:evil.example`, '-out', 'r.pem'], dir);
  const p = parseCsr(fs.readFileSync(path.join(dir, 'r.pem'), 'utf8'));
  t.same(p.uris, [ID]);
  t.equal(p.otherSans.length, 1);
  t.match(p.otherSans[0], /evil\.example/);
  t.same(p.otherExtensions, []);
});

t.test('an OpenSSL CSR with an extra extension reports it in otherExtensions; a subject is reported', async (t) => {
  const dir = t.testdir();
  const pair = ec();
  fs.writeFileSync(path.join(dir, 'k.pem'), pkcs8Pem(pair.privateKey));
  openssl(['req', '-new', '-key', 'k.pem', '-subj', '/CN=admin/O=evil', '-addext', `subjectAltName=URI:${ID}`, '-addext', 'basicConstraints=critical,CA:TRUE', '-out', 'r.pem'], dir);
  const p = parseCsr(fs.readFileSync(path.join(dir, 'r.pem'), 'utf8'));
  t.same(p.uris, [ID]);
  t.same(p.otherSans, []);
  t.same(p.otherExtensions, ['2.5.29.19']);
  t.same(p.subject, ['2.5.4.3=admin', '2.5.4.10=evil']);
});

t.test('non-extension attributes are reported; URI SANs are all listed', async (t) => {
  const pair = ec();
  const uri = (u: string): Asn1 => asn1.create(asn1.Class.CONTEXT_SPECIFIC, 6, false, u);
  const twoUris = asn1.toDer(asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [uri(ID), uri('spiffe://cluster.local/ns/x/sa/y')])).getBytes();
  const challenge = asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer('1.2.840.113549.1.9.7').getBytes()),
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SET, true, [asn1.create(asn1.Class.UNIVERSAL, asn1.Type.UTF8, false, 'pw')]),
  ]);
  const p = parseCsr(handmadeCsr(pair, [extensionRequest([sanExtension(twoUris)]), challenge]));
  t.same(p.uris, [ID, 'spiffe://cluster.local/ns/x/sa/y']);
  t.same(p.otherExtensions, ['attribute:1.2.840.113549.1.9.7']);
});

t.test('a well-signed CSR with a malformed SAN extension is AMBIT_ERR_CSR_INVALID, not a crash', async (t) => {
  const pair = ec();
  // SAN value claims 5 bytes but holds 2.
  t.throws(() => parseCsr(handmadeCsr(pair, [extensionRequest([sanExtension('\x30\x05\x86\x01a')])])), { code: 'AMBIT_ERR_CSR_INVALID' });
  // SAN value is not a SEQUENCE of names at all.
  t.throws(() => parseCsr(handmadeCsr(pair, [extensionRequest([sanExtension('\x05\x00')])])), { code: 'AMBIT_ERR_CSR_INVALID' });
  // SAN value with trailing bytes after the SEQUENCE.
  t.throws(() => parseCsr(handmadeCsr(pair, [extensionRequest([sanExtension('\x30\x00\x00')])])), { code: 'AMBIT_ERR_CSR_INVALID' });
  // A subject whose RDN is a primitive instead of a SET of attributes.
  const badSubject = [asn1.create(asn1.Class.UNIVERSAL, asn1.Type.INTEGER, false, '\x01')];
  t.throws(() => parseCsr(handmadeCsr(pair, [], badSubject)), { code: 'AMBIT_ERR_CSR_INVALID' });
  // The extension request's SET holds a primitive instead of a SEQUENCE of extensions.
  const bogusReq = asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, [
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer('1.2.840.113549.1.9.14').getBytes()),
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SET, true, [asn1.create(asn1.Class.UNIVERSAL, asn1.Type.INTEGER, false, '\x01')]),
  ]);
  t.throws(() => parseCsr(handmadeCsr(pair, [bogusReq])), { code: 'AMBIT_ERR_CSR_INVALID' });
});

// ------------------------------------------------------------------ certificates

t.test('issueCertificate: an X.509-SVID leaf as DESIGN §2 requires', async (t) => {
  const dir = t.testdir();
  const now = Date.now();
  const root = makeRoot(now);
  const leafPair = ec();
  const notBefore = new Date(Math.floor((now - 60_000) / 1000) * 1000);
  const notAfter = new Date(Math.floor((now + 2 * HOUR) / 1000) * 1000);
  const der = issueLeaf(root, leafPair.publicKey, notBefore, notAfter);
  const leaf = new X509Certificate(der);

  t.same(certificateUris(leaf), [ID], 'exactly one URI SAN');
  t.equal(leaf.subjectAltName, `URI:${ID}`, 'and no other SAN');
  t.equal(leaf.ca, false);
  t.notOk(leaf.subject, 'empty subject');
  t.equal(leaf.issuer, root.cert.subject, 'issuer is the root subject');
  t.equal(leaf.validFromDate.getTime(), notBefore.getTime());
  t.equal(leaf.validToDate.getTime(), notAfter.getTime());
  t.same([...leaf.keyUsage].sort(), [EKU.serverAuth, EKU.clientAuth].sort(), 'EKU serverAuth + clientAuth');
  t.ok(leaf.checkIssued(root.cert) && leaf.verify(root.cert.publicKey), 'signed by the root');
  t.ok(leaf.publicKey.equals(leafPair.publicKey), 'carries the subject key');
  t.not(leaf.serialNumber, new X509Certificate(issueLeaf(root, leafPair.publicKey, notBefore, notAfter)).serialNumber, 'random serials');

  const exts = extensionsOf(der);
  const bc = exts.get('2.5.29.19');
  t.ok(bc?.critical, 'basicConstraints critical');
  t.same(bc?.value, Buffer.from([0x30, 0x00]), 'basicConstraints CA:FALSE (empty SEQUENCE)');
  const ku = exts.get('2.5.29.15');
  t.ok(ku?.critical, 'keyUsage critical');
  t.same(ku?.value, Buffer.from([0x03, 0x02, 0x07, 0x80]), 'keyUsage = digitalSignature only');
  t.equal(exts.get('2.5.29.17')?.critical, true, 'SAN critical because the subject is empty');
  t.notOk(exts.has('2.5.29.14'), 'no subjectKeyIdentifier on a leaf');
  t.ok(exts.has('2.5.29.35'), 'authorityKeyIdentifier present');

  fs.writeFileSync(path.join(dir, 'root.pem'), root.cert.toString());
  fs.writeFileSync(path.join(dir, 'leaf.pem'), toPem('CERTIFICATE', der));
  t.match(openssl(['verify', '-CAfile', 'root.pem', 'leaf.pem'], dir), /leaf\.pem: OK/);
  t.match(openssl(['verify', '-CAfile', 'root.pem', '-purpose', 'sslserver', 'leaf.pem'], dir), /OK/);
  t.match(openssl(['verify', '-CAfile', 'root.pem', '-purpose', 'sslclient', 'leaf.pem'], dir), /OK/);
  const text = openssl(['x509', '-in', 'leaf.pem', '-noout', '-text'], dir);
  t.match(text, /X509v3 Basic Constraints: critical\s+CA:FALSE/);
  t.match(text, /X509v3 Key Usage: critical\s+Digital Signature\n/);
  t.match(text, /X509v3 Extended Key Usage:\s*\n\s+TLS Web Server Authentication, TLS Web Client Authentication/);
  t.match(text, new RegExp(`X509v3 Subject Alternative Name: critical\\s+URI:${ID.replace(/\./g, '\\.')}\\n`));
});

t.test('a leaf from another root does not verify with OpenSSL', async (t) => {
  const dir = t.testdir();
  const now = Date.now();
  const root = makeRoot(now);
  const other = makeRoot(now, 'other root');
  const leaf = issueLeaf(other, ec().publicKey, new Date(now - 60_000), new Date(now + HOUR));
  fs.writeFileSync(path.join(dir, 'root.pem'), root.cert.toString());
  fs.writeFileSync(path.join(dir, 'leaf.pem'), toPem('CERTIFICATE', leaf));
  t.throws(() => openssl(['verify', '-CAfile', 'root.pem', 'leaf.pem'], dir));
});

t.test('issueCertificate: a self-signed root CA', async (t) => {
  const dir = t.testdir();
  const root = makeRoot();
  t.equal(root.cert.ca, true);
  t.equal(root.cert.subject, root.cert.issuer, 'self-issued');
  t.ok(root.cert.verify(root.pair.publicKey), 'self-signed');
  t.match(root.cert.subject, /O=ambit-test/);
  const exts = extensionsOf(root.der);
  t.ok(exts.get('2.5.29.19')?.critical);
  // SEQUENCE { BOOLEAN TRUE, INTEGER 1 }
  t.same(exts.get('2.5.29.19')?.value, Buffer.from([0x30, 0x06, 0x01, 0x01, 0xff, 0x02, 0x01, 0x01]));
  t.ok(exts.has('2.5.29.14'), 'CA has a subjectKeyIdentifier');
  t.notOk(exts.has('2.5.29.17'), 'no SAN when none asked');
  fs.writeFileSync(path.join(dir, 'root.pem'), root.cert.toString());
  const text = openssl(['x509', '-in', 'root.pem', '-noout', '-text'], dir);
  t.match(text, /CA:TRUE, pathlen:1/);
  t.match(text, /X509v3 Key Usage: critical\s+Certificate Sign, CRL Sign/);
  t.match(openssl(['verify', '-CAfile', 'root.pem', 'root.pem'], dir), /OK/);
});

t.test('a subject with a name makes the SAN non-critical; DNS and IP SANs are encoded', async (t) => {
  const root = makeRoot();
  const pair = ec();
  const der = issueCertificate({
    subjectPublicKey: spki(pair.publicKey),
    subject: [{ oid: NAME_OID.commonName, value: 'svc' }],
    uris: [ID],
    dnsNames: ['ctl.example'],
    ips: ['10.1.2.3', '::1', 'fd00::a:b', '::ffff:10.0.0.1'],
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + HOUR),
    isCa: false,
    keyUsage: KeyUsage.digitalSignature,
    issuer: { certDer: root.der, key: root.pair.privateKey },
  });
  const cert = new X509Certificate(der);
  t.equal(extensionsOf(der).get('2.5.29.17')?.critical, false);
  t.ok(cert.checkHost('ctl.example'));
  t.equal(cert.checkIP('10.1.2.3'), '10.1.2.3');
  t.ok(cert.checkIP('::1'));
  t.ok(cert.checkIP('fd00::a:b'));
  t.ok(cert.checkIP('::ffff:10.0.0.1'), 'IPv4-mapped IPv6 address encoded as its 16 bytes');
  t.notOk(cert.checkIP('10.1.2.4'));
  t.notOk(extensionsOf(der).has('2.5.29.37'), 'no EKU when none asked');
  t.throws(() => issueCertificate({
    subjectPublicKey: spki(pair.publicKey), ips: ['not-an-ip'], notBefore: new Date(), notAfter: new Date(), isCa: false,
    keyUsage: KeyUsage.digitalSignature, issuer: { certDer: root.der, key: root.pair.privateKey },
  }), { code: 'AMBIT_ERR_CA_SIGN' });
});

t.test('an RSA issuer signs with sha256WithRSAEncryption', async (t) => {
  const dir = t.testdir();
  const now = Date.now();
  const rootDer = issueCertificate({
    subjectPublicKey: spki(rsa2048.publicKey),
    subject: [{ oid: NAME_OID.commonName, value: 'rsa root' }],
    notBefore: new Date(now - HOUR), notAfter: new Date(now + HOUR),
    isCa: true, keyUsage: KeyUsage.keyCertSign, selfSignKey: rsa2048.privateKey,
  });
  const leaf = issueLeaf({ pair: rsa2048, der: rootDer }, ec().publicKey, new Date(now - 60_000), new Date(now + HOUR));
  fs.writeFileSync(path.join(dir, 'root.pem'), toPem('CERTIFICATE', rootDer));
  fs.writeFileSync(path.join(dir, 'leaf.pem'), toPem('CERTIFICATE', leaf));
  t.match(openssl(['verify', '-CAfile', 'root.pem', 'leaf.pem'], dir), /OK/);
  t.match(openssl(['x509', '-in', 'leaf.pem', '-noout', '-text'], dir), /Signature Algorithm: sha256WithRSAEncryption/);
});

t.test('dates from 2050 use GeneralizedTime, earlier ones UTCTime', async (t) => {
  const dir = t.testdir();
  const root = makeRoot();
  const pair = ec();
  const notBefore = new Date(Date.UTC(2049, 11, 31, 23, 59, 59));
  const notAfter = new Date(Date.UTC(2055, 5, 1, 12, 0, 0));
  const der = issueCertificate({
    subjectPublicKey: spki(pair.publicKey), uris: [ID], notBefore, notAfter, isCa: false,
    keyUsage: KeyUsage.digitalSignature, issuer: { certDer: root.der, key: root.pair.privateKey },
  });
  const cert = new X509Certificate(der);
  t.equal(cert.validToDate.getUTCFullYear(), 2055);
  t.equal(cert.validToDate.getTime(), notAfter.getTime());
  t.equal(cert.validFromDate.getTime(), notBefore.getTime());
  const validity = (((asn1.fromDer(der.toString('binary')).value as Asn1[])[0]!.value as Asn1[])[4]!.value as Asn1[]);
  t.equal(validity[0]!.type, asn1.Type.UTCTIME, 'notBefore 2049 is UTCTime');
  t.equal(validity[1]!.type, asn1.Type.GENERALIZEDTIME, 'notAfter 2055 is GeneralizedTime');
  t.equal(validity[1]!.value, '20550601120000Z');
  fs.writeFileSync(path.join(dir, 'c.pem'), cert.toString());
  t.match(openssl(['x509', '-in', 'c.pem', '-noout', '-enddate'], dir), /notAfter=Jun +1 12:00:00 2055 GMT/);
});

t.test('issueCertificate needs a signing key', async (t) => {
  t.throws(() => issueCertificate({
    subjectPublicKey: spki(ec().publicKey), notBefore: new Date(), notAfter: new Date(), isCa: false, keyUsage: KeyUsage.digitalSignature,
  }), { code: 'AMBIT_ERR_CA_SIGN' });
});

// ------------------------------------------------------------------ PEM helpers

t.test('PEM helpers', async (t) => {
  const a = makeRoot();
  const b = makeRoot(Date.now(), 'b');
  const bundle = a.cert.toString() + b.cert.toString().trimEnd();
  const parts = splitPemCertificates(`junk\n${bundle}\ntrailer`);
  t.equal(parts.length, 2);
  t.ok(new X509Certificate(parts[0]!).raw.equals(a.der));
  t.ok(new X509Certificate(parts[1]!).raw.equals(b.der));
  t.ok(parts.every((p) => p.endsWith('-----END CERTIFICATE-----\n')));
  t.same(splitPemCertificates('nothing here'), []);
  const pem = toPem('CERTIFICATE', a.der);
  t.ok(pem.split('\n').every((l) => l.length <= 64), 'lines wrapped at 64');
  t.ok(fromPem(pem, 'CERTIFICATE').equals(a.der));
  t.throws(() => fromPem(pem, 'CERTIFICATE REQUEST'), { code: 'AMBIT_ERR_CSR_INVALID' });
  t.throws(() => fromPem('x', 'CERTIFICATE'), { code: 'AMBIT_ERR_CERT_INVALID' });
});
