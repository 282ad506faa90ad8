// Wall time of the programs as a user runs them: `node <entry>` (what the
// VM install's wrappers exec: controller/cli/ambitctl.mjs for ambitctl,
// the daemons' main.ts), one process per run, stdout to a pipe that is
// read to the end. A real ambit-controller (SQLite, loopback) answers
// `ambitctl status` and `ambitctl workload list`.
//
// Each command runs once on an empty compile cache (ambitctl keeps Node's
// compile cache in the user's cache directory: the first run of a release
// pays for type stripping and compiling, later ones read it back), then
// --runs times; the median and p90 of those are the figures, with PASS/FAIL
// against the targets. Informational: the exit status is 0 whatever the
// numbers (1 only when a command fails).
//
// Run: node bench/cli.ts [--runs N] [--quick]
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { AGENT_MAIN, CONTROLLER_MAIN, ROOT, startController } from '../test/e2e/harness.ts';

/** ambitctl's entry as systemd/install.sh's wrapper runs it. */
const AMBITCTL = join(ROOT, 'controller/cli/ambitctl.mjs');

const HOST = '127.0.128.10';
const GNU_TIME = existsSync('/usr/bin/time') ? '/usr/bin/time' : undefined;
const { values: args } = parseArgs({ options: { runs: { type: 'string' }, quick: { type: 'boolean' }, help: { type: 'boolean' } } });
if (args.help) {
  process.stdout.write('Usage: node bench/cli.ts [--runs N (default 30)] [--quick (3 runs)]\n');
  process.exit(0);
}
const runs = args.quick ? 3 : Number(args.runs ?? 30);

interface Case {
  readonly name: string;
  readonly argv: readonly string[];
  readonly targetMs?: number;
}

function percentile(sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))]!;
}

/**
 * One run's wall time and CPU time (user + system, from GNU time when
 * installed: what a busy machine changes least) in ms; throws when the
 * command fails.
 */
function timeOnce(argv: readonly string[], env: NodeJS.ProcessEnv): { wall: number; cpu: number } {
  const start = process.hrtime.bigint();
  const [file, args] = GNU_TIME ? [GNU_TIME, ['-f', 'cpu %U %S', process.execPath, ...argv]] : [process.execPath, argv];
  const r = spawnSync(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8', timeout: 30_000 });
  const wall = Number(process.hrtime.bigint() - start) / 1e6;
  if (r.status !== 0) throw new Error(`${argv.join(' ')} exited ${r.status}: ${r.stderr.slice(-500)}`);
  const m = /^cpu ([\d.]+) ([\d.]+)$/m.exec(r.stderr);
  return { wall, cpu: m ? (Number(m[1]) + Number(m[2])) * 1000 : Number.NaN };
}

const dir = mkdtempSync(join(tmpdir(), 'ambit-bench-cli-'));
const ctl = await startController(join(dir, 'controller'), [], HOST);
let failed = false;
try {
  const conn = ['--controller', ctl.address, '--credentials', ctl.credentials];
  const cases: Case[] = [
    { name: 'ambitctl --help', argv: [AMBITCTL, '--help'], targetMs: 150 },
    { name: 'ambitctl status', argv: [AMBITCTL, ...conn, 'status'], targetMs: 300 },
    { name: 'ambitctl workload list', argv: [AMBITCTL, ...conn, 'workload', 'list'] },
    { name: 'ambit-controller --help', argv: [CONTROLLER_MAIN, '--help'] },
    { name: 'ambit-agent --help', argv: [AGENT_MAIN, '--help'] },
  ];
  // A cache of the bench's own, so the first run is a first run.
  const env = { ...process.env, XDG_CACHE_HOME: join(dir, 'cache'), NODE_NO_WARNINGS: '1' };
  process.stdout.write(`node ${process.version}, ${runs} runs each after one on an empty compile cache; load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}\n\n`);
  const ms = (v: number): string => `${Number.isNaN(v) ? '-' : v.toFixed(0)} ms`.padStart(9);
  process.stdout.write(`${'command'.padEnd(26)}${'first'.padStart(9)}${'median'.padStart(9)}${'p90'.padStart(9)}${'cpu p50'.padStart(9)}  target (wall median)\n`);
  const row = (name: string, first: number | undefined, runsOf: readonly { wall: number; cpu: number }[], verdict: string): void => {
    const wall = runsOf.map((r) => r.wall).sort((a, b) => a - b);
    const cpu = runsOf.map((r) => r.cpu).sort((a, b) => a - b);
    process.stdout.write(`${name.padEnd(26)}${first === undefined ? ''.padStart(9) : ms(first)}${ms(percentile(wall, 50))}${ms(percentile(wall, 90))}${ms(percentile(cpu, 50))}  ${verdict}\n`);
  };
  for (const c of cases) {
    const first = timeOnce(c.argv, env).wall;
    const times: { wall: number; cpu: number }[] = [];
    for (let i = 0; i < runs; i++) times.push(timeOnce(c.argv, env));
    const median = percentile(times.map((r) => r.wall).sort((a, b) => a - b), 50);
    row(c.name, first, times, c.targetMs === undefined ? '-' : `median <= ${c.targetMs} ms: ${median <= c.targetMs ? 'PASS' : 'FAIL'}`);
  }
  const floor: { wall: number; cpu: number }[] = [];
  for (let i = 0; i < runs; i++) floor.push(timeOnce(['-e', '0'], env));
  row('(node -e 0: the floor)', undefined, floor, '');
} catch (err) {
  failed = true;
  process.stdout.write(`ERROR: ${(err as Error).message}\n`);
} finally {
  await ctl.proc.stop();
  rmSync(dir, { recursive: true, force: true });
}
process.exitCode = failed ? 1 : 0;
