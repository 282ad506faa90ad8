import t from 'tap';
import { destinationWait, followRelated, SubscriptionTimeout, Subscriptions } from '../../../agent/state/subscriptions.ts';
import { routeBackends } from '../../../agent/state/route-backends.ts';

function recording(max: number) {
  const sent: { hosts: readonly string[]; drop: readonly string[] }[] = [];
  const subs = new Subscriptions({ max, send: (hosts, drop) => sent.push({ hosts, drop }) });
  return { subs, sent };
}

t.test('first use asks once and waits for the answer; later uses do not wait', async (t) => {
  const { subs, sent } = recording(10);
  const p1 = subs.use('web.shop', 1_000);
  const p2 = subs.use('web.shop', 1_000);
  t.ok(p1 && p2, 'both wait');
  t.same(sent, [{ hosts: ['web.shop'], drop: [] }], 'asked once');
  t.same(subs.state('web.shop'), { found: undefined });
  subs.answered([{ host: 'web.shop', found: true }]);
  await Promise.all([p1, p2]);
  t.equal(subs.use('web.shop', 1_000), undefined, 'answered: no wait');
  t.equal(sent.length, 1);
  const p3 = subs.use('10.0.0.9', 1_000)!;
  subs.answered([{ host: '10.0.0.9', found: false }]);
  await p3;
  t.same(subs.state('10.0.0.9'), { found: false }, '"not in the mesh" is kept like a service');
  t.equal(subs.use('10.0.0.9', 1_000), undefined);
});

t.test('no answer within the timeout rejects; the host stays asked for', async (t) => {
  const { subs } = recording(10);
  await t.rejects(subs.use('db.data', 20)!, SubscriptionTimeout);
  t.same(subs.hosts(), ['db.data'], 'still followed: the next WatchStart carries it');
  const again = subs.use('db.data', 1_000);
  t.ok(again, 'still waiting for an answer');
  subs.answered([{ host: 'db.data', found: true }]);
  await again;
});

t.test('the set is bounded: the least recently used answered host is dropped', async (t) => {
  const { subs, sent } = recording(2);
  for (const h of ['a.ns', 'b.ns']) {
    const p = subs.use(h, 1_000);
    subs.answered([{ host: h, found: true }]);
    await p;
  }
  subs.use('a.ns', 1_000); // a is now the most recently used
  const p = subs.use('c.ns', 1_000)!;
  t.same(sent.at(-1), { hosts: ['c.ns'], drop: ['b.ns'] }, 'b, least recently used, goes with the request for c');
  t.same(subs.hosts(), ['a.ns', 'c.ns']);
  // A host still waiting is never dropped, even past the bound.
  const q = subs.use('d.ns', 1_000)!;
  t.same(sent.at(-1), { hosts: ['d.ns'], drop: ['a.ns'] });
  t.same(subs.hosts().sort(), ['c.ns', 'd.ns'], 'c and d both wait: kept');
  subs.answered([{ host: 'c.ns', found: true }, { host: 'd.ns', found: true }, { host: 'gone.ns', found: true }]);
  await Promise.all([p, q]);
  t.equal(subs.size, 2);
});

t.test('destinationWait: only mesh names and addresses are asked; with the controller away, held state serves at once', async (t) => {
  const { subs, sent } = recording(10);
  let connected = true;
  const held = new Set(['10.96.0.1']);
  const wait = destinationWait(subs, { timeoutMs: 1_000, connected: () => connected, holds: (h) => held.has(h) });
  t.equal(wait('api.github.com'), undefined, 'a name outside the mesh\'s service names: passthrough, nothing asked');
  t.equal(sent.length, 0);
  const w = wait('web.shop.svc.cluster.local');
  t.ok(w, 'a service name waits');
  t.same(sent.at(-1), { hosts: ['web.shop'], drop: [] }, 'asked as name.namespace');
  subs.answered([{ host: 'web.shop', found: true }]);
  await w;
  connected = false;
  t.equal(wait('10.96.0.1'), undefined, 'controller away, cached state holds it: served now');
  t.same(subs.hosts(), ['web.shop', '10.96.0.1'], 'and followed once the watch is back');
  const unknown = wait('10.96.0.2');
  t.ok(unknown, 'controller away and not held: waits (then times out)');
  subs.answered([{ host: '10.96.0.2', found: false }]);
  await unknown;
});

t.test('a change of the followed set is reported (a new host, a drop); a use of one followed is not', async (t) => {
  let changes = 0;
  const subs = new Subscriptions({ max: 1, send: () => undefined, changed: () => void changes++ });
  const p = subs.use('a.ns', 1_000)!;
  t.equal(changes, 1, 'a new host');
  subs.answered([{ host: 'a.ns', found: true }]);
  await p;
  t.equal(changes, 1, 'an answer changes no host');
  t.equal(subs.use('a.ns', 1_000), undefined);
  t.equal(changes, 1, 'a use of a followed host neither');
  subs.use('b.ns', 1_000)?.catch(() => undefined);
  t.same(subs.hosts(), ['b.ns'], 'a dropped for b');
  t.equal(changes, 2, 'one change for the new host and its drop');
  subs.answered([{ host: 'b.ns', found: true }]);
});

