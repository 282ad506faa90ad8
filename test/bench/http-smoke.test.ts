/**
 * Smoke test of bench/http.ts: --quick sets up every path it can (the
 * controller and two agents, the HTTP peers installed here), sends the load
 * through each and prints the report. No figure is checked — timing depends
 * on the machine; it fails when a path cannot be set up, a request fails, or
 * the report lacks a column or a target line.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

t.test('bench/http.ts --quick measures direct, ambit and the peers, without errors', async (t) => {
  const r = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    // Block 127.0.123.0/24, hosts above 100 (test/e2e/prometheus.test.ts uses the low ones).
    const child = spawn(process.execPath, [join(ROOT, 'bench/http.ts'), '--quick', '--net', '127.0.123', '--host-offset', '100'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-8000)));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
  t.equal(r.code, 0, `the bench exits 0 (stderr tail: ${r.stderr.slice(-2000)})`);
  const lines = r.stdout.split('\n');
  const columns = (lines.find((l) => l.startsWith('metric')) ?? '').split(/\s+/).slice(1);
  for (const c of ['direct', 'ambit']) t.ok(columns.includes(c), `a ${c} column`);
  for (const peer of ['nginx', 'haproxy']) t.ok(columns.includes(peer) || r.stdout.includes(`skipped ${peer}`), `${peer} measured or said to be skipped`);
  t.match(lines.find((l) => l.startsWith('errors')) ?? '', /^errors(\s+0)+\s*$/, 'no request failed on any path');
  t.match(lines.find((l) => l.startsWith('requests/s at saturation')) ?? '', /^requests\/s at saturation(\s+\d+)+\s*$/, 'every path has a requests/s figure');
  t.match(r.stdout, /target both agents ≤ 0\.12 vCPU per 1,000 req\/s: \d+\.\d+ {2}(PASS|FAIL)/, 'the CPU target is judged');
  t.match(r.stdout, /target added p99 at 1000 req\/s ≤ 1 ms: /, 'the latency target is reported');
  t.notMatch(r.stdout + r.stderr, /ERROR/, 'no error reported');
});
