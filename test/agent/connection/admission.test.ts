import t, { type Test } from 'tap';
import { Registry } from 'prom-client';
import {
  admitInbound, admitPlaintext, forwardedFor, parseAuthority,
  type Admitted, type InboundDeps, type InboundRequest, type PlaintextArrival, type Refused,
} from '../../../agent/connection/admission.ts';
import { answerStatusOf, REFUSALS, type RefusalReason } from '../../../agent/connection/refusals.ts';
import type { PeerInfo } from '../../../agent/proxy/hbone-names.ts';
import { ConnectionTracker } from '../../../agent/proxy/connection-tracker.ts';
import { createAgentMetrics } from '../../../agent/proxy/metrics.ts';
import { MeshState } from '../../../agent/state/mesh-state.ts';
import { createLogger } from '../../../shared/logger.ts';
import type { AuthorizationPolicy, Workload } from '../../../shared/resources/types.ts';
import { workloadId } from '../../../shared/spiffe-id.ts';
import { getTracer } from '../../../shared/tracing.ts';

t.test('parseAuthority accepts ip:port and [v6]:port', async (t) => {
  t.same(parseAuthority('10.0.0.1:8080'), { ip: '10.0.0.1', port: 8080 });
  t.same(parseAuthority('[2001:db8::1]:443'), { ip: '2001:db8::1', port: 443 });
  t.same(parseAuthority('[::1]:1'), { ip: '::1', port: 1 }, 'lowest port');
  t.same(parseAuthority('255.255.255.255:65535'), { ip: '255.255.255.255', port: 65535 }, 'highest port');
  t.same(parseAuthority('[::ffff:10.0.0.1]:80'), { ip: '::ffff:10.0.0.1', port: 80 }, 'IPv4-mapped IPv6');
  t.same(parseAuthority('[FD00::A]:80'), { ip: 'FD00::A', port: 80 }, 'upper-case hex');
  t.same(parseAuthority('10.0.0.1:08080'), { ip: '10.0.0.1', port: 8080 }, 'five digits with a leading zero');
});

t.test('parseAuthority refuses anything else', async (t) => {
  const bad = [
    undefined, '',
    '10.0.0.1', '10.0.0.1:', ':80', '[::1]', '[::1]:',
    '2001:db8::1:80', '::1:80', // IPv6 must be bracketed
    'web.shop:80', 'localhost:80', // names: the authority is a workload address
    '10.0.0.256:80', '10.0.0:80', '[2001:db8::g]:80', '[1:2:3:4:5:6:7:8:9]:80',
    '10.0.0.1:0', '10.0.0.1:65536', '10.0.0.1:99999', '10.0.0.1:123456', '10.0.0.1:-1', '10.0.0.1:8o',
    ' 10.0.0.1:80', '10.0.0.1:80 ', '10.0.0.1:80\n', '10.0.0.1:80/path', 'http://10.0.0.1:80',
    '[fe80::1%eth0]:80',
    `[${'0:'.repeat(31)}0]:80`, // over 64 characters
    '1'.repeat(65), `10.0.0.1:${'0'.repeat(60)}80`,
  ];
  for (const a of bad) t.equal(parseAuthority(a), undefined, JSON.stringify(a));
});

t.test('forwardedFor reads the for= parameter (RFC 7239)', async (t) => {
  t.equal(forwardedFor('for=1.2.3.4'), '1.2.3.4');
  t.equal(forwardedFor('for="[::1]:80"'), '::1', 'quoted, bracketed IPv6 with a port');
  t.equal(forwardedFor('for="[2001:db8::17]"'), '2001:db8::17', 'quoted, bracketed IPv6');
  t.equal(forwardedFor('for="1.2.3.4"'), '1.2.3.4', 'quoted IPv4');
  t.equal(forwardedFor('For=1.2.3.4'), '1.2.3.4', 'the parameter name is case-insensitive');
  t.equal(forwardedFor('proto=https;for=10.1.2.3;by=10.0.0.1'), '10.1.2.3', 'among other parameters');
  t.equal(forwardedFor('for=1.2.3.4, for=5.6.7.8'), '1.2.3.4', 'the first element (the original client)');
  t.equal(forwardedFor(['for=9.9.9.9', 'for=1.1.1.1']), '9.9.9.9', 'a repeated header: the first');
});

t.test('forwardedFor: missing or garbage → undefined', async (t) => {
  const bad: (string | string[] | undefined)[] = [
    undefined, '', [], 'proto=https', 'by=1.2.3.4',
    'for=unknown', 'for=_hidden', 'for=', 'for=""', 'for="[garbage]"', 'for=999.1.1.1', 'for=1.2.3',
    'xfor=1.2.3.4', 'before=1.2.3.4', // only a whole "for" parameter counts
  ];
  for (const h of bad) t.equal(forwardedFor(h), undefined, JSON.stringify(h));
});

// ------------------------------------------------------------ the decisions, every refusal

const TD = 'cluster.local';
const HERE = 'node-b';

