/**
 * Issue 4, "Multi-host end-to-end suite": the real controller, three real
 * agents with transparent pod capture (iptables + SO_ORIGINAL_DST) and
 * unmodified TCP applications, each in its own network namespace (see
 * topology.ts for the picture). One topology serves every scenario; the
 * scenarios run in order and the last one stops the controller.
 *
 * Pods (fixtures/pod.ts; "sink" servers answer with who they are and a hash of
 * what they got):
 *   h1p1 client  default/client  10.201.1.11   (client only)
 *   h1p2 local   default/local   10.201.1.12   :8080 sink           app=local
 *   h1p3 other   other/other     10.201.1.13   (client only)
 *   h2p1 web     default/web     10.201.2.11   :8080 sink :8081 echo app=web
 *   h2p2 api     default/api     10.201.2.12   :8080 :9090 sinks     app=api
 *   h2p3 (not registered)        10.201.2.13   :8080 sink
 *   h2p4 bulk    default/bulk    10.201.2.14   (client only)
 *   h3p1 web-2   default/web     10.201.3.11   :8080 sink            app=web
 *   ctl namespace (not registered) 10.200.0.10 :9090 sink
 *   bridge namespace (not registered) 10.200.0.254, an outside client
 *
 * As root this must run; without root or `ip netns` it fails, saying why.
 */
import t from 'tap';
import { createPrivateKey, generateKeyPairSync, X509Certificate } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { eventually, metricValue, type LogLine } from '../harness.ts';
import { EKU, issueCertificate, KeyUsage, NAME_OID, toPem } from '../../../shared/x509.ts';
import { parsePcap } from './pcap.ts';
import { MARKER, sinkReport, type Pod, type TransferResult } from './pod-driver.ts';
import { NODE, run, type NsProc } from './processes.ts';
import {
  BRIDGE_ADDRESS, CA_REQUEST, CONTROLLER_ADDRESS, CONTROLLER_GRPC, HBONE_PROBE,
  deleteStaleNamespaces, hostAddress, podAddress, requireNetns, Topology,
} from './topology.ts';

const TD = 'cluster.local';
const id = (ns: string, sa: string): string => `spiffe://${TD}/ns/${ns}/sa/${sa}`;
const CLIENT_ID = id('default', 'client');
const LOCAL_ID = id('default', 'local');
const OTHER_ID = id('other', 'other');
const WEB_ID = id('default', 'web');
const API_ID = id('default', 'api');
const BULK_ID = id('default', 'bulk');

const CLIENT = podAddress(1, 1);
const LOCAL = podAddress(1, 2);
const OTHER = podAddress(1, 3);
const WEB = podAddress(2, 1);
const API = podAddress(2, 2);
const OUTSIDER = podAddress(2, 3);
const BULK = podAddress(2, 4);
const WEB2 = podAddress(3, 1);
const VIP = '10.96.0.10';

let preflight: Error | undefined;
try {
  await requireNetns();
} catch (err) {
  preflight = err as Error;
}
if (preflight) {
  t.fail(`multi-host netns e2e suite cannot run on this machine: ${preflight.message}`);
  t.end();
} else {
  await main();
}

