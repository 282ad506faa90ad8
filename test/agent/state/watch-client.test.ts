/**
 * The agent's watch client against a real gRPC server over mutual TLS (a
 * stand-in for the controller's Discovery service whose behaviour each test
 * scripts per stream): reconnects with jittered exponential backoff capped
 * at 30 s, the backoff starts over after a stream that delivered, every
 * (re)connect resumes from the revision the agent holds, updates are acked
 * (or nacked with the reason), and close() stops reconnecting.
 */
import t from 'tap';
import type { Test } from 'tap';
import path from 'node:path';
import { Server, ServerCredentials, status, type ServerDuplexStream } from '@grpc/grpc-js';
import { CertificateAuthority } from '../../../controller/ca/authority.ts';
import { WatchClient, WATCH_BACKOFF } from '../../../agent/state/watch-client.ts';
import type { StateUpdate } from '../../../agent/state/mesh-state.ts';
import { Backoff } from '../../../shared/backoff.ts';
import { createLogger } from '../../../shared/logger.ts';
import { DiscoveryService, type WatchRequest, type WatchResponse } from '../../../shared/proto/gen/ambit.ts';
import { controllerId, nodeId } from '../../../shared/spiffe-id.ts';

const TD = 'cluster.local';
type Stream = ServerDuplexStream<WatchRequest, WatchResponse>;

interface Attempt {
  readonly at: number;
  readonly resumeRevision: number;
}

/** A Discovery server whose n-th stream is handled by script(n, call). Records every WatchStart and ack. */
async function fakeController(t: Test, script: (n: number, call: Stream) => void) {
  const ca = CertificateAuthority.open({ dir: path.join(t.testdir(), 'ca'), trustDomain: TD, now: Date.now });
  const serving = ca.issueLocal(controllerId(TD), 3_600_000, { ips: ['127.0.0.1'] });
  const node = ca.issueLocal(nodeId(TD, 'node-a'), 3_600_000);
  const attempts: Attempt[] = [];
  const acks: { revision: number; ok: boolean; reason: string }[] = [];
  const server = new Server();
  server.addService(DiscoveryService, {
    watch: (call: Stream) => {
      call.on('error', () => undefined);
      call.on('data', (req: WatchRequest) => {
        if (req.request?.$case === 'start') {
          attempts.push({ at: Date.now(), resumeRevision: req.request.start.resumeRevision });
          script(attempts.length, call);
        } else if (req.request?.$case === 'ack') {
          acks.push({ revision: req.request.ack.revision, ok: req.request.ack.ok, reason: req.request.ack.reason });
        }
      });
    },
  });
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', ServerCredentials.createSsl(Buffer.from(ca.bundlePem()), [{ private_key: Buffer.from(serving.keyPem), cert_chain: Buffer.from(serving.chainPem) }], false), (err, p) => (err ? reject(err) : resolve(p))));
  t.teardown(() => server.forceShutdown());
  const credentials = () => ({ keyPem: node.keyPem, certChainPem: node.chainPem, bundlePem: ca.bundlePem(), trustDomain: TD, node: 'node-a', expiresAt: node.notAfter });
  return { port, attempts, acks, credentials };
}

/** Ends a stream with an error status, the way the controller does (discovery-service.ts endWithStatus). */
const refuse = (call: Stream): void => void call.emit('error', Object.assign(new Error('controller unavailable (test)'), { code: status.UNAVAILABLE }));

const response = (revision: number): WatchResponse => ({ revision, snapshot: true, resources: [], changes: [], trustBundlePem: '', nodesSet: false, nodes: [], activeRootSha256: '', answers: [], storeId: '' });

/** A logger whose warn lines (with retryInMs) the test reads. */
function capturingLogger() {
  const lines: Record<string, unknown>[] = [];
  const logger = createLogger({ name: 'test', level: 'warn', destination: { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) } });
  const retries = (): number[] => lines.filter((l) => l.msg === 'controller watch lost; serving cached state').map((l) => l.retryInMs as number);
  return { logger, retries };
}

