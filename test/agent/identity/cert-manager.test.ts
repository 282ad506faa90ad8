import t from 'tap';
import type { Test } from 'tap';
import { createPrivateKey, createPublicKey, X509Certificate, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { CertificateAuthority } from '../../../controller/ca/authority.ts';
import { CertManager, chainsTo, type Issuer } from '../../../agent/identity/cert-manager.ts';
import { createLogger } from '../../../shared/logger.ts';
import { workloadId, type SpiffeId } from '../../../shared/spiffe-id.ts';
import { certificateUris, createCsr, parseCsr } from '../../../shared/x509.ts';

const TD = 'cluster.local';
const WEB = workloadId(TD, 'shop', 'web');
const API = workloadId(TD, 'shop', 'api');
const silent = createLogger({ name: 'test', level: 'silent' });
const mode = (p: string): number => fs.statSync(p).mode & 0o777;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitFor(what: string, cond: () => boolean, timeoutMs = 3000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

interface Call {
  readonly identity: SpiffeId;
  readonly publicKey: KeyObject;
  readonly at: number;
}

/**
 * An issuer backed by a real CA: a CSR made with the manager's key, parsed and
 * signed exactly as the controller does. `fail` makes calls reject (or, with
 * 'sync', throw before returning a promise, as the agent's issuer does when it
 * has no controller client yet).
 */
function realIssuer(ca: CertificateAuthority, o: { ttlMs: number; fail?: false | 'async' | 'sync'; gate?: Promise<void> }) {
  const calls: Call[] = [];
  const issuer: Issuer = (identity, keys) => {
    calls.push({ identity, publicKey: keys.publicKey, at: Date.now() });
    if (o.fail === 'sync') throw new Error('no controller client yet');
    return (async () => {
      if (o.gate) await o.gate;
      if (o.fail === 'async') throw new Error('controller unavailable');
      const csr = parseCsr(createCsr(keys.privateKey, keys.publicKey, identity.uri));
      return { certChainPem: ca.signCsr(csr, identity, o.ttlMs).chainPem };
    })();
  };
  return { calls, issuer };
}

function setup(t: Test) {
  const root = t.testdir();
  const ca = CertificateAuthority.open({ dir: path.join(root, 'ca'), trustDomain: TD, now: Date.now });
  const certDir = path.join(root, 'certs');
  return { ca, certDir };
}

function manager(t: Test, o: ConstructorParameters<typeof CertManager>[0]): CertManager {
  const m = new CertManager(o);
  t.teardown(() => m.close());
  return m;
}

const spki = (k: KeyObject): string => k.export({ type: 'spki', format: 'der' }).toString('hex');

t.test('want() issues every identity with a key made here; files are private and reload', async (t) => {
  const { ca, certDir } = setup(t);
  const { calls, issuer } = realIssuer(ca, { ttlMs: 3_600_000 });
  const m = manager(t, { dir: certDir, issuer: () => issuer, logger: silent });
  const changed: string[] = [];
  m.onChange((id) => changed.push(id.uri));

  await m.want([WEB, API]);
  t.equal(calls.length, 2, 'one request per identity');
  t.same(calls.map((c) => c.identity.uri).sort(), [API.uri, WEB.uri].sort());
  t.same(changed.sort(), [API.uri, WEB.uri].sort(), 'onChange fires for each issued identity');

  for (const id of [WEB, API]) {
    const e = m.get(id.uri);
    if (!e) throw new Error(`no entry for ${id.uri}`);
    const leaf = new X509Certificate(e.chainPem);
    t.same(certificateUris(leaf), [id.uri], 'the certificate names the identity');
    const call = calls.find((c) => c.identity.uri === id.uri)!;
    t.equal(spki(leaf.publicKey), spki(call.publicKey), 'the certificate certifies the public key the issuer was given');
    t.ok(leaf.checkPrivateKey(createPrivateKey(e.keyPem)), 'the entry key is the private half of the certificate key');
    t.equal(spki(createPublicKey(createPrivateKey(e.keyPem))), spki(call.publicKey), 'the private key was generated here, for this request');
    t.equal(e.notAfter, Date.parse(leaf.validTo));
    t.equal(e.notBefore, Date.parse(leaf.validFrom));
  }
  t.not(m.get(WEB.uri)!.keyPem, m.get(API.uri)!.keyPem, 'each identity has its own key');
  t.equal(m.earliestExpiry(), Math.min(m.get(WEB.uri)!.notAfter, m.get(API.uri)!.notAfter));

  t.equal(mode(certDir), 0o700, 'certificate directory is 0700');
  const files = fs.readdirSync(certDir).filter((f) => f.endsWith('.json'));
  t.equal(files.length, 2, 'one file per identity');
  for (const f of files) t.equal(mode(path.join(certDir, f)), 0o600, `${f} is 0600`);

  // A restarted agent: the new manager serves from disk without asking the CA.
  const again = manager(t, { dir: certDir, issuer: () => issuer, logger: silent });
  t.equal(again.load(), 2, 'both certificates reloaded');
  for (const id of [WEB, API]) {
    t.equal(again.get(id.uri)?.chainPem, m.get(id.uri)!.chainPem);
    t.equal(again.get(id.uri)?.keyPem, m.get(id.uri)!.keyPem);
  }
  await again.want([WEB, API]);
  t.equal(calls.length, 2, 'valid reloaded certificates are not requested again');
});

t.test('expired and unreadable cached certificates are not loaded', async (t) => {
  const { ca, certDir } = setup(t);
  const { issuer } = realIssuer(ca, { ttlMs: 60_000 });
  const m = manager(t, { dir: certDir, issuer: () => issuer, logger: silent });
  await m.want([WEB]);
  const notAfter = m.get(WEB.uri)!.notAfter;
  fs.writeFileSync(path.join(certDir, 'garbage.json'), '{not json', { mode: 0o600 });

  const lines: string[] = [];
  const logger = createLogger({ name: 'test', level: 'warn', destination: { write: (s: string) => void lines.push(s) } });
  const live = manager(t, { dir: certDir, issuer: () => issuer, logger, now: () => notAfter - 1 });
  t.equal(live.load(), 1, 'a still-valid certificate loads (and the garbage file is skipped)');
  t.ok(lines.some((l) => l.includes('garbage.json') && l.includes('unreadable')), 'the unreadable file is logged');

  const late = manager(t, { dir: certDir, issuer: () => issuer, logger: silent, now: () => notAfter });
  t.equal(late.load(), 0, 'a certificate at or past notAfter is not loaded');
  t.equal(late.get(WEB.uri), undefined);
  t.same(late.entries(), []);
  t.equal(late.earliestExpiry(), 0, 'earliestExpiry is 0 when nothing is held');
});

t.test('renews at half-life ± jitter (40 %–60 % of the lifetime)', async (t) => {
  const { ca, certDir } = setup(t);
  // Three managers in parallel: jitter at its low end, its high end, and Math.random.
  const cases = [
    { name: 'random 0 → 40 %', random: () => 0, lo: 0.39, hi: 0.41 },
    { name: 'random 1 → 60 %', random: () => 1, lo: 0.59, hi: 0.61 },
    { name: 'Math.random → 40–60 %', random: undefined, lo: 0.39, hi: 0.61 },
  ];
  const runs = cases.map(async (c, i) => {
    const { calls, issuer } = realIssuer(ca, { ttlMs: 3000 });
    const m = manager(t, { dir: path.join(certDir, String(i)), issuer: () => issuer, logger: silent, ...(c.random ? { random: c.random } : {}) });
    let issuedAt = 0;
    m.onChange(() => {
      if (issuedAt === 0) issuedAt = Date.now();
    });
    await m.want([WEB]);
    const first = m.get(WEB.uri)!;
    // When the renewal is due, as scheduled (and shown on /certs): the timer's own lateness under load is not the manager's choice.
    const renewsAt = m.status().find((s) => s.identity === WEB.uri)!.renewsAt;
    const fraction = (renewsAt - issuedAt) / (first.notAfter - issuedAt);
    await waitFor('the renewal request', () => calls.length >= 2, 10_000);
    const early = renewsAt - calls[1]!.at;
    await waitFor('the renewed certificate', () => m.get(WEB.uri)?.keyPem !== first.keyPem, 10_000);
    return { c, fraction, early, first, renewed: m.get(WEB.uri)! };
  });
  for (const { c, fraction, early, first, renewed } of await Promise.all(runs)) {
    t.ok(fraction >= c.lo && fraction <= c.hi, `${c.name}: renewal due at ${(fraction * 100).toFixed(1)} % of the lifetime`);
    t.ok(early <= 5, `${c.name}: not requested before it was due (${early.toFixed(0)} ms early)`);
    t.ok(renewed.notAfter >= first.notAfter, `${c.name}: the renewed certificate lives at least as long`);
    t.not(renewed.keyPem, first.keyPem, `${c.name}: renewal makes a new key`);
  }
});

t.test('a short TTL from a CA that backdates notBefore does not renew in a loop', async (t) => {
  // The CA backdates notBefore by minutes for clock skew; the controller allows
  // a 1 minute TTL. Half of (TTL + backdate) after notBefore is already past.
  const { ca, certDir } = setup(t);
  const { calls, issuer } = realIssuer(ca, { ttlMs: 60_000 });
  const m = manager(t, { dir: certDir, issuer: () => issuer, logger: silent });
  await m.want([WEB]);
  const e = m.get(WEB.uri)!;
  t.ok(Date.now() - e.notBefore > 60_000, 'precondition: notBefore is backdated by more than the TTL');
  await sleep(300);
  t.equal(calls.length, 1, 'one request, not a renewal storm');
});

t.test('on failure it retries with growing backoff and keeps the old certificate until it expires', async (t) => {
  const { ca, certDir } = setup(t);
  const o: { ttlMs: number; fail: false | 'async' } = { ttlMs: 60_000, fail: false };
  const { calls, issuer } = realIssuer(ca, o);
  let skew = 0;
  // random 0.1: backoff delays 145, 245, 445 ms (minimum 50 + 10 % of 1 s, 2 s, 4 s); renewal at 42 %.
  const m = manager(t, { dir: certDir, issuer: () => issuer, logger: silent, random: () => 0.1, now: () => Date.now() + skew });
  await m.want([WEB]);
  const old = m.get(WEB.uri)!;

  o.fail = 'async';
  await m.renewNow(WEB);
  t.equal(m.get(WEB.uri), old, 'the old certificate is still served after a failed renewal');
  t.match(m.status().find((s) => s.identity === WEB.uri)?.lastError, /controller unavailable/, 'status shows the error');

  await waitFor('three retries', () => calls.length >= 5, 3000);
  const at = calls.slice(1).map((c) => c.at);
  const gaps = at.slice(1).map((x, i) => x - at[i]!);
  // Timers never fire early (give or take the clock's millisecond); late is possible on a busy host.
  t.ok(gaps[0]! >= 135 && gaps[0]! < 1000, `first retry after ~145 ms (${gaps[0]} ms)`);
  t.ok(gaps[1]! >= 235, `the second wait is longer: ~245 ms (${gaps[1]} ms)`);
  t.ok(gaps[2]! >= 435, `the third wait is longer still: ~445 ms (${gaps[2]} ms)`);
  t.equal(m.get(WEB.uri), old, 'still the old certificate while retrying');
  t.equal(m.earliestExpiry(), old.notAfter);

  skew = old.notAfter - Date.now();
  t.equal(m.get(WEB.uri), undefined, 'once expired, the old certificate is no longer served');
});

t.test('a first request that fails resolves want() and keeps retrying in the background', async (t) => {
  const { ca, certDir } = setup(t);
  for (const fail of ['async', 'sync'] as const) {
    const o: { ttlMs: number; fail: false | 'async' | 'sync' } = { ttlMs: 60_000, fail };
    const { calls, issuer } = realIssuer(ca, o);
    const m = manager(t, { dir: path.join(certDir, fail), issuer: () => issuer, logger: silent, random: () => 0 });
    const changed: string[] = [];
    m.onChange((id) => changed.push(id.uri));
    await m.want([WEB]);
    t.equal(m.get(WEB.uri), undefined, `${fail}: no certificate yet`);
    await waitFor(`${fail}: a retry`, () => calls.length >= 2, 1000);
    o.fail = false;
    await waitFor(`${fail}: a certificate after the issuer recovers`, () => m.get(WEB.uri) !== undefined, 1500);
    t.same(changed, [WEB.uri], `${fail}: onChange fires once it is issued`);
  }
});

t.test('retryFailed() retries failed identities at once instead of waiting out the backoff', async (t) => {
  const { ca, certDir } = setup(t);
  const o: { ttlMs: number; fail: false | 'async' } = { ttlMs: 60_000, fail: 'async' };
  const { calls, issuer } = realIssuer(ca, o);
  // random 0.99: the first backoff is ~990 ms.
  const m = manager(t, { dir: certDir, issuer: () => issuer, logger: silent, random: () => 0.99 });
  await m.want([WEB, API]);
  t.equal(m.get(WEB.uri), undefined, 'no certificate while the issuer fails');
  o.fail = false;
  const before = calls.length;
  m.retryFailed();
  await waitFor('certificates right after retryFailed()', () => m.get(WEB.uri) !== undefined && m.get(API.uri) !== undefined, 300);
  t.equal(calls.length - before, 2, 'one request per failed identity');
  m.retryFailed();
  await sleep(20);
  t.equal(calls.length - before, 2, 'identities holding a fresh certificate are not renewed again');
});

t.test('dropping an identity from want() forgets it and deletes its file', async (t) => {
  const { ca, certDir } = setup(t);
  const { issuer } = realIssuer(ca, { ttlMs: 3_600_000 });
  const m = manager(t, { dir: certDir, issuer: () => issuer, logger: silent });
  await m.want([WEB, API]);
  t.equal(fs.readdirSync(certDir).length, 2);
  await m.want([WEB]);
  t.equal(m.get(API.uri), undefined, 'dropped identity is gone');
  t.ok(m.get(WEB.uri), 'the kept identity stays');
  const left = fs.readdirSync(certDir);
  t.equal(left.length, 1, 'its file is deleted');
  t.equal((JSON.parse(fs.readFileSync(path.join(certDir, left[0]!), 'utf8')) as { uri: string }).uri, WEB.uri);
  t.same(m.status().map((s) => s.identity), [WEB.uri]);

  const fresh = manager(t, { dir: certDir, issuer: () => issuer, logger: silent });
  t.equal(fresh.load(), 1, 'a restarted agent does not resurrect it');
  t.equal(fresh.get(API.uri), undefined);
});

t.test('an identity dropped while its request is in flight is not brought back', async (t) => {
  const { ca, certDir } = setup(t);
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const { calls, issuer } = realIssuer(ca, { ttlMs: 3_600_000, gate });
  const m = manager(t, { dir: certDir, issuer: () => issuer, logger: silent, random: () => 0 });
  const first = m.want([API]);
  await waitFor('the request', () => calls.length === 1);
  await m.want([]);
  release();
  await first;
  await sleep(100);
  t.equal(m.get(API.uri), undefined, 'not served');
  t.same(fs.readdirSync(certDir), [], 'no file written');
  t.same(m.status(), [], 'not tracked');
  t.equal(calls.length, 1, 'not renewed later');
});

t.test('renewWhere(): certificates of a root that no longer signs are renewed within the spread, not at half-life', async (t) => {
  const { ca, certDir } = setup(t);
  const { calls, issuer } = realIssuer(ca, { ttlMs: 3_600_000 });
  const m = manager(t, { dir: certDir, issuer: () => issuer, logger: silent });
  await m.want([WEB, API]);
  const oldRoot = new X509Certificate(ca.activeRootPem());
  t.ok([WEB, API].every((id) => chainsTo(m.get(id.uri)!.chainPem, oldRoot)), 'both chain to the first root');

  ca.rotate('prepare');
  ca.rotate('activate');
  const newRoot = new X509Certificate(ca.activeRootPem());
  t.not(newRoot.fingerprint256, oldRoot.fingerprint256);
  const stale = (e: { chainPem: string }): boolean => !chainsTo(e.chainPem, newRoot);
  const started = Date.now();
  t.equal(m.renewWhere(stale, 300), 2, 'both are due');
  t.equal(m.renewWhere(stale, 60_000), 2, 'asking again does not postpone them (a renewal due sooner is kept)');
  await waitFor('both renewed', () => calls.length === 4, 3000);
  t.ok(Date.now() - started < 1500, `renewed within the 300 ms spread (${Date.now() - started} ms), an hour before half-life`);
  t.ok([WEB, API].every((id) => chainsTo(m.get(id.uri)!.chainPem, newRoot)), 'both now chain to the new root');
  t.equal(m.renewWhere(stale, 300), 0, 'nothing left to renew');
  await sleep(400);
  t.equal(calls.length, 4, 'and nothing renews again');
});

t.test('chainsTo() follows the last certificate of a chain to a root', async (t) => {
  const { ca, certDir } = setup(t);
  const { issuer } = realIssuer(ca, { ttlMs: 60_000 });
  const m = manager(t, { dir: certDir, issuer: () => issuer, logger: silent });
  await m.want([WEB]);
  const root = new X509Certificate(ca.activeRootPem());
  const other = CertificateAuthority.open({ dir: path.join(t.testdir(), 'other'), trustDomain: TD, now: Date.now });
  t.ok(chainsTo(m.get(WEB.uri)!.chainPem, root));
  t.notOk(chainsTo(m.get(WEB.uri)!.chainPem, new X509Certificate(other.activeRootPem())), 'another CA with the same names does not match');
  t.ok(chainsTo(ca.activeRootPem(), root), 'the root itself');
  t.notOk(chainsTo('', root), 'an empty chain');
});
