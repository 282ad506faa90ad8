/**
 * Issue 5, "VMs and bare metal": the onboarding path of docs/vm.md with the
 * privileges ambit-agent.service gives the agent, on a real kernel.
 *
 * In a network namespace playing vm-1, the agent runs as an unprivileged uid
 * (standing in for the `ambit` user) with CAP_NET_ADMIN as its only
 * capability (ambient and bounding set) and no_new_privs, as the unit runs
 * it. Workloads registered with `ambitctl workload register --node vm-1 --uid
 * UID` are captured by uid:
 *   - the client's (uid 64102) plain TCP to the web workload leaves over mTLS,
 *     as spiffe://cluster.local/ns/shop/sa/client;
 *   - plaintext from another host (a second namespace) to web's registered
 *     port is refused (strict mode);
 *   - a process of an unregistered uid is not captured;
 *   - SIGTERM removes every rule.
 * Needs root, `ip netns`, iptables, setpriv and curl; without them it fails,
 * saying why.
 */
import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AGENT_MAIN, AMBITCTL_MAIN, CONTROLLER_MAIN, eventually, metricValue, readJsonLines, ROOT, type LogLine } from '../e2e/harness.ts';

const NODE = join(ROOT, 'node_modules/node/bin/node');
const PREFIX = `ambvm${process.pid}`;
const VM = `${PREFIX}-vm`;
const REMOTE = `${PREFIX}-rm`;
const VM_IP = '10.204.0.1';
const CLIENT_IP = '10.204.0.2';
const REMOTE_IP = '10.204.0.9';
const CONTROLLER = `${VM_IP}:15012`;
const AGENT_UID = 64100;
const WEB_UID = 64101;
const CLIENT_UID = 64102;
const STRANGER_UID = 64199;
/** As ambit-agent.service: CAP_NET_ADMIN only, ambient and bounding; no new privileges. */
const AGENT_PRIVILEGES = ['--inh-caps=-all,+net_admin', '--ambient-caps=-all,+net_admin', '--bounding-set=-all,+net_admin', '--no-new-privs'];

const dir = mkdtempSync(join(tmpdir(), 'ambit-vm-'));
const children = new Set<ChildProcess>();

interface RunResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

