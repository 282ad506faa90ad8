/**
 * SIGTERM drain when the peer host reads slowly: connections whose relays are
 * over may still have their last bytes queued in the HBONE session. The
 * draining agent must deliver them before it exits, not drop them with its
 * sockets. Found by CI: under load the drain test in agent.test.ts lost the
 * last ~128 KiB of a connection, and the client saw a reset.
 *
 * Real processes: a controller and two agents (127.0.16.2 = node-a,
 * 127.0.16.3 = node-b). Node-a is stopped with SIGSTOP, with its data plane
 * (which holds its HBONE sessions), to stand in for a stalled host, so the responses pile up in node-b's session while node-b's
 * relays finish; node-b then gets SIGTERM, and node-a is resumed. Then the
 * other way round: node-b stalls while node-a is opening a tunnel to it, and
 * node-a gets SIGTERM before the tunnel is open.
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { agentKnowsNode, agentsReady, ambitctl, eventually, httpGet, hostPortOf, setUp, socksConnect, startAgent, startAgentPair, startController, type RunningAgent, type RunningController } from './harness.ts';

const CTL = '127.0.16.1';
const A = '127.0.16.2';
const B = '127.0.16.3';
const CLIENT_IP = '127.0.16.12';
const BIG_IP = '127.0.16.13';
const BIG_PORT = 8080;
/**
 * Connections, and what each answers: little enough for node-b's relays to
 * hand every byte to their streams while node-a stalls, so that the drain
 * finds no open connection and only the sessions hold the tails. What fits
 * depends on the kernel's loopback socket buffers: measured here, 2 MiB in
 * all did and 4 MiB did not, so this uses 1 MiB. Whether the old code also
 * lost bytes depended on how much those buffers had taken (4 of 8 tails
 * once, none another time); that it exited before node-a read them is what
 * fails every time.
 */
const CONNECTIONS = 8;
const ANSWER_BYTES = 128 * 1024;

const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-drain-flush-'));

/** A workload that reads a request to its end, then answers ANSWER_BYTES once told to. */
interface BigServer {
  readonly server: Server;
  /** How many requests have been read to their end. */
  ended: number;
  /** Answers every request read to its end and not answered yet; returns the answers' sha256 in arrival order. */
  answer(): string[];
}

function startBigServer(): Promise<BigServer> {
  const waiting: Socket[] = [];
  const big: BigServer = {
    server: createServer({ allowHalfOpen: true }, (s) => {
      s.on('error', () => undefined);
      s.resume();
      s.on('end', () => {
        big.ended++;
        waiting.push(s);
      });
    }),
    ended: 0,
    answer: () =>
      waiting.splice(0).map((s) => {
        const body = randomBytes(ANSWER_BYTES);
        s.end(body);
        return createHash('sha256').update(body).digest('hex');
      }),
  };
  return new Promise((resolve, reject) => {
    big.server.once('error', reject);
    big.server.listen(BIG_PORT, BIG_IP, () => resolve(big));
  });
}

/** Reads a socket to its end; `clean` is false when it closed without a FIN (a reset or an abort). */
function readAll(socket: Socket): Promise<{ sha256: string; bytes: number; clean: boolean }> {
  return new Promise((resolve) => {
    const h = createHash('sha256');
    let bytes = 0;
    let ended = false;
    socket.on('data', (d: Buffer) => {
      h.update(d);
      bytes += d.length;
    });
    socket.on('end', () => (ended = true));
    socket.on('error', () => undefined);
    socket.on('close', () => resolve({ sha256: h.digest('hex'), bytes, clean: ended }));
    socket.resume(); // socksConnect hands the socket over paused
  });
}

let ctl: RunningController;
let agentA: RunningAgent;
let agentB: RunningAgent;
let big: BigServer;

t.before(async () => {
  await setUp(async (started) => {
    big = await startBigServer();
    started(() => big.server.close());
    ctl = await startController(join(root, 'ctl'), [], CTL);
    started(() => ctl.proc.stop());
    const ok = async (args: string[]): Promise<string> => {
      const r = await ambitctl(ctl, args);
      if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')} failed: ${r.stderr}`);
      return r.stdout;
    };
    await ok(['workload', 'register', '--name', 'big', '--service-account', 'big', '--node', 'node-b', '--address', BIG_IP, '--port', String(BIG_PORT)]);
    await ok(['workload', 'register', '--name', 'client', '--service-account', 'client', '--node', 'node-a', '--address', CLIENT_IP]);
    const ta = (await ok(['node', 'token', 'create', '--node', 'node-a'])).trim();
    const tb = (await ok(['node', 'token', 'create', '--node', 'node-b'])).trim();
    [agentA, agentB] = await startAgentPair(started, [
      { node: 'node-a', address: A, controller: ctl.address, dataDir: join(root, 'a'), join: ta },
      { node: 'node-b', address: B, controller: ctl.address, dataDir: join(root, 'b'), join: tb },
    ]);
  });
  t.teardown(async () => {
    signalHost(agentA, 'SIGCONT');
    signalHost(agentB, 'SIGCONT');
    await agentA?.proc.stop();
    await agentB?.proc.stop();
    await ctl?.proc.stop();
    big?.server.close();
  });
  await agentsReady([agentA, agentB]);
  await agentKnowsNode(agentA, 'node-b');
});

