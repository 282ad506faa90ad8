/**
 * Source proof, without sockets: which `Forwarded: for=` claims a
 * destination agent believes (verifyClaimedSource), and what admitInbound
 * does with a claim it does not believe — refuse before policy, counted —
 * under an `ipBlocks` ALLOW and an `ipBlocks` DENY.
 */
import t from 'tap';
import { Registry } from 'prom-client';
import { verifyClaimedSource } from '../../../agent/connection/source-proof.ts';
import { admitInbound, UNVERIFIED_SOURCE_FLAG, type InboundDeps } from '../../../agent/connection/admission.ts';
import { ConnectionTracker } from '../../../agent/proxy/connection-tracker.ts';
import { createAgentMetrics } from '../../../agent/proxy/metrics.ts';
import { MeshState } from '../../../agent/state/mesh-state.ts';
import { createLogger } from '../../../shared/logger.ts';
import type { AuthorizationPolicy, PolicySource, Workload } from '../../../shared/resources/types.ts';
import { workloadId } from '../../../shared/spiffe-id.ts';
import { getTracer } from '../../../shared/tracing.ts';

const TD = 'cluster.local';
const HERE = 'node-b';
const NODE_A_IP = '10.1.0.1';
const NODE_C_IP = '10.3.0.1';

function wl(name: string, node: string, address: string, extra: Partial<Workload['spec']> = {}): Workload {
  return {
    kind: 'Workload',
    metadata: { name, namespace: 'shop', labels: { app: name }, revision: 1 },
    spec: { serviceAccount: name, node, address, ports: [], weight: 1, locality: '', healthy: true, ...extra },
  };
}

function source(fields: Partial<PolicySource>): PolicySource {
  return { principals: [], notPrincipals: [], namespaces: [], notNamespaces: [], serviceAccounts: [], notServiceAccounts: [], ipBlocks: [], notIpBlocks: [], ...fields };
}

function policy(action: 'ALLOW' | 'DENY', from: PolicySource): AuthorizationPolicy {
  return {
    kind: 'AuthorizationPolicy',
    metadata: { name: `by-ip-${action.toLowerCase()}`, namespace: 'shop', labels: {}, revision: 1 },
    spec: { action, selector: { app: 'web' }, rules: [{ from: [from], to: [] }] },
  };
}

const CLIENT = wl('client', 'node-a', '10.1.0.5');
const ADMIN = wl('admin', 'node-a', '10.1.0.6'); // the address an ipBlocks rule singles out
const ELSEWHERE = wl('client-c', 'node-c', '10.3.0.5', { serviceAccount: 'client' }); // client's identity on another node
const WEB = wl('web', HERE, '10.2.0.7', { ports: [8080] });
const NO_NODE = wl('orphan', 'node-x', '10.9.0.9'); // its node has not reported an address

function mesh(policies: AuthorizationPolicy[] = []): MeshState {
  const s = new MeshState(HERE, TD);
  s.apply({
    revision: 1,
    snapshot: [CLIENT, ADMIN, ELSEWHERE, WEB, NO_NODE, ...policies],
    nodes: [{ name: 'node-a', hboneAddress: `${NODE_A_IP}:15008` }, { name: 'node-b', hboneAddress: '10.2.0.1:15008' }, { name: 'node-c', hboneAddress: `[::ffff:${NODE_C_IP}]:15008` }],
  });
  return s;
}

const id = (w: Workload): string => workloadId(TD, w.metadata.namespace, w.spec.serviceAccount).uri;

t.test('verifyClaimedSource: a claim stands only for a workload of the certificate on the peer agent\'s node', async (t) => {
  const s = mesh();
  const cases: { name: string; claimed: string | undefined; identity: string; peer: string; ok: boolean }[] = [
    { name: 'true claim from its node', claimed: '10.1.0.5', identity: id(CLIENT), peer: NODE_A_IP, ok: true },
    { name: 'true claim, peer as IPv4-mapped IPv6', claimed: '10.1.0.5', identity: id(CLIENT), peer: `::ffff:${NODE_A_IP}`, ok: true },
    { name: 'claim, IPv4-mapped', claimed: '::ffff:10.1.0.5', identity: id(CLIENT), peer: NODE_A_IP, ok: true },
    { name: 'another workload\'s address (same node)', claimed: '10.1.0.6', identity: id(CLIENT), peer: NODE_A_IP, ok: false },
    { name: 'an address no workload has', claimed: '192.0.2.1', identity: id(CLIENT), peer: NODE_A_IP, ok: false },
    { name: 'its own address, from another node\'s agent', claimed: '10.1.0.5', identity: id(CLIENT), peer: NODE_C_IP, ok: false },
    { name: 'same identity on node-c, from node-c', claimed: '10.3.0.5', identity: id(CLIENT), peer: NODE_C_IP, ok: true },
    { name: 'same identity on node-c, from node-a', claimed: '10.3.0.5', identity: id(CLIENT), peer: NODE_A_IP, ok: false },
    { name: 'node address unknown: the identity check alone', claimed: '10.9.0.9', identity: id(NO_NODE), peer: '203.0.113.9', ok: true },
    { name: 'nothing claimed: no address, not refused', claimed: undefined, identity: id(CLIENT), peer: NODE_A_IP, ok: true },
  ];
  for (const c of cases) {
    const v = verifyClaimedSource(s, c.claimed, { identityUri: c.identity, remoteAddress: c.peer });
    t.equal(v.ok, c.ok, c.name);
    if (v.ok) t.equal(v.address, c.claimed, `${c.name}: the address policy sees`);
    else t.equal(v.reason, 'unverified_source_address', `${c.name}: reason`);
  }
});

