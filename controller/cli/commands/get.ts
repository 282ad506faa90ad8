import { Command } from 'commander';
import { AmbitError } from '../../../shared/errors.ts';
import { GATEWAY_GROUP, type FaultInjection, type ReferenceGrant, type RouteCondition, type RouteResource, type RouteStatus } from '../../../shared/resources/route-types.ts';
import type { Resource } from '../../../shared/resources/types.ts';
import { example, outputOf, withApi, type CliContext } from '../context.ts';
import { formatList, formatOne, table } from '../output.ts';

/**
 * `ambitctl get httproute|grpcroute|referencegrant|faultinjection [NAME]`:
 * the Gateway API's kinds (and Ambit's filter) as kubectl shows them. Routes come with their
 * status, computed by the controller from the mesh at the time of the call;
 * -o yaml|json prints each in the upstream shape with status.parents.
 */
const KIND_NAMES = {
  httproute: 'HTTPRoute', httproutes: 'HTTPRoute',
  grpcroute: 'GRPCRoute', grpcroutes: 'GRPCRoute',
  faultinjection: 'FaultInjection', faultinjections: 'FaultInjection',
  referencegrant: 'ReferenceGrant', referencegrants: 'ReferenceGrant',
} as const;
type GetKind = (typeof KIND_NAMES)[keyof typeof KIND_NAMES];

function kindOf(arg: string): GetKind {
  const k = (KIND_NAMES as Readonly<Record<string, GetKind>>)[arg.toLowerCase()];
  if (k === undefined) {
    throw new AmbitError('AMBIT_ERR_CLI_USAGE', `unknown kind ${JSON.stringify(arg)}: use httproute, grpcroute, referencegrant or faultinjection (other kinds: ambitctl workload|service|policy list)`, { details: { field: 'kind', value: arg } });
  }
  return k;
}

/** "True", or "False (Reason)" for the first parent where it is not. */
function summary(status: RouteStatus, type: RouteCondition['type']): string {
  const conds = status.parents.flatMap((p) => p.conditions.filter((c) => c.type === type));
  const bad = conds.find((c) => c.status !== 'True');
  return bad === undefined ? 'True' : `False (${bad.reason})`;
}

function parentsText(r: RouteResource): string {
  return r.spec.parentRefs.map((p) => `${p.namespace}/${p.name}${p.port === undefined ? '' : `:${p.port}`}`).join(',');
}

function faultText(f: FaultInjection, duration: (ms: number) => string): [string, string] {
  const d = f.spec.delay;
  const a = f.spec.abort;
  return [
    d === undefined ? '-' : `${duration(d.fixedDelayMs)} ${d.percentage}%`,
    a === undefined ? '-' : `${a.httpStatus}${a.grpcStatus === undefined ? '' : `/grpc ${a.grpcStatus}`} ${a.percentage}%`,
  ];
}

/** A group and kind as kubectl writes them: "Service" for the core group, "HTTPRoute" for the Gateway API's, else "Kind.group". */
function groupKind(group: string, kind: string): string {
  return group === '' || group === GATEWAY_GROUP ? kind : `${kind}.${group}`;
}

function grantText(g: ReferenceGrant): [string, string] {
  return [
    g.spec.from.map((f) => `${groupKind(f.group, f.kind)}/${f.namespace}`).join(','),
    g.spec.to.map((x) => `${groupKind(x.group, x.kind)}${x.name === undefined ? '' : `/${x.name}`}`).join(','),
  ];
}

export function getCommand(ctx: CliContext): Command {
  return new Command('get')
    .description('show HTTPRoutes or GRPCRoutes with their status (Accepted, ResolvedRefs per parent), ReferenceGrants or FaultInjections')
    .argument('<kind>', 'httproute, grpcroute, referencegrant or faultinjection')
    .argument('[name]', 'one resource; without it, every one')
    .option('-n, --namespace <ns>', 'namespace; without it, default with a NAME and every namespace without')
    .option('-o, --output <format>', 'table, json or yaml', 'table')
    .addHelpText('after', example('ambitctl get httproute -n shop\nambitctl get httproute canary -n shop -o yaml'))
    .action(async (kindArg: string, name: string | undefined, o: { namespace?: string }, cmd: Command) => {
      const kind = kindOf(kindArg);
      const format = outputOf(cmd);
      const namespace = o.namespace ?? (name === undefined ? '' : 'default');
      await withApi(ctx, cmd, async (api) => {
        const [{ resourceFromWire, routeStatusFromWire }, { toDocument }, { formatDuration }] = await Promise.all([
          import('../../../shared/resources/wire.ts'), import('../../../shared/resources/validate.ts'), import('../../../shared/resources/validate-route.ts'),
        ]);
        let items: { resource: Resource; status?: RouteStatus }[];
        if (kind === 'FaultInjection' || kind === 'ReferenceGrant') {
          const wire = name === undefined
            ? (await api.call('List', api.client.list, { kind, namespace })).resources
            : [await api.call('Get', api.client.get, { key: { kind, namespace, name } })];
          items = wire.map((w) => ({ resource: resourceFromWire(w) }));
        } else {
          const res = await api.call('ListRoutes', api.client.listRoutes, { kind, namespace, name: name ?? '' });
          items = res.routes.map((r) => {
            if (r.route === undefined) throw new AmbitError('AMBIT_ERR_RPC_FAILED', 'ListRoutes answered a route without its resource');
            return { resource: resourceFromWire(r.route), status: routeStatusFromWire(r.parents) };
          });
        }
        if (format === 'table') {
          if (kind === 'FaultInjection') {
            ctx.out(table(['NAMESPACE', 'NAME', 'DELAY', 'ABORT'], items.map(({ resource: r }) => r.kind !== 'FaultInjection' ? [] : [r.metadata.namespace, r.metadata.name, ...faultText(r, formatDuration)])));
          } else if (kind === 'ReferenceGrant') {
            ctx.out(table(['NAMESPACE', 'NAME', 'FROM', 'TO'], items.map(({ resource: r }) => r.kind !== 'ReferenceGrant' ? [] : [r.metadata.namespace, r.metadata.name, ...grantText(r)])));
          } else {
            ctx.out(table(['NAMESPACE', 'NAME', 'PARENTS', 'ACCEPTED', 'RESOLVEDREFS'], items.map(({ resource: r, status }) => (r.kind !== 'HTTPRoute' && r.kind !== 'GRPCRoute') || status === undefined ? [] : [
              r.metadata.namespace, r.metadata.name, parentsText(r), summary(status, 'Accepted'), summary(status, 'ResolvedRefs'),
            ])));
          }
          return;
        }
        // The upstream shape: the document, and for routes status.parents[] as the Gateway API writes it.
        const docs = items.map(({ resource, status }) => (status === undefined ? toDocument(resource) : { ...toDocument(resource), status: statusDocument(status) }));
        if (name !== undefined) ctx.out(formatOne(format, docs[0]));
        else ctx.out(formatList(format, docs));
      });
    });
}

function statusDocument(s: RouteStatus): Record<string, unknown> {
  return {
    parents: s.parents.map((p) => ({
      parentRef: { group: '', kind: 'Service', namespace: p.parentRef.namespace, name: p.parentRef.name, ...(p.parentRef.port === undefined ? {} : { port: p.parentRef.port }) },
      controllerName: p.controllerName,
      conditions: p.conditions.map((c) => ({ type: c.type, status: c.status, reason: c.reason, message: c.message })),
    })),
  };
}
