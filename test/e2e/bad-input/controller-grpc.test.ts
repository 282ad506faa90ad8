/**
 * Issue 6, promise 5 ("Bad input") on the controller's gRPC port (:15012),
 * with a real controller: garbage bytes, plaintext HTTP/1, random HTTP/2
 * frames over TLS, and bad CSRs through CreateCertificate and Join (extra
 * SANs, P-384 / RSA-1024 keys, a bad signature, a 1 MiB CSR, a message over
 * the 4 MiB limit). Each is refused with the right Ambit code; the controller
 * keeps serving (ambitctl status works after). Replayed, stolen and pinned
 * join tokens and the admin API without an admin identity are covered by
 * test/e2e/controller.test.ts.
 */
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { Metadata } from '@grpc/grpc-js';
import { BootstrapClient, CertificateAuthorityClient } from '../../../shared/proto/gen/ambit.ts';
import { CONTROLLER_CHANNEL_OPTIONS, controllerCredentials } from '../../../shared/controller-client.ts';
import { fromServiceError } from '../../../shared/grpc-errors.ts';
import { parseJoinToken } from '../../../controller/registry/join-tokens.ts';
import { joinWithToken, type NodeCredentials } from '../../../agent/identity/ca-client.ts';
import { ambitctl, eventually, startController, type RunningController } from '../harness.ts';
import { FRAME, frame, frameReader, PREFACE } from './mesh.ts';
import { sendRaw } from './raw-peer.ts';

const TD = 'cluster.local';
const HOST = '127.0.12.30';
const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-bad-grpc-'));
const work = mkdtempSync(join(tmpdir(), 'ambit-e2e-bad-csr-'));
let ctl: RunningController;
let node: NodeCredentials;
const IDENTITY = `spiffe://${TD}/ns/default/sa/w`;

t.before(async () => {
  ctl = await startController(join(root, 'ctl'), [], HOST);
  const reg = await ambitctl(ctl, ['workload', 'register', '--name', 'w', '--service-account', 'w', '--node', 'node-x', '--address', '127.0.12.35']);
  if (reg.code !== 0) throw new Error(reg.stderr);
  const token = (await ambitctl(ctl, ['node', 'token', 'create', '--node', 'node-x'])).stdout.trim();
  node = await joinWithToken({ controller: ctl.grpc, node: 'node-x', token, caFingerprint: parseJoinToken(token).caFingerprint });
});
t.teardown(async () => {
  await ctl?.proc.stop();
});

const alive = (): boolean => ctl.proc.child.exitCode === null && ctl.proc.child.signalCode === null;
async function statusWorks(): Promise<boolean> {
  return (await ambitctl(ctl, ['status'])).code === 0;
}
function fdCount(): number {
  return readdirSync(`/proc/${ctl.proc.child.pid}/fd`).length;
}