async function main(): Promise<void> {
  await deleteStaleNamespaces();
  const topo = new Topology();
  t.teardown(() => topo.destroy());
  // A run killed by tap's timeout still removes its namespaces and processes.
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.once(sig, () => void topo.destroy().finally(() => process.kill(process.pid, sig)));
  }

  const pods: Record<string, Pod> = {};
  const started = Date.now();
  t.before(async () => {
    const phase = (what: string): void => t.comment(`${what} at ${Date.now() - started} ms`);
    await topo.build({ hosts: 3, pods: { 1: 3, 2: 4, 3: 1 } });
    phase('built');
    await topo.startController();
    phase('controller');
    const register = (name: string, ns: string, sa: string, node: string, address: string, ports: number[], labels: string[]): Promise<string> =>
      topo.ambitctlOk(['workload', 'register', '--name', name, '--namespace', ns, '--service-account', sa, '--node', node, '--address', address,
        ...ports.flatMap((p) => ['--port', String(p)]), ...labels.flatMap((l) => ['--label', l])]);
    // Each ambitctl is a Node process; on a 2-core machine running other suites, eight at once starve each other.
    const registered = register('client', 'default', 'client', 'h1', CLIENT, [], ['app=client']).then(() => limited(3, [
      () => register('local', 'default', 'local', 'h1', LOCAL, [8080], ['app=local']),
      () => register('other', 'other', 'other', 'h1', OTHER, [], ['app=other']),
      () => register('web', 'default', 'web', 'h2', WEB, [8080, 8081], ['app=web']),
      () => register('api', 'default', 'api', 'h2', API, [8080, 9090], ['app=api']),
      () => register('bulk', 'default', 'bulk', 'h2', BULK, [], ['app=bulk']),
      () => register('web-2', 'default', 'web', 'h3', WEB2, [8080], ['app=web']),
      () => topo.ambitctlOk(['service', 'create', '--name', 'web', '--port', '80:8080', '--selector', 'app=web', '--address', VIP]),
    ]));
    registered.catch(() => undefined); // awaited below; this only keeps an early failure from being "unhandled"
    const [p11, p12, p13, p21, p22, p23, p24, p31, ctlPod, outside] = await Promise.all([
      topo.pod(topo.podNs(1, 1), 'client', CLIENT),
      topo.pod(topo.podNs(1, 2), 'local', LOCAL),
      topo.pod(topo.podNs(1, 3), 'other', OTHER),
      topo.pod(topo.podNs(2, 1), 'web', WEB),
      topo.pod(topo.podNs(2, 2), 'api', API),
      topo.pod(topo.podNs(2, 3), 'outsider', OUTSIDER),
      topo.pod(topo.podNs(2, 4), 'bulk', BULK),
      topo.pod(topo.podNs(3, 1), 'web-2', WEB2),
      topo.pod(topo.ctlNs, 'ctl-server', CONTROLLER_ADDRESS),
      topo.pod(topo.netNs, 'outside-client', BRIDGE_ADDRESS),
    ]);
    Object.assign(pods, { client: p11!, local: p12!, other: p13!, web: p21!, api: p22!, outsider: p23!, bulk: p24!, web2: p31!, ctlServer: ctlPod!, outside: outside! });
    await Promise.all([
      pods.local!.listen(8080, 'local'),
      pods.web!.listen(8080, 'web'),
      pods.web!.listen(8081, 'web-echo', 'echo'),
      pods.api!.listen(8080, 'api-8080'),
      pods.api!.listen(9090, 'api-9090'),
      pods.outsider!.listen(8080, 'outsider'),
      pods.web2!.listen(8080, 'web-2'),
      pods.ctlServer!.listen(9090, 'ctl-server'),
      registered,
    ]);
    phase('registered, pods listening');
    await Promise.all([1, 2, 3].map((h) => topo.startAgent(h, { join: true })));
    phase('agents started');
    for (const h of [1, 2, 3]) {
      await eventually(async () => topo.ready(h), `h${h} ready`, 30_000);
      await eventually(async () => {
        const nodes = (await topo.configDump(h)).nodes as { name: string }[];
        return ['h1', 'h2', 'h3'].every((n) => nodes.some((x) => x.name === n));
      }, `h${h} knows every node's HBONE address`, 30_000);
    }
    t.comment(`topology ${topo.prefix} up in ${Date.now() - started} ms`);
  });

  const SCENARIO = { timeout: 120_000 };
  /** Resolves with the first log line of `proc` after `mark` (an index into proc.logs) matching pred. */
  const logAfter = (proc: NsProc, mark: number, pred: (l: LogLine) => boolean, what: string): Promise<LogLine> =>
    proc.waitForLog((l) => proc.logs.indexOf(l) >= mark && pred(l), 30_000, what);
  const conn = (l: LogLine, direction: string, dstAddr: string): boolean => l.msg === 'connection' && l.direction === direction && l['dst.addr'] === dstAddr;
  const policy = (name: string, ns: string, selector: string, action: 'ALLOW' | 'DENY', rule: string): string => [
    'apiVersion: ambit.dev/v1alpha1', 'kind: AuthorizationPolicy', `metadata: {name: ${name}, namespace: ${ns}}`,
    'spec:', `  selector: {matchLabels: {${selector}}}`, `  action: ${action}`, '  rules:', `    - ${rule}`, '',
  ].join('\n');
  const refused = (r: TransferResult): boolean => !r.ok && /ECONNRESET|EPIPE|EOF_WITHOUT_RESPONSE|ECONNREFUSED/.test(r.error);
  /**
   * Polls client → host:port until `want` holds for the result (a policy or
   * mode change reached the agents); on timeout the error shows the last
   * result and what `agent` logged last.
   */
  const until = async (want: (r: TransferResult) => boolean, client: Pod, host: string, port: number, agent: number, what: string): Promise<TransferResult> => {
    const deadline = Date.now() + 30_000;
    let last: TransferResult | undefined;
    while (Date.now() < deadline) {
      last = await client.connect(host, port, { timeoutMs: 5000 });
      if (want(last)) return last;
      await new Promise((r) => setTimeout(r, 100));
    }
    const tail = topo.host(agent).agent?.logs.slice(-6).map((l) => JSON.stringify(l)).join('\n');
    throw new Error(`timed out waiting for ${what}; last attempt: ${JSON.stringify(last)}; h${agent} logged last:\n${tail}`);
  };
  const untilRefused = (client: Pod, host: string, port: number, agent: number, what: string): Promise<TransferResult> => until(refused, client, host, port, agent, what);
  const untilAllowed = (client: Pod, host: string, port: number, agent: number, what: string): Promise<TransferResult> => until((r) => r.ok, client, host, port, agent, what);

  t.test('1. cross-host, captured both sides: only TLS to 15008 on the host link; both agents report the SPIFFE identities', SCENARIO, async (t) => {
    const [a1, a2] = [topo.agent(1), topo.agent(2)];
    const [m1, m2] = [a1.logs.length, a2.logs.length];
    // On h2's bridge port: frames the bridge forwards between ports never show on br0 itself.
    const dump = await topo.tcpdump(topo.netNs, 'vh2', 'cross-host');
    const r = await pods.client!.connect(WEB, 8080, { bytes: 64 * 1024, pattern: 'marker' });
    const pcap = await dump.stop();
    t.ok(r.ok, `the unmodified client got its answer (${r.error})`);
    const rep = sinkReport(r);
    t.equal(rep?.server, 'web', 'it reached the web pod on h2');
    t.equal(rep?.bytes, 64 * 1024, 'every byte arrived');
    t.equal(rep?.sha256, r.sha256, 'intact (sha256)');
    t.equal(rep?.marker, true, 'the server received the plaintext marker');
    t.equal(rep?.peer, '10.201.2.1', "the server's peer is h2's agent (the connection was captured, not routed)");

    t.equal(pcap.indexOf(MARKER), -1, 'the plaintext marker never appears on the host link');
    const packets = parsePcap(pcap);
    const between = packets.filter((p) => [p.src, p.dst].includes(hostAddress(1)) && [p.src, p.dst].includes(hostAddress(2)));
    const hbone = between.filter((p) => p.src === hostAddress(1) && p.dport === 15008);
    const hboneBytes = hbone.reduce((n, p) => n + p.payload.length, 0);
    t.ok(hboneBytes >= 64 * 1024, `h1 → h2:15008 carried the payload (${hboneBytes} bytes in ${hbone.length} packets)`);
    t.ok(hbone.some((p) => p.payload.length >= 5 && p.payload[0] === 0x16 && p.payload[1] === 0x03), 'a TLS handshake record went to 15008');
    const other = between.filter((p) => p.payload.length > 0 && p.sport !== 15008 && p.dport !== 15008).map((p) => `${p.src}:${p.sport} > ${p.dst}:${p.dport}`);
    t.same(other, [], 'no other TCP payload between h1 and h2');
    t.same(packets.filter((p) => p.src.startsWith('10.201.') || p.dst.startsWith('10.201.')).map((p) => `${p.src} > ${p.dst}`), [], 'no pod address on the host link');

    const labels = { source_workload: 'client', source_principal: CLIENT_ID, destination_workload: 'web', destination_principal: WEB_ID, connection_security_policy: 'mutual_tls' };
    const met1 = await eventually(async () => {
      const m = await topo.metrics(1);
      return metricValue(m, 'istio_tcp_connections_closed_total', { reporter: 'source', ...labels }) >= 1 ? m : undefined;
    }, 'h1 counts the closed connection');
    t.ok(metricValue(met1, 'istio_tcp_received_bytes_total', { reporter: 'source', ...labels }) >= 64 * 1024, 'h1 metrics: source report with both SPIFFE identities');
    const met2 = await topo.metrics(2);
    t.ok(metricValue(met2, 'istio_tcp_connections_opened_total', { reporter: 'destination', ...labels }) >= 1, 'h2 metrics: destination report with both SPIFFE identities');
    t.ok(metricValue(met2, 'istio_tcp_received_bytes_total', { reporter: 'destination', ...labels }) >= 64 * 1024, 'h2 metrics: the bytes');

    const out = await logAfter(a1, m1, (l) => conn(l, 'outbound', `${WEB}:8080`), 'h1 outbound access log');
    t.match(out, { 'src.identity': CLIENT_ID, 'dst.identity': WEB_ID, 'src.addr': CLIENT, security: 'mutual_tls', bytes_recv: 64 * 1024, error: '' }, 'h1 access log: client → web with identities');
    const inb = await logAfter(a2, m2, (l) => conn(l, 'inbound', `${WEB}:8080`), 'h2 inbound access log');
    t.match(inb, { 'src.identity': CLIENT_ID, 'dst.identity': WEB_ID, 'src.addr': CLIENT, 'src.workload': 'client', security: 'mutual_tls', bytes_recv: 64 * 1024, error: '' }, 'h2 access log: the same identities');
    t.equal(inb.trace_id, out.trace_id, 'one trace across both agents');
  });

  t.test('2. same-host pods: mutually authenticated and authorized', SCENARIO, async (t) => {
    const a1 = topo.agent(1);
    let mark = a1.logs.length;
    const r = await pods.client!.connect(LOCAL, 8080);
    t.ok(r.ok, `client → local on the same host answered (${r.error})`);
    t.equal(sinkReport(r)?.peer, '10.201.1.1', 'delivered by the agent (captured)');
    const out = await logAfter(a1, mark, (l) => conn(l, 'outbound', `${LOCAL}:8080`), 'outbound record');
    t.match(out, { 'src.identity': CLIENT_ID, 'dst.identity': LOCAL_ID, security: 'mutual_tls', error: '' }, 'outbound record with both identities');
    const inb = await logAfter(a1, mark, (l) => conn(l, 'inbound', `${LOCAL}:8080`), 'inbound record');
    t.match(inb, { 'src.identity': CLIENT_ID, 'dst.identity': LOCAL_ID, security: 'mutual_tls', error: '' }, 'inbound record: the source identity came from the client certificate');

    const deny = policy('deny-client-to-local', 'default', 'app: local', 'DENY', `from: [{source: {principals: ["${TD}/ns/default/sa/client"]}}]`);
    await topo.ambitctlOk(['apply', '-f', '-'], deny);
    try {
      mark = a1.logs.length;
      const d = await untilRefused(pods.client!, LOCAL, 8080, 1, 'the DENY policy refuses client → local');
      t.ok(refused(d), `client → local refused (${d.error})`);
      const log = await logAfter(a1, mark, (l) => conn(l, 'inbound', `${LOCAL}:8080`) && l.response_flags === 'DENY', 'inbound DENY record');
      t.match(log, { 'src.identity': CLIENT_ID, error: /default\/deny-client-to-local/ }, 'h1 says which policy denied whom');
      const o = await pods.other!.connect(LOCAL, 8080);
      t.ok(o.ok, `another identity on the same host is still allowed (${o.error})`);
    } finally {
      await topo.ambitctlOk(['delete', '-f', '-'], deny);
    }
    await untilAllowed(pods.client!, LOCAL, 8080, 1, 'allowed again after the policy is deleted');
  });

  t.test('3. server outside the mesh: passthrough works and is reported as such', SCENARIO, async (t) => {
    const [a1, a2] = [topo.agent(1), topo.agent(2)];
    const [m1, m2] = [a1.logs.length, a2.logs.length];
    const dump = await topo.tcpdump(topo.netNs, 'vh2', 'passthrough');
    const r = await pods.client!.connect(OUTSIDER, 8080, { bytes: 8 * 1024, pattern: 'marker' });
    const pcap = await dump.stop();
    t.ok(r.ok, `client → unregistered pod on h2 answered (${r.error})`);
    t.equal(sinkReport(r)?.server, 'outsider');
    t.equal(sinkReport(r)?.peer, hostAddress(1), 'dialled directly by h1 (no tunnel: the peer is h1)');
    t.not(pcap.indexOf(MARKER), -1, 'plaintext is visible on the link here (so the check in scenario 1 can see plaintext when it is there)');
    const c = await pods.client!.connect(CONTROLLER_ADDRESS, 9090);
    t.ok(c.ok, `client → server in the controller namespace answered (${c.error})`);
    t.equal(sinkReport(c)?.server, 'ctl-server');

    for (const dst of [`${OUTSIDER}:8080`, `${CONTROLLER_ADDRESS}:9090`]) {
      const log = await logAfter(a1, m1, (l) => conn(l, 'outbound', dst), `passthrough record for ${dst}`);
      t.match(log, { 'dst.service': 'PassthroughCluster', security: 'none', 'src.identity': CLIENT_ID, error: '' }, `${dst}: access log says PassthroughCluster`);
    }
    const met = await topo.metrics(1);
    t.ok(metricValue(met, 'istio_tcp_connections_opened_total', { reporter: 'source', source_principal: CLIENT_ID, destination_service_name: 'PassthroughCluster', connection_security_policy: 'none' }) >= 2,
      'metrics: destination_service_name PassthroughCluster, connection_security_policy none');
    t.notOk(a2.logs.slice(m2).some((l) => l.msg === 'connection' && l['dst.addr'] === `${OUTSIDER}:8080`), "h2's agent never saw it (not a mesh destination)");
  });

  t.test('4. client outside the mesh: refused in strict mode, allowed as plaintext in permissive mode', SCENARIO, async (t) => {
    let a2 = topo.agent(2);
    let mark = a2.logs.length;
    const strict = await pods.outside!.connect(WEB, 8080);
    t.ok(refused(strict), `strict: plaintext from the bridge namespace is refused (${strict.error})`);
    t.match(strict.error, /ECONNRESET|EPIPE/, 'reset by the agent that accepted it (not unroutable, not a closed port)');
    const log = await logAfter(a2, mark, (l) => conn(l, 'inbound', `${WEB}:8080`), 'strict refusal record');
    t.match(log, { security: 'none', response_flags: 'DENY', error: 'plaintext_refused_strict_mode', 'src.addr': BRIDGE_ADDRESS }, 'h2 says why');

    t.equal((await topo.stopAgent(2)).code, 0, 'h2 stopped cleanly');
    a2 = await topo.startAgent(2, { mode: 'permissive' });
    try {
      await eventually(async () => topo.ready(2), 'h2 ready (permissive)', 30_000);
      mark = a2.logs.length;
      const r = await untilAllowed(pods.outside!, WEB, 8080, 2, 'permissive: allowed');
      t.equal(sinkReport(r)?.server, 'web', 'permissive: plaintext reaches the workload');
      const ok = await logAfter(a2, mark, (l) => conn(l, 'inbound', `${WEB}:8080`) && l.error === '', 'permissive record');
      t.match(ok, { security: 'none', 'src.addr': BRIDGE_ADDRESS, 'dst.identity': WEB_ID, 'src.identity': '' }, 'reported as plaintext, without a source identity');
      const met = await topo.metrics(2);
      t.ok(metricValue(met, 'istio_tcp_connections_opened_total', { reporter: 'destination', destination_workload: 'web', connection_security_policy: 'none' }) >= 1, 'metrics: connection_security_policy="none"');
      const meshed = await pods.client!.connect(WEB, 8080);
      t.ok(meshed.ok, 'mesh clients still go through mTLS');
    } finally {
      await topo.stopAgent(2);
      await topo.startAgent(2, { mode: 'strict' });
      await eventually(async () => topo.ready(2), 'h2 ready (strict again)', 30_000);
    }
    const again = await pods.outside!.connect(WEB, 8080);
    t.ok(refused(again), 'strict again: refused');
  });

  t.test('5. authorization: ALLOW by principal, ALLOW by namespace, DENY by port', SCENARIO, async (t) => {
    const a2 = topo.agent(2);
    const allowPrincipal = policy('api-access', 'default', 'app: api', 'ALLOW', `from: [{source: {principals: ["${TD}/ns/default/sa/client"]}}]`);
    const allowNamespace = policy('api-access', 'default', 'app: api', 'ALLOW', 'from: [{source: {namespaces: ["other"]}}]');
    const denyPort = policy('deny-api-9090', 'default', 'app: api', 'DENY', 'to: [{operation: {ports: ["9090"]}}]');
    try {
      t.ok((await pods.other!.connect(API, 8080)).ok, 'no policy yet: other → api allowed');

      await topo.ambitctlOk(['apply', '-f', '-'], allowPrincipal);
      let mark = a2.logs.length;
      let d = await untilRefused(pods.other!, API, 8080, 2, 'ALLOW by principal takes effect');
      t.ok(refused(d), `ALLOW principal client: other/other is refused (${d.error})`);
      let log = await logAfter(a2, mark, (l) => conn(l, 'inbound', `${API}:8080`) && l.response_flags === 'DENY', 'DENY record');
      t.match(log, { 'src.identity': OTHER_ID, 'dst.identity': API_ID, error: /no_allow_match/ }, 'h2 log: denied, no ALLOW rule matched');
      t.ok((await pods.client!.connect(API, 8080)).ok, 'ALLOW principal client: default/client allowed');

      await topo.ambitctlOk(['apply', '-f', '-'], allowNamespace);
      mark = a2.logs.length;
      d = await untilRefused(pods.client!, API, 8080, 2, 'ALLOW by namespace takes effect');
      t.ok(refused(d), `ALLOW namespace other: default/client is refused (${d.error})`);
      log = await logAfter(a2, mark, (l) => conn(l, 'inbound', `${API}:8080`) && l.response_flags === 'DENY', 'DENY record');
      t.match(log, { 'src.identity': CLIENT_ID, error: /no_allow_match/ }, 'h2 log: denied, no ALLOW rule matched');
      t.ok((await pods.other!.connect(API, 8080)).ok, 'ALLOW namespace other: other/other allowed');

      await topo.ambitctlOk(['delete', '-f', '-'], allowNamespace);
      await topo.ambitctlOk(['apply', '-f', '-'], denyPort);
      mark = a2.logs.length;
      d = await untilRefused(pods.client!, API, 9090, 2, 'DENY by port takes effect');
      t.ok(refused(d), `DENY port 9090: client → api:9090 refused (${d.error})`);
      log = await logAfter(a2, mark, (l) => conn(l, 'inbound', `${API}:9090`) && l.response_flags === 'DENY', 'DENY record');
      t.match(log, { 'src.identity': CLIENT_ID, error: /denied_by_policy by default\/deny-api-9090/ }, 'h2 log names the policy');
      const p8080 = await untilAllowed(pods.client!, API, 8080, 2, 'port 8080 allowed (the ALLOW policy is gone)');
      t.equal(sinkReport(p8080)?.server, 'api-8080', 'DENY port 9090: port 8080 still allowed');
      t.ok((await pods.other!.connect(API, 8080)).ok, 'and for other identities too');
      const denials = metricValue(await topo.metrics(2), 'ambit_policy_denials_total', { direction: 'inbound', policy: 'default/deny-api-9090' });
      t.ok(denials >= 1, `denials counted per policy (${denials})`);
    } finally {
      await topo.ambitctl(['delete', '-f', '-'], allowNamespace);
      await topo.ambitctl(['delete', '-f', '-'], denyPort);
    }
    await untilAllowed(pods.client!, API, 9090, 2, 'no policies left');
  });

  t.test('6. spoofing: 400 for workloads not on the host, foreign trust domains rejected, node authorization', SCENARIO, async (t) => {
    const h1 = topo.host(1);
    const certsDir = join(h1.dataDir, 'certs');
    const entries = readdirSync(certsDir).filter((f) => f.endsWith('.json')).map((f) => JSON.parse(readFileSync(join(certsDir, f), 'utf8')) as { uri: string; keyPem: string; chainPem: string });
    const client = entries.find((e) => e.uri === CLIENT_ID);
    if (!client) throw new Error(`no certificate for ${CLIENT_ID} in ${certsDir}`);
    const file = (name: string, text: string): string => {
      const p = join(topo.dir, name);
      writeFileSync(p, text, { mode: 0o600 });
      return p;
    };
    const caFile = join(topo.ctlDataDir, 'ca/bundle.pem');
    const creds = { keyFile: file('client-key.pem', client.keyPem), certFile: file('client-cert.pem', client.chainPem) };
    const probe = async (o: { keyFile: string; certFile: string; authority: string }): Promise<{ status: number | null; reason: string; error: string }> => {
      const r = await run(['ip', 'netns', 'exec', h1.ns, NODE, HBONE_PROBE, JSON.stringify({ target: `${hostAddress(2)}:15008`, caFile, serverIdentity: WEB_ID, ...o })]);
      try {
        return JSON.parse(r.stdout) as { status: number | null; reason: string; error: string };
      } catch {
        throw new Error(`hbone-probe printed nothing (exit ${r.code}): ${r.stderr}`);
      }
    };

    t.equal((await probe({ ...creds, authority: `${WEB}:8080` })).status, 200, 'control: a valid workload certificate opens a tunnel to a workload on h2');
    const notHere = await probe({ ...creds, authority: `${LOCAL}:8080` });
    t.match(notHere, { status: 400, reason: 'not_a_local_workload' }, 'a workload registered on h1, asked of h2: 400');
    t.match(await probe({ ...creds, authority: `${OUTSIDER}:8080` }), { status: 400 }, 'an address on h2 that is no workload: 400');

    const before = metricValue(await topo.metrics(2), 'ambit_connections_refused_total', { reason: 'peer_certificate' });
    const signer = { certPem: readFileSync(join(topo.ctlDataDir, 'ca/signer-cert.pem'), 'utf8'), keyPem: readFileSync(join(topo.ctlDataDir, 'ca/signer-key.pem'), 'utf8') };
    const otherTd = leaf('spiffe://evil.example/ns/default/sa/client', signer);
    const rejected = await probe({ keyFile: file('td-key.pem', otherTd.key), certFile: file('td-cert.pem', otherTd.cert), authority: `${WEB}:8080` });
    t.equal(rejected.status, null, `a certificate of another trust domain (even from our CA) opens nothing (${rejected.error})`);
    const foreign = leaf(CLIENT_ID);
    const rejected2 = await probe({ keyFile: file('foreign-key.pem', foreign.key), certFile: file('foreign-cert.pem', foreign.cert), authority: `${WEB}:8080` });
    t.equal(rejected2.status, null, `our trust domain from another CA: rejected (${rejected2.error})`);
    const after = metricValue(await topo.metrics(2), 'ambit_connections_refused_total', { reason: 'peer_certificate' });
    t.equal(after - before, 2, 'h2 counts both as rejected peers');

    const ask = async (identity: string): Promise<{ ok: boolean; code?: string; message?: string }> => {
      const r = await run(['ip', 'netns', 'exec', h1.ns, NODE, CA_REQUEST, JSON.stringify({ dataDir: h1.dataDir, controller: CONTROLLER_GRPC, identity })]);
      try {
        return JSON.parse(r.stdout) as { ok: boolean; code?: string; message?: string };
      } catch {
        throw new Error(`ca-request printed nothing (exit ${r.code}): ${r.stderr}`);
      }
    };
    t.match(await ask(CLIENT_ID), { ok: true }, "control: h1's node credentials get a certificate for a workload on h1");
    for (const other of [WEB_ID, BULK_ID]) {
      const r = await ask(other);
      t.match(r, { ok: false, code: 'AMBIT_ERR_NODE_UNAUTHORIZED' }, `h1 cannot get ${other} (registered on h2): ${r.message ?? ''}`);
    }
  });

  t.test('7. service load balancing: a VIP with endpoints on two hosts', SCENARIO, async (t) => {
    const mark = topo.agent(1).logs.length;
    const results = await pods.client!.repeat(VIP, 80, 24);
    t.equal(results.filter((r) => r.ok).length, 24, 'every connection to the VIP was answered');
    const by = new Map<string, number>();
    for (const r of results) {
      const s = sinkReport(r)?.server ?? `failed: ${r.error}`;
      by.set(s, (by.get(s) ?? 0) + 1);
    }
    t.same([...by.keys()].sort(), ['web', 'web-2'], `both endpoints served (${JSON.stringify(Object.fromEntries(by))})`);
    const log = await logAfter(topo.agent(1), mark, (l) => l.msg === 'connection' && l.direction === 'outbound' && l['dst.service'] === 'web.default.svc.cluster.local', 'service record');
    t.match(log, { 'dst.identity': WEB_ID, security: 'mutual_tls' }, 'h1 reports the service');
    const m3 = await topo.metrics(3);
    t.ok(metricValue(m3, 'istio_tcp_connections_opened_total', { reporter: 'destination', destination_workload: 'web-2', destination_service: 'web.default.svc.cluster.local' }) >= 1, 'h3 reports its share for the service');
  });

  t.test('8. agent restart while another host pair transfers; capture rules are never duplicated', SCENARIO, async (t) => {
    const size = 32 * 1024 * 1024;
    const t0 = Date.now();
    const transfer = pods.bulk!.connect(WEB2, 8080, { bytes: size, pattern: 'random', paceMs: 5000 });
    await new Promise((r) => setTimeout(r, 700));
    const stopAt = Date.now();
    t.equal((await topo.stopAgent(1)).code, 0, 'h1 stopped (SIGTERM)');
    t.same((await topo.natRules(1)).filter((l) => l.includes('AMBIT')), [], 'a clean stop removes the capture rules');
    await topo.startAgent(1);
    await eventually(async () => topo.ready(1), 'h1 ready after restart (no --join)', 30_000);
    const r = await transfer;
    t.ok(r.ok, `the h2 → h3 transfer completed (${r.error})`);
    t.ok(t0 + r.ms > stopAt, 'it was still running when h1 was stopped');
    const rep = sinkReport(r);
    t.equal(rep?.bytes, size, '32 MiB arrived');
    t.equal(rep?.sha256, r.sha256, 'intact (sha256)');
    t.equal(rep?.server, 'web-2');

    const after = await untilAllowed(pods.client!, WEB, 8080, 1, 'new connections via h1 after the restart');
    t.equal(sinkReport(after)?.peer, '10.201.2.1', 'still captured and tunnelled');

    const checkRules = async (when: string): Promise<void> => {
      const live = await topo.natRules(1);
      const want = ((await topo.configDump(1)).captureRules as string[]).map((l) => l.replace(/^iptables -t nat /, ''));
      t.ok(want.length >= 6, `${when}: the agent reports its rules`);
      for (const line of want) t.equal(live.filter((l) => l === line).length, 1, `${when}: exactly once: ${line}`);
      t.same(live.filter((l) => l.includes('AMBIT') && !l.startsWith('-N ')).sort(), [...want].sort(), `${when}: no other AMBIT rule or jump`);
    };
    await checkRules('after SIGTERM + start');
    // A crash leaves the rules behind; the next start must converge, not append.
    await topo.agent(1).stop('SIGKILL');
    t.ok((await topo.natRules(1)).some((l) => l.includes('AMBIT')), 'after SIGKILL the old rules are still there');
    await topo.startAgent(1);
    await eventually(async () => topo.ready(1), 'h1 ready after the crash', 30_000);
    await checkRules('after SIGKILL + start');
    t.ok((await untilAllowed(pods.client!, WEB, 8080, 1, 'traffic after the crash restart')).ok);
  });

  t.test('9. controller stopped: existing and new connections keep working from cached state', SCENARIO, async (t) => {
    const session = await pods.client!.open(WEB, 8081);
    t.ok(session.ok, `a long-lived connection client → web echo (${session.error ?? ''})`);
    t.match(await pods.client!.ping(session.sid, 'before'), { ok: true, echoed: 'before' }, 'echo before');
    const mark = topo.agent(1).logs.length;
    await topo.controller!.stop('SIGTERM');
    t.equal((await topo.httpGet(topo.ctlNs, `http://${CONTROLLER_ADDRESS}:15014/healthz/ready`)).status, 0, 'the controller is gone');
    await logAfter(topo.agent(1), mark, (l) => l.msg === 'controller watch lost; serving cached state', 'h1 notices');
    t.match(await pods.client!.ping(session.sid, 'after-the-controller-stopped'), { ok: true, echoed: 'after-the-controller-stopped' }, 'the existing connection still works');
    await pods.client!.close(session.sid);
    const r = await pods.client!.connect(WEB, 8080, { bytes: 1024 * 1024 });
    t.ok(r.ok && sinkReport(r)?.sha256 === r.sha256, `a new connection h1 → h2 works (${r.error})`);
    const svc = await pods.client!.connect(VIP, 80);
    t.ok(svc.ok, `the service VIP still resolves (${svc.error})`);
    const b = await pods.bulk!.connect(WEB2, 8080);
    t.ok(b.ok, `h2 → h3 works too (${b.error})`);
    t.ok(await topo.ready(1), 'h1 stays ready');
  });

  t.teardown(() => t.comment(`netns suite ran ${Date.now() - started} ms`));
}

