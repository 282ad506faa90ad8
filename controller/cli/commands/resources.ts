import { Command } from 'commander';
import { AmbitError } from '../../../shared/errors.ts';
import type * as pb from '../../../shared/proto/gen/ambit.ts';
import { API_VERSION, type Kind, type Resource } from '../../../shared/resources/types.ts';
import type { AdminApi } from '../client.ts';
import { collect, example, outputOf, parsePairs, withApi, type CliContext } from '../context.ts';
import { formatList, formatOne, labelsText, table } from '../output.ts';

/** The validator and the wire codec, loaded by the commands that use them (not by --help). */
const validation = () => import('../../../shared/resources/validate.ts');
const wire = () => import('../../../shared/resources/wire.ts');

interface KindView {
  readonly kind: Kind;
  readonly noun: string;
  readonly headers: readonly string[];
  readonly row: (r: Resource) => string[];
}

const WORKLOAD_VIEW: KindView = {
  kind: 'Workload',
  noun: 'workload',
  headers: ['NAMESPACE', 'NAME', 'NODE', 'ADDRESS', 'PORTS', 'SERVICE ACCOUNT', 'UID', 'LABELS'],
  row: (r) => r.kind !== 'Workload' ? [] : [
    r.metadata.namespace, r.metadata.name, r.spec.node, r.spec.address, r.spec.ports.join(',') || '*', r.spec.serviceAccount,
    r.spec.uid === undefined ? '-' : String(r.spec.uid), labelsText(r.metadata.labels),
  ],
};

const SERVICE_VIEW: KindView = {
  kind: 'Service',
  noun: 'service',
  headers: ['NAMESPACE', 'NAME', 'ADDRESSES', 'PORTS', 'SELECTOR'],
  row: (r) => r.kind !== 'Service' ? [] : [
    r.metadata.namespace, r.metadata.name, r.spec.addresses.join(',') || '<none>',
    // The same form `service create --port` takes; "/tcp" is the default and left out.
    r.spec.ports.map((p) => `${p.name}=${p.port}:${p.targetPort}${p.appProtocol === 'tcp' ? '' : `/${p.appProtocol}`}`).join(','),
    labelsText(r.spec.selector),
  ],
};

const POLICY_VIEW: KindView = {
  kind: 'AuthorizationPolicy',
  noun: 'policy',
  headers: ['NAMESPACE', 'NAME', 'ACTION', 'SELECTOR', 'RULES'],
  row: (r) => r.kind !== 'AuthorizationPolicy' ? [] : [
    r.metadata.namespace, r.metadata.name, r.spec.action, r.spec.selector ? labelsText(r.spec.selector) : '<all>', String(r.spec.rules.length),
  ],
};

async function printResources(ctx: CliContext, cmd: Command, view: KindView, resources: readonly Resource[]): Promise<void> {
  const format = outputOf(cmd);
  if (format === 'table') ctx.out(table(view.headers, resources.map(view.row)));
  else ctx.out(formatList(format, resources.map((await validation()).toDocument)));
}

/** list / get / remove for one kind: the same verbs and flags for every kind. */
function addReadVerbs(ctx: CliContext, parent: Command, view: KindView, withRemove: boolean): void {
  parent
    .command('list')
    .description(`list ${view.noun}s (all namespaces unless -n)`)
    .option('-n, --namespace <ns>', 'only this namespace')
    .option('-o, --output <format>', 'table, json or yaml', 'table')
    .addHelpText('after', example(`ambitctl ${view.noun} list -n default -o json`))
    .action(async (opts: { namespace?: string }, cmd: Command) => {
      await withApi(ctx, cmd, async (api) => {
        const res = await api.call('List', api.client.list, { kind: view.kind, namespace: opts.namespace ?? '' });
        const { resourceFromWire } = await wire();
        await printResources(ctx, cmd, view, res.resources.map(resourceFromWire));
      });
    });
  parent
    .command('get <name>')
    .description(`show one ${view.noun}`)
    .option('-n, --namespace <ns>', 'namespace', 'default')
    .option('-o, --output <format>', 'table, json or yaml', 'table')
    .addHelpText('after', example(`ambitctl ${view.noun} get web -n default -o yaml`))
    .action(async (name: string, opts: { namespace: string }, cmd: Command) => {
      await withApi(ctx, cmd, async (api) => {
        const [{ resourceFromWire }, { toDocument }] = await Promise.all([wire(), validation()]);
        const r = resourceFromWire(await api.call('Get', api.client.get, { key: { kind: view.kind, namespace: opts.namespace, name } }));
        const format = outputOf(cmd);
        if (format === 'table') ctx.out(table(view.headers, [view.row(r)]));
        else ctx.out(formatOne(format, toDocument(r)));
      });
    });
  if (!withRemove) return;
  parent
    .command('remove <name>')
    .alias('delete')
    .description(`remove a ${view.noun}`)
    .option('-n, --namespace <ns>', 'namespace', 'default')
    .addHelpText('after', example(`ambitctl ${view.noun} remove web -n default`))
    .action(async (name: string, opts: { namespace: string }, cmd: Command) => {
      await withApi(ctx, cmd, async (api) => {
        const { keyToWire } = await wire();
        const res = await api.call('Delete', api.client.delete, { keys: [keyToWire({ kind: view.kind, namespace: opts.namespace, name })], ignoreNotFound: false });
        ctx.out(`${view.kind} ${opts.namespace}/${name} removed (revision ${res.revision})\n`);
      });
    });
}

