/**
 * Transparent capture with the real kernel: iptables rules (capture.ts) and
 * SO_ORIGINAL_DST as ambit-dataplane reads it (fixtures/capture-proxy.ts
 * drives the real data plane's capture listeners).
 *
 * Every scenario runs in network namespaces created here (`ambit-t-<pid>-*`)
 * and deleted in teardown, so the machine's own iptables are never touched.
 * Code under test runs inside them through `ip netns exec` with the fixtures
 * in fixtures/; clients are plain `bash /dev/tcp` so that they can run as an
 * unprivileged uid without needing to read the repository.
 */
import t from 'tap';
import type { Test } from 'tap';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CaptureRules } from '../../../agent/proxy/capture.ts';
import type { CaptureExec, CaptureOptions } from '../../../agent/proxy/capture.ts';
import { isAmbitError } from '../../../shared/errors.ts';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const NODE = join(ROOT, 'node_modules/.bin/node');
const CTL = join(ROOT, 'test/agent/proxy/fixtures/capture-ctl.ts');
const PROXY = join(ROOT, 'test/agent/proxy/fixtures/capture-proxy.ts');
const NOBODY = 65534;
const PORTS = { outboundPort: 15001, inboundPlaintextPort: 15006, hbonePort: 15008 } as const;

interface RunResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

