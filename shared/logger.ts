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
 * or held back by a full pipe it also runs on process 'exit', so
 * process.exit() loses nothing the reader is ready to take.
 */
export interface LogSink {
  readonly destination: DestinationStream;
  readonly batched: DestinationStream;
  flush(): void;
}

/** Output a full pipe refused, held for a later write, at most this many bytes; beyond that, whole writes are dropped (and counted). */
const MAX_BACKLOG_BYTES = 8 * 1024 * 1024;
/** How soon output a full pipe refused is offered again. */
const RETRY_MS = 5;

/**
 * Log lines go to stderr in order, without ever blocking the event loop. Not
 * pino.destination (sonic-boom): when stderr's reader is gone, its
 * synchronous flush retries EPIPE forever and blocks the event loop, which
 * froze the whole daemon and made SIGTERM hang. Here each write goes out at
 * once when the descriptor takes it; what a full non-blocking pipe refuses
 * (EAGAIN: the reader is momentarily behind, e.g. during a burst of a few
 * thousand access log lines) is kept in a backlog, written before anything
 * newer, retried every few milliseconds. The backlog is bounded: past
 * MAX_BACKLOG_BYTES whole writes are dropped and a warning line says how many
 * lines were lost once the pipe takes output again. Once the reader is gone
 * (EPIPE) logging stops: a mesh agent must keep moving bytes whatever happens
 * to its log pipe.
 */
export function stderrSink(fd = 2): LogSink {
  let broken = false;
  let pending = '';
  let timer: NodeJS.Timeout | undefined;
  const backlog: Buffer[] = [];
  let backlogBytes = 0;
  let droppedLines = 0;
  let retry: NodeJS.Timeout | undefined;
  let exitHooked = false;
  const hookExit = (): void => {
    if (exitHooked) return;
    exitHooked = true;
    process.on('exit', flush);
  };
  /** Writes the backlog, oldest first, as far as the descriptor takes it now; true when it is empty. */
  const drain = (): boolean => {
    while (backlog.length > 0 && !broken) {
      const head = backlog[0]!;
      let n: number;
      try {
        n = writeSync(fd, head);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'EAGAIN') break; // a non-blocking pipe that is full: later
        broken = code === 'EPIPE' || code === 'EBADF';
        n = head.length; // any other error: this write is lost, go on with the next
      }
      backlogBytes -= n;
      if (n < head.length) backlog[0] = head.subarray(n);
      else backlog.shift();
      if (backlog.length === 0 && droppedLines > 0 && !broken) {
        const note = `{"level":"warn","time":"${new Date().toISOString()}","pid":${process.pid},"msg":"${droppedLines} log lines dropped: stderr was not read fast enough"}\n`;
        droppedLines = 0;
        backlog.push(Buffer.from(note));
        backlogBytes += note.length;
      }
    }
    if (broken) {
      backlog.length = 0;
      backlogBytes = 0;
    }
    if (backlog.length > 0 && retry === undefined) {
      hookExit();
      retry = setTimeout(() => {
        retry = undefined;
        drain();
      }, RETRY_MS).unref();
    }
    return backlog.length === 0;
  };
  const writeOut = (text: string): void => {
    if (broken) return;
    if (backlog.length > 0 && backlogBytes + text.length > MAX_BACKLOG_BYTES) {
      let lines = 0;
      for (let i = text.indexOf('\n'); i >= 0; i = text.indexOf('\n', i + 1)) lines++;
      droppedLines += Math.max(lines, 1);
      return;
    }
    const buf = Buffer.from(text);
    backlog.push(buf);
    backlogBytes += buf.length;
    drain();
  };
  const writePending = (): void => {
    if (timer !== undefined) {
      clearTimeout(timer);
      timer = undefined;
    }
    if (pending === '') return;
    const text = pending;
    pending = '';
    writeOut(text);
  };
  /** Writes everything now: before the process exits. A full pipe is retried a bounded number of times. */
  const flush = (): void => {
    writePending();
    for (let attempts = 0; attempts < 1000 && !drain(); attempts++);
  };
  return {
    destination: {
      write(line: string): void {
        if (pending === '') {
          writeOut(line);
          return;
        }
        pending += line;
        writePending();
      },
    },
    batched: {
      write(line: string): void {
        if (broken) return;
        hookExit();
        pending += line;
        if (pending.length >= BATCH_CHARS) writePending();
        else if (timer === undefined) timer = setTimeout(writePending, BATCH_DELAY_MS).unref();
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
