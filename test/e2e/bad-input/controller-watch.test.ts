/**
 * Issue 6, promises 4/5: a Watch stream the controller refuses must end with
 * a status the agent sees — never be dropped silently, which would leave an
 * agent waiting on a dead stream instead of reconnecting with backoff. With a
 * real controller: a non-node identity is refused with PERMISSION_DENIED
 * (AMBIT_ERR_AUTH_DENIED in the trailer), and a node stream that never sends
 * its WatchStart ends with DEADLINE_EXCEEDED after the 15 s deadline.
 */
import t from 'tap';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Metadata, type ServiceError } from '@grpc/grpc-js';
import { DiscoveryClient } from '../../../shared/proto/gen/ambit.ts';
import { CONTROLLER_CHANNEL_OPTIONS, controllerCredentials } from '../../../shared/controller-client.ts';
import { parseJoinToken } from '../../../controller/registry/join-tokens.ts';
import { joinWithToken } from '../../../agent/identity/ca-client.ts';
import { ambitctl, startController, type RunningController } from '../harness.ts';

const TD = 'cluster.local';
const HOST = '127.0.15.11';
const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-ctl-watch-'));
let ctl: RunningController;

t.before(async () => {
  ctl = await startController(join(root, 'ctl'), [], HOST);
});
t.teardown(async () => {
  await ctl?.proc.stop();
});

/** Opens Watch with `creds`, optionally sends nothing, and resolves with how the stream ended (or 'open' after waitMs). */
function watchOutcome(creds: { keyPem: string; certChainPem: string; caPem: string }, waitMs: number, sendStart: boolean, scope = ''): Promise<{ code: number | 'open'; ambitCode: string; ms: number }> {
  const client = new DiscoveryClient(ctl.address, controllerCredentials({ ...creds, trustDomain: TD }), CONTROLLER_CHANNEL_OPTIONS);
  const started = Date.now();
  return new Promise((resolve) => {
    const call = client.watch(new Metadata());
    const done = (code: number | 'open', ambitCode: string): void => {
      clearTimeout(timer);
      call.cancel();
      client.close();
      resolve({ code, ambitCode, ms: Date.now() - started });
    };
    const timer = setTimeout(() => done('open', ''), waitMs);
    call.on('data', () => undefined);
    call.on('error', (err: ServiceError) => done(err.code, String(err.metadata?.get('ambit-error-code')[0] ?? '')));
    call.on('end', () => done(0, ''));
    if (sendStart) call.write({ request: { $case: 'start', start: { resumeRevision: 0, certExpiresAtMs: 0, hboneAddress: '', scope, subscriptions: [] } } });
  });
}

t.test('a non-node identity is refused with a status, at once', async (t) => {
  const admin = join(ctl.dataDir, 'admin');
  const creds = { keyPem: readFileSync(join(admin, 'key.pem'), 'utf8'), certChainPem: readFileSync(join(admin, 'cert.pem'), 'utf8'), caPem: readFileSync(join(admin, 'ca.pem'), 'utf8') };
  const r = await watchOutcome(creds, 10_000, true);
  t.equal(r.code, 7, `the stream ends with PERMISSION_DENIED after ${r.ms} ms`);
  t.equal(r.ambitCode, 'AMBIT_ERR_AUTH_DENIED', 'with the Ambit code in the trailer');
  t.ok(r.ms < 5_000, 'promptly, not after a keepalive or a timeout');
});

t.test('a node stream without a WatchStart ends with DEADLINE_EXCEEDED after 15 s', async (t) => {
  const token = (await ambitctl(ctl, ['node', 'token', 'create', '--node', 'node-w'])).stdout.trim();
  const node = await joinWithToken({ controller: ctl.grpc, node: 'node-w', token, caFingerprint: parseJoinToken(token).caFingerprint });
  const r = await watchOutcome({ keyPem: node.keyPem, certChainPem: node.certChainPem, caPem: node.bundlePem }, 25_000, false);
  t.equal(r.code, 4, `the stream ends with DEADLINE_EXCEEDED after ${r.ms} ms`);
  t.ok(r.ms >= 14_000 && r.ms < 20_000, 'at the 15 s WatchStart deadline');
  t.equal((await ambitctl(ctl, ['status'])).code, 0, 'the controller keeps serving');
});

t.test('a WatchStart asking for an unknown scope ends with INVALID_ARGUMENT, at once', async (t) => {
  const token = (await ambitctl(ctl, ['node', 'token', 'create', '--node', 'node-s'])).stdout.trim();
  const node = await joinWithToken({ controller: ctl.grpc, node: 'node-s', token, caFingerprint: parseJoinToken(token).caFingerprint });
  const r = await watchOutcome({ keyPem: node.keyPem, certChainPem: node.certChainPem, caPem: node.bundlePem }, 10_000, true, 'cluster');
  t.equal(r.code, 3, `the stream ends with INVALID_ARGUMENT after ${r.ms} ms`);
  t.ok(r.ms < 5_000, 'promptly');
});