t.test('verifyClaimedSource: agents on loopback addresses dial from 127.0.0.1', async (t) => {
  const s = new MeshState(HERE, TD);
  const w = wl('client', 'node-a', '127.0.9.5');
  s.apply({ revision: 1, snapshot: [w], nodes: [{ name: 'node-a', hboneAddress: '127.0.9.2:15008' }] });
  t.ok(verifyClaimedSource(s, '127.0.9.5', { identityUri: id(w), remoteAddress: '127.0.0.1' }).ok, 'loopback node, loopback peer: this machine');
  t.notOk(verifyClaimedSource(s, '127.0.9.5', { identityUri: id(w), remoteAddress: '10.0.0.1' }).ok, 'loopback node, a remote peer: refused');
});

function deps(state: MeshState): { d: InboundDeps; registry: Registry; lines: Record<string, unknown>[] } {
  const registry = new Registry();
  const lines: Record<string, unknown>[] = [];
  const accessLog = createLogger({ name: 'access', level: 'info', destination: { write: (l: string) => void lines.push(JSON.parse(l) as Record<string, unknown>) } });
  return { d: { state, metrics: createAgentMetrics(registry), accessLog, tracer: getTracer('test', '0'), tracker: new ConnectionTracker(), connectTimeoutMs: 1000 }, registry, lines };
}

async function refusedCount(registry: Registry, reason: string): Promise<number> {
  const m = await registry.getSingleMetric('ambit_connections_refused_total')!.get();
  return m.values.filter((v) => v.labels.reason === reason && v.labels.direction === 'inbound').reduce((a, v) => a + v.value, 0);
}

function connect(d: InboundDeps, forwarded: string | undefined, identity: Workload = CLIENT, peer = NODE_A_IP) {
  return admitInbound(d, { method: 'CONNECT', authority: '10.2.0.7:8080', forwarded, baggage: undefined, traceparent: undefined }, {
    identity: workloadId(TD, 'shop', identity.spec.serviceAccount), servedIdentity: id(WEB), remoteAddress: peer,
  });
}

t.test('admitInbound, ipBlocks ALLOW: a forged claim of the allowed address is refused (401, counted), a true claim passes', async (t) => {
  const { d, registry, lines } = deps(mesh([policy('ALLOW', source({ ipBlocks: ['10.1.0.6/32'] }))]));
  const forged = connect(d, 'for=10.1.0.6');
  t.same(forged.allowed ? 'allowed' : { status: forged.status, reason: forged.reason }, { status: 401, reason: 'unverified_source_address' }, 'client claiming admin\'s address: 401 unverified_source_address');
  t.equal(await refusedCount(registry, 'unverified_source_address'), 1, 'ambit_connections_refused_total{reason="unverified_source_address"}');
  t.match(lines.at(-1), { response_flags: UNVERIFIED_SOURCE_FLAG, 'src.addr': '10.1.0.6', error: /unverified_source_address: 10\.1\.0\.6 is not an address of a workload with identity/ }, 'the access log names the claim and the flag');
  const denied = await registry.getSingleMetric('ambit_policy_denials_total')!.get();
  t.equal(denied.values.length, 0, 'not counted as a policy denial: policy was never asked');

  const real = connect(d, 'for=10.1.0.6', ADMIN);
  t.equal(real.allowed, true, 'admin claiming its own address from its node: allowed by the ipBlocks ALLOW');
  const noClaim = connect(d, undefined, ADMIN);
  t.same(noClaim.allowed ? 'allowed' : noClaim.status, 401, 'no Forwarded at all: no verified address, the ipBlocks ALLOW cannot match');
  t.equal(await refusedCount(registry, 'unverified_source_address'), 1, 'that is a policy denial, not a forged claim');
});

t.test('admitInbound, ipBlocks DENY: a claim of another address cannot evade it', async (t) => {
  const { d, registry } = deps(mesh([policy('DENY', source({ ipBlocks: ['10.1.0.5/32'] }))]));
  const evading = connect(d, 'for=10.1.0.6');
  t.same(evading.allowed ? 'allowed' : { status: evading.status, reason: evading.reason }, { status: 401, reason: 'unverified_source_address' }, 'client (denied by address) claiming admin\'s address: refused');
  const truthful = connect(d, 'for=10.1.0.5');
  t.same(truthful.allowed ? 'allowed' : truthful.status, 401, 'client\'s true address: denied by the DENY');
  t.match(truthful.allowed ? {} : truthful, { reason: /^denied: denied_by_policy by shop\/by-ip-deny/ }, 'by the policy');
  t.equal(connect(d, 'for=10.1.0.6', ADMIN).allowed, true, 'admin from its own address: not caught by the DENY, allowed');
  t.equal(connect(d, 'for=10.1.0.5', CLIENT, NODE_C_IP).allowed, false, 'client\'s address claimed through another node\'s agent: refused');
  t.equal(await refusedCount(registry, 'unverified_source_address'), 2, 'both forged claims counted');
});
