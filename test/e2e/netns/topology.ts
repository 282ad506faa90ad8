/**
 * A small multi-host network built from Linux network namespaces, for the
 * end-to-end suite that runs the real binaries with real kernels and real
 * iptables (issue 4, "Multi-host end-to-end suite").
 *
 *                       <p>-net: bridge br0 (10.200.0.254)
 *        ┌────────────────┬───────────┴────┬────────────────┐
 *   <p>-ctl 10.200.0.10  <p>-h1 .11       <p>-h2 .12       <p>-h3 .13
 *   controller :15012    ambit-agent      ambit-agent      ambit-agent
 *                         │ p1 p2 …        │ p1 p2 …        │ p1 …
 *                      <p>-h1p1 …       <p>-h2p1 …       <p>-h3p1 …
 *                      10.201.1.11 …    10.201.2.11 …    10.201.3.11 …
 *
 * Pod wiring is the routed, Calico-style kind: each pod has its address as a
 * /32 and a default route via 10.201.<h>.1, which every pod-facing veth on the
 * host carries (a /32 too, so several veths can share it without fighting
 * over a connected /24 route); the host routes each pod's /32 to its veth, and
 * other hosts' pod /24s via their bridge address. Every pod-facing veth has an
 * address because REDIRECT in PREROUTING rewrites to it.
 *
 * Everything is named `<prefix>-…` with prefix `amb<pid>`; interface names are
 * short and local to their namespace. The root namespace's networking and
 * iptables are never touched: every command runs with `ip -n` or `ip netns exec`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AGENT_MAIN, AMBITCTL_MAIN, CONTROLLER_MAIN, ROOT } from '../harness.ts';
import { Pod, POD_FIXTURE } from './pod-driver.ts';
import { NODE, NsProc, run, sh, type Json, type RunResult } from './processes.ts';

const FIXTURES = join(ROOT, 'test/e2e/netns/fixtures');
export const HBONE_PROBE = join(FIXTURES, 'hbone-probe.ts');
export const CA_REQUEST = join(FIXTURES, 'ca-request.ts');

export const CONTROLLER_ADDRESS = '10.200.0.10';
export const CONTROLLER_GRPC = `${CONTROLLER_ADDRESS}:15012`;
export const BRIDGE_ADDRESS = '10.200.0.254';
export const hostAddress = (h: number): string => `10.200.0.1${h}`;
export const podCidr = (h: number): string => `10.201.${h}.0/24`;
export const podAddress = (h: number, i: number): string => `10.201.${h}.${10 + i}`;
const podGateway = (h: number): string => `10.201.${h}.1`;

// ------------------------------------------------------------------ preconditions and leftovers

/**
 * Throws, with a message saying what is missing, unless this process is root
 * and can create network namespaces. The suite turns that into a failure: a
 * machine that cannot run it must not look like one where it passed.
 */
export async function requireNetns(): Promise<void> {
  if (process.getuid?.() !== 0) {
    throw new Error(`the multi-host e2e suite needs root (to create network namespaces and iptables rules); running as uid ${process.getuid?.()}`);
  }
  const probe = `amb${process.pid}-probe`;
  const add = await run(['ip', 'netns', 'add', probe]);
  if (add.code !== 0) throw new Error(`cannot create a network namespace with "ip netns add" (iproute2 installed? kernel netns support?): ${add.stderr.trim()}`);
  await run(['ip', 'netns', 'del', probe]);
  for (const tool of ['iptables', 'tcpdump', 'curl']) {
    const r = await run(['sh', '-c', `command -v ${tool}`]);
    if (r.code !== 0) throw new Error(`the multi-host e2e suite needs ${tool} on PATH`);
  }
}

/** Kills leftovers of earlier runs of this suite that died before their teardown (owner pid gone). */
export async function deleteStaleNamespaces(): Promise<void> {
  const list = await run(['ip', 'netns', 'list']);
  for (const line of list.stdout.split('\n')) {
    const m = /^(amb(\d+)-\S+)/.exec(line);
    if (!m?.[1] || !m[2] || Number(m[2]) === process.pid) continue;
    try {
      process.kill(Number(m[2]), 0);
      continue; // its run is still going
    } catch {
      // owner gone: ours to clean
    }
    await killNamespacePids(m[1]);
    await run(['ip', 'netns', 'del', m[1]]);
  }
}

