/**
 * Issue "Foundation and controller", end to end with real processes over
 * loopback: the controller binary, the ambitctl binary, and the agent's own
 * identity client speaking gRPC/TLS 1.3 to it.
 */
import t from 'tap';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { Metadata } from '@grpc/grpc-js';
import { AdminClient, DiscoveryClient, type WatchResponse } from '../../shared/proto/gen/ambit.ts';
import { CONTROLLER_CHANNEL_OPTIONS, controllerCredentials } from '../../shared/controller-client.ts';
import { parseJoinToken } from '../../controller/registry/join-tokens.ts';
import { CaClient, joinWithToken, newKeyPair, type NodeCredentials } from '../../agent/identity/ca-client.ts';
import { isAmbitError } from '../../shared/errors.ts';
import { parseSpiffeId, workloadId } from '../../shared/spiffe-id.ts';
import { parseCertificates, spiffeIdOfCertificate } from '../../shared/tls.ts';
import { ambitctl, httpGet, metricValue, startController, type RunningController } from './harness.ts';

const TD = 'cluster.local';
const dataDir = mkdtempSync(join(tmpdir(), 'ambit-e2e-ctl-'));
let ctl: RunningController;

t.teardown(async () => {
  await ctl?.proc.stop();
});

async function ok(args: string[], stdin?: string): Promise<string> {
  const r = await ambitctl(ctl, args, stdin);
  if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
  return r.stdout;
}

async function join_(node: string): Promise<NodeCredentials> {
  const token = (await ok(['node', 'token', 'create', '--node', node])).trim();
  return joinWithToken({ controller: ctl.grpc, node, token, caFingerprint: parseJoinToken(token).caFingerprint });
}

function openWatch(creds: NodeCredentials, resume: number): { responses: WatchResponse[]; next: (n: number) => Promise<WatchResponse[]>; ack: (rev: number) => void; close: () => void } {
  const client = new DiscoveryClient(ctl.address, controllerCredentials({ caPem: creds.bundlePem, trustDomain: TD, keyPem: creds.keyPem, certChainPem: creds.certChainPem }), CONTROLLER_CHANNEL_OPTIONS);
  const call = client.watch(new Metadata());
  const responses: WatchResponse[] = [];
  const waiters: { n: number; resolve: () => void }[] = [];
  call.on('data', (r: WatchResponse) => {
    responses.push(r);
    for (const w of [...waiters]) if (responses.length >= w.n) w.resolve();
  });
  call.on('error', () => undefined);
  call.write({ request: { $case: 'start', start: { resumeRevision: resume, certExpiresAtMs: creds.expiresAt, hboneAddress: '', scope: '', subscriptions: [] } } });
  return {
    responses,
    next: (n) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`watch: ${responses.length} responses, wanted ${n}`)), 15_000);
        const w = { n, resolve: () => { clearTimeout(timer); resolve(responses.slice(0, n)); } };
        if (responses.length >= n) w.resolve();
        else waiters.push(w);
      }),
    ack: (rev) => call.write({ request: { $case: 'ack', ack: { revision: rev, ok: true, reason: '', certExpiresAtMs: creds.expiresAt, trustedRoots: [] } } }),
    close: () => {
      call.cancel();
      client.close();
    },
  };
}

