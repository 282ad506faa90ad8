import { apiVersionOf } from './types.ts';
import { faultInjectionDocument, grpcRouteDocument, httpRouteDocument, referenceGrantDocument } from './route-document.ts';
import type { AuthorizationPolicySpec, PolicyOperation, PolicyRule, PolicySource, Resource, ServiceSpec, WorkloadSpec } from './types.ts';

/**
 * Core resources back to the document shape users write (the inverse of
 * validateResource): what `get -o yaml|json` prints and `apply -f` accepts.
 * Defaults and empty lists are left out so printed resources read like the
 * files they came from; validateResource(toDocument(r)) equals r with
 * revision 0. The document shares no arrays or objects with `r`.
 */
export function toDocument(r: Resource): Record<string, unknown> {
  const { name, namespace, labels, revision } = r.metadata;
  return {
    apiVersion: apiVersionOf(r.kind),
    kind: r.kind,
    metadata: { name, namespace, labels: { ...labels }, revision },
    spec: specDocument(r),
  };
}

function specDocument(r: Resource): Record<string, unknown> {
  switch (r.kind) {
    case 'Workload': return workloadSpec(r.spec);
    case 'Service': return serviceSpec(r.spec);
    case 'AuthorizationPolicy': return policySpec(r.spec);
    case 'HTTPRoute': return httpRouteDocument(r.spec, r.metadata.namespace);
    case 'GRPCRoute': return grpcRouteDocument(r.spec, r.metadata.namespace);
    case 'FaultInjection': return faultInjectionDocument(r.spec);
    case 'ReferenceGrant': return referenceGrantDocument(r.spec);
  }
}

function workloadSpec(s: WorkloadSpec): Record<string, unknown> {
  const out: Record<string, unknown> = { serviceAccount: s.serviceAccount, node: s.node, address: s.address };
  if (s.ports.length > 0) out['ports'] = [...s.ports];
  if (s.uid !== undefined) out['uid'] = s.uid;
  if (s.weight !== 1) out['weight'] = s.weight;
  if (s.locality !== '') out['locality'] = s.locality;
  if (!s.healthy) out['healthy'] = false;
  return out;
}

function serviceSpec(s: ServiceSpec): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (s.addresses.length > 0) out['addresses'] = [...s.addresses];
  out['ports'] = s.ports.map((p) => {
    // targetPort is always printed: where traffic lands is worth seeing even when it equals port.
    const port: Record<string, unknown> = p.name === `port-${p.port}` ? {} : { name: p.name };
    Object.assign(port, { port: p.port, targetPort: p.targetPort });
    if (p.appProtocol !== 'tcp') port['appProtocol'] = p.appProtocol;
    return port;
  });
  out['selector'] = { ...s.selector };
  return out;
}

/** Only the fields holding values: an empty list in a source or operation means "no condition". */
function nonEmpty<T extends PolicySource | PolicyOperation>(x: T): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(x)) {
    if (Array.isArray(v) && v.length > 0) out[k] = [...(v as unknown[])];
  }
  return out;
}

function rule(r: PolicyRule): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (r.from.length > 0) out['from'] = r.from.map((s) => ({ source: nonEmpty(s) }));
  if (r.to.length > 0) out['to'] = r.to.map((o) => ({ operation: nonEmpty(o) }));
  return out;
}

function policySpec(s: AuthorizationPolicySpec): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (s.selector !== undefined) out['selector'] = { matchLabels: { ...s.selector } };
  out['action'] = s.action;
  out['rules'] = s.rules.map(rule);
  return out;
}