function run(argv: readonly string[], timeoutMs = 10_000): Promise<RunResult> {
  return new Promise((resolve) => {
    const [command = '', ...args] = argv;
    // cwd '/': an unprivileged client must not depend on reading our tree.
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: '/', timeout: timeoutMs });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.on('error', (err) => resolve({ code: -1, stdout, stderr: `${stderr}${err.message}` }));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

async function sh(argv: readonly string[]): Promise<string> {
  const r = await run(argv);
  if (r.code !== 0) throw new Error(`${argv.join(' ')} exited ${r.code}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** Deletes namespaces left by an earlier run of this file that was killed. */
async function deleteStaleNamespaces(): Promise<void> {
  const list = await run(['ip', 'netns', 'list']);
  for (const line of list.stdout.split('\n')) {
    const match = /^(ambit-t-(\d+)-\S+)/.exec(line);
    if (match?.[1] === undefined || match[2] === undefined) continue;
    const pid = Number(match[2]);
    if (pid === process.pid) continue;
    try {
      process.kill(pid, 0);
    } catch {
      await run(['ip', 'netns', 'del', match[1]]);
    }
  }
}

/**
 * A fresh namespace with lo up, deleted in teardown. On failure (not root, no
 * iproute2) the test fails loudly: capture cannot be verified without it.
 */
async function netns(t: Test, role: string): Promise<string | undefined> {
  const name = `ambit-t-${process.pid}-${role}`;
  await run(['ip', 'netns', 'del', name]);
  try {
    await sh(['ip', 'netns', 'add', name]);
  } catch (err) {
    t.fail(`cannot create network namespace ${name} (needs root and iproute2): ${(err as Error).message}`);
    return undefined;
  }
  t.teardown(async () => {
    await run(['ip', 'netns', 'del', name]);
  });
  await sh(['ip', '-n', name, 'link', 'set', 'lo', 'up']);
  return name;
}

type CtlOptions = Omit<CaptureOptions, 'exec'>;

interface CtlResult {
  readonly rules?: string[];
  readonly calls?: string[][];
  readonly error?: { code: string; message: string };
}

async function ctl(ns: string, op: string, options: CtlOptions, update?: object): Promise<CtlResult> {
  const argv = ['ip', 'netns', 'exec', ns, NODE, CTL, op, JSON.stringify(options)];
  if (update !== undefined) argv.push(JSON.stringify(update));
  const r = await run(argv);
  try {
    return JSON.parse(r.stdout) as CtlResult;
  } catch {
    throw new Error(`capture-ctl ${op} printed no result (exit ${r.code}): ${r.stderr}`);
  }
}

async function natRules(ns: string, tool: 'iptables' | 'ip6tables'): Promise<string[]> {
  const out = await sh(['ip', 'netns', 'exec', ns, tool, '-w', '5', '-t', 'nat', '-S']);
  return out.split('\n').filter((l) => l !== '');
}

async function startProxy(t: Test, ns: string, listens: readonly string[]): Promise<void> {
  const child = spawn('ip', ['netns', 'exec', ns, NODE, PROXY, ...listens], { stdio: ['ignore', 'pipe', 'pipe'] });
  // `ip netns exec` execs the command, so child.pid is the proxy itself.
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`proxy not ready after 5 s: ${stderr}`)), 5000);
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (stdout.includes('ready\n')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`proxy exited ${code}: ${stderr}`));
    });
  });
}

interface Reply {
  readonly listener: string;
  readonly landed: { address: string; port: number };
  readonly original?: { address: string; port: number; family: number };
  readonly error?: { code: string; message: string };
}

/** Connects from `ns` (as `uid`, default root) and returns the proxy's reply, or the failure text. */
async function dial(ns: string, host: string, port: number, uid?: number): Promise<{ reply?: Reply; failure?: string }> {
  const as = uid === undefined ? [] : ['setpriv', `--reuid=${uid}`, `--regid=${uid}`, '--clear-groups'];
  const r = await run(['ip', 'netns', 'exec', ns, ...as, 'bash', '-c', `exec 3<>/dev/tcp/${host}/${port} && cat <&3`], 5000);
  if (r.code !== 0) return { failure: r.stderr.trim() || `exit ${r.code}` };
  try {
    return { reply: JSON.parse(r.stdout) as Reply };
  } catch {
    return { failure: `unparseable reply: ${r.stdout}` };
  }
}

function ambitLines(lines: readonly string[]): string[] {
  return lines.filter((l) => l.includes('AMBIT_'));
}

function count(lines: readonly string[], line: string): number {
  return lines.filter((l) => l === line).length;
}

/** rules() entries of one tool, in `-S` form (without the `<tool> -t nat ` prefix). */
function expected(rules: readonly string[], tool: 'iptables' | 'ip6tables'): string[] {
  const prefix = `${tool} -t nat `;
  return rules.filter((r) => r.startsWith(prefix)).map((r) => r.slice(prefix.length));
}

await deleteStaleNamespaces();

// ---------------------------------------------------------------- pure behaviour (no kernel)

const noExec: CaptureExec = async () => {
  throw new Error('exec must not be called');
};

function base(overrides: Partial<CaptureOptions> = {}): CaptureOptions {
  return { mode: 'vm', ...PORTS, agentUid: 0, workloadUids: [], localWorkloads: [], exec: noExec, ...overrides };
}

t.test('bad capture config is refused with AMBIT_ERR_CONFIG_INVALID naming the key', async (t) => {
  const cases: [Partial<CaptureOptions>, string, RegExp][] = [
    [{ mode: 'sidecar' as 'vm' }, 'capture.mode', /'vm' or 'pod'/],
    [{ outboundPort: 0 }, 'capture.outboundPort', /between 1 and 65535/],
    [{ hbonePort: 15001 }, 'capture.ports', /must differ/],
    [{ agentUid: -1 }, 'capture.agentUid', /non-negative/],
    [{ workloadUids: [1000, 0] }, 'capture.workloadUids[1]', /agent uid/],
    [{ mode: 'pod' }, 'capture.podCidrs', /at least one/],
    [{ podCidrs: ['10.0.0.0/8'] }, 'capture.podCidrs', /only meaningful in pod mode/],
    [{ mode: 'pod', podCidrs: ['10.78.0.5/24'] }, 'capture.podCidrs[0]', /host bits set; did you mean 10\.78\.0\.0\/24\?/],
    [{ mode: 'pod', podCidrs: ['fd00::1/64'] }, 'capture.podCidrs[0]', /did you mean fd00::\/64\?/],
    [{ mode: 'pod', podCidrs: ['10.0.0.0/33'] }, 'capture.podCidrs[0]', /prefix length must be an integer 0-32/],
    [{ mode: 'pod', podCidrs: ['pods'] }, 'capture.podCidrs[0]', /not a CIDR block/],
    [{ mode: 'pod', podCidrs: ['010.0.0.0/8'] }, 'capture.podCidrs[0]', /invalid IP address/],
    [{ localWorkloads: [{ address: 'web.local', ports: [80] }] }, 'capture.localWorkloads[0].address', /IP address/],
    [{ localWorkloads: [{ address: '10.0.0.1', ports: [80, 70000] }] }, 'capture.localWorkloads[0].ports[1]', /between 1 and 65535/],
  ];
  for (const [overrides, key, message] of cases) {
    t.throws(() => new CaptureRules(base(overrides)), { code: 'AMBIT_ERR_CONFIG_INVALID', details: { key }, message }, key);
  }
  const capture = new CaptureRules(base());
  t.throws(() => capture.updateWorkloads([-5], []), { code: 'AMBIT_ERR_CONFIG_INVALID', details: { key: 'capture.workloadUids[0]' } });
});

t.test('rules(): VM mode renders owner-match outbound and per-port inbound, IPv6 only when needed', async (t) => {
  const capture = new CaptureRules(base({
    agentUid: 990,
    workloadUids: [1001, 1002, 1001],
    localWorkloads: [{ address: '10.0.0.5', ports: [8080, 8080] }],
  }));
  t.same(capture.rules(), [
    'iptables -t nat -A OUTPUT -j AMBIT_OUTPUT',
    'iptables -t nat -A PREROUTING -j AMBIT_PREROUTING',
    'iptables -t nat -A AMBIT_OUTPUT -p tcp -m owner --uid-owner 990 -j RETURN',
    'iptables -t nat -A AMBIT_OUTPUT -d 127.0.0.0/8 -j RETURN',
    'iptables -t nat -A AMBIT_OUTPUT -p tcp -m owner --uid-owner 1001 -j REDIRECT --to-ports 15001',
    'iptables -t nat -A AMBIT_OUTPUT -p tcp -m owner --uid-owner 1002 -j REDIRECT --to-ports 15001',
    'iptables -t nat -A AMBIT_PREROUTING -p tcp -m addrtype --dst-type LOCAL -m multiport --dports 15001,15006,15008 -j RETURN',
    'iptables -t nat -A AMBIT_PREROUTING -d 10.0.0.5/32 -p tcp -m tcp --dport 8080 -j REDIRECT --to-ports 15006',
  ], 'duplicates collapse; no ip6tables rules without an IPv6 workload');

  await capture.updateWorkloads([1003], [{ address: 'FD00:0::5', ports: [80] }]);
  const v6 = capture.rules().filter((r) => r.startsWith('ip6tables'));
  t.ok(v6.includes('ip6tables -t nat -A AMBIT_OUTPUT -d ::1/128 -j RETURN'), 'v6 loopback excluded');
  t.ok(v6.includes('ip6tables -t nat -A AMBIT_OUTPUT -p tcp -m owner --uid-owner 1003 -j REDIRECT --to-ports 15001'), 'v6 owner capture');
  t.ok(v6.includes('ip6tables -t nat -A AMBIT_PREROUTING -d fd00::5/128 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 15006'), 'address canonicalized');
  t.notOk(capture.rules().some((r) => r.includes('1001')), 'update replaced the uids (and ran no command before install)');
});

t.test('rules(): pod mode captures pod sources before inbound so same-node pod traffic keeps its identity', async (t) => {
  const capture = new CaptureRules(base({ mode: 'pod', podCidrs: ['10.244.1.0/24'], localWorkloads: [{ address: '10.244.1.7', ports: [80] }] }));
  const pre = capture.rules().filter((r) => r.includes('-A AMBIT_PREROUTING'));
  t.same(pre, [
    'iptables -t nat -A AMBIT_PREROUTING -p tcp -m addrtype --dst-type LOCAL -m multiport --dports 15001,15006,15008 -j RETURN',
    'iptables -t nat -A AMBIT_PREROUTING -s 10.244.1.7/32 -p tcp -j REDIRECT --to-ports 15001',
    'iptables -t nat -A AMBIT_PREROUTING -d 10.244.1.7/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 15006',
  ]);
});

t.test('iptables failures surface as AMBIT_ERR_INTERNAL with the cause; missing ip6tables does not fail remove()', async (t) => {
  const boom = new Error('iptables: Permission denied (you must be root)');
  const failing = new CaptureRules(base({ exec: async () => { throw boom; } }));
  await t.rejects(failing.install(), { code: 'AMBIT_ERR_INTERNAL', cause: boom, message: /iptables failed: iptables: Permission denied/ });
  await t.rejects(failing.remove(), { code: 'AMBIT_ERR_INTERNAL', cause: boom });

  const calls: string[] = [];
  const noV6 = new CaptureRules(base({
    exec: async (argv) => {
      calls.push(argv.join(' '));
      if (argv[0] === 'ip6tables') throw new Error('ip6tables: command not found');
      return { stdout: '-P OUTPUT ACCEPT\n' };
    },
  }));
  await noV6.remove();
  t.same(calls, ['iptables -w 5 -t nat -S', 'ip6tables -w 5 -t nat -S'], 'nothing of ours listed: nothing deleted');
});

// ---------------------------------------------------------------- the addon

t.test('the data plane\'s original destination: a clear error without a redirected connection', async (t) => {
  // (d) A real accepted TCP socket that no rule redirected, in a namespace
  // with no nat rules (so no NAT record exists for it).
  const ns = await netns(t, 'plain');
  if (ns === undefined) return;
  await startProxy(t, ns, ['127.0.0.1:15001']);
  const { reply, failure } = await dial(ns, '127.0.0.1', 15001);
  t.equal(failure, undefined);
  t.equal(reply?.original, undefined, 'no original destination');
  t.match(reply?.error?.code, /^(ENOENT|ENOPROTOOPT)$/, 'the kernel\'s answer, named (the agent refuses such a connection as no_original_destination)');
});

// ---------------------------------------------------------------- (a) rules in a real nat table

t.test('install is idempotent with exactly one jump; update re-renders; remove leaves nothing', async (t) => {
  const ns = await netns(t, 'rules');
  if (ns === undefined) return;
  const options: CtlOptions = {
    mode: 'vm', ...PORTS, agentUid: 0, workloadUids: [NOBODY, 1000],
    localWorkloads: [{ address: '10.77.0.1', ports: [8080, 9090] }, { address: 'fd77::1', ports: [80] }],
  };
  const first = await ctl(ns, 'install', options);
  t.equal(first.error, undefined, 'first install');
  const second = await ctl(ns, 'install', options);
  t.equal(second.error, undefined, 'second install');
  t.ok(second.calls?.some((c) => c[0] === 'iptables-restore' && c.includes('--noflush')), 'chains are written with iptables-restore --noflush');
  const rules = second.rules ?? [];
  for (const tool of ['iptables', 'ip6tables'] as const) {
    const live = await natRules(ns, tool);
    const want = expected(rules, tool);
    t.ok(want.length > 4, `${tool}: rules rendered`);
    for (const line of want) t.equal(count(live, line), 1, `${tool}: exactly once: ${line}`);
    t.same(ambitLines(live).filter((l) => !l.startsWith('-N ')).sort(), [...want].sort(), `${tool}: nothing else of ours`);
  }

  // A crash or a hand edit may leave duplicate or variant jumps and stray rules
  // in our chains; install converges to the rendered state and leaves other
  // software's rules alone.
  for (const extra of [
    ['-A', 'OUTPUT', '-j', 'AMBIT_OUTPUT'],
    ['-A', 'OUTPUT', '-p', 'tcp', '-j', 'AMBIT_OUTPUT'],
    ['-A', 'PREROUTING', '-j', 'AMBIT_PREROUTING'],
    ['-A', 'AMBIT_OUTPUT', '-d', '192.0.2.9/32', '-j', 'RETURN'],
    ['-A', 'OUTPUT', '-d', '192.0.2.1/32', '-j', 'RETURN'],
  ]) {
    await sh(['ip', 'netns', 'exec', ns, 'iptables', '-w', '5', '-t', 'nat', ...extra]);
  }
  t.equal((await ctl(ns, 'install', options)).error, undefined, 'install over a messy table');
  let live = await natRules(ns, 'iptables');
  t.equal(count(live, '-A OUTPUT -j AMBIT_OUTPUT'), 1, 'one OUTPUT jump');
  t.equal(live.filter((l) => l.endsWith('-j AMBIT_OUTPUT')).length, 1, 'variant jump removed');
  t.equal(count(live, '-A PREROUTING -j AMBIT_PREROUTING'), 1, 'one PREROUTING jump');
  t.notOk(live.some((l) => l.includes('192.0.2.9')), 'stray rule in our chain flushed');
  t.equal(count(live, '-A OUTPUT -d 192.0.2.1/32 -j RETURN'), 1, 'foreign rule kept');

  // Update: new uids/workloads, and the last IPv6 workload leaving takes the
  // ip6tables chains with it.
  const updated = await ctl(ns, 'update', options, { workloadUids: [1000], localWorkloads: [{ address: '10.77.0.1', ports: [9090] }] });
  t.equal(updated.error, undefined, 'update');
  live = await natRules(ns, 'iptables');
  t.same(ambitLines(live).filter((l) => !l.startsWith('-N ')).sort(), expected(updated.rules ?? [], 'iptables').sort(), 'v4 re-rendered');
  t.notOk(live.some((l) => l.includes(String(NOBODY)) || l.includes('--dport 8080')), 'old uid and port gone');
  t.same(ambitLines(await natRules(ns, 'ip6tables')), [], 'v6 chains removed when no IPv6 workload is left');

  for (const attempt of ['remove', 'remove again']) {
    const removed = await ctl(ns, 'remove', options);
    t.equal(removed.error, undefined, attempt);
    t.same(ambitLines(await natRules(ns, 'iptables')), [], `${attempt}: no AMBIT chains or jumps (v4)`);
    t.same(ambitLines(await natRules(ns, 'ip6tables')), [], `${attempt}: none (v6)`);
  }
  t.equal(count(await natRules(ns, 'iptables'), '-A OUTPUT -d 192.0.2.1/32 -j RETURN'), 1, 'foreign rule survives remove');
});

// ---------------------------------------------------------------- (b) VM mode end to end

t.test('VM mode: workload uids are captured with their original destination; the agent and loopback are not', async (t) => {
  const vm = await netns(t, 'vm');
  const peer = await netns(t, 'peer');
  if (vm === undefined || peer === undefined) return;
  // One link: the VM (10.77.0.1, plus 10.77.0.2 standing in for a remote
  // service) and a peer host (10.77.0.9) that sends inbound traffic.
  await sh(['ip', '-n', vm, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', peer]);
  for (const [ns, addrs] of [[vm, ['10.77.0.1/24', '10.77.0.2/24', 'fd77::1/64', 'fd77::2/64']], [peer, ['10.77.0.9/24', 'fd77::9/64']]] as const) {
    for (const a of addrs) await sh(['ip', '-n', ns, 'addr', 'add', a, 'dev', 'eth0', ...(a.includes(':') ? ['nodad'] : [])]);
    await sh(['ip', '-n', ns, 'link', 'set', 'eth0', 'up']);
  }
  const options: CtlOptions = {
    mode: 'vm', ...PORTS, agentUid: 0, workloadUids: [NOBODY],
    localWorkloads: [{ address: '10.77.0.1', ports: [9090] }, { address: 'fd77::1', ports: [9090] }],
  };
  t.equal((await ctl(vm, 'install', options)).error, undefined, 'install');
  await startProxy(t, vm, ['0.0.0.0:15001', '[::]:15001', '0.0.0.0:15006', '[::]:15006', '10.77.0.2:8080', '10.77.0.1:15008']);

  let r = await dial(vm, '10.77.0.2', 8080, NOBODY);
  t.equal(r.reply?.listener, '0.0.0.0:15001', 'workload uid → outbound capture port');
  t.same(r.reply?.original, { address: '10.77.0.2', port: 8080, family: 4 }, 'original destination recovered');

  r = await dial(vm, 'fd77::2', 8080, NOBODY);
  t.equal(r.reply?.listener, '[::]:15001', 'IPv6: outbound capture port');
  t.same(r.reply?.original, { address: 'fd77::2', port: 8080, family: 6 }, 'IPv6 original destination (IP6T_SO_ORIGINAL_DST)');

  r = await dial(vm, '10.77.0.2', 8080);
  t.equal(r.reply?.listener, '10.77.0.2:8080', 'the agent uid (root) reaches the real listener, uncaptured');

  r = await dial(vm, '127.0.0.1', 8080, NOBODY);
  t.match(r.failure, /refused/i, 'loopback destinations are not captured');

  r = await dial(peer, '10.77.0.1', 9090);
  t.equal(r.reply?.listener, '0.0.0.0:15006', 'inbound to a local workload port → inbound plaintext port');
  t.same(r.reply?.original, { address: '10.77.0.1', port: 9090, family: 4 });

  r = await dial(peer, 'fd77::1', 9090);
  t.equal(r.reply?.listener, '[::]:15006', 'IPv6 inbound');
  t.same(r.reply?.original, { address: 'fd77::1', port: 9090, family: 6 });

  r = await dial(peer, '10.77.0.1', 15008);
  t.equal(r.reply?.listener, '10.77.0.1:15008', "HBONE to the agent's port is not captured");

  r = await dial(peer, '10.77.0.1', 9091);
  t.match(r.failure, /refused/i, 'ports that are not workload ports are not captured');

  t.equal((await ctl(vm, 'remove', options)).error, undefined, 'remove');
  r = await dial(vm, '10.77.0.2', 8080, NOBODY);
  t.equal(r.reply?.listener, '10.77.0.2:8080', 'after remove the workload uid is no longer captured');
});

// ---------------------------------------------------------------- (c) pod mode end to end

t.test('pod mode: traffic from a pod veth is captured in PREROUTING with its original destination', async (t) => {
  const node = await netns(t, 'node');
  const pod = await netns(t, 'pod');
  if (node === undefined || pod === undefined) return;
  await sh(['ip', '-n', node, 'link', 'add', 'veth-pod', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', pod]);
  await sh(['ip', '-n', node, 'addr', 'add', '10.78.0.1/24', 'dev', 'veth-pod']);
  await sh(['ip', '-n', node, 'link', 'set', 'veth-pod', 'up']);
  // A "remote" service address that lives in the node namespace, so no
  // packet ever needs to leave the namespaces made here.
  await sh(['ip', '-n', node, 'addr', 'add', '10.78.9.1/32', 'dev', 'lo']);
  await sh(['ip', 'netns', 'exec', node, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
  await sh(['ip', '-n', pod, 'addr', 'add', '10.78.0.2/24', 'dev', 'eth0']);
  await sh(['ip', '-n', pod, 'link', 'set', 'eth0', 'up']);
  await sh(['ip', '-n', pod, 'route', 'add', 'default', 'via', '10.78.0.1']);

  const options: CtlOptions = {
    mode: 'pod', ...PORTS, agentUid: 0, workloadUids: [],
    localWorkloads: [{ address: '10.78.0.2', ports: [80] }], podCidrs: ['10.78.0.0/24'],
  };
  t.equal((await ctl(node, 'install', options)).error, undefined, 'install');
  // Dual-stack listeners: v4 connections arrive v4-mapped on an AF_INET6
  // socket, and the data plane reports their addresses as plain IPv4.
  await startProxy(t, node, ['*:15001', '*:15006', '10.78.0.1:15008', '10.78.9.1:8080']);

  let r = await dial(pod, '10.78.9.1', 8080);
  t.equal(r.reply?.listener, '*:15001', 'pod traffic → outbound capture port');
  t.equal(r.reply?.landed.address, '10.78.0.1', 'redirected to the pod-facing interface address');
  t.same(r.reply?.original, { address: '10.78.9.1', port: 8080, family: 4 }, 'original destination on a dual-stack socket');

  r = await dial(pod, '10.78.0.1', 15008);
  t.equal(r.reply?.listener, '10.78.0.1:15008', "a pod reaching its node agent's port is not captured");

  r = await dial(node, '10.78.9.1', 8080);
  t.equal(r.reply?.listener, '10.78.9.1:8080', "the node's own traffic is not captured in pod mode");
});
