import { Command } from 'commander';
import { AmbitError } from '../../../shared/errors.ts';
import type { ExplainedDestination, ExplainedSource, Explanation } from '../../explain/explain.ts';
import { example, outputOf, withApi, type CliContext } from '../context.ts';
import { formatOne, table } from '../output.ts';

function sourceText(s: ExplainedSource): string {
  const authn = s.peerAuthentication === 'mutual_tls' ? 'mTLS' : 'plaintext (refused by a --mode strict agent; policy without identity in permissive mode)';
  switch (s.kind) {
    case 'workload': return `workload ${s.workload} (${s.identity}) on node ${s.node}, address ${s.address}, ${authn}`;
    case 'identity': return `identity ${s.identity} (no one workload holds it: no verified address), ${authn}`;
    case 'external': return `${s.address}, outside the mesh: ${authn}`;
  }
}

function destinationText(d: ExplainedDestination): string[] {
  if (d.kind !== 'service' || d.servicePort === null) return [`${d.kind}: ${d.detail}`];
  const p = d.servicePort;
  return [
    `service ${d.service}${d.serviceAddresses.length > 0 ? ` (VIP ${d.serviceAddresses.join(', ')})` : ''}, port ${p.port}${p.name ? ` (${p.name})` : ''} → target port ${p.targetPort}, appProtocol ${p.appProtocol}`,
    d.detail,
  ];
}

/** The human form: source, destination, then one row per endpoint with its verdict. */
export function explanationText(e: Explanation): string {
  const lines = [`explain ${e.query.from} → ${e.query.to}${e.query.request ? `, request ${e.query.request}` : ''} (revision ${e.revision})`];
  lines.push(`source       ${e.source ? sourceText(e.source) : 'unknown'}`);
  if (e.source) {
    const [first, ...rest] = e.destination ? destinationText(e.destination) : ['unknown'];
    lines.push(`destination  ${first}`, ...rest.map((l) => `             ${l}`));
  }
  if (e.routes) lines.push(`routes       ${e.routes.summary}`);
  let out = `${lines.join('\n')}\n`;
  if (e.routes && e.routes.rules.length > 0) {
    out += `\n${table(['RULE', 'MATCH', 'BACKENDS', 'ALSO'], e.routes.rules.map((r) => [
      r.rule,
      r.match,
      r.backends.map((b) => `${b.service} weight ${b.weight}${b.unresolved ? ` (${b.unresolved}: 500)` : ''}`).join(', ') || (r.actions.some((x) => x.startsWith('redirect')) ? '-' : 'none (500)'),
      r.actions.join('; ') || '-',
    ]))}`;
  }
  if (e.endpoints.length > 0) {
    out += `\n${table(['ENDPOINT', 'ADDRESS', 'NODE', 'WEIGHT', 'HEALTHY', 'VERDICT'], e.endpoints.map((p) => [
      p.workload,
      `${p.address}:${p.port}${p.serving ? '' : ' (port not served)'}`,
      `${p.node}${p.nodeAddress ? ` (${p.nodeAddress})` : ' (no agent address)'}`,
      String(p.weight),
      p.healthy ? 'yes' : 'no',
      p.verdict.request ? `${p.verdict.summary}; ${p.verdict.request.summary}` : p.verdict.summary,
    ]))}`;
  }
  return out;
}

export function explainCommand(ctx: CliContext): Command {
  return new Command('explain')
    .description('dry run from the controller\'s state: the source identity, how HOST:PORT resolves (service, endpoints, nodes) and the policy verdict on each endpoint, naming the deciding policy and rule')
    .option('--from <ns/workload>', 'the source workload')
    .option('--from-identity <spiffe-id>', 'the source by SPIFFE ID')
    .option('--from-address <ip>', 'the source by address (a workload\'s, or one outside the mesh)')
    .requiredOption('--to <host:port>', 'a service name (name.ns, name.ns.svc.cluster.local), a service VIP, a workload address or any host')
    .option('--method <method>', 'on HTTP ports: check one request with this method (default with --path or --host: GET)')
    .option('--path <path>', 'on HTTP ports: the request\'s path (default with --method or --host: /)')
    .option('--host <host>', 'on HTTP ports: the request\'s Host (default with --method or --path: HOST of --to, with :PORT unless 80)')
    .option('-o, --output <format>', 'table, json or yaml', 'table')
    .addHelpText('after', example('ambitctl explain --from demo/client --to web.demo:80\nambitctl explain --from-identity spiffe://cluster.local/ns/demo/sa/intruder --to web.demo.svc.cluster.local:80 -o json\nambitctl explain --from-address 10.0.0.9 --to 10.96.0.10:80\nambitctl explain --from demo/client --to web.demo:80 --method POST --path /admin'))
    .action(async (o: { from?: string; fromIdentity?: string; fromAddress?: string; to: string; method?: string; path?: string; host?: string }, c: Command) => {
      const format = outputOf(c);
      // Loaded when the command runs (program.ts: --help loads no command's dependencies).
      const { explainQuery, explainRequestToWire, explanationFromWire } = await import('../../api/explain-wire.ts');
      // Checked before connecting: a malformed query is a usage error (exit status 2).
      let query;
      try {
        query = explainQuery(o);
      } catch (err) {
        throw new AmbitError('AMBIT_ERR_CLI_USAGE', (err as Error).message, { cause: err, details: { field: (err as AmbitError).details?.field } });
      }
      await withApi(ctx, c, async (api) => {
        const e = explanationFromWire(await api.call('Explain', api.client.explain, explainRequestToWire(query)));
        ctx.out(format === 'table' ? explanationText(e) : formatOne(format, e));
        // The answer is printed either way; an unknown source or destination still fails the command.
        if (e.error) throw new AmbitError(e.error.code, e.error.message);
      });
    });
}
