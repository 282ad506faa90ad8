/**
 * Transparent capture: the iptables (nat table) rules that steer workload
 * traffic into the agent's capture listeners (DESIGN §3, "Capture").
 *
 * Ownership invariants:
 * - Ambit only ever writes to its own chains, AMBIT_OUTPUT and AMBIT_PREROUTING,
 *   plus exactly one jump into each from the built-in OUTPUT / PREROUTING
 *   chains. Rules of other software in the nat table are never touched.
 * - Chains are always rewritten whole with `iptables-restore --noflush`: the
 *   kernel applies the batch in one transaction, so a chain is never seen
 *   half-filled and a failed batch leaves the previous rules in place.
 * - The agent's own traffic (uid `agentUid`) is never captured, otherwise the
 *   agent's dials to upstreams would be redirected back to itself (a loop).
 *
 * What is rendered (v4 with iptables; v6 with ip6tables only when a workload
 * address or pod CIDR is IPv6):
 *
 * AMBIT_OUTPUT (locally generated traffic), both modes:
 *   1. agent uid                          → RETURN (no loops)
 *   2. loopback destination               → RETURN (local traffic is not mesh traffic)
 *   3. each workload uid (owner match)    → REDIRECT outboundPort
 * AMBIT_PREROUTING (traffic arriving from other hosts or from pod veths):
 *   1. to one of the agent's ports on a local address → RETURN (HBONE from
 *      other agents, and pods talking to their node's agent, stay untouched
 *      even if a workload claims the same port)
 *   2. pod mode: source is a registered local pod (its address, inside a
 *      pod CIDR)                          → REDIRECT outboundPort. This comes
 *      before the inbound rules so that pod→pod traffic on the same node is
 *      captured as outbound (keeping the source identity) rather than as
 *      plaintext inbound.
 *   3. each local workload address:port   → REDIRECT inboundPlaintextPort.
 *      The agent's own dials to local workloads leave through OUTPUT, never
 *      PREROUTING, so "except from the agent" holds without a rule here.
 *
 * Notes for the listeners: REDIRECT in OUTPUT rewrites the destination to
 * 127.0.0.1 (::1), so in VM mode the outbound listener must accept on
 * loopback (bind 0.0.0.0 or 127.0.0.1). REDIRECT in PREROUTING rewrites it to
 * the primary address of the incoming interface, which must therefore have
 * one (a pod-facing veth without an address drops redirected packets).
 */
import { spawn } from 'node:child_process';
import { isIP } from 'node:net';
import { AmbitError, errorMessage } from '../../shared/errors.ts';
import { canonicalIp, cidrContains, parseCidr, parseIp } from '../../shared/net-address.ts';
import type { IpFamily } from '../../shared/net-address.ts';

export type CaptureMode = 'vm' | 'pod';

export interface CaptureWorkload {
  readonly address: string;
  readonly ports: readonly number[];
}

export interface CaptureExecOptions {
  /** Written to the command's stdin (the ruleset for iptables-restore). */
  readonly input?: string;
}

/**
 * Runs iptables, ip6tables, iptables-restore or ip6tables-restore. Resolves with
 * stdout on exit status 0 and rejects otherwise. It must pass `options.input`
 * to the command's stdin: iptables-restore reads its ruleset from there.
 */
export type CaptureExec = (argv: readonly string[], options?: CaptureExecOptions) => Promise<{ stdout: string }>;

export interface CaptureOptions {
  readonly mode: CaptureMode;
  readonly outboundPort: number;
  readonly inboundPlaintextPort: number;
  readonly hbonePort: number;
  /** The agent's own uid: its traffic is never captured. */
  readonly agentUid: number;
  /** Owner-match outbound capture for these uids (VM workloads). */
  readonly workloadUids: readonly number[];
  /** Inbound plaintext to these address:port pairs goes to inboundPlaintextPort. */
  readonly localWorkloads: readonly CaptureWorkload[];
  /** Pod mode: source CIDRs of the pods on this node (their veths). */
  readonly podCidrs?: readonly string[];
  readonly exec: CaptureExec;
}

export const CAPTURE_CHAINS = { output: 'AMBIT_OUTPUT', prerouting: 'AMBIT_PREROUTING' } as const;

