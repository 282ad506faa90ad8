/**
 * Shared set-up for the rotation / outage end-to-end tests (issue 6, promises
 * 1–3): one controller and two agents on loopback as two hosts, a client
 * workload on node-a, an echo server (the "web" workload) on node-b, and
 * traffic generators that check every byte that comes back.
 *
 * Each test file passes its own address block (127.0.13.x by default) so
 * files can run in parallel.
 */
import { randomBytes, X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import { type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseCertificates } from '../../../shared/tls.ts';
import { agentKnowsNode, agentsReady, ambitctl, httpGet, hostPortOf, metricValue, setUp, startAgentPair, startEchoServer, startController, type RunningAgent, type RunningController, socksConnect } from '../harness.ts';

export const TD = 'cluster.local';
export const CLIENT_ID = `spiffe://${TD}/ns/default/sa/client`;
export const WEB_ID = `spiffe://${TD}/ns/default/sa/web`;
export const WEB_PORT = 8080;

export interface Mesh {
  readonly root: string;
  ctl: RunningController;
  readonly ctlExtra: readonly string[];
  readonly agentA: RunningAgent;
  readonly agentB: RunningAgent;
  readonly web: Server;
  readonly ips: { ctl: string; a: string; b: string; client: string; web: string };
  ok(args: string[], stdin?: string): Promise<string>;
  close(): Promise<void>;
}

/** `base` is the first of five consecutive `<net>.x` addresses, e.g. 1 → .1 controller, .2/.3 agents, .4 client, .5 web. */
export async function startMesh(name: string, base: number, ctlExtra: readonly string[], net = '127.0.13'): Promise<Mesh> {
  const ip = (i: number): string => `${net}.${base + i}`;
  const ips = { ctl: ip(0), a: ip(1), b: ip(2), client: ip(3), web: ip(4) };
  const root = mkdtempSync(join(tmpdir(), `ambit-e2e-${name}-`));
  return setUp(async (started) => {
    const web = await startEchoServer(ips.web, WEB_PORT);
    started(() => web.close());
    const ctl = await startController(join(root, 'ctl'), ctlExtra, ips.ctl);
    started(() => ctl.proc.stop());
    const ok = async (args: string[], stdin?: string): Promise<string> => {
      const r = await ambitctl(mesh.ctl, args, stdin);
      if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')} failed: ${r.stderr}`);
      return r.stdout;
    };
    const mesh = { root, ctl, ctlExtra, ips, web, ok } as unknown as Mesh & { agentA: RunningAgent; agentB: RunningAgent };
    await ok(['workload', 'register', '--name', 'web', '--service-account', 'web', '--node', 'node-b', '--address', ips.web, '--port', String(WEB_PORT), '--label', 'app=web']);
    await ok(['workload', 'register', '--name', 'client', '--service-account', 'client', '--node', 'node-a', '--address', ips.client]);
    const ta = (await ok(['node', 'token', 'create', '--node', 'node-a'])).trim();
    const tb = (await ok(['node', 'token', 'create', '--node', 'node-b'])).trim();
    const [a, b] = await startAgentPair(started, [
      { node: 'node-a', address: ips.a, controller: ctl.address, dataDir: join(root, 'a'), join: ta },
      { node: 'node-b', address: ips.b, controller: ctl.address, dataDir: join(root, 'b'), join: tb },
    ]);
    mesh.agentA = a;
    mesh.agentB = b;
    mesh.close = async () => {
      await Promise.all([a.proc.stop(), b.proc.stop()]);
      await mesh.ctl.proc.stop();
      web.close();
    };
    await agentsReady([a, b], 20_000);
    await agentKnowsNode(a, 'node-b');
    return mesh;
  });
}

export interface CertStatus {
  readonly identity: string;
  readonly state: string;
  readonly serial: string;
  readonly notAfter: string;
  readonly chainPem: string;
}

export async function certsOf(agent: RunningAgent): Promise<CertStatus[]> {
  return JSON.parse((await httpGet(hostPortOf(agent.admin), '/certs')).body) as CertStatus[];
}

/** Serial of the current certificate of `identity` on `agent` ('' when none). */
export async function serialOf(agent: RunningAgent, identity: string): Promise<string> {
  return (await certsOf(agent)).find((c) => c.identity === identity && c.state === 'valid')?.serial ?? '';
}

export async function metric(agent: RunningAgent, name: string, labels: Record<string, string> = {}): Promise<number> {
  return metricValue((await httpGet(hostPortOf(agent.metrics), '/metrics')).body, name, labels);
}

/** Roots in the trust bundle the agent persisted (node.json, rewritten when the bundle changes). */
export function agentBundle(agent: RunningAgent): X509Certificate[] {
  const info = JSON.parse(readFileSync(join(agent.dataDir, 'node.json'), 'utf8')) as { bundlePem: string };
  return parseCertificates(info.bundlePem);
}

/** Whether the leaf of `chainPem` was signed by `root`. */
export function issuedBy(chainPem: string, root: X509Certificate): boolean {
  const leaf = parseCertificates(chainPem)[0];
  return leaf !== undefined && leaf.checkIssued(root) && leaf.verify(root.publicKey);
}

/** SOCKS5 CONNECT as a workload (the harness's helper, under the name this suite uses). */
export const socks = socksConnect;

/** Writes `chunk` and resolves once exactly the same bytes came back (rejects on mismatch, close or timeout). */
function echoRound(socket: Socket, chunk: Buffer, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let got = 0;
    const done = (err?: Error): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onClose);
      socket.off('error', onError);
      socket.pause();
      if (err) reject(err);
      else resolve();
    };
    const onData = (d: Buffer): void => {
      parts.push(d);
      got += d.length;
      if (got < chunk.length) return;
      const back = Buffer.concat(parts);
      done(back.equals(chunk) ? undefined : new Error(`echo mismatch (${back.length} bytes back for ${chunk.length})`));
    };
    const onClose = (): void => done(new Error(`connection closed after ${got}/${chunk.length} bytes of the echo`));
    const onError = (e: Error): void => done(e);
    const timer = setTimeout(() => done(new Error(`echo timed out (${got}/${chunk.length} bytes)`)), timeoutMs);
    socket.on('data', onData);
    socket.once('close', onClose);
    socket.once('error', onError);
    socket.resume();
    socket.write(chunk);
  });
}

