/**
 * Smoke test of bench/dataplane.ts: its --quick mode sets up every path it
 * can (the controller and two agents with their data planes; the peers
 * installed here), pushes each load through each path and prints the report.
 * Nothing here checks a figure — timing depends on the machine, and a bench
 * is not a timed assertion. It fails when the bench cannot set a path up,
 * loses a connection, reports an error, or leaves an entry point without
 * its verdicts.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const BENCH = join(ROOT, 'bench/dataplane.ts');
const PEERS = ['stunnel', 'nginx', 'haproxy'];

function runBench(args: readonly string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    // --from-source: the test must not write dist/ in the tree it tests.
    const child = spawn(process.execPath, [BENCH, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], timeout: 240_000 });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-8000)));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

t.test('bench/dataplane.ts --quick measures every Ambit entry point against the peers', async (t) => {
  const r = await runBench(['--quick', '--from-source']);
  t.equal(r.code, 0, `the bench exits 0 (stderr tail: ${r.stderr.slice(-2000)})`);
  const lines = r.stdout.split('\n');
  const header = lines.find((l) => l.startsWith('metric')) ?? '';
  const columns = header.split(/\s+/).slice(1);
  const root = process.getuid?.() === 0;
  const entries = root ? ['tunnel', 'socks5', 'capture'] : ['tunnel', 'socks5'];
  for (const p of ['direct', ...entries]) t.ok(columns.includes(p), `the report has a ${p} column`);
  if (!root) t.match(r.stdout, /skipped capture: needs root/, 'capture is reported as skipped without root');

  const failures = lines.find((l) => l.startsWith('new conn failures')) ?? '';
  t.match(failures, /^new conn failures \(all runs\)(\s+0)+\s*$/, 'no path lost a connection');
  t.notMatch(r.stdout, /ERROR/, 'no path reported an error');
  // Every measured path has a value in the throughput row ('-' means it produced none).
  const tp1 = (lines.find((l) => l.startsWith('throughput, 1 conn')) ?? '').split(/\s{2,}/).slice(1).filter((c) => /\d|-/.test(c));
  t.notOk(tp1.includes('-'), `every path has a throughput figure: ${tp1.join(' ')}`);

  const peers = columns.filter((c) => PEERS.includes(c));
  if (peers.length === 0) t.match(r.stdout, /no peer measured/, 'without a peer the targets say so');
  else {
    for (const e of entries) {
      const at = lines.indexOf(` ${e}:`);
      t.ok(at > 0, `the targets have a section for ${e}`);
      const verdicts = lines.slice(at + 1, at + 7).filter((l) => /x {2}(PASS|FAIL)$/.test(l));
      t.equal(verdicts.length, 6, `${e} has a verdict for each of the six targets`);
    }
  }
  for (const node of ['node-a', 'node-b']) {
    t.match(r.stdout, new RegExp(`\\n  ${node} +idle [\\d.]+ MiB (PASS|FAIL), after [\\d.]+ MiB (PASS|FAIL)`), `${node}'s agent + data plane RSS is reported with its verdicts`);
  }
});
