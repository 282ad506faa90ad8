/**
 * Runs the real binaries (ambit-controller, ambitctl) as child processes on
 * loopback for end-to-end tests. Entry points run from source through Node's
 * type stripping — the same modules package.json's bin entries are built from
 * (test/e2e/bin.test.ts checks the built ones start too).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, type Hash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import type { HostPort } from '../../shared/config-parse.ts';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CONTROLLER_MAIN = join(ROOT, 'controller/main.ts');
export const AMBITCTL_MAIN = join(ROOT, 'controller/cli/main.ts');
export const AGENT_MAIN = join(ROOT, 'agent/main.ts');

export interface LogLine {
  readonly level: string;
  readonly msg: string;
  readonly [k: string]: unknown;
}

/**
 * Every chunk of `stream` (as text) to onText, and each whole line that is a
 * JSON object to onJson: how the tests read the daemons' JSON logs. Other
 * lines (a stack trace, a warning) only reach onText.
 */
export function readJsonLines(stream: NodeJS.ReadableStream, onText: (text: string) => void, onJson: (value: Record<string, unknown>) => void): void {
  stream.setEncoding('utf8');
  stream.on('data', onText);
  createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => {
    if (!line.startsWith('{')) return;
    let value: Record<string, unknown>;
    try {
      value = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return; // not a log line
    }
    onJson(value);
  });
}

/**
 * Every child a Proc started and that has not exited. A test file that ends
 * without its teardowns must not leave them running, holding their
 * addresses: tap's timeout signals the file with SIGALRM and then kills it
 * (its 'exit' handlers never run), so they are killed on either signal.
 */
const running = new Set<ChildProcess>();
const killRunning = (): void => {
  for (const c of running) c.kill('SIGKILL');
};
process.on('exit', killRunning);
process.on('SIGALRM', killRunning);

export class Proc {
  readonly child: ChildProcess;
  readonly logs: LogLine[] = [];
  stderrText = '';
  readonly #waiters = new Set<{ pred: (l: LogLine) => boolean; resolve: (l: LogLine) => void }>();
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  /** `prefix`: a command that execs the rest (e.g. unshare): the process is still node's, under that command's pid. */
  constructor(file: string, args: readonly string[], env: Record<string, string> = {}, prefix: readonly string[] = []) {
    const argv = [...prefix, process.execPath, file, ...args];
    this.child = spawn(argv[0]!, argv.slice(1), { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    readJsonLines(this.child.stderr!, (d) => (this.stderrText += d), (v) => {
      const l = v as LogLine;
      this.logs.push(l);
      for (const w of this.#waiters) if (w.pred(l)) {
        this.#waiters.delete(w);
        w.resolve(l);
      }
    });
    this.child.stdout!.resume();
    running.add(this.child);
    this.exited = once(this.child, 'exit').then(([code, signal]) => {
      running.delete(this.child);
      return { code: code as number | null, signal: signal as NodeJS.Signals | null };
    });
  }

  /** Resolves with the first log line (already seen or future) matching pred; rejects on timeout or exit. */
  waitForLog(pred: (l: LogLine) => boolean, timeoutMs = 20_000): Promise<LogLine> {
    const seen = this.logs.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const w = { pred, resolve: (l: LogLine) => { clearTimeout(timer); resolve(l); } };
      const timer = setTimeout(() => {
        this.#waiters.delete(w);
        reject(new Error(`timed out waiting for a log line; stderr so far:\n${this.stderrText.slice(-3000)}`));
      }, timeoutMs);
      this.#waiters.add(w);
      void this.exited.then(({ code, signal }) => {
        if (this.#waiters.delete(w)) {
          clearTimeout(timer);
          reject(new Error(`process exited (code ${code}, signal ${signal}) before the log line; stderr:\n${this.stderrText.slice(-3000)}`));
        }
      });
    });
  }

  /** waitForLog for a start-up line; a process that never says it started is stopped (not left running) before the error goes on. */
  async startedWhen(pred: (l: LogLine) => boolean, timeoutMs = 20_000): Promise<LogLine> {
    try {
      return await this.waitForLog(pred, timeoutMs);
    } catch (err) {
      await this.stop('SIGKILL');
      throw err;
    }
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 10_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return this.exited;
    this.child.kill(signal);
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    const r = await this.exited;
    clearTimeout(t);
    return r;
  }
}

export interface RunningController {
  readonly proc: Proc;
  readonly grpc: HostPort;
  readonly monitoring: HostPort;
  readonly dataDir: string;
  readonly credentials: string;
  readonly address: string;
  /** The web console's URL ("https://host:port"), or "off". */
  readonly console: string;
}

