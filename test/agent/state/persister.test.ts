// The agent's data-directory writer under a failing disk: injected file
// operations that fail like a full disk (ENOSPC), a broken one (EIO) and a
// read-only remount (EROFS), then heal.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { Persister, type PersistFs } from '../../../agent/state/persister.ts';
import { CertManager } from '../../../agent/identity/cert-manager.ts';
import { createLogger } from '../../../shared/logger.ts';
import { writeFileAtomic } from '../../../shared/files.ts';
import { CertificateAuthority } from '../../../controller/ca/authority.ts';
import { type Issuer } from '../../../agent/identity/cert-manager.ts';
import { workloadId } from '../../../shared/spiffe-id.ts';
import { createCsr, parseCsr } from '../../../shared/x509.ts';

function errno(code: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: simulated`), { code });
}

/** A map-backed filesystem whose writes fail with `failing` while it is set. */
function flakyFs(): { fs: PersistFs; files: Map<string, string>; failing: { code: string | undefined }; calls: () => number } {
  const files = new Map<string, string>();
  const failing: { code: string | undefined } = { code: undefined };
  let calls = 0;
  return {
    files, failing, calls: () => calls,
    fs: {
      write: (p, d) => {
        calls++;
        if (failing.code) throw errno(failing.code);
        files.set(p, d);
      },
      remove: (p) => {
        calls++;
        if (failing.code) throw errno(failing.code);
        files.delete(p);
      },
    },
  };
}

function capture(): { logger: ReturnType<typeof createLogger>; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const logger = createLogger({ name: 'test', level: 'info', destination: { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) } });
  return { logger, lines };
}

const waitFor = async (pred: () => boolean, what: string): Promise<void> => {
  const deadline = Date.now() + 5_000;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
};

for (const code of ['ENOSPC', 'EIO', 'EROFS']) {
  t.test(`${code}: the write does not throw, is reported with path and errno, retried with backoff, and recovers with the latest content`, async (t) => {
    const f = flakyFs();
    const { logger, lines } = capture();
    const failures: [string, string][] = [];
    const health: boolean[] = [];
    const p = new Persister({ dataDir: '/data', logger, fs: f.fs, backoff: { initialMs: 20, maxMs: 40, minMs: 10 }, onFailure: (path, c) => failures.push([path, c]), onHealth: (h) => health.push(h) });
    t.teardown(() => p.close());
    f.failing.code = code;
    let content = 'rev 1';
    t.equal(p.write('/data/state.json', () => content), false, 'the write failed (and did not throw)');
    t.equal(p.healthy, false);
    t.same(p.failures().map((x) => [x.path, x.code]), [['state.json', code]], 'failures name the path (relative) and errno');
    t.match(p.summary(), `state.json: ${code}`);
    t.match(lines.find((l) => l.msg === 'cannot write to the data directory; serving from memory and retrying'), { level: 'error', path: '/data/state.json', errno: code }, 'an error line with the path and errno');
    t.same(health, [false], 'turned unhealthy once');
    // Retries happen on their own (backoff), still failing.
    await waitFor(() => failures.length >= 3, 'two retries');
    t.ok(p.failures()[0]!.attempts >= 3, 'attempts counted');
    content = 'rev 2';
    f.failing.code = undefined;
    await waitFor(() => p.healthy, 'recovery');
    t.equal(f.files.get('/data/state.json'), 'rev 2', 'the retry wrote the latest content, not the one that failed');
    t.same(health, [false, true], 'healthy again, said once');
    t.ok(lines.some((l) => l.msg === 'persistence recovered: every pending write landed'), 'recovery logged');
    const settled = f.calls();
    await new Promise((r) => setTimeout(r, 100));
    t.equal(f.calls(), settled, 'no retries once everything landed');
  });
}

t.test('a newer successful write of a failing path clears it; removals are retried too', async (t) => {
  const f = flakyFs();
  const { logger } = capture();
  const p = new Persister({ dataDir: '/data', logger, fs: f.fs, backoff: { initialMs: 10_000, maxMs: 10_000 } });
  t.teardown(() => p.close());
  f.failing.code = 'ENOSPC';
  p.write('/data/a', 'x');
  p.remove('/data/b');
  t.same(p.failures().map((x) => x.path), ['a', 'b']);
  f.failing.code = undefined;
  t.equal(p.write('/data/a', 'y'), true);
  t.same(p.failures().map((x) => x.path), ['b'], 'a landed; b still pending');
  f.files.set('/data/b', 'old');
  p.flush();
  t.equal(p.healthy, true);
  t.notOk(f.files.has('/data/b'), 'the pending removal happened');
});

t.test('CertManager through a failing Persister: an issued certificate is served from memory while its file cannot be written', async (t) => {
  const root = t.testdir();
  const ca = CertificateAuthority.open({ dir: path.join(root, 'ca'), trustDomain: 'cluster.local', now: Date.now });
  const f = flakyFs();
  const { logger } = capture();
  const p = new Persister({ dataDir: root, logger, fs: f.fs, backoff: { initialMs: 10_000, maxMs: 10_000 } });
  t.teardown(() => p.close());
  const id = workloadId('cluster.local', 'shop', 'web');
  const issuer: Issuer = async (identity, keys) => ({ certChainPem: ca.signCsr(parseCsr(createCsr(keys.privateKey, keys.publicKey, identity.uri)), identity, 3_600_000).chainPem });
  const certs = new CertManager({ dir: path.join(root, 'certs'), logger, issuer: () => issuer, write: (fp, d) => void p.write(fp, d), remove: (fp) => void p.remove(fp) });
  t.teardown(() => certs.close());
  f.failing.code = 'ENOSPC';
  await certs.want([id]);
  t.ok(certs.get(id.uri), 'the issued certificate is held and served');
  t.equal(certs.status()[0]!.lastError, '', 'and the issuance is not counted as failed (no re-issue loop)');
  t.equal(p.healthy, false, 'its file is pending');
  f.failing.code = undefined;
  p.flush();
  t.equal(p.healthy, true);
  t.equal(f.files.size, 1, 'written once the disk allows');
  t.match([...f.files.values()][0], id.uri);
});

t.test('writeFileAtomic leaves no temp file behind when the write fails', async (t) => {
  const dir = t.testdir();
  // A directory at the target path makes the rename fail after the data was
  // written (the e2e test fills a real tmpfs for ENOSPC).
  fs.mkdirSync(path.join(dir, 'target'));
  t.throws(() => writeFileAtomic(path.join(dir, 'target'), 'data'), { code: 'EISDIR' });
  t.same(fs.readdirSync(dir), ['target'], 'the temp file was removed');
});
