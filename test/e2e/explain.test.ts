/**
 * `ambitctl explain` and denial telemetry with real processes on
 * 127.0.125.x: a controller, node-a (client, intruder and spy) and node-b
 * (web, behind service web.demo). explain runs as the ambitctl binary
 * against the controller and answers without traffic; then the spy's real
 * connection through both agents is denied by the DENY that explain named,
 * and both agents' metrics and access logs name that policy.
 */
import t, { type Test } from 'tap';
import { mkdtempSync } from 'node:fs';
import type { Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Explanation } from '../../controller/explain/explain.ts';
import { agentKnowsNode, agentsReady, ambitctl, eventually, hostPortOf, httpGet, metricValue, setUp, socksConnect, startAgentPair, startController, startEchoServer, type CliResult, type RunningAgent, type RunningController } from './harness.ts';

const ip = (n: number): string => `127.0.125.${n}`;
const CTL = ip(1);
const A = ip(2);
const B = ip(3);
const CLIENT = ip(10);
const INTRUDER = ip(11);
const SPY = ip(12);
const WEB = ip(20);
const PORT = 8080;
const TD = 'cluster.local';

const workload = (name: string, node: string, address: string, extra = ''): string => `
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: { name: ${name}, namespace: demo, labels: { app: ${name} } }
spec: { serviceAccount: ${name}, node: ${node}, address: ${address}${extra} }
---`;

const RESOURCES = `${workload('client', 'node-a', CLIENT)}${workload('intruder', 'node-a', INTRUDER)}${workload('spy', 'node-a', SPY)}${workload('web', 'node-b', WEB, `, ports: [${PORT}]`)}
apiVersion: ambit.dev/v1alpha1
kind: Service
metadata: { name: web, namespace: demo }
spec:
  addresses: ["${ip(100)}"]
  ports: [{ name: http, port: 80, targetPort: ${PORT}, appProtocol: http }]
  selector: { app: web }
---
# The same workload behind a TCP port: a denied connection is refused at
# connection time (SOCKS5 reply), where on the HTTP port each request is.
apiVersion: ambit.dev/v1alpha1
kind: Service
metadata: { name: web-tcp, namespace: demo }
spec:
  addresses: ["${ip(101)}"]
  ports: [{ name: tcp, port: 80, targetPort: ${PORT} }]
  selector: { app: web }
---
apiVersion: ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: web-allow-client, namespace: demo }
spec:
  selector: { matchLabels: { app: web } }
  action: ALLOW
  rules:
    - from: [{ source: { principals: ["${TD}/ns/demo/sa/client", "${TD}/ns/demo/sa/spy"] } }]
---
apiVersion: ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: no-spy, namespace: demo }
spec:
  selector: { matchLabels: { app: web } }
  action: DENY
  rules:
    - from: [{ source: { namespaces: ["evil"] } }]
    - from: [{ source: { principals: ["${TD}/ns/demo/sa/spy"] } }]
---
apiVersion: ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: no-admin, namespace: demo }
spec:
  selector: { matchLabels: { app: web } }
  action: DENY
  rules:
    - to: [{ operation: { paths: ["/admin", "/admin/*"] } }]
`;

const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-explain-'));
let ctl: RunningController;
let agentA: RunningAgent;
let agentB: RunningAgent;
let web: Server;

t.before(async () => {
  await setUp(async (started) => {
    web = await startEchoServer(WEB, PORT);
    started(() => web.close());
    ctl = await startController(join(root, 'ctl'), [], CTL);
    started(() => ctl.proc.stop());
    const ok = async (args: string[], stdin?: string): Promise<string> => {
      const r = await ambitctl(ctl, args, stdin);
      if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    };
    // One ambitctl run for every resource: each run costs about a second of CPU.
    await ok(['apply', '-f', '-'], RESOURCES);
    const [ta, tb] = [(await ok(['node', 'token', 'create', '--node', 'node-a'])).trim(), (await ok(['node', 'token', 'create', '--node', 'node-b'])).trim()];
    [agentA, agentB] = await startAgentPair(started, [
      { node: 'node-a', address: A, controller: ctl.address, dataDir: join(root, 'a'), join: ta },
      { node: 'node-b', address: B, controller: ctl.address, dataDir: join(root, 'b'), join: tb },
    ]);
    await agentsReady([agentA, agentB], 20_000);
    await agentKnowsNode(agentA, 'node-b');
  });
});
t.teardown(async () => {
  await agentA?.proc.stop();
  await agentB?.proc.stop();
  await ctl?.proc.stop();
  web?.close();
});

const explain = (args: string[]): Promise<CliResult> => ambitctl(ctl, ['explain', ...args]);

async function explainJson(t: Test, args: string[], code: number): Promise<Explanation> {
  const r = await explain([...args, '-o', 'json']);
  t.equal(r.code, code, `exit status ${code} (${r.stderr.trim()})`);
  return JSON.parse(r.stdout) as Explanation;
}

