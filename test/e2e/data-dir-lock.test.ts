/**
 * One process per data directory: a second ambit-controller (or ambit-agent)
 * on a --data-dir in use exits non-zero with AMBIT_ERR_DATA_DIR_LOCKED naming
 * the holder's pid; once the holder is killed with SIGKILL (no clean-up at
 * all), the next one starts.
 */
import t from 'tap';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AGENT_MAIN, CONTROLLER_MAIN, Proc, ambitctl, startAgent, startController } from './harness.ts';

const HOST = '127.0.101.10';

/** Runs a process that should refuse to start; one still running after 20 s is killed and reported as code null. */
async function refused(main: string, args: readonly string[]): Promise<{ code: number | null; stderr: string }> {
  const p = new Proc(main, args);
  const timer = setTimeout(() => void p.stop('SIGKILL'), 20_000);
  const { code } = await p.exited;
  clearTimeout(timer);
  return { code, stderr: p.stderrText };
}

t.test('controller: a second one on the same --data-dir is refused; after kill -9 of the first a new one starts', async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'ambit-e2e-lock-ctl-'));
  const first = await startController(dataDir, [], HOST);
  t.teardown(() => first.proc.stop('SIGKILL'));
  const second = await refused(CONTROLLER_MAIN, ['--data-dir', dataDir, '--listen', `${HOST}:0`, '--monitoring', `${HOST}:0`, '--console', `${HOST}:0`]);
  t.not(second.code, 0, 'the second exits non-zero');
  t.match(second.stderr, 'AMBIT_ERR_DATA_DIR_LOCKED');
  t.match(second.stderr, `pid ${first.proc.child.pid}`, 'naming the holder\'s pid');
  t.equal((await ambitctl(first, ['workload', 'list'])).code, 0, 'the first still serves');

  t.equal((await first.proc.stop('SIGKILL')).signal, 'SIGKILL');
  const next = await startController(dataDir, [], HOST);
  t.teardown(() => next.proc.stop());
  t.equal((await ambitctl(next, ['workload', 'list'])).code, 0, 'the next one serves');
  t.equal((await next.proc.stop()).code, 0, 'and stops cleanly');
});

t.test('agent: a second one on the same --data-dir is refused; after kill -9 of the first a new one starts', async (t) => {
  const ctlDir = mkdtempSync(join(tmpdir(), 'ambit-e2e-lock-actl-'));
  const ctl = await startController(ctlDir, [], HOST);
  t.teardown(() => ctl.proc.stop());
  const token = (await ambitctl(ctl, ['node', 'token', 'create', '--node', 'lock-a'])).stdout.trim();
  const dataDir = mkdtempSync(join(tmpdir(), 'ambit-e2e-lock-agent-'));
  const agentArgs = { node: 'lock-a', address: '127.0.101.11', controller: ctl.address, dataDir };
  const first = await startAgent({ ...agentArgs, join: token });
  t.teardown(() => first.proc.stop('SIGKILL'));

  const second = await refused(AGENT_MAIN, ['--node', 'lock-a', '--controller', ctl.address, '--address', '127.0.101.12', '--data-dir', dataDir, '--capture', 'none']);
  t.not(second.code, 0, 'the second exits non-zero');
  t.match(second.stderr, 'AMBIT_ERR_DATA_DIR_LOCKED');
  t.match(second.stderr, `pid ${first.proc.child.pid}`, 'naming the holder\'s pid');

  t.equal((await first.proc.stop('SIGKILL')).signal, 'SIGKILL');
  // Joined already: the node credentials in the data directory are enough.
  const next = await startAgent(agentArgs);
  t.teardown(() => next.proc.stop());
  t.equal((await next.proc.stop()).code, 0, 'the next one starts and stops cleanly');
});