t.test('controller starts, registers workloads, bootstraps nodes and authorizes them', async (t) => {
  ctl = await startController(dataDir);
  t.equal((await httpGet(ctl.monitoring, '/healthz/ready')).status, 200, 'ready');

  await ok(['workload', 'register', '--name', 'web', '--namespace', 'shop', '--service-account', 'web', '--node', 'node-b', '--address', '10.1.0.2', '--port', '8080', '--label', 'app=web']);
  await ok(['workload', 'register', '--name', 'client', '--namespace', 'shop', '--service-account', 'client', '--node', 'node-a', '--address', '10.1.0.1']);
  const list = JSON.parse(await ok(['workload', 'list', '-o', 'json'])) as { metadata: { name: string }; spec: { node: string } }[];
  t.same(list.map((w) => `${w.metadata.name}@${w.spec.node}`), ['client@node-a', 'web@node-b']);

  // A join token bootstraps node-a; the agent checks the controller against the pinned CA.
  const nodeA = await join_('node-a');
  const nodeCert = parseCertificates(nodeA.certChainPem)[0]!;
  t.equal(spiffeIdOfCertificate(nodeCert).uri, `spiffe://${TD}/ambit/node/node-a`, 'node identity issued');

  const ca = new CaClient(ctl.grpc, nodeA);
  t.teardown(() => ca.close());
  const keys = newKeyPair();
  const own = await ca.createCertificate(workloadId(TD, 'shop', 'client'), keys);
  const leaf = parseCertificates(own.certChainPem)[0]!;
  t.equal(spiffeIdOfCertificate(leaf).uri, `spiffe://${TD}/ns/shop/sa/client`, 'own workload certificate issued');
  t.ok(leaf.publicKey.equals(keys.publicKey), 'for the key generated on the node');
  const dir = mkdtempSync(join(tmpdir(), 'ambit-e2e-cert-'));
  writeFileSync(join(dir, 'bundle.pem'), own.bundlePem);
  writeFileSync(join(dir, 'leaf.pem'), own.certChainPem);
  t.match(execFileSync('openssl', ['verify', '-CAfile', join(dir, 'bundle.pem'), join(dir, 'leaf.pem')], { encoding: 'utf8' }), /OK/, 'openssl verify accepts it');
  const ttl = Date.parse(leaf.validTo) - Date.now();
  t.ok(ttl > 23 * 3_600_000 && ttl <= 24 * 3_600_000 + 60_000, `default TTL 24 h (got ${Math.round(ttl / 60_000)} min)`);

  // The key security property: node-a may not get node-b's workload identity.
  const err = await ca.createCertificate(workloadId(TD, 'shop', 'web'), newKeyPair()).then(() => undefined, (e: unknown) => e);
  t.ok(isAmbitError(err, 'AMBIT_ERR_NODE_UNAUTHORIZED'), `refused with AMBIT_ERR_NODE_UNAUTHORIZED (got ${String(err)})`);
  t.equal((err as { details: { grpcStatus?: number } }).details.grpcStatus, 7, 'as gRPC PERMISSION_DENIED');
  const refusal = await ctl.proc.waitForLog((l) => l.msg.startsWith('refused certificate'));
  t.equal(refusal.caller, `spiffe://${TD}/ambit/node/node-a`, 'log names the caller');
  t.equal(refusal.requested, `spiffe://${TD}/ns/shop/sa/web`, 'log names the identity asked for');
  const metrics = (await httpGet(ctl.monitoring, '/metrics')).body;
  t.equal(metricValue(metrics, 'ambit_controller_csr_total', { result: 'refused', reason: 'node-unauthorized' }), 1, 'refusal counted');
  t.equal(metricValue(metrics, 'ambit_controller_csr_total', { result: 'signed' }), 1, 'signing counted');

  // Nor another node's node identity.
  const err2 = await ca.createCertificate(parseSpiffeId(`spiffe://${TD}/ambit/node/node-b`), newKeyPair()).then(() => undefined, (e: unknown) => e);
  t.ok(isAmbitError(err2, 'AMBIT_ERR_NODE_UNAUTHORIZED'), 'another node identity refused');

  // node-b, once joined, gets its own workload.
  const nodeB = await join_('node-b');
  const caB = new CaClient(ctl.grpc, nodeB);
  t.teardown(() => caB.close());
  t.ok(await caB.createCertificate(workloadId(TD, 'shop', 'web'), newKeyPair()), 'node-b gets web');
});

