import t from 'tap';
import { execFileSync } from 'node:child_process';
import { createPrivateKey, generateKeyPairSync, X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { CertificateAuthority, type CaOptions } from '../../../controller/ca/authority.ts';
import { parseCertificates, verifyChain, verifyPeer } from '../../../shared/tls.ts';
import { nodeId, workloadId, type SpiffeId } from '../../../shared/spiffe-id.ts';
import { createCsr, parseCsr, type ParsedCsr } from '../../../shared/x509.ts';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const TD = 'cluster.local';
const WEB = workloadId(TD, 'default', 'web');
// Whole seconds (certificates carry second precision) and real time, so OpenSSL agrees on validity.
const NOW = Math.floor(Date.now() / 1000) * 1000;

const mode = (p: string): number => fs.statSync(p).mode & 0o777;

function openssl(args: string[], cwd: string): string {
  return execFileSync('openssl', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function csrFor(uri: string): ParsedCsr {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return parseCsr(createCsr(privateKey, publicKey, uri));
}

/** A CSR made by OpenSSL with extra request arguments (e.g. more SANs or extensions). */
function opensslCsr(dir: string, subj: string, ...addext: string[]): ParsedCsr {
  openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', 'csr-key.pem'], dir);
  openssl(['req', '-new', '-key', 'csr-key.pem', '-subj', subj, ...addext.flatMap((e) => ['-addext', e]), '-out', 'req.pem'], dir);
  return parseCsr(fs.readFileSync(path.join(dir, 'req.pem'), 'utf8'));
}

function openCa(dir: string, o: Partial<CaOptions> = {}): CertificateAuthority {
  return CertificateAuthority.open({ dir, trustDomain: TD, now: () => NOW, ...o });
}

/** Writes an issued chain next to a trust file and asks OpenSSL to verify it. */
function opensslVerify(dir: string, trustPem: string, chainPem: string): string {
  const [leafPem, ...rest] = chainPem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----\n/g) ?? [];
  fs.writeFileSync(path.join(dir, 'trust.pem'), trustPem);
  fs.writeFileSync(path.join(dir, 'leaf.pem'), leafPem ?? '');
  fs.writeFileSync(path.join(dir, 'untrusted.pem'), rest.join('') || leafPem || '');
  return openssl(['verify', '-CAfile', 'trust.pem', '-untrusted', 'untrusted.pem', 'leaf.pem'], dir);
}

function sign(ca: CertificateAuthority, id: SpiffeId = WEB, ttl = HOUR): X509Certificate {
  return new X509Certificate(ca.signCsr(csrFor(id.uri), id, ttl).certPem);
}

// ------------------------------------------------------------------ first start and reload

t.test('first start creates a root and private files; reopen loads the same root', async (t) => {
  const dir = path.join(t.testdir(), 'ca');
  const ca = openCa(dir);
  t.equal(mode(dir), 0o700, 'directory 0700');
  for (const f of ['signer-key.pem', 'signer-cert.pem', 'signer-chain.pem', 'bundle.pem']) {
    t.ok(fs.existsSync(path.join(dir, f)), `${f} written`);
    t.equal(mode(path.join(dir, f)), 0o600, `${f} is 0600`);
  }
  t.match(fs.readFileSync(path.join(dir, 'signer-key.pem'), 'utf8'), /-----BEGIN PRIVATE KEY-----/);
  const [root] = ca.bundle();
  t.equal(ca.bundle().length, 1);
  t.ok(root!.ca, 'the root is a CA');
  t.ok(root!.checkIssued(root!) && root!.verify(root!.publicKey), 'self-signed');
  t.equal(fs.readFileSync(path.join(dir, 'bundle.pem'), 'utf8'), ca.bundlePem());
  t.equal(ca.roots().length, 1);
  t.equal(ca.roots()[0]!.active, true);
  t.equal(ca.roots()[0]!.fingerprint, ca.activeRootFingerprint());
  t.equal(ca.activeRootFingerprint(), root!.fingerprint256.replace(/:/g, '').toLowerCase());

  const again = openCa(dir, { now: () => NOW + DAY });
  t.equal(again.activeRootFingerprint(), ca.activeRootFingerprint(), 'same root after reopen');
  t.equal(again.bundlePem(), ca.bundlePem());
  // A leaf from the reopened CA verifies against the first instance's bundle: same key, too.
  const leaf = sign(again);
  t.same(verifyChain(leaf, [], ca.bundle(), NOW + DAY).length, 2);
});

t.test('a directory with broken CA files is AMBIT_ERR_CA_LOAD, never silently replaced', async (t) => {
  const dir = path.join(t.testdir(), 'ca');
  openCa(dir);
  const key = fs.readFileSync(path.join(dir, 'signer-key.pem'), 'utf8');
  fs.writeFileSync(path.join(dir, 'signer-key.pem'), 'garbage');
  t.throws(() => openCa(dir), { code: 'AMBIT_ERR_CA_LOAD' }, 'unparseable key');
  fs.writeFileSync(path.join(dir, 'signer-key.pem'), generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
  t.throws(() => openCa(dir), { code: 'AMBIT_ERR_CA_LOAD', message: /does not match/ }, 'another key');
  fs.writeFileSync(path.join(dir, 'signer-key.pem'), key);
  fs.rmSync(path.join(dir, 'bundle.pem'));
  t.throws(() => openCa(dir), { code: 'AMBIT_ERR_CA_LOAD' }, 'bundle missing');
});

// ------------------------------------------------------------------ signing

t.test('signCsr issues an X.509-SVID for exactly the identity', async (t) => {
  const dir = t.testdir();
  const ca = openCa(path.join(dir, 'ca'));
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const issued = ca.signCsr(parseCsr(createCsr(privateKey, publicKey, WEB.uri)), WEB, 2 * HOUR);
  const leaf = new X509Certificate(issued.certPem);
  t.equal(leaf.subjectAltName, `URI:${WEB.uri}`, 'one URI SAN: the identity');
  t.equal(leaf.ca, false);
  t.ok(leaf.publicKey.equals(publicKey), 'certifies the CSR key');
  t.ok(leaf.checkPrivateKey(privateKey));
  t.equal(issued.chainPem, issued.certPem, 'a root-signed leaf needs no intermediates');
  t.equal(issued.serial, leaf.serialNumber);
  t.equal(issued.notBefore, NOW - 5 * 60_000, 'backdated five minutes for clock skew');
  t.equal(issued.notAfter, NOW + 2 * HOUR, 'TTL honoured');
  t.equal(leaf.validToDate.getTime(), NOW + 2 * HOUR);
  t.equal(leaf.validFromDate.getTime(), NOW - 5 * 60_000);
  t.equal(verifyPeer(leaf.raw, [], ca.bundle(), TD, NOW).uri, WEB.uri);
  t.match(opensslVerify(dir, fs.readFileSync(path.join(dir, 'ca', 'bundle.pem'), 'utf8'), issued.chainPem), /leaf\.pem: OK/);

  const node = sign(ca, nodeId(TD, 'node-1'));
  t.equal(node.subjectAltName, `URI:spiffe://${TD}/ambit/node/node-1`);
});

t.test('the certificate names come from the identity, not from the CSR', async (t) => {
  const dir = t.testdir();
  const ca = openCa(path.join(dir, 'ca'));
  const csr = opensslCsr(dir, '/CN=admin/O=system:masters', `subjectAltName=URI:${WEB.uri}`);
  t.same(csr.subject, ['2.5.4.3=admin', '2.5.4.10=system:masters']);
  const leaf = new X509Certificate(ca.signCsr(csr, WEB, HOUR).certPem);
  t.notOk(leaf.subject, 'the requested subject is not copied');
  t.equal(leaf.subjectAltName, `URI:${WEB.uri}`);
});

t.test('signCsr refuses a CSR asking for anything but the identity', async (t) => {
  const dir = t.testdir();
  const ca = openCa(path.join(dir, 'ca'));
  t.throws(() => ca.signCsr(csrFor(`spiffe://${TD}/ns/default/sa/db`), WEB, HOUR), {
    code: 'AMBIT_ERR_CSR_INVALID', details: { requested: [`spiffe://${TD}/ns/default/sa/db`], identity: WEB.uri },
  }, 'another URI');
  const extraSan = opensslCsr(dir, '/', `subjectAltName=URI:${WEB.uri},DNS:evil.example`);
  t.throws(() => ca.signCsr(extraSan, WEB, HOUR), { code: 'AMBIT_ERR_CSR_INVALID', message: /evil\.example/ }, 'an extra DNS SAN');
  const twoUris = opensslCsr(dir, '/', `subjectAltName=URI:${WEB.uri},URI:spiffe://${TD}/ns/default/sa/db`);
  t.throws(() => ca.signCsr(twoUris, WEB, HOUR), { code: 'AMBIT_ERR_CSR_INVALID' }, 'two URI SANs');
  const noSan = opensslCsr(dir, '/CN=web');
  t.throws(() => ca.signCsr(noSan, WEB, HOUR), { code: 'AMBIT_ERR_CSR_INVALID' }, 'no SAN');
  const caExt = opensslCsr(dir, '/', `subjectAltName=URI:${WEB.uri}`, 'basicConstraints=critical,CA:TRUE');
  t.throws(() => ca.signCsr(caExt, WEB, HOUR), { code: 'AMBIT_ERR_CSR_INVALID', details: { extensions: ['2.5.29.19'] } }, 'CA:TRUE requested');
  const other = workloadId('evil.example', 'default', 'web');
  t.throws(() => ca.signCsr(csrFor(other.uri), other, HOUR), { code: 'AMBIT_ERR_CSR_INVALID', message: /trust domain/ }, 'another trust domain');
});

t.test('a leaf never outlives its signer', async (t) => {
  const ca = openCa(path.join(t.testdir(), 'ca'), { rootTtlMs: 3 * HOUR });
  const rootEnd = Date.parse(ca.bundle()[0]!.validTo);
  t.equal(rootEnd, NOW + 3 * HOUR);
  const issued = ca.signCsr(csrFor(WEB.uri), WEB, DAY);
  t.equal(issued.notAfter, rootEnd, 'capped at the root notAfter');
  t.equal(new X509Certificate(issued.certPem).validToDate.getTime(), rootEnd);
  t.equal(ca.signCsr(csrFor(WEB.uri), WEB, HOUR).notAfter, NOW + HOUR, 'a shorter TTL is kept');
});

t.test('issueLocal makes a key and a certificate with extra SANs', async (t) => {
  const ca = openCa(path.join(t.testdir(), 'ca'));
  const creds = ca.issueLocal(nodeId(TD, 'n1'), HOUR, { dnsNames: ['ctl.example'], ips: ['127.0.0.1', '::1'] });
  const leaf = new X509Certificate(creds.certPem);
  t.ok(leaf.checkPrivateKey(createPrivateKey(creds.keyPem)), 'the key matches the certificate');
  t.ok(leaf.checkHost('ctl.example'));
  t.ok(leaf.checkIP('127.0.0.1'));
  t.ok(leaf.checkIP('::1'));
  t.match(leaf.subjectAltName, /^URI:spiffe:\/\/cluster\.local\/ambit\/node\/n1, /);
});

// ------------------------------------------------------------------ user-supplied CA

/** An OpenSSL-made root (and optionally an intermediate under it) in `dir`. */
function opensslRoot(dir: string): void {
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'root.key', '-out', 'root.pem',
    '-subj', '/O=corp/CN=corp root', '-days', '30', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], dir);
}

function opensslIntermediate(dir: string, skid = 'hash'): void {
  openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'inter.key', '-out', 'inter.csr', '-subj', '/O=corp/CN=corp mesh intermediate'], dir);
  fs.writeFileSync(path.join(dir, 'inter.ext'), [
    'basicConstraints=critical,CA:TRUE,pathlen:0',
    'keyUsage=critical,keyCertSign,cRLSign',
    `subjectKeyIdentifier=${skid}`,
    'authorityKeyIdentifier=keyid',
  ].join('\n'));
  openssl(['x509', '-req', '-in', 'inter.csr', '-CA', 'root.pem', '-CAkey', 'root.key', '-CAcreateserial', '-days', '20', '-extfile', 'inter.ext', '-out', 'inter.pem'], dir);
}

