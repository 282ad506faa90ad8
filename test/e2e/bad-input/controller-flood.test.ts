/**
 * Connection floods on the controller's gRPC port (docs/reliability.md,
 * "Connection floods"), with a real controller whose descriptor limit is 256
 * (started under prlimit): 300 idle unauthenticated connections — raw TCP
 * that never sends a ClientHello, and TLS that completes a handshake without
 * a client certificate and then sits idle — from ten loopback sources, one
 * of them past the per-source cap. While they are held, an admin's
 * `ambitctl status` and a new agent's join and Watch each succeed within 2 s,
 * and every flood connection is closed within 15 s.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { Metadata, type ServiceError } from '@grpc/grpc-js';
import { AdminClient, DiscoveryClient } from '../../../shared/proto/gen/ambit.ts';
import { CONTROLLER_CHANNEL_OPTIONS, controllerCredentials } from '../../../shared/controller-client.ts';
import { parseJoinToken } from '../../../controller/registry/join-tokens.ts';
import { joinWithToken } from '../../../agent/identity/ca-client.ts';
import { ambitctl, CONTROLLER_MAIN, eventually, httpGet, metricValue, readJsonLines } from '../harness.ts';

const HOST = '127.0.104.1';
/** Flood sources: the first sends past the per-source cap (32 by default), the others stay under it. */
const HOT_SOURCE = '127.0.104.11';
const OTHER_SOURCES = Array.from({ length: 9 }, (_, i) => `127.0.104.${12 + i}`);
const HOT_COUNT = 60;
const FLOOD = 300;
const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-ctl-flood-'));

interface Ctl { pid: number; address: string; grpc: { host: string; port: number }; monitoring: { host: string; port: number }; credentials: string; dataDir: string; stop: () => Promise<void> }

/** ambit-controller under `prlimit --nofile=256:256` (the same pid: prlimit execs it). */
async function startLimitedController(dataDir: string): Promise<Ctl> {
  const child = spawn('prlimit', ['--nofile=256:256', '--', process.execPath, CONTROLLER_MAIN, '--data-dir', dataDir, '--listen', `${HOST}:0`, '--monitoring', `${HOST}:0`, '--console', `${HOST}:0`], { stdio: ['ignore', 'ignore', 'pipe'] });
  const exited = once(child, 'exit');
  let stderr = '';
  const ready = new Promise<Record<string, unknown>>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`controller did not start: ${stderr.slice(-2000)}`)), 20_000);
    readJsonLines(child.stderr, (d) => (stderr += d), (l) => {
      if (l.msg === 'controller ready') {
        clearTimeout(timer);
        resolve(l);
      }
    });
    void exited.then(() => reject(new Error(`controller exited: ${stderr.slice(-2000)}`)));
  });
  const line = await ready.catch((err: unknown) => {
    child.kill('SIGKILL');
    throw err;
  });
  const port = Number(String(line.grpc).split(':').pop());
  return {
    pid: child.pid!, grpc: { host: HOST, port }, monitoring: { host: HOST, port: Number(String(line.monitoring).split(':').pop()) }, address: `${HOST}:${port}`, credentials: join(dataDir, 'admin'), dataDir,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      child.kill('SIGTERM');
      await exited;
      clearTimeout(killer);
    },
  };
}

let ctl: Ctl;
t.before(async () => {
  ctl = await startLimitedController(join(root, 'ctl'));
});
t.teardown(async () => {
  await ctl?.stop();
});

const fdCount = (): number => readdirSync(`/proc/${ctl.pid}/fd`).length;

interface Held { socket: Socket; opened: number; closedAt?: number; readonly closed: Promise<void> }

/** One idle flood connection from `source`: raw TCP with nothing sent, or a TLS handshake without a client certificate. */
function floodOne(source: string, kind: 'tcp' | 'tls'): Held {
  const opened = Date.now();
  const socket: Socket = kind === 'tcp'
    ? netConnect({ ...ctl.grpc, localAddress: source })
    : tls.connect({ socket: netConnect({ ...ctl.grpc, localAddress: source }), servername: 'localhost', ALPNProtocols: ['h2'], rejectUnauthorized: false });
  socket.on('error', () => undefined);
  // Read (and drop) what the server sends, else a close behind its unread SETTINGS frame would never be seen.
  socket.resume();
  // Not events.once: it rejects on 'error', and a reset is one way the controller closes these.
  const held: Held = { socket, opened, closed: new Promise<void>((resolve) => socket.once('close', () => { held.closedAt = Date.now(); resolve(); })) };
  return held;
}

/** One admin Status call in this process (what `ambitctl status` sends), in ms. */
function adminStatusMs(): Promise<number> {
  const dir = ctl.credentials;
  const creds = { keyPem: readFileSync(join(dir, 'key.pem'), 'utf8'), certChainPem: readFileSync(join(dir, 'cert.pem'), 'utf8'), caPem: readFileSync(join(dir, 'ca.pem'), 'utf8') };
  const client = new AdminClient(ctl.address, controllerCredentials({ ...creds, trustDomain: 'cluster.local' }), CONTROLLER_CHANNEL_OPTIONS);
  const started = Date.now();
  return new Promise((resolve, reject) => {
    client.status({}, new Metadata(), { deadline: Date.now() + 10_000 }, (err) => {
      client.close();
      if (err) reject(err);
      else resolve(Date.now() - started);
    });
  });
}