export interface TrafficReport {
  /** Long-lived connection: echo rounds that came back intact / that failed. */
  readonly longRounds: number;
  readonly longFailures: string[];
  /** New connections: how many opened, echoed and closed fine / failed (with why). */
  readonly newOk: number;
  readonly newFailures: string[];
  /**
   * The longest stretch without a new connection completing fine, from the
   * start to now (or the stop): what "connections kept opening throughout"
   * means, independent of how long the run took.
   */
  readonly longestOkGapMs: number;
}

/**
 * Traffic through the mesh (node-a → node-b): one long-lived connection that
 * echoes a random chunk every `roundMs`, and a new connection every
 * `newEveryMs` that echoes one chunk and closes.
 */
export class Traffic {
  readonly #mesh: Mesh;
  #running = true;
  #long: Socket | undefined;
  #longRounds = 0;
  readonly #longFailures: string[] = [];
  #newOk = 0;
  readonly #newFailures: string[] = [];
  #lastOkAt = Date.now();
  #longestOkGapMs = 0;
  #stoppedAt: number | undefined;
  readonly #inflight = new Set<Promise<void>>();
  #loops: Promise<void>[] = [];

  private constructor(mesh: Mesh) {
    this.#mesh = mesh;
  }

  static async start(mesh: Mesh, o: { newEveryMs?: number; roundMs?: number } = {}): Promise<Traffic> {
    const t = new Traffic(mesh);
    const { socket, reply } = await socks(mesh.agentA.socks, mesh.ips.client, 'default/client', mesh.ips.web, WEB_PORT);
    if (reply !== 0) throw new Error(`long-lived connection refused (SOCKS reply ${reply})`);
    t.#long = socket;
    t.#loops = [t.#longLoop(o.roundMs ?? 100), t.#newLoop(o.newEveryMs ?? 200)];
    return t;
  }

  /** Opens one new connection and echoes through it now; resolves with '' on success or why it failed. */
  oneNew(): Promise<string> {
    return newConnection(this.#mesh);
  }

  report(): TrafficReport {
    const openGap = (this.#stoppedAt ?? Date.now()) - this.#lastOkAt;
    return {
      longRounds: this.#longRounds,
      longFailures: [...this.#longFailures],
      newOk: this.#newOk,
      newFailures: [...this.#newFailures],
      longestOkGapMs: Math.max(this.#longestOkGapMs, openGap),
    };
  }

  async #longLoop(roundMs: number): Promise<void> {
    while (this.#running) {
      try {
        await echoRound(this.#long!, randomBytes(8 * 1024 + Math.floor(Math.random() * 8 * 1024)), 5_000);
        this.#longRounds++;
      } catch (err) {
        this.#longFailures.push(`${new Date().toISOString()} ${(err as Error).message}`);
        return; // the long-lived connection is gone: that is the failure
      }
      await new Promise((r) => setTimeout(r, roundMs));
    }
  }

  async #newLoop(everyMs: number): Promise<void> {
    while (this.#running) {
      const p: Promise<void> = newConnection(this.#mesh).then((why) => {
        if (why) this.#newFailures.push(`${new Date().toISOString()} ${why}`);
        else {
          const now = Date.now();
          this.#longestOkGapMs = Math.max(this.#longestOkGapMs, now - this.#lastOkAt);
          this.#lastOkAt = now;
          this.#newOk++;
        }
      }).finally(() => this.#inflight.delete(p));
      this.#inflight.add(p);
      await new Promise((r) => setTimeout(r, everyMs));
    }
  }

  /** Stops generating, waits for connections in flight, checks the long-lived one once more and closes it. */
  async stop(): Promise<TrafficReport> {
    this.#running = false;
    this.#stoppedAt = Date.now();
    await Promise.all(this.#loops);
    await Promise.all([...this.#inflight]);
    if (this.#longFailures.length === 0) {
      try {
        await echoRound(this.#long!, randomBytes(64 * 1024), 5_000);
        this.#longRounds++;
      } catch (err) {
        this.#longFailures.push(`final round: ${(err as Error).message}`);
      }
    }
    this.#long?.destroy();
    return this.report();
  }
}

/** Opens one connection node-a → node-b and echoes through it; resolves with '' on success or why it failed. */
export async function newConnection(mesh: Mesh): Promise<string> {
  let socket: Socket | undefined;
  try {
    const r = await socks(mesh.agentA.socks, mesh.ips.client, 'default/client', mesh.ips.web, WEB_PORT);
    socket = r.socket;
    if (r.reply !== 0) return `SOCKS reply ${r.reply}`;
    await echoRound(socket, randomBytes(4096), 5_000);
    return '';
  } catch (err) {
    return (err as Error).message;
  } finally {
    socket?.destroy();
  }
}

/** Some agent log lines, for diagnosing a failure. */
export function recentLogs(mesh: Mesh, n = 10): string {
  const pick = (a: RunningAgent): string => a.proc.logs.filter((l) => l.level !== 'info' || l.msg !== 'connection').slice(-n).map((l) => JSON.stringify(l)).join('\n');
  return `node-a:\n${pick(mesh.agentA)}\nnode-b:\n${pick(mesh.agentB)}`;
}
