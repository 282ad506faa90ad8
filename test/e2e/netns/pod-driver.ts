/**
 * Drives fixtures/pod.ts — the applications of one pod, or of a process
 * outside the mesh — over its stdin/stdout protocol.
 */
import { join } from 'node:path';
import { ROOT } from '../harness.ts';
import type { Json, NsProc } from './processes.ts';

export const POD_FIXTURE = join(ROOT, 'test/e2e/netns/fixtures/pod.ts');
/** What fixtures/pod.ts sends with pattern 'marker' (kept equal to its MARKER). */
export const MARKER = 'AMBIT-SECRET-PAYLOAD-';

export interface TransferResult {
  readonly ok: boolean;
  readonly connected: boolean;
  readonly error: string;
  readonly sentBytes: number;
  readonly sha256: string;
  /** The raw response text; from a sink server, one JSON line (a SinkReport). */
  readonly response: string;
  readonly ms: number;
}

export interface SinkReport {
  readonly server: string;
  readonly port: number;
  readonly bytes: number;
  readonly sha256: string;
  readonly peer: string;
  readonly marker: boolean;
}

/** The applications of one pod (fixtures/pod.ts), driven over stdin/stdout. */
export class Pod {
  readonly name: string;
  readonly address: string;
  readonly proc: NsProc;
  #nextId = 1;

  constructor(name: string, address: string, proc: NsProc) {
    this.name = name;
    this.address = address;
    this.proc = proc;
  }

  async request(body: Json, timeoutMs = 40_000): Promise<Json> {
    const id = this.#nextId++;
    this.proc.child.stdin!.write(`${JSON.stringify({ id, ...body })}\n`);
    return this.proc.waitForOut((l) => l.id === id, timeoutMs, `the answer to ${JSON.stringify(body)}`);
  }

  async listen(port: number, name: string, kind: 'sink' | 'echo' = 'sink'): Promise<void> {
    const r = await this.request({ op: 'listen', port, name, kind });
    if (r.ok !== true) throw new Error(`${this.name}: listen ${port} failed: ${String(r.error)}`);
  }

  /** One connection: send `bytes`, half-close, read the answer. */
  async connect(host: string, port: number, o: { bytes?: number; pattern?: 'marker' | 'random'; paceMs?: number; timeoutMs?: number } = {}): Promise<TransferResult> {
    const timeoutMs = o.timeoutMs ?? 30_000;
    return (await this.request({ op: 'connect', host, port, bytes: o.bytes ?? 16, pattern: o.pattern ?? 'random', paceMs: o.paceMs ?? 0, timeoutMs }, timeoutMs + 10_000)) as unknown as TransferResult;
  }

  async repeat(host: string, port: number, count: number): Promise<TransferResult[]> {
    return (await this.request({ op: 'repeat', host, port, count }, 60_000)).results as TransferResult[];
  }

  async open(host: string, port: number): Promise<{ ok: boolean; sid: number; error?: string }> {
    return (await this.request({ op: 'open', host, port })) as unknown as { ok: boolean; sid: number; error?: string };
  }

  async ping(sid: number, text: string): Promise<{ ok: boolean; echoed: string; error: string }> {
    return (await this.request({ op: 'ping', sid, text })) as unknown as { ok: boolean; echoed: string; error: string };
  }

  async close(sid: number): Promise<void> {
    await this.request({ op: 'close', sid });
  }
}

/** The sink server's report in a successful transfer's response. */
export function sinkReport(r: TransferResult): SinkReport | undefined {
  if (!r.ok) return undefined;
  try {
    return JSON.parse(r.response.trim()) as SinkReport;
  } catch {
    return undefined;
  }
}