/**
 * Stops or resumes a host: the agent and its children (ambit-dataplane, which
 * reads and writes the HBONE sessions; an agent stopped alone would leave
 * its data plane reading the tails).
 */
function signalHost(agent: RunningAgent | undefined, signal: 'SIGSTOP' | 'SIGCONT'): void {
  const pid = agent?.proc.child.pid;
  if (pid === undefined) return;
  let children: number[] = [];
  try {
    children = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    // The agent has exited: nothing to stop or resume.
  }
  for (const p of [pid, ...children]) {
    try {
      process.kill(p, signal);
    } catch {
      // Gone in between.
    }
  }
}

t.test('a draining agent delivers the tails its peer host has not read yet, then exits', async (t) => {
  const reads: Promise<{ sha256: string; bytes: number; clean: boolean }>[] = [];
  for (let i = 0; i < CONNECTIONS; i++) {
    const { socket, reply } = await socksConnect(agentA.socks, CLIENT_IP, 'default/client', BIG_IP, BIG_PORT);
    t.equal(reply, 0, `connection ${i} opened`);
    reads.push(readAll(socket));
    socket.end('request');
  }
  await eventually(async () => big.ended === CONNECTIONS, 'every request reached the workload');

  // Node-a stalls: node-b's relays can hand every answer to their streams,
  // but the bytes stay queued in node-b's session.
  signalHost(agentA, 'SIGSTOP');
  const sent = big.answer();
  const inboundDone = (): number => agentB.proc.logs.filter((l) => l.msg === 'connection' && l.direction === 'inbound' && l.bytes_sent === ANSWER_BYTES).length;
  await eventually(async () => inboundDone() === CONNECTIONS, 'node-b finished every relay while node-a stalls', 30_000);

  agentB.proc.child.kill('SIGTERM');
  await agentB.proc.waitForLog((l) => l.msg === 'draining');
  // Nothing must happen now: node-b holds the tails until node-a reads them.
  // Before the fix it exited here within milliseconds, dropping them.
  const early = await Promise.race([agentB.proc.exited.then(() => true), new Promise<false>((r) => setTimeout(() => r(false), 1_000))]);
  t.equal(early, false, 'node-b does not exit while its peer has not read what it sent');

  signalHost(agentA, 'SIGCONT');
  const got = await Promise.all(reads);
  for (let i = 0; i < CONNECTIONS; i++) {
    t.equal(got[i]!.bytes, ANSWER_BYTES, `connection ${i}: every byte arrived`);
    t.ok(got[i]!.clean, `connection ${i}: ended with a FIN, not a reset`);
  }
  t.same(got.map((g) => g.sha256).sort(), [...sent].sort(), 'each answer arrived intact');
  const exit = await agentB.proc.exited;
  t.equal(exit.code, 0, 'node-b exited cleanly');
  t.ok(agentB.proc.logs.some((l) => l.msg === 'drained'), 'and says it drained without cutting anyone');
});

t.test('a connection whose tunnel is still being opened when the drain starts is waited for, not cut', async (t) => {
  // node-b drained and exited above; a new one serves from the same data dir.
  agentB = await startAgent({ node: 'node-b', address: B, controller: ctl.address, dataDir: join(root, 'b') });
  await agentsReady([agentB]);
  // node-b stalls: node-a's HBONE dial to it (TCP accepted by the kernel, TLS unanswered) stays in flight.
  signalHost(agentB, 'SIGSTOP');
  const before = big.ended;
  const opening = socksConnect(agentA.socks, CLIENT_IP, 'default/client', BIG_IP, BIG_PORT, 30_000);
  await eventually(async () => {
    const dump = JSON.parse((await httpGet(hostPortOf(agentA.admin), '/config_dump')).body) as { connections: number };
    return dump.connections === 1;
  }, 'node-a counts the connection while its tunnel is being opened');

  agentA.proc.child.kill('SIGTERM');
  await agentA.proc.waitForLog((l) => l.msg === 'draining');
  signalHost(agentB, 'SIGCONT');
  const { socket, reply } = await opening;
  t.equal(reply, 0, 'the tunnel opened during the drain');
  const read = readAll(socket);
  socket.end('request');
  await eventually(async () => big.ended === before + 1, 'the request reached the workload');
  const [sent] = big.answer();
  const got = await read;
  t.equal(got.bytes, ANSWER_BYTES, 'every byte of the answer arrived');
  t.ok(got.clean, 'ended with a FIN, not a reset');
  t.equal(got.sha256, sent, 'intact');
  const exit = await agentA.proc.exited;
  t.equal(exit.code, 0, 'node-a exited cleanly');
  t.ok(agentA.proc.logs.some((l) => l.msg === 'drained'), 'and says it drained without cutting anyone');
});
