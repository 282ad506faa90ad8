/**
 * ambit-dataplane (the native inbound data path, dataplane/) driven directly
 * over its control pipe, as the agent drives it: a real process, real TLS on
 * 127.0.19.1. Bad input must get an answer naming what was wrong and leave
 * the configuration in force untouched; a drain must not cut a tunnel whose
 * last bytes are still queued. The executable must have been built
 * (`npm test` builds it with dataplane/build.sh).
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as http2Connect } from 'node:http2';
import { connect as netConnect, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { serverNameFor } from '../../../agent/proxy/hbone-names.ts';
import { BINARY, Dataplane, dataRecordBytes, echoRounds, HOST, pki, RecordingRelay, WEB_ID } from './dataplane-harness.ts';

t.test('the executable is built', async (t) => {
  t.ok(existsSync(BINARY), `${BINARY} exists (npm run build:dataplane)`);
});

t.test('wrong arguments: usage on stderr, exit 2', async (t) => {
  const dp = new Dataplane([]);
  let stderr = '';
  dp.child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  t.equal(await dp.exited, 2);
  t.match(stderr, /usage: ambit-dataplane --listen HOST:PORT/);
});

t.test('an address it cannot listen on: an error line naming it, exit 2', async (t) => {
  const dp = new Dataplane(['--listen', '203.0.113.7:0']);
  const err = await dp.next((m) => m.t === 'error', 'error');
  t.equal(err.code, 'AMBIT_ERR_INTERNAL');
  t.match(String(err.message), /cannot listen on 203\.0\.113\.7:0/);
  t.equal(await dp.exited, 2);
});

t.test('stdin and stdout that are files, not the agent\'s pipes: it still reads and answers, and exits at the end of its input', async (t) => {
  // The agent's pipes are polled by the reactor (dataplane/src/pipe.rs); a
  // regular file cannot be, and must fall back to tokio's own streams.
  const dir = mkdtempSync(join(tmpdir(), 'ambit-dp-files-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'in'), `this is not JSON\n${JSON.stringify({ t: 'config', rev: 7, bundle: 'not PEM', identities: [] })}\n`);
  const input = openSync(join(dir, 'in'), 'r');
  const output = openSync(join(dir, 'out'), 'w');
  const r = spawnSync(BINARY, ['--listen', `${HOST}:0`], { stdio: [input, output, 'pipe'], timeout: 10_000 });
  closeSync(input);
  closeSync(output);
  t.equal(r.status, 0, `exit 0 at the end of stdin (signal ${r.signal}, stderr ${String(r.stderr).slice(0, 200)})`);
  const lines = readFileSync(join(dir, 'out'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  t.equal(lines[0]?.t, 'listening', 'says where it listens');
  t.match(String(lines.find((m) => m.t === 'error')?.message), /unreadable control message/, 'answers the unreadable line');
  t.match(lines.find((m) => m.t === 'nack'), { rev: 7, message: /trust bundle/ }, 'answers the bad configuration');
});

t.test('bad control input is answered and changes nothing; good input serves TLS', async (t) => {
  const dp = new Dataplane(['--listen', `${HOST}:0`]);
  t.teardown(() => void dp.child.kill('SIGKILL'));
  const listening = await dp.next((m) => m.t === 'listening', 'listening');
  const port = Number(String(listening.addr).split(':')[1]);
  t.ok(port > 0, `listens on ${String(listening.addr)}`);

  dp.send('this is not JSON');
  t.match(String((await dp.next((m) => m.t === 'error', 'error')).message), /unreadable control message/, 'unreadable line: an error, and it keeps running');
  dp.send(JSON.stringify({ t: 'config', rev: 1, bundle: 'not PEM', identities: [] }));
  t.match(String((await dp.next((m) => m.t === 'nack', 'nack')).message), /trust bundle: no PEM certificate/, 'a bundle without certificates: nack naming the bundle');

  const good = pki();
  const sni = serverNameFor(WEB_ID);
  dp.send(JSON.stringify({ t: 'config', rev: 2, bundle: good.bundle, identities: [{ sni, chain: good.chain, key: 'no key here' }] }));
  t.match(String((await dp.next((m) => m.t === 'nack', 'nack')).message), new RegExp(`identity for ${sni}: no PEM private key`), 'an identity without a key: nack naming the identity');

  dp.send(JSON.stringify({ t: 'config', rev: 3, bundle: good.bundle, identities: [{ sni, chain: good.chain, key: good.key }] }));
  t.same(await dp.next((m) => m.t === 'ack', 'ack'), { t: 'ack', rev: 3 }, 'a good configuration: ack');
  // Read and written on the runtime's own thread (dataplane/src/pipe.rs):
  // tokio's stdin/stdout would have started a blocking-pool thread by now.
  t.same(readdirSync(`/proc/${dp.child.pid}/task`).length, 1, 'the control pipe is polled by the reactor: one thread');
  dp.send(JSON.stringify({ t: 'config', rev: 4, bundle: good.bundle, identities: [{ sni, chain: 'broken', key: good.key }] }));
  await dp.next((m) => m.t === 'nack' && m.rev === 4, 'nack of rev 4');

  // The nacked rev 4 left rev 3 in force: the server still presents the identity's certificate.
  // Resolves when the server has ended the connection: without a client
  // certificate it answers the client's Finished with an alert.
  const handshake = (servername: string): Promise<{ cert?: string; error?: string }> => new Promise((resolve) => {
    const s = tlsConnect({ host: HOST, port, servername, ca: good.bundle, ALPNProtocols: ['h2'], minVersion: 'TLSv1.3', checkServerIdentity: () => undefined });
    let cert: string | undefined;
    let error: string | undefined;
    s.once('secureConnect', () => (cert = s.getPeerX509Certificate()?.subjectAltName ?? ''));
    s.on('error', (e) => (error ??= e.message));
    s.once('close', () => resolve({ cert, error }));
    s.resume();
  });
  const served = await handshake(sni);
  t.equal(served.cert, `URI:${WEB_ID}`, 'the last good configuration is served after a nack');
  t.match((await dp.next((m) => m.t === 'refused', 'refused')).reason, 'peer_certificate', 'a client without a certificate is refused as peer_certificate');
  const unknown = await handshake('wdoesnotexist.hbone.ambit');
  t.ok(unknown.error, `an unknown server name fails the handshake (${unknown.error})`);
  t.equal((await dp.next((m) => m.t === 'refused', 'refused')).reason, 'unknown_server_name', 'and is counted as such');

  dp.child.stdin.end();
  t.equal(await dp.exited, 0, 'stdin closed (the agent is gone): it exits');
});

// h2 hands a DATA frame to TLS as two writes (frame head, payload), which
// tokio-rustls would send as two records: the peer wakes for the head alone
// (tls::record_writer in dataplane/src/tls.rs). A 1 KiB echo must leave as one record.
t.test('a small DATA frame leaves as one TLS record', async (t) => {
  const dp = new Dataplane(['--listen', `${HOST}:0`]);
  t.teardown(() => void dp.child.kill('SIGKILL'));
  const port = Number(String((await dp.next((m) => m.t === 'listening', 'listening')).addr).split(':')[1]);
  const p = pki();
  const sni = serverNameFor(WEB_ID);
  dp.say({ t: 'config', rev: 1, bundle: p.bundle, identities: [{ sni, chain: p.chain, key: p.key }] });
  await dp.next((m) => m.t === 'ack', 'ack');
  const workload = createNetServer((s) => s.pipe(s));
  await new Promise<void>((r) => workload.listen(0, HOST, r));
  t.teardown(() => void workload.close());
  const relay = new RecordingRelay({ host: HOST, port });
  const relayPort = await relay.listen();
  t.teardown(() => void relay.server.close());

  const session = http2Connect(`https://${HOST}:${relayPort}`, { servername: sni, ca: p.bundle, cert: p.chain, key: p.key, checkServerIdentity: () => undefined });
  session.on('error', () => undefined);
  t.teardown(() => void session.destroy());
  const stream = session.request({ ':method': 'CONNECT', ':authority': `${HOST}:${(workload.address() as AddressInfo).port}` });
  stream.on('error', () => undefined);
  dp.say({ t: 'session', sid: (await dp.next((m) => m.t === 'session', 'session')).sid, ok: true });
  const st = await dp.next((m) => m.t === 'stream', 'stream');
  dp.say({ t: 'decide', id: st.id, status: 200, reason: '', dial: `${HOST}:${(workload.address() as AddressInfo).port}`, timeoutMs: 5_000 });
  await echoRounds(stream, 3, 1024); // past the handshake's and settings' frames
  const from = relay.fromTarget.length;
  await echoRounds(stream, 20, 1024);
  const chunks = relay.fromTarget.slice(from);
  t.same(chunks, new Array(20).fill(dataRecordBytes(1024)), `each echo crossed as one ${dataRecordBytes(1024)}-byte record (a split frame shows as ${dataRecordBytes(0)} + ${dataRecordBytes(1024) - 9})`);
});

/**
 * A TCP relay between a client and the data plane whose data plane → client
 * half the test meters: held, a few bytes at a time, or open.
 */
