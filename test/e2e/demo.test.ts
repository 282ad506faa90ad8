/**
 * `npm start` (scripts/demo.ts), run as a newcomer runs it: the real demo
 * process with its real controller and agents on 127.0.10.x (reserved for
 * the demo; other tests use 127.0.1.x–127.0.9.x), in a temporary data dir.
 * First run: exits 0 after a summary showing the issued identities, a
 * refused request, both web instances answering, and the canary of
 * examples/canary.yaml: its measured split, then a retry hiding a failing
 * instance. Second run on the same
 * dir: reuses the node credentials, keeps running until SIGINT, then stops
 * cleanly. After each run no process of it remains and its ports are free.
 */
import t from 'tap';
import type { Test } from 'tap';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from './harness.ts';

const DEMO = join(ROOT, 'scripts/demo.ts');
const dir = mkdtempSync(join(tmpdir(), 'ambit-e2e-demo-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const CLIENT_ID = 'spiffe://cluster.local/ns/demo/sa/client';
const WEB_ID = 'spiffe://cluster.local/ns/demo/sa/web';
const INTRUDER_ID = 'spiffe://cluster.local/ns/demo/sa/intruder';
/** Every address:port the demo listens on. */
const ENDPOINTS: readonly [string, number][] = [
  ['127.0.10.1', 15012], ['127.0.10.1', 15014], ['127.0.10.1', 15015],
  ...['127.0.10.2', '127.0.10.3'].flatMap((h) => [15008, 15020, 15021, 15000, 15080].map((p): [string, number] => [h, p])),
  ['127.0.10.2', 18080], ['127.0.10.2', 18081], ['127.0.10.13', 8080], ['127.0.10.14', 8080],
  ['127.0.10.16', 8080], ['127.0.10.17', 8080], ['127.0.10.18', 8080],
];

interface DemoRun {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  /** Every process seen below the demo while it ran (controller, agents, ambitctl). */
  readonly descendants: ReadonlySet<number>;
  readonly ms: number;
}

function childrenOf(pid: number): number[] {
  try {
    return execFileSync('ps', ['-o', 'pid=', '--ppid', String(pid)], { encoding: 'utf8' }).split('\n').map((s) => Number(s.trim())).filter((n) => n > 0);
  } catch {
    return []; // ps exits 1 when there is none
  }
}

/** Runs the demo; with `interruptWith`, sends that signal once the summary says the mesh keeps running. */
function killQuietly(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

function runDemo(env: Record<string, string>, interruptWith?: NodeJS.Signals, timeoutMs = 90_000): Promise<DemoRun> {
  const started = performance.now();
  const child = spawn(process.execPath, [DEMO], { cwd: ROOT, env: { ...process.env, AMBIT_DEMO_DIR: dir, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  const descendants = new Set<number>();
  const poll = setInterval(() => {
    for (const c of childrenOf(child.pid!)) {
      descendants.add(c);
      for (const g of childrenOf(c)) descendants.add(g);
    }
  }, 150);
  let interrupted = false;
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    stdout += d;
    if (interruptWith && !interrupted && stdout.includes('Press Ctrl-C to stop it.')) {
      interrupted = true;
      // Let the poller see the running processes once more before they go.
      setTimeout(() => child.kill(interruptWith), 300);
    }
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  // Too slow: SIGTERM lets the demo stop its children; SIGKILL (and its children) only if that hangs too.
  const killer = setTimeout(() => {
    stderr += `\n[test] no exit within ${timeoutMs} ms: SIGTERM\n`;
    child.kill('SIGTERM');
    setTimeout(() => {
      child.kill('SIGKILL');
      for (const p of descendants) killQuietly(p);
    }, 15_000).unref();
  }, timeoutMs);
  return new Promise((resolve) => {
    child.on('close', (code, signal) => {
      clearInterval(poll);
      clearTimeout(killer);
      resolve({ code, signal, stdout, stderr, descendants, ms: performance.now() - started });
    });
  });
}

function canBind(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s: Server = createServer();
    s.once('error', () => resolve(false));
    s.listen({ host, port, exclusive: true }, () => s.close(() => resolve(true)));
  });
}

/** Nothing of a demo run is left: no process with the data dir on its command line, none of its children alive, every port bindable. */
async function assertNothingLeft(t: Test, run: DemoRun): Promise<void> {
  t.ok(run.descendants.size >= 3, `the demo ran child processes (${[...run.descendants].join(', ')})`);
  const table = execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' });
  const left = table.split('\n').filter((l) => l.includes(dir));
  t.same(left, [], 'no process of the demo is left (ps shows none with its data dir)');
  const alive = table.split('\n').map((l) => Number(l.trim().split(/\s+/)[0])).filter((p) => run.descendants.has(p));
  t.same(alive, [], 'none of the processes it started is alive');
  const busy: string[] = [];
  for (const [h, p] of ENDPOINTS) if (!(await canBind(h, p))) busy.push(`${h}:${p}`);
  t.same(busy, [], 'every demo port is free again (e.g. 127.0.10.2:15008)');
}

function transcript(run: DemoRun): string {
  return `exit ${run.code ?? run.signal}\n--- stdout\n${run.stdout}\n--- stderr\n${run.stderr}`;
}

t.before(async () => {
  const busy: string[] = [];
  for (const [h, p] of ENDPOINTS) if (!(await canBind(h, p))) busy.push(`${h}:${p}`);
  if (busy.length > 0) throw new Error(`the demo's ports are in use (${busy.join(', ')}): is \`npm start\` running? Stop it (Ctrl-C) before running this test.`);
});

t.test('first run: a working mesh, summarised, then a clean exit', async (t) => {
  const run = await runDemo({ AMBIT_DEMO_EXIT_AFTER_SUMMARY: '1' });
  t.equal(run.code, 0, 'exit status 0');
  if (run.code !== 0) t.comment(transcript(run));
  const out = run.stdout;
  t.match(out, /\[1\/11\] checking/, 'numbered progress steps');
  t.notOk(out.includes('\r'), 'no carriage-return animation when stdout is not a terminal');
  t.match(out, /\[2\/11\] starting the controller on 127\.0\.10\.1:15012 … ready \(\d+ ms\)/, 'each step reports its outcome and time');
  t.match(out, /joined with a single-use token from `ambitctl node token create --node node-a`/, 'node-a joined with a token');
  t.match(out, /joined with a single-use token from `ambitctl node token create --node node-b`/, 'node-b joined with a token');

  t.ok(out.includes(CLIENT_ID), 'the summary names the client identity');
  t.ok(out.includes(WEB_ID), 'the summary names the web identity');
  t.match(out, new RegExp(`${CLIENT_ID.replace(/[./]/g, '\\$&')} → ${WEB_ID.replace(/[./]/g, '\\$&')}\\s+\\[mutual_tls`), 'an access-log record of a request across the mesh, with both identities');
  t.match(out, /\(destination agent\)\s+spiffe:\/\/cluster\.local\/ns\/demo\/sa\/client → /, 'as the destination agent saw it');

  t.match(out, /→ HTTP 403 \(DENY\) "RBAC: access denied: .*denied: no_allow_match/, 'the intruder was refused: its agent answered 403 once the destination agent denied the tunnel');
  t.match(out, new RegExp(`\\(destination agent\\)\\s+${INTRUDER_ID.replace(/[./]/g, '\\$&')} → .*response_flags DENY, error "denied: no_allow_match"`), 'the destination agent logged the DENY and why');

  t.match(out, /client → GET http:\/\/web\.demo\/admin\/config via the upstream listener/, 'the client asked for a path a DENY names');
  t.match(out, /→ HTTP 403 "RBAC: access denied by policy demo\/web-deny-admin"/, 'and was denied 403 by method and path, the policy named');

  const counts = Object.fromEntries([...out.matchAll(/^\s+(web(?:-2)?)\s+on node-[ab]\s+\S+\s+(\d+) answered/gm)].map((m) => [m[1], Number(m[2])]));
  t.ok(counts.web! > 0 && counts['web-2']! > 0, `both web instances answered (${JSON.stringify(counts)})`);
  t.equal(counts.web! + counts['web-2']!, 20, 'every request was answered');

  t.match(out, /Per-request balancing: 12 requests on ONE keep-alive connection \(client port \d+\)/, 'one connection\'s requests, balanced per request');
  const perRequest = Object.fromEntries([...out.matchAll(/^\s+(web(?:-2)?)\s+on node-[ab]\s+(\d+) of that connection's requests/gm)].map((m) => [m[1], Number(m[2])]));
  t.ok(perRequest.web! > 0 && perRequest['web-2']! > 0, `both instances answered requests of the one connection (${JSON.stringify(perRequest)})`);
  t.equal(perRequest.web! + perRequest['web-2']!, 12, 'every request on the connection was answered');

  t.match(out, /ambitctl apply -f examples\/canary\.yaml … applied \(\d+ ms\)\n(?:\s+.*\n)*?\s+HTTPRoute shop\/web-canary created/, 'the canary\'s route was applied from examples/canary.yaml');
  const split = /split over 200 requests: web-v1 (\d+) \([\d.]+ %\), web-v2 (\d+) \([\d.]+ %\) \(the route's weights: web-v1 90, web-v2 10\)\n/.exec(out);
  t.ok(split, 'the measured split is printed');
  const [v1, v2] = [Number(split?.[1]), Number(split?.[2])];
  t.equal(v1 + v2, 200, 'every canary request was answered');
  t.ok(v2 >= 4 && v2 <= 40, `web-v2 got ${v2} of 200 (the route's 10 %, loosely: 200 requests)`);
  t.match(out, /web-v1-b now answers 503 to every 3rd request it gets: 100 more requests, 100 of 100 answered 200 to the client/, 'the retry hid the failing instance from the client');
  const retried = /web-v1-b answered 503 (\d+) times; node-a retried them \(retry codes \[503\], attempts 3\): ambit_http_retries_total \+(\d+)/.exec(out);
  t.ok(retried && Number(retried[1]) > 0, `the failing instance did fail requests (${retried?.[1]})`);
  t.ok(retried && Number(retried[2]) >= Number(retried[1]), `and the retry counter shows them retried (${retried?.[2]})`);
  t.match(out, /http:\/\/127\.0\.10\.2:15020\/metrics/, 'metrics URL');
  t.match(out, /http:\/\/127\.0\.10\.2:15000\/config_dump/, 'admin URL');
  t.match(out, /export AMBIT_CONTROLLER=127\.0\.10\.1:15012 AMBIT_CREDENTIALS=\S+\/controller\/admin/, 'how to point ambitctl at the demo');
  t.match(out, /ambitctl status/, 'commands to explore');
  t.match(out, /Web console: https:\/\/127\.0\.10\.1:15015\//, 'the console\'s address');
  t.match(out, /controller\/cli\/ambitctl\.mjs --controller 127\.0\.10\.1:15012 --credentials \S+ console$/m, 'and how to log in (ambitctl console)');
  t.match(out, /Stopped: no demo process or listener is left/, 'it says it stopped cleanly');
  const log = readFileSync(join(dir, 'logs', 'node-b.log'), 'utf8');
  t.ok(log.includes('"msg":"connection"'), 'agent logs are kept in <dir>/logs/');
  await assertNothingLeft(t, run);
});

t.test('second run: reuses the data dir, runs until SIGINT, then stops cleanly', async (t) => {
  const run = await runDemo({}, 'SIGINT');
  t.equal(run.code, 0, 'exit status 0 after SIGINT');
  if (run.code !== 0) t.comment(transcript(run));
  const out = run.stdout;
  t.match(out, /reused the CA/, 'controller state reused');
  t.match(out, /\[\d\/11\] starting agent node-a .*\n.*reused the saved node credentials/, 'node-a reused its saved node credentials');
  t.match(out, /\[\d\/11\] starting agent node-b .*\n.*reused the saved node credentials/, 'node-b reused its saved node credentials');
  t.notMatch(out, /joined with a single-use token/, 'no join token was needed');
  t.match(out, /ambitctl apply -f examples\/demo\.yaml … unchanged/, 'the example resources were already there');
  t.match(out, /Stopping the demo mesh \(SIGINT received\)/, 'the signal started the shutdown');
  t.match(out, /agent node-a stopped \(code 0/, 'agents stopped gracefully');
  t.match(out, /controller stopped \(code 0/, 'controller stopped gracefully');
  t.comment(`second run took ${Math.round(run.ms)} ms`);
  await assertNothingLeft(t, run);
});

t.test('a port in use: says which and by whom, starts nothing, exits 1', async (t) => {
  const holder = createServer();
  await new Promise<void>((r) => holder.listen(15021, '127.0.10.3', r));
  t.teardown(() => holder.close());
  const run = await runDemo({ AMBIT_DEMO_EXIT_AFTER_SUMMARY: '1' });
  t.equal(run.code, 1, 'exit status 1');
  t.match(run.stderr, new RegExp(`127\\.0\\.10\\.3:15021 \\(node-b ready\\) is in use by pid ${process.pid}:`), 'names the port and the process holding it');
  t.notMatch(run.stdout, /\[2\/11\]/, 'started nothing');
  t.equal(run.descendants.size, 0, 'no child process was spawned');
});