const FAMILY = {
  4: { iptables: 'iptables', restore: 'iptables-restore', loopback: '127.0.0.0/8', hostBits: 32 },
  6: { iptables: 'ip6tables', restore: 'ip6tables-restore', loopback: '::1/128', hostBits: 128 },
} as const;

/** Each built-in chain and the Ambit chain it jumps into. */
const JUMPS = [
  { from: 'OUTPUT', to: CAPTURE_CHAINS.output },
  { from: 'PREROUTING', to: CAPTURE_CHAINS.prerouting },
] as const;

/** Seconds to wait for the xtables lock held by another iptables process. */
const LOCK_WAIT = ['-w', '5'] as const;

/** A rule as the argument list after `-A <chain>`, in `iptables -S` form. */
type RuleSpec = readonly string[];

interface Rendered {
  readonly output: readonly RuleSpec[];
  readonly prerouting: readonly RuleSpec[];
}

interface CidrText {
  readonly family: IpFamily;
  /** Canonical text, as `iptables -S` prints it. */
  readonly text: string;
}

export class CaptureRules {
  readonly #mode: CaptureMode;
  readonly #outboundPort: number;
  readonly #inboundPlaintextPort: number;
  readonly #hbonePort: number;
  readonly #agentUid: number;
  readonly #podCidrs: readonly CidrText[];
  readonly #exec: CaptureExec;
  #workloadUids: readonly number[];
  #localWorkloads: readonly CaptureWorkload[];
  /** True between install() and remove(): only then do updates reach the kernel. */
  #installed = false;
  /** Serializes kernel updates so two renders never interleave their batches. */
  #queue: Promise<unknown> = Promise.resolve();