t.test('join tokens: single use, pinned, bound to their node', async (t) => {
  const token = (await ok(['node', 'token', 'create', '--node', 'node-c', '--ttl', '5m'])).trim();
  const pin = parseJoinToken(token).caFingerprint;
  await joinWithToken({ controller: ctl.grpc, node: 'node-c', token, caFingerprint: pin });
  const replay = await joinWithToken({ controller: ctl.grpc, node: 'node-c', token, caFingerprint: pin }).then(() => undefined, (e: unknown) => e);
  t.ok(isAmbitError(replay, 'AMBIT_ERR_TOKEN_INVALID'), 'replayed token refused');
  t.match((replay as Error).message, /used/, 'message says it was used');

  const wrongPin = await joinWithToken({ controller: ctl.grpc, node: 'node-c', token, caFingerprint: 'f'.repeat(64) }).then(() => undefined, (e: unknown) => e);
  t.ok(isAmbitError(wrongPin, 'AMBIT_ERR_CERT_INVALID'), 'an agent whose pin does not match refuses to send the token');

  const other = (await ok(['node', 'token', 'create', '--node', 'node-d'])).trim();
  const stolen = await joinWithToken({ controller: ctl.grpc, node: 'node-e', token: other, caFingerprint: parseJoinToken(other).caFingerprint }).then(() => undefined, (e: unknown) => e);
  t.ok(isAmbitError(stolen, 'AMBIT_ERR_TOKEN_INVALID'), 'token for node-d refused for node-e');
  const metrics = (await httpGet(ctl.monitoring, '/metrics')).body;
  t.ok(metricValue(metrics, 'ambit_controller_bootstrap_total', { result: 'refused' }) >= 2, 'refusals counted');
  t.ok(ctl.proc.logs.some((l) => l.msg === 'node bootstrap refused' && l.reason === 'used'), 'replay logged');
});

t.test('admin API admits only the admin identity', async (t) => {
  const creds = await join_('node-f');
  const client = new AdminClient(ctl.address, controllerCredentials({ caPem: creds.bundlePem, trustDomain: TD, keyPem: creds.keyPem, certChainPem: creds.certChainPem }), CONTROLLER_CHANNEL_OPTIONS);
  t.teardown(() => client.close());
  const err = await new Promise<unknown>((resolve) => client.createJoinToken({ node: 'x', ttlMs: 0 }, (e) => resolve(e)));
  t.equal((err as { code?: number }).code, 7, 'node identity: PERMISSION_DENIED');
  const anon = new AdminClient(ctl.address, controllerCredentials({ caPem: creds.bundlePem, trustDomain: TD }), CONTROLLER_CHANNEL_OPTIONS);
  t.teardown(() => anon.close());
  const err2 = await new Promise<unknown>((resolve) => anon.status({}, (e) => resolve(e)));
  t.equal((err2 as { code?: number }).code, 16, 'no certificate: UNAUTHENTICATED');
});

t.test('invalid input is rejected whole and names the field', async (t) => {
  const before = await ok(['workload', 'list', '-o', 'json']);
  const file = join(dataDir, '..', `bad-${process.pid}.yaml`);
  writeFileSync(file, [
    'apiVersion: ambit.dev/v1alpha1', 'kind: Workload', 'metadata: {name: fine, namespace: shop}',
    'spec: {serviceAccount: fine, node: node-a, address: 10.1.0.9}', '---',
    'apiVersion: ambit.dev/v1alpha1', 'kind: Workload', 'metadata: {name: broken, namespace: shop}',
    'spec: {serviceAccount: broken, node: node-a, address: 10.1.0.10, ports: [70000]}', '',
  ].join('\n'));
  const r = await ambitctl(ctl, ['apply', '-f', file]);
  t.not(r.code, 0, 'non-zero exit');
  t.match(r.stderr, /spec\.ports\[0\]/, 'names the field');
  t.match(r.stderr, /AMBIT_ERR_RESOURCE_INVALID/, 'prints the code');
  t.equal(await ok(['workload', 'list', '-o', 'json']), before, 'nothing applied');

  const dup = await ambitctl(ctl, ['workload', 'register', '--name', 'other', '--namespace', 'shop', '--service-account', 'x', '--node', 'node-a', '--address', '10.1.0.2']);
  t.not(dup.code, 0, 'address held by another workload');
  t.match(dup.stderr, /10\.1\.0\.2 is already used by Workload\/shop\/web/);
  const kind = await ambitctl(ctl, ['apply', '-f', '-'], 'apiVersion: ambit.dev/v1alpha1\nkind: Gateway\nmetadata: {name: g}\nspec: {}\n');
  t.not(kind.code, 0, 'unknown kind');
  t.match(kind.stderr, /kind/);
});

