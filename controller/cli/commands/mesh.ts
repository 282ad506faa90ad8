import { Command } from 'commander';
import type * as pb from '../../../shared/proto/gen/ambit.ts';
import { example, outputOf, withApi, type CliContext } from '../context.ts';
import { ago, formatOne, table, until } from '../output.ts';

function caTable(ca: pb.GetCaResponse, now: number): string {
  return table(
    ['FINGERPRINT (SHA-256)', 'ACTIVE', 'NOT AFTER', 'EXPIRES', 'SUBJECT'],
    ca.roots.map((r) => [r.fingerprintSha256, r.active ? 'yes' : 'no', new Date(r.notAfterMs).toISOString(), until(r.notAfterMs, now), r.subject]),
  );
}

/** Where a root rotation stands and whether its next phase is safe (what an operator checks before each step). */
function rotationText(ca: pb.GetCaResponse, now: number): string {
  const r = ca.rotation;
  if (!r || r.phase === 'none') return 'rotation: none (one root in the bundle)\n';
  const lines = [`rotation: ${r.phase}`];
  lines.push(`  nodes without the current bundle: ${r.nodesWithoutBundle.length === 0 ? 'none' : r.nodesWithoutBundle.join(', ')}`);
  lines.push(`  live certificates from the old root: ${r.oldRootCertificates}${r.oldRootCertificates > 0 ? ` on ${r.nodesWithOldCertificates.join(', ')}, the last valid until ${new Date(r.oldRootCertificatesUntilMs).toISOString()} (${until(r.oldRootCertificatesUntilMs, now)})` : ''}`);
  const next = r.phase === 'prepared' ? 'activate' : 'retire';
  const safe = r.phase === 'prepared' ? r.safeToActivate : r.safeToRetire;
  lines.push(`  next: ambitctl ca rotate --phase ${next}: ${safe ? 'safe now' : `not safe yet: ${r.blocking}`}`);
  return `${lines.join('\n')}\n`;
}

function caJson(ca: pb.GetCaResponse | undefined): unknown {
  return ca && {
    trustDomain: ca.trustDomain,
    roots: ca.roots.map((r) => ({ fingerprintSha256: r.fingerprintSha256, active: r.active, subject: r.subject, notBefore: new Date(r.notBeforeMs).toISOString(), notAfter: new Date(r.notAfterMs).toISOString(), pem: r.pem })),
    rotation: ca.rotation && {
      ...ca.rotation,
      oldRootCertificatesUntil: ca.rotation.oldRootCertificatesUntilMs > 0 ? new Date(ca.rotation.oldRootCertificatesUntilMs).toISOString() : '',
    },
  };
}

export function caCommand(ctx: CliContext): Command {
  const ca = new Command('ca').description('the mesh certificate authority');
  ca
    .command('show')
    .description('trust domain, roots in the trust bundle, which one signs')
    .option('-o, --output <format>', 'table, json or yaml', 'table')
    .option('--bundle', 'print only the trust bundle PEM (for openssl verify -CAfile)')
    .addHelpText('after', example('ambitctl ca show\nambitctl ca show --bundle > bundle.pem'))
    .action(async (o: { bundle?: boolean }, c: Command) => {
      const format = outputOf(c);
      await withApi(ctx, c, async (api) => {
        const res = await api.call('GetCa', api.client.getCa, {});
        if (o.bundle) ctx.out(res.trustBundlePem);
        else if (format === 'table') ctx.out(`trust domain: ${res.trustDomain}\n${caTable(res, ctx.now())}${rotationText(res, ctx.now())}`);
        else ctx.out(formatOne(format, caJson(res)));
      });
    });
  ca
    .command('rotate')
    .description('rotate the root CA one phase at a time: prepare → activate → retire')
    .option('--phase <phase>', 'prepare: publish a new root beside the old; activate: sign with it; retire: drop the old root', 'prepare')
    .option('--force', 'apply activate or retire even though the controller judges it unsafe (nodes would fail)')
    .addHelpText('after', example('ambitctl ca rotate                   # prepare: agents receive the new root\nambitctl node list                  # wait until every node shows BUNDLE current\nambitctl ca rotate --phase activate # new certificates come from the new root; agents renew at once\nambitctl ca show                    # wait until it says retire is safe (no live old-root certificates)\nambitctl ca rotate --phase retire'))
    .action(async (o: { phase: string; force?: boolean }, c: Command) => {
      await withApi(ctx, c, async (api) => {
        const res = await api.call('RotateCa', api.client.rotateCa, { phase: o.phase, force: o.force === true });
        ctx.out(`phase ${res.phase} done${o.force ? ' (forced)' : ''}\n`);
        if (res.ca) ctx.out(`${caTable(res.ca, ctx.now())}${rotationText(res.ca, ctx.now())}`);
      });
    });
  return ca;
}

export function statusCommand(ctx: CliContext): Command {
  return new Command('status')
    .description('mesh health at a glance')
    .option('-o, --output <format>', 'table, json or yaml', 'table')
    .addHelpText('after', example('ambitctl status'))
    .action(async (_o: unknown, c: Command) => {
      const format = outputOf(c);
      await withApi(ctx, c, async (api) => {
        const s = await api.call('Status', api.client.status, {});
        if (format !== 'table') {
          ctx.out(formatOne(format, { ...s, ca: caJson(s.ca) }));
          return;
        }
        const now = ctx.now();
        const connected = s.nodes.filter((n) => n.connected).length;
        const behind = s.nodes.filter((n) => n.connected && n.ackedRevision < s.revision).length;
        const nacking = s.nodes.filter((n) => n.nackReason !== '').length;
        const active = s.ca?.roots.find((r) => r.active);
        const lines = [
          `controller   ${s.version}, up ${ago(now - s.uptimeMs, now).replace(' ago', '')}, store ${s.store}, revision ${s.revision}`,
          `trust domain ${s.trustDomain}; CA root ${active ? `${active.fingerprintSha256.slice(0, 16)}… expires ${until(active.notAfterMs, now)}` : 'unknown'}${(s.ca?.roots.length ?? 0) > 1 ? ` (${s.ca?.roots.length} roots in bundle: rotation in progress)` : ''}`,
          `nodes        ${s.nodes.length} known, ${connected} connected${behind ? `, ${behind} behind` : ''}${nacking ? `, ${nacking} refusing config` : ''}`,
          `resources    ${s.workloads} workloads, ${s.services} services, ${s.policies} policies`,
          '',
        ];
        ctx.out(lines.join('\n'));
        if (s.nodes.length > 0) {
          ctx.out(table(['NODE', 'CONNECTED', 'ACKED', 'WORKLOADS', 'LAST SEEN', 'CERTS VALID UNTIL'], s.nodes.map((n) => [
            n.name, n.connected ? 'yes' : 'no', String(n.ackedRevision), String(n.workloads), ago(n.lastSeenMs, now), until(n.certExpiresAtMs, now),
          ])));
        }
      });
    });
}