  constructor(options: CaptureOptions) {
    if (options.mode !== 'vm' && options.mode !== 'pod') {
      throw invalid('mode', options.mode, "must be 'vm' or 'pod'");
    }
    this.#mode = options.mode;
    this.#outboundPort = checkPort('outboundPort', options.outboundPort);
    this.#inboundPlaintextPort = checkPort('inboundPlaintextPort', options.inboundPlaintextPort);
    this.#hbonePort = checkPort('hbonePort', options.hbonePort);
    if (new Set([this.#outboundPort, this.#inboundPlaintextPort, this.#hbonePort]).size !== 3) {
      throw invalid('ports', [this.#outboundPort, this.#inboundPlaintextPort, this.#hbonePort], 'outbound, inbound plaintext and HBONE ports must differ');
    }
    this.#agentUid = checkUid('agentUid', options.agentUid);
    const podCidrs = (options.podCidrs ?? []).map((cidr, i) => checkCidr(`podCidrs[${i}]`, cidr));
    if (this.#mode === 'pod' && podCidrs.length === 0) {
      throw invalid('podCidrs', options.podCidrs, 'pod mode needs at least one pod CIDR');
    }
    if (this.#mode === 'vm' && podCidrs.length > 0) {
      throw invalid('podCidrs', options.podCidrs, 'pod CIDRs are only meaningful in pod mode');
    }
    this.#podCidrs = dedupeBy(podCidrs, (c) => c.text);
    if (typeof options.exec !== 'function') throw invalid('exec', typeof options.exec, 'must be a function');
    this.#exec = options.exec;
    this.#workloadUids = this.#checkUids(options.workloadUids);
    this.#localWorkloads = checkWorkloads(options.localWorkloads);
  }

  /** The rules Ambit owns, as `iptables -S`-style commands (for /config_dump). */
  rules(): string[] {
    const lines: string[] = [];
    for (const family of this.#families()) {
      const tool = FAMILY[family].iptables;
      const rendered = this.#render(family);
      for (const jump of JUMPS) lines.push(`${tool} -t nat -A ${jump.from} -j ${jump.to}`);
      for (const rule of rendered.output) lines.push(`${tool} -t nat -A ${CAPTURE_CHAINS.output} ${rule.join(' ')}`);
      for (const rule of rendered.prerouting) lines.push(`${tool} -t nat -A ${CAPTURE_CHAINS.prerouting} ${rule.join(' ')}`);
    }
    return lines;
  }

  /**
   * Creates or refills the chains and ensures exactly one jump into each.
   * Idempotent: safe at every agent start, including after a crash that left
   * old rules behind.
   */
  install(): Promise<void> {
    return this.#serialize(async () => {
      await this.#apply();
      this.#installed = true;
    });
  }

  /**
   * Replaces the captured uids and local workloads. Before install() (or after
   * remove()) it only records them; otherwise the chains are re-rendered in
   * one iptables-restore transaction per family.
   */
  updateWorkloads(workloadUids: readonly number[], localWorkloads: readonly CaptureWorkload[]): Promise<void> {
    const uids = this.#checkUids(workloadUids);
    const workloads = checkWorkloads(localWorkloads);
    return this.#serialize(async () => {
      this.#workloadUids = uids;
      this.#localWorkloads = workloads;
      if (this.#installed) await this.#apply();
    });
  }

  /** Deletes the jumps and the chains. Idempotent: absent rules are not an error. */
  remove(): Promise<void> {
    return this.#serialize(async () => {
      this.#installed = false;
      await this.#removeFamily(4, { tolerateUnavailable: false });
      // ip6tables may be missing or lack a nat table on hosts without IPv6;
      // then there is nothing of ours to remove either.
      await this.#removeFamily(6, { tolerateUnavailable: true });
    });
  }

  #serialize(task: () => Promise<void>): Promise<void> {
    const run = this.#queue.then(task, task);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  #checkUids(uids: readonly number[]): readonly number[] {
    if (!Array.isArray(uids)) throw invalid('workloadUids', uids, 'must be an array of uids');
    const checked = uids.map((uid, i) => checkUid(`workloadUids[${i}]`, uid));
    const agent = checked.indexOf(this.#agentUid);
    if (agent >= 0) {
      throw invalid(`workloadUids[${agent}]`, this.#agentUid, 'is the agent uid, whose traffic is never captured');
    }
    return Object.freeze([...new Set(checked)]);
  }

  /** IPv4 always; IPv6 only when something to capture is IPv6. */
  #families(): IpFamily[] {
    const v6 = this.#podCidrs.some((c) => c.family === 6) || this.#localWorkloads.some((w) => isIP(w.address) === 6);
    return v6 ? [4, 6] : [4];
  }

  #isPodAddress(address: string): boolean {
    const ip = parseIp(address);
    if (!ip) return false;
    return this.#podCidrs.some((c) => {
      const parsed = parseCidr(c.text);
      return parsed.ok && cidrContains(parsed.cidr, ip);
    });
  }

  #render(family: IpFamily): Rendered {
    const { loopback, hostBits } = FAMILY[family];
    const output: RuleSpec[] = [
      ['-p', 'tcp', '-m', 'owner', '--uid-owner', String(this.#agentUid), '-j', 'RETURN'],
      ['-d', loopback, '-j', 'RETURN'],
      ...this.#workloadUids.map((uid) => ['-p', 'tcp', '-m', 'owner', '--uid-owner', String(uid), '-j', 'REDIRECT', '--to-ports', String(this.#outboundPort)]),
    ];
    const agentPorts = [this.#outboundPort, this.#inboundPlaintextPort, this.#hbonePort].sort((a, b) => a - b).join(',');
    const prerouting: RuleSpec[] = [
      ['-p', 'tcp', '-m', 'addrtype', '--dst-type', 'LOCAL', '-m', 'multiport', '--dports', agentPorts, '-j', 'RETURN'],
    ];
    // Pod mode captures the outbound traffic of *registered* pods only (their
    // addresses inside the node's pod CIDRs), as Istio ambient captures only
    // enrolled pods: a pod outside the mesh keeps its own networking instead
    // of being redirected to an agent that does not know it and must reset it.
    for (const workload of this.#localWorkloads) {
      if (isIP(workload.address) !== family || !this.#isPodAddress(workload.address)) continue;
      prerouting.push(['-s', `${workload.address}/${hostBits}`, '-p', 'tcp', '-j', 'REDIRECT', '--to-ports', String(this.#outboundPort)]);
    }
    for (const workload of this.#localWorkloads) {
      if (isIP(workload.address) !== family) continue;
      for (const port of workload.ports) {
        prerouting.push([
          '-d', `${workload.address}/${hostBits}`, '-p', 'tcp', '-m', 'tcp', '--dport', String(port),
          '-j', 'REDIRECT', '--to-ports', String(this.#inboundPlaintextPort),
        ]);
      }
    }
    return { output, prerouting };
  }

  async #apply(): Promise<void> {
    const wanted = this.#families();
    for (const family of wanted) await this.#applyFamily(family);
    // A family no longer needed (the last IPv6 workload left) must not keep
    // capturing with stale rules.
    if (!wanted.includes(6)) await this.#removeFamily(6, { tolerateUnavailable: true });
  }

  async #applyFamily(family: IpFamily): Promise<void> {
    const state = await this.#listNat(family);
    const rendered = this.#render(family);
    const lines = ['*nat'];
    // With --noflush, declaring a user chain creates it if missing and
    // flushes it if present; built-in chains and other chains are untouched.
    lines.push(`:${CAPTURE_CHAINS.output} - [0:0]`, `:${CAPTURE_CHAINS.prerouting} - [0:0]`);
    for (const rule of rendered.output) lines.push(`-A ${CAPTURE_CHAINS.output} ${rule.join(' ')}`);
    for (const rule of rendered.prerouting) lines.push(`-A ${CAPTURE_CHAINS.prerouting} ${rule.join(' ')}`);
    for (const jump of JUMPS) {
      // Keep one canonical jump; drop duplicates and variants left by an
      // earlier run or by hand. A new jump goes first so that rules of other
      // software in the same chain cannot bypass capture.
      const existing = state.jumps.filter((j) => j.from === jump.from && j.to === jump.to);
      const canonical = existing.find((j) => j.spec.length === 2 && j.spec[0] === '-j');
      for (const j of existing) if (j !== canonical) lines.push(`-D ${j.from} ${j.spec.join(' ')}`);
      if (canonical === undefined) lines.push(`-I ${jump.from} 1 -j ${jump.to}`);
    }
    lines.push('COMMIT', '');
    await this.#run(family, [FAMILY[family].restore, ...LOCK_WAIT, '--noflush'], lines.join('\n'));
  }

  async #removeFamily(family: IpFamily, options: { tolerateUnavailable: boolean }): Promise<void> {
    let state: NatState;
    try {
      state = await this.#listNat(family);
    } catch (err) {
      if (options.tolerateUnavailable) return;
      throw err;
    }
    if (state.jumps.length === 0 && state.chains.length === 0) return;
    // Jumps first: a chain that is still referenced cannot be deleted.
    const lines = ['*nat'];
    for (const j of state.jumps) lines.push(`-D ${j.from} ${j.spec.join(' ')}`);
    for (const chain of state.chains) lines.push(`-F ${chain}`, `-X ${chain}`);
    lines.push('COMMIT', '');
    await this.#run(family, [FAMILY[family].restore, ...LOCK_WAIT, '--noflush'], lines.join('\n'));
  }

  /** Our chains and every rule anywhere in the nat table that jumps into one. */
  async #listNat(family: IpFamily): Promise<NatState> {
    const { stdout } = await this.#run(family, [FAMILY[family].iptables, ...LOCK_WAIT, '-t', 'nat', '-S']);
    return parseNat(stdout);
  }

  async #run(family: IpFamily, argv: readonly string[], input?: string): Promise<{ stdout: string }> {
    try {
      return await this.#exec(argv, input === undefined ? undefined : { input });
    } catch (err) {
      throw new AmbitError('AMBIT_ERR_INTERNAL', `capture: ${argv[0]} failed: ${errorMessage(err)}`, {
        cause: err,
        details: { argv: [...argv], family, ...(input === undefined ? {} : { input }) },
      });
    }
  }
}

interface NatJump {
  readonly from: string;
  readonly to: string;
  /** The rule's arguments after `-A <from>`, usable as `-D <from> <spec>`. */
  readonly spec: readonly string[];
}

interface NatState {
  readonly chains: readonly string[];
  readonly jumps: readonly NatJump[];
}

const OUR_CHAINS: ReadonlySet<string> = new Set(Object.values(CAPTURE_CHAINS));

/** Parses `iptables -t nat -S`: our `-N` chains and the rules jumping into them. */
function parseNat(listing: string): NatState {
  const chains: string[] = [];
  const jumps: NatJump[] = [];
  for (const line of listing.split('\n')) {
    const tokens = line.trim().split(/\s+/);
    if (tokens[0] === '-N' && tokens[1] !== undefined && OUR_CHAINS.has(tokens[1])) chains.push(tokens[1]);
    if (tokens[0] !== '-A' || tokens[1] === undefined) continue;
    const spec = tokens.slice(2);
    for (let i = 0; i < spec.length - 1; i++) {
      const target = spec[i + 1];
      if ((spec[i] === '-j' || spec[i] === '-g') && target !== undefined && OUR_CHAINS.has(target)) {
        jumps.push({ from: tokens[1], to: target, spec });
        break;
      }
    }
  }
  return { chains, jumps };
}

/**
 * The default exec: spawns the command without a shell (argv is passed as is,
 * so no value can be interpreted by a shell) and feeds `input` to stdin.
 */
export function spawnCaptureExec(argv: readonly string[], options: CaptureExecOptions = {}): Promise<{ stdout: string }> {
  return new Promise((resolve, reject) => {
    const [command, ...args] = argv;
    if (command === undefined) {
      reject(new Error('empty argv'));
      return;
    }
    const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (code === 0) {
        resolve({ stdout: Buffer.concat(stdout).toString('utf8') });
        return;
      }
      const text = Buffer.concat(stderr).toString('utf8').trim();
      reject(new Error(`${argv.join(' ')} exited with ${code ?? signal}${text === '' ? '' : `: ${text}`}`));
    });
    // A command that exits before reading stdin makes the write fail with
    // EPIPE; its exit status already tells what went wrong.
    child.stdin.on('error', () => undefined);
    child.stdin.end(options.input ?? '');
  });
}

