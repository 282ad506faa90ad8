/**
 * On a VM, a workload registered with the host's own address is proven by
 * its socket owner's uid, never by the address, which every local process
 * can bind (agent/connection/source-proof.ts, requiredProof). Real processes
 * on loopback (127.0.102.20–24): node-a's ambit-dataplane serves upstream
 * listeners for `vm-app` (the host's address, a uid) and `lo-noid`
 * (127.0.0.1, no uid); clients run as other users through setpriv.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { agentsReady, ambitctl, eventually, hostPortOf, httpGet, metricValue, setUp, startAgentPair, startController, startEchoServer, type RunningAgent, type RunningController } from '../harness.ts';

const ip = (n: number): string => `127.0.102.${n}`;
const CTL = ip(20);
const A = ip(21);
const B = ip(22);
const WEB = ip(24);
const WEB_PORT = 8080;
const VM_APP_PORT = 19_121;
const NOID_PORT = 19_122;
const RIGHT_UID = 65_533;
const WRONG_UID = 65_534;
const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-source-uid-'));
let ctl: RunningController;
let agentA: RunningAgent;
const stops: (() => unknown)[] = [];
const isRoot = process.getuid?.() === 0;

/**
 * Connects from `from` (the host's address) to an upstream listener as `uid` (this
 * process's when undefined), sends a line and waits for its echo: "echoed",
 * "reset" or "timeout". Bounded: the client gives up after 5 s.
 */
function through(listenerPort: number, uid: number | undefined, from = A): Promise<string> {
  const script = `const s = require('node:net').connect({ host: ${JSON.stringify(A)}, port: ${listenerPort}, localAddress: ${JSON.stringify(from)} });
let got = '';
const done = (r) => { process.stdout.write(r); process.exit(0); };
s.on('connect', () => s.write('ping'));
s.on('data', (d) => { got += d; if (got === 'ping') done('echoed'); });
s.on('error', () => done('reset'));
s.on('close', () => done('reset'));
setTimeout(() => done('timeout'), 5000);`;
  const [cmd, args] = uid === undefined
    ? [process.execPath, ['-e', script]]
    : ['setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', process.execPath, '-e', script]];
  const child = spawn(cmd, args as string[], { cwd: '/', stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise((resolve, reject) => child.once('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`client exited ${String(code)}: ${err}`)))));
}

const refused = async (): Promise<number> =>
  metricValue((await httpGet(hostPortOf(agentA.metrics), '/metrics')).body, 'ambit_connections_refused_total', { direction: 'outbound', reason: 'source_not_verified' });

t.before(async () => {
  if (!isRoot) return;
  await setUp(async (started) => {
    const web = await startEchoServer(WEB, WEB_PORT);
    started(() => web.close());
    ctl = await startController(join(root, 'ctl'), [], CTL);
    started(() => ctl.proc.stop());
    const ok = async (args: string[]): Promise<string> => {
      const r = await ambitctl(ctl, args);
      if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    };
    const register = (name: string, node: string, address: string, extra: string[] = []): Promise<string> =>
      ok(['workload', 'register', '--name', name, '--service-account', name, '--node', node, '--address', address, ...extra]);
    await register('web', 'node-b', WEB, ['--port', String(WEB_PORT)]);
    await register('vm-app', 'node-a', A, ['--uid', String(RIGHT_UID)]);
    await register('lo-noid', 'node-a', '127.0.0.1');
    const ta = (await ok(['node', 'token', 'create', '--node', 'node-a'])).trim();
    const tb = (await ok(['node', 'token', 'create', '--node', 'node-b'])).trim();
    const upstreams = `default/vm-app:${VM_APP_PORT}=${WEB}:${WEB_PORT},default/lo-noid:${NOID_PORT}=${WEB}:${WEB_PORT}`;
    const [a, b] = await startAgentPair(started, [
      { node: 'node-a', address: A, controller: ctl.address, dataDir: join(root, 'a'), join: ta, extra: ['--upstreams', upstreams] },
      { node: 'node-b', address: B, controller: ctl.address, dataDir: join(root, 'b'), join: tb },
    ]);
    agentA = a;
    stops.push(() => a.proc.stop(), () => b.proc.stop(), () => ctl.proc.stop(), () => web.close());
    await agentsReady([a, b]);
    await eventually(async () => (await through(VM_APP_PORT, RIGHT_UID)) === 'echoed', 'vm-app reaches web through its upstream listener', 20_000);
  });
});
t.teardown(async () => {
  for (const stop of stops) await stop();
});

t.test('the host\'s address proves nothing: only the registered uid is vm-app', { skip: !isRoot && 'needs root to run clients as other users' }, async (t) => {
  t.equal(await through(VM_APP_PORT, RIGHT_UID), 'echoed', `uid ${RIGHT_UID} (vm-app's) from the host's address: tunnelled`);
  const before = await refused();
  t.equal(await through(VM_APP_PORT, WRONG_UID), 'reset', `uid ${WRONG_UID} from the same address: reset, nothing echoed`);
  t.equal(await through(VM_APP_PORT, undefined), 'reset', 'root from the same address: reset too');
  t.equal(await refused() - before, 2, 'both counted as ambit_connections_refused_total{reason="source_not_verified"}');
});

t.test('a workload on a loopback address without a uid cannot be proven by anyone', { skip: !isRoot && 'needs root to run clients as other users' }, async (t) => {
  const before = await refused();
  t.equal(await through(NOID_PORT, undefined, '127.0.0.1'), 'reset', 'root from 127.0.0.1, lo-noid\'s registered address: reset');
  t.equal(await through(NOID_PORT, WRONG_UID, '127.0.0.1'), 'reset', `uid ${WRONG_UID} from 127.0.0.1: reset`);
  t.equal(await refused() - before, 2, 'both counted');
});