function watchFirstSnapshot(creds: { keyPem: string; certChainPem: string; caPem: string }): Promise<number> {
  const client = new DiscoveryClient(ctl.address, controllerCredentials({ ...creds, trustDomain: 'cluster.local' }), CONTROLLER_CHANNEL_OPTIONS);
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const call = client.watch(new Metadata());
    const timer = setTimeout(() => finish(new Error('no snapshot within 10 s')), 10_000);
    const finish = (err?: Error): void => {
      clearTimeout(timer);
      call.cancel();
      client.close();
      if (err) reject(err);
      else resolve(Date.now() - started);
    };
    call.on('data', () => finish());
    call.on('error', (err: ServiceError) => finish(err));
    call.write({ request: { $case: 'start', start: { resumeRevision: 0, certExpiresAtMs: 0, hboneAddress: '', scope: '', subscriptions: [] } } });
  });
}

t.test('300 idle unauthenticated connections against 256 descriptors: the admin and a new agent get through in 2 s; the flood is closed within 15 s', async (t) => {
  const token = (await ambitctl(ctl, ['node', 'token', 'create', '--node', 'node-flood'])).stdout.trim();
  t.match(token, /\S/, 'a join token for the new agent, made before the flood');
  const fdBaseline = fdCount();
  const baselineStatus = Date.now();
  t.equal((await ambitctl(ctl, ['status'])).code, 0, 'ambitctl status before the flood');
  const statusMs = Date.now() - baselineStatus;

  const started = Date.now();
  const flood: Held[] = [];
  for (let i = 0; i < HOT_COUNT; i++) flood.push(floodOne(HOT_SOURCE, i % 2 ? 'tls' : 'tcp'));
  for (let i = 0; flood.length < FLOOD; i++) flood.push(floodOne(OTHER_SOURCES[i % OTHER_SOURCES.length]!, i % 2 ? 'tls' : 'tcp'));
  const hot = flood.slice(0, HOT_COUNT);

  // Wait until the controller holds the flood up to its cap (the per-source refusals are immediate).
  await eventually(async () => fdCount() >= fdBaseline + 150, 'the controller holds the flood', 10_000);
  t.ok(fdCount() <= 256 - 20, `descriptors stay clear of the 256 limit under the flood (${fdCount()} open, baseline ${fdBaseline})`);
  // The source past the cap has its excess refused as soon as the controller accepts them.
  // A controller out of descriptors cannot answer /metrics either: count that as none refused.
  const refused = async (): Promise<number> => metricValue((await httpGet(ctl.monitoring, '/metrics').catch(() => ({ body: '' }))).body, 'ambit_controller_grpc_connections_dropped_total', { reason: 'refused-per-source' });
  await eventually(async () => (await refused()) >= HOT_COUNT - 32, 'the source past its cap refused', 5_000).catch(() => undefined);
  t.ok((await refused()) >= HOT_COUNT - 32, `the source past its cap (32 pending) had ${await refused()} of its ${HOT_COUNT} connections refused`);
  t.ok(hot.filter((h) => h.closedAt !== undefined).length >= HOT_COUNT - 32, 'and they were closed on the client side');

  const rpcMs = await adminStatusMs().catch((err: Error) => `failed: ${err.message}`);
  t.ok(typeof rpcMs === 'number' && rpcMs <= 2_000, `the admin's Status call succeeds under the flood in ${rpcMs} ms`);
  const tAdmin = Date.now();
  const status = await ambitctl(ctl, ['status', '-o', 'json']);
  const adminMs = Date.now() - tAdmin;
  t.equal(status.code, 0, `ambitctl status succeeds under the flood: ${status.stderr.trim().slice(0, 300)}`);
  // The CLI's own start-up (Node, type stripping) takes most of its time on a loaded machine; the flood may add little.
  t.ok(adminMs <= Math.max(2_000, statusMs + 1_000), `... the whole ambitctl run in ${adminMs} ms (${statusMs} ms without the flood)`);

  const tJoin = Date.now();
  const node = await joinWithToken({ controller: ctl.grpc, node: 'node-flood', token, caFingerprint: parseJoinToken(token).caFingerprint });
  const joinMs = Date.now() - tJoin;
  t.ok(joinMs <= 2_000, `a new agent joins (Bootstrap, no certificate yet) under the flood in ${joinMs} ms`);
  const watchMs = await watchFirstSnapshot({ keyPem: node.keyPem, certChainPem: node.certChainPem, caPem: node.bundlePem });
  t.ok(watchMs <= 2_000, `... and its Watch gets the snapshot in ${watchMs} ms`);
  const stillOpen = flood.filter((h) => h.closedAt === undefined).length;
  t.ok(stillOpen > 0, `the flood was still held while they got through (${stillOpen} open ${Date.now() - started} ms in)`);

  // Every flood connection is closed by the controller within 15 s of opening (bounded wait).
  await Promise.race([Promise.all(flood.map((h) => h.closed)), new Promise((r) => setTimeout(r, 20_000))]);
  const lifetimes = flood.map((h) => (h.closedAt ?? Infinity) - h.opened);
  const longest = Math.max(...lifetimes);
  t.ok(lifetimes.every((ms) => ms <= 15_000), `all ${FLOOD} flood connections closed, the last after ${longest} ms`);
  for (const h of flood) h.socket.destroy();
  await eventually(async () => fdCount() <= fdBaseline + 2, `descriptors back near the baseline (${fdBaseline})`, 5_000);
  t.equal((await ambitctl(ctl, ['status'])).code, 0, 'the controller keeps serving afterwards');
});