function wl(name: string, node: string, address: string, extra: Partial<Workload['spec']> = {}): Workload {
  return {
    kind: 'Workload',
    metadata: { name, namespace: 'shop', labels: { app: name }, revision: 1 },
    spec: { serviceAccount: name, node, address, ports: [], weight: 1, locality: '', healthy: true, ...extra },
  };
}

const CLIENT = wl('client', 'node-a', '10.1.0.5');
const WEB = wl('web', HERE, '10.2.0.7', { ports: [8080] });
const DB = wl('db', HERE, '10.2.0.8', { ports: [5432] });
const idOf = (w: Workload): string => workloadId(TD, 'shop', w.spec.serviceAccount).uri;

function denyAll(): AuthorizationPolicy {
  return { kind: 'AuthorizationPolicy', metadata: { name: 'no-web', namespace: 'shop', labels: {}, revision: 1 }, spec: { action: 'DENY', selector: { app: 'web' }, rules: [{ from: [], to: [] }] } };
}

function setUp(policies: AuthorizationPolicy[] = []): { d: InboundDeps; registry: Registry; lines: Record<string, unknown>[] } {
  const state = new MeshState(HERE, TD);
  state.apply({ revision: 1, snapshot: [CLIENT, WEB, DB, ...policies], nodes: [{ name: 'node-a', hboneAddress: '10.1.0.1:15008' }, { name: HERE, hboneAddress: '10.2.0.1:15008' }] });
  const registry = new Registry();
  const lines: Record<string, unknown>[] = [];
  const accessLog = createLogger({ name: 'access', level: 'info', destination: { write: (l: string) => void lines.push(JSON.parse(l) as Record<string, unknown>) } });
  return { d: { state, metrics: createAgentMetrics(registry), accessLog, tracer: getTracer('test', '0'), tracker: new ConnectionTracker(), connectTimeoutMs: 1000 }, registry, lines };
}

async function counted(registry: Registry, name: string): Promise<Record<string, number>> {
  const m = await registry.getSingleMetric(name)!.get();
  return Object.fromEntries(m.values.filter((v) => v.value > 0).map((v) => [`${v.labels.direction}/${v.labels.reason}`, v.value]));
}

interface Expect {
  readonly status: number;
  readonly reason: RefusalReason;
  /** The answer's x-ambit-reason (default: the reason). */
  readonly answer?: RegExp;
  readonly flag: string;
}

/** A refusal as the data plane and the operator see it: status, answer, one count under the reason, one access-log line with the flag. */
async function refusedAs(t: Test, got: Admitted | Refused, env: { registry: Registry; lines: Record<string, unknown>[] }, e: Expect): Promise<void> {
  if (got.allowed) {
    t.fail(`allowed; expected ${e.reason}`);
    return;
  }
  t.equal(got.status, e.status, `${e.reason}: status ${e.status}`);
  t.equal(got.status, answerStatusOf(e.reason), `${e.reason}: the registry's status`);
  t.equal(got.refusal, e.reason);
  t.match(got.reason, e.answer ?? new RegExp(`^${e.reason}$`), `${e.reason}: the answer's reason`);
  t.same(await counted(env.registry, 'ambit_connections_refused_total'), { [`inbound/${e.reason}`]: 1 }, `${e.reason}: counted once under the registered reason`);
  t.equal(env.lines.length, 1, `${e.reason}: one access-log line`);
  t.match(env.lines[0], { response_flags: e.flag, error: e.answer ?? new RegExp(`^${e.reason}`) }, `${e.reason}: flag ${e.flag} and error`);
  t.equal(e.flag, REFUSALS[e.reason].responseFlag, `${e.reason}: the registry's flag`);
}

const peer = { identity: workloadId(TD, 'shop', 'client'), servedIdentity: idOf(WEB), remoteAddress: '10.1.0.1' };
const request = (over: Partial<InboundRequest> = {}): InboundRequest => ({ method: 'CONNECT', authority: '10.2.0.7:8080', forwarded: 'for=10.1.0.5', baggage: undefined, traceparent: undefined, ...over });

t.test('admitInbound: every refusal it can make, and an admission', async (t) => {
  const cases: { name: string; req: InboundRequest; peer?: PeerInfo; policies?: AuthorizationPolicy[]; expect: Expect }[] = [
    { name: 'not a CONNECT', req: request({ method: 'GET' }), expect: { status: 405, reason: 'not_connect', flag: 'NR' } },
    { name: 'authority not ip:port', req: request({ authority: 'web.shop:8080' }), expect: { status: 400, reason: 'bad_authority', flag: 'NR' } },
    { name: 'no local workload there', req: request({ authority: '10.2.0.7:9999' }), expect: { status: 400, reason: 'not_a_local_workload', flag: 'NR' } },
    { name: 'another identity than the SNI asked for', req: request({ authority: '10.2.0.8:5432' }), expect: { status: 400, reason: 'identity_mismatch', flag: 'NR' } },
    { name: 'a claimed address that is not the peer\'s', req: request({ forwarded: 'for=10.2.0.8' }), expect: { status: 401, reason: 'unverified_source_address', answer: /^unverified_source_address/, flag: 'UNVERIFIED_SOURCE' } },
    { name: 'policy', req: request(), policies: [denyAll()], expect: { status: 401, reason: 'denied', answer: /^denied: denied_by_policy by shop\/no-web$/, flag: 'DENY' } },
  ];
  for (const c of cases) {
    const env = setUp(c.policies);
    await t.test(c.name, async (t) => refusedAs(t, admitInbound(env.d, c.req, c.peer ?? peer), env, c.expect));
  }
  const env = setUp();
  const ok = admitInbound(env.d, request(), peer);
  t.match(ok, { allowed: true, dial: { host: '10.2.0.7', port: 8080 } }, 'a CONNECT to the workload of the identity asked for, from a verified address, no policy: admitted');
  t.same(await counted(env.registry, 'ambit_connections_refused_total'), {}, 'nothing refused');
});