async function killNamespacePids(ns: string): Promise<void> {
  const pids = await run(['ip', 'netns', 'pids', ns]);
  for (const pid of pids.stdout.split('\n').map(Number).filter((p) => p > 1)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

// ------------------------------------------------------------------ the topology

export interface HostState {
  readonly n: number;
  readonly node: string;
  readonly ns: string;
  readonly address: string;
  readonly dataDir: string;
  agent: NsProc | undefined;
}

export interface TopologyOptions {
  readonly hosts: number;
  /** Pods per host: host number → count (pods are h<n>p1 … at podAddress(n, i)). */
  readonly pods: Readonly<Record<number, number>>;
}

export class Topology {
  /** Every namespace's name starts with it: `amb<pid>` unless a suite names its own. */
  readonly prefix: string;
  readonly dir = mkdtempSync(join(tmpdir(), 'ambit-netns-'));
  readonly netNs: string;
  readonly ctlNs: string;
  readonly ctlDataDir = join(this.dir, 'ctl');
  readonly hosts = new Map<number, HostState>();
  controller: NsProc | undefined;
  readonly #namespaces: string[] = [];
  readonly #procs = new Set<NsProc>();
  readonly #children = new Set<ChildProcess>();

  constructor(o: { prefix?: string } = {}) {
    this.prefix = o.prefix ?? `amb${process.pid}`;
    this.netNs = `${this.prefix}-net`;
    this.ctlNs = `${this.prefix}-ctl`;
  }

  podNs(h: number, i: number): string {
    return `${this.prefix}-h${h}p${i}`;
  }

  host(h: number): HostState {
    const s = this.hosts.get(h);
    if (!s) throw new Error(`no host ${h}`);
    return s;
  }

  async #addNs(name: string): Promise<void> {
    await run(['ip', 'netns', 'del', name]);
    await sh(['ip', 'netns', 'add', name]);
    this.#namespaces.push(name);
    await sh(['ip', '-n', name, 'link', 'set', 'lo', 'up']);
  }

  /** Runs `ip -n <ns> -batch -` with one command per line. */
  async #ipBatch(ns: string, lines: readonly string[]): Promise<void> {
    await sh(['ip', '-n', ns, '-batch', '-'], { input: `${lines.join('\n')}\n` });
  }

  /** Builds namespaces, bridge, veths, addresses and routes. */
  async build(o: TopologyOptions): Promise<void> {
    await this.#addNs(this.netNs);
    await this.#ipBatch(this.netNs, [
      'link add br0 type bridge',
      'link set br0 up',
      `addr add ${BRIDGE_ADDRESS}/24 dev br0`,
    ]);
    const attach = async (ns: string, port: string, address: string): Promise<void> => {
      await sh(['ip', '-n', this.netNs, 'link', 'add', port, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
      await this.#ipBatch(this.netNs, [`link set ${port} master br0`, `link set ${port} up`]);
      await this.#ipBatch(ns, [`addr add ${address}/24 dev eth0`, 'link set eth0 up']);
    };
    await this.#addNs(this.ctlNs);
    await attach(this.ctlNs, 'vctl', CONTROLLER_ADDRESS);
    for (let h = 1; h <= o.hosts; h++) {
      const ns = `${this.prefix}-h${h}`;
      await this.#addNs(ns);
      await attach(ns, `vh${h}`, hostAddress(h));
      this.hosts.set(h, { n: h, node: `h${h}`, ns, address: hostAddress(h), dataDir: join(this.dir, `h${h}`), agent: undefined });
      await sh(['ip', 'netns', 'exec', ns, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
    }
    const routes: Record<string, string[]> = {};
    for (let h = 1; h <= o.hosts; h++) {
      // The bridge namespace (where an outside client runs) reaches every pod network.
      (routes[this.netNs] ??= []).push(`route add ${podCidr(h)} via ${hostAddress(h)}`);
      for (let other = 1; other <= o.hosts; other++) {
        if (other !== h) (routes[this.host(h).ns] ??= []).push(`route add ${podCidr(other)} via ${hostAddress(other)}`);
      }
    }
    for (const [ns, lines] of Object.entries(routes)) await this.#ipBatch(ns, lines);
    for (const [hs, count] of Object.entries(o.pods)) {
      const h = Number(hs);
      const host = this.host(h);
      for (let i = 1; i <= count; i++) {
        const ns = this.podNs(h, i);
        await this.#addNs(ns);
        await sh(['ip', '-n', host.ns, 'link', 'add', `p${i}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
        await this.#ipBatch(host.ns, [
          `addr add ${podGateway(h)}/32 dev p${i}`,
          `link set p${i} up`,
          `route add ${podAddress(h, i)}/32 dev p${i}`,
        ]);
        await this.#ipBatch(ns, [
          `addr add ${podAddress(h, i)}/32 dev eth0`,
          'link set eth0 up',
          `route add ${podGateway(h)} dev eth0 scope link`,
          `route add default via ${podGateway(h)} dev eth0`,
        ]);
      }
    }
  }

  /** Starts a Node process in a namespace, torn down with the topology. */
  spawn(ns: string, file: string, args: readonly string[]): NsProc {
    const p = new NsProc(ns, file, args);
    this.#procs.add(p);
    void p.exited.then(() => this.#procs.delete(p));
    return p;
  }

  /** Starts fixtures/pod.ts in `ns` and waits until it reads commands. */
  async pod(ns: string, name: string, address: string): Promise<Pod> {
    const p = this.spawn(ns, POD_FIXTURE, []);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${ns}: pod driver not ready: ${p.stderrText}`)), 30_000);
      const check = (): void => {
        if (p.stdoutText.includes('ready\n')) {
          clearTimeout(timer);
          resolve();
        } else if (!p.running) {
          clearTimeout(timer);
          reject(new Error(`${ns}: pod driver exited: ${p.stderrText}`));
        } else setTimeout(check, 20);
      };
      check();
    });
    return new Pod(name, address, p);
  }

  // ---------------------------------------------------------------- control plane

  async startController(): Promise<void> {
    this.controller = this.spawn(this.ctlNs, CONTROLLER_MAIN, ['--data-dir', this.ctlDataDir, '--listen', CONTROLLER_GRPC, '--monitoring', `${CONTROLLER_ADDRESS}:15014`]);
    await this.controller.waitForLog((l) => l.msg === 'controller ready', 30_000, '"controller ready"');
  }

  /** ambitctl in the controller's namespace with the admin credentials from its data dir. */
  ambitctl(args: readonly string[], stdin?: string): Promise<RunResult> {
    return run(['ip', 'netns', 'exec', this.ctlNs, NODE, AMBITCTL_MAIN, '--controller', CONTROLLER_GRPC, '--credentials', join(this.ctlDataDir, 'admin'), ...args], { input: stdin ?? '', timeoutMs: 60_000 });
  }

  async ambitctlOk(args: readonly string[], stdin?: string): Promise<string> {
    const r = await this.ambitctl(args, stdin);
    if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')} exited ${r.code}: ${r.stderr.trim()}`);
    return r.stdout;
  }

  // ---------------------------------------------------------------- agents

  /**
   * Starts host h's agent (transparent capture of its pods' traffic, or with
   * captureMode 'vm' of its registered workloads' uids) and waits for "agent
   * started"; with join, bootstraps with a fresh token.
   */
  async startAgent(h: number, o: { mode?: 'strict' | 'permissive'; join?: boolean; captureMode?: 'pod' | 'vm' } = {}): Promise<NsProc> {
    const host = this.host(h);
    if (host.agent?.running) throw new Error(`agent on h${h} is already running`);
    const join = o.join ? ['--join', (await this.ambitctlOk(['node', 'token', 'create', '--node', host.node])).trim()] : [];
    const agent = this.spawn(host.ns, AGENT_MAIN, [
      '--node', host.node, '--address', host.address, '--controller', CONTROLLER_GRPC, '--data-dir', host.dataDir,
      '--capture', 'transparent', ...(o.captureMode === 'vm' ? ['--capture-mode', 'vm'] : ['--capture-mode', 'pod', '--pod-cidrs', podCidr(h)]), '--mode', o.mode ?? 'strict',
      '--drain-timeout', '2s', ...join,
    ]);
    host.agent = agent;
    await agent.waitForLog((l) => l.msg === 'agent started', 30_000, '"agent started"');
    return agent;
  }

  agent(h: number): NsProc {
    const a = this.host(h).agent;
    if (!a) throw new Error(`no agent on h${h}`);
    return a;
  }

  /** SIGTERM (graceful: drain, remove capture rules) and wait for exit. */
  async stopAgent(h: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return this.agent(h).stop('SIGTERM', 15_000);
  }

  /** GET from inside a namespace with curl; status 0 when nothing answered. */
  async httpGet(ns: string, url: string): Promise<{ status: number; body: string }> {
    const r = await run(['ip', 'netns', 'exec', ns, 'curl', '-s', '--max-time', '5', '-w', '\n%{http_code}', url]);
    const i = r.stdout.lastIndexOf('\n');
    return { status: Number(r.stdout.slice(i + 1)) || 0, body: r.stdout.slice(0, Math.max(0, i)) };
  }

  /** Host h's Prometheus text, read from inside its namespace. */
  async metrics(h: number): Promise<string> {
    const r = await this.httpGet(this.host(h).ns, `http://${hostAddress(h)}:15020/metrics`);
    if (r.status !== 200) throw new Error(`h${h} /metrics answered ${r.status}`);
    return r.body;
  }

  async ready(h: number): Promise<boolean> {
    return (await this.httpGet(this.host(h).ns, `http://${hostAddress(h)}:15021/healthz/ready`)).status === 200;
  }

  /** Host h's admin /config_dump (loopback admin port, read from inside its namespace). */
  async configDump(h: number): Promise<Json> {
    const r = await this.httpGet(this.host(h).ns, 'http://127.0.0.1:15000/config_dump');
    if (r.status !== 200) throw new Error(`h${h} /config_dump answered ${r.status}`);
    return JSON.parse(r.body) as Json;
  }

  /** `iptables -t nat -S` inside host h. */
  async natRules(h: number): Promise<string[]> {
    return (await sh(['ip', 'netns', 'exec', this.host(h).ns, 'iptables', '-w', '5', '-t', 'nat', '-S'])).split('\n').filter((l) => l !== '');
  }

  // ---------------------------------------------------------------- packet capture

  /** tcpdump on `iface` in `ns`, writing a pcap; stop() ends it and returns the file's bytes. */
  async tcpdump(ns: string, iface: string, name: string): Promise<{ stop: () => Promise<Buffer> }> {
    const file = join(this.dir, `${name}.pcap`);
    // --immediate-mode: hand each packet over at once (with the default TPACKET_V3
    // ring, packets of a block not yet retired are lost when tcpdump is
    // interrupted); -U: write each packet as it comes; -Z root: no privilege
    // drop, so it can write into our 0700 directory.
    const child = spawn('ip', ['netns', 'exec', ns, 'tcpdump', '-i', iface, '-n', '--immediate-mode', '-U', '-s', '0', '-Z', 'root', '-w', file, 'tcp'], { stdio: ['ignore', 'ignore', 'pipe'] });
    this.#children.add(child);
    let stderr = '';
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`tcpdump did not start: ${stderr}`)), 10_000);
      child.stderr!.on('data', (d: Buffer) => {
        stderr += d.toString();
        if (stderr.includes('listening on')) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`tcpdump exited ${code}: ${stderr}`));
      });
    });
    return {
      stop: async () => {
        if (child.exitCode === null && child.signalCode === null) {
          await new Promise((r) => setTimeout(r, 200)); // the last ACKs and FINs
          const exited = once(child, 'exit');
          child.kill('SIGINT');
          await exited;
        }
        this.#children.delete(child);
        return readFileSync(file);
      },
    };
  }

  // ---------------------------------------------------------------- teardown

  /** Kills every process started here and deletes every namespace and file. Safe to call twice. */
  async destroy(): Promise<void> {
    for (const c of this.#children) c.kill('SIGKILL');
    await Promise.all([...this.#procs].map((p) => p.stop('SIGKILL', 2000)));
    for (const ns of this.#namespaces.splice(0).reverse()) {
      await killNamespacePids(ns);
      await run(['ip', 'netns', 'del', ns]);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