t.test('watch: snapshot, deltas, acks; state and CA survive a restart; resume sends only deltas', async (t) => {
  const creds = await join_('node-g');
  const w = openWatch(creds, 0);
  const [snap] = await w.next(1);
  t.ok(snap!.snapshot, 'first response is a snapshot');
  t.equal(snap!.resources.length, 2, 'holds the two workloads');
  t.match(snap!.trustBundlePem, /BEGIN CERTIFICATE/, 'and the trust bundle');
  w.ack(snap!.revision);

  await ok(['service', 'create', '--name', 'web', '--namespace', 'shop', '--port', '80:8080', '--selector', 'app=web']);
  const [, delta] = await w.next(2);
  t.notOk(delta!.snapshot, 'then a delta');
  t.equal(delta!.revision, snap!.revision + 1, 'one revision later');
  t.equal(delta!.changes[0]?.change?.$case, 'put', 'putting the service');
  w.ack(delta!.revision);

  // The ack shows in `node list`.
  let node: { name: string; connected: boolean; ackedRevision: number } | undefined;
  for (let i = 0; i < 50; i++) {
    node = (JSON.parse(await ok(['node', 'list', '-o', 'json'])) as (typeof node & {})[]).find((n) => n.name === 'node-g');
    if (node?.ackedRevision === delta!.revision) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  t.equal(node?.ackedRevision, delta!.revision, 'acked revision recorded');
  t.equal(node?.connected, true, 'connected');
  w.close();

  const caBefore = await ok(['ca', 'show', '-o', 'json']);
  await ctl.proc.stop('SIGTERM');
  ctl = await startController(dataDir);
  t.equal(await ok(['ca', 'show', '-o', 'json']), caBefore, 'same CA after restart');
  const after = JSON.parse(await ok(['workload', 'list', '-o', 'json'])) as unknown[];
  t.equal(after.length, 2, 'workloads survived');

  await ok(['workload', 'register', '--name', 'late', '--namespace', 'shop', '--service-account', 'late', '--node', 'node-g', '--address', '10.1.0.7']);
  const w2 = openWatch(creds, delta!.revision);
  const [resumed] = await w2.next(1);
  t.notOk(resumed!.snapshot, 'resume from a held revision sends deltas, not a snapshot');
  t.equal(resumed!.changes.length, 1, 'exactly the one change missed');
  t.equal(resumed!.revision, delta!.revision + 1);
  w2.close();

  // The node's credentials still work against the restarted controller.
  const ca = new CaClient(ctl.grpc, creds);
  t.teardown(() => ca.close());
  t.ok(await ca.createCertificate(workloadId(TD, 'shop', 'late'), newKeyPair()), 'newly registered workload certificate issued after restart');
  const nodes = JSON.parse(await ok(['node', 'list', '-o', 'json'])) as { name: string }[];
  t.ok(nodes.some((n) => n.name === 'node-a'), 'nodes survived the restart');
});

t.test('data dir secrets are 0600', async (t) => {
  for (const f of ['ca/signer-key.pem', 'admin/key.pem', 'admin/cert.pem', 'ambit.db']) {
    const mode = (await import('node:fs')).statSync(join(dataDir, f)).mode & 0o777;
    t.equal(mode.toString(8), '600', f);
  }
  t.notMatch(readFileSync(join(dataDir, 'ambit.db')).toString('latin1'), /ambit-join\.[0-9a-f]{16}\.[A-Za-z0-9_-]{43}/, 'no token secret in the store');
});

t.test('a daemon whose stderr reader is gone still stops on SIGTERM', async (t) => {
  const { spawn } = await import('node:child_process');
  const dir = mkdtempSync(join(tmpdir(), 'ambit-e2e-epipe-'));
  const child = spawn(process.execPath, [join(import.meta.dirname, '../../controller/main.ts'), '--data-dir', dir, '--listen', '127.0.0.1:0', '--monitoring', '127.0.0.1:0', '--console', '127.0.0.1:0', '--log-level', 'debug'], { stdio: ['ignore', 'ignore', 'pipe'] });
  // Read one line, then close our end: every later log write hits EPIPE.
  await new Promise<void>((resolve) => child.stderr!.once('data', () => resolve()));
  child.stderr!.destroy();
  await new Promise((r) => setTimeout(r, 500));
  child.kill('SIGTERM');
  const exited = await Promise.race([
    new Promise<number | null>((r) => child.once('exit', (code) => r(code))),
    new Promise<string>((r) => setTimeout(() => r('hung'), 10_000)),
  ]);
  if (exited === 'hung') child.kill('SIGKILL');
  t.equal(exited, 0, 'exited cleanly instead of spinning on the broken pipe');
});

t.test('a service port declares appProtocol: create, apply, get, and a bad value names the field', async (t) => {
  await ok(['service', 'create', '--name', 'api', '--namespace', 'proto', '--port', 'web=80:8080/http', '--port', '9090/grpc', '--selector', 'app=api']);
  t.match(await ok(['service', 'get', 'api', '-n', 'proto']), /web=80:8080\/http,port-9090=9090:9090\/grpc/, 'the table shows each port\'s protocol');
  const yaml = await ok(['service', 'get', 'api', '-n', 'proto', '-o', 'yaml']);
  t.match(yaml, /appProtocol: http\n/);
  t.match(yaml, /appProtocol: grpc\n/);
  await ok(['apply', '-f', '-'], [
    'apiVersion: ambit.dev/v1alpha1', 'kind: Service', 'metadata: {name: h2, namespace: proto}',
    'spec: {selector: {app: h2}, ports: [{port: 81, targetPort: 8081, appProtocol: http2}, {port: 82}]}', '',
  ].join('\n'));
  const h2 = JSON.parse(await ok(['service', 'get', 'h2', '-n', 'proto', '-o', 'json'])) as { spec: { ports: { appProtocol?: string }[] } };
  t.same(h2.spec.ports.map((p) => p.appProtocol), ['http2', undefined], 'applied; tcp is the default and left out');
  const before = await ok(['service', 'list', '-n', 'proto', '-o', 'json']);
  const bad = await ambitctl(ctl, ['apply', '-f', '-'], [
    'apiVersion: ambit.dev/v1alpha1', 'kind: Service', 'metadata: {name: h2, namespace: proto}',
    'spec: {selector: {app: h2}, ports: [{port: 81, appProtocol: https}]}', '',
  ].join('\n'));
  t.not(bad.code, 0);
  t.match(bad.stderr, /spec\.ports\[0\]\.appProtocol.*must be one of tcp, http, http2, grpc, got "https"/);
  t.equal(await ok(['service', 'list', '-n', 'proto', '-o', 'json']), before, 'nothing applied');
  const cli = await ambitctl(ctl, ['service', 'create', '--name', 'x', '--namespace', 'proto', '--port', '80/h3', '--selector', 'app=x']);
  t.not(cli.code, 0);
  t.match(cli.stderr, /appProtocol must be one of/);
});
