// The load client of bench/dataplane.ts in a process of its own, driven over
// stdin/stdout (one JSON object a line each way). The capture path needs it:
// iptables captures a connection by the uid owning its socket, so the client
// must run as the registered workload's uid (setpriv), not as the bench.
//
// Run by the bench: setpriv --reuid=UID ... node bench/dataplane-client.ts
// Requests {id, op, args}; answers {id, result} or {id, error}. Exits when
// stdin closes.
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import {
  connectionRate, EchoProbe, probeOnce, throughput, type ConnRateResult, type LoadDriver, type Probe, type Target, type ThroughputResult,
} from './dataplane-load.ts';

type Op = 'throughput' | 'rate' | 'once' | 'open' | 'rounds' | 'close';

/** The bench's side: a LoadDriver whose loads run in the child process. */
export class RemoteLoad implements LoadDriver {
  readonly #child: ChildProcess;
  readonly #waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  #next = 1;
  #stderr = '';

  /** `argv`: the command that runs this file (with setpriv in front). */
  constructor(argv: readonly string[]) {
    const [cmd = '', ...args] = argv;
    // cwd '/': the client's uid need not be able to enter the bench's directory.
    this.#child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], cwd: '/' });
    this.#child.stderr!.on('data', (d: Buffer) => (this.#stderr = (this.#stderr + d.toString()).slice(-2000)));
    createInterface({ input: this.#child.stdout! }).on('line', (line) => {
      const m = JSON.parse(line) as { id: number; result?: unknown; error?: string };
      const w = this.#waiting.get(m.id);
      this.#waiting.delete(m.id);
      if (m.error !== undefined) w?.reject(new Error(m.error));
      else w?.resolve(m.result);
    });
    this.#child.once('exit', (code, signal) => {
      for (const w of this.#waiting.values()) w.reject(new Error(`load client exited (code ${code}, signal ${signal}): ${this.#stderr}`));
      this.#waiting.clear();
    });
  }

  get pid(): number {
    return this.#child.pid ?? 0;
  }

  #call<T>(op: Op, args: unknown[]): Promise<T> {
    if (this.#child.exitCode !== null || this.#child.signalCode !== null) return Promise.reject(new Error(`load client has exited: ${this.#stderr}`));
    const id = this.#next++;
    return new Promise<T>((resolve, reject) => {
      this.#waiting.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.#child.stdin!.write(`${JSON.stringify({ id, op, args })}\n`);
    });
  }

  throughput(t: Target, totalBytes: number, connections: number, timeoutMs: number): Promise<ThroughputResult> {
    return this.#call('throughput', [t, totalBytes, connections, timeoutMs]);
  }

  connectionRate(t: Target, durationMs: number, concurrency: number, maxConnections: number, perConnTimeoutMs: number): Promise<ConnRateResult> {
    return this.#call('rate', [t, durationMs, concurrency, maxConnections, perConnTimeoutMs]);
  }

  probeOnce(t: Target, timeoutMs: number): Promise<void> {
    return this.#call('once', [t, timeoutMs]);
  }

  async openProbe(t: Target, size: number, timeoutMs: number): Promise<Probe> {
    const probe = await this.#call<number>('open', [t, size, timeoutMs]);
    return {
      // The samples are taken in the client and sent back with the answer.
      rounds: async (n: number, into?: number[]): Promise<void> => {
        const taken = await this.#call<number[]>('rounds', [probe, n]);
        into?.push(...taken);
      },
      close: () => void this.#call('close', [probe]).catch(() => undefined),
    };
  }

  stop(): void {
    this.#child.stdin!.end();
  }
}

function serve(): void {
  const probes = new Map<number, EchoProbe>();
  let next = 1;
  const handle = async (op: Op, a: unknown[]): Promise<unknown> => {
    const t = a[0] as Target;
    switch (op) {
      case 'throughput': return throughput(t, a[1] as number, a[2] as number, a[3] as number);
      case 'rate': return connectionRate(t, a[1] as number, a[2] as number, a[3] as number, a[4] as number);
      case 'once': return probeOnce(t, a[1] as number).then(() => null);
      case 'open': {
        const id = next++;
        probes.set(id, await EchoProbe.open(t, a[1] as number, a[2] as number));
        return id;
      }
      case 'rounds': {
        const taken: number[] = [];
        const probe = probes.get(a[0] as number);
        if (!probe) throw new Error('no such probe');
        await probe.rounds(a[1] as number, taken);
        return taken;
      }
      case 'close':
        probes.get(a[0] as number)?.close();
        probes.delete(a[0] as number);
        return null;
    }
    throw new Error(`unknown op ${String(op)}`);
  };
  createInterface({ input: process.stdin }).on('line', (line) => {
    const { id, op, args } = JSON.parse(line) as { id: number; op: Op; args: unknown[] };
    handle(op, args).then(
      (result) => process.stdout.write(`${JSON.stringify({ id, result: result ?? null })}\n`),
      (err: unknown) => process.stdout.write(`${JSON.stringify({ id, error: (err as Error).message })}\n`),
    );
  }).on('close', () => process.exit(0));
}

if (import.meta.main) serve();
