import { MESH_NAMESPACE, type AuthorizationPolicy, type PolicyRule, type Service, type Workload } from '../../shared/resources/types.ts';
import { workloadId } from '../../shared/spiffe-id.ts';
import type { CertificateAuthority } from '../ca/authority.ts';
import type { NodeTracker } from '../registry/node-tracker.ts';
import type { Registry } from '../registry/registry.ts';
import type { DenialView, TelemetryWindow } from '../telemetry/telemetry-window.ts';
import type { Explainer } from '../explain/explain.ts';

/** Why a denial happened, in words an operator can act on. */
export interface Explanation {
  readonly summary: string;
  readonly details: readonly string[];
}

/** Explains one reported denial from the controller's current state. */
export type ExplainDenial = (d: DenialView) => Explanation;

export interface ViewDeps {
  readonly registry: Registry;
  readonly nodes: NodeTracker;
  readonly ca: CertificateAuthority;
  readonly telemetry: TelemetryWindow;
  readonly storeBackend: string;
  readonly storeId: string;
  readonly version: string;
  readonly startedAt: number;
  readonly now: () => number;
  readonly explain: ExplainDenial;
}

const workloads = (r: Registry): Workload[] => r.list('Workload') as Workload[];
const services = (r: Registry): Service[] => r.list('Service') as Service[];
const policies = (r: Registry): AuthorizationPolicy[] => r.list('AuthorizationPolicy') as AuthorizationPolicy[];
const nsName = (x: { metadata: { namespace: string; name: string } }): string => `${x.metadata.namespace}/${x.metadata.name}`;
const hasLabels = (labels: Readonly<Record<string, string>>, want: Readonly<Record<string, string>>): boolean =>
  Object.entries(want).every(([k, v]) => labels[k] === v);

/** The workloads a policy applies to: its namespace (every namespace from the mesh namespace), narrowed by its selector. */
export function selectedBy(p: AuthorizationPolicy, all: readonly Workload[]): Workload[] {
  return all.filter((w) => (p.metadata.namespace === MESH_NAMESPACE || w.metadata.namespace === p.metadata.namespace) && hasLabels(w.metadata.labels, p.spec.selector ?? {}));
}

/** Workloads a service selects (same namespace, every selector pair; an empty selector selects none). */
function endpointsOf(s: Service, all: readonly Workload[]): Workload[] {
  if (Object.keys(s.spec.selector).length === 0) return [];
  return all.filter((w) => w.metadata.namespace === s.metadata.namespace && hasLabels(w.metadata.labels, s.spec.selector));
}

/** One rule as a line of text, Istio's words. */
export function ruleText(r: PolicyRule): string {
  const from = r.from.map((s) => {
    const parts: string[] = [];
    const add = (what: string, list: readonly string[] | undefined, not = false): void => {
      if (list && list.length > 0) parts.push(`${not ? 'not ' : ''}${what} ${list.join(' | ')}`);
    };
    add('principals', s.principals);
    add('principals', s.notPrincipals, true);
    add('namespaces', s.namespaces);
    add('namespaces', s.notNamespaces, true);
    add('service accounts', s.serviceAccounts);
    add('service accounts', s.notServiceAccounts, true);
    add('IP blocks', s.ipBlocks);
    add('IP blocks', s.notIpBlocks, true);
    return parts.join(', ') || 'any source';
  });
  const to = r.to.map((o) => {
    const parts: string[] = [];
    if (o.ports && o.ports.length > 0) parts.push(`ports ${o.ports.join(', ')}`);
    if (o.notPorts && o.notPorts.length > 0) parts.push(`not ports ${o.notPorts.join(', ')}`);
    return parts.join(', ') || 'any port';
  });
  return `from ${from.length > 0 ? from.join(' or ') : 'any source'} to ${to.length > 0 ? to.join(' or ') : 'any port'}`;
}

/**
 * A denial explained by the explain engine (controller/explain/, what
 * `ambitctl explain` answers): the same question asked now — this source
 * identity (or address, for plaintext) to the denied workload's address and
 * port — with the verdict from the agents' own policy code, the rules of the
 * policies it names, and how the source and destination resolve. When the
 * state changed since (the source or workload is gone, or it is allowed now)
 * the explanation says so.
 */
export function explainWithEngine(explainer: Explainer, registry: Registry): ExplainDenial {
  const rules = (ref: string, action: string): string[] => {
    const [ns, name] = ref.split('/');
    const p = registry.get({ kind: 'AuthorizationPolicy', namespace: ns ?? '', name: name ?? '' }) as AuthorizationPolicy | undefined;
    if (!p) return [];
    return p.spec.rules.length === 0 ? [`${ref} (${action}) has no rules`] : p.spec.rules.map((r, i) => `${ref} (${action}) rule ${i} admits ${ruleText(r)}`);
  };
  return (d) => {
    const deciding = d.policy || 'no ALLOW matching';
    const dst = registry.get({ kind: 'Workload', namespace: d.destinationNamespace, name: d.destinationWorkload }) as Workload | undefined;
    if (!dst) return { summary: `denied by ${deciding}; workload ${d.destinationNamespace}/${d.destinationWorkload} no longer exists`, details: [] };
    const from = d.sourcePrincipal ? { kind: 'identity' as const, identity: d.sourcePrincipal } : { kind: 'address' as const, address: d.sourceAddress.replace(/:\d+$/, '') };
    const e = explainer.explain({ from, host: dst.spec.address, port: d.destinationPort });
    if (e.error) return { summary: `denied by ${deciding}; asked now: ${e.error.message}`, details: [] };
    const ep = e.endpoints.find((x) => x.workload === `${dst.metadata.namespace}/${dst.metadata.name}`);
    if (!ep) return { summary: `denied by ${deciding}`, details: e.destination ? [e.destination.detail] : [] };
    const v = ep.verdict;
    const deny = v.reason === 'denied_by_policy' ? rules(v.policy, 'DENY').filter((_, i) => i === v.rule) : [];
    const details = [
      ...(e.source ? [`source: ${e.source.workload || e.source.identity || e.source.address}${e.source.node ? ` on ${e.source.node}` : ''}, ${e.source.peerAuthentication === 'mutual_tls' ? 'mTLS' : 'plaintext'}`] : []),
      ...(e.destination ? [`destination: ${e.destination.detail}`] : []),
      ...deny.map((r) => r.replace(' admits ', ' matches ')),
      ...v.allowPolicies.flatMap((p) => rules(p, 'ALLOW')),
    ];
    return { summary: v.allowed ? `allowed now (${v.summary}): the policies changed since this denial` : v.summary, details };
  };
}

