/**
 * tuneGcForRelaying (agent/proxy/gc-tuning.ts):
 *
 * - Relaying bytes through a process that holds an agent's amount of live
 *   heap is done by young-generation collections, not by a stream of full
 *   mark-compacts. Real processes and sockets on 127.0.17.1: a client sends
 *   MIB MiB through two relay processes joined by an HTTP/2 CONNECT stream
 *   (the agents' relay and HTTP/2 settings;
 *   test/agent/proxy/fixtures/relay-gc.ts) to a sink, once with V8's defaults
 *   and once tuned. Each side counts its full collections. The first run is
 *   the control: it must show that the fixture keeps V8 collecting the whole
 *   heap, as the agents did (29–38 full collections each in a bench run
 *   relaying 2 GiB), or the tuned run's low count would mean nothing. The
 *   control is V8's defaults rather than the agents' earlier external-memory
 *   setting alone: in this fixture that setting alone gave anywhere from 1
 *   to 16 full collections per GiB a side, depending on when it was set and
 *   from run to run, so it is no stable control. Counts, not durations; but
 *   how many collections V8 decides on still depends somewhat on the CPU it
 *   gets, so the bounds leave a wide margin.
 * - After full collections it re-sets the growing percent as the old
 *   generation grows and shrinks (fixtures/gc-retune.ts, with --expose-gc).
 * - heapGrowingPercentFor and effectiveHeadroom, as tables.
 */
import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { connect, createServer, type AddressInfo } from 'node:net';
import { createInterface } from 'node:readline';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MAX_HEAP_GROWING_PERCENT, RELAY_HEADROOM_BYTES, effectiveHeadroom, heapGrowingPercentFor } from '../../../agent/proxy/gc-tuning.ts';

const HOST = '127.0.17.1';
const FIXTURES = join(dirname(fileURLToPath(import.meta.url)), 'fixtures');
const FIXTURE = join(FIXTURES, 'relay-gc.ts');
const MIB = 1024;
const CHUNK = 64 * 1024;

interface Counts { role: string; mode: string; major: number; other: number }
type Mode = 'tuned' | 'untuned';