t.test('garbage bytes and plaintext HTTP on the gRPC port: closed; the controller keeps serving', async (t) => {
  const fds = fdCount();
  for (let i = 0; i < 5; i++) {
    const r = await sendRaw(ctl.grpc, randomBytes(100 + i * 2000));
    t.ok(r.closed, `random bytes #${i}: closed after ${r.ms} ms`);
  }
  const h1 = await sendRaw(ctl.grpc, Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
  t.ok(h1.closed, 'plaintext HTTP/1: closed');
  t.notMatch(h1.received.toString('latin1'), /HTTP\/1\.1 200/, 'no HTTP answer');
  const h2c = await sendRaw(ctl.grpc, Buffer.concat([PREFACE, frame(FRAME.SETTINGS, 0, 0)]));
  t.ok(h2c.closed, 'cleartext HTTP/2 preface: closed');
  t.ok(alive(), 'controller still running');
  t.ok(await statusWorks(), 'ambitctl status works after');
  await eventually(async () => fdCount() <= fds + 6, 'controller descriptors back near the baseline').then(() => t.pass('descriptors released'), () => t.fail(`descriptors ${fdCount()} vs ${fds}`));
});

/** TLS (no client certificate, ALPN h2), valid preface, then `frames`: resolves how the server ended it. */
function tlsH2(frames: Buffer[]): Promise<{ closed: boolean; goaway?: number; ms: number }> {
  return new Promise((resolve) => {
    const started = Date.now();
    let goaway: number | undefined;
    const s = tls.connect({ host: HOST, port: ctl.grpc.port, ALPNProtocols: ['h2'], rejectUnauthorized: false, minVersion: 'TLSv1.3' });
    const finish = (closed: boolean): void => {
      clearTimeout(timer);
      s.destroy();
      resolve({ closed, ...(goaway !== undefined ? { goaway } : {}), ms: Date.now() - started });
    };
    const timer = setTimeout(() => finish(false), 5000);
    s.on('data', frameReader((f) => {
      if (f.type === FRAME.GOAWAY) goaway = f.payload.readUInt32BE(4);
    }));
    s.on('error', () => finish(true));
    s.on('end', () => finish(true));
    s.on('close', () => finish(true));
    s.on('secureConnect', () => {
      s.write(Buffer.concat([PREFACE, frame(FRAME.SETTINGS, 0, 0)]));
      for (const f of frames) if (!s.destroyed) s.write(f);
    });
  });
}

t.test('a TLS client sending random HTTP/2 frames: connection closed, the controller keeps serving', async (t) => {
  const fds = fdCount();
  let seed = 0x2545f491;
  const next = (n: number): number => {
    seed ^= seed << 13; seed >>>= 0; seed ^= seed >>> 17; seed ^= seed << 5; seed >>>= 0;
    return seed % n;
  };
  for (let round = 0; round < 10; round++) {
    const frames: Buffer[] = [];
    for (let i = 0, n = 1 + next(20); i < n; i++) {
      const payload = Buffer.alloc(next(300));
      for (let j = 0; j < payload.length; j++) payload[j] = next(256);
      frames.push(frame(next(12), next(256), next(4) === 0 ? 0 : next(50), payload));
    }
    // Whatever the random frames did, end with one that is always a connection error (DATA on stream 0, RFC 9113 §6.1).
    frames.push(frame(FRAME.DATA, 0, 0, Buffer.from('x')));
    const r = await tlsH2(frames);
    t.ok(r.closed, `round ${round}: closed after ${r.ms} ms${r.goaway !== undefined ? ` (GOAWAY code ${r.goaway})` : ''}`);
  }
  // Random bytes after a valid TLS handshake, no preface.
  const s = await new Promise<boolean>((resolve) => {
    const c = tls.connect({ host: HOST, port: ctl.grpc.port, ALPNProtocols: ['h2'], rejectUnauthorized: false });
    const timer = setTimeout(() => { c.destroy(); resolve(false); }, 5000);
    c.on('secureConnect', () => c.write(randomBytes(4096)));
    c.on('data', () => undefined);
    c.on('error', () => undefined);
    c.on('close', () => { clearTimeout(timer); resolve(true); });
    c.on('end', () => { clearTimeout(timer); c.destroy(); resolve(true); });
  });
  t.ok(s, 'TLS then random bytes instead of the preface: closed');
  t.ok(alive(), 'controller still running');
  t.ok(await statusWorks(), 'ambitctl status works after');
  await eventually(async () => fdCount() <= fds + 6, 'controller descriptors back near the baseline').then(() => t.pass('descriptors released'), () => t.fail(`descriptors ${fdCount()} vs ${fds}`));
});

// ---------------------------------------------------------------- CSRs

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}
function csrWith(keyArgs: string[], sans: string, name: string): string {
  const key = join(work, `${name}.key`);
  const csr = join(work, `${name}.csr`);
  openssl(['genpkey', ...keyArgs, '-out', key]);
  openssl(['req', '-new', '-key', key, '-subj', '/', '-addext', `subjectAltName=critical,${sans}`, '-out', csr]);
  return readFileSync(csr, 'utf8');
}
const P256 = ['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256'];
function pem(der: Buffer): string {
  return `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString('base64').replace(/.{64}/g, '$&\n')}\n-----END CERTIFICATE REQUEST-----\n`;
}
function derOf(p: string): Buffer {
  return Buffer.from(p.replace(/-----[^-]+-----/g, '').replace(/\s/g, ''), 'base64');
}

function createCertificate(csrPem: string, identity = IDENTITY): Promise<{ code?: string; grpcStatus?: number; message: string }> {
  const client = new CertificateAuthorityClient(ctl.address, controllerCredentials({ caPem: node.bundlePem, trustDomain: TD, keyPem: node.keyPem, certChainPem: node.certChainPem }), CONTROLLER_CHANNEL_OPTIONS);
  return new Promise((resolve) => {
    client.createCertificate({ csrPem, identity }, new Metadata(), { deadline: Date.now() + 10_000 }, (err) => {
      client.close();
      if (!err) return resolve({ message: 'issued' });
      const e = fromServiceError(err, 'CreateCertificate');
      resolve({ code: e.code, grpcStatus: (e.details as { grpcStatus?: number } | undefined)?.grpcStatus, message: e.message });
    });
  });
}

