// Benchmark of the controller CA: CSR signings per second on one core
// (target >= 2,000/s). Each iteration does what CreateCertificate does per
// request once the caller is authorized: parseCsr (DER parse + signature
// verification) and ca.signCsr (build, sign and encode a 24 h X.509-SVID).
// For scale it also measures, in the same process: the floor cost of one
// ECDSA P-256 signature (the baseline), native RSA-2048 signing, and
// node-forge's pure-JS certificate signing (RSA-2048: forge has no ECDSA),
// which is why certificates are signed with node:crypto.
//
// Run: npm run bench:ca   (or: node bench/ca.ts [iterations])
// Exits 0 whatever the result; the PASS/FAIL line is informational.
import { generateKeyPairSync, sign, X509Certificate, type KeyObject } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import forge from 'node-forge';
import { CertificateAuthority } from '../controller/ca/authority.ts';
import { optimizeHeapForSize } from '../controller/v8-heap.ts';
import { workloadId, type SpiffeId } from '../shared/spiffe-id.ts';
import { createCsr, parseCsr } from '../shared/x509.ts';

// V8 as the controller runs it.
optimizeHeapForSize();

const TARGET_PER_SECOND = 2_000;
const DISTINCT_CSRS = 200;
const DEFAULT_ITERATIONS = 20_000;
const WARMUP_ITERATIONS = 1_000;
/** Hard stop for very slow machines: the loop ends after this long even if iterations remain. */
const TIME_BUDGET_MS = 60_000;
const CERT_TTL_MS = 24 * 60 * 60 * 1000;
const FORGE_ITERATIONS = 30;

interface Stats {
  readonly n: number;
  readonly totalMs: number;
  readonly perSecond: number;
  readonly meanUs: number;
  readonly p50Us: number;
  readonly p99Us: number;
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

/** Runs `fn(i)` `warmup` times untimed, then up to `n` times timed one by one. */
function measure(n: number, warmup: number, fn: (i: number) => void): Stats {
  for (let i = 0; i < warmup; i++) fn(i);
  const samples = new Float64Array(n);
  let done = 0;
  const start = performance.now();
  const deadline = start + TIME_BUDGET_MS;
  while (done < n) {
    const t0 = performance.now();
    fn(done);
    const t1 = performance.now();
    samples[done++] = t1 - t0;
    if (t1 > deadline) break;
  }
  const totalMs = performance.now() - start;
  const s = samples.subarray(0, done).sort();
  let sum = 0;
  for (const v of s) sum += v;
  return {
    n: done,
    totalMs,
    perSecond: (done / totalMs) * 1000,
    meanUs: (sum / done) * 1000,
    p50Us: percentile(s, 50) * 1000,
    p99Us: percentile(s, 99) * 1000,
  };
}

const fmt = (v: number, digits = 0): string => v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });

function line(label: string, s: Stats, baseline?: Stats): string {
  const ratio = baseline ? `  ${(s.perSecond / baseline.perSecond).toPrecision(3)}x baseline` : '';
  return `${label.padEnd(38)} ${fmt(s.perSecond).padStart(9)}/s  mean ${fmt(s.meanUs, 1).padStart(8)} µs  p50 ${fmt(s.p50Us, 1).padStart(8)} µs  p99 ${fmt(s.p99Us, 1).padStart(8)} µs  (n=${s.n})${ratio}`;
}

function forgeCertificateSigner(): (i: number) => void {
  // Keys come from node:crypto: forge's own RSA key generation takes seconds in pure JS and is not what is measured.
  const pem = (k: KeyObject): string => k.export({ type: 'pkcs1', format: 'pem' }).toString();
  const ca = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const leaf = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const caKey = forge.pki.privateKeyFromPem(pem(ca.privateKey));
  const leafPublic = forge.pki.publicKeyFromPem(pem(leaf.publicKey));
  const issuer = [{ name: 'organizationName', value: 'ambit' }, { name: 'commonName', value: 'bench root' }];
  return (i) => {
    const cert = forge.pki.createCertificate();
    cert.publicKey = leafPublic;
    cert.serialNumber = (0x1000 + i).toString(16);
    cert.validity.notBefore = new Date(Date.now() - 300_000);
    cert.validity.notAfter = new Date(Date.now() + CERT_TTL_MS);
    cert.setSubject([]);
    cert.setIssuer(issuer);
    cert.setExtensions([
      { name: 'basicConstraints', cA: false, critical: true },
      { name: 'keyUsage', digitalSignature: true, critical: true },
      { name: 'extKeyUsage', serverAuth: true, clientAuth: true },
      { name: 'subjectAltName', critical: true, altNames: [{ type: 6, value: `spiffe://cluster.local/ns/bench/sa/sa-${i}` }] },
    ]);
    cert.sign(caKey, forge.md.sha256.create());
    forge.pki.certificateToPem(cert);
  };
}

