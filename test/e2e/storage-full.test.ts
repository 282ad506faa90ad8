/**
 * Storage failures, end to end on real filesystems: the agent's and the
 * controller's data directories are small tmpfs mounts (the test runs as
 * root), filled to ENOSPC and remounted read-only. The agent keeps serving
 * from memory, says persistence is failing (readiness body, /config_dump,
 * metrics, a log line with path and errno), and recovers on its own when
 * space returns. The controller answers an apply on a full disk with a clear
 * error and keeps serving. Loopback block 127.0.103.0/24.
 */
import t from 'tap';
import type { Test } from 'tap';
import { execFileSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { agentsReady, ambitctl, eventually, hostPortOf, httpGet, metricValue, startAgent, startController, type RunningAgent, type RunningController } from './harness.ts';

const NET = '127.0.103';
const CTL = `${NET}.1`;
const A = `${NET}.2`;

const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-storage-'));
const mounts: string[] = [];

function mountTmpfs(dir: string, size: string): void {
  mkdirSync(dir, { recursive: true });
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0700`, 'tmpfs', dir]);
  mounts.push(dir);
}
const remount = (dir: string, how: 'ro' | 'rw'): void => void execFileSync('mount', ['-o', `remount,${how}`, dir]);
/**
 * Makes `dir` read-only under a running agent, and undoes it. The kernel
 * refuses to remount a filesystem read-only while a process holds a file on
 * it open for writing (EBUSY), and a running agent does: its data-directory
 * lock. A read-only bind mount stacked on the directory gives every new open
 * in it EROFS, as a filesystem remounted read-only after an error does;
 * unmounting it gives the writable one back.
 */
const readOnlyOverlay = (dir: string): void => {
  execFileSync('mount', ['--bind', dir, dir]);
  execFileSync('mount', ['-o', 'remount,ro,bind', dir]);
};
const removeOverlay = (dir: string): void => void execFileSync('umount', [dir]);

/** Writes to `file` until the filesystem is full (bounded by its size); returns the bytes written. */
function fill(file: string): number {
  const chunk = Buffer.alloc(64 * 1024, 1);
  let written = 0;
  const fd = openSync(file, 'a');
  try {
    for (;;) {
      try {
        written += writeSync(fd, chunk);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOSPC') break;
        throw err;
      }
    }
    // The last partial block: single bytes until nothing fits.
    for (;;) {
      try {
        written += writeSync(fd, Buffer.alloc(1, 1));
      } catch {
        break;
      }
    }
  } finally {
    closeSync(fd);
  }
  return written;
}

let ctl: RunningController | undefined;
let agent: RunningAgent | undefined;
t.teardown(async () => {
  await agent?.proc.stop();
  await ctl?.proc.stop();
  for (const m of mounts.reverse()) {
    try {
      execFileSync('umount', [m]);
    } catch {
      execFileSync('umount', ['-l', m]);
    }
  }
  rmSync(root, { recursive: true, force: true });
});

const agentData = join(root, 'agent');
const ctlData = join(root, 'ctl');
let workloads = 0;

async function register(name: string): Promise<void> {
  const r = await ambitctl(ctl!, ['workload', 'register', '--name', name, '--service-account', name, '--node', 'node-a', '--address', `${NET}.${20 + workloads++}`]);
  if (r.code !== 0) throw new Error(`ambitctl workload register ${name}: ${r.stderr}`);
}

interface Dump {
  resources: { kind: string; metadata: { name: string } }[];
  ready: { ready: boolean; why: string };
  persistence: { healthy: boolean; failing: { path: string; code: string; attempts: number }[] };
}
const dump = async (): Promise<Dump> => JSON.parse((await httpGet(hostPortOf(agent!.admin), '/config_dump')).body) as Dump;
const metrics = async (): Promise<string> => (await httpGet(hostPortOf(agent!.metrics), '/metrics')).body;
const cachedNames = (): string[] => {
  try {
    return (JSON.parse(readFileSync(join(agentData, 'state.json'), 'utf8')) as { resources: { doc: { metadata: { name: string } } }[] }).resources.map((r) => r.doc.metadata.name);
  } catch {
    return [];
  }
};

t.before(async () => {
  mountTmpfs(agentData, '1m');
  mountTmpfs(ctlData, '4m');
  ctl = await startController(ctlData, [], CTL);
  await register('w0');
  const token = (await ambitctl(ctl, ['node', 'token', 'create', '--node', 'node-a'])).stdout.trim();
  agent = await startAgent({ node: 'node-a', address: A, controller: ctl.address, dataDir: agentData, join: token });
  await agentsReady([agent]);
  await eventually(async () => cachedNames().includes('w0'), 'the first state is cached');
});

async function failsThenRecovers(t: Test, errno: string, name: string, breakIt: () => void, healIt: () => void): Promise<void> {
  const failuresBefore = metricValue(await metrics(), 'ambit_agent_persist_failures_total', { path: 'state.json', errno });
  breakIt();
  await register(name);
  // The new workload is local, so its certificate file fails too; the state cache is the one checked here.
  const statePath = join(agentData, 'state.json');
  const line = await agent!.proc.waitForLog((l) => l.msg === 'cannot write to the data directory; serving from memory and retrying' && l.errno === errno && l.path === statePath);
  t.equal(line.level, 'error', `an error line names the path and errno (${errno})`);
  t.equal(agent!.proc.child.exitCode, null, 'the agent is still running');
  const ready = await httpGet(hostPortOf(agent!.ready), '/healthz/ready');
  t.equal(ready.status, 200, 'still ready: it serves from memory');
  t.match(ready.body, /^ready; persistence failing \(serving from memory, retrying\): /, 'the readiness body says persistence is failing');
  t.match(ready.body, `state.json: ${errno}`, 'where and why');
  const d = await dump();
  t.ok(d.resources.some((r) => r.metadata.name === name), 'it serves the new workload from memory');
  t.equal(d.persistence.healthy, false, '/config_dump says persistence is failing');
  t.match(d.persistence.failing.find((f) => f.path === 'state.json'), { code: errno }, 'naming the path and errno');
  const m = await metrics();
  t.equal(metricValue(m, 'ambit_agent_persist_healthy'), 0, 'ambit_agent_persist_healthy 0');
  t.ok(metricValue(m, 'ambit_agent_persist_failures_total', { path: 'state.json', errno }) > failuresBefore, 'ambit_agent_persist_failures_total counts it');
  t.notOk(cachedNames().includes(name), 'the cache on disk is behind');
  const healedAt = Date.now();
  healIt();
  await agent!.proc.waitForLog((l) => l.msg === 'persistence recovered: every pending write landed' && Date.parse(String(l.time)) >= healedAt, 45_000);
  t.comment(`${errno}: recovered ${Date.now() - healedAt} ms after the disk was usable again`);
  t.ok(cachedNames().includes(name), 'the retried write put the new state on disk');
  t.equal(metricValue(await metrics(), 'ambit_agent_persist_healthy'), 1, 'ambit_agent_persist_healthy 1 again');
  t.equal((await httpGet(hostPortOf(agent!.ready), '/healthz/ready')).body, 'ready\n', 'the readiness body is plain again');
}

t.test('agent: a full data directory (ENOSPC) does not stop it; it recovers when space returns', async (t) => {
  const filler = join(agentData, 'filler');
  await failsThenRecovers(t, 'ENOSPC', 'w-enospc', () => t.comment(`filled with ${fill(filler)} bytes`), () => rmSync(filler));
});

t.test('agent: a read-only remount (EROFS) does not stop it; it recovers when remounted read-write', async (t) => {
  await failsThenRecovers(t, 'EROFS', 'w-erofs', () => readOnlyOverlay(agentData), () => removeOverlay(agentData));
});

t.test('agent: restarts on a read-only data directory and serves from its cache', async (t) => {
  await agent!.proc.stop();
  remount(agentData, 'ro');
  try {
    agent = await startAgent({ node: 'node-a', address: A, controller: ctl!.address, dataDir: agentData });
    await agentsReady([agent]);
    t.ok((await dump()).resources.some((r) => r.metadata.name === 'w-erofs'), 'serves the cached state');
  } finally {
    remount(agentData, 'rw');
  }
});

t.test('controller: an apply on a full disk fails with a clear error; the controller keeps serving', async (t) => {
  const filler = join(ctlData, 'filler');
  fill(filler);
  try {
    const r = await ambitctl(ctl!, ['workload', 'register', '--name', 'w-ctl-full', '--service-account', 'x', '--node', 'node-a', '--address', `${NET}.90`]);
    t.not(r.code, 0, 'the apply fails');
    t.match(r.stderr, /AMBIT_ERR_STORE_IO/, 'with the store I/O code');
    t.match(r.stderr, /disk is full|SQLITE_FULL/i, 'saying the disk is full');
    t.equal(ctl!.proc.child.exitCode, null, 'the controller is still running');
    const list = await ambitctl(ctl!, ['workload', 'list', '-o', 'json']);
    t.equal(list.code, 0, 'and still answers reads');
  } finally {
    rmSync(filler);
  }
  const again = await ambitctl(ctl!, ['workload', 'register', '--name', 'w-ctl-full', '--service-account', 'x', '--node', 'node-a', '--address', `${NET}.90`]);
  t.equal(again.code, 0, `the same apply succeeds once space returns ${again.stderr}`);
  await eventually(async () => (await dump()).resources.some((r) => r.metadata.name === 'w-ctl-full'), 'the agent receives it');
});
