import t from 'tap';
import { createHash, generateKeyPairSync, X509Certificate, type KeyObject } from 'node:crypto';
import {
  certificateFingerprint, parseCertificates, spiffeIdOfCertificate, verifyChain, verifyPeer,
} from '../../shared/tls.ts';
import { EKU, issueCertificate, KeyUsage, NAME_OID } from '../../shared/x509.ts';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
// Whole seconds: certificates carry second precision.
const NOW = Math.floor(Date.now() / 1000) * 1000;
const TD = 'cluster.local';
const ID = `spiffe://${TD}/ns/default/sa/web`;

interface Ca {
  readonly key: KeyObject;
  readonly der: Buffer;
  readonly cert: X509Certificate;
}

const spki = (k: KeyObject): Buffer => k.export({ type: 'spki', format: 'der' });

function root(name: string, from = NOW - DAY, to = NOW + 30 * DAY): Ca {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const der = issueCertificate({
    subjectPublicKey: spki(publicKey),
    subject: [{ oid: NAME_OID.commonName, value: name }],
    notBefore: new Date(from), notAfter: new Date(to),
    isCa: true, keyUsage: KeyUsage.keyCertSign | KeyUsage.cRLSign, selfSignKey: privateKey,
  });
  return { key: privateKey, der, cert: new X509Certificate(der) };
}

function intermediate(name: string, parent: Ca, from = NOW - DAY, to = NOW + 20 * DAY): Ca {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const der = issueCertificate({
    subjectPublicKey: spki(publicKey),
    subject: [{ oid: NAME_OID.commonName, value: name }],
    notBefore: new Date(from), notAfter: new Date(to),
    isCa: true, pathLen: 0, keyUsage: KeyUsage.keyCertSign, issuer: { certDer: parent.der, key: parent.key },
  });
  return { key: privateKey, der, cert: new X509Certificate(der) };
}

function leaf(parent: Ca, o: { uris?: string[]; from?: number; to?: number; isCa?: boolean } = {}): { der: Buffer; cert: X509Certificate } {
  const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const der = issueCertificate({
    subjectPublicKey: spki(publicKey),
    uris: o.uris ?? [ID],
    notBefore: new Date(o.from ?? NOW - HOUR), notAfter: new Date(o.to ?? NOW + HOUR),
    isCa: o.isCa ?? false,
    keyUsage: o.isCa ? KeyUsage.keyCertSign : KeyUsage.digitalSignature,
    extKeyUsage: [EKU.serverAuth, EKU.clientAuth],
    issuer: { certDer: parent.der, key: parent.key },
  });
  return { der, cert: new X509Certificate(der) };
}

const fp = (c: X509Certificate): string => c.fingerprint256;

const rootA = root('root A');
const rootB = root('root B');

t.test('verifyChain: a leaf signed by a root in the bundle', async (t) => {
  const l = leaf(rootA);
  const chain = verifyChain(l.cert, [], [rootB.cert, rootA.cert], NOW);
  t.same(chain.map(fp), [fp(l.cert), fp(rootA.cert)], 'leaf then the root that signed it');
});

t.test('verifyChain: validity periods are checked at `now`', async (t) => {
  const l = leaf(rootA, { from: NOW - HOUR, to: NOW + HOUR });
  t.equal(verifyChain(l.cert, [], [rootA.cert], NOW + HOUR).length, 2, 'valid at its last second');
  t.equal(verifyChain(l.cert, [], [rootA.cert], NOW - HOUR).length, 2, 'valid at its first second');
  t.throws(() => verifyChain(l.cert, [], [rootA.cert], NOW + HOUR + 1000), { code: 'AMBIT_ERR_CERT_INVALID', message: /not valid now/ }, 'expired');
  t.throws(() => verifyChain(l.cert, [], [rootA.cert], NOW - HOUR - 1000), { code: 'AMBIT_ERR_CERT_INVALID', message: /not valid now/ }, 'not yet valid');
  const future = leaf(rootA, { from: NOW + HOUR, to: NOW + 2 * HOUR });
  t.throws(() => verifyChain(future.cert, [], [rootA.cert], NOW), { code: 'AMBIT_ERR_CERT_INVALID', message: /not valid now/ });
  const expired = leaf(rootA, { from: NOW - 2 * HOUR, to: NOW - HOUR });
  t.throws(() => verifyChain(expired.cert, [], [rootA.cert], NOW), { code: 'AMBIT_ERR_CERT_INVALID' });
});