const read = (dir: string, f: string): string => fs.readFileSync(path.join(dir, f), 'utf8');
/** OpenSSL dates the user CAs at the moment they are made, after NOW; a minute later they are valid. */
const LATER = NOW + 60_000;

t.test('user-supplied self-signed root', async (t) => {
  const dir = t.testdir();
  opensslRoot(dir);
  const ca = openCa(path.join(dir, 'ca'), { now: () => LATER, userCa: { certPem: read(dir, 'root.pem'), keyPem: read(dir, 'root.key') } });
  t.equal(ca.bundle().length, 1);
  t.equal(ca.bundle()[0]!.fingerprint256, new X509Certificate(read(dir, 'root.pem')).fingerprint256, 'the bundle is the user root');
  t.notOk(fs.existsSync(path.join(dir, 'ca', 'signer-key.pem')), 'the user key is not copied into the data dir');
  const issued = ca.signCsr(csrFor(WEB.uri), WEB, HOUR);
  t.equal(issued.chainPem, issued.certPem);
  t.match(opensslVerify(dir, read(dir, 'root.pem'), issued.chainPem), /OK/);
  t.throws(() => ca.rotate('prepare'), { code: 'AMBIT_ERR_CA_LOAD', message: /supplied by the operator/ });
});

t.test('user-supplied intermediate with its root', async (t) => {
  const dir = t.testdir();
  opensslRoot(dir);
  opensslIntermediate(dir);
  const ca = openCa(path.join(dir, 'ca'), { now: () => LATER, userCa: { certPem: read(dir, 'inter.pem'), keyPem: read(dir, 'inter.key'), rootsPem: read(dir, 'root.pem') } });
  const root = new X509Certificate(read(dir, 'root.pem'));
  const inter = new X509Certificate(read(dir, 'inter.pem'));
  t.same(ca.bundle().map((c) => c.fingerprint256), [root.fingerprint256], 'agents trust the root only');
  t.equal(ca.activeRootFingerprint(), root.fingerprint256.replace(/:/g, '').toLowerCase(), 'join tokens pin the root');
  const issued = ca.signCsr(csrFor(WEB.uri), WEB, HOUR);
  const chain = parseCertificates(issued.chainPem);
  t.same(chain.map((c) => c.fingerprint256), [new X509Certificate(issued.certPem).fingerprint256, inter.fingerprint256], 'leaf then intermediate, no root');
  fs.writeFileSync(path.join(dir, 'chain.pem'), issued.chainPem);
  fs.writeFileSync(path.join(dir, 'leaf.pem'), issued.certPem);
  t.match(openssl(['verify', '-CAfile', 'root.pem', '-untrusted', 'chain.pem', 'leaf.pem'], dir), /leaf\.pem: OK/);
  t.throws(() => openssl(['verify', '-CAfile', 'root.pem', 'leaf.pem'], dir), 'not without the intermediate');
  t.equal(verifyPeer(chain[0]!.raw, chain.slice(1), ca.bundle(), TD, LATER).uri, WEB.uri);
});