/** Starts ambit-controller on 127.0.0.1 with OS-chosen ports (the console's too, unless `extra` sets --console) and waits for "controller ready". */
export async function startController(dataDir: string, extra: readonly string[] = [], host = '127.0.0.1', ports: { grpc?: number; monitoring?: number } = {}, main = CONTROLLER_MAIN): Promise<RunningController> {
  const consoleArgs = extra.includes('--console') ? [] : ['--console', `${host}:0`];
  const proc = new Proc(main, ['--data-dir', dataDir, '--listen', `${host}:${ports.grpc ?? 0}`, '--monitoring', `${host}:${ports.monitoring ?? 0}`, ...consoleArgs, ...extra]);
  const ready = await proc.startedWhen((l) => l.msg === 'controller ready');
  const grpcPort = Number(String(ready.grpc).split(':').pop());
  const monPort = Number(String(ready.monitoring).split(':').pop());
  return {
    proc,
    grpc: { host, port: grpcPort },
    monitoring: { host, port: monPort },
    dataDir,
    credentials: join(dataDir, 'admin'),
    address: `${host}:${grpcPort}`,
    console: String(ready.console ?? 'off'),
  };
}

export interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs ambitctl against a controller; stdin optional. */
export async function ambitctl(c: { address: string; credentials: string }, args: readonly string[], stdin?: string): Promise<CliResult> {
  const child = spawn(process.execPath, [AMBITCTL_MAIN, '--controller', c.address, '--credentials', c.credentials, ...args], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, NODE_NO_WARNINGS: '1' },
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  child.stdin.end(stdin ?? '');
  const [code] = await once(child, 'exit');
  return { code: code as number | null, stdout, stderr };
}

export async function httpGet(at: HostPort, path: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`http://${at.host}:${at.port}${path}`);
  return { status: res.status, body: await res.text() };
}

/** The value of one Prometheus sample (name + exact label subset), or 0 when absent. */
export function metricValue(body: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  for (const line of body.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got: Record<string, string> = {};
    for (const kv of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) got[kv[1]!] = kv[2]!;
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) total += Number(m[3]);
  }
  return total;
}

export interface RunningAgent {
  readonly proc: Proc;
  readonly node: string;
  readonly address: string;
  readonly dataDir: string;
  /** Ports as the agent reported them. */
  readonly hbone: string;
  readonly socks: string;
  readonly metrics: string;
  readonly ready: string;
  readonly admin: string;
}

/** Starts ambit-agent (--capture none) on `address` and waits for "agent started". */
export async function startAgent(o: {
  readonly node: string;
  readonly address: string;
  readonly controller: string;
  readonly dataDir: string;
  readonly join?: string;
  readonly extra?: readonly string[];
  readonly env?: Record<string, string>;
  /** The entry point: agent/main.ts (from source), or a built dist/agent/main.js. */
  readonly main?: string;
  /** A command that execs node with the agent (Proc's prefix). */
  readonly prefix?: readonly string[];
}): Promise<RunningAgent> {
  const args = ['--node', o.node, '--controller', o.controller, '--address', o.address, '--data-dir', o.dataDir, '--capture', 'none', ...(o.join ? ['--join', o.join] : []), ...(o.extra ?? [])];
  const proc = new Proc(o.main ?? AGENT_MAIN, args, o.env, o.prefix);
  const started = await proc.startedWhen((l) => l.msg === 'agent started');
  return {
    proc, node: o.node, address: o.address, dataDir: o.dataDir,
    hbone: String(started.hbone), socks: String(started.socks), metrics: String(started.metrics), ready: String(started.ready), admin: String(started.admin),
  };
}

/** Waits until each agent reports ready on /healthz/ready. */
export async function agentsReady(agents: readonly RunningAgent[], timeoutMs?: number): Promise<void> {
  for (const ag of agents) await eventually(async () => (await httpGet(hostPortOf(ag.ready), '/healthz/ready')).status === 200, `${ag.node} ready`, timeoutMs);
}

/** Waits until `agent` knows `node` (its HBONE address), so traffic towards that node's workloads can flow. */
export async function agentKnowsNode(agent: RunningAgent, node: string): Promise<void> {
  await eventually(async () => {
    const dump = JSON.parse((await httpGet(hostPortOf(agent.admin), '/config_dump')).body) as { nodes: { name: string }[] };
    return dump.nodes.some((n) => n.name === node);
  }, `${agent.node} learns ${node}`);
}

/**
 * Writes `bytes` random bytes to socket, with back-pressure, adding each
 * chunk to `sent`, then ends it: the sender side of a checksummed transfer.
 */
export function sendRandom(socket: Socket, bytes: number, sent: Hash): void {
  let written = 0;
  const pump = (): void => {
    while (written < bytes) {
      const chunk = randomBytes(Math.min(256 * 1024, bytes - written));
      sent.update(chunk);
      written += chunk.length;
      if (!socket.write(chunk)) return void socket.once('drain', pump);
    }
    socket.end();
  };
  pump();
}

/** A TCP echo server (half-close aware) listening on host:port, resolved once it listens. */
export async function startEchoServer(host: string, port: number): Promise<Server> {
  const server = createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => undefined);
    s.pipe(s);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return server;
}

type AgentOptions = Parameters<typeof startAgent>[0];

/** Starts two agents at once; each one that started is registered with setUp's `started`, then a failure of either goes on. */
export async function startAgentPair(started: (stop: () => unknown) => void, o: readonly [AgentOptions, AgentOptions]): Promise<[RunningAgent, RunningAgent]> {
  const r = await Promise.allSettled([startAgent(o[0]), startAgent(o[1])]);
  for (const x of r) if (x.status === 'fulfilled') started(() => x.value.proc.stop());
  for (const x of r) if (x.status === 'rejected') throw x.reason;
  return [(r[0] as PromiseFulfilledResult<RunningAgent>).value, (r[1] as PromiseFulfilledResult<RunningAgent>).value];
}

