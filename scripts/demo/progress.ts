/**
 * Numbered steps with a progress indication: "[3/9] starting agent node-b …
 * ready (412 ms)". On a terminal the running step animates a spinner with
 * the elapsed time on one line (carriage return); anywhere else (CI, a pipe,
 * a file) each step is written as plain text, the outcome appended to the
 * same line when the step ends, with no control characters.
 */
export interface Style {
  bold(s: string): string;
  dim(s: string): string;
  green(s: string): string;
  red(s: string): string;
  yellow(s: string): string;
  cyan(s: string): string;
}

const plain = (s: string): string => s;
const PLAIN: Style = { bold: plain, dim: plain, green: plain, red: plain, yellow: plain, cyan: plain };
const sgr = (code: string) => (s: string): string => `\x1b[${code}m${s}\x1b[0m`;
const ANSI: Style = { bold: sgr('1'), dim: sgr('2'), green: sgr('32'), red: sgr('31'), yellow: sgr('33'), cyan: sgr('36') };

export function styleFor(tty: boolean, noColor: boolean): Style {
  return tty && !noColor ? ANSI : PLAIN;
}

const FRAMES = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/** A step's outcome as shown after the "…": the word and, optionally, notes printed under it. */
export interface StepResult {
  readonly status: string;
  readonly notes?: readonly string[];
}

export class Progress {
  readonly #total: number;
  readonly #write: (s: string) => void;
  readonly #tty: boolean;
  readonly style: Style;
  #n = 0;
  /** Ends the running step's line early (the demo is stopping); undefined when no step runs. */
  #cut: (() => void) | undefined;

  constructor(o: { total: number; write: (s: string) => void; tty: boolean; style: Style }) {
    this.#total = o.total;
    this.#write = o.write;
    this.#tty = o.tty;
    this.style = o.style;
  }

  /**
   * Runs one numbered step; its result says what to print after the title.
   * Rethrows after printing "failed". `since` (a performance.now() time) is
   * when the work began, for work started before its step is shown.
   */
  async step<T>(title: string, fn: () => Promise<T>, result: (value: T) => StepResult, since = performance.now()): Promise<T> {
    this.#n++;
    const s = this.style;
    const head = `${s.dim(`[${this.#n}/${this.#total}]`)} ${title} …`;
    const started = since;
    const ms = (): string => `${Math.round(performance.now() - started)} ms`;
    let spinner: NodeJS.Timeout | undefined;
    if (this.#tty) {
      let f = 0;
      const draw = (): void => this.#write(`\r${head} ${s.cyan(FRAMES[f++ % FRAMES.length]!)} ${s.dim(ms())}\x1b[K`);
      draw();
      spinner = setInterval(draw, 80);
    } else {
      this.#write(`${head} `);
    }
    let ended = false;
    const end = (text: string, notes: readonly string[] = []): void => {
      clearInterval(spinner);
      this.#cut = undefined;
      if (ended) return;
      ended = true;
      this.#write(this.#tty ? `\r${head} ${text}\x1b[K\n` : `${text}\n`);
      for (const n of notes) this.#write(`      ${n}\n`);
    };
    this.#cut = () => end(s.yellow('interrupted'));
    try {
      const value = await fn();
      const r = result(value);
      end(`${s.green(r.status)} ${s.dim(`(${ms()})`)}`, r.notes);
      return value;
    } catch (err) {
      end(`${s.red('failed')} ${s.dim(`(${ms()})`)}`);
      throw err;
    }
  }

  /** Closes the line of a step still running (stop requested, or an error elsewhere). */
  interrupt(): void {
    this.#cut?.();
  }
}