export async function statusView(d: ViewDeps) {
  const counts = d.registry.counts();
  const nodes = await d.nodes.list();
  return {
    version: d.version,
    trustDomain: d.ca.trustDomain,
    store: d.storeBackend,
    storeId: d.storeId,
    revision: d.registry.revision,
    counts: { workloads: counts.Workload, services: counts.Service, policies: counts.AuthorizationPolicy },
    nodes: { connected: nodes.filter((n) => n.connected).length, total: nodes.length },
    ca: {
      rotation: d.ca.rotationState(),
      roots: d.ca.roots().map((r) => ({ fingerprint: r.fingerprint, subject: r.subject, notBefore: r.notBefore, notAfter: r.notAfter, active: r.active })),
    },
    uptimeMs: d.now() - d.startedAt,
    now: d.now(),
  };
}

export async function nodesView(d: ViewDeps) {
  const now = d.now();
  const revision = d.registry.revision;
  return {
    revision,
    nodes: (await d.nodes.list()).map((n) => ({
      name: n.name,
      connected: n.connected,
      ackedRevision: n.ackedRevision,
      lag: Math.max(0, revision - n.ackedRevision),
      nackReason: n.nackReason,
      certExpiresAt: n.certExpiresAt,
      runwayMs: n.certExpiresAt > 0 ? n.certExpiresAt - now : 0,
      lastSeen: n.lastSeen,
      workloads: d.registry.workloadsOnNode(n.name).length,
      hboneAddress: n.hboneAddress,
    })),
  };
}

export function workloadsView(d: ViewDeps) {
  const all = workloads(d.registry);
  return {
    workloads: all.map((w) => ({
      namespace: w.metadata.namespace, name: w.metadata.name, labels: w.metadata.labels, node: w.spec.node, address: w.spec.address,
      ports: w.spec.ports, identity: workloadId(d.ca.trustDomain, w.metadata.namespace, w.spec.serviceAccount).uri,
    })),
    services: services(d.registry).map((s) => ({
      namespace: s.metadata.namespace, name: s.metadata.name, host: `${s.metadata.name}.${s.metadata.namespace}.svc`,
      addresses: s.spec.addresses, ports: s.spec.ports, selector: s.spec.selector, endpoints: endpointsOf(s, all).map(nsName),
    })),
  };
}

export function policiesView(d: ViewDeps) {
  const all = workloads(d.registry);
  return {
    policies: policies(d.registry).map((p) => ({
      namespace: p.metadata.namespace, name: p.metadata.name, action: p.spec.action,
      scope: `${p.metadata.namespace === MESH_NAMESPACE ? 'every namespace' : `namespace ${p.metadata.namespace}`}${p.spec.selector && Object.keys(p.spec.selector).length > 0 ? `, workloads with ${Object.entries(p.spec.selector).map(([k, v]) => `${k}=${v}`).join(', ')}` : ', every workload'}`,
      rules: p.spec.rules.length === 0 ? [p.spec.action === 'ALLOW' ? 'no rules: matches nothing' : 'no rules: denies nothing'] : p.spec.rules.map(ruleText),
      selected: selectedBy(p, all).map(nsName),
    })),
  };
}

const label = (ns: string, name: string): string => (name && name !== 'unknown' ? `${ns}/${name}` : 'unknown');

export function graphView(d: ViewDeps) {
  const edges = d.telemetry.edges();
  return {
    windowMs: edges[0]?.windowMs ?? 60_000,
    edges: edges.map((e) => ({
      ...e,
      sourceLabel: label(e.source.namespace, e.source.workload),
      // A service when the client named one; else the workload it reached.
      destinationLabel: e.destination.service && e.destination.service !== 'unknown' ? e.destination.service : label(e.destination.namespace, e.destination.workload),
    })),
  };
}

export function denialsView(d: ViewDeps) {
  return {
    denials: d.telemetry.denials().map((x) => ({
      ...x,
      sourceLabel: x.sourceWorkload && x.sourceWorkload !== 'unknown' ? `${x.sourceNamespace}/${x.sourceWorkload}` : x.sourcePrincipal || x.sourceAddress || 'unknown',
      destinationLabel: label(x.destinationNamespace, x.destinationWorkload),
      explanation: d.explain(x),
    })),
  };
}
