/**
 * Issue 5, "VMs and bare metal" (DESIGN §8): the systemd units and install.sh.
 *
 * - The units, as install.sh installs them (with and without its drop-ins),
 *   pass `systemd-analyze verify` and keep their sandbox: the exposure score
 *   of `systemd-analyze security --offline=yes` stays under a threshold
 *   (0 = fully sandboxed, 10 = not at all):
 *     controller ≤ 2.0: no capabilities, no netlink, /proc limited to its own pid
 *     agent      ≤ 2.5: keeps CAP_NET_ADMIN (+ CAP_NET_RAW with the legacy
 *                iptables drop-in), AF_NETLINK and /proc/net (socket owners)
 *   Both scored 1.3–1.7 with systemd 252 when written; the headroom absorbs
 *   small differences between systemd versions' weights, not a lost setting.
 * - install.sh (with --root, so the host is untouched, and --no-start) installs
 *   once, then changes nothing on a second run; every invalid argument — a
 *   malformed token, a token pinning another CA than the controller's, a bad
 *   address — fails with a clear message before anything changes. A real
 *   controller on 127.0.8.1 answers the CA-pin check.
 *
 * systemd-analyze comes with the systemd package; this test fails without it.
 */
import t from 'tap';
import type { Test } from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AGENT_OPTIONS } from '../../agent/config.ts';
import { CONTROLLER_OPTIONS } from '../../controller/config.ts';
import { envName } from '../../shared/config-parse.ts';
import { ambitctl, ROOT, startController, type RunningController } from '../e2e/harness.ts';

const SYSTEMD_DIR = join(ROOT, 'systemd');
const INSTALL = join(SYSTEMD_DIR, 'install.sh');
const FIXTURE_ROOT = join(ROOT, 'test/systemd/fixtures/root');
/** The native data path's executable, relative to a checkout and to the installed tree (defaultDataplaneBinary). */
const DATAPLANE = 'dataplane/target/release/ambit-dataplane';
const NODE_BIN = join(ROOT, 'node_modules/node/bin/node');
const THRESHOLD = { controller: 2.0, agent: 2.5 } as const;
const CTL_HOST = '127.0.8.1';
const IS_ROOT = process.getuid?.() === 0;

const base = mkdtempSync(join(tmpdir(), 'ambit-systemd-'));
let ctl: RunningController | undefined;

t.teardown(async () => {
  await ctl?.proc.stop();
  // Each run installs a few hundred MB of runtime tree here.
  rmSync(base, { recursive: true, force: true });
});

interface RunResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

