/**
 * Issue 6, promise 7 ("the admin endpoint is unreachable off-host"), with real
 * kernels: two network namespaces joined by a veth pair, as two machines on
 * one link. Host H (10.215.0.1) runs the controller (on H's own loopback) and
 * an agent with `--address 10.215.0.1`; machine X (10.215.0.2) is somewhere
 * else on the network. The agent's admin (15000) and SOCKS5 (15080) ports
 * are bound to H's loopback only, so X's connections to them are refused,
 * while from H itself they answer; its host-facing ports (HBONE 15008,
 * metrics 15020) answer X, proving the path between the two works.
 *
 * Needs root (ip netns); as another user it fails saying so. Everything is
 * named amb<pid>-iso-…, so netns/topology.ts deleteStaleNamespaces() also
 * removes the leftovers of a run killed before its teardown.
 */
import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AGENT_MAIN, AMBITCTL_MAIN, CONTROLLER_MAIN } from '../harness.ts';
import { NODE, NsProc, run, sh } from './processes.ts';
import { deleteStaleNamespaces } from './topology.ts';

const H_ADDR = '10.215.0.1';
const X_ADDR = '10.215.0.2';
const prefix = `amb${process.pid}-iso`;
const H = `${prefix}-h`;
const X = `${prefix}-x`;
const dir = mkdtempSync(join(tmpdir(), 'ambit-netns-isolation-'));
const procs: NsProc[] = [];

async function destroy(): Promise<void> {
  await Promise.all(procs.map((p) => p.stop('SIGKILL', 2000)));
  for (const ns of [X, H]) await run(['ip', 'netns', 'del', ns]);
  rmSync(dir, { recursive: true, force: true });
}

/** TCP connect from inside `ns`; resolves with 'connected' or the error code (ECONNREFUSED, ETIMEDOUT, …). */
async function tcpFrom(ns: string, host: string, port: number): Promise<string> {
  const script = `const s = require('net').connect({ host: ${JSON.stringify(host)}, port: ${port} });
    const t = setTimeout(() => { console.log('ETIMEDOUT'); process.exit(0); }, 3000);
    s.on('connect', () => { console.log('connected'); s.destroy(); clearTimeout(t); });
    s.on('error', (e) => { console.log(e.code); clearTimeout(t); });`;
  const r = await run(['ip', 'netns', 'exec', ns, NODE, '-e', script]);
  return r.stdout.trim() || `no answer (exit ${r.code}): ${r.stderr.trim()}`;
}

/** HTTP GET from inside `ns`; the status, or 0 when nothing answered. */
async function httpFrom(ns: string, url: string): Promise<number> {
  const script = `fetch(${JSON.stringify(url)}, { signal: AbortSignal.timeout(3000) }).then((r) => console.log(r.status), () => console.log(0));`;
  const r = await run(['ip', 'netns', 'exec', ns, NODE, '-e', script]);
  return Number(r.stdout.trim()) || 0;
}