t.test('user-supplied intermediate whose key identifier is not the SHA-1 of its key', async (t) => {
  // RFC 5280 allows any method for subjectKeyIdentifier; a leaf's authorityKeyIdentifier must copy it.
  const dir = t.testdir();
  opensslRoot(dir);
  opensslIntermediate(dir, '0102030405060708');
  const ca = openCa(path.join(dir, 'ca'), { now: () => LATER, userCa: { certPem: read(dir, 'inter.pem'), keyPem: read(dir, 'inter.key'), rootsPem: read(dir, 'root.pem') } });
  const issued = ca.signCsr(csrFor(WEB.uri), WEB, HOUR);
  fs.writeFileSync(path.join(dir, 'chain.pem'), issued.chainPem);
  fs.writeFileSync(path.join(dir, 'leaf.pem'), issued.certPem);
  t.match(openssl(['verify', '-CAfile', 'root.pem', '-untrusted', 'chain.pem', 'leaf.pem'], dir), /leaf\.pem: OK/);
  const chain = parseCertificates(issued.chainPem);
  t.equal(verifyPeer(chain[0]!.raw, chain.slice(1), ca.bundle(), TD, LATER).uri, WEB.uri);
});

t.test('user-supplied intermediate followed by its chain in the cert file', async (t) => {
  const dir = t.testdir();
  opensslRoot(dir);
  opensslIntermediate(dir);
  const ca = openCa(path.join(dir, 'ca'), {
    now: () => LATER,
    userCa: { certPem: read(dir, 'inter.pem') + read(dir, 'root.pem'), keyPem: read(dir, 'inter.key'), rootsPem: read(dir, 'root.pem') },
  });
  const chain = parseCertificates(ca.signCsr(csrFor(WEB.uri), WEB, HOUR).chainPem);
  t.equal(chain.length, 2, 'the root in the cert file is not sent as an intermediate');
});

