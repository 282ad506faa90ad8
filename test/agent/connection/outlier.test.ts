/**
 * Passive health (agent/connection/outlier.ts) on a fake clock: ejection
 * after consecutive connect failures, its doubling and capped length, the
 * return, a success resetting the count, the share of a service that may be
 * out at once, and the decay of the ejection count while healthy.
 */
import t from 'tap';
import { OutlierDetector, type Ejection } from '../../../agent/connection/outlier.ts';

const SVC = 'web.shop.svc';

function detector(o: Partial<{ consecutiveFailures: number; baseEjectionMs: number; maxEjectionMs: number; maxEjectionPercent: number }> = {}) {
  const clock = { now: 1_000_000 };
  const ejections: Ejection[] = [];
  const d = new OutlierDetector({
    consecutiveFailures: 3, baseEjectionMs: 10_000, maxEjectionMs: 300_000, maxEjectionPercent: 50,
    ...o, now: () => clock.now, onEject: (e) => ejections.push(e),
  });
  const fail = (endpoint: string, times = 1, size = 3): Ejection | undefined => {
    let last: Ejection | undefined;
    for (let i = 0; i < times; i++) last = d.failure(SVC, endpoint, size, 'workload_unreachable', `shop/${endpoint}`);
    return last;
  };
  return { d, clock, ejections, fail };
}

t.test('three failures in a row eject for the base interval, then the endpoint returns', async (t) => {
  const { d, clock, ejections, fail } = detector();
  t.equal(fail('10.0.0.1:80', 2), undefined, 'two failures: still in');
  t.notOk(d.isEjected(SVC, '10.0.0.1:80'));
  const e = fail('10.0.0.1:80');
  t.match(e, { service: SVC, endpoint: '10.0.0.1:80', workload: 'shop/10.0.0.1:80', reason: 'workload_unreachable', since: 1_000_000, until: 1_010_000, ejections: 1 }, 'the third ejects it for 10 s');
  t.ok(d.isEjected(SVC, '10.0.0.1:80'));
  t.same(d.ejected().map((x) => x.endpoint), ['10.0.0.1:80'], 'listed');
  t.equal(ejections.length, 1, 'reported once');
  t.equal(fail('10.0.0.1:80', 5), undefined, 'failures while ejected (attempts begun before) change nothing');
  t.equal(d.ejected()[0]!.until, 1_010_000, 'nor its end');
  clock.now += 9_999;
  t.ok(d.isEjected(SVC, '10.0.0.1:80'), 'still out 1 ms before its end');
  clock.now += 1;
  t.notOk(d.isEjected(SVC, '10.0.0.1:80'), 'back once the interval passed');
  t.same(d.ejected(), [], 'no longer listed');
  t.notOk(d.isEjected(SVC, '10.0.0.2:80'), 'an endpoint never seen is in');
});

t.test('a success resets the consecutive count', async (t) => {
  const { d, fail } = detector();
  fail('10.0.0.1:80', 2);
  d.success(SVC, '10.0.0.1:80');
  t.equal(fail('10.0.0.1:80', 2), undefined, 'two more after a success: still in');
  t.ok(fail('10.0.0.1:80'), 'three in a row eject');
});

t.test('each further ejection doubles the interval, capped; time back in service forgives', async (t) => {
  const { d, clock, fail } = detector({ maxEjectionMs: 35_000 });
  const lengths: number[] = [];
  for (let i = 0; i < 4; i++) {
    const e = fail('10.0.0.1:80', 3)!;
    lengths.push(e.until - e.since);
    clock.now = e.until; // returns, and fails again at once
    t.notOk(d.isEjected(SVC, '10.0.0.1:80'));
  }
  t.same(lengths, [10_000, 20_000, 35_000, 35_000], '10 s, 20 s, then the cap');
  // Healthy for three base intervals: three ejections forgiven (4 → 1), the next is the second.
  d.success(SVC, '10.0.0.1:80');
  clock.now += 30_000;
  const e = fail('10.0.0.1:80', 3)!;
  t.equal(e.ejections, 2, 'the count decayed while it served');
  t.equal(e.until - e.since, 20_000);
});

t.test('at most the configured share of a service is ejected at once (at least one)', async (t) => {
  const { d, clock, fail } = detector();
  t.ok(fail('10.0.0.1:80', 3, 3), 'one of three: allowed (50 % of 3 rounds down to 1)');
  t.equal(fail('10.0.0.2:80', 3, 3), undefined, 'a second of three would be 67 %: kept in');
  t.notOk(d.isEjected(SVC, '10.0.0.2:80'));
  t.equal(d.ejectedIn(SVC), 1);
  t.ok(d.failure('other.shop.svc', '10.0.0.2:80', 3, 'connect_failed') === undefined && d.failure('other.shop.svc', '10.0.0.2:80', 3, 'connect_failed') === undefined && d.failure('other.shop.svc', '10.0.0.2:80', 3, 'connect_failed'), 'another service counts its own share');
  clock.now += 10_000;
  t.ok(fail('10.0.0.2:80', 1, 3), 'once the first returned, the next failure of the second ejects it (its count went on)');
  const four = detector();
  t.ok(four.fail('a', 3, 4) && four.fail('b', 3, 4), 'two of four: 50 %');
  t.equal(four.fail('c', 3, 4), undefined, 'not three');
  const one = detector();
  t.ok(one.fail('a', 3, 1), 'a service of one endpoint may have it ejected (the planner then tries it anyway)');
  const none = detector({ maxEjectionPercent: 0 });
  t.equal(none.fail('a', 10, 3), undefined, '0 %: never');
});

t.test('consecutive failures is configurable', async (t) => {
  const { fail } = detector({ consecutiveFailures: 1 });
  t.ok(fail('10.0.0.1:80'), 'one failure ejects when the threshold is 1');
});
