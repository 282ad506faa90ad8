/**
 * Issue "Agent: HBONE data plane", end to end with real processes: a
 * controller and two agents on different loopback addresses as two hosts
 * (NET.2 = node-a, NET.3 = node-b), real TLS 1.3 / HTTP/2 tunnels, workloads
 * bound to their own loopback addresses; every byte through ambit-dataplane.
 * Run by agent.test.ts.
 */
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { createHash, createPrivateKey, generateKeyPairSync, randomBytes, X509Certificate } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import http2 from 'node:http2';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { issueCertificate, KeyUsage, EKU, NAME_OID, toPem } from '../../shared/x509.ts';
import { serverNameFor } from '../../agent/proxy/hbone-names.ts';
import { defaultDataplaneBinary } from '../../agent/dataplane/inbound.ts';
import { agentKnowsNode, agentsReady, ambitctl, childPids, sendRandom, eventually, socksConnect, httpGet, hostPortOf, metricValue, startAgent, startAgentPair, startController, type RunningAgent, type RunningController } from './harness.ts';

export interface AgentSuiteOptions {
  /** The first three octets of this run's loopback block ("127.0.3"). */
  readonly net: string;
}

export function agentSuite(o: AgentSuiteOptions): void {
  const CTL = `${o.net}.1`;
  const A = `${o.net}.2`;
  const B = `${o.net}.3`;
  const CLIENT_IP = `${o.net}.12`;
  const WEB_IP = `${o.net}.13`;
  const WEB_PORT = 8080;
  const TD = 'cluster.local';
  const CLIENT_ID = `spiffe://${TD}/ns/default/sa/client`;
  const WEB_ID = `spiffe://${TD}/ns/default/sa/web`;

  const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-agent-'));
  let ctl: RunningController;
  let agentA: RunningAgent;
  let agentB: RunningAgent;
  let web: Server;
  /** sha256 of every byte each accepted connection received, by connection index. */
  const serverHashes: string[] = [];

  t.teardown(async () => {
    await agentA?.proc.stop();
    await agentB?.proc.stop();
    await ctl?.proc.stop();
    web?.close();
  });

  async function ok(args: string[], stdin?: string): Promise<string> {
    const r = await ambitctl(ctl, args, stdin);
    if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')} failed: ${r.stderr}`);
    return r.stdout;
  }

  /** SOCKS5 CONNECT through an agent as `user`, source bound to the client workload's address. */
  function socks(proxy: string, user: string, host: string, port: number): Promise<{ socket: Socket; reply: number }> {
    return socksConnect(proxy, CLIENT_IP, user, host, port);
  }

  /** Sends `bytes` of random data and reads the echo; resolves with the hashes of what was sent and what came back. */
  function echoTransfer(socket: Socket, bytes: number): Promise<{ sent: string; received: string; receivedBytes: number }> {
    return new Promise((resolve, reject) => {
      const sent = createHash('sha256');
      const received = createHash('sha256');
      let receivedBytes = 0;
      socket.on('data', (d: Buffer) => {
        received.update(d);
        receivedBytes += d.length;
      });
      socket.on('end', () => resolve({ sent: sent.digest('hex'), received: received.digest('hex'), receivedBytes }));
      socket.on('error', reject);
      socket.resume();
      sendRandom(socket, bytes, sent);
    });
  }

  t.before(async () => {
    web = createServer({ allowHalfOpen: true }, (s) => {
      const h = createHash('sha256');
      const i = serverHashes.push('') - 1;
      s.on('data', (d) => h.update(d));
      s.on('end', () => {
        serverHashes[i] = h.digest('hex');
      });
      s.on('error', () => undefined);
      s.pipe(s);
    });
    await new Promise<void>((r) => web.listen(WEB_PORT, WEB_IP, r));
    ctl = await startController(join(root, 'ctl'), [], CTL);
    await ok(['workload', 'register', '--name', 'web', '--service-account', 'web', '--node', 'node-b', '--address', WEB_IP, '--port', String(WEB_PORT), '--label', 'app=web']);
    await ok(['workload', 'register', '--name', 'client', '--service-account', 'client', '--node', 'node-a', '--address', CLIENT_IP]);
    await ok(['service', 'create', '--name', 'web', '--port', `80:${WEB_PORT}`, '--selector', 'app=web']);
    const ta = (await ok(['node', 'token', 'create', '--node', 'node-a'])).trim();
    const tb = (await ok(['node', 'token', 'create', '--node', 'node-b'])).trim();
    // Whichever agent starts is stopped at the end, even if the other fails to start.
    [agentA, agentB] = await startAgentPair((stop) => t.teardown(stop), [
      { node: 'node-a', address: A, controller: ctl.address, dataDir: join(root, 'a'), join: ta, extra: ['--upstreams', 'default/client:19080=web.default:80'] },
      { node: 'node-b', address: B, controller: ctl.address, dataDir: join(root, 'b'), join: tb },
    ]);
    await agentsReady([agentA, agentB]);
    await agentKnowsNode(agentA, 'node-b');
  });

  t.test('SOCKS5: 64 MiB cross-host, intact both ways, reported by both agents', async (t) => {
    const before = serverHashes.length;
    const { socket, reply } = await socks(agentA.socks, 'default/client', 'web.default', 80);
    t.equal(reply, 0, 'SOCKS CONNECT succeeded');
    const r = await echoTransfer(socket, 64 * 1024 * 1024);
    t.equal(r.receivedBytes, 64 * 1024 * 1024, 'every byte came back');
    t.equal(r.received, r.sent, 'echo checksum matches what was sent');
    await eventually(async () => serverHashes[before] !== undefined && serverHashes[before] !== '', 'server saw the end');
    t.equal(serverHashes[before], r.sent, 'server received exactly what was sent');

    const labels = { source_principal: CLIENT_ID, destination_principal: WEB_ID, source_workload: 'client', destination_workload: 'web', connection_security_policy: 'mutual_tls' };
    const ma = await eventually(async () => {
      const m = (await httpGet(hostPortOf(agentA.metrics), '/metrics')).body;
      return metricValue(m, 'istio_tcp_connections_closed_total', { reporter: 'source', ...labels }) >= 1 ? m : undefined;
    }, 'source agent counts the closed connection');
    t.equal(metricValue(ma, 'istio_tcp_connections_opened_total', { reporter: 'source', ...labels, destination_service: 'web.default.svc.cluster.local' }), 1, 'source agent: opened, with service');
    t.ok(metricValue(ma, 'istio_tcp_received_bytes_total', { reporter: 'source', ...labels }) >= 64 * 1024 * 1024, 'source agent: bytes received from the client');
    const mb = (await httpGet(hostPortOf(agentB.metrics), '/metrics')).body;
    t.equal(metricValue(mb, 'istio_tcp_connections_opened_total', { reporter: 'destination', ...labels }), 1, 'destination agent: opened');
    t.ok(metricValue(mb, 'istio_tcp_sent_bytes_total', { reporter: 'destination', ...labels }) >= 64 * 1024 * 1024, 'destination agent: bytes sent back');

    const logA = await agentA.proc.waitForLog((l) => l.msg === 'connection' && l.direction === 'outbound' && l.bytes_recv === 64 * 1024 * 1024);
    t.equal(logA['src.identity'], CLIENT_ID);
    t.equal(logA['dst.identity'], WEB_ID);
    t.equal(logA['dst.service'], 'web.default.svc.cluster.local');
    const logB = await agentB.proc.waitForLog((l) => l.msg === 'connection' && l.direction === 'inbound' && l.bytes_recv === 64 * 1024 * 1024);
    t.equal(logB['src.identity'], CLIENT_ID, 'destination log names the source identity');
    t.equal(logB.trace_id, logA.trace_id, 'one trace across both hops (traceparent in the CONNECT)');
  });

  t.test('upstream listener: tunnelled as its workload, 64 MiB intact, reported by the source agent', async (t) => {
    const before = serverHashes.length;
    const logsBefore = new Set(agentA.proc.logs); // the SOCKS5 test's connection has the same source and size
    const socket = connect({ host: A, port: 19080, localAddress: CLIENT_IP, allowHalfOpen: true });
    await new Promise((r) => socket.once('connect', r));
    const r = await echoTransfer(socket, 64 * 1024 * 1024);
    t.equal(r.receivedBytes, 64 * 1024 * 1024, 'every byte came back');
    t.equal(r.received, r.sent, '64 MiB intact both ways');
    await eventually(async () => serverHashes[before] !== undefined && serverHashes[before] !== '', 'server saw the end');
    t.equal(serverHashes[before], r.sent, 'server received exactly what was sent');
    const logA = await agentA.proc.waitForLog((l) => l.msg === 'connection' && l.direction === 'outbound' && l['src.addr'] === CLIENT_IP && l.bytes_recv === 64 * 1024 * 1024 && !logsBefore.has(l));
    t.equal(logA['src.identity'], CLIENT_ID, 'source log: the listener\'s workload');
    t.equal(logA['dst.identity'], WEB_ID, 'source log: the destination workload');
    t.equal(logA['dst.service'], 'web.default.svc.cluster.local', 'source log: the service it resolved');
    t.equal(logA.bytes_sent, 64 * 1024 * 1024, 'source log: every byte back to the client');
    t.equal(logA.error, '', 'source log: no error');
    const logB = await agentB.proc.waitForLog((l) => l.msg === 'connection' && l.direction === 'inbound' && l.trace_id === logA.trace_id);
    t.equal(logB.bytes_recv, 64 * 1024 * 1024, 'destination log: the same connection (one trace across both hops), every byte');
    const ma = (await httpGet(hostPortOf(agentA.metrics), '/metrics')).body;
    const labels = { reporter: 'source', source_principal: CLIENT_ID, destination_principal: WEB_ID, destination_service: 'web.default.svc.cluster.local' };
    t.ok(metricValue(ma, 'istio_tcp_connections_closed_total', labels) >= 2, 'source agent counts it (after the SOCKS5 one)');
    t.ok(metricValue(ma, 'istio_tcp_sent_bytes_total', labels) >= 128 * 1024 * 1024, 'and its bytes');
    const spoof = connect({ host: A, port: 19080, allowHalfOpen: true }); // from 127.0.0.1, not the workload's address
    const outcome = await new Promise<string>((resolve) => {
      spoof.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
      spoof.on('close', () => resolve('closed'));
      spoof.on('data', () => resolve('data'));
      spoof.write('hello');
    });
    t.not(outcome, 'data', `a process that is not the workload is refused (${outcome})`);
  });

  function rawHbone(opts: { key?: string; cert?: string; ca?: string; serverIdentity: string; authority: string }): Promise<{ status: number | undefined; error: string }> {
    return new Promise((resolve) => {
      const session = http2.connect(`https://${agentB.hbone}`, {
        ca: opts.ca ?? readFileSync(join(ctl.dataDir, 'ca/bundle.pem'), 'utf8'),
        ...(opts.key ? { key: opts.key, cert: opts.cert } : {}),
        servername: serverNameFor(opts.serverIdentity),
        minVersion: 'TLSv1.3',
        checkServerIdentity: () => undefined,
      });
      const done = (status: number | undefined, error: string): void => {
        session.destroy();
        resolve({ status, error });
      };
      session.on('error', (e) => done(undefined, e.message));
      session.on('close', () => done(undefined, 'session closed'));
      const req = session.request({ ':method': 'CONNECT', ':authority': opts.authority });
      req.on('response', (h) => done(Number(h[':status']), ''));
      req.on('error', (e) => done(undefined, e.message));
      setTimeout(() => done(undefined, 'timeout'), 5000);
    });
  }

  function clientCredentials(): { key: string; cert: string } {
    const dir = join(agentA.dataDir, 'certs');
    for (const f of readdirSync(dir)) {
      const e = JSON.parse(readFileSync(join(dir, f), 'utf8')) as { uri: string; keyPem: string; chainPem: string };
      if (e.uri === CLIENT_ID) return { key: e.keyPem, cert: e.chainPem };
    }
    throw new Error('client certificate not found in agent A data dir');
  }

  function foreignLeaf(uri: string, issuer?: { certPem: string; keyPem: string }): { key: string; cert: string } {
    const leafKeys = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    let iss = issuer;
    if (!iss) {
      const rk = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const rootDer = issueCertificate({ subjectPublicKey: rk.publicKey.export({ type: 'spki', format: 'der' }), subject: [{ oid: NAME_OID.commonName, value: 'evil root' }], notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 86_400_000), isCa: true, keyUsage: KeyUsage.keyCertSign, selfSignKey: rk.privateKey });
      iss = { certPem: toPem('CERTIFICATE', rootDer), keyPem: rk.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() };
    }
    const der = issueCertificate({
      subjectPublicKey: leafKeys.publicKey.export({ type: 'spki', format: 'der' }), uris: [uri],
      notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 3_600_000), isCa: false,
      keyUsage: KeyUsage.digitalSignature, extKeyUsage: [EKU.serverAuth, EKU.clientAuth],
      issuer: { certDer: new X509Certificate(iss.certPem).raw, key: createPrivateKey(iss.keyPem) },
    });
    return { key: leafKeys.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), cert: toPem('CERTIFICATE', der) };
  }

  t.test('only mesh identities of this trust domain open tunnels; only local workloads are reachable', async (t) => {
    const authority = `${WEB_IP}:${WEB_PORT}`;
    const before = metricValue((await httpGet(hostPortOf(agentB.metrics), '/metrics')).body, 'ambit_connections_refused_total', { reason: 'peer_certificate' });
    const none = await rawHbone({ serverIdentity: WEB_ID, authority });
    t.not(none.status, 200, `no client certificate: refused (${none.error})`);
    const otherCa = await rawHbone({ ...foreignLeaf(CLIENT_ID), serverIdentity: WEB_ID, authority });
    t.not(otherCa.status, 200, `certificate from another CA: refused (${otherCa.error})`);
    const realCa = { certPem: readFileSync(join(ctl.dataDir, 'ca/signer-cert.pem'), 'utf8'), keyPem: readFileSync(join(ctl.dataDir, 'ca/signer-key.pem'), 'utf8') };
    const otherTd = await rawHbone({ ...foreignLeaf('spiffe://other.domain/ns/default/sa/client', realCa), serverIdentity: WEB_ID, authority });
    t.not(otherTd.status, 200, `our CA but another trust domain: refused (${otherTd.error})`);
    const after = metricValue((await httpGet(hostPortOf(agentB.metrics), '/metrics')).body, 'ambit_connections_refused_total', { reason: 'peer_certificate' });
    t.equal(after - before, 3, 'each attempt is counted as a rejected peer');

    const good = clientCredentials();
    t.equal((await rawHbone({ ...good, serverIdentity: WEB_ID, authority })).status, 200, 'a real mesh client gets 200');
    t.equal((await rawHbone({ ...good, serverIdentity: WEB_ID, authority: `${CLIENT_IP}:1234` })).status, 400, 'authority not local to node-b: 400');
    t.equal((await rawHbone({ ...good, serverIdentity: WEB_ID, authority: 'web.default:80' })).status, 400, 'authority that is not ip:port: 400');
  });

  t.test('DENY policy: 401 for new tunnels and existing connections are closed', async (t) => {
    const { socket, reply } = await socks(agentA.socks, 'default/client', WEB_IP, WEB_PORT);
    t.equal(reply, 0);
    socket.resume();
    const closed = new Promise<string>((r) => {
      socket.once('close', () => r('close'));
      socket.once('end', () => r('end'));
      socket.once('error', (e: NodeJS.ErrnoException) => r(e.code ?? 'error'));
    });
    const pong = new Promise((r) => socket.once('data', r));
    socket.write('ping');
    await pong;
    t.comment('ping answered; applying the policy');
    const policy = [
      'apiVersion: ambit.dev/v1alpha1', 'kind: AuthorizationPolicy', 'metadata: {name: deny-client, namespace: default}',
      'spec:', '  selector: {matchLabels: {app: web}}', '  action: DENY', '  rules:', `    - from: [{source: {principals: ["${TD}/ns/default/sa/client"]}}]`, '',
    ].join('\n');
    await ok(['apply', '-f', '-'], policy);
    const cut = await Promise.race([closed, new Promise<string>((r) => setTimeout(() => r(''), 10_000))]);
    t.equal(cut, 'ECONNRESET', 'the live connection was reset by the policy change');
    const denied = await eventually(async () => {
      const r = await socks(agentA.socks, 'default/client', WEB_IP, WEB_PORT);
      r.socket.destroy();
      return r.reply === 2 ? r : undefined;
    }, 'new connection refused');
    t.equal(denied.reply, 2, 'SOCKS client sees "not allowed by ruleset"');
    t.equal((await rawHbone({ ...clientCredentials(), serverIdentity: WEB_ID, authority: `${WEB_IP}:${WEB_PORT}` })).status, 401, 'HBONE answers 401');
    const log = await agentB.proc.waitForLog((l) => l.msg === 'connection' && l.response_flags === 'DENY' && String(l.error).includes('default/deny-client'));
    t.ok(log, 'destination access log says which policy denied');
    await ok(['delete', '-f', '-'], policy);
    await eventually(async () => {
      const r = await socks(agentA.socks, 'default/client', WEB_IP, WEB_PORT);
      r.socket.destroy();
      return r.reply === 0;
    }, 'allowed again after the policy is deleted');
  });

  t.test('a registered workload that is not listening: 503, reported as an upstream failure', async (t) => {
    await ok(['workload', 'register', '--name', 'down', '--service-account', 'down', '--node', 'node-b', '--address', `${o.net}.14`, '--port', '9999']);
    await eventually(async () => {
      const dump = JSON.parse((await httpGet(hostPortOf(agentB.admin), '/workloads')).body) as { local: { metadata: { name: string } ; certificate: string }[] };
      return dump.local.some((w) => w.metadata.name === 'down' && w.certificate === 'valid');
    }, 'node-b holds a certificate for the new workload');
    const { socket, reply } = await socks(agentA.socks, 'default/client', `${o.net}.14`, 9999);
    socket.destroy();
    t.equal(reply, 5, 'SOCKS client sees "connection refused"');
    const log = await agentB.proc.waitForLog((l) => l.msg === 'connection' && l['dst.workload'] === 'down');
    t.equal(log.response_flags, 'UF', 'destination log: upstream failure');
    t.match(String(log.error), /workload_unreachable/, 'and why');
  });

  // One data path: every data-path port is the data plane's; the agent
  // itself listens only for admin, metrics and readiness.
  t.test('ss: every data-path listener is ambit-dataplane\'s', async (t) => {
    const table = execFileSync('ss', ['-Hltnp'], { encoding: 'utf8' });
    const owner = (addr: string): string => {
      const line = table.split('\n').find((l) => l.split(/\s+/)[3] === addr) ?? '';
      return /users:\(\("([^"]+)"/.exec(line)?.[1] ?? '(none)';
    };
    t.equal(owner(agentB.hbone), 'ambit-dataplane', `HBONE on node-b (${agentB.hbone})`);
    t.equal(owner(agentA.socks), 'ambit-dataplane', `SOCKS5 on node-a (${agentA.socks})`);
    t.equal(owner(`${A}:19080`), 'ambit-dataplane', 'the upstream listener on node-a');
    const own = [agentA.admin, agentA.metrics, agentA.ready];
    const pidOf = (addr: string): string => /pid=(\d+),/.exec(table.split('\n').find((l) => l.split(/\s+/)[3] === addr) ?? '')?.[1] ?? '';
    for (const addr of own) t.equal(pidOf(addr), String(agentA.proc.child.pid), `${addr} (admin, metrics or readiness) is the agent's`);
    const mine = table.split('\n').filter((l) => l.includes(`pid=${agentA.proc.child.pid},`)).map((l) => l.split(/\s+/)[3]);
    t.same(mine.sort(), [...own].sort(), 'node-a\'s agent listens on nothing else');
  });

  t.test('admin endpoints: config dump, certificates without keys, workloads, log level at run time', async (t) => {
    const admin = hostPortOf(agentA.admin);
    t.equal(admin.host, A, 'admin listens on the agent\'s loopback address');
    const dump = JSON.parse((await httpGet(admin, '/config_dump')).body) as { node: string; revision: number; resources: unknown[]; tunnelPool: { connections: number }; dataplane: { binary: string; listeners: { what: string; addr: string }[] } };
    t.equal(dump.node, 'node-a');
    t.equal(dump.dataplane.binary, defaultDataplaneBinary(), 'the data plane serving');
    t.same(dump.dataplane.listeners.map((l) => l.what), ['SOCKS5', 'upstream (default/client)'], 'and the listeners it binds for the agent');
    t.ok(dump.revision > 0 && dump.resources.length >= 3, 'holds the mesh state');
    const certsText = (await httpGet(admin, '/certs')).body;
    const certs = JSON.parse(certsText) as { identity: string; state: string; secondsLeft: number; notAfter: string; renewsAt: string }[];
    t.ok(certs.some((c) => c.identity === CLIENT_ID && c.state === 'valid' && c.secondsLeft > 3600), 'workload certificate listed with its lifetime');
    const client = certs.find((c) => c.identity === CLIENT_ID);
    t.ok(client && Date.parse(client.renewsAt) > Date.now() && Date.parse(client.renewsAt) < Date.parse(client.notAfter), 'and when it is renewed: before it expires');
    t.ok(certs.some((c) => c.identity === `spiffe://${TD}/ambit/node/node-a`), 'node certificate listed');
    t.notMatch(certsText, /PRIVATE KEY/, 'no private key is ever shown');
    const wl = JSON.parse((await httpGet(admin, '/workloads')).body) as { local: { identity: string }[] };
    t.same(wl.local.map((w) => w.identity), [CLIENT_ID], 'local workloads with identities');
    const set = await fetch(`http://${A}:${admin.port}/logging?level=debug`, { method: 'POST' });
    t.same(await set.json(), { level: 'debug' }, 'log level changed');
    t.equal((await fetch(`http://${A}:${admin.port}/logging?level=loud`, { method: 'POST' })).status, 400, 'bad level refused');
    await fetch(`http://${A}:${admin.port}/logging?level=info`, { method: 'POST' });
  });

  t.test('controller down: a restarted agent serves from its cached state and certificates', async (t) => {
    await ctl.proc.stop('SIGTERM');
    await agentB.proc.stop('SIGTERM');
    agentB = await startAgent({ node: 'node-b', address: B, controller: ctl.address, dataDir: join(root, 'b') });
    await eventually(async () => (await httpGet(hostPortOf(agentB.ready), '/healthz/ready')).status === 200, 'restarted agent ready without the controller');
    const { socket, reply } = await socks(agentA.socks, 'default/client', 'web.default', 80);
    t.equal(reply, 0, 'tunnel opens through the restarted agent');
    if (reply !== 0) t.comment(JSON.stringify(agentA.proc.logs.slice(-5)) + '\n' + JSON.stringify(agentB.proc.logs.slice(-8)));
    const r = await echoTransfer(socket, 1024 * 1024);
    t.equal(r.received, r.sent, 'bytes intact');
    t.ok(agentB.proc.logs.some((l) => l.msg === 'serving cached mesh state until the controller answers'), 'agent says it serves from cache');
    t.ok(agentB.proc.logs.some((l) => l.msg === 'controller watch lost; serving cached state'), 'and that the controller is unreachable');
  });

  // An executable built from other sources (here: one that states no
  // protocol version) is refused at start, not misread.
  t.test('an ambit-dataplane of another control protocol: the agent refuses to start, naming it', async (t) => {
    await agentB.proc.stop('SIGTERM');
    const stale = join(root, 'stale-dataplane');
    writeFileSync(stale, `#!/bin/sh\necho '{"t":"listening","addr":"${B}:15008"}'\nexec cat >/dev/null\n`, { mode: 0o755 });
    await t.rejects(startAgent({ node: 'node-b', address: B, controller: ctl.address, dataDir: join(root, 'b'), extra: ['--dataplane-binary', stale] }),
      /speaks control protocol none, this agent \d+: it was built from other sources; rebuild it/, 'the agent refuses to start, saying why');
    agentB = await startAgent({ node: 'node-b', address: B, controller: ctl.address, dataDir: join(root, 'b') });
    await eventually(async () => (await httpGet(hostPortOf(agentB.ready), '/healthz/ready')).status === 200, 'agent ready');
    t.equal(childPids(agentB.proc.child.pid!).length, 1, 'with its ambit-dataplane');
    const { socket, reply } = await socks(agentA.socks, 'default/client', 'web.default', 80);
    t.equal(reply, 0, 'tunnels open through it');
    const r = await echoTransfer(socket, 256 * 1024);
    t.equal(r.received, r.sent, 'bytes intact');
  });

  {
    t.test('ambit-dataplane killed: the agent starts it again, and tunnels open again', async (t) => {
      const pid = agentB.proc.child.pid!;
      const children = childPids(pid);
      t.equal(children.length, 1, 'node-b runs one ambit-dataplane');
      process.kill(children[0]!, 'SIGKILL');
      await agentB.proc.waitForLog((l) => l.msg === 'ambit-dataplane exited; starting it again');
      const r = await eventually(async () => {
        const { socket, reply } = await socks(agentA.socks, 'default/client', 'web.default', 80);
        if (reply !== 0) {
          socket.destroy();
          return undefined;
        }
        return echoTransfer(socket, 256 * 1024);
      }, 'a tunnel through the restarted ambit-dataplane');
      t.equal(r.received, r.sent, 'bytes intact through the new process');
      t.equal(r.receivedBytes, 256 * 1024);

      // node-a's ambit-dataplane carries its upstream listener: a new process binds it again.
      const aChildren = childPids(agentA.proc.child.pid!);
      t.equal(aChildren.length, 1, 'node-a runs one ambit-dataplane');
      process.kill(aChildren[0]!, 'SIGKILL');
      await agentA.proc.waitForLog((l) => l.msg === 'ambit-dataplane exited; starting it again');
      const u = await eventually(async () => {
        const socket = connect({ host: A, port: 19080, localAddress: CLIENT_IP, allowHalfOpen: true });
        const up = await new Promise<boolean>((res) => {
          socket.once('connect', () => res(true));
          socket.once('error', () => res(false));
        });
        if (!up) return undefined;
        return echoTransfer(socket, 256 * 1024).catch(() => undefined);
      }, 'the upstream listener serves again through node-a\'s new ambit-dataplane');
      t.equal(u.received, u.sent, 'bytes intact through the upstream listener again');
      t.equal(u.receivedBytes, 256 * 1024);
    });

    // The executable replaced under a running agent by one of another
    // protocol (an upgrade half done), then the data plane restarted: the
    // agent must not misread it, and must not go on reporting ready.
    t.test('ambit-dataplane replaced by another protocol\'s, then restarted: not started, and the agent is not ready', async (t) => {
      await agentB.proc.stop('SIGTERM');
      const bin = join(root, 'dataplane-copy');
      copyFileSync(defaultDataplaneBinary(), bin);
      chmodSync(bin, 0o755);
      agentB = await startAgent({ node: 'node-b', address: B, controller: ctl.address, dataDir: join(root, 'b'), extra: ['--dataplane-binary', bin] });
      await eventually(async () => (await httpGet(hostPortOf(agentB.ready), '/healthz/ready')).status === 200, 'agent ready on the copy');
      // A new file renamed over the old (the running one keeps its inode), as an install does.
      writeFileSync(`${bin}.new`, `#!/bin/sh\necho '{"t":"listening","addr":"${B}:15008"}'\nexec cat >/dev/null\n`, { mode: 0o755 });
      renameSync(`${bin}.new`, bin);
      process.kill(childPids(agentB.proc.child.pid!)[0]!, 'SIGKILL');
      await agentB.proc.waitForLog((l) => l.msg === 'ambit-dataplane speaks another control protocol; not using it');
      const ready = await eventually(async () => {
        const r = await httpGet(hostPortOf(agentB.ready), '/healthz/ready');
        return r.status !== 200 ? r : undefined;
      }, 'not ready');
      t.match(ready.body, /speaks control protocol none, this agent \d+/, 'readiness says why');
      await new Promise((r) => setTimeout(r, 1_500)); // past the restart delay
      t.same(childPids(agentB.proc.child.pid!), [], 'and the stale executable is not started again');
      // Back on the built executable for what follows.
      await agentB.proc.stop('SIGTERM');
      agentB = await startAgent({ node: 'node-b', address: B, controller: ctl.address, dataDir: join(root, 'b') });
      await eventually(async () => (await httpGet(hostPortOf(agentB.ready), '/healthz/ready')).status === 200, 'agent ready again');
    });
  }

  // DESIGN §3: the data plane outlives an agent restart. The source agent is
  // killed outright (no drain) in the middle of a checksummed stream, and
  // started again while the stream goes on.
  t.test('the source agent killed and restarted mid-stream: the connection goes on, no byte lost, the new agent reports it', async (t) => {
    const before = serverHashes.length;
    const { socket, reply } = await socks(agentA.socks, 'default/client', 'web.default', 80);
    t.equal(reply, 0, 'SOCKS CONNECT succeeded');
    const dataplane = childPids(agentA.proc.child.pid!);
    t.equal(dataplane.length, 1, 'node-a runs one ambit-dataplane');
    const sent = createHash('sha256');
    const received = createHash('sha256');
    let sentBytes = 0;
    let receivedBytes = 0;
    socket.on('data', (d: Buffer) => {
      received.update(d);
      receivedBytes += d.length;
    });
    const ended = new Promise<void>((resolve, reject) => {
      socket.once('end', () => resolve());
      socket.once('error', reject);
    });
    socket.resume();
    const stream = async (chunks: number): Promise<void> => {
      for (let i = 0; i < chunks; i++) {
        const c = randomBytes(64 * 1024);
        sent.update(c);
        sentBytes += c.length;
        if (!socket.write(c)) await new Promise((r) => socket.once('drain', r));
        await new Promise((r) => setTimeout(r, 5));
      }
    };
    await stream(16);
    await agentA.proc.stop('SIGKILL');
    t.ok(existsSync(`/proc/${dataplane[0]}`), 'the agent is gone; its ambit-dataplane is not');
    await stream(16);
    agentA = await startAgent({ node: 'node-a', address: A, controller: ctl.address, dataDir: join(root, 'a'), extra: ['--upstreams', 'default/client:19080=web.default:80'] });
    const took = await agentA.proc.waitForLog((l) => l.msg === 'attached to the ambit-dataplane already serving: took over its connections');
    t.ok(Number(took.live) >= 1, `the restarted agent took over the live connection (${String(took.live)} live)`);
    t.same(childPids(agentA.proc.child.pid!), [], 'and started no second data plane');
    const dump = JSON.parse((await httpGet(hostPortOf(agentA.admin), '/config_dump')).body) as { connections: number };
    t.ok(dump.connections >= 1, `its /config_dump counts the connection (${dump.connections})`);
    await stream(16);
    socket.end();
    await ended;
    t.equal(receivedBytes, sentBytes, `every byte came back (${sentBytes})`);
    const sentHex = sent.digest('hex');
    t.equal(received.digest('hex'), sentHex, 'and intact');
    await eventually(async () => serverHashes[before] !== undefined && serverHashes[before] !== '', 'the server saw the end');
    t.equal(serverHashes[before], sentHex, 'the server received exactly what was sent');
    const line = await agentA.proc.waitForLog((l) => l.msg === 'connection' && l.direction === 'outbound' && l.bytes_recv === sentBytes);
    t.match(line, { 'src.workload': 'client', 'dst.workload': 'web', bytes_sent: sentBytes, error: '' }, 'the restarted agent logs the connection at its end, with every byte');
    // A new connection through the same data plane, decided by the new agent.
    const fresh = await socks(agentA.socks, 'default/client', 'web.default', 80);
    t.equal(fresh.reply, 0, 'new connections open through it');
    const r = await echoTransfer(fresh.socket, 256 * 1024);
    t.equal(r.received, r.sent, 'bytes intact');
  });

  t.test('SIGTERM drains: open connections finish, new ones are refused, then the agent exits', async (t) => {
    const { socket, reply } = await socks(agentA.socks, 'default/client', 'web.default', 80);
    t.equal(reply, 0);
    const sent = createHash('sha256');
    const received = createHash('sha256');
    socket.on('data', (d: Buffer) => received.update(d));
    // 'close' too: a connection cut during the drain must fail the test, not hang it.
    let gotFin = false;
    socket.on('end', () => (gotFin = true));
    const ended = new Promise<void>((r) => socket.on('close', () => r()));
    socket.resume();
    const chunk = (): Buffer => {
      const c = randomBytes(256 * 1024);
      sent.update(c);
      return c;
    };
    socket.write(chunk());
    const dataplanes = childPids(agentB.proc.child.pid!);
    agentB.proc.child.kill('SIGTERM');
    await agentB.proc.waitForLog((l) => l.msg === 'draining');
    t.equal((await httpGet(hostPortOf(agentB.ready), '/healthz/ready').catch(() => ({ status: 0 }))).status !== 200, true, 'not ready while draining');
    const fresh = await socks(agentA.socks, 'default/client', 'web.default', 80);
    fresh.socket.destroy();
    t.not(fresh.reply, 0, 'a new tunnel to the draining agent is refused');
    for (let i = 0; i < 8; i++) {
      await new Promise((r) => setTimeout(r, 50));
      socket.write(chunk());
    }
    socket.end();
    await ended;
    // On failure, the source agent's account of the connection (bytes each way, error) is in the diagnostic.
    t.ok(gotFin, 'the open connection ended with a FIN, not a reset', { sourceLog: agentA.proc.logs.filter((l) => l.log === 'access').slice(-1) });
    t.equal(received.digest('hex'), sent.digest('hex'), 'the open connection finished intact during the drain');
    const exit = await agentB.proc.exited;
    t.equal(exit.code, 0, 'agent exited cleanly after draining');
    // The agent waits for its ambit-dataplane: a stopped agent leaves no process behind.
    t.same(dataplanes.filter((pid) => existsSync(`/proc/${pid}`)), [], `its data plane (${dataplanes.join(', ') || 'none'}) exited before it did`);
    t.equal(dataplanes.length, 1, 'node-b ran one ambit-dataplane');
    t.ok(agentB.proc.logs.some((l) => l.msg === 'drained'), 'it says it drained without cutting anyone');
  });
}
