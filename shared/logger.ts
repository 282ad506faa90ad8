import { writeSync } from 'node:fs';
import { pino, type Logger, type LevelWithSilent, type DestinationStream } from 'pino';

export type { Logger };

/** Batched lines are written once this many characters are pending. */
const BATCH_CHARS = 16 * 1024;
/** ...or at the latest this long after the first pending line. */
const BATCH_DELAY_MS = 10;

/**
 * A log sink on one descriptor with two entrances that share one buffer, so
 * lines stay in order whichever entrance they come through:
 * - `destination` writes at once (with any pending batched lines before it);
 * - `batched` (the access log: one line per connection) appends to a buffer
 *   written with one write when it passes 16 KiB or 10 ms after its first
 *   line, whichever comes first.
 * `flush()` writes what is pending synchronously; once anything was batched
 * it also runs on process 'exit', so process.exit() loses nothing.
 */
export interface LogSink {
  readonly destination: DestinationStream;
  readonly batched: DestinationStream;
  flush(): void;
}

/**
 * Log lines go to stderr synchronously, in order. Not pino.destination
 * (sonic-boom): when stderr's reader is gone, its synchronous flush retries
 * EPIPE forever and blocks the event loop, which froze the whole daemon and
 * made SIGTERM hang. Here a line that cannot be written is dropped, and once
 * the reader is gone (EPIPE) logging stops: a mesh agent must keep moving
 * bytes whatever happens to its log pipe.
 */
export function stderrSink(fd = 2): LogSink {
  let broken = false;
  let pending = '';
  let timer: NodeJS.Timeout | undefined;
  const writeOut = (text: string): void => {
    if (broken) return;
    const buf = Buffer.from(text);
    let off = 0;
    for (let attempts = 0; off < buf.length && attempts < 1000; attempts++) {
      try {
        off += writeSync(fd, buf, off);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'EAGAIN') continue; // a non-blocking pipe that is full: retry (bounded)
        broken = code === 'EPIPE' || code === 'EBADF';
        return;
      }
    }
  };
  const flush = (): void => {
    if (timer !== undefined) {
      clearTimeout(timer);
      timer = undefined;
    }
    if (pending === '') return;
    const text = pending;
    pending = '';
    writeOut(text);
  };
  let exitHooked = false;
  return {
    destination: {
      write(line: string): void {
        if (pending === '') {
          writeOut(line);
          return;
        }
        pending += line;
        flush();
      },
    },
    batched: {
      write(line: string): void {
        if (broken) return;
        if (!exitHooked) {
          exitHooked = true;
          process.on('exit', flush);
        }
        pending += line;
        if (pending.length >= BATCH_CHARS) flush();
        else if (timer === undefined) timer = setTimeout(flush, BATCH_DELAY_MS).unref();
      },
    },
    flush,
  };
}

/** An unbatched stderr destination (see stderrSink). */
export function stderrDestination(fd = 2): DestinationStream {
  return stderrSink(fd).destination;
}

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/**
 * A JSON logger for one process. Built by each app's wiring and passed down
 * (no module-level logger), so tests can capture logs of one component.
 * The level can change at run time (agent admin /logging) through logger.level.
 */
export function createLogger(options: { name: string; level: LogLevel; destination?: DestinationStream }): Logger {
  return pino(
    {
      name: options.name,
      level: options.level as LevelWithSilent,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    options.destination ?? stderrDestination(),
  );
}