t.test('CreateCertificate refuses bad CSRs with INVALID_ARGUMENT and an Ambit code', async (t) => {
  const good = csrWith(P256, `URI:${IDENTITY}`, 'good');
  t.equal((await createCertificate(good)).message, 'issued', 'control: an openssl P-256 CSR for the identity is signed');

  const cases: [string, string, string][] = [
    ['extra DNS SAN', csrWith(P256, `URI:${IDENTITY},DNS:evil.example.com`, 'dns'), 'AMBIT_ERR_CSR_INVALID'],
    ['extra IP SAN', csrWith(P256, `URI:${IDENTITY},IP:10.0.0.1`, 'ip'), 'AMBIT_ERR_CSR_INVALID'],
    ['a second URI SAN', csrWith(P256, `URI:${IDENTITY},URI:spiffe://${TD}/ns/default/sa/admin`, 'uri2'), 'AMBIT_ERR_CSR_INVALID'],
    ['P-384 key', csrWith(['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-384'], `URI:${IDENTITY}`, 'p384'), 'AMBIT_ERR_CSR_KEY_UNSUPPORTED'],
    ['RSA-1024 key', csrWith(['-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:1024'], `URI:${IDENTITY}`, 'rsa1024'), 'AMBIT_ERR_CSR_KEY_UNSUPPORTED'],
    ['Ed25519 key', csrWith(['-algorithm', 'ED25519'], `URI:${IDENTITY}`, 'ed25519'), 'AMBIT_ERR_CSR_KEY_UNSUPPORTED'],
  ];
  const badSig = derOf(good);
  badSig[badSig.length - 3] = badSig[badSig.length - 3]! ^ 0xff; // inside the signature value
  cases.push(['bad signature', pem(badSig), 'AMBIT_ERR_CSR_INVALID']);
  const truncated = derOf(good).subarray(0, 60);
  cases.push(['truncated DER', pem(truncated), 'AMBIT_ERR_CSR_INVALID']);
  cases.push(['not PEM at all', 'hello', 'AMBIT_ERR_CSR_INVALID']);
  cases.push(['1 MiB CSR', pem(randomBytes(1024 * 1024)), 'AMBIT_ERR_CSR_INVALID']);
  for (const [what, csrPem, code] of cases) {
    const r = await createCertificate(csrPem);
    t.ok(r.code === code || (what === 'Ed25519 key' && r.code === 'AMBIT_ERR_CSR_INVALID'), `${what}: ${code} (${r.message.slice(0, 120)})`);
    t.equal(r.grpcStatus, 3, `${what}: gRPC INVALID_ARGUMENT`);
  }
  const huge = await createCertificate('x'.repeat(5 * 1024 * 1024));
  t.equal(huge.grpcStatus, 8, `a 5 MiB message is over the 4 MiB limit: RESOURCE_EXHAUSTED (${huge.message.slice(0, 100)})`);
  t.ok(alive(), 'controller still running');
  t.ok(await statusWorks(), 'ambitctl status works after');
  t.equal((await createCertificate(good)).message, 'issued', 'and still signs good CSRs');
});

function joinRaw(nodeName: string, token: string, csrPem: string): Promise<{ code?: string; grpcStatus?: number; message: string }> {
  const client = new BootstrapClient(ctl.address, controllerCredentials({ caPem: node.bundlePem, trustDomain: TD }), CONTROLLER_CHANNEL_OPTIONS);
  return new Promise((resolve) => {
    client.join({ node: nodeName, credential: { $case: 'joinToken', joinToken: token }, csrPem }, new Metadata(), { deadline: Date.now() + 10_000 }, (err) => {
      client.close();
      if (!err) return resolve({ message: 'joined' });
      const e = fromServiceError(err, 'Join');
      resolve({ code: e.code, grpcStatus: (e.details as { grpcStatus?: number } | undefined)?.grpcStatus, message: e.message });
    });
  });
}

t.test('Join with bad CSRs or malformed tokens: refused, and a bad CSR does not spend the token', async (t) => {
  const token = (await ambitctl(ctl, ['node', 'token', 'create', '--node', 'node-y'])).stdout.trim();
  const nodeUri = `spiffe://${TD}/ambit/node/node-y`;
  const big = await joinRaw('node-y', token, pem(randomBytes(1024 * 1024)));
  t.equal(big.code, 'AMBIT_ERR_CSR_INVALID', `1 MiB CSR on Join: ${big.message.slice(0, 100)}`);
  t.equal(big.grpcStatus, 3, 'INVALID_ARGUMENT');
  const extra = await joinRaw('node-y', token, csrWith(P256, `URI:${nodeUri},DNS:evil.example.com`, 'join-dns'));
  t.equal(extra.code, 'AMBIT_ERR_CSR_INVALID', `extra SAN on Join: ${extra.message.slice(0, 100)}`);
  const p384 = await joinRaw('node-y', token, csrWith(['-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-384'], `URI:${nodeUri}`, 'join-p384'));
  t.equal(p384.code, 'AMBIT_ERR_CSR_KEY_UNSUPPORTED', 'P-384 key on Join');
  for (const bad of ['', 'ambit-join', 'ambit-join.zz.zz', `ambit-join.${'0'.repeat(16)}.${'A'.repeat(43)}`, 'x'.repeat(64 * 1024), `${token}x`]) {
    const r = await joinRaw('node-y', bad, csrWith(P256, `URI:${nodeUri}`, 'join-ok'));
    t.equal(r.code, 'AMBIT_ERR_TOKEN_INVALID', `malformed token ${JSON.stringify(bad.slice(0, 24))}${bad.length > 24 ? '…' : ''}: TOKEN_INVALID`);
  }
  const ok = await joinRaw('node-y', token, csrWith(P256, `URI:${nodeUri}`, 'join-ok2'));
  t.equal(ok.message, 'joined', `the token still works after the refused CSRs (${ok.code ?? ''} ${ok.message.slice(0, 200)})`);
  t.ok(alive(), 'controller still running');
});
