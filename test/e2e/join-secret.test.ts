/**
 * The join token stays off the command line: ambit-agent takes it from
 * --join-file (mode 0600 or stricter) or from AMBIT_JOIN, joins with it, and
 * no other local user sees it in /proc/<pid>/cmdline (what ps shows). A token
 * file that group or others can read is refused.
 */
import t from 'tap';
import { chmodSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AGENT_MAIN, Proc, ambitctl, startAgent, startController, type RunningController } from './harness.ts';

const HOST = '127.0.101.20';
let ctl: RunningController;

t.before(async () => {
  ctl = await startController(mkdtempSync(join(tmpdir(), 'ambit-e2e-join-ctl-')), [], HOST);
});
t.teardown(async () => {
  await ctl?.proc.stop();
});

async function tokenFor(node: string): Promise<string> {
  const r = await ambitctl(ctl, ['node', 'token', 'create', '--node', node]);
  if (r.code !== 0) throw new Error(r.stderr);
  return r.stdout.trim();
}

function tokenFile(dir: string, token: string, mode: number): string {
  const path = join(dir, 'join-token');
  writeFileSync(path, `${token}\n`, { mode });
  chmodSync(path, mode); // past the umask
  return path;
}

t.test('--join-file: the agent joins and its command line holds no token', async (t) => {
  const token = await tokenFor('join-file');
  const dir = mkdtempSync(join(tmpdir(), 'ambit-e2e-join-file-'));
  const dataDir = join(dir, 'data');
  const agent = await startAgent({ node: 'join-file', address: '127.0.101.21', controller: ctl.address, dataDir, extra: ['--join-file', tokenFile(dir, token, 0o600)] });
  t.teardown(() => agent.proc.stop());
  const cmdline = readFileSync(`/proc/${agent.proc.child.pid}/cmdline`, 'utf8');
  t.match(cmdline, '--join-file', 'the agent was given the file');
  t.notMatch(cmdline, token, 'its command line does not hold the token');
  t.notMatch(cmdline, /ambit-join\./, 'nor any token');
  t.ok(existsSync(join(dataDir, 'node.json')), 'it joined: node credentials saved');
  t.notOk(agent.proc.logs.some((l) => l.msg === 'using saved node credentials'), 'a first start: it joined with the token');
  t.notOk(agent.proc.stderrText.includes(token), 'the token is not logged');
});

t.test('AMBIT_JOIN: the agent joins from the environment', async (t) => {
  const token = await tokenFor('join-env');
  const dataDir = mkdtempSync(join(tmpdir(), 'ambit-e2e-join-env-'));
  const agent = await startAgent({ node: 'join-env', address: '127.0.101.22', controller: ctl.address, dataDir, env: { AMBIT_JOIN: token } });
  t.teardown(() => agent.proc.stop());
  t.notMatch(readFileSync(`/proc/${agent.proc.child.pid}/cmdline`, 'utf8'), token, 'its command line does not hold the token');
  t.ok(existsSync(join(dataDir, 'node.json')), 'it joined: node credentials saved');
});

t.test('a group-readable --join-file is refused, naming the file and its mode', async (t) => {
  const token = await tokenFor('join-loose');
  const dir = mkdtempSync(join(tmpdir(), 'ambit-e2e-join-loose-'));
  const path = tokenFile(dir, token, 0o640);
  const p = new Proc(AGENT_MAIN, ['--node', 'join-loose', '--controller', ctl.address, '--address', '127.0.101.23', '--data-dir', join(dir, 'data'), '--capture', 'none', '--join-file', path]);
  const timer = setTimeout(() => void p.stop('SIGKILL'), 20_000);
  const { code } = await p.exited;
  clearTimeout(timer);
  t.equal(code, 2, 'exits 2, a configuration error');
  t.match(p.stderrText, `--join-file "${path}"`);
  t.match(p.stderrText, 'mode 0640');
  t.notOk(p.stderrText.includes(token), 'the token is not printed');
  t.notOk(existsSync(join(dir, 'data', 'node.json')), 'it did not join');
});

t.test('--join and --join-file together are refused', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ambit-e2e-join-both-'));
  const path = tokenFile(dir, 'x', 0o600);
  const p = new Proc(AGENT_MAIN, ['--node', 'join-both', '--controller', ctl.address, '--address', '127.0.101.24', '--data-dir', join(dir, 'data'), '--capture', 'none', '--join-file', path, '--join', 'y']);
  const { code } = await p.exited;
  t.equal(code, 2);
  t.match(p.stderrText, '--join and --join-file');
});
