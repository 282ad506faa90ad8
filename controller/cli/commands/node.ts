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
    .description('nodes: connected, revision and trust bundle acknowledged, old-root certificates, last seen, certificate expiry')
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
        // BUNDLE: has the agent acknowledged exactly the controller's trust bundle (what a root rotation waits for)?
        // OLD CERTS: its live certificates that chain to a root other than the active one (what retire waits for).
        ctx.out(table(
          ['NAME', 'CONNECTED', 'ACKED', 'LAG', 'NACK', 'BUNDLE', 'OLD CERTS', 'WORKLOADS', 'LAST SEEN', 'CERT EXPIRES'],
          res.nodes.map((n) => [
            n.name, n.connected ? 'yes' : 'no', String(n.ackedRevision), String(Math.max(0, res.revision - n.ackedRevision)),
            n.nackReason ? `${n.nackedRevision}: ${n.nackReason}` : '-',
            n.bundleCurrent ? 'current' : n.trustedRoots.length > 0 ? 'stale' : 'unknown',
            n.oldRootCertificates > 0 ? `${n.oldRootCertificates} (last ${until(n.oldRootCertificatesUntilMs, now)})` : '0',
            String(n.workloads), ago(n.lastSeenMs, now), until(n.certExpiresAtMs, now),
          ]),
        ));
      });
    });
  return node;
}