function startSide(t: Test, role: 'src' | 'dst', mode: Mode, port: number): Promise<{ child: ChildProcess; port: number; lines: AsyncIterator<string> }> {
  const child = spawn(process.execPath, [FIXTURE, role, mode, HOST, String(port)], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  return lines.next().then((first) => {
    const m = /^listening (\d+)$/.exec(String(first.value));
    if (!m) throw new Error(`${role} ${mode} did not start: ${String(first.value)}`);
    return { child, port: Number(m[1]), lines };
  });
}

async function stop(side: { child: ChildProcess; lines: AsyncIterator<string> }): Promise<Counts> {
  side.child.kill('SIGTERM');
  const line = await side.lines.next();
  await once(side.child, 'exit');
  return JSON.parse(String(line.value)) as Counts;
}

/** Sends MIB MiB through src → dst → sink; resolves with the bytes the sink got and both sides' counts. */
async function relayThrough(t: Test, mode: Mode): Promise<{ received: number; src: Counts; dst: Counts }> {
  let received = 0;
  const sink = createServer({ allowHalfOpen: true }, (s) => {
    s.on('data', (d: Buffer) => (received += d.length));
    s.on('end', () => s.end());
  });
  sink.listen(0, HOST);
  await once(sink, 'listening');
  t.teardown(() => sink.close());
  const dst = await startSide(t, 'dst', mode, (sink.address() as AddressInfo).port);
  const src = await startSide(t, 'src', mode, dst.port);

  const client = connect({ host: HOST, port: src.port, allowHalfOpen: true });
  await once(client, 'connect');
  const chunk = Buffer.alloc(CHUNK, 0x61);
  for (let sent = 0; sent < MIB * 1024 * 1024; sent += CHUNK) {
    if (!client.write(chunk)) await once(client, 'drain');
  }
  client.end();
  client.resume();
  await once(client, 'end');
  client.destroy();
  return { received, src: await stop(src), dst: await stop(dst) };
}

t.test('relaying with the agent\'s GC tuning takes few full collections; with V8\'s defaults, many', async (t) => {
  const untuned = await relayThrough(t, 'untuned');
  const tuned = await relayThrough(t, 'tuned');
  const total = MIB * 1024 * 1024;
  t.equal(untuned.received, total, 'untuned: every byte arrived');
  t.equal(tuned.received, total, 'tuned: every byte arrived');
  t.comment(`full collections per ${MIB} MiB, source / destination side: untuned ${untuned.src.major} / ${untuned.dst.major}, tuned ${tuned.src.major} / ${tuned.dst.major}`);
  // The control (measured 17–24 per GiB a side): the fixture must reproduce the agents' problem.
  for (const side of [untuned.src, untuned.dst]) t.ok(side.major >= 8, `control (${side.role}, untuned): many full collections (${side.major})`);
  // Tuned: measured 1–2 per GiB a side.
  for (const [i, side] of [tuned.src, tuned.dst].entries()) {
    const control = i === 0 ? untuned.src : untuned.dst;
    t.ok(side.major * 4 <= control.major, `${side.role}, tuned: ${side.major} full collections, at most a quarter of the untuned ${control.major}`);
  }
});

t.test('the growing percent follows the old generation after full collections', async (t) => {
  const child = spawn(process.execPath, ['--expose-gc', join(FIXTURES, 'gc-retune.ts')], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  const [code] = (await once(child, 'exit')) as [number | null];
  t.equal(code, 0, 'the fixture ran');
  const r = JSON.parse(out) as { start: number; grown: number; grownOld: number; shrunk: number; shrunkOld: number };
  const MiB = 1024 * 1024;
  t.comment(`percent ${r.start} at start, ${r.grown} with ${(r.grownOld / MiB).toFixed(1)} MiB of old generation, ${r.shrunk} with ${(r.shrunkOld / MiB).toFixed(1)} MiB`);
  t.equal(r.start, MAX_HEAP_GROWING_PERCENT, 'a small heap at start: the most room');
  t.ok(r.grownOld > 64 * MiB, 'the fixture grew the old generation past 64 MiB');
  t.equal(r.grown, heapGrowingPercentFor(r.grownOld), 'after a full collection: the percent for the grown old generation');
  t.ok(r.grown < MAX_HEAP_GROWING_PERCENT, `which is lower (${r.grown})`);
  t.equal(r.shrunk, heapGrowingPercentFor(r.shrunkOld), 'after the next: the percent for the shrunk one');
  t.ok(r.shrunk > r.grown, `which is higher again (${r.shrunk})`);
});

t.test('heapGrowingPercentFor: room for RELAY_HEADROOM_BYTES over the live heap, within bounds', async (t) => {
  const MiB = 1024 * 1024;
  t.equal(RELAY_HEADROOM_BYTES, 128 * MiB, 'the headroom these rows assume');
  const rows: [live: number, percent: number, why: string][] = [
    [0, MAX_HEAP_GROWING_PERCENT, 'no heap measured yet: the most room'],
    [8 * MiB, MAX_HEAP_GROWING_PERCENT, '128 MiB over 8 MiB would be 1,600 %: capped at 600 % (7×)'],
    [20 * MiB, MAX_HEAP_GROWING_PERCENT, '640 %: capped'],
    [32 * MiB, 400, 'exactly 4× the live heap of room'],
    [40 * MiB, 325, '320 % rounded up to a multiple of 25'],
    [100 * MiB, 150, '128 % rounded up'],
    [127 * MiB, 125, 'just under the headroom'],
    [128 * MiB, 0, 'at the headroom: 0 clears the flag, V8\'s own factor decides again'],
    [1024 * MiB, 0, 'a large heap: V8 decides'],
  ];
  for (const [live, percent, why] of rows) t.equal(heapGrowingPercentFor(live), percent, `${live / MiB} MiB live → ${percent} (${why})`);
  for (let live = MiB; live < 128 * MiB; live += MiB) {
    const p = heapGrowingPercentFor(live);
    if (p % 25 !== 0 || p < 125 || p > MAX_HEAP_GROWING_PERCENT) t.fail(`${live / MiB} MiB → ${p}: not a multiple of 25 within [125, ${MAX_HEAP_GROWING_PERCENT}]`);
    if (p < MAX_HEAP_GROWING_PERCENT && (live * p) / 100 < RELAY_HEADROOM_BYTES) t.fail(`${live / MiB} MiB → ${p} leaves less than the headroom`);
  }
  t.equal(heapGrowingPercentFor(10 * MiB, 20 * MiB), 200, 'the headroom is a parameter');
});

t.test('effectiveHeadroom: at most an eighth of a memory limit, unchanged without one', async (t) => {
  const MiB = 1024 * 1024;
  const NO_LIMIT = 2 ** 64; // what process.constrainedMemory() returned on this machine, outside a memory-limited cgroup
  t.equal(effectiveHeadroom(128 * MiB, NO_LIMIT), 128 * MiB, 'no limit (2^64)');
  t.equal(effectiveHeadroom(128 * MiB, 9223372036854771712), 128 * MiB, 'no limit, as cgroup v1 says it (2^63 − 4096)');
  t.equal(effectiveHeadroom(128 * MiB, 0), 128 * MiB, 'limit unknown (0)');
  t.equal(effectiveHeadroom(128 * MiB, 512 * MiB), 64 * MiB, 'the DaemonSet\'s 512 MiB limit: 64 MiB');
  t.equal(effectiveHeadroom(128 * MiB, 2048 * MiB), 128 * MiB, 'a limit of 2 GiB leaves the requested 128 MiB');
  t.equal(effectiveHeadroom(0, 512 * MiB), 0, '0 stays 0 (V8\'s own growing)');
});
