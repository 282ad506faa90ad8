import { AmbitError } from '../errors.ts';
import { HTTP_OPERATION_FIELDS } from '../authorization-http.ts';
import { faultInjectionDocument, grpcRouteDocument, httpRouteDocument, referenceGrantDocument } from './route-document.ts';
import { checkFaultInjectionSpec, checkGRPCRouteSpec, checkHTTPRouteSpec } from './validate-route.ts';
import { checkReferenceGrantSpec } from './validate-reference-grant.ts';
import { Checker } from './validate-fields.ts';
import type { FaultInjection, GRPCRoute, HTTPRoute, ReferenceGrant, RouteStatus } from './route-types.ts';
import type * as pb from '../proto/gen/ambit.ts';
import {
  KINDS,
  type AppProtocol,
  type AuthorizationPolicy,
  type Change,
  type Kind,
  type ObjectMeta,
  type PolicyAction,
  type PolicyOperation,
  type Resource,
  type ResourceKey,
  type Service,
  type Workload,
} from './types.ts';

/**
 * Conversions between the protobuf wire types and the core resource types.
 * The only module (with the generated code) that knows the wire shape, so the
 * core never depends on protobuf (DESIGN §9 rule 5). fromWire does NOT
 * validate: callers that accept resources from outside (the Admin API) run
 * validateResource on the result. The exception is the kinds carried as a
 * JSON document (routes, FaultInjection, ReferenceGrant; see ambit.proto DocumentResource):
 * turning that document into the core type is validation, so it is done here.
 */
function metaToWire(m: ObjectMeta): pb.ObjectMeta {
  return { name: m.name, namespace: m.namespace, labels: { ...m.labels }, revision: m.revision };
}

function metaFromWire(m: pb.ObjectMeta | undefined): ObjectMeta {
  return { name: m?.name ?? '', namespace: m?.namespace ?? '', labels: { ...(m?.labels ?? {}) }, revision: m?.revision ?? 0 };
}

export function resourceToWire(r: Resource): pb.Resource {
  switch (r.kind) {
    case 'Workload': {
      const s = r.spec;
      const spec: pb.WorkloadSpec = {
        serviceAccount: s.serviceAccount, node: s.node, address: s.address, ports: [...s.ports],
        weight: s.weight, locality: s.locality, healthy: s.healthy,
      };
      if (s.uid !== undefined) spec.uid = s.uid;
      return { kind: { $case: 'workload', workload: { metadata: metaToWire(r.metadata), spec } } };
    }
    case 'Service':
      return {
        kind: {
          $case: 'service',
          service: {
            metadata: metaToWire(r.metadata),
            spec: {
              addresses: [...r.spec.addresses],
              ports: r.spec.ports.map((p) => ({ name: p.name, port: p.port, targetPort: p.targetPort, appProtocol: p.appProtocol })),
              selector: { ...r.spec.selector },
            },
          },
        },
      };
    case 'AuthorizationPolicy':
      return {
        kind: {
          $case: 'authorizationPolicy',
          authorizationPolicy: {
            metadata: metaToWire(r.metadata),
            spec: {
              hasSelector: r.spec.selector !== undefined,
              selector: { ...(r.spec.selector ?? {}) },
              action: r.spec.action,
              rules: r.spec.rules.map((rule) => ({
                from: rule.from.map((s) => ({
                  principals: [...s.principals], notPrincipals: [...s.notPrincipals],
                  namespaces: [...s.namespaces], notNamespaces: [...s.notNamespaces],
                  serviceAccounts: [...s.serviceAccounts], notServiceAccounts: [...s.notServiceAccounts],
                  ipBlocks: [...s.ipBlocks], notIpBlocks: [...s.notIpBlocks],
                })),
                to: rule.to.map(operationToWire),
              })),
            },
          },
        },
      };
    case 'HTTPRoute':
      return { kind: { $case: 'httpRoute', httpRoute: documentToWire(r, httpRouteDocument(r.spec, r.metadata.namespace)) } };
    case 'GRPCRoute':
      return { kind: { $case: 'grpcRoute', grpcRoute: documentToWire(r, grpcRouteDocument(r.spec, r.metadata.namespace)) } };
    case 'FaultInjection':
      return { kind: { $case: 'faultInjection', faultInjection: documentToWire(r, faultInjectionDocument(r.spec)) } };
    case 'ReferenceGrant':
      return { kind: { $case: 'referenceGrant', referenceGrant: documentToWire(r, referenceGrantDocument(r.spec)) } };
  }
}