t.test('allowed: the source, the service with its port, target port and appProtocol, each endpoint with node, weight and the ALLOW that decides', async (t) => {
  // The table and -o json runs go together: each ambitctl run costs about a second of CPU.
  const [r, x] = await Promise.all([explain(['--from', 'demo/client', '--to', 'web.demo:80']), explainJson(t, ['--from', 'demo/client', '--to', 'web.demo.svc.cluster.local:80'], 0)]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /source\s+workload demo\/client \(spiffe:\/\/cluster\.local\/ns\/demo\/sa\/client\) on node node-a, address 127\.0\.125\.10, mTLS/);
  t.match(r.stdout, /destination\s+service web\.demo\.svc\.cluster\.local \(VIP 127\.0\.125\.100\), port 80 \(http\) → target port 8080, appProtocol http/);
  t.match(r.stdout, /demo\/web\s+127\.0\.125\.20:8080\s+node-b \(127\.0\.125\.3:15008\)\s+1\s+yes\s+allowed: ALLOW demo\/web-allow-client rule 0 matches/);

  t.same(x.source, { kind: 'workload', workload: 'demo/client', identity: `spiffe://${TD}/ns/demo/sa/client`, node: 'node-a', address: CLIENT, peerAuthentication: 'mutual_tls' });
  t.match(x.destination, { kind: 'service', service: 'web.demo.svc.cluster.local', serviceAddresses: [ip(100)], servicePort: { name: 'http', port: 80, targetPort: PORT, appProtocol: 'http' } });
  t.same(x.endpoints.map((p) => ({ workload: p.workload, address: p.address, port: p.port, node: p.node, nodeAddress: p.nodeAddress, weight: p.weight })), [
    { workload: 'demo/web', address: WEB, port: PORT, node: 'node-b', nodeAddress: `${B}:15008`, weight: 1 },
  ]);
  t.match(x.endpoints[0]!.verdict, { allowed: true, reason: 'allowed_by_policy', policy: 'demo/web-allow-client', rule: 0 });
  t.equal(x.error, null);
});

t.test('denied by a DENY: the policy and its rule are named', async (t) => {
  // The table and -o json runs go together: each ambitctl run costs about a second of CPU.
  const [r, x] = await Promise.all([explain(['--from', 'demo/spy', '--to', `${ip(100)}:80`]), explainJson(t, ['--from-identity', `spiffe://${TD}/ns/demo/sa/spy`, '--to', `${ip(100)}:80`], 0)]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /denied: DENY demo\/no-spy rule 1 matches/);
  t.match(x.endpoints, [{ workload: 'demo/web', verdict: { allowed: false, reason: 'denied_by_policy', policy: 'demo/no-spy', rule: 1 } }]);
});

t.test('denied for a missing ALLOW: which ALLOW policy needs a rule', async (t) => {
  // The table and -o json runs go together: each ambitctl run costs about a second of CPU.
  const [r, x] = await Promise.all([explain(['--from', 'demo/intruder', '--to', 'web.demo:80']), explainJson(t, ['--from-address', INTRUDER, '--to', 'web.demo:80'], 0)]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /denied: no ALLOW policy matches: demo\/web is selected by ALLOW demo\/web-allow-client, one of which needs a rule for this source/);
  t.match(x.source, { kind: 'workload', workload: 'demo/intruder' });
  t.match(x.endpoints, [{ verdict: { allowed: false, reason: 'no_allow_match', policy: '(no ALLOW matched)', rule: -1, allowPolicies: ['demo/web-allow-client'] } }]);
});

t.test('one HTTP request on the http port: the DENY on its path is named', async (t) => {
  const [r, x] = await Promise.all([
    explain(['--from', 'demo/client', '--to', 'web.demo:80', '--method', 'POST', '--path', '/admin/users']),
    explainJson(t, ['--from', 'demo/client', '--to', 'web.demo:80', '--path', '/shop'], 0),
  ]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /explain demo\/client → web\.demo:80, request POST \/admin\/users Host web\.demo/);
  t.match(r.stdout, /allowed: ALLOW demo\/web-allow-client rule 0 matches; request POST \/admin\/users Host web\.demo: denied by DENY demo\/no-admin/);
  t.match(x.query, { request: 'GET /shop Host web.demo' });
  t.match(x.endpoints, [{ verdict: { allowed: true, request: { outcome: 'allowed', reason: 'connection_allowed', denyPolicies: ['demo/no-admin'], allowRequired: false } } }]);
});

t.test('passthrough: nothing in the mesh has the address', async (t) => {
  // The table and -o json runs go together: each ambitctl run costs about a second of CPU.
  const [r, x] = await Promise.all([explain(['--from', 'demo/client', '--to', '192.0.2.7:443']), explainJson(t, ['--from', 'demo/client', '--to', '192.0.2.7:443'], 0)]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /destination\s+passthrough: nothing in the mesh has 192\.0\.2\.7:443/);
  t.match(x, { error: null, destination: { kind: 'passthrough', host: '192.0.2.7', port: 443, service: '', servicePort: null }, endpoints: [] });
});

