import tls from 'node:tls';
import { readFileSync } from 'node:fs';
import { AmbitError, errorMessage } from './errors.ts';
import type { DataDirLock } from './data-dir-lock.ts';
import { configHelp, type ConfigSources, type OptionSpecs } from './config-parse.ts';
import { createLogger, stderrSink, type LogSink, type Logger, type LogLevel } from './logger.ts';

export interface DaemonSpec<C extends { readonly help: boolean; readonly logLevel: LogLevel }> {
  readonly name: string;
  readonly usage: string;
  readonly options: OptionSpecs;
  readonly parse: (sources: ConfigSources) => C;
  /** The data directory this process locks for its whole life: one process per directory. */
  readonly dataDir: (cfg: C) => string;
  /** `sink` is the logger's stderr sink; its `batched` entrance suits high-volume logs (the access log). */
  readonly start: (cfg: C, logger: Logger, sink: LogSink) => Promise<{ close(): Promise<void> }>;
  /** Logged when a stop signal arrives (the agent says "draining"). */
  readonly stoppingMessage: string;
  /** The process's arguments and environment, passed in by main.ts (the only place that reads them). */
  readonly argv: readonly string[];
  readonly env: Readonly<Record<string, string | undefined>>;
}

/**
 * The life of an Ambit daemon process, shared by ambit-controller and
 * ambit-agent: parse config (exit 2 naming the bad key), start (exit 1 with
 * the reason), then on SIGTERM/SIGINT close gracefully once and exit 0.
 */
export async function runDaemon<C extends { readonly help: boolean; readonly logLevel: LogLevel }>(spec: DaemonSpec<C>): Promise<void> {
  // Every Ambit connection is TLS 1.3 (DESIGN §3); grpc-js has no per-server or
  // per-channel minimum, so the process default is raised before anything connects.
  tls.DEFAULT_MIN_VERSION = 'TLSv1.3';
  let cfg: C;
  try {
    cfg = spec.parse({ argv: spec.argv, env: spec.env, readFile: (p) => readFileSync(p, 'utf8') });
  } catch (err) {
    process.stderr.write(`${spec.name}: ${errorMessage(err)}\n`);
    process.exit(2);
  }
  if (cfg.help) {
    process.stdout.write(`${configHelp(spec.usage, spec.options)}\n`);
    return;
  }
  const sink = stderrSink();
  const logger = createLogger({ name: spec.name, level: cfg.logLevel, destination: sink.destination });
  let app: { close(): Promise<void> };
  let lock: DataDirLock | undefined;
  try {
    // Loaded past --help: the lock is an SQLite database (data-dir-lock.ts).
    const { lockDataDir } = await import('./data-dir-lock.ts');
    lock = lockDataDir(spec.dataDir(cfg));
    if (!lock.held) logger.warn({ path: lock.path }, 'data directory is read-only: started without its lock; another process may use it too');
    app = await spec.start(cfg, logger, sink);
  } catch (err) {
    logger.fatal({ err, code: err instanceof AmbitError ? err.code : undefined }, `${spec.name} failed to start`);
    sink.flush();
    process.stderr.write(`${spec.name}: ${errorMessage(err)}\n`);
    process.exit(1);
  }
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, spec.stoppingMessage);
    app.close().then(
      () => {
        lock?.close();
        logger.info('stopped');
        sink.flush();
        process.exit(0);
      },
      (err: unknown) => {
        logger.error({ err }, 'shutdown failed');
        sink.flush();
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}