function documentToWire(r: Resource, spec: Record<string, unknown>): pb.DocumentResource {
  return { metadata: metaToWire(r.metadata), specJson: JSON.stringify(spec) };
}

/** A DocumentResource's spec, validated into the core type by `check`; AMBIT_ERR_RESOURCE_INVALID naming the field otherwise. */
function documentFromWire<T>(kind: Kind, d: pb.DocumentResource, check: (c: Checker, v: unknown, field: string, ns: string) => T | undefined): { metadata: ObjectMeta; spec: T } {
  const metadata = metaFromWire(d.metadata);
  const what = `${kind} ${metadata.namespace}/${metadata.name}`;
  let raw: unknown;
  try {
    raw = JSON.parse(d.specJson);
  } catch (err) {
    throw new AmbitError('AMBIT_ERR_RESOURCE_INVALID', `${what}: spec is not JSON`, { cause: err, details: { field: 'spec', kind } });
  }
  const c = new Checker();
  const spec = check(c, raw, 'spec', metadata.namespace || 'default');
  const first = c.errors[0];
  if (first !== undefined || spec === undefined) {
    throw new AmbitError('AMBIT_ERR_RESOURCE_INVALID', `${what}: ${first?.field ?? 'spec'}: ${first?.message ?? 'invalid'}`, {
      details: { field: first?.field, kind, value: first?.value, errors: c.errors.map((e) => `${what}: ${e.field}: ${e.message}`) },
    });
  }
  return { metadata, spec };
}

function operationToWire(o: PolicyOperation): pb.PolicyOperation {
  // `?? []`: a policy stored before the HTTP fields existed has none.
  return {
    ports: [...o.ports], notPorts: [...o.notPorts],
    methods: [...(o.methods ?? [])], notMethods: [...(o.notMethods ?? [])],
    paths: [...(o.paths ?? [])], notPaths: [...(o.notPaths ?? [])],
    hosts: [...(o.hosts ?? [])], notHosts: [...(o.notHosts ?? [])],
  };
}

function operationFromWire(o: pb.PolicyOperation): PolicyOperation {
  const out: { -readonly [K in keyof PolicyOperation]: PolicyOperation[K] } = { ports: [...o.ports], notPorts: [...o.notPorts] };
  for (const f of HTTP_OPERATION_FIELDS) if (o[f].length > 0) out[f] = [...o[f]];
  return out;
}

