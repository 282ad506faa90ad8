import type { Command } from 'commander';
import { AmbitError } from '../../shared/errors.ts';
import type { AdminApi } from './client.ts';
import { parseOutput, type OutputFormat } from './output.ts';

/** What every command needs from the outside world; main.ts builds it from the process. */
export interface CliContext {
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly out: (text: string) => void;
  readonly err: (text: string) => void;
  readonly readFile: (path: string) => string;
  /** All of standard input, to EOF. */
  readonly readStdin: () => Promise<string>;
  readonly now: () => number;
}

/**
 * Connects with the global --controller/--credentials options of `cmd`; the
 * caller closes it. The gRPC client and the generated protocol are loaded
 * here, at the first command that talks to the controller, so that `--help`,
 * usage errors and local validation never pay for them.
 */
export async function connect(ctx: CliContext, cmd: Command): Promise<AdminApi> {
  const [{ AdminApi }, { resolveConnection }] = await Promise.all([import('./client.ts'), import('./config.ts')]);
  const g = cmd.optsWithGlobals<{ controller?: string; credentials?: string }>();
  return new AdminApi(resolveConnection({ controller: g.controller, credentials: g.credentials }, ctx.env));
}

/** Runs fn with a connection and always closes it. */
export async function withApi<T>(ctx: CliContext, cmd: Command, fn: (api: AdminApi) => Promise<T>): Promise<T> {
  const api = await connect(ctx, cmd);
  try {
    return await fn(api);
  } finally {
    api.close();
  }
}

export function outputOf(cmd: Command): OutputFormat {
  return parseOutput(cmd.opts<{ output?: string }>().output ?? 'table');
}

/** "k=v" pairs (repeatable flag or comma-separated) → map, naming the flag on error. */
export function parsePairs(flag: string, values: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const v of values.flatMap((x) => x.split(','))) {
    if (v === '') continue;
    const i = v.indexOf('=');
    if (i <= 0) throw new AmbitError('AMBIT_ERR_CLI_USAGE', `invalid ${flag} ${JSON.stringify(v)}: expected key=value`, { details: { field: flag } });
    out[v.slice(0, i)] = v.slice(i + 1);
  }
  return out;
}

export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

export function example(text: string): string {
  return `\nExample:\n${text.split('\n').map((l) => `  ${l}`).join('\n')}\n`;
}