t.test('admitInbound: a denial counts as reason "denied"; the rule and policy stay in the answer, ambit_policy_denials_total and the access log', async (t) => {
  const env = setUp([denyAll()]);
  admitInbound(env.d, request(), peer);
  const denials = await env.registry.getSingleMetric('ambit_policy_denials_total')!.get();
  t.same(denials.values.map((v) => ({ ...v.labels, value: v.value })), [{ direction: 'inbound', policy: 'shop/no-web', reason: 'denied_by_policy', value: 1 }]);
  t.match(env.lines, [{ policy: 'shop/no-web', response_flags: 'DENY' }], 'the access log names the policy');
});

t.test('admitInbound and admitPlaintext: a denial for want of a matching ALLOW is counted and logged as policy "(no ALLOW matched)"', async (t) => {
  const onlyDb: AuthorizationPolicy = { kind: 'AuthorizationPolicy', metadata: { name: 'web-from-db', namespace: 'shop', labels: {}, revision: 1 }, spec: { action: 'ALLOW', selector: { app: 'web' }, rules: [{ from: [{ principals: [], notPrincipals: [], namespaces: [], notNamespaces: [], serviceAccounts: ['shop/db'], notServiceAccounts: [], ipBlocks: [], notIpBlocks: [] }], to: [] }] } };
  for (const [what, admit] of [
    ['HBONE', (d: InboundDeps) => admitInbound(d, request(), peer)],
    ['plaintext', (d: InboundDeps) => admitPlaintext({ ...d, mode: 'permissive' }, arrival())],
  ] as const) {
    const env = setUp([onlyDb]);
    const got = admit(env.d);
    t.match(got, { allowed: false, reason: 'denied: no_allow_match' }, `${what}: answered as before`);
    const denials = await env.registry.getSingleMetric('ambit_policy_denials_total')!.get();
    t.same(denials.values.map((v) => ({ ...v.labels, value: v.value })), [{ direction: 'inbound', policy: '(no ALLOW matched)', reason: 'no_allow_match', value: 1 }], `${what}: counted`);
    t.match(env.lines, [{ policy: '(no ALLOW matched)', response_flags: 'DENY' }], `${what}: logged`);
  }
});

const arrival = (over: Partial<PlaintextArrival> = {}): PlaintextArrival => ({
  remote: { address: '10.1.0.5', port: 40000 }, local: { address: '10.2.0.1', port: 15006 }, destination: { address: '10.2.0.7', port: 8080 }, ...over,
});

t.test('admitPlaintext: every refusal it can make, and an admission', async (t) => {
  const cases: { name: string; a: PlaintextArrival; mode: 'strict' | 'permissive'; policies?: AuthorizationPolicy[]; expect: Expect }[] = [
    { name: 'not redirected', a: arrival({ destination: { address: '', port: 0 }, destinationError: 'ENOENT' }), mode: 'permissive', expect: { status: 400, reason: 'no_original_destination', flag: 'NR' } },
    { name: 'to :15006 itself', a: arrival({ destination: { address: '10.2.0.1', port: 15006 } }), mode: 'permissive', expect: { status: 400, reason: 'loop', flag: 'NR' } },
    { name: 'no local workload there', a: arrival({ destination: { address: '10.2.0.7', port: 9999 } }), mode: 'permissive', expect: { status: 400, reason: 'not_a_local_workload', flag: 'NR' } },
    { name: 'strict mode', a: arrival(), mode: 'strict', expect: { status: 401, reason: 'plaintext_refused_strict_mode', flag: 'DENY' } },
    { name: 'policy', a: arrival(), mode: 'permissive', policies: [denyAll()], expect: { status: 401, reason: 'denied', answer: /^denied: denied_by_policy by shop\/no-web$/, flag: 'DENY' } },
  ];
  for (const c of cases) {
    const env = setUp(c.policies);
    await t.test(c.name, async (t) => refusedAs(t, admitPlaintext({ ...env.d, mode: c.mode }, c.a), env, c.expect));
  }
  const env = setUp();
  t.match(admitPlaintext({ ...env.d, mode: 'permissive' }, arrival()), { allowed: true, dial: { host: '10.2.0.7', port: 8080 } }, 'permissive, no policy: admitted');
});