class MeteredRelay {
  readonly server = createNetServer((down) => this.#accept(down));
  #up: Socket | undefined;
  #down: Socket | undefined;
  #allowance = Infinity;
  #waiting: Buffer[] = [];

  readonly target: { host: string; port: number };

  constructor(target: { host: string; port: number }) {
    this.target = target;
  }

  listen(): Promise<number> {
    return new Promise((r) => this.server.listen(0, HOST, () => r((this.server.address() as AddressInfo).port)));
  }

  /** From now on lets at most n bytes through (Infinity: everything), then holds. */
  allow(n: number): void {
    this.#allowance = n;
    this.#pump();
  }

  #accept(down: Socket): void {
    const up = netConnect(this.target.port, this.target.host);
    this.#up = up;
    this.#down = down;
    down.pipe(up);
    up.on('data', (d: Buffer) => {
      this.#waiting.push(d);
      this.#pump();
    });
    up.on('end', () => {
      this.#waiting.push(Buffer.alloc(0)); // marks the end, passed on in order
      this.#pump();
    });
    up.on('error', () => down.destroy());
    down.on('error', () => up.destroy());
  }

  #pump(): void {
    const down = this.#down;
    const up = this.#up;
    if (!down || !up) return;
    while (this.#waiting.length > 0 && this.#allowance > 0) {
      const d = this.#waiting[0]!;
      if (d.length === 0) {
        this.#waiting.shift();
        down.end();
        return;
      }
      const n = Math.min(d.length, this.#allowance);
      down.write(d.subarray(0, n));
      this.#allowance -= n;
      if (n === d.length) this.#waiting.shift();
      else this.#waiting[0] = d.subarray(n);
    }
    // Not reading while held or while bytes wait: the data plane's socket fills up.
    if (this.#allowance > 0 && this.#waiting.length === 0) up.resume();
    else up.pause();
  }
}

// The drain must not cut a tunnel whose last bytes the data plane has not
// written yet. Session 6's drain test failed in CI this way (one run in
// five under CPU load here): the data plane sent its GOAWAY, and the PING
// whose answer lets h2 close the connection, as soon as the relay had handed
// the last bytes to h2, while the tunnel's tail was still queued behind a
// full socket. h2 writes a pending GOAWAY and PING ahead of queued DATA, so
// the answer did not prove the client had read the tail; and a Node.js
// client answers a GOAWAY with its own, on which h2 0.3.13 fails every
// stream still open. Here the client's relay lets through only a trickle,
// so the tail is queued in the data plane when its relay ends and `drain`
// arrives. The GOAWAY must reach the client only after every byte of the
// tunnel, the tunnel must end with END_STREAM, and `drained` come after.
t.test('drain: GOAWAY only after the last tunnel\'s queued tail, which arrives intact', async (t) => {
  const SIZE = 12 * 1024 * 1024;
  const dp = new Dataplane(['--listen', `${HOST}:0`]);
  t.teardown(() => void dp.child.kill('SIGKILL'));
  const port = Number(String((await dp.next((m) => m.t === 'listening', 'listening')).addr).split(':')[1]);
  const p = pki();
  const sni = serverNameFor(WEB_ID);
  dp.send(JSON.stringify({ t: 'config', rev: 1, bundle: p.bundle, identities: [{ sni, chain: p.chain, key: p.key }] }));
  await dp.next((m) => m.t === 'ack', 'ack');

  // The workload answers with SIZE bytes, then closes.
  const payload = randomBytes(SIZE);
  const workload = createNetServer((s) => {
    s.resume();
    s.end(payload);
  });
  await new Promise<void>((r) => workload.listen(0, HOST, r));
  t.teardown(() => void workload.close());
  const workloadPort = (workload.address() as AddressInfo).port;

  const relay = new MeteredRelay({ host: HOST, port });
  const relayPort = await relay.listen();
  t.teardown(() => void relay.server.close());

  const session = http2Connect(`https://${HOST}:${relayPort}`, {
    servername: sni, ca: p.bundle, cert: p.chain, key: p.key, checkServerIdentity: () => undefined,
    settings: { initialWindowSize: 2 * SIZE },
  });
  session.on('error', () => undefined);
  t.teardown(() => void session.destroy());
  session.on('connect', () => session.setLocalWindowSize(4 * SIZE));
  const stream = session.request({ ':method': 'CONNECT', ':authority': `${HOST}:${workloadPort}` });
  stream.end(); // nothing to send: the relay is over once the workload's answer is handed to h2
  const received = createHash('sha256');
  let bytes = 0;
  stream.on('data', (d: Buffer) => {
    received.update(d);
    bytes += d.length;
  });
  stream.on('error', () => undefined);
  // What the client had received, buffered or not, when the GOAWAY came.
  let atGoaway: number | undefined;
  session.on('goaway', () => (atGoaway ??= bytes + stream.readableLength));
  const closed = new Promise<{ rstCode: number; ended: boolean }>((resolve) => {
    let ended = false;
    stream.on('end', () => (ended = true));
    stream.on('close', () => resolve({ rstCode: stream.rstCode ?? 0, ended }));
  });

  const s = await dp.next((m) => m.t === 'session', 'session');
  dp.send(JSON.stringify({ t: 'session', sid: s.sid, ok: true }));
  const st = await dp.next((m) => m.t === 'stream', 'stream');
  // A trickle from here on: the data plane's socket stays full and h2 holds what does not fit.
  relay.allow(0);
  const trickle = setInterval(() => relay.allow(64 * 1024), 20);
  dp.send(JSON.stringify({ t: 'decide', id: st.id, status: 200, reason: '', dial: `${HOST}:${workloadPort}`, timeoutMs: 5_000 }));
  const end = await dp.next((m) => m.t === 'end', 'end');
  clearInterval(trickle);
  relay.allow(0);
  t.same([end.toSource, end.error], [SIZE, ''], 'the data plane relayed the whole answer');
  dp.send(JSON.stringify({ t: 'drain' }));
  // A wait, not an event: what is checked is that nothing (no `drained`, no GOAWAY) comes early.
  await new Promise((r) => setTimeout(r, 200));
  t.notOk(dp.messages.some((m) => m.t === 'drained'), 'not drained while the tail is unread');
  relay.allow(Infinity);

  t.same(await closed, { rstCode: 0, ended: true }, 'the tunnel ended with END_STREAM, not a reset');
  t.equal(bytes, SIZE, 'every byte arrived');
  t.equal(received.digest('hex'), createHash('sha256').update(payload).digest('hex'), 'intact');
  await dp.next((m) => m.t === 'drained', 'drained');
  t.equal(atGoaway, SIZE, 'the GOAWAY came after the last byte of the tunnel');
});