t.test('restore: cached hosts are followed in their use order without asking; held ones do not wait, others wait for the first answer', async (t) => {
  const { subs, sent } = recording(10);
  let changes = 0;
  const counted = new Subscriptions({ max: 10, send: () => undefined, changed: () => void changes++ });
  counted.restore(['a.ns'], () => true);
  t.equal(changes, 0, 'restoring is no change to save: the cache holds it already');
  const held = new Set(['web.shop', '10.96.0.1']);
  subs.restore(['db.data', 'web.shop', '10.96.0.1'], (h) => held.has(h));
  t.same(subs.hosts(), ['db.data', 'web.shop', '10.96.0.1'], 'least recently used first, as cached');
  t.same(sent, [], 'nothing sent: the next WatchStart carries them');
  t.same(subs.state('web.shop'), { found: true }, 'held: answered by the cached state');
  t.same(subs.state('db.data'), { found: undefined }, 'not held: waiting for the controller');
  // Connected (the stream is up, its first snapshot not applied yet): a held host still goes on at once from the cached state.
  const wait = destinationWait(subs, { timeoutMs: 1_000, connected: () => true, holds: (h) => held.has(h) });
  t.equal(wait('web.shop.svc.cluster.local'), undefined, 'a connection to a restored, held service does not wait');
  t.equal(wait('10.96.0.1'), undefined, 'nor to a restored, held address');
  const w = wait('db.data');
  t.ok(w, 'a restored host the cache does not hold waits for the answer');
  t.same(sent, [], 'without asking again: the WatchStart asks');
  subs.answered([{ host: 'db.data', found: true }, { host: 'web.shop', found: false }]);
  await w;
  t.same(subs.state('web.shop'), { found: false }, 'the snapshot\'s answer replaces the cached one');
  t.same(subs.hosts(), ['web.shop', '10.96.0.1', 'db.data'], 'in the order the connections used them since');
});

t.test('restore keeps LRU order with hosts used since start, and the bound (most recently used kept)', async (t) => {
  const { subs, sent } = recording(3);
  const p = subs.use('new.ns', 1_000)!;
  subs.restore(['old1.ns', 'old2.ns', 'new.ns', 'old3.ns'], () => true);
  t.same(subs.hosts(), ['old2.ns', 'old3.ns', 'new.ns'], 'room for two: the two most recently used cached hosts, before the one used since start; a host already followed keeps its place');
  t.same(subs.state('new.ns'), { found: undefined }, 'the one used since start still waits for its own answer');
  t.equal(sent.length, 1, 'only the use asked');
  subs.answered([{ host: 'new.ns', found: true }]);
  await p;
  subs.use('next.ns', 1_000)?.catch(() => undefined);
  t.same(sent.at(-1), { hosts: ['next.ns'], drop: ['old2.ns'] }, 'eviction takes the least recently used restored host first');
  const full = recording(2).subs;
  full.restore(['a.ns', 'b.ns', 'c.ns'], () => false);
  t.same(full.hosts(), ['b.ns', 'c.ns'], 'beyond the bound: the most recently used');
  full.answered([{ host: 'b.ns', found: true }, { host: 'c.ns', found: true }]);
});

t.test('routeBackends: backends and mirrors of the routes attached to a service', async (t) => {
  const ref = (name: string, namespace = 'shop') => ({ group: '', kind: 'Service', namespace, name, port: 80 });
  const routes = [
    { kind: 'HTTPRoute', metadata: { name: 'split', namespace: 'shop', labels: {}, revision: 1 }, spec: { parentRefs: [{ group: '', kind: 'Service', namespace: 'shop', name: 'web' }], hostnames: [], rules: [
      { matches: [], filters: [{ type: 'RequestMirror', requestMirror: { backendRef: ref('shadow'), percent: 10 } }], backendRefs: [{ ...ref('web'), weight: 1, filters: [] }, { ...ref('web-v2'), weight: 1, filters: [] }] },
    ] } },
    { kind: 'GRPCRoute', metadata: { name: 'other', namespace: 'shop', labels: {}, revision: 1 }, spec: { parentRefs: [{ group: '', kind: 'Service', namespace: 'shop', name: 'api' }], hostnames: [], rules: [
      { matches: [], filters: [], backendRefs: [{ ...ref('api-v2'), weight: 1, filters: [] }] },
    ] } },
  ] as unknown as Parameters<typeof routeBackends>[0];
  t.same(routeBackends(routes, 'web.shop').sort(), ['shadow.shop', 'web-v2.shop'], 'the parent itself left out');
  t.same(routeBackends(routes, 'api.shop'), ['api-v2.shop']);
  t.same(routeBackends(routes, 'db.shop'), []);
});

t.test('destinationWait waits for a service\'s route backends too; followRelated follows backends a route gains', async (t) => {
  const { subs, sent } = recording(10);
  let backends: Record<string, string[]> = { 'web.shop': ['web-v2.shop'] };
  const related = (h: string) => backends[h] ?? [];
  const wait = destinationWait(subs, { timeoutMs: 1_000, connected: () => true, holds: () => false, related });
  let done = false;
  const w = wait('web.shop')!.then(() => (done = true));
  subs.answered([{ host: 'web.shop', found: true }]);
  await new Promise((r) => setImmediate(r));
  t.same(sent.at(-1), { hosts: ['web-v2.shop'], drop: [] }, 'the backend is asked for once the parent is answered');
  t.notOk(done, 'the connection still waits for the backend');
  subs.answered([{ host: 'web-v2.shop', found: true }]);
  await w;
  t.ok(done);
  backends = { 'web.shop': ['web-v2.shop', 'web-v3.shop'] };
  followRelated(subs, related, 1_000);
  t.same(sent.at(-1), { hosts: ['web-v3.shop'], drop: [] }, 'a backend a route gained is followed without a connection');
  subs.answered([{ host: 'web-v3.shop', found: true }]);
});