function main(): void {
  const arg = process.argv[2];
  const iterations = arg !== undefined && /^\d+$/.test(arg) && Number(arg) > 0 ? Number(arg) : DEFAULT_ITERATIONS;
  const cpu = cpus()[0]?.model.trim() ?? 'unknown CPU';
  console.log('Ambit controller CA benchmark');
  console.log(`node ${process.version} on ${cpu}; ${availableParallelism()} CPUs available`);
  console.log('one core: the process is single-threaded (synchronous node:crypto on the main thread; no workers, no thread pool)');
  console.log();

  const dir = mkdtempSync(join(tmpdir(), 'ambit-bench-ca-'));
  try {
    const ca = CertificateAuthority.open({ dir, trustDomain: 'cluster.local', now: Date.now });

    const setupStart = performance.now();
    const requests: { csrPem: string; identity: SpiffeId }[] = [];
    for (let i = 0; i < DISTINCT_CSRS; i++) {
      const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const identity = workloadId('cluster.local', `ns-${i % 10}`, `sa-${i}`);
      requests.push({ csrPem: createCsr(privateKey, publicKey, identity.uri), identity });
    }
    console.log(`setup: CA in ${dir}, ${DISTINCT_CSRS} distinct ECDSA P-256 workload CSRs in ${fmt(performance.now() - setupStart)} ms`);

    // Sanity: what is measured really produces a certificate for the asked identity, issued by the CA.
    const probe = requests[0]!;
    const issued = ca.signCsr(parseCsr(probe.csrPem), probe.identity, CERT_TTL_MS);
    const cert = new X509Certificate(issued.certPem);
    const root = ca.bundle()[0];
    if (!cert.subjectAltName?.includes(probe.identity.uri) || !root || !cert.verify(root.publicKey)) {
      throw new Error('sanity check failed: the CA did not issue a verifiable certificate for the requested identity');
    }

    const req = (i: number): { csrPem: string; identity: SpiffeId } => requests[i % DISTINCT_CSRS]!;
    const signing = measure(iterations, WARMUP_ITERATIONS, (i) => {
      const r = req(i);
      ca.signCsr(parseCsr(r.csrPem), r.identity, CERT_TTL_MS);
    });

    // Breakdown of the two halves, fewer iterations.
    const parsed = requests.map((r) => parseCsr(r.csrPem));
    const parseOnly = measure(Math.min(iterations, 5_000), 500, (i) => void parseCsr(req(i).csrPem));
    const signOnly = measure(Math.min(iterations, 5_000), 500, (i) => void ca.signCsr(parsed[i % DISTINCT_CSRS]!, req(i).identity, CERT_TTL_MS));

    const ecKey = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    const payload = Buffer.alloc(300, 0xa5);
    const baseline = measure(iterations, WARMUP_ITERATIONS, () => void sign('sha256', payload, ecKey));

    const rsaKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
    const rsaNative = measure(500, 50, () => void sign('sha256', payload, rsaKey));

    const forgeSign = forgeCertificateSigner();
    const forgeStats = measure(FORGE_ITERATIONS, 3, forgeSign);

    console.log();
    console.log(line('baseline: crypto.sign ECDSA P-256', baseline));
    console.log(line('CA: parseCsr + signCsr (24 h cert)', signing, baseline));
    console.log(line('  of which parseCsr (parse + verify)', parseOnly, baseline));
    console.log(line('  of which signCsr (issue + sign)', signOnly, baseline));
    console.log(line('crypto.sign RSA-2048 (native)', rsaNative, baseline));
    console.log(line('node-forge RSA-2048 cert sign (pure JS)', forgeStats, baseline));
    console.log();
    console.log(`CSR signings per second: ${fmt(signing.perSecond)} (${fmt(signing.n)} signings in ${fmt(signing.totalMs)} ms)`);
    console.log(`native CA signing is ${fmt(signing.perSecond / forgeStats.perSecond, 0)}x the node-forge RSA certificate rate`);
    if (signing.n < iterations) console.log(`note: stopped after ${fmt(TIME_BUDGET_MS / 1000)} s with ${fmt(signing.n)} of ${fmt(iterations)} iterations`);
    console.log(`target >= ${fmt(TARGET_PER_SECOND)}/s: ${signing.perSecond >= TARGET_PER_SECOND ? 'PASS' : 'FAIL'}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main();
