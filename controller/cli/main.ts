#!/usr/bin/env node
import tls from 'node:tls';
import { readFileSync } from 'node:fs';
import { text } from 'node:stream/consumers';
import { Command, CommanderError } from 'commander';
import { AmbitError } from '../../shared/errors.ts';
import { VERSION } from '../app.ts';
import type { CliContext } from './context.ts';
import { nodeCommand } from './commands/node.ts';
import { policyCommand, serviceCommand, workloadCommand } from './commands/resources.ts';
import { applyCommand, deleteCommand } from './commands/files.ts';
import { caCommand, statusCommand } from './commands/mesh.ts';

// Ambit speaks TLS 1.3 only (DESIGN §3); grpc-js has no per-channel minimum.
tls.DEFAULT_MIN_VERSION = 'TLSv1.3';

/** Builds the ambitctl program; exported so tests can drive it in-process. */
export function buildProgram(ctx: CliContext): Command {
  const program = new Command('ambitctl')
    .description('operate an Ambit mesh: register workloads, apply policies, inspect nodes and the CA')
    .version(VERSION)
    .option('--controller <host:port>', 'controller address [AMBIT_CONTROLLER] (default 127.0.0.1:15012)')
    .option('--credentials <dir>', 'admin credentials dir with cert.pem, key.pem, ca.pem [AMBIT_CREDENTIALS] (default: <controller data dir>/admin)')
    .showHelpAfterError()
    .exitOverride();
  for (const c of [nodeCommand(ctx), workloadCommand(ctx), serviceCommand(ctx), policyCommand(ctx), applyCommand(ctx), deleteCommand(ctx), caCommand(ctx), statusCommand(ctx)]) {
    program.addCommand(c);
  }
  const configure = (cmd: Command): void => {
    cmd.exitOverride().configureOutput({ writeOut: ctx.out, writeErr: ctx.err });
    cmd.commands.forEach(configure);
  };
  configure(program);
  return program;
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

if (import.meta.main) {
  const ctx: CliContext = {
    env: process.env,
    out: (t) => process.stdout.write(t),
    err: (t) => process.stderr.write(t),
    readFile: (p) => readFileSync(p, 'utf8'),
    // Read as a stream to EOF: a synchronous read of fd 0 fails with EAGAIN
    // when stdin is a non-blocking pipe whose writer has not written yet.
    readStdin: () => text(process.stdin),
    now: Date.now,
  };
  run(process.argv.slice(2), ctx).then((code) => {
    process.exitCode = code;
  });
}
