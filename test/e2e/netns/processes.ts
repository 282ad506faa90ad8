/**
 * Running commands and Node processes inside network namespaces for the
 * multi-host e2e suite. Nothing here touches the root namespace's networking.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readJsonLines, ROOT, type LogLine } from '../harness.ts';

/** Node 24 by absolute path: PATH inside `ip netns exec` may lead to another node. */
export const NODE = join(ROOT, 'node_modules/.bin/node');
/**
 * Node's on-disk compile cache for every process started here: the suite
 * starts some thirty Node processes, and on a small machine their start-up
 * (type stripping and compiling the same modules) is most of the set-up time.
 */
const NODE_ENV = { NODE_NO_WARNINGS: '1', NODE_COMPILE_CACHE: join(tmpdir(), 'ambit-netns-node-cache') };

export interface RunResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a command without a shell; never rejects (a failure is in the result). */
export function run(argv: readonly string[], o: { timeoutMs?: number; input?: string } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const [command = '', ...args] = argv;
    const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'], timeout: o.timeoutMs ?? 20_000, env: { ...process.env, ...NODE_ENV } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdin.on('error', () => undefined);
    child.stdin.end(o.input ?? '');
    child.on('error', (err) => resolve({ code: -1, stdout, stderr: `${stderr}${err.message}` }));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Runs a command that must succeed; its stdout. */
export async function sh(argv: readonly string[], o: { timeoutMs?: number; input?: string } = {}): Promise<string> {
  const r = await run(argv, o);
  if (r.code !== 0) throw new Error(`${argv.join(' ')} exited ${r.code}: ${r.stderr.trim()}`);
  return r.stdout;
}


export type Json = Record<string, unknown>;

/**
 * A Node process inside a namespace (`ip netns exec` execs, so the child is
 * the process itself and signals reach it directly). JSON lines on stderr
 * (pino logs) go to `logs`, JSON lines on stdout to `out`.
 */
export class NsProc {
  readonly ns: string;
  readonly child: ChildProcess;
  readonly logs: LogLine[] = [];
  readonly out: Json[] = [];
  stderrText = '';
  stdoutText = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly #waiters = new Set<{ stream: 'logs' | 'out'; pred: (l: Json) => boolean; resolve: (l: Json) => void }>();

  constructor(ns: string, file: string, args: readonly string[]) {
    this.ns = ns;
    this.child = spawn('ip', ['netns', 'exec', ns, NODE, file, ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
      cwd: ROOT,
      env: { ...process.env, ...NODE_ENV },
    });
    this.child.stdin!.on('error', () => undefined);
    this.#lines(this.child.stderr!, 'logs', (t) => (this.stderrText += t));
    this.#lines(this.child.stdout!, 'out', (t) => (this.stdoutText += t));
    this.exited = once(this.child, 'exit').then(([code, signal]) => ({ code: code as number | null, signal: signal as NodeJS.Signals | null }));
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  #lines(stream: NodeJS.ReadableStream, into: 'logs' | 'out', raw: (t: string) => void): void {
    readJsonLines(stream, raw, (value) => {
      const parsed = value as Json;
      (into === 'logs' ? this.logs : this.out).push(parsed as LogLine);
      for (const w of this.#waiters) {
        if (w.stream === into && w.pred(parsed)) {
          this.#waiters.delete(w);
          w.resolve(parsed);
        }
      }
    });
  }

  #wait(stream: 'logs' | 'out', pred: (l: Json) => boolean, timeoutMs: number, what: string): Promise<Json> {
    const seen = (stream === 'logs' ? this.logs : this.out).find((l) => pred(l));
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const w = { stream, pred, resolve: (l: Json) => { clearTimeout(timer); resolve(l); } };
      const timer = setTimeout(() => {
        this.#waiters.delete(w);
        reject(new Error(`${this.ns}: timed out after ${timeoutMs} ms waiting for ${what}; stderr tail:\n${this.stderrText.slice(-2500)}`));
      }, timeoutMs);
      this.#waiters.add(w);
      void this.exited.then(({ code, signal }) => {
        if (this.#waiters.delete(w)) {
          clearTimeout(timer);
          reject(new Error(`${this.ns}: process exited (code ${code}, signal ${signal}) while waiting for ${what}; stderr tail:\n${this.stderrText.slice(-2500)}`));
        }
      });
    });
  }

  /** The first log line (seen or future) matching pred. */
  waitForLog(pred: (l: LogLine) => boolean, timeoutMs = 20_000, what = 'a log line'): Promise<LogLine> {
    return this.#wait('logs', (l) => pred(l as LogLine), timeoutMs, what) as Promise<LogLine>;
  }

  waitForOut(pred: (l: Json) => boolean, timeoutMs = 20_000, what = 'an output line'): Promise<Json> {
    return this.#wait('out', pred, timeoutMs, what);
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 10_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (!this.running) return this.exited;
    this.child.kill(signal);
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    const r = await this.exited;
    clearTimeout(t);
    return r;
  }
}