/** Creates one resource, failing if it exists (imperative create, like kubectl create). */
async function createOne(ctx: CliContext, api: AdminApi, doc: Record<string, unknown>, where: string): Promise<void> {
  const [{ validateResource }, { resourceToWire }] = await Promise.all([validation(), wire()]);
  const r = validateResource(doc, where);
  const res = await api.call('Apply', api.client.apply, { resources: [resourceToWire(r)], createOnly: true, dryRun: false });
  ctx.out(`${r.kind} ${r.metadata.namespace}/${r.metadata.name} created (revision ${res.revision})\n`);
}

function intArg(flag: string, v: string): number {
  if (!/^\d+$/.test(v)) throw new AmbitError('AMBIT_ERR_CLI_USAGE', `invalid ${flag} ${JSON.stringify(v)}: expected a whole number`, { details: { field: flag } });
  return Number(v);
}

export function workloadCommand(ctx: CliContext): Command {
  const cmd = new Command('workload').description('workloads (the mesh identities of processes, VMs and pods)');
  cmd
    .command('register')
    .description('register a non-Kubernetes workload on a node')
    .requiredOption('--name <name>', 'workload name')
    .option('--namespace <ns>', 'namespace', 'default')
    .requiredOption('--service-account <sa>', 'service account: the identity is spiffe://<td>/ns/<ns>/sa/<sa>')
    .requiredOption('--node <node>', 'node (host) the workload runs on; only its agent may get the certificate')
    .requiredOption('--address <ip>', 'the workload IP address')
    .option('--port <port>', 'a port the workload serves (repeatable)', collect, [])
    .option('--label <k=v>', 'a label (repeatable)', collect, [])
    .option('--uid <uid>', 'Unix uid of the workload processes (VM capture by owner)')
    .option('--weight <n>', 'load-balancing weight 1-1000')
    .option('--locality <region/zone/subzone>', 'locality for locality-aware load balancing')
    .addHelpText('after', example('ambitctl workload register --name billing --namespace prod --service-account billing \\\n  --node vm-1 --address 10.0.0.5 --port 8080 --label app=billing --uid 1001'))
    .action(async (o: { name: string; namespace: string; serviceAccount: string; node: string; address: string; port: string[]; label: string[]; uid?: string; weight?: string; locality?: string }, c: Command) => {
      const doc = {
        apiVersion: API_VERSION,
        kind: 'Workload',
        metadata: { name: o.name, namespace: o.namespace, labels: parsePairs('--label', o.label) },
        spec: {
          serviceAccount: o.serviceAccount,
          node: o.node,
          address: o.address,
          ports: o.port.map((p) => intArg('--port', p)),
          ...(o.uid === undefined ? {} : { uid: intArg('--uid', o.uid) }),
          ...(o.weight === undefined ? {} : { weight: intArg('--weight', o.weight) }),
          ...(o.locality === undefined ? {} : { locality: o.locality }),
        },
      };
      await withApi(ctx, c, (api) => createOne(ctx, api, doc, 'workload register'));
    });
  addReadVerbs(ctx, cmd, WORKLOAD_VIEW, true);
  return cmd;
}

export function serviceCommand(ctx: CliContext): Command {
  const cmd = new Command('service').description('services: virtual addresses and ports load-balanced over selected workloads');
  cmd
    .command('create')
    .description('create a service')
    .requiredOption('--name <name>', 'service name')
    .option('--namespace <ns>', 'namespace', 'default')
    .option('--port <port>', '[NAME=]PORT[:TARGET_PORT][/APP_PROTOCOL] (repeatable; APP_PROTOCOL tcp, http, http2 or grpc)', collect, [])
    .option('--selector <k=v>', 'workload label selector (repeatable or comma-separated)', collect, [])
    .option('--address <vip>', 'virtual IP (repeatable)', collect, [])
    .addHelpText('after', example('ambitctl service create --name web --namespace default --port 80:8080 --selector app=web --address 10.96.0.10'))
    .action(async (o: { name: string; namespace: string; port: string[]; selector: string[]; address: string[] }, c: Command) => {
      const { parsePortMapping } = await validation();
      const doc = {
        apiVersion: API_VERSION,
        kind: 'Service',
        metadata: { name: o.name, namespace: o.namespace },
        spec: { ports: o.port.map(parsePortMapping), selector: parsePairs('--selector', o.selector), addresses: o.address },
      };
      await withApi(ctx, c, (api) => createOne(ctx, api, doc, 'service create'));
    });
  addReadVerbs(ctx, cmd, SERVICE_VIEW, true);
  return cmd;
}

export function policyCommand(ctx: CliContext): Command {
  const cmd = new Command('policy').description('authorization policies (create them with ambitctl apply -f)');
  addReadVerbs(ctx, cmd, POLICY_VIEW, true);
  return cmd;
}

export function applyResults(ctx: CliContext, res: pb.ApplyResponse, dryRun: boolean): void {
  for (const r of res.results) ctx.out(`${r.key?.kind} ${r.key?.namespace}/${r.key?.name} ${r.outcome}${dryRun ? ' (dry run)' : ''}\n`);
}
