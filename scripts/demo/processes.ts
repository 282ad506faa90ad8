/**
 * The demo's child processes (controller, agents, ambitctl): spawned with the
 * running Node, their output copied to a log file under <demo dir>/logs/ and
 * their JSON log lines (pino, on stderr) kept in memory so the demo can wait
 * for a line ("controller ready") and read access-log records.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, type WriteStream } from 'node:fs';
import { once } from 'node:events';

export interface LogLine {
  readonly level?: string;
  readonly msg?: string;
  readonly [k: string]: unknown;
}

export interface Exit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

interface Waiter {
  readonly pred: (l: LogLine) => boolean;
  readonly resolve: (l: LogLine) => void;
  readonly reject: (err: Error) => void;
  readonly timer: NodeJS.Timeout;
}

/**
 * The environment children run with: AMBIT_* variables are dropped, because
 * every binary reads AMBIT_<FLAG> as a default for its flags, and a stray
 * AMBIT_JOIN or AMBIT_UPSTREAMS from the user's shell must not change the demo.
 */
export function childEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([k]) => !k.startsWith('AMBIT_')));
}

export class DemoProcess {
  readonly name: string;
  readonly logPath: string;
  readonly child: ChildProcess;
  readonly logs: LogLine[] = [];
  readonly exited: Promise<Exit>;
  #stderr = '';
  readonly #file: WriteStream;
  readonly #waiters = new Set<Waiter>();
  #exit: Exit | undefined;

  constructor(o: { name: string; entry: string; args: readonly string[]; cwd: string; env: NodeJS.ProcessEnv; logPath: string }) {
    this.name = o.name;
    this.logPath = o.logPath;
    this.#file = createWriteStream(o.logPath, { flags: 'w' });
    this.child = spawn(process.execPath, [o.entry, ...o.args], { cwd: o.cwd, env: o.env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout!.on('data', (d: Buffer) => this.#file.write(d));
    let buf = '';
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      this.#file.write(d);
      this.#stderr = (this.#stderr + d).slice(-8000);
      buf += d;
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        this.#line(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
    });
    this.exited = once(this.child, 'close').then(([code, signal]) => {
      this.#exit = { code: code as number | null, signal: signal as NodeJS.Signals | null };
      for (const w of this.#waiters) {
        clearTimeout(w.timer);
        w.reject(new Error(`${this.name} exited (${describeExit(this.#exit)}) before it was ready; see ${this.logPath}${this.#tail()}`));
      }
      this.#waiters.clear();
      return new Promise<Exit>((resolve) => this.#file.end(() => resolve(this.#exit!)));
    });
    // An exit surfaces through `exited`; spawn errors (ENOENT) come as 'error' first.
    this.child.on('error', () => undefined);
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.#exit === undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  #line(line: string): void {
    if (!line.startsWith('{')) return;
    let l: LogLine;
    try {
      l = JSON.parse(line) as LogLine;
    } catch {
      return;
    }
    this.logs.push(l);
    for (const w of this.#waiters) {
      if (!w.pred(l)) continue;
      clearTimeout(w.timer);
      this.#waiters.delete(w);
      w.resolve(l);
    }
  }

  /** The last lines of stderr, for an error message. */
  #tail(): string {
    const lines = this.#stderr.trim().split('\n').slice(-6);
    return lines.length && lines[0] ? `\n  last output:\n    ${lines.map((l) => l.slice(0, 400)).join('\n    ')}` : '';
  }

  /** Resolves with the first log line at index >= `from` matching pred; rejects on timeout or exit. */
  waitForLog(pred: (l: LogLine) => boolean, what: string, timeoutMs = 20_000, from = 0): Promise<LogLine> {
    const seen = this.logs.slice(from).find(pred);
    if (seen) return Promise.resolve(seen);
    if (!this.running) return Promise.reject(new Error(`${this.name} is not running; see ${this.logPath}${this.#tail()}`));
    return new Promise((resolve, reject) => {
      const w: Waiter = {
        pred, resolve, reject,
        timer: setTimeout(() => {
          this.#waiters.delete(w);
          reject(new Error(`${this.name}: no "${what}" within ${timeoutMs} ms; see ${this.logPath}${this.#tail()}`));
        }, timeoutMs),
      };
      this.#waiters.add(w);
    });
  }

  /** SIGTERM (graceful: agents drain, the controller closes its store), SIGKILL after `timeoutMs`. */
  async stop(timeoutMs = 15_000): Promise<Exit> {
    if (this.running) this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    const r = await this.exited;
    clearTimeout(t);
    return r;
  }
}

export function describeExit(e: Exit): string {
  return e.signal ? `signal ${e.signal}` : `code ${e.code}`;
}

/** Runs a short-lived command (ambitctl) to completion, appending its command line and output to a log. */
export async function runOnce(o: { entry: string; args: readonly string[]; cwd: string; env: NodeJS.ProcessEnv; log: WriteStream; shown: string; redact?: boolean }): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [o.entry, ...o.args], { cwd: o.cwd, env: o.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  child.on('error', (err) => (stderr += `${err.message}\n`));
  const [code] = (await once(child, 'close')) as [number | null];
  // A redacted command's output (a join token) stays out of the log.
  o.log.write(`$ ${o.shown}\n${o.redact ? '(output not logged)\n' : stdout}${stderr}${code === 0 ? '' : `(exit status ${code})\n`}\n`);
  return { code, stdout, stderr };
}