t.test('verifyChain: an expired root fails even when the leaf is valid', async (t) => {
  const old = root('old root', NOW - 10 * DAY, NOW - DAY);
  const l = leaf(old, { from: NOW - HOUR, to: NOW + HOUR });
  t.throws(() => verifyChain(l.cert, [], [old.cert], NOW), { code: 'AMBIT_ERR_CERT_INVALID', message: /root certificate is not valid/ });
});

t.test('verifyChain: a leaf of another CA does not chain', async (t) => {
  const l = leaf(rootB);
  t.throws(() => verifyChain(l.cert, [], [rootA.cert], NOW), { code: 'AMBIT_ERR_CERT_INVALID', message: /does not chain/ });
  // A certificate with the same issuer name but another key is not trusted either.
  const imposter = root('root A');
  t.equal(imposter.cert.subject, rootA.cert.subject);
  t.throws(() => verifyChain(leaf(imposter).cert, [], [rootA.cert], NOW), { code: 'AMBIT_ERR_CERT_INVALID', message: /does not chain/ });
  t.throws(() => verifyChain(l.cert, [], [], NOW), { code: 'AMBIT_ERR_CERT_INVALID' }, 'empty bundle');
});

t.test('verifyChain: through an intermediate, given in any order', async (t) => {
  const inter = intermediate('inter', rootA);
  const other = intermediate('other inter', rootB);
  const l = leaf(inter);
  const chain = verifyChain(l.cert, [other.cert, inter.cert], [rootA.cert], NOW);
  t.same(chain.map(fp), [fp(l.cert), fp(inter.cert), fp(rootA.cert)]);
  t.throws(() => verifyChain(l.cert, [], [rootA.cert], NOW), { code: 'AMBIT_ERR_CERT_INVALID' }, 'intermediate missing');
  t.throws(() => verifyChain(l.cert, [inter.cert], [rootB.cert], NOW), { code: 'AMBIT_ERR_CERT_INVALID' }, 'intermediate of another root');
  // The intermediate itself may be the trust anchor.
  t.same(verifyChain(l.cert, [], [inter.cert], NOW).map(fp), [fp(l.cert), fp(inter.cert)]);
  const expiredInter = intermediate('expired inter', rootA, NOW - 3 * DAY, NOW - DAY);
  t.throws(() => verifyChain(leaf(expiredInter).cert, [expiredInter.cert], [rootA.cert], NOW), {
    code: 'AMBIT_ERR_CERT_INVALID', message: /intermediate certificate is not valid/,
  });
});

t.test('verifyChain: a non-CA certificate cannot act as an intermediate', async (t) => {
  // A workload's leaf signing another leaf must not extend the chain.
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const rogueDer = issueCertificate({
    subjectPublicKey: spki(publicKey),
    subject: [{ oid: NAME_OID.commonName, value: 'rogue' }],
    uris: [ID],
    notBefore: new Date(NOW - HOUR), notAfter: new Date(NOW + HOUR),
    // keyCertSign without CA:TRUE: only the basicConstraints check stands in the way.
    isCa: false, keyUsage: KeyUsage.digitalSignature | KeyUsage.keyCertSign, issuer: { certDer: rootA.der, key: rootA.key },
  });
  const rogue = { key: privateKey, der: rogueDer, cert: new X509Certificate(rogueDer) };
  const victim = leaf(rogue, { uris: [`spiffe://${TD}/ns/kube-system/sa/admin`] });
  t.throws(() => verifyChain(victim.cert, [rogue.cert], [rootA.cert], NOW), { code: 'AMBIT_ERR_CERT_INVALID' });
  // Nor can a non-CA certificate placed in the trust bundle.
  t.throws(() => verifyChain(victim.cert, [], [rogue.cert], NOW), { code: 'AMBIT_ERR_CERT_INVALID' });
});