t.test('bad user-supplied CA material is refused', async (t) => {
  const dir = t.testdir();
  opensslRoot(dir);
  opensslIntermediate(dir);
  const otherKey = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  t.throws(() => openCa(path.join(dir, 'ca'), { userCa: { certPem: read(dir, 'root.pem'), keyPem: otherKey } }), {
    code: 'AMBIT_ERR_CA_LOAD', message: /does not match/,
  }, 'key of another certificate');
  t.throws(() => openCa(path.join(dir, 'ca'), { userCa: { certPem: read(dir, 'root.pem'), keyPem: 'nope' } }), { code: 'AMBIT_ERR_CA_LOAD' }, 'garbage key');
  t.throws(() => openCa(path.join(dir, 'ca'), { userCa: { certPem: 'nope', keyPem: read(dir, 'root.key') } }), { code: 'AMBIT_ERR_CA_LOAD' }, 'no certificate');
  t.throws(() => openCa(path.join(dir, 'ca'), { now: () => LATER, userCa: { certPem: read(dir, 'inter.pem'), keyPem: read(dir, 'inter.key') } }), {
    code: /^AMBIT_ERR_(CA_LOAD|CERT_INVALID)$/,
  }, 'an intermediate without its root');
  t.throws(() => openCa(path.join(dir, 'ca'), { now: () => NOW + 60 * DAY, userCa: { certPem: read(dir, 'root.pem'), keyPem: read(dir, 'root.key') } }), {
    code: /^AMBIT_ERR_(CA_LOAD|CERT_INVALID)$/,
  }, 'an expired CA');
});

