import { writeSync } from 'node:fs';
import { pino, type Logger, type LevelWithSilent, type DestinationStream } from 'pino';

export type { Logger };

/**
 * Log lines go to stderr synchronously, one write each, in order. Not
 * pino.destination (sonic-boom): when stderr's reader is gone, its
 * synchronous flush retries EPIPE forever and blocks the event loop, which
 * froze the whole daemon and made SIGTERM hang. Here a line that cannot be
 * written is dropped, and once the reader is gone (EPIPE) logging stops:
 * a mesh agent must keep moving bytes whatever happens to its log pipe.
 */
export function stderrDestination(fd = 2): DestinationStream {
  let broken = false;
  return {
    write(line: string): void {
      if (broken) return;
      const buf = Buffer.from(line);
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
    },
  };
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