t.test('verifyPeer: returns the SPIFFE ID of a good peer', async (t) => {
  const l = leaf(rootA);
  const id = verifyPeer(l.der, [], [rootA.cert], TD, NOW);
  t.same({ ...id }, { trustDomain: TD, kind: 'workload', namespace: 'default', serviceAccount: 'web', uri: ID });
  const inter = intermediate('inter', rootA);
  t.equal(verifyPeer(leaf(inter).der, [inter.cert], [rootA.cert], TD, NOW).uri, ID);
});

t.test('verifyPeer: refusals', async (t) => {
  const otherTd = leaf(rootA, { uris: ['spiffe://evil.example/ns/default/sa/web'] });
  t.throws(() => verifyPeer(otherTd.der, [], [rootA.cert], TD, NOW), {
    code: 'AMBIT_ERR_CERT_INVALID', message: /not in trust domain cluster\.local/, details: { identity: 'spiffe://evil.example/ns/default/sa/web' },
  });
  const caPeer = leaf(rootA, { isCa: true });
  t.equal(caPeer.cert.ca, true);
  t.throws(() => verifyPeer(caPeer.der, [], [rootA.cert], TD, NOW), { code: 'AMBIT_ERR_CERT_INVALID', message: /CA certificate/ });
  t.throws(() => verifyPeer(rootA.der, [], [rootA.cert], TD, NOW), { code: 'AMBIT_ERR_CERT_INVALID', message: /CA certificate/ }, 'the root itself');
  const two = leaf(rootA, { uris: [ID, `spiffe://${TD}/ns/default/sa/db`] });
  t.throws(() => verifyPeer(two.der, [], [rootA.cert], TD, NOW), { code: 'AMBIT_ERR_CERT_INVALID', message: /2 URI SANs/ });
  t.throws(() => verifyPeer(leaf(rootB).der, [], [rootA.cert], TD, NOW), { code: 'AMBIT_ERR_CERT_INVALID', message: /does not chain/ });
  t.throws(() => verifyPeer(leaf(rootA).der, [], [rootA.cert], TD, NOW + 2 * HOUR), { code: 'AMBIT_ERR_CERT_INVALID', message: /not valid now/ });
  t.throws(() => verifyPeer(Buffer.from('not a certificate'), [], [rootA.cert], TD, NOW), { code: 'AMBIT_ERR_CERT_INVALID', message: /cannot be parsed/ });
});

t.test('spiffeIdOfCertificate', async (t) => {
  t.equal(spiffeIdOfCertificate(leaf(rootA).cert).kind, 'workload');
  const node = spiffeIdOfCertificate(leaf(rootA, { uris: [`spiffe://${TD}/ambit/node/n1`] }).cert);
  t.equal(node.kind, 'node');
  t.equal(node.name, 'n1');
  t.throws(() => spiffeIdOfCertificate(leaf(rootA, { uris: [] }).cert), { code: 'AMBIT_ERR_CERT_INVALID', message: /0 URI SANs/ });
  t.throws(() => spiffeIdOfCertificate(rootA.cert), { code: 'AMBIT_ERR_CERT_INVALID' }, 'no SAN at all');
  const bad = leaf(rootA, { uris: ['https://example.com/x'] });
  t.throws(() => spiffeIdOfCertificate(bad.cert), { code: 'AMBIT_ERR_CERT_INVALID', message: /not a valid SPIFFE ID/, cause: { code: 'AMBIT_ERR_SPIFFE_INVALID' } });
  const upper = leaf(rootA, { uris: ['spiffe://Cluster.Local/ns/a/sa/b'] });
  t.throws(() => spiffeIdOfCertificate(upper.cert), { code: 'AMBIT_ERR_CERT_INVALID' });
});

t.test('parseCertificates and certificateFingerprint', async (t) => {
  const pem = `${rootA.cert.toString()}${rootB.cert.toString()}`;
  const certs = parseCertificates(pem);
  t.same(certs.map(fp), [fp(rootA.cert), fp(rootB.cert)]);
  t.same(parseCertificates(''), []);
  const f = certificateFingerprint(rootA.cert);
  t.match(f, /^[0-9a-f]{64}$/);
  t.equal(f, createHash('sha256').update(rootA.der).digest('hex'));
  t.equal(f, rootA.cert.fingerprint256.replace(/:/g, '').toLowerCase());
});
