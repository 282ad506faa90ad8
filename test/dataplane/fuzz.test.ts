import t from 'tap';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/*
 * The bounded fuzz run of ambit-dataplane's parsers (dataplane/fuzz, docs/reliability.md
 * "Fuzzing"): each cargo-fuzz target runs for a few seconds from its seed
 * inputs, and a crash (a panic, a sanitizer report, a hang past libFuzzer's
 * -timeout) fails the test, naming the input libFuzzer saved in
 * dataplane/fuzz/artifacts/<target>/ (reproduce: cargo fuzz run <target> <file>). The long run is
 * the same command with a longer -max_total_time.
 */

const FUZZ = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'dataplane', 'fuzz');
const TARGETS = ['socks5', 'control_decode', 'hbone_head'];
/** Seconds per target: three targets stay within a minute on a 2-core machine. */
const SECONDS = 15;

// rustup's cargo may be missing from a non-login shell's PATH (as in dataplane/build.sh).
const cargoBin = join(process.env.CARGO_HOME ?? join(process.env.HOME ?? '', '.cargo'), 'bin');
const env = {
  ...process.env,
  PATH: `${process.env.PATH ?? ''}:${cargoBin}`,
  // The stable toolchain that builds the data plane, allowed the sanitizer
  // flags (-Zsanitizer) cargo-fuzz passes: no nightly toolchain needed.
  RUSTC_BOOTSTRAP: '1',
};

interface Ran { code: number; stdout: string; stderr: string }
const run = (args: string[], timeoutMs: number): Promise<Ran> =>
  new Promise((resolve) => {
    execFile('cargo', args, { cwd: FUZZ, env, timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : 1;
      resolve({ code, stdout, stderr });
    });
  });

// Building the instrumented targets takes minutes on a cold cache.
t.setTimeout(900_000);

t.test('cargo-fuzz is installed (dataplane/fuzz/install-cargo-fuzz.sh)', async (t) => {
  const r = await run(['fuzz', '--version'], 30_000);
  t.equal(r.code, 0, 'cargo fuzz --version (to install: bash dataplane/fuzz/install-cargo-fuzz.sh)', { stderr: r.stderr.trim() });
});

t.test('the fuzz targets build', async (t) => {
  // Not -O: debug assertions and overflow checks stay on, so an overflow is a crash.
  const r = await run(['fuzz', 'build'], 840_000);
  t.equal(r.code, 0, 'cargo fuzz build', { stderr: r.stderr.split('\n').slice(-30).join('\n') });
});

for (const target of TARGETS) {
  t.test(`${target}: ${SECONDS} s of fuzzing finds no crash`, async (t) => {
    const corpus = mkdtempSync(join(tmpdir(), `ambit-fuzz-${target}-`));
    t.teardown(() => rmSync(corpus, { recursive: true, force: true }));
    const seeds = join(FUZZ, 'seeds', target);
    // Where cargo-fuzz keeps a crash's input (dataplane/fuzz/artifacts, ignored by git): kept after the test.
    const artifacts = join(FUZZ, 'artifacts', target);
    mkdirSync(artifacts, { recursive: true });
    const before = new Set(readdirSync(artifacts));
    const args = ['fuzz', 'run', target, corpus, ...(existsSync(seeds) ? [seeds] : []), '--',
      `-max_total_time=${SECONDS}`, '-timeout=10', '-rss_limit_mb=2048'];
    const r = await run(args, (SECONDS + 60) * 1000);
    const found = readdirSync(artifacts).filter((f) => !before.has(f)).map((f) => join(artifacts, f));
    const done = /Done (\d+) runs in/.exec(r.stderr);
    // libFuzzer's report of a crash, without its stack traces: the panic (and
    // its message, the next line) or sanitizer error, and the input saved.
    const lines = r.stderr.split('\n');
    const report = lines.filter((l, i) => /panicked at|ERROR: |SUMMARY: |Test unit written|^Base64: /.test(l) || /panicked at/.test(lines[i - 1] ?? '')).join('\n');
    t.equal(r.code, 0, 'libFuzzer ended without a crash', { report });
    t.same(found, [], 'no crash input saved (reproduce one: cd dataplane/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>)');
    t.ok(done !== null && Number(done[1]) > 1000, `it ran (${done?.[1] ?? 0} inputs)`);
    t.comment(`${target}: ${done?.[1] ?? 0} inputs in ${SECONDS} s`);
  });
}