// ------------------------------------------------------------------ rotation

t.test('root rotation: prepare, activate, retire', async (t) => {
  const dir = t.testdir();
  const caDir = path.join(dir, 'ca');
  let clock = NOW;
  const ca = openCa(caDir, { now: () => clock });
  const seen: string[] = [];
  ca.onBundleChange((pem) => seen.push(pem));
  const oldRoot = ca.bundle()[0]!;
  const oldFp = ca.activeRootFingerprint();
  const oldLeaf = sign(ca);

  clock = NOW + 1000;
  ca.rotate('prepare');
  t.equal(ca.bundle().length, 2, 'prepare: the bundle holds old and new roots');
  t.equal(ca.bundle()[0]!.fingerprint256, oldRoot.fingerprint256);
  const newRoot = ca.bundle()[1]!;
  t.not(newRoot.fingerprint256, oldRoot.fingerprint256);
  t.not(newRoot.subject, oldRoot.subject, 'roots have distinct names');
  t.equal(seen.length, 1, 'listener told of the new bundle');
  t.equal(parseCertificates(seen[0]!).length, 2);
  t.equal(read(caDir, 'bundle.pem'), ca.bundlePem(), 'bundle persisted');
  t.equal(mode(path.join(caDir, 'next-key.pem')), 0o600);
  t.equal(ca.activeRootFingerprint(), oldFp, 'the old root still signs');
  const prepLeaf = sign(ca);
  t.ok(prepLeaf.checkIssued(oldRoot) && prepLeaf.verify(oldRoot.publicKey));
  t.same(ca.roots().map((r) => r.active), [true, false]);

  ca.rotate('activate');
  t.equal(ca.bundle().length, 2, 'activate: both roots still trusted');
  t.equal(seen.length, 2, 'listener notified on activation');
  t.not(ca.activeRootFingerprint(), oldFp);
  t.same(ca.roots().map((r) => r.active), [false, true]);
  const newLeaf = sign(ca);
  t.ok(newLeaf.checkIssued(newRoot) && newLeaf.verify(newRoot.publicKey), 'the new root signs');
  t.notOk(newLeaf.verify(oldRoot.publicKey));
  t.equal(verifyChain(oldLeaf, [], ca.bundle(), clock).length, 2, 'old leaves still verify');
  t.equal(verifyChain(newLeaf, [], ca.bundle(), clock).length, 2);
  t.match(opensslVerify(dir, read(caDir, 'bundle.pem'), new X509Certificate(newLeaf.raw).toString()), /OK/);
  t.match(opensslVerify(dir, read(caDir, 'bundle.pem'), oldLeaf.toString()), /OK/);

  ca.rotate('retire');
  t.same(ca.bundle().map((c) => c.fingerprint256), [newRoot.fingerprint256], 'retire: only the new root');
  t.equal(seen.length, 3);
  t.equal(parseCertificates(read(caDir, 'bundle.pem')).length, 1);
  t.throws(() => verifyChain(oldLeaf, [], ca.bundle(), clock), { code: 'AMBIT_ERR_CERT_INVALID' }, 'old leaves no longer verify');
  t.equal(verifyChain(newLeaf, [], ca.bundle(), clock).length, 2);
});

