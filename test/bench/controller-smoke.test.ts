/**
 * Smoke test of bench/controller.ts (on SQLite and on a real etcd) and
 * bench/cli.ts in their --quick modes: each sets up what it measures (a
 * controller, a loaded mesh, simulated agents with node certificates joined
 * as agents join) and prints every
 * figure with its verdict. No figure is checked — timing depends on the
 * machine, and a bench is not a timed assertion. It fails when a bench cannot
 * run, reports an error, or leaves a target without its verdict.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

function runBench(script: string, args: readonly string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(ROOT, script), ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], timeout: 150_000 });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-8000)));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

t.test('bench/controller.ts --quick loads a mesh, watches it with simulated agents and gives every verdict', async (t) => {
  const r = await runBench('bench/controller.ts', ['--quick']);
  t.equal(r.code, 0, `the bench exits 0 (stdout tail: ${r.stdout.slice(-1500)} stderr tail: ${r.stderr.slice(-1500)})`);
  t.notMatch(r.stdout, /ERROR/, 'no error');
  t.match(r.stdout, /applied +2200 resources in [\d.]+ s/, 'every resource applied');
  for (const figure of [/apply rate +\d+ resources\/s +target >= 5000: (PASS|FAIL)/, /controller RSS after the load +[\d.]+ MiB +target <= 300: (PASS|FAIL)/,
    /controller peak RSS \(VmHWM\) +[\d.]+ MiB +target <= 300: (PASS|FAIL)/, /node certificates .* 50 in [\d.]+ s/,
    /first state, all agents +[\d.]+ s .*resources held each 2200/, /p50 \d+ ms, p99 \d+ ms, max \d+ ms +target p99 <= 1000 ms: (PASS|FAIL)/]) {
    t.match(r.stdout, figure, `reports ${figure.source}`);
  }
});

t.test('bench/controller.ts --quick --store etcd --replicas 3 runs the same against a real etcd, then kills a replica under its agents', async (t) => {
  const r = await runBench('bench/controller.ts', ['--quick', '--store', 'etcd', '--replicas', '3', '--agents', '12']);
  t.equal(r.code, 0, `the bench exits 0 (stdout tail: ${r.stdout.slice(-1500)} stderr tail: ${r.stderr.slice(-1500)})`);
  t.notMatch(r.stdout, /ERROR/, 'no error');
  t.match(r.stdout, /load \(etcd store, 1 member\)/);
  t.match(r.stdout, /apply rate +\d+ resources\/s +target >= 5000: (PASS|FAIL)/);
  t.match(r.stdout, /p50 \d+ ms, p99 \d+ ms, max \d+ ms +target p99 <= 1000 ms: (PASS|FAIL)/);
  const spread = /agents on each replica .*? (\d+), (\d+), (\d+)$/m.exec(r.stdout);
  t.ok(spread, 'reports how many agents landed on each replica');
  t.equal(spread!.slice(1).reduce((n, x) => n + Number(x), 0), 12, 'every agent is on one replica');
  const killed = /replica [12] killed \(SIGKILL\) with (\d+) agents on it/.exec(r.stdout);
  t.ok(killed && Number(killed[1]) > 0, 'the replica killed had agents on it');
  t.match(r.stdout, new RegExp(`re-watching on another replica: \\d+/${killed![1]}, .* target every one <= 5000 ms: (PASS|FAIL)`));
  t.match(r.stdout, /the change, seen by \d+\/12 agents .* target none missing: (PASS|FAIL)/);
  t.match(r.stdout, /breakdown: the agents' backoff before reconnecting p50 \d+ ms, max \d+ ms; the replicas answered \d+ WatchStarts after p50 \d+ ms/);
  t.match(r.stdout, /CPU over those [\d.]+ s: simulated agents \(this process\) [\d.]+ s, replica 0 [\d.]+ s, replica [12] [\d.]+ s, etcd [\d.]+ s/);
});

t.test('bench/cli.ts --quick times each program and gives the targets their verdicts', async (t) => {
  const r = await runBench('bench/cli.ts', ['--quick']);
  t.equal(r.code, 0, `the bench exits 0 (stdout tail: ${r.stdout.slice(-1500)} stderr tail: ${r.stderr.slice(-1500)})`);
  t.notMatch(r.stdout, /ERROR/);
  t.match(r.stdout, /ambitctl --help +\d+ ms +\d+ ms +\d+ ms +(\d+|-) ms +median <= 150 ms: (PASS|FAIL)/);
  t.match(r.stdout, /ambitctl status +\d+ ms +\d+ ms +\d+ ms +(\d+|-) ms +median <= 300 ms: (PASS|FAIL)/);
  for (const p of ['ambitctl workload list', 'ambit-controller --help', 'ambit-agent --help']) t.match(r.stdout, new RegExp(`${p} +\\d+ ms`));
});