/**
 * Runs a multi-step set-up; `started` registers how to stop each part once it
 * is up. If a later step throws, what was started is stopped in reverse order
 * before the error goes on: a failed set-up must not leave a controller or an
 * agent running, holding its addresses, into the next test.
 */
export async function setUp<T>(build: (started: (stop: () => unknown) => void) => Promise<T>): Promise<T> {
  const stops: (() => unknown)[] = [];
  try {
    return await build((stop) => void stops.push(stop));
  } catch (err) {
    for (const stop of stops.reverse()) await Promise.resolve().then(stop).catch(() => undefined);
    throw err;
  }
}

/** Polls until fn resolves truthy (bounded). */
export async function eventually<T>(fn: () => Promise<T | undefined | false>, what: string, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
}

/** The pids of a process's children (Linux /proc): an agent's ambit-dataplane. */
export function childPids(pid: number): number[] {
  const tasks = join('/proc', String(pid), 'task');
  return readdirSync(tasks).flatMap((t) => readFileSync(join(tasks, t, 'children'), 'utf8').trim().split(/\s+/).filter(Boolean).map(Number));
}

export function hostPortOf(s: string): HostPort {
  const i = s.lastIndexOf(':');
  return { host: s.slice(0, i), port: Number(s.slice(i + 1)) };
}

/**
 * One connection through the mesh: SOCKS5 CONNECT through `proxy` as
 * `user` from `localAddress` to `host`:`port` (an echo server behind the
 * mesh), 4 KiB sent and the write side closed; resolves once the same bytes
 * came back and the echo ended, rejects with why not.
 */
export async function socksEchoRoundTrip(proxy: string, localAddress: string, user: string, host: string, port: number, timeoutMs = 5_000): Promise<void> {
  const { socket, reply } = await socksConnect(proxy, localAddress, user, host, port, timeoutMs);
  try {
    if (reply !== 0) throw new Error(`SOCKS reply ${reply}`);
    const payload = randomBytes(4096);
    const got: Buffer[] = [];
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('echo timed out')), 5_000);
      socket.on('data', (d: Buffer) => got.push(d));
      socket.on('end', () => {
        clearTimeout(timer);
        resolve();
      });
      socket.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      socket.resume();
      socket.end(payload);
    });
    const back = Buffer.concat(got);
    if (!back.equals(payload)) throw new Error(`echo differs: ${back.length} bytes back of ${payload.length}`);
  } finally {
    socket.destroy();
  }
}

/**
 * SOCKS5 CONNECT through an agent as `user` (username/password auth), the
 * client socket bound to `localAddress` (the workload's address, which the
 * agent checks). Resolves with the SOCKS reply code and the socket, paused:
 * the caller resumes it (or attaches a pipe) when it wants the data.
 * With `timeoutMs`, a negotiation that has not finished by then destroys the
 * socket and rejects.
 */
export function socksConnect(proxy: string, localAddress: string, user: string, host: string, port: number, timeoutMs?: number): Promise<{ socket: Socket; reply: number }> {
  const p = hostPortOf(proxy);
  return new Promise((resolve, reject) => {
    const socket = connect({ host: p.host, port: p.port, localAddress, allowHalfOpen: true });
    let buf = Buffer.alloc(0);
    let phase = 0;
    const timer = timeoutMs === undefined ? undefined : setTimeout(() => {
      socket.destroy();
      reject(new Error(`SOCKS5 negotiation with ${proxy} timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    const onClose = (): void => {
      clearTimeout(timer);
      reject(new Error(`${proxy} closed the connection during the SOCKS5 negotiation`));
    };
    socket.once('close', onClose);
    socket.on('connect', () => socket.write(Buffer.from([5, 1, 2])));
    const onData = (d: Buffer): void => {
      buf = Buffer.concat([buf, d]);
      if (phase === 0 && buf.length >= 2) {
        buf = buf.subarray(2);
        phase = 1;
        const u = Buffer.from(user);
        socket.write(Buffer.concat([Buffer.from([1, u.length]), u, Buffer.from([1, 0x78])]));
      }
      if (phase === 1 && buf.length >= 2) {
        buf = buf.subarray(2);
        phase = 2;
        const h = Buffer.from(host);
        const portBuf = Buffer.alloc(2);
        portBuf.writeUInt16BE(port);
        socket.write(Buffer.concat([Buffer.from([5, 1, 0, 3, h.length]), h, portBuf]));
      }
      if (phase === 2 && buf.length >= 10) {
        clearTimeout(timer);
        socket.off('data', onData);
        socket.off('close', onClose);
        socket.removeAllListeners('error');
        // A later reset must not crash a test that attached no error listener.
        socket.on('error', () => undefined);
        socket.pause();
        resolve({ socket, reply: buf[1]! });
      }
    };
    socket.on('data', onData);
  });
}
