/**
 * The test harness's set-up guarantees (real processes on 127.0.15.50–52): a
 * set-up that fails partway stops what it had started, so a failed test
 * cannot leave a controller or an agent running into the next one.
 */
import t, { type Test } from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { ambitctl, Proc, setUp, startAgentPair, startController } from './harness.ts';

const alive = (pid: number | undefined): boolean => {
  if (pid === undefined) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

t.test('setUp stops what started, in reverse order, when a later step fails; nothing when it succeeds', async (t) => {
  const stopped: string[] = [];
  await t.rejects(
    setUp(async (started) => {
      started(() => void stopped.push('first'));
      started(async () => {
        await new Promise((r) => setTimeout(r, 10));
        stopped.push('second');
      });
      started(() => {
        stopped.push('third');
        throw new Error('a stop that fails does not stop the others');
      });
      throw new Error('step 4 failed');
    }),
    { message: 'step 4 failed' },
    'the set-up error goes on',
  );
  t.same(stopped, ['third', 'second', 'first']);
  const ok: string[] = [];
  t.equal(await setUp(async (started) => {
    started(() => void ok.push('stopped'));
    return 42;
  }), 42);
  t.same(ok, [], 'a set-up that succeeds keeps everything running');
});

t.test('a process that never logs its start-up line is stopped, not left running', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ambit-harness-'));
  const file = join(dir, 'silent.mjs');
  writeFileSync(file, 'setInterval(() => undefined, 1000);\n');
  const p = new Proc(file, []);
  await t.rejects(p.startedWhen((l) => l.msg === 'never', 500), /timed out waiting for a log line/);
  t.notOk(alive(p.child.pid), 'the silent process is gone');
});

t.test('startAgentPair: when one agent fails to start, the other is stopped', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'ambit-harness-pair-'));
  const ctl = await startController(join(root, 'ctl'), [], '127.0.15.50');
  t.teardown(() => ctl.proc.stop());
  const token = (await ambitctl(ctl, ['node', 'token', 'create', '--node', 'node-a'])).stdout.trim();
  let registered = 0;
  let err: unknown;
  try {
    await setUp(async (started) => startAgentPair((stop) => {
      registered++;
      started(stop);
    }, [
      { node: 'node-a', address: '127.0.15.51', controller: ctl.address, dataDir: join(root, 'a'), join: token },
      // Refused at once: the agent exits with a usage error.
      { node: 'node-b', address: '127.0.15.52', controller: ctl.address, dataDir: join(root, 'b'), extra: ['--no-such-flag'] },
    ]));
  } catch (e) {
    err = e;
  }
  t.match(String(err), /process exited .*no-such-flag/s, 'the set-up fails with node-b\'s error');
  t.equal(registered, 1, 'node-a started (and only node-a was registered to be stopped)');
  // The agent that did start is not handed back on failure: look for it among the processes.
  const ps = execFileSync('ps', ['-eo', 'pid,args'], { encoding: 'utf8' });
  const running = ps.split('\n').filter((l) => l.includes('agent/main.ts') && l.includes('127.0.15.51'));
  t.same(running, [], 'the agent that did start was stopped');
});

/**
 * Runs a file that starts a child through the harness, prints its pid once
 * it runs, then ends the way `ending` says, without teardowns or stop();
 * resolves with whether that child outlived the file.
 */
async function childOutlives(t: Test, ending: string): Promise<{ pid: number; outlived: boolean }> {
  const dir = mkdtempSync(join(tmpdir(), 'ambit-harness-exit-'));
  writeFileSync(join(dir, 'sleeper.mjs'), 'setInterval(() => {}, 1000);\n');
  writeFileSync(join(dir, 'file.mjs'), [
    `import { Proc } from ${JSON.stringify(join(import.meta.dirname, 'harness.ts'))};`,
    `const p = new Proc(${JSON.stringify(join(dir, 'sleeper.mjs'))}, []);`,
    `p.child.once('spawn', () => { process.kill(p.child.pid, 0); console.log(p.child.pid); setTimeout(() => { ${ending} }, 100); });`,
  ].join('\n'));
  const r = spawnSync(process.execPath, [join(dir, 'file.mjs')], { encoding: 'utf8', timeout: 20_000 });
  const pid = Number(r.stdout.trim());
  t.teardown(() => {
    if (alive(pid)) process.kill(pid, 'SIGKILL');
  });
  t.ok(pid > 0, `its child had started (stderr: ${r.stderr.slice(-300)})`);
  let outlived = true;
  for (let i = 0; i < 100 && outlived; i++) {
    outlived = alive(pid);
    if (outlived) await new Promise((res) => setTimeout(res, 20));
  }
  return { pid, outlived };
}

t.test('a test file that ends without its teardowns takes its processes with it', async (t) => {
  t.equal((await childOutlives(t, 'process.exit(7);')).outlived, false, 'on exit');
  // tap's timeout: SIGALRM to the file, then SIGKILL, which runs no 'exit' handler.
  t.equal((await childOutlives(t, "process.kill(process.pid, 'SIGALRM'); setTimeout(() => process.kill(process.pid, 'SIGKILL'), 300);")).outlived, false, 'on a tap timeout (SIGALRM, then SIGKILL)');
});