function run(argv: readonly string[], timeoutMs = 30_000): Promise<RunResult> {
  return new Promise((resolve) => {
    const [command = '', ...args] = argv;
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs, env: { ...process.env, NODE_NO_WARNINGS: '1' } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (err) => resolve({ code: -1, stdout, stderr: `${stderr}${err.message}` }));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

async function sh(argv: readonly string[]): Promise<string> {
  const r = await run(argv);
  if (r.code !== 0) throw new Error(`${argv.join(' ')} exited ${r.code}: ${r.stderr.trim()}`);
  return r.stdout;
}

const inVm = (argv: readonly string[]): string[] => ['ip', 'netns', 'exec', VM, ...argv];
const asUid = (uid: number, argv: readonly string[], extra: readonly string[] = []): string[] => ['setpriv', `--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', ...extra, ...argv];

/** A long-running process whose stderr carries JSON log lines. */
class Daemon {
  readonly child: ChildProcess;
  readonly logs: LogLine[] = [];
  stderr = '';
  readonly exited: Promise<number | null>;

  constructor(argv: readonly string[]) {
    const [command = '', ...args] = argv;
    this.child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    children.add(this.child);
    readJsonLines(this.child.stderr!, (d) => (this.stderr += d), (v) => this.logs.push(v as LogLine));
    this.exited = once(this.child, 'exit').then(([code]) => code as number | null);
  }

  waitFor(msg: string): Promise<LogLine> {
    return eventually(async () => {
      if (this.child.exitCode !== null) throw new Error(`exited ${this.child.exitCode}: ${this.stderr.slice(-2000)}`);
      return this.logs.find((l) => l.msg === msg);
    }, `"${msg}"`, 30_000);
  }
}

async function ambitctl(args: readonly string[]): Promise<string> {
  return sh(inVm([NODE, AMBITCTL_MAIN, '--controller', CONTROLLER, '--credentials', join(dir, 'ctl/admin'), ...args]));
}

async function natRules(): Promise<string[]> {
  return (await sh(inVm(['iptables', '-w', '5', '-t', 'nat', '-S']))).split('\n').filter((l) => l.includes('AMBIT'));
}

async function metrics(): Promise<string> {
  return sh(inVm(['curl', '-s', '--max-time', '5', `http://${VM_IP}:15020/metrics`]));
}

const opened = (body: string): number => metricValue(body, 'istio_tcp_connections_opened_total', { reporter: 'source', source_workload: 'client', destination_workload: 'web', connection_security_policy: 'mutual_tls' });

t.teardown(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await run(['ip', 'netns', 'del', VM]);
  await run(['ip', 'netns', 'del', REMOTE]);
  rmSync(dir, { recursive: true, force: true });
});

t.test('a VM workload is captured by uid, with only CAP_NET_ADMIN', async (t) => {
  const missing = ['ip', 'iptables', 'setpriv', 'curl'].filter((c) => spawnSync('sh', ['-c', `command -v ${c}`]).status !== 0);
  if (process.getuid?.() !== 0 || missing.length > 0) {
    t.fail(`needs root and ${['ip', 'iptables', 'setpriv', 'curl'].join(', ')} (uid ${process.getuid?.()}, missing: ${missing.join(', ') || 'none'})`);
    return;
  }

  // vm-1 and another host on one link.
  await sh(['ip', 'netns', 'add', VM]);
  await sh(['ip', 'netns', 'add', REMOTE]);
  await sh(['ip', '-n', VM, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', REMOTE]);
  for (const [ns, addrs] of [[VM, [VM_IP, CLIENT_IP]], [REMOTE, [REMOTE_IP]]] as const) {
    for (const a of addrs) await sh(['ip', '-n', ns, 'addr', 'add', `${a}/24`, 'dev', 'eth0']);
    await sh(['ip', '-n', ns, 'link', 'set', 'eth0', 'up']);
    await sh(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
  }

  // The controller (here on the VM itself) and the workloads of docs/vm.md step 2.
  const ctl = new Daemon(inVm([NODE, CONTROLLER_MAIN, '--data-dir', join(dir, 'ctl'), '--listen', CONTROLLER, '--monitoring', `${VM_IP}:15014`]));
  await ctl.waitFor('controller ready');
  await ambitctl(['workload', 'register', '--name', 'web', '--namespace', 'shop', '--service-account', 'web', '--node', 'vm-1', '--uid', String(WEB_UID), '--address', VM_IP, '--port', '8080']);
  await ambitctl(['workload', 'register', '--name', 'client', '--namespace', 'shop', '--service-account', 'client', '--node', 'vm-1', '--uid', String(CLIENT_UID), '--address', CLIENT_IP]);
  const token = (await ambitctl(['node', 'token', 'create', '--node', 'vm-1'])).trim();

  // The agent as the unit runs it: its own uid, CAP_NET_ADMIN only.
  chmodSync(dir, 0o711);
  const dataDir = join(dir, 'agent');
  mkdirSync(dataDir, { mode: 0o700 });
  chownSync(dataDir, AGENT_UID, AGENT_UID);
  const agent = new Daemon(inVm(asUid(AGENT_UID, [
    NODE, AGENT_MAIN, '--node', 'vm-1', '--controller', CONTROLLER, '--address', VM_IP, '--data-dir', dataDir,
    '--join', token, '--capture', 'transparent', '--capture-mode', 'vm', '--drain-timeout', '2s',
  ], AGENT_PRIVILEGES)));
  await agent.waitFor('agent started');
  const status = readFileSync(`/proc/${agent.child.pid}/status`, 'utf8');
  t.match(status, /^CapEff:\s+0000000000001000$/m, 'the agent holds CAP_NET_ADMIN and nothing else');
  t.match(status, new RegExp(`^Uid:\\s+${AGENT_UID}\\s`, 'm'), 'the agent is not root');

  await eventually(async () => (await run(inVm(['curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', `http://${VM_IP}:15021/healthz/ready`]))).stdout === '200', 'agent ready');
  const rules = await eventually(async () => {
    const r = await natRules();
    return r.some((l) => l.includes(`--uid-owner ${CLIENT_UID} -j REDIRECT`)) ? r : undefined;
  }, 'capture rules for both workloads');
  t.ok(rules.includes(`-A AMBIT_OUTPUT -p tcp -m owner --uid-owner ${AGENT_UID} -j RETURN`), 'the agent\'s own uid is never captured');
  t.ok(rules.includes(`-A AMBIT_OUTPUT -p tcp -m owner --uid-owner ${WEB_UID} -j REDIRECT --to-ports 15001`), 'web\'s uid is captured outbound');
  t.ok(rules.includes(`-A AMBIT_PREROUTING -d ${VM_IP}/32 -p tcp -m tcp --dport 8080 -j REDIRECT --to-ports 15006`), 'plaintext to web\'s registered port is captured inbound');
  t.notOk(rules.some((l) => l.includes(CLIENT_IP)), 'client has no registered port: nothing captured inbound for it');

  // web: an unmodified HTTP server, run as its uid.
  const web = new Daemon(inVm(asUid(WEB_UID, [NODE, '-e', `require('node:http').createServer((q, s) => s.end('hello from web')).listen(8080, '${VM_IP}', () => console.error('{"msg":"listening"}'))`])));
  await web.waitFor('listening');

  await t.test('the client\'s plain TCP goes over mTLS as the client', async (t) => {
    const before = opened(await metrics());
    const r = await run(inVm(asUid(CLIENT_UID, ['curl', '-s', '--max-time', '10', `http://${VM_IP}:8080/`])));
    t.equal(r.stdout, 'hello from web', `the client reached web: ${r.stderr}`);
    const after = await eventually(async () => {
      const n = opened(await metrics());
      return n > before ? n : undefined;
    }, 'the connection in the agent\'s metrics');
    t.equal(after, before + 1, 'one connection, client → web, mutual_tls');
    const access = agent.logs.find((l) => l.log === 'access' && l.direction === 'outbound' && l['src.workload'] === 'client');
    t.equal(access?.['src.identity'], 'spiffe://cluster.local/ns/shop/sa/client', 'the access log names the client\'s identity');
  });

  await t.test('a process of an unregistered uid is not captured', async (t) => {
    const before = opened(await metrics());
    const r = await run(inVm(asUid(STRANGER_UID, ['curl', '-s', '--max-time', '10', `http://${VM_IP}:8080/`])));
    t.equal(r.stdout, 'hello from web', 'it reaches web directly');
    t.equal(opened(await metrics()), before, 'and no tunnel was opened');
  });

  await t.test('plaintext from another host to web\'s port is refused (strict)', async (t) => {
    const r = await run(['ip', 'netns', 'exec', REMOTE, 'curl', '-s', '--max-time', '5', `http://${VM_IP}:8080/`]);
    t.not(r.stdout, 'hello from web', 'the other host does not reach web in plaintext');
    const refused = await eventually(async () => {
      const n = metricValue(await metrics(), 'ambit_connections_refused_total', { direction: 'inbound', reason: 'plaintext_refused_strict_mode' });
      return n > 0 ? n : undefined;
    }, 'the refusal in the metrics');
    t.ok(refused >= 1, 'counted as plaintext_refused_strict_mode');
  });

  await t.test('SIGTERM removes every capture rule', async (t) => {
    agent.child.kill('SIGTERM');
    t.equal(await agent.exited, 0, 'the agent exits 0');
    t.same(await natRules(), [], 'no AMBIT rule or chain is left');
  });

  web.child.kill('SIGTERM');
  ctl.child.kill('SIGTERM');
  await Promise.all([web.exited, ctl.exited]);
});