async function until(what: string, cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

t.test('the default reconnect policy: 0.5 s first ceiling, doubling, full jitter, capped at 30 s', async (t) => {
  t.same(WATCH_BACKOFF, { initialMs: 500, maxMs: 30_000 });
  const top = new Backoff({ ...WATCH_BACKOFF, random: () => 1 });
  t.same(Array.from({ length: 10 }, () => top.next()), [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000, 30_000], 'ceilings double up to the 30 s cap');
  const floor = new Backoff({ ...WATCH_BACKOFF, random: () => 0 });
  t.same([floor.next(), floor.next(), floor.next()], [50, 50, 50], 'full jitter: a delay may be as short as 50 ms');
  const real = new Backoff(WATCH_BACKOFF);
  const draws = Array.from({ length: 200 }, () => real.next());
  t.ok(draws.every((d) => d >= 50 && d <= 30_000), 'no delay above 30 s, ever');
  t.ok(new Set(draws.slice(10)).size > 150, 'delays at the cap are spread (jittered), not one value');
});

t.test('a WatchClient built without a backoff uses the default policy', async (t) => {
  const fake = await fakeController(t, (n, call) => {
    if (n === 1) refuse(call);
    else call.write(response(1));
  });
  const { logger, retries } = capturingLogger();
  const w = new WatchClient({ controller: { host: '127.0.0.1', port: fake.port }, credentials: fake.credentials, hboneAddress: '127.0.0.1:15008', revision: () => 0, certExpiresAt: () => 0, apply: () => undefined, logger });
  t.teardown(() => w.close());
  w.start();
  await until('the second attempt', () => fake.attempts.length >= 2);
  t.equal(retries().length, 1);
  t.ok(retries()[0]! >= 50 && retries()[0]! <= 500, `first retry after ${retries()[0]} ms, within [50, 500]`);
});

t.test('failures back off exponentially to the cap; a stream that delivered resets the backoff; every connect resumes from the held revision', async (t) => {
  // Streams 1–6 are refused; 7 delivers revision 5 and then ends; 8 refused; 9 delivers.
  const fake = await fakeController(t, (n, call) => {
    if (n <= 6 || n === 8) refuse(call);
    else if (n === 7) {
      call.write(response(5));
      setTimeout(() => call.end(), 100);
    } else call.write(response(9));
  });
  const { logger, retries } = capturingLogger();
  let revision = 3; // as if loaded from the state cache
  const applied: StateUpdate[] = [];
  const statuses: boolean[] = [];
  const peers: string[] = [];
  const w = new WatchClient({
    controller: { host: '127.0.0.1', port: fake.port },
    credentials: fake.credentials,
    hboneAddress: '127.0.0.1:15008',
    revision: () => revision,
    certExpiresAt: () => 0,
    apply: (u) => {
      applied.push(u);
      revision = u.revision;
    },
    logger,
    onStatus: (c) => {
      statuses.push(c);
      peers.push(w.peer);
    },
    backoff: new Backoff({ initialMs: 40, maxMs: 160, random: () => 1 }),
  });
  t.teardown(() => w.close());
  w.start();
  await until('revision 9 applied', () => applied.some((u) => u.revision === 9));

  t.same(retries(), [40, 80, 160, 160, 160, 160, 40, 80], 'delays double up to the cap, and start over after the stream that delivered');
  const gaps = fake.attempts.slice(1).map((a, i) => a.at - fake.attempts[i]!.at);
  const waited = [40, 80, 160, 160, 160, 160];
  t.ok(waited.every((d, i) => gaps[i]! >= d - 5), `each reconnect waited its delay (gaps ${gaps.join(', ')} ms)`);
  t.same(fake.attempts.map((a) => a.resumeRevision), [3, 3, 3, 3, 3, 3, 3, 5, 5], 'every WatchStart resumes from the revision held at that moment');
  await until('acks', () => fake.acks.length >= 2);
  t.same(fake.acks.map((a) => [a.revision, a.ok]), [[5, true], [9, true]], 'each applied response is acked with its revision');
  t.same(statuses, [true, false, true], 'connected → lost → connected again');
  const at = `127.0.0.1:${fake.port}`;
  t.same(peers, [at, '', at], 'the controller address the stream is on, none while lost');
  t.ok(w.connected);
});

t.test('an update the agent cannot apply is nacked with the reason; the stream stays up', async (t) => {
  const fake = await fakeController(t, (_n, call) => {
    call.write(response(4));
    call.write(response(6));
  });
  const { logger } = capturingLogger();
  const w = new WatchClient({
    controller: { host: '127.0.0.1', port: fake.port }, credentials: fake.credentials, hboneAddress: '127.0.0.1:15008',
    revision: () => 0, certExpiresAt: () => 0, logger,
    apply: (u) => {
      if (u.revision === 4) throw new Error('policy p does not compile');
    },
  });
  t.teardown(() => w.close());
  w.start();
  await until('two answers', () => fake.acks.length >= 2);
  t.same(fake.acks, [{ revision: 4, ok: false, reason: 'policy p does not compile' }, { revision: 6, ok: true, reason: '' }]);
  t.equal(fake.attempts.length, 1, 'no reconnect: a nack is an answer, not a failure');
});

t.test('a stream that stays silent after WatchStart is given up and retried with backoff', async (t) => {
  // Streams 1 and 2 never answer (a hung controller, or a stream dropped without a status); 3 answers.
  const fake = await fakeController(t, (n, call) => {
    if (n >= 3) call.write(response(2));
  });
  const { logger, retries } = capturingLogger();
  const w = new WatchClient({
    controller: { host: '127.0.0.1', port: fake.port }, credentials: fake.credentials, hboneAddress: '127.0.0.1:15008',
    revision: () => 0, certExpiresAt: () => 0, apply: () => undefined, logger,
    backoff: new Backoff({ initialMs: 40, maxMs: 160, random: () => 1 }),
    firstResponseTimeoutMs: 300,
  });
  t.teardown(() => w.close());
  w.start();
  await until('revision 2 acked', () => fake.acks.some((a) => a.revision === 2));
  t.equal(fake.attempts.length, 3, 'two silent streams given up, the third answered');
  t.same(retries(), [40, 80], 'each given-up stream counts as a failure for the backoff');
  t.match(w.lastError, /no answer from the controller within 300 ms/);
  const gap = fake.attempts[1]!.at - fake.attempts[0]!.at;
  // The deadline runs from the agent's WatchStart, a little before the fake
  // controller sees the stream (more so on a loaded machine); a stream given up
  // at once instead would show the 40 ms delay alone.
  t.ok(gap >= 250 && gap < 1500, `the first stream was given up after the 300 ms deadline plus its delay (${gap} ms)`);
});

t.test('close() stops reconnecting', async (t) => {
  const fake = await fakeController(t, (_n, call) => refuse(call));
  const { logger } = capturingLogger();
  const w = new WatchClient({
    controller: { host: '127.0.0.1', port: fake.port }, credentials: fake.credentials, hboneAddress: '127.0.0.1:15008',
    revision: () => 0, certExpiresAt: () => 0, apply: () => undefined, logger,
    backoff: new Backoff({ initialMs: 20, maxMs: 20, random: () => 1 }),
  });
  w.start();
  await until('three attempts', () => fake.attempts.length >= 3);
  w.close();
  const n = fake.attempts.length;
  await new Promise((r) => setTimeout(r, 300));
  t.ok(fake.attempts.length <= n + 1, `no attempts after close (${fake.attempts.length - n} in flight at close)`);
  t.notOk(w.connected);
});

t.test('a controller DNS name is resolved at every connect, through the resolver given', async (t) => {
  // Stream 1 delivers then ends; stream 2 delivers.
  const fake = await fakeController(t, (n, call) => {
    call.write(response(n));
    if (n === 1) setTimeout(() => call.end(), 50);
  });
  const { logger } = capturingLogger();
  const asked: string[] = [];
  const w = new WatchClient({
    controller: { host: 'controllers.test', port: fake.port }, credentials: fake.credentials, hboneAddress: '127.0.0.1:15008',
    revision: () => 0, certExpiresAt: () => 0, apply: () => undefined, logger,
    resolve: async (host) => {
      asked.push(host);
      return ['127.0.0.1'];
    },
    backoff: new Backoff({ initialMs: 20, maxMs: 20, random: () => 1 }),
  });
  t.teardown(() => w.close());
  w.start();
  await until('the second stream', () => fake.attempts.length >= 2 && w.connected);
  t.same(asked, ['controllers.test', 'controllers.test'], 'resolved once for each connect');
  t.equal(w.peer, `127.0.0.1:${fake.port}`, 'connected to the address it resolved to');
});
