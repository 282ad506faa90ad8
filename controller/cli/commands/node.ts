import { Command } from 'commander';
import { parseDuration } from '../../../shared/config-parse.ts';
import { AmbitError } from '../../../shared/errors.ts';
import { example, outputOf, withApi, type CliContext } from '../context.ts';
import { ago, formatList, table, until } from '../output.ts';

export function nodeCommand(ctx: CliContext): Command {
  const node = new Command('node').description('join tokens and node (agent) status');
  const token = new Command('token').description('join tokens for bootstrapping agents');
  token
    .command('create')
    .description('print a single-use join token for a node (it also pins the controller CA)')
    .requiredOption('--node <name>', 'node (host) name the token is for')
    .option('--ttl <duration>', 'how long the token stays valid', '1h')
    .addHelpText('after', example('TOKEN=$(ambitctl node token create --node vm-1 --ttl 30m)\nambit-agent --node vm-1 --join "$TOKEN" --controller ctl.example:15012 ...'))
    .action(async (opts: { node: string; ttl: string }, cmd: Command) => {
      let ttlMs: number;
      try {
        ttlMs = parseDuration(opts.ttl);
      } catch (cause) {
        throw new AmbitError('AMBIT_ERR_CLI_USAGE', `invalid --ttl ${JSON.stringify(opts.ttl)}: ${(cause as Error).message}`, { cause });
      }
      await withApi(ctx, cmd, async (api) => {
        const res = await api.call('CreateJoinToken', api.client.createJoinToken, { node: opts.node, ttlMs });
        ctx.out(`${res.token}\n`);
        ctx.err(`join token for node ${opts.node}, single use, expires ${new Date(res.expiresAtMs).toISOString()}\n`);
      });
    });
  node.addCommand(token);
  node
    .command('list')
    .description('nodes: connected, revision acknowledged, last seen, certificate expiry')
    .option('-o, --output <format>', 'table, json or yaml', 'table')
    .addHelpText('after', example('ambitctl node list\nambitctl node list -o json'))
    .action(async (_opts: unknown, cmd: Command) => {
      const format = outputOf(cmd);
      await withApi(ctx, cmd, async (api) => {
        const res = await api.call('ListNodes', api.client.listNodes, {});
        if (format !== 'table') {
          ctx.out(formatList(format, res.nodes));
          return;
        }
        const now = ctx.now();
        ctx.out(table(
          ['NAME', 'CONNECTED', 'ACKED', 'LAG', 'NACK', 'WORKLOADS', 'LAST SEEN', 'CERT EXPIRES'],
          res.nodes.map((n) => [
            n.name, n.connected ? 'yes' : 'no', String(n.ackedRevision), String(Math.max(0, res.revision - n.ackedRevision)),
            n.nackReason ? `${n.nackedRevision}: ${n.nackReason}` : '-', String(n.workloads), ago(n.lastSeenMs, now), until(n.certExpiresAtMs, now),
          ]),
        ));
      });
    });
  return node;
}