/** Runs the tasks with at most `n` at a time; resolves with their results in order. */
async function limited<T>(n: number, tasks: readonly (() => Promise<T>)[]): Promise<T[]> {
  const results: T[] = [];
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < tasks.length) {
      const i = next++;
      results[i] = await tasks[i]!();
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, tasks.length) }, worker));
  return results;
}

/** A workload-style leaf for `uri`, signed by `issuer` or by a fresh, unrelated root. */
function leaf(uri: string, issuer?: { certPem: string; keyPem: string }): { key: string; cert: string } {
  const keys = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  let iss = issuer;
  if (!iss) {
    const rk = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const rootDer = issueCertificate({ subjectPublicKey: rk.publicKey.export({ type: 'spki', format: 'der' }), subject: [{ oid: NAME_OID.commonName, value: 'not the mesh CA' }], notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 86_400_000), isCa: true, keyUsage: KeyUsage.keyCertSign, selfSignKey: rk.privateKey });
    iss = { certPem: toPem('CERTIFICATE', rootDer), keyPem: rk.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() };
  }
  const der = issueCertificate({
    subjectPublicKey: keys.publicKey.export({ type: 'spki', format: 'der' }), uris: [uri],
    notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 3_600_000), isCa: false,
    keyUsage: KeyUsage.digitalSignature, extKeyUsage: [EKU.serverAuth, EKU.clientAuth],
    issuer: { certDer: new X509Certificate(iss.certPem).raw, key: createPrivateKey(iss.keyPem) },
  });
  return { key: keys.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), cert: `${toPem('CERTIFICATE', der)}` };
}
