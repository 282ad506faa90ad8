import { rmSync } from 'node:fs';
import { relative } from 'node:path';
import { Backoff, type BackoffOptions } from '../../shared/backoff.ts';
import { errorMessage } from '../../shared/errors.ts';
import { writeFileAtomic } from '../../shared/files.ts';
import type { Logger } from '../../shared/logger.ts';

/** The file operations the persister needs: injected so tests can fail them (EIO) without a real broken disk. */
export interface PersistFs {
  readonly write: (path: string, data: string) => void;
  readonly remove: (path: string) => void;
}

export const NODE_FS: PersistFs = {
  write: (path, data) => writeFileAtomic(path, data),
  remove: (path) => rmSync(path, { force: true }),
};

/** How often a failing write is tried again: from 1 s, doubling to 30 s, full jitter. */
export const PERSIST_BACKOFF: BackoffOptions = { initialMs: 1_000, maxMs: 30_000 };

export interface PersistFailure {
  /** Relative to the data directory. */
  readonly path: string;
  /** The errno code (ENOSPC, EIO, EROFS…), or '' when the error had none. */
  readonly code: string;
  readonly error: string;
  /** When the path first failed in this run of failures (ISO 8601). */
  readonly since: string;
  readonly attempts: number;
}

export interface PersisterOptions {
  readonly dataDir: string;
  readonly logger: Logger;
  readonly fs?: PersistFs;
  readonly backoff?: BackoffOptions;
  readonly now?: () => number;
  /** Called after every failed attempt (for a failures counter) with the path relative to the data directory. */
  readonly onFailure?: (path: string, code: string) => void;
  /** Called whenever the persister turns healthy or failing. */
  readonly onHealth?: (healthy: boolean) => void;
}

type Op = { readonly kind: 'write'; readonly data: () => string } | { readonly kind: 'remove' };

interface Pending {
  op: Op;
  code: string;
  error: string;
  since: number;
  attempts: number;
}

/**
 * Every write the agent makes to its data directory goes through here. The
 * agent serves from memory; its files only let a restarted agent serve
 * without the controller. A full disk (ENOSPC), an I/O error (EIO) or a
 * read-only remount (EROFS) must therefore not take the agent down: a failed
 * write is logged with its path and errno, counted, kept as the latest wanted
 * content of that path, and retried with backoff until it lands — then the
 * agent says it recovered. Writes never throw.
 */
export class Persister {
  readonly #o: PersisterOptions;
  readonly #fs: PersistFs;
  readonly #backoff: Backoff;
  readonly #now: () => number;
  /** Paths whose latest write or removal has not landed yet, in the order they first failed. */
  readonly #pending = new Map<string, Pending>();
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(o: PersisterOptions) {
    this.#o = o;
    this.#fs = o.fs ?? NODE_FS;
    this.#backoff = new Backoff(o.backoff ?? PERSIST_BACKOFF);
    this.#now = o.now ?? Date.now;
  }

  /** Writes `data` (computed now, and again at each retry so a retry writes the latest content) to `path`. */
  write(path: string, data: string | (() => string)): boolean {
    return this.#run(path, { kind: 'write', data: typeof data === 'string' ? () => data : data });
  }

  remove(path: string): boolean {
    return this.#run(path, { kind: 'remove' });
  }

  get healthy(): boolean {
    return this.#pending.size === 0;
  }

  failures(): PersistFailure[] {
    return [...this.#pending].map(([path, p]) => ({ path: this.#rel(path), code: p.code, error: p.error, since: new Date(p.since).toISOString(), attempts: p.attempts }));
  }

  /** One line for the readiness body: empty when healthy. */
  summary(): string {
    return this.failures().map((f) => `${f.path}: ${f.code || f.error}`).join(', ');
  }

  /** Tries every pending path once more, now (shutdown: the last chance to land them). */
  flush(): void {
    this.#retry();
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
  }

  #rel(path: string): string {
    return relative(this.#o.dataDir, path) || path;
  }

  #attempt(path: string, op: Op): Error | undefined {
    try {
      if (op.kind === 'write') this.#fs.write(path, op.data());
      else this.#fs.remove(path);
      return undefined;
    } catch (err) {
      return err as Error;
    }
  }

  #run(path: string, op: Op): boolean {
    const wasHealthy = this.healthy;
    const err = this.#attempt(path, op);
    if (!err) {
      if (this.#pending.delete(path)) this.#recovered(path, wasHealthy);
      return true;
    }
    this.#failed(path, op, err, wasHealthy);
    return false;
  }

  #failed(path: string, op: Op, err: Error, wasHealthy: boolean): void {
    const code = (err as NodeJS.ErrnoException).code ?? '';
    const prev = this.#pending.get(path);
    const p: Pending = { op, code, error: errorMessage(err), since: prev?.since ?? this.#now(), attempts: (prev?.attempts ?? 0) + 1 };
    this.#pending.set(path, p);
    this.#o.onFailure?.(this.#rel(path), code);
    if (wasHealthy) this.#o.onHealth?.(false);
    // The first failure of a path is an error; its retries are warnings, so a long outage does not flood the log at error level.
    const level = p.attempts === 1 ? 'error' : 'warn';
    this.#o.logger[level]({ path, errno: code, err: p.error, attempts: p.attempts }, 'cannot write to the data directory; serving from memory and retrying');
    this.#schedule();
  }

  #recovered(path: string, wasHealthy: boolean): void {
    this.#o.logger.info({ path }, 'data directory write succeeded again');
    if (this.healthy && !wasHealthy) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
      this.#backoff.reset();
      this.#o.logger.info({ dataDir: this.#o.dataDir }, 'persistence recovered: every pending write landed');
      this.#o.onHealth?.(true);
    }
  }

  #schedule(): void {
    if (this.#closed || this.#timer) return;
    const delay = this.#backoff.next();
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#retry();
    }, delay);
    // Retries must not hold a stopping agent open.
    this.#timer.unref();
  }

  #retry(): void {
    for (const [path, p] of [...this.#pending]) {
      // A write issued meanwhile may have landed or replaced the operation.
      if (this.#pending.get(path) !== p) continue;
      this.#run(path, p.op);
    }
  }
}
