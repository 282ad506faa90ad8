/**
 * The admin port is on loopback, where every local user can connect: any of
 * them may read it, only root and the agent's user may change the log level
 * (the uid owning the client socket, from /proc/net/tcp). A real agent on
 * 127.0.102.31 (controller .30); clients run as uid 65534 through setpriv.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ambitctl, hostPortOf, httpGet, startAgent, startController, type RunningAgent, type RunningController } from '../harness.ts';

const CTL = '127.0.102.30';
const A = '127.0.102.31';
const NOBODY = 65_534;
const isRoot = process.getuid?.() === 0;
const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-admin-logging-'));
let ctl: RunningController | undefined;
let agent: RunningAgent | undefined;

/** An HTTP request to the admin port as uid `uid` (this process's when undefined): "status body". Bounded: 5 s. */
function asUser(uid: number | undefined, method: string, path: string): Promise<string> {
  const script = `fetch(${JSON.stringify(`http://${agent!.admin}${path}`)}, { method: ${JSON.stringify(method)}, signal: AbortSignal.timeout(5000) })
  .then(async (r) => { process.stdout.write(r.status + ' ' + (await r.text())); process.exit(0); }, (e) => { process.stdout.write('error ' + e.message); process.exit(0); });`;
  const [cmd, args] = uid === undefined
    ? [process.execPath, ['-e', script]]
    : ['setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', process.execPath, '-e', script]];
  const child = spawn(cmd, args as string[], { cwd: '/', stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise((resolve, reject) => child.once('exit', (code) => (code === 0 ? resolve(out.trim()) : reject(new Error(`client exited ${String(code)}: ${err}`)))));
}

const level = async (): Promise<string> => (JSON.parse((await httpGet(hostPortOf(agent!.admin), '/logging')).body) as { level: string }).level;

t.before(async () => {
  if (!isRoot) return;
  ctl = await startController(join(root, 'ctl'), [], CTL);
  const r = await ambitctl(ctl, ['node', 'token', 'create', '--node', 'node-a']);
  if (r.code !== 0) throw new Error(`token: ${r.stderr}`);
  agent = await startAgent({ node: 'node-a', address: A, controller: ctl.address, dataDir: join(root, 'a'), join: r.stdout.trim() });
});
t.teardown(async () => {
  await agent?.proc.stop();
  await ctl?.proc.stop();
});

t.test('an unprivileged local user reads the admin port but cannot change the log level', { skip: !isRoot && 'needs root to run a client as another user' }, async (t) => {
  t.equal(await level(), 'info', 'starts at info');
  t.match(await asUser(NOBODY, 'GET', '/logging'), /^200 .*"level": "info"/s, `uid ${NOBODY} reads the level`);
  t.match(await asUser(NOBODY, 'GET', '/config_dump'), /^200 /, `uid ${NOBODY} reads /config_dump`);
  t.match(await asUser(NOBODY, 'GET', '/logging?level=fatal'), /^405 GET \/logging only reads the level/, `GET /logging?level=fatal as uid ${NOBODY}: 405`);
  t.match(await asUser(NOBODY, 'POST', '/logging?level=fatal'), /^403 only root or the agent's user .* this connection's uid: 65534/, `POST as uid ${NOBODY}: 403`);
  t.equal(await level(), 'info', 'still info');
});

t.test('root changes the log level with POST; GET never does', { skip: !isRoot && 'needs root' }, async (t) => {
  t.match(await asUser(undefined, 'GET', '/logging?level=fatal'), /^405 /, 'GET with ?level= as root: 405 too');
  t.equal(await level(), 'info', 'unchanged');
  t.match(await asUser(undefined, 'POST', '/logging?level=debug'), /^200 .*"level": "debug"/s, 'POST as root: 200, debug');
  t.equal(await level(), 'debug', 'now debug');
  t.match(await asUser(undefined, 'POST', '/logging?level=info'), /^200 /, 'and back to info');
});