export function resourceFromWire(w: pb.Resource): Resource {
  const k = w.kind;
  if (!k) throw new AmbitError('AMBIT_ERR_RESOURCE_INVALID', 'resource has no kind');
  switch (k.$case) {
    case 'workload': {
      const s = k.workload.spec;
      const wl: Workload = {
        kind: 'Workload',
        metadata: metaFromWire(k.workload.metadata),
        spec: {
          serviceAccount: s?.serviceAccount ?? '', node: s?.node ?? '', address: s?.address ?? '', ports: [...(s?.ports ?? [])],
          weight: s?.weight ?? 0, locality: s?.locality ?? '', healthy: s?.healthy ?? false,
          ...(s?.uid === undefined ? {} : { uid: s.uid }),
        },
      };
      return wl;
    }
    case 'service': {
      const s = k.service.spec;
      const svc: Service = {
        kind: 'Service',
        metadata: metaFromWire(k.service.metadata),
        spec: {
          addresses: [...(s?.addresses ?? [])],
          // An empty app_protocol is a peer that predates the field: its ports are TCP.
          ports: (s?.ports ?? []).map((p) => ({
            name: p.name, port: p.port, targetPort: p.targetPort, appProtocol: (p.appProtocol || 'tcp') as AppProtocol,
          })),
          selector: { ...(s?.selector ?? {}) },
        },
      };
      return svc;
    }
    case 'authorizationPolicy': {
      const s = k.authorizationPolicy.spec;
      const pol: AuthorizationPolicy = {
        kind: 'AuthorizationPolicy',
        metadata: metaFromWire(k.authorizationPolicy.metadata),
        spec: {
          ...(s?.hasSelector ? { selector: { ...s.selector } } : {}),
          action: (s?.action ?? '') as PolicyAction,
          rules: (s?.rules ?? []).map((r) => ({
            from: r.from.map((f) => ({
              principals: [...f.principals], notPrincipals: [...f.notPrincipals],
              namespaces: [...f.namespaces], notNamespaces: [...f.notNamespaces],
              serviceAccounts: [...f.serviceAccounts], notServiceAccounts: [...f.notServiceAccounts],
              ipBlocks: [...f.ipBlocks], notIpBlocks: [...f.notIpBlocks],
            })),
            to: r.to.map(operationFromWire),
          })),
        },
      };
      return pol;
    }
    case 'httpRoute': {
      const route: HTTPRoute = { kind: 'HTTPRoute', ...documentFromWire('HTTPRoute', k.httpRoute, checkHTTPRouteSpec) };
      return route;
    }
    case 'grpcRoute': {
      const route: GRPCRoute = { kind: 'GRPCRoute', ...documentFromWire('GRPCRoute', k.grpcRoute, checkGRPCRouteSpec) };
      return route;
    }
    case 'faultInjection': {
      const fault: FaultInjection = { kind: 'FaultInjection', ...documentFromWire('FaultInjection', k.faultInjection, (c, v, f) => checkFaultInjectionSpec(c, v, f)) };
      return fault;
    }
    case 'referenceGrant': {
      const grant: ReferenceGrant = { kind: 'ReferenceGrant', ...documentFromWire('ReferenceGrant', k.referenceGrant, (c, v, f) => checkReferenceGrantSpec(c, v, f)) };
      return grant;
    }
  }
}

export function keyToWire(k: ResourceKey): pb.ResourceKey {
  return { kind: k.kind, namespace: k.namespace, name: k.name };
}

export function keyFromWire(k: pb.ResourceKey | undefined): ResourceKey {
  const kind = k?.kind ?? '';
  if (!(KINDS as readonly string[]).includes(kind)) {
    throw new AmbitError('AMBIT_ERR_RESOURCE_INVALID', `unknown kind ${JSON.stringify(kind)}; expected one of ${KINDS.join(', ')}`, {
      details: { field: 'kind', value: kind },
    });
  }
  return { kind: kind as Kind, namespace: k?.namespace || 'default', name: k?.name ?? '' };
}

export function changeToWire(c: Change): pb.Change {
  return c.op === 'put'
    ? { change: { $case: 'put', put: resourceToWire(c.resource) } }
    : { change: { $case: 'delete', delete: keyToWire(c.key) } };
}

export function changeFromWire(c: pb.Change): Change {
  if (!c.change) throw new AmbitError('AMBIT_ERR_RESOURCE_INVALID', 'change has neither put nor delete');
  return c.change.$case === 'put'
    ? { op: 'put', resource: resourceFromWire(c.change.put) }
    : { op: 'delete', key: keyFromWire(c.change.delete) };
}

export function routeStatusToWire(s: RouteStatus): pb.RouteParentStatus[] {
  return s.parents.map((p) => ({
    namespace: p.parentRef.namespace, name: p.parentRef.name, port: p.parentRef.port ?? 0, controllerName: p.controllerName,
    conditions: p.conditions.map((c) => ({ type: c.type, status: c.status, reason: c.reason, message: c.message })),
  }));
}

export function routeStatusFromWire(parents: readonly pb.RouteParentStatus[]): RouteStatus {
  return {
    parents: parents.map((p) => ({
      parentRef: { group: '', kind: 'Service', namespace: p.namespace, name: p.name, ...(p.port === 0 ? {} : { port: p.port }) },
      controllerName: p.controllerName,
      conditions: p.conditions.map((c) => ({
        type: c.type === 'Accepted' ? 'Accepted' : 'ResolvedRefs', status: c.status === 'True' ? 'True' : 'False', reason: c.reason, message: c.message,
      })),
    })),
  };
}
