import t from 'tap';
import { Backoff, jitter, sleep } from '../../shared/backoff.ts';

/** A random source that returns the given values in turn. */
function seq(...values: number[]): () => number {
  let i = 0;
  return () => values[i++ % values.length]!;
}

t.test('with random → 1 the delay is the ceiling, which doubles up to the cap', async (t) => {
  const b = new Backoff({ initialMs: 100, maxMs: 1000, random: () => 1 });
  t.same([1, 2, 3, 4, 5, 6].map(() => b.next()), [100, 200, 400, 800, 1000, 1000]);
  t.equal(b.attempt, 6);
});

t.test('with random → 0 the delay is the floor (minMs, default min(initial, 50))', async (t) => {
  const b = new Backoff({ initialMs: 100, maxMs: 1000, random: () => 0 });
  t.same([b.next(), b.next(), b.next()], [50, 50, 50]);
  const small = new Backoff({ initialMs: 10, maxMs: 1000, random: () => 0 });
  t.equal(small.next(), 10, 'floor is initialMs when it is under 50');
  const floored = new Backoff({ initialMs: 100, maxMs: 1000, minMs: 80, random: () => 0 });
  t.equal(floored.next(), 80);
});

t.test('full jitter: every delay lies in [minMs, min(max, initial·factor^n)]', async (t) => {
  let x = 0.123;
  const random = (): number => (x = (x * 9301 + 0.49297) % 1);
  const b = new Backoff({ initialMs: 200, maxMs: 5000, factor: 3, minMs: 20, random });
  for (let n = 0; n < 12; n++) {
    const ceiling = Math.min(5000, 200 * 3 ** n);
    const d = b.next();
    t.ok(d >= 20 && d <= ceiling, `attempt ${n}: ${d} in [20, ${ceiling}]`);
  }
  const half = new Backoff({ initialMs: 100, maxMs: 10_000, minMs: 0, random: () => 0.5 });
  t.same([half.next(), half.next(), half.next()], [50, 100, 200], 'uniform: the midpoint at 0.5');
});

t.test('growth stays finite and capped after many failures', async (t) => {
  const b = new Backoff({ initialMs: 1000, maxMs: 30_000, random: () => 1 });
  let last = 0;
  for (let i = 0; i < 2000; i++) last = b.next();
  t.equal(last, 30_000);
  t.ok(b.attempt <= 64, 'attempt counter is bounded');
});

t.test('reset starts over at the first delay', async (t) => {
  const b = new Backoff({ initialMs: 100, maxMs: 1000, random: () => 1 });
  b.next();
  b.next();
  b.next();
  t.equal(b.attempt, 3);
  b.reset();
  t.equal(b.attempt, 0);
  t.equal(b.next(), 100);
  t.equal(b.next(), 200);
});

t.test('jitter spreads around the base by ± spread', async (t) => {
  t.equal(jitter(1000, 0.1, () => 0), 900);
  t.equal(jitter(1000, 0.1, () => 1), 1100);
  t.equal(jitter(1000, 0.1, () => 0.5), 1000);
  t.equal(jitter(1000, 0, seq(0, 1)), 1000, 'no spread, no jitter');
  const r = seq(0.01, 0.37, 0.5, 0.93, 0.999);
  for (let i = 0; i < 5; i++) {
    const d = jitter(43_200_000, 0.2, r);
    t.ok(d >= 34_560_000 && d <= 51_840_000, `${d} within ±20% of 12h`);
  }
  const v = jitter(1000, 0.5);
  t.ok(v >= 500 && v <= 1500, 'default random stays in bounds');
});

t.test('sleep resolves after the delay', async (t) => {
  const start = performance.now();
  await sleep(30);
  t.ok(performance.now() - start >= 25);
  await sleep(5, new AbortController().signal);
});

t.test('sleep rejects early with the abort reason', async (t) => {
  const ac = new AbortController();
  const start = performance.now();
  const p = sleep(10_000, ac.signal);
  setTimeout(() => ac.abort(new Error('shutting down')), 10);
  await t.rejects(p, { message: 'shutting down' });
  t.ok(performance.now() - start < 5_000, 'did not wait the full delay');
});

t.test('sleep with an already-aborted signal rejects at once', async (t) => {
  const reason = new Error('gone');
  await t.rejects(sleep(10_000, AbortSignal.abort(reason)), reason);
});

t.test('a finished sleep leaves no abort listener behind', async (t) => {
  const ac = new AbortController();
  let added = 0;
  let removed = 0;
  const signal = ac.signal;
  const add = signal.addEventListener.bind(signal);
  const remove = signal.removeEventListener.bind(signal);
  signal.addEventListener = ((...args: Parameters<typeof add>) => { added++; add(...args); }) as typeof signal.addEventListener;
  signal.removeEventListener = ((...args: Parameters<typeof remove>) => { removed++; remove(...args); }) as typeof signal.removeEventListener;
  await sleep(1, signal);
  await sleep(1, signal);
  t.equal(added, 2);
  t.equal(removed, 2);
  ac.abort(new Error('late'));
});
