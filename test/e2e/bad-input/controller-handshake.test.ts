/**
 * Issue 6, promise 5 ("slow clients holding handshakes") on the controller's
 * gRPC port (:15012), with a real controller: a client that opens TCP and
 * sends nothing, or half a ClientHello and then nothing, is disconnected by
 * the TLS handshake timeout (10 s, like the agent's HBONE port) instead of
 * Node's default 120 s; while 40 such clients are held the controller keeps
 * answering ambitctl, and afterwards its descriptors are back at the baseline.
 * After the handshake, a connection without a client certificate that makes
 * no call is closed at the same 10 s deadline, while one that authenticated
 * with a certificate stays (docs/reliability.md, "Connection floods").
 */
import t from 'tap';
import { mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { readFileSync } from 'node:fs';
import { ambitctl, eventually, startController, type RunningController } from '../harness.ts';
import { captureClientHello, sendRaw } from './raw-peer.ts';

const HOST = '127.0.15.10';
/** The bound under test, plus scheduling slack for a loaded 2-core machine. */
const CUT_BY_MS = 12_500;
const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-ctl-handshake-'));
let ctl: RunningController;

t.before(async () => {
  // All 40 stalled clients come from one address: lift the per-source cap (32) so this test sees the deadline alone.
  ctl = await startController(join(root, 'ctl'), ['--max-connections-per-source', '100'], HOST);
});
t.teardown(async () => {
  await ctl?.proc.stop();
});

const fdCount = (): number => readdirSync(`/proc/${ctl.proc.child.pid}/fd`).length;

t.test('silent and half-ClientHello clients are cut by the 10 s handshake timeout; the controller keeps serving', async (t) => {
  const fdBaseline = fdCount();
  const hello = await captureClientHello(HOST, 'localhost');
  const half = hello.subarray(0, Math.floor(hello.length / 2));
  const started = Date.now();
  const held = [
    ...Array.from({ length: 20 }, () => sendRaw(ctl.grpc, Buffer.alloc(0), { timeoutMs: 20_000 })),
    ...Array.from({ length: 20 }, () => sendRaw(ctl.grpc, half, { timeoutMs: 20_000 })),
  ];
  // While the 40 stalled handshakes are held, the controller answers as usual.
  await eventually(async () => fdCount() >= fdBaseline + 40, 'the 40 stalled connections accepted', 5_000).catch(() => undefined);
  t.ok(fdCount() >= fdBaseline + 40, `the 40 stalled connections are held open (${fdCount() - fdBaseline} more descriptors)`);
  const during = await ambitctl(ctl, ['status', '-o', 'json']);
  t.equal(during.code, 0, `ambitctl status works while they are held (${Date.now() - started} ms in)`);

  const results = await Promise.all(held);
  const silent = results.slice(0, 20);
  const partial = results.slice(20);
  const maxOf = (rs: { ms: number }[]): number => Math.max(...rs.map((r) => r.ms));
  const minOf = (rs: { ms: number }[]): number => Math.min(...rs.map((r) => r.ms));
  t.ok(silent.every((r) => r.closed && r.ms <= CUT_BY_MS), `TCP open, nothing sent: all 20 closed after ${minOf(silent)}–${maxOf(silent)} ms`);
  t.ok(partial.every((r) => r.closed && r.ms <= CUT_BY_MS), `half a ClientHello, then silence: all 20 closed after ${minOf(partial)}–${maxOf(partial)} ms`);
  t.ok(results.every((r) => r.ms >= 9_000), 'none is cut before the 10 s bound (a slow but live client gets its full 10 s)');

  t.equal((await ambitctl(ctl, ['status'])).code, 0, 'ambitctl status works after');
  t.ok(ctl.proc.child.exitCode === null && ctl.proc.child.signalCode === null, 'the controller is still running');
  await eventually(async () => fdCount() <= fdBaseline + 2, `descriptors back near the baseline (${fdBaseline})`, 5_000);
  t.pass(`descriptors back to ${fdCount()} (baseline ${fdBaseline})`);
});

/** A TLS client that completes the handshake (optionally with a client certificate), speaks the HTTP/2 preface, answers SETTINGS and PING, and resolves whether the server closed it within waitMs. */
async function closedWithin(waitMs: number, cert?: { key: string; cert: string }): Promise<{ closed: boolean; ms: number }> {
  const s = tls.connect({ host: HOST, port: ctl.grpc.port, servername: 'localhost', ALPNProtocols: ['h2'], rejectUnauthorized: false, ...cert });
  s.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    s.once('secureConnect', () => resolve());
    s.once('error', reject);
  });
  const started = Date.now();
  // Send the HTTP/2 preface and an empty SETTINGS frame, as a real client would.
  s.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]));
  s.on('data', (d: Buffer) => {
    // Acknowledge the server's SETTINGS so the session is healthy (answer PINGs too).
    for (let i = 0; i + 9 <= d.length;) {
      const len = d.readUIntBE(i, 3);
      const type = d[i + 3];
      const flags = d[i + 4]!;
      if (type === 4 && (flags & 1) === 0) s.write(Buffer.from([0, 0, 0, 4, 1, 0, 0, 0, 0]));
      if (type === 6 && (flags & 1) === 0) s.write(Buffer.concat([Buffer.from([0, 0, 8, 6, 1, 0, 0, 0, 0]), d.subarray(i + 9, i + 17)]));
      i += 9 + len;
    }
  });
  const closed = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), waitMs);
    s.once('close', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
  s.destroy();
  return { closed, ms: Date.now() - started };
}

t.test('after the handshake: without a certificate and a call the connection is closed at the 10 s deadline; with the admin certificate it stays', async (t) => {
  const admin = { key: readFileSync(join(ctl.credentials, 'key.pem'), 'utf8'), cert: readFileSync(join(ctl.credentials, 'cert.pem'), 'utf8') };
  const [anonymous, authenticated] = await Promise.all([closedWithin(13_000), closedWithin(13_000, admin)]);
  t.ok(anonymous.closed && anonymous.ms >= 9_000 && anonymous.ms <= CUT_BY_MS, `no certificate, no call: closed ${anonymous.ms} ms after the handshake`);
  t.notOk(authenticated.closed, 'a verified client certificate: still connected 13 s after the handshake (idle limit 5m)');
});