let preflight: Error | undefined;
if (process.getuid?.() !== 0) preflight = new Error(`needs root to create network namespaces; running as uid ${process.getuid?.()}`);
if (preflight) {
  t.fail(`netns isolation test cannot run on this machine: ${preflight.message}`);
} else {
  await deleteStaleNamespaces();
  t.teardown(destroy);
  for (const sig of ['SIGTERM', 'SIGINT'] as const) process.once(sig, () => void destroy().finally(() => process.kill(process.pid, sig)));

  t.before(async () => {
    for (const ns of [H, X]) {
      await run(['ip', 'netns', 'del', ns]);
      await sh(['ip', 'netns', 'add', ns]);
      await sh(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
    }
    await sh(['ip', '-n', H, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', X]);
    await sh(['ip', '-n', H, 'addr', 'add', `${H_ADDR}/24`, 'dev', 'eth0']);
    await sh(['ip', '-n', X, 'addr', 'add', `${X_ADDR}/24`, 'dev', 'eth0']);
    await sh(['ip', '-n', H, 'link', 'set', 'eth0', 'up']);
    await sh(['ip', '-n', X, 'link', 'set', 'eth0', 'up']);

    const ctlDir = join(dir, 'ctl');
    const ctl = new NsProc(H, CONTROLLER_MAIN, ['--data-dir', ctlDir, '--listen', '127.0.0.1:15012', '--monitoring', '127.0.0.1:15014']);
    procs.push(ctl);
    await ctl.waitForLog((l) => l.msg === 'controller ready', 30_000, '"controller ready"');
    const ctlArgs = ['--controller', '127.0.0.1:15012', '--credentials', join(ctlDir, 'admin')];
    await sh(['ip', 'netns', 'exec', H, NODE, AMBITCTL_MAIN, ...ctlArgs, 'workload', 'register', '--name', 'app', '--service-account', 'app', '--node', 'h', '--address', H_ADDR]);
    const token = (await sh(['ip', 'netns', 'exec', H, NODE, AMBITCTL_MAIN, ...ctlArgs, 'node', 'token', 'create', '--node', 'h'])).trim();
    const agent = new NsProc(H, AGENT_MAIN, ['--node', 'h', '--address', H_ADDR, '--controller', '127.0.0.1:15012', '--data-dir', join(dir, 'agent'), '--capture', 'none', '--join', token]);
    procs.push(agent);
    const started = await agent.waitForLog((l) => l.msg === 'agent started', 30_000, '"agent started"');
    t.comment(`agent on ${H_ADDR}: admin ${String(started.admin)}, socks ${String(started.socks)}, hbone ${String(started.hbone)}, metrics ${String(started.metrics)}`);
  });

  t.test('admin and SOCKS5 listen on the host\'s loopback only', async (t) => {
    const listening = (await sh(['ip', 'netns', 'exec', H, 'ss', '-Hltn'])).split('\n').map((l) => l.trim().split(/\s+/)[3] ?? '').filter(Boolean);
    t.comment(`listening in H: ${listening.join(' ')}`);
    t.ok(listening.includes('127.0.0.1:15000'), 'admin :15000 on 127.0.0.1');
    t.ok(listening.includes('127.0.0.1:15080'), 'SOCKS5 :15080 on 127.0.0.1');
    t.notOk(listening.some((a) => /^(0\.0\.0\.0|\*|\[::\]|10\.215\.0\.1):(15000|15080)$/.test(a)), 'neither on the host address nor on a wildcard');
    t.ok(listening.includes(`${H_ADDR}:15008`) && listening.includes(`${H_ADDR}:15020`), 'HBONE and metrics on the host address');
  });

  t.test('from another machine: admin and SOCKS5 refused; HBONE and metrics reachable', async (t) => {
    t.equal(await httpFrom(X, `http://${H_ADDR}:15020/metrics`), 200, 'control: X reaches the agent\'s metrics port (the link works)');
    t.equal(await tcpFrom(X, H_ADDR, 15008), 'connected', 'control: X reaches HBONE :15008');
    t.equal(await tcpFrom(X, H_ADDR, 15000), 'ECONNREFUSED', 'X → admin :15000: connection refused');
    t.equal(await tcpFrom(X, H_ADDR, 15080), 'ECONNREFUSED', 'X → SOCKS5 :15080: connection refused');
    t.equal(await httpFrom(X, `http://${H_ADDR}:15000/config_dump`), 0, 'X gets no /config_dump');
  });

  t.test('a packet for the host\'s loopback from another machine is not delivered', async (t) => {
    // Even a neighbour that routes loopback addresses at H gets nowhere:
    // with route_localnet 0 (the default) Linux treats 127/8 on a
    // non-loopback interface as martian and drops it.
    t.equal((await sh(['ip', 'netns', 'exec', H, 'sysctl', '-n', 'net.ipv4.conf.eth0.route_localnet'])).trim(), '0', 'route_localnet is off on H\'s interface');
    const route = await run(['ip', '-n', X, 'route', 'add', '127.200.0.0/16', 'via', H_ADDR, 'dev', 'eth0']);
    if (route.code !== 0) {
      t.pass(`X cannot even route loopback addresses at H (${route.stderr.trim()})`);
      return;
    }
    const r = await tcpFrom(X, '127.200.0.1', 15000);
    t.not(r, 'connected', `X → 127.200.0.1:15000 routed via H: ${r}`);
  });

  t.test('on the host itself: admin and SOCKS5 answer', async (t) => {
    t.equal(await httpFrom(H, 'http://127.0.0.1:15000/config_dump'), 200, 'H → 127.0.0.1:15000/config_dump: 200');
    t.equal(await tcpFrom(H, '127.0.0.1', 15080), 'connected', 'H → 127.0.0.1:15080: accepted');
    t.equal(await tcpFrom(H, H_ADDR, 15000), 'ECONNREFUSED', 'not even H\'s own host address reaches admin');
  });
}
