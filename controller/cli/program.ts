import tls from 'node:tls';
import { Command, CommanderError, type Option } from 'commander';
import { AmbitError } from '../../shared/errors.ts';
import { VERSION } from '../version.ts';
import { DEFAULT_CONTROLLER } from './config.ts';
import type { CliContext } from './context.ts';
import { nodeCommand } from './commands/node.ts';
import { policyCommand, serviceCommand, workloadCommand } from './commands/resources.ts';
import { applyCommand, deleteCommand } from './commands/files.ts';
import { getCommand } from './commands/get.ts';
import { caCommand, statusCommand } from './commands/mesh.ts';
import { explainCommand } from './commands/explain.ts';
import { consoleCommand } from './commands/console.ts';

// Ambit speaks TLS 1.3 only (DESIGN §3); grpc-js has no per-channel minimum.
tls.DEFAULT_MIN_VERSION = 'TLSv1.3';

/**
 * Builds the ambitctl program; exported so tests can drive it in-process.
 * Every command module keeps its top level light (commander, errors, option
 * parsing): what a command needs from the gRPC client, the generated protocol,
 * the resource validator or the YAML printer it imports when it runs, so that
 * `--help`, a usage error or one command never loads what the others use
 * (test/e2e/help.test.ts checks).
 */
export function buildProgram(ctx: CliContext): Command {
  const program = new Command('ambitctl')
    .description('operate an Ambit mesh: register workloads, apply policies, inspect nodes and the CA')
    .version(VERSION)
    .option('--controller <host:port>', `controller address, or every replica's as a comma-separated list of IP addresses [AMBIT_CONTROLLER] (default: ${DEFAULT_CONTROLLER})`)
    .option('--credentials <dir>', 'admin credentials dir with cert.pem, key.pem, ca.pem [AMBIT_CREDENTIALS] (default: <controller data dir>/admin)')
    .showHelpAfterError()
    .exitOverride();
  for (const c of [nodeCommand(ctx), workloadCommand(ctx), serviceCommand(ctx), policyCommand(ctx), applyCommand(ctx), deleteCommand(ctx), getCommand(ctx), caCommand(ctx), statusCommand(ctx), explainCommand(ctx), consoleCommand(ctx)]) {
    program.addCommand(c);
  }
  const configure = (cmd: Command): void => {
    cmd.exitOverride().configureOutput({ writeOut: ctx.out, writeErr: ctx.err }).configureHelp({ optionDescription });
    cmd.commands.forEach(configure);
  };
  configure(program);
  return program;
}

/**
 * An option's default as a user types it (`1h`, `table`), not as commander
 * shows it by default (JSON: `"1h"`, and `[]` for a repeatable flag); nothing
 * for an empty list or an off switch.
 */
export function shownDefault(option: Option): string | undefined {
  const v: unknown = option.defaultValue;
  if (v === undefined || v === false || (Array.isArray(v) && v.length === 0)) return undefined;
  return Array.isArray(v) ? v.join(',') : String(v);
}

function optionDescription(option: Option): string {
  const d = shownDefault(option);
  return d === undefined ? option.description : `${option.description} (default: ${d})`;
}

/** Runs ambitctl; resolves to the exit status (0 ok, 1 failed, 2 usage). */
export async function run(argv: readonly string[], ctx: CliContext): Promise<number> {
  const program = buildProgram(ctx);
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      return err.exitCode === 0 ? 0 : 2;
    }
    if (err instanceof AmbitError) {
      ctx.err(`error: ${err.message} [${err.code}]\n`);
      return err.code === 'AMBIT_ERR_CLI_USAGE' ? 2 : 1;
    }
    ctx.err(`error: ${(err as Error).message ?? String(err)}\n`);
    return 1;
  }
}