t.test('rotation phases out of order are refused and change nothing', async (t) => {
  const caDir = path.join(t.testdir(), 'ca');
  const ca = openCa(caDir);
  const before = ca.bundlePem();
  t.throws(() => ca.rotate('activate'), { code: 'AMBIT_ERR_CA_LOAD', message: /prepare/ }, 'activate before prepare');
  t.throws(() => ca.rotate('retire'), { code: 'AMBIT_ERR_CA_LOAD', message: /nothing to retire/ }, 'retire with nothing to retire');
  t.equal(ca.bundlePem(), before);
  ca.rotate('prepare');
  const prepared = ca.bundlePem();
  t.throws(() => ca.rotate('prepare'), { code: 'AMBIT_ERR_CA_LOAD', message: /already prepared/ }, 'prepare twice');
  t.throws(() => ca.rotate('retire'), { code: 'AMBIT_ERR_CA_LOAD', message: /not active yet/ }, 'retire before activate');
  t.equal(ca.bundlePem(), prepared, 'the refused phases changed nothing');
  ca.rotate('activate');
  t.throws(() => ca.rotate('activate'), { code: 'AMBIT_ERR_CA_LOAD' }, 'activate twice');
  ca.rotate('retire');
  t.throws(() => ca.rotate('retire'), { code: 'AMBIT_ERR_CA_LOAD', message: /nothing to retire/ }, 'retire twice');
});

t.test('rotation state survives a restart', async (t) => {
  const caDir = path.join(t.testdir(), 'ca');
  const first = openCa(caDir);
  const oldFp = first.activeRootFingerprint();
  first.rotate('prepare');

  const afterPrepare = openCa(caDir);
  t.equal(afterPrepare.bundle().length, 2, 'prepared root still published');
  t.equal(afterPrepare.activeRootFingerprint(), oldFp, 'old root still signs');
  t.throws(() => afterPrepare.rotate('prepare'), { code: 'AMBIT_ERR_CA_LOAD' }, 'still prepared');
  afterPrepare.rotate('activate');
  const newFp = afterPrepare.activeRootFingerprint();
  t.not(newFp, oldFp);

  const afterActivate = openCa(caDir);
  t.equal(afterActivate.activeRootFingerprint(), newFp, 'the new root signs after restart');
  t.equal(afterActivate.bundle().length, 2);
  const leaf = sign(afterActivate);
  t.ok(leaf.checkIssued(afterActivate.bundle()[1]!));
  afterActivate.rotate('retire');

  const afterRetire = openCa(caDir);
  t.equal(afterRetire.bundle().length, 1);
  t.equal(afterRetire.activeRootFingerprint(), newFp);
  for (const f of fs.readdirSync(caDir)) t.equal(mode(path.join(caDir, f)), 0o600, `${f} is 0600`);
});

t.test('onBundleChange returns an unsubscribe function', async (t) => {
  const ca = openCa(path.join(t.testdir(), 'ca'));
  let calls = 0;
  const off = ca.onBundleChange(() => calls++);
  ca.rotate('prepare');
  off();
  ca.rotate('activate');
  t.equal(calls, 1);
});