function run(argv: readonly string[], env: Record<string, string> = {}, timeoutMs = 120_000): Promise<RunResult> {
  return new Promise((resolve) => {
    const [command = '', ...args] = argv;
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs, env: { ...process.env, NODE_NO_WARNINGS: '1', ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (err) => resolve({ code: -1, stdout, stderr: `${stderr}${err.message}` }));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * A still copy of this checkout's runtime inputs for --from: other people may
 * edit the sources while the test runs, and the idempotency checks need the
 * same input twice. node_modules is hard-linked (instant; `npm ci` replaces
 * files rather than rewriting them), or symlinked across filesystems.
 */
function frozenCheckout(): string {
  const dir = join(base, 'checkout');
  for (const rel of ['package.json', 'agent', 'controller', 'shared', 'docs/vm.md', DATAPLANE]) {
    if (existsSync(join(ROOT, rel))) cpSync(join(ROOT, rel), join(dir, rel), { recursive: true });
  }
  if (spawnSync('cp', ['-al', join(ROOT, 'node_modules'), join(dir, 'node_modules')]).status !== 0) {
    rmSync(join(dir, 'node_modules'), { recursive: true, force: true });
    symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'));
  }
  return dir;
}

let checkout = '';
const install = (role: 'agent' | 'controller', ...args: string[]): Promise<RunResult> => run(['sh', INSTALL, role, '--from', checkout, ...args]);

/** A fresh host root: just the account databases (see fixtures/README.md). */
function newRoot(name: string): string {
  const dir = join(base, name);
  cpSync(FIXTURE_ROOT, dir, { recursive: true });
  return dir;
}

interface Entry {
  readonly type: 'file' | 'dir' | 'link';
  readonly mode: string;
  readonly owner: string;
  readonly mtimeMs: number;
  readonly size: number;
  readonly sha256?: string;
  readonly target?: string;
}

/** Every path under dir with its type, mode, owner, mtime and content: two equal snapshots mean nothing was touched. */
function snapshot(dir: string): Record<string, Entry> {
  const out: Record<string, Entry> = {};
  const walk = (rel: string): void => {
    const abs = join(dir, rel);
    const st = lstatSync(abs);
    const common = { mode: (st.mode & 0o7777).toString(8), owner: `${st.uid}:${st.gid}`, mtimeMs: st.mtimeMs, size: st.size };
    if (st.isSymbolicLink()) {
      out[rel || '.'] = { type: 'link', ...common, target: readlinkSync(abs) };
    } else if (st.isDirectory()) {
      out[rel || '.'] = { type: 'dir', ...common };
      for (const name of readdirSync(abs).sort()) walk(rel ? `${rel}/${name}` : name);
    } else {
      out[rel] = { type: 'file', ...common, sha256: createHash('sha256').update(readFileSync(abs)).digest('hex') };
    }
  };
  walk('');
  return out;
}

/** The paths whose entries differ (at most 20): [] when nothing was touched. */
function changedPaths(before: Record<string, Entry>, after: Record<string, Entry>): string[] {
  const out: string[] = [];
  for (const path of new Set([...Object.keys(before), ...Object.keys(after)])) {
    const a = before[path];
    const b = after[path];
    if (a === undefined) out.push(`+ ${path}`);
    else if (b === undefined) out.push(`- ${path}`);
    else if (JSON.stringify(a) !== JSON.stringify(b)) out.push(`~ ${path}: ${JSON.stringify(a)} -> ${JSON.stringify(b)}`);
    if (out.length >= 20) break;
  }
  return out;
}

/** What install.sh printed about each path: "unchanged", "installed", ... */
function reportLines(stdout: string): string[] {
  return stdout.split('\n').filter((l) => /^(unchanged|installed|updated|created|removed|skipped)\s/.test(l));
}

function envKeys(text: string): string[] {
  return text.split('\n').filter((l) => /^[A-Z_]+=/.test(l)).map((l) => l.slice(0, l.indexOf('=')));
}

// ------------------------------------------------------------------ systemd-analyze

function systemdAnalyzeVersion(): string | undefined {
  const r = spawnSync('systemd-analyze', ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.split('\n')[0] : undefined;
}

/**
 * Copies an installed unit and its drop-ins out of `root`, with the paths in
 * them pointing into `root` (where install.sh put the wrappers they run), so
 * that systemd-analyze can check them on this host.
 */
function unitForAnalysis(root: string, unit: string): string {
  const dir = mkdtempSync(join(base, 'analyze-'));
  const rewrite = (text: string): string => text.replaceAll('/usr/lib/ambit', join(root, 'usr/lib/ambit')).replaceAll('/etc/ambit', join(root, 'etc/ambit'));
  const installed = join(root, 'etc/systemd/system');
  writeFileSync(join(dir, unit), rewrite(readFileSync(join(installed, unit), 'utf8')));
  const dropins = join(installed, `${unit}.d`);
  let names: string[] = [];
  try {
    names = readdirSync(dropins).filter((n) => n.endsWith('.conf'));
  } catch {
    // no drop-ins
  }
  if (names.length > 0) mkdirSync(join(dir, `${unit}.d`));
  for (const n of names) writeFileSync(join(dir, `${unit}.d`, n), rewrite(readFileSync(join(dropins, n), 'utf8')));
  return join(dir, unit);
}

async function analyze(t: Test, root: string, unit: string, threshold: number, what: string): Promise<void> {
  const path = unitForAnalysis(root, unit);
  const verify = await run(['systemd-analyze', 'verify', path]);
  const complaints = `${verify.stdout}${verify.stderr}`.split('\n').filter((l) => l.includes('ambit'));
  t.equal(verify.code, 0, `${what}: systemd-analyze verify exits 0`);
  t.same(complaints, [], `${what}: systemd-analyze verify has nothing to say about it`);
  const security = await run(['systemd-analyze', 'security', '--offline=yes', path]);
  const m = /Overall exposure level for \S+: ([0-9.]+)/.exec(security.stdout);
  t.ok(m, `${what}: systemd-analyze security reports an exposure level`);
  const score = Number(m?.[1]);
  t.ok(score <= threshold, `${what}: exposure ${score} ≤ ${threshold}`);
  t.comment(`${what}: exposure level ${score}`);
}

// ------------------------------------------------------------------ the tests

t.test('systemd-analyze is installed (package systemd)', async (t) => {
  const version = systemdAnalyzeVersion();
  t.ok(version, 'systemd-analyze --version runs; install the systemd package to run these tests');
  if (version) t.comment(version);
});

t.test('install.sh and the units', { skip: systemdAnalyzeVersion() ? false : 'systemd-analyze is missing (failed above)' }, async (t) => {
  checkout = frozenCheckout();
  ctl = await startController(join(base, 'controller'), [], CTL_HOST);
  const created = await ambitctl(ctl, ['node', 'token', 'create', '--node', 'vm-1']);
  t.equal(created.code, 0, `token created: ${created.stderr}`);
  const token = created.stdout.trim();
  const otherPin = createHash('sha256').update('another CA').digest('hex');
  const foreignToken = `${token.slice(0, token.lastIndexOf('.'))}.${otherPin}`;
  const agentArgs = ['--node', 'vm-1', '--controller', ctl.address, '--address', '10.0.0.21'];

  const host = newRoot('host');

  await t.test('first run installs everything, after checking the token pins the controller\'s CA', async (t) => {
    const r = await install('agent', '--root', host, '--no-start', ...agentArgs, '--token', token);
    t.equal(r.code, 0, `exit 0; stderr: ${r.stderr}`);
    t.match(r.stdout, `the controller at ${ctl!.address} presents the pinned CA`);
    t.match(r.stdout, /not starting \(--no-start\)/);
    t.match(r.stdout, /systemctl enable --now ambit-agent\.service/);

    const env = join(host, 'etc/ambit/agent.env');
    const st = lstatSync(env);
    t.equal((st.mode & 0o777).toString(8), '600', 'agent.env is 0600');
    if (IS_ROOT) t.equal(`${st.uid}:${st.gid}`, '0:0', 'agent.env belongs to root');
    const text = readFileSync(env, 'utf8');
    t.match(text, /^AMBIT_NODE=vm-1$/m);
    t.match(text, new RegExp(`^AMBIT_CONTROLLER=${ctl!.address}$`, 'm'));
    t.match(text, /^AMBIT_ADDRESS=10\.0\.0\.21$/m);
    t.match(text, /^AMBIT_CAPTURE=transparent$/m);
    t.match(text, /^AMBIT_CAPTURE_MODE=vm$/m);
    t.ok(text.includes(`\nAMBIT_JOIN=${token}\n`), 'the join token is written for the first start');
    const known = new Set(Object.keys(AGENT_OPTIONS).map(envName));
    t.same(envKeys(text).filter((k) => !known.has(k)), [], 'every key in agent.env is an ambit-agent option');

    t.equal(readFileSync(join(host, 'etc/systemd/system/ambit-agent.service'), 'utf8'), readFileSync(join(SYSTEMD_DIR, 'ambit-agent.service'), 'utf8'), 'the unit is installed as shipped (default paths)');
    t.equal(readlinkSync(join(host, 'usr/local/bin/ambitctl')), '/usr/lib/ambit/bin/ambitctl', 'ambitctl is on the PATH');
    t.ok(lstatSync(join(host, 'usr/lib/sysusers.d/ambit.conf')).isFile(), 'sysusers.d entry installed');
    if (IS_ROOT) t.match(readFileSync(join(host, 'etc/passwd'), 'utf8'), /^ambit:x:\d+:\d+:Ambit service mesh:\/nonexistent:/m, 'system user ambit created');
    for (const bin of ['ambit-agent', 'ambit-controller', 'ambitctl', 'ambit-wait-ready']) {
      const wrapper = join(host, 'usr/lib/ambit/bin', bin);
      t.equal((lstatSync(wrapper).mode & 0o777).toString(8), '755', `${bin} is executable`);
      t.match(readFileSync(wrapper, 'utf8'), /^exec \/usr\/lib\/ambit\/node_modules\/node\/bin\/node \/usr\/lib\/ambit\//m, `${bin} runs the bundled Node.js`);
    }
    // npm test builds it before the tests run; an installer that dropped it would leave the agent unable to carry a byte.
    const dataplane = join(host, 'usr/lib/ambit', DATAPLANE);
    t.ok(existsSync(join(ROOT, DATAPLANE)), `the checkout has ${DATAPLANE} (npm ci builds it)`);
    t.equal(existsSync(dataplane) && (lstatSync(dataplane).mode & 0o777).toString(8), '755', 'the native data path is installed, executable, where the agent looks for it');
    t.match(String(spawnSync(dataplane, [], { timeout: 5_000 }).stderr), /usage: ambit-dataplane/, 'the installed ambit-dataplane runs');
    t.notOk(readdirSync(join(host, 'usr/lib/ambit/node_modules')).includes('typescript'), 'devDependencies are not installed');
    t.notOk(readdirSync(join(host, 'usr/lib/ambit')).includes('test'), 'tests are not installed');
  });

  await t.test('a second run with the same arguments changes nothing', async (t) => {
    const before = snapshot(host);
    const r = await install('agent', '--root', host, '--no-start', ...agentArgs, '--token', token);
    t.equal(r.code, 0, `exit 0; stderr: ${r.stderr}`);
    const lines = reportLines(r.stdout);
    t.ok(lines.length >= 6, 'it reports on every item');
    t.same(lines.filter((l) => !l.startsWith('unchanged')), [], 'every item is unchanged');
    t.same(changedPaths(before, snapshot(host)), [], 'no path, mode, owner, mtime or content changed');
  });

  await t.test('the installed runtime runs on its own (bundled Node.js, production node_modules)', async (t) => {
    const lib = join(host, 'usr/lib/ambit');
    const node = join(lib, 'node_modules/node/bin/node');
    const agentHelp = await run([node, join(lib, 'agent/main.ts'), '--help']);
    t.equal(agentHelp.code, 0, `ambit-agent --help: ${agentHelp.stderr}`);
    t.match(agentHelp.stdout, /Usage: ambit-agent/);
    const ctlHelp = await run([node, join(lib, 'controller/cli/ambitctl.mjs'), 'node', 'list', '--help']);
    t.equal(ctlHelp.code, 0, `ambitctl node list --help: ${ctlHelp.stderr}`);
    // The readiness gate of the controller unit, against the real controller.
    const ready = await run([node, join(lib, 'lib/wait-ready.mjs'), 'controller', '--timeout', '10'], { AMBIT_MONITORING: `${ctl!.monitoring.host}:${ctl!.monitoring.port}` });
    t.equal(ready.code, 0, `wait-ready controller: ${ready.stderr}`);
    t.match(ready.stderr, /controller ready/);
    // The agent's gate, with nothing listening: bounded, then a failure that says what it waited for.
    const notReady = await run([node, join(lib, 'lib/wait-ready.mjs'), 'agent', '--timeout', '1'], {
      AMBIT_NODE: 'vm-1', AMBIT_CONTROLLER: ctl!.address, AMBIT_ADDRESS: CTL_HOST, AMBIT_READY_PORT: '1',
    });
    t.equal(notReady.code, 1, 'wait-ready agent fails after its timeout');
    t.match(notReady.stderr, `agent not ready after 1 s (http://${CTL_HOST}:1/healthz/ready`);
  });

  await t.test('the agent unit verifies and stays sandboxed', async (t) => {
    await analyze(t, host, 'ambit-agent.service', THRESHOLD.agent, 'ambit-agent.service');
    const unit = readFileSync(join(host, 'etc/systemd/system/ambit-agent.service'), 'utf8');
    t.match(unit, /^User=ambit$/m);
    t.match(unit, /^CapabilityBoundingSet=CAP_NET_ADMIN$/m, 'CAP_NET_ADMIN is the only capability');
    t.match(unit, /^AmbientCapabilities=CAP_NET_ADMIN$/m);
    t.match(unit, /^ExecStart=\/usr\/lib\/ambit\/bin\/ambit-agent --data-dir \$\{STATE_DIRECTORY\}$/m);
    const stop = Number(/^TimeoutStopSec=(\d+)s$/m.exec(unit)?.[1]);
    const drainS = AGENT_OPTIONS.drainTimeout.default / 1000;
    t.ok(stop >= drainS + 10, `TimeoutStopSec (${stop} s) leaves room for the agent's drain (${drainS} s) and the rule cleanup`);
  });

  await t.test('--iptables legacy adds the CAP_NET_RAW drop-in; --capture none drops every capability', async (t) => {
    const legacy = await install('agent', '--root', host, '--no-start', ...agentArgs, '--token', token, '--iptables', 'legacy');
    t.equal(legacy.code, 0, `exit 0; stderr: ${legacy.stderr}`);
    t.match(legacy.stdout, /installed\s+\S+\/ambit-agent\.service\.d\/iptables-legacy\.conf/);
    t.same(reportLines(legacy.stdout).filter((l) => !l.startsWith('unchanged') && !l.startsWith('created')).length, 1, 'only the drop-in changed');
    await analyze(t, host, 'ambit-agent.service', THRESHOLD.agent, 'ambit-agent.service + iptables-legacy.conf');

    const none = await install('agent', '--root', host, '--no-start', ...agentArgs, '--token', token, '--capture', 'none');
    t.equal(none.code, 0, `exit 0; stderr: ${none.stderr}`);
    t.match(none.stdout, /removed\s+\S+\/iptables-legacy\.conf/);
    t.match(none.stdout, /installed\s+\S+\/capture-none\.conf/);
    const env = readFileSync(join(host, 'etc/ambit/agent.env'), 'utf8');
    t.match(env, /^AMBIT_CAPTURE=none$/m);
    t.notMatch(env, /AMBIT_CAPTURE_MODE/);
    await analyze(t, host, 'ambit-agent.service', THRESHOLD.controller, 'ambit-agent.service + capture-none.conf');

    const back = await install('agent', '--root', host, '--no-start', ...agentArgs, '--token', token);
    t.equal(back.code, 0, `exit 0; stderr: ${back.stderr}`);
    t.match(back.stdout, /removed\s+\S+\/capture-none\.conf/);
    t.match(back.stdout, /updated\s+\S+\/agent\.env/);
  });

  await t.test('once the node has joined, the spent token leaves agent.env and no token is needed', async (t) => {
    const state = join(host, 'var/lib/ambit-agent');
    mkdirSync(state, { recursive: true });
    writeFileSync(join(state, 'node.json'), JSON.stringify({ node: 'vm-1', trustDomain: 'cluster.local', bundlePem: '' }));
    const r = await install('agent', '--root', host, '--no-start', ...agentArgs);
    t.equal(r.code, 0, `exit 0; stderr: ${r.stderr}`);
    t.match(r.stdout, /updated\s+\S+\/agent\.env/);
    t.notMatch(readFileSync(join(host, 'etc/ambit/agent.env'), 'utf8'), /AMBIT_JOIN/);
    const before = snapshot(host);
    const again = await install('agent', '--root', host, '--no-start', ...agentArgs, '--token', token);
    t.equal(again.code, 0, `exit 0; stderr: ${again.stderr}`);
    t.match(again.stderr, /already joined/);
    t.same(changedPaths(before, snapshot(host)), [], 'nothing changed');
    const renamed = await install('agent', '--root', host, '--no-start', '--node', 'vm-2', '--controller', ctl!.address, '--address', '10.0.0.21');
    t.equal(renamed.code, 1, 'another node name for a host that joined as vm-1 fails');
    t.match(renamed.stderr, /this host joined the mesh as node vm-1 .*not --node vm-2/);
    t.same(changedPaths(before, snapshot(host)), [], 'and changes nothing');
  });

  await t.test('install.sh controller on the same host: its unit verifies and stays sandboxed', async (t) => {
    const r = await install('controller', '--root', host, '--no-start', '--trust-domain', 'example.org');
    t.equal(r.code, 0, `exit 0; stderr: ${r.stderr}`);
    t.match(r.stdout, /unchanged\s+\S+\/usr\/lib\/ambit\/ \(\d+ files\)/, 'the runtime tree is shared and unchanged');
    t.match(r.stdout, /installed\s+\S+\/ambit-controller\.service/);
    const env = readFileSync(join(host, 'etc/ambit/controller.env'), 'utf8');
    t.match(env, /^AMBIT_TRUST_DOMAIN=example\.org$/m);
    const known = new Set(Object.keys(CONTROLLER_OPTIONS).map(envName));
    t.same(envKeys(env).filter((k) => !known.has(k)), [], 'every key in controller.env is an ambit-controller option');
    t.equal((lstatSync(join(host, 'etc/ambit/controller.env')).mode & 0o777).toString(8), '600');
    const unit = readFileSync(join(host, 'etc/systemd/system/ambit-controller.service'), 'utf8');
    t.match(unit, /^CapabilityBoundingSet=$/m, 'no capabilities');
    t.match(unit, /^ExecStart=\/usr\/lib\/ambit\/bin\/ambit-controller --data-dir \$\{STATE_DIRECTORY\}$/m);
    await analyze(t, host, 'ambit-controller.service', THRESHOLD.controller, 'ambit-controller.service');
    const before = snapshot(host);
    const again = await install('controller', '--root', host, '--no-start', '--trust-domain', 'example.org');
    t.equal(again.code, 0);
    t.same(changedPaths(before, snapshot(host)), [], 'a second run changes nothing');
  });

  await t.test('invalid arguments fail with a clear message before anything changes', async (t) => {
    const fresh = newRoot('fresh');
    const cases: { name: string; args: string[]; message: RegExp }[] = [
      { name: 'malformed token', args: [...agentArgs, '--token', 'ambit-join.0123.not-a-token'], message: /invalid join token \(--token\): expected ambit-join\.<16 hex>\.<43 base64url>\.<64 hex>/ },
      { name: 'token with a newline', args: [...agentArgs, '--token', `${token}\n${token}`], message: /invalid join token/ },
      { name: 'token pinning another CA than the controller\'s', args: [...agentArgs, '--token', foreignToken], message: /the token does not match the controller at 127\.0\.8\.1:\d+: .*did not present the CA pinned by the join token/ },
      { name: 'no token for a node that has not joined', args: agentArgs, message: /--token is required: this node has not joined yet/ },
      { name: 'bad address', args: ['--node', 'vm-1', '--controller', ctl!.address, '--address', '10.0.0.300', '--token', token], message: /invalid --address "10\.0\.0\.300"/ },
      { name: 'bad node name', args: ['--node', 'VM_1', '--controller', ctl!.address, '--address', '10.0.0.21', '--token', token], message: /invalid --node "VM_1"/ },
      { name: 'misspelt --set', args: [...agentArgs, '--token', token, '--set', 'AMBIT_DRAIN_TIMOUT=30s'], message: /unknown agent setting AMBIT_DRAIN_TIMOUT/ },
      { name: 'unknown option', args: [...agentArgs, '--token', token, '--frobnicate', 'x'], message: /unknown option --frobnicate/ },
      { name: 'controller option for the agent', args: [...agentArgs, '--token', token, '--listen', '0.0.0.0:1'], message: /--listen is a controller option/ },
    ];
    const before = snapshot(fresh);
    for (const c of cases) {
      const r = await install('agent', '--root', fresh, '--no-start', ...c.args);
      t.equal(r.code, 1, `${c.name}: exit 1`);
      t.match(r.stderr, c.message, `${c.name}: says why`);
      t.match(r.stderr, /nothing was changed/, `${c.name}: says nothing changed`);
      t.same(changedPaths(before, snapshot(fresh)), [], `${c.name}: the tree is exactly as before`);
    }
    // A checkout without ambit-dataplane (built without Rust, or with AMBIT_DATAPLANE_BUILD=skip):
    // the agent could not carry a byte, so nothing is installed. cp -as: files as symlinks, instant.
    const noDataplane = join(base, 'checkout-no-dataplane');
    t.equal(spawnSync('cp', ['-as', checkout, noDataplane]).status, 0, 'a checkout without ambit-dataplane');
    rmSync(join(noDataplane, DATAPLANE), { force: true });
    const r = await run(['sh', INSTALL, 'agent', '--from', noDataplane, '--root', fresh, '--no-start', ...agentArgs, '--token', token]);
    t.equal(r.code, 1, 'no ambit-dataplane: exit 1');
    t.match(r.stderr, /dataplane\/target\/release\/ambit-dataplane is missing: run "npm ci" \(it builds ambit-dataplane\)/, 'no ambit-dataplane: says what to run');
    t.match(r.stderr, /nothing was changed/, 'no ambit-dataplane: says nothing changed');
    t.same(changedPaths(before, snapshot(fresh)), [], 'no ambit-dataplane: the tree is exactly as before');
    const badCtl = await install('controller', '--root', fresh, '--no-start', '--listen', 'nohost:99999');
    t.equal(badCtl.code, 1);
    t.match(badCtl.stderr, /invalid --listen "nohost:99999"/);
    t.same(changedPaths(before, snapshot(fresh)), [], 'controller with a bad --listen: nothing changed');
  });
});
