import t from 'tap';
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { ConnectionAdmission, descriptorLimit, type AdmissionOutcome } from '../../shared/connection-admission.ts';

/** Enough of a net.Socket for admission: a peer address and destroy(), which emits 'close' as a socket does. */
class FakeSocket extends EventEmitter {
  destroyed = false;
  readonly remoteAddress: string;
  readonly remotePort: number;
  constructor(remoteAddress: string, remotePort: number) {
    super();
    this.remoteAddress = remoteAddress;
    this.remotePort = remotePort;
  }
  destroy(): this {
    if (!this.destroyed) {
      this.destroyed = true;
      queueMicrotask(() => this.emit('close'));
    }
    return this;
  }
}

let port = 40_000;
const sock = (addr: string): FakeSocket => new FakeSocket(addr, port++);
const setUp = (limits: { maxConnections?: number; maxPendingPerSource?: number; proveWithinMs?: number } = {}) => {
  const drops: [AdmissionOutcome, string][] = [];
  const a = new ConnectionAdmission({ maxConnections: 4, maxPendingPerSource: 2, proveWithinMs: 60_000, ...limits }, (o, s) => drops.push([o, s]));
  return { a, drops, admit: (s: FakeSocket) => a.admit(s as unknown as Socket) };
};
const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

t.test('pending connections past the per-source cap are refused; other sources are not affected', async (t) => {
  const { a, drops, admit } = setUp();
  const [s1, s2, s3, other] = [sock('10.0.0.1'), sock('10.0.0.1'), sock('10.0.0.1'), sock('10.0.0.2')];
  t.ok(admit(s1) && admit(s2), 'two from one source');
  t.notOk(admit(s3), 'the third is refused');
  t.ok(s3.destroyed, 'and closed');
  t.ok(admit(other), 'another source is admitted');
  t.same(drops, [['refused-per-source', '10.0.0.1']]);
  // An authenticated connection no longer counts against its source's cap.
  a.find('10.0.0.1', s1.remotePort)!.authenticated();
  t.ok(admit(sock('10.0.0.1')), 'a slot frees when one of them authenticates');
});

t.test('at the connection limit the oldest idle pending connection is evicted; authenticated ones and ones with a call are kept', async (t) => {
  const { a, drops, admit } = setUp({ maxPendingPerSource: 10 });
  const proven = sock('10.0.0.1');
  const busy = sock('10.0.0.2');
  const idle1 = sock('10.0.0.3');
  const idle2 = sock('10.0.0.4');
  for (const s of [proven, busy, idle1, idle2]) t.ok(admit(s));
  a.find(proven.remoteAddress, proven.remotePort)!.authenticated();
  a.callStarted(busy.remoteAddress, busy.remotePort);
  const newcomer = sock('10.0.0.5');
  t.ok(admit(newcomer), 'a new connection is admitted at the limit');
  t.ok(idle1.destroyed, 'by evicting the oldest idle pending one');
  t.notOk(proven.destroyed || busy.destroyed || idle2.destroyed, 'the authenticated, the busy and the younger are kept');
  await tick();
  t.equal(a.open, 4);
  t.same(drops, [['evicted', '10.0.0.3']]);
  // Nothing left to evict: refused.
  for (const s of [idle2, newcomer]) a.find(s.remoteAddress, s.remotePort)!.authenticated();
  const late = sock('10.0.0.6');
  t.notOk(admit(late), 'refused when every open connection is authenticated or busy');
  t.same(drops.at(-1), ['refused-full', '10.0.0.6']);
});

t.test('the deadline closes an idle pending connection, waits for a call in progress, and spares an authenticated one', async (t) => {
  const { a, drops, admit } = setUp({ proveWithinMs: 50, maxPendingPerSource: 10 });
  const idle = sock('10.0.0.1');
  const bootstrap = sock('10.0.0.2');
  const proven = sock('10.0.0.3');
  for (const s of [idle, bootstrap, proven]) admit(s);
  const ended = a.callStarted(bootstrap.remoteAddress, bootstrap.remotePort);
  a.find(proven.remoteAddress, proven.remotePort)!.authenticated();
  await new Promise((r) => setTimeout(r, 120));
  t.ok(idle.destroyed, 'idle past the deadline: closed');
  t.notOk(bootstrap.destroyed, 'a certificate-less call in progress keeps its connection');
  t.notOk(proven.destroyed, 'an authenticated connection has no deadline');
  ended();
  t.ok(bootstrap.destroyed, 'closed as soon as that call ends, being past the deadline');
  t.same(drops.map((d) => d[0]), ['expired', 'expired']);
});

t.test('use() makes admission close the layer over the accepted socket', async (t) => {
  const { a, admit } = setUp({ proveWithinMs: 30 });
  const raw = sock('10.0.0.1');
  admit(raw);
  const layer = sock('10.0.0.1');
  let closedLayer = false;
  a.find('10.0.0.1', raw.remotePort)!.use(layer as unknown as Socket, () => {
    closedLayer = true;
    layer.destroy();
  });
  await new Promise((r) => setTimeout(r, 80));
  t.ok(closedLayer, 'the layer is closed at the deadline');
  await tick();
  t.equal(a.open, 0, 'and forgotten when it closes');
});

t.test('descriptorLimit reads the soft limit from /proc/self/limits', async (t) => {
  const limits = 'Limit                     Soft Limit           Hard Limit           Units     \nMax open files            256                  4096                 files     \n';
  t.equal(descriptorLimit(() => limits), 256);
  t.equal(descriptorLimit(() => limits.replace('256 ', 'unlimited ')), undefined, 'unlimited');
  t.equal(descriptorLimit(() => { throw new Error('ENOENT'); }), undefined, 'no /proc');
  const real = descriptorLimit();
  t.ok(real === undefined || real > 0, `this process: ${real}`);
});