t.test('unknown source: a typed answer, exit status 1, the code on stderr', async (t) => {
  // The table and -o json runs go together: each ambitctl run costs about a second of CPU.
  const [r, x] = await Promise.all([explain(['--from', 'demo/nobody', '--to', 'web.demo:80']), explainJson(t, ['--from', 'demo/nobody', '--to', 'web.demo:80'], 1)]);
  t.equal(r.code, 1);
  t.match(r.stdout, /source\s+unknown/);
  t.match(r.stderr, /^error: no workload demo\/nobody is registered \(namespace demo has client, intruder, spy, web\) \[AMBIT_ERR_EXPLAIN_UNKNOWN_SOURCE\]\n$/);
  t.match(x, { source: null, destination: null, endpoints: [], error: { code: 'AMBIT_ERR_EXPLAIN_UNKNOWN_SOURCE', message: /no workload demo\/nobody/ } });
});

t.test('unknown destination: a typed answer, exit status 1, the code on stderr', async (t) => {
  // The table and -o json runs go together: each ambitctl run costs about a second of CPU.
  const [r, x] = await Promise.all([explain(['--from', 'demo/client', '--to', 'web.demo:8080']), explainJson(t, ['--from', 'demo/client', '--to', 'nosuch.demo:80'], 1)]);
  t.equal(r.code, 1);
  t.match(r.stderr, /service web\.demo has no port 8080 \(its ports: 80\) \[AMBIT_ERR_EXPLAIN_UNKNOWN_DESTINATION\]/);
  t.match(x, { source: { workload: 'demo/client' }, destination: null, endpoints: [], error: { code: 'AMBIT_ERR_EXPLAIN_UNKNOWN_DESTINATION', message: /no service nosuch\.demo is registered/ } });
});

t.test('a malformed query is a usage error (exit status 2), sent nowhere', async (t) => {
  const r = await explain(['--from', 'demo/client', '--from-address', CLIENT, '--to', 'web.demo:80']);
  t.equal(r.code, 2);
  t.match(r.stderr, /give one source, not --from and --from-address \[AMBIT_ERR_CLI_USAGE\]/);
});

t.test('a real denied connection: both agents count and log it under the policy explain named', async (t) => {
  // The client's connection opening proves node-a holds the service, the policies' revision and node-b's address.
  await eventually(async () => {
    const { socket, reply } = await socksConnect(agentA.socks, CLIENT, 'demo/client', 'web-tcp.demo', 80, 10_000);
    socket.destroy();
    return reply === 0;
  }, 'node-a carries client → web-tcp.demo', 20_000);
  // The spy's connection through node-a's SOCKS5 to web-tcp.demo:80 is tunnelled to node-b, which denies it.
  const { socket: spy, reply } = await socksConnect(agentA.socks, SPY, 'demo/spy', 'web-tcp.demo', 80, 10_000);
  spy.destroy();
  t.not(reply, 0, 'the spy is refused');
  const inbound = await agentB.proc.waitForLog((l) => l.msg === 'connection' && l.direction === 'inbound' && l['src.workload'] === 'spy');
  t.match(inbound, { response_flags: 'DENY', policy: 'demo/no-spy', error: 'denied: denied_by_policy by demo/no-spy' }, 'the destination agent logs the policy');
  const outbound = await agentA.proc.waitForLog((l) => l.msg === 'connection' && l.direction === 'outbound' && l['src.workload'] === 'spy');
  t.match(outbound, { response_flags: 'DENY', policy: 'demo/no-spy' }, 'the source agent logs it too');
  const metricsB = (await httpGet(hostPortOf(agentB.metrics), '/metrics')).body;
  t.ok(metricValue(metricsB, 'ambit_policy_denials_total', { direction: 'inbound', policy: 'demo/no-spy', reason: 'denied_by_policy' }) >= 1, 'node-b: ambit_policy_denials_total{policy="demo/no-spy"}');
  const metricsA = (await httpGet(hostPortOf(agentA.metrics), '/metrics')).body;
  t.ok(metricValue(metricsA, 'ambit_policy_denials_total', { direction: 'outbound', policy: 'demo/no-spy', reason: 'denied_by_policy' }) >= 1, 'node-a: ambit_policy_denials_total{policy="demo/no-spy"}');

  // The intruder, for want of an ALLOW.
  const { socket, reply: r2 } = await socksConnect(agentA.socks, INTRUDER, 'demo/intruder', 'web-tcp.demo', 80, 10_000);
  socket.destroy();
  t.not(r2, 0, 'the intruder is refused');
  t.match(await agentB.proc.waitForLog((l) => l.msg === 'connection' && l.direction === 'inbound' && l['src.workload'] === 'intruder'), { response_flags: 'DENY', policy: '(no ALLOW matched)' });
  const after = (await httpGet(hostPortOf(agentB.metrics), '/metrics')).body;
  t.ok(metricValue(after, 'ambit_policy_denials_total', { direction: 'inbound', policy: '(no ALLOW matched)', reason: 'no_allow_match' }) >= 1, 'node-b: ambit_policy_denials_total{policy="(no ALLOW matched)"}');
});
