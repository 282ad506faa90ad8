/**
 * tuneGcForRelaying (agent/proxy/gc-tuning.ts): with it, relaying bytes
 * through a process that holds an agent's amount of live heap is done by
 * young-generation collections, not by a stream of full mark-compacts; and
 * heapGrowingPercentFor, the room it leaves, as a table.
 *
 * Real processes and sockets on 127.0.17.1: a client sends MIB MiB through
 * two relay processes joined by an HTTP/2 CONNECT stream (the agents' relay
 * and HTTP/2 settings; test/agent/proxy/fixtures/relay-gc.ts) to a sink, once
 * with V8's defaults and once tuned. Each side counts its collections. The
 * untuned run is the control: it shows the fixture reproduces what the
 * agents did in the bench (26–38 full collections each per 2 GiB with only
 * the external-memory setting, 8–10 in a process of half their heap), so
 * the tuned run's low count means something. Counts, not times: what V8
 * decides to do does not depend on how busy the machine is the way a
 * duration would.
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
const FIXTURE = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'relay-gc.ts');
const MIB = 1024;
const CHUNK = 64 * 1024;

interface Counts { role: string; mode: string; major: number; minor: number }

function startSide(t: Test, role: 'src' | 'dst', mode: 'tuned' | 'untuned', port: number): Promise<{ child: ChildProcess; port: number; lines: AsyncIterator<string> }> {
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
async function relayThrough(t: Test, mode: 'tuned' | 'untuned'): Promise<{ received: number; src: Counts; dst: Counts }> {
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

t.test('relaying with the agent\'s GC tuning takes few full collections; without it, many', async (t) => {
  const untuned = await relayThrough(t, 'untuned');
  const tuned = await relayThrough(t, 'tuned');
  const total = MIB * 1024 * 1024;
  t.equal(untuned.received, total, 'untuned: every byte arrived');
  t.equal(tuned.received, total, 'tuned: every byte arrived');
  t.comment(`full collections per ${MIB} MiB, source / destination side: untuned ${untuned.src.major} / ${untuned.dst.major}, tuned ${tuned.src.major} / ${tuned.dst.major}; young-generation collections: untuned ${untuned.src.minor} / ${untuned.dst.minor}, tuned ${tuned.src.minor} / ${tuned.dst.minor}`);
  // The control: V8's defaults keep collecting the whole heap (measured 17–24 per GiB a side).
  for (const side of [untuned.src, untuned.dst]) t.ok(side.major >= 8, `control (${side.role}, untuned): V8's defaults take many full collections (${side.major})`);
  // Tuned: measured 1–2 per GiB a side.
  for (const [i, side] of [tuned.src, tuned.dst].entries()) {
    const control = i === 0 ? untuned.src : untuned.dst;
    t.ok(side.major * 4 <= control.major, `${side.role}, tuned: ${side.major} full collections, at most a quarter of the untuned ${control.major}`);
    t.ok(side.minor > 0, `${side.role}, tuned: the Buffers are reclaimed by young-generation collections (${side.minor})`);
  }
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
    [128 * MiB, 0, 'at the headroom V8\'s own factor (about 2×) leaves the room: 0 hands it back'],
    [1024 * MiB, 0, 'a large heap: V8 decides'],
  ];
  for (const [live, percent, why] of rows) t.equal(heapGrowingPercentFor(live), percent, `${live / MiB} MiB live → ${percent} (${why})`);
  for (let live = MiB; live < 128 * MiB; live += MiB) {
    const p = heapGrowingPercentFor(live);
    if (p % 25 !== 0 || p < 100 || p > MAX_HEAP_GROWING_PERCENT) t.fail(`${live / MiB} MiB → ${p}: not a multiple of 25 within [100, ${MAX_HEAP_GROWING_PERCENT}]`);
    if (p < MAX_HEAP_GROWING_PERCENT && (live * p) / 100 < RELAY_HEADROOM_BYTES) t.fail(`${live / MiB} MiB → ${p} leaves less than the headroom`);
  }
  t.equal(heapGrowingPercentFor(10 * MiB, 20 * MiB), 200, 'the headroom is a parameter');
});

t.test('effectiveHeadroom: at most an eighth of a memory limit, unchanged without one', async (t) => {
  const MiB = 1024 * 1024;
  const NO_LIMIT = 2 ** 64; // what process.constrainedMemory() returns outside a memory-limited cgroup
  t.equal(effectiveHeadroom(128 * MiB, NO_LIMIT), 128 * MiB, 'no limit (2^64)');
  t.equal(effectiveHeadroom(128 * MiB, 0), 128 * MiB, 'limit unknown (0)');
  t.equal(effectiveHeadroom(128 * MiB, 512 * MiB), 64 * MiB, 'the DaemonSet\'s 512 MiB limit: 64 MiB');
  t.equal(effectiveHeadroom(128 * MiB, 2048 * MiB), 128 * MiB, 'a limit of 2 GiB leaves the requested 128 MiB');
  t.equal(effectiveHeadroom(0, 512 * MiB), 0, '0 stays 0 (V8\'s own growing)');
});