function invalid(key: string, value: unknown, why: string): AmbitError {
  return new AmbitError('AMBIT_ERR_CONFIG_INVALID', `capture: ${key} ${why} (got ${JSON.stringify(value)})`, {
    details: { key: `capture.${key}`, value },
  });
}

function checkPort(key: string, port: unknown): number {
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw invalid(key, port, 'must be an integer port between 1 and 65535');
  }
  return port;
}

function checkUid(key: string, uid: unknown): number {
  if (typeof uid !== 'number' || !Number.isInteger(uid) || uid < 0 || uid > 0xfffffffe) {
    throw invalid(key, uid, 'must be a non-negative integer uid');
  }
  return uid;
}

/**
 * Validates, canonicalizes (addresses as iptables prints them) and de-duplicates
 * the workloads, so that every rendered rule is unique and matches `-S` output.
 */
function checkWorkloads(workloads: readonly CaptureWorkload[]): readonly CaptureWorkload[] {
  if (!Array.isArray(workloads)) throw invalid('localWorkloads', workloads, 'must be an array');
  const seen = new Set<string>();
  const result: CaptureWorkload[] = [];
  workloads.forEach((workload, i) => {
    if (typeof workload !== 'object' || workload === null || typeof workload.address !== 'string') {
      throw invalid(`localWorkloads[${i}]`, workload, 'must be { address, ports }');
    }
    const address = canonicalIp(workload.address);
    if (address === undefined) throw invalid(`localWorkloads[${i}].address`, workload.address, 'must be an IP address');
    const given: unknown = workload.ports;
    if (!Array.isArray(given)) throw invalid(`localWorkloads[${i}].ports`, given, 'must be an array');
    const ports: number[] = [];
    given.forEach((value: unknown, j: number) => {
      const port = checkPort(`localWorkloads[${i}].ports[${j}]`, value);
      const key = `${address}|${port}`;
      if (seen.has(key)) return;
      seen.add(key);
      ports.push(port);
    });
    // Kept even without ports: a pod's outbound capture needs only its address.
    result.push(Object.freeze({ address, ports: Object.freeze(ports) }));
  });
  return Object.freeze(result);
}

function checkCidr(key: string, value: unknown): CidrText {
  if (typeof value !== 'string') throw invalid(key, value, 'must be a CIDR such as 10.244.1.0/24');
  const parsed = parseCidr(value);
  // Host bits are refused rather than masked as iptables would: a typo there
  // would capture a different range than the operator meant.
  if (!parsed.ok) throw invalid(key, value, parsed.reason);
  return { family: parsed.cidr.network.family, text: parsed.text };
}

function dedupeBy<T>(items: readonly T[], key: (item: T) => string): readonly T[] {
  const byKey = new Map<string, T>();
  for (const item of items) if (!byKey.has(key(item))) byKey.set(key(item), item);
  return Object.freeze([...byKey.values()]);
}
