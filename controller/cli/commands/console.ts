import { Command } from 'commander';
import { join } from 'node:path';
import { formatDuration, parseDuration } from '../../../shared/config-parse.ts';
import { AmbitError } from '../../../shared/errors.ts';
import { resolveConnection } from '../config.ts';
import { example, withApi, type CliContext } from '../context.ts';

/**
 * `ambitctl console`: where the web console is and a link to log in with.
 * The controller mints the token for the admin identity that asks (this
 * command's mTLS certificate) and keeps only its hash; the token sits in the
 * link's fragment, which a browser never sends to a server or into a log.
 */
export function consoleCommand(ctx: CliContext): Command {
  return new Command('console')
    .description('print the web console\'s address and a single-use, short-lived login link')
    .option('--ttl <duration>', 'how long the login link stays valid (at most 1h)', '5m')
    .addHelpText('after', example('ambitctl console\nambitctl console --ttl 10m'))
    .action(async (opts: { ttl: string }, cmd: Command) => {
      let ttlMs: number;
      try {
        ttlMs = parseDuration(opts.ttl);
      } catch (cause) {
        throw new AmbitError('AMBIT_ERR_CLI_USAGE', `invalid --ttl ${JSON.stringify(opts.ttl)}: ${(cause as Error).message}`, { cause });
      }
      if (ttlMs > 3_600_000) throw new AmbitError('AMBIT_ERR_CLI_USAGE', `invalid --ttl ${opts.ttl}: a console login link lives at most 1h`);
      await withApi(ctx, cmd, async (api) => {
        const res = await api.call('CreateConsoleLogin', api.client.createConsoleLogin, { ttlMs });
        const g = cmd.optsWithGlobals<{ controller?: string; credentials?: string }>();
        const ca = join(resolveConnection({ controller: g.controller, credentials: g.credentials }, ctx.env).credentialsDir, 'ca.pem');
        ctx.out(`Console: ${res.consoleUrl}/\n`);
        ctx.out(`Log in:  ${res.consoleUrl}/login#token=${res.token}\n`);
        ctx.err(`The link works once and expires in ${formatDuration(Math.max(0, Math.round((res.expiresAtMs - ctx.now()) / 1000) * 1000))} (${new Date(res.expiresAtMs).toISOString()}).\n`);
        ctx.err(`The console presents the controller's certificate from the mesh CA; to have the browser trust it, import ${ca}.\n`);
      });
    });
}
