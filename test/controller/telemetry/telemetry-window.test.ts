import t from 'tap';
import type { TelemetryDenial, TelemetryEdge } from '../../../shared/proto/gen/ambit.ts';
import type { Workload } from '../../../shared/resources/types.ts';
import { MAX_DENIALS, TelemetryWindow, WINDOW_MS } from '../../../controller/telemetry/telemetry-window.ts';

const wl = (name: string, node: string): Workload => ({
  kind: 'Workload', metadata: { name, namespace: 'demo', labels: {}, revision: 1 },
  spec: { serviceAccount: name, node, address: '10.0.0.1', ports: [], weight: 1, locality: '', healthy: true },
} as unknown as Workload);
const WORKLOADS = new Map([['client', wl('client', 'node-a')], ['web', wl('web', 'node-b')]]);

function edge(reporter: string, o: Partial<TelemetryEdge> = {}): TelemetryEdge {
  return {
    reporter, sourceWorkload: 'client', sourceNamespace: 'demo', sourcePrincipal: 'spiffe://cluster.local/ns/demo/sa/client',
    destinationWorkload: 'web', destinationNamespace: 'demo', destinationPrincipal: 'spiffe://cluster.local/ns/demo/sa/web',
    destinationService: 'web.demo.svc', security: 'mutual_tls', connectionsOpened: 6, connectionsClosed: 6, connectionsFailed: 0,
    bytesSent: 600, bytesReceived: 60, requests: 0, requestErrors: 0, ...o,
  };
}

function denial(o: Partial<TelemetryDenial> = {}): TelemetryDenial {
  return {
    atMs: 0, direction: 'inbound', sourcePrincipal: 'spiffe://cluster.local/ns/demo/sa/intruder', sourceWorkload: 'intruder', sourceNamespace: 'demo',
    sourceAddress: '10.0.0.9', destinationWorkload: 'web', destinationNamespace: 'demo', destinationPort: 8080, destinationService: 'web.demo.svc',
    policy: '', reason: 'no_allow_match', ...o,
  };
}

function setup(): { w: TelemetryWindow; advance: (ms: number) => void } {
  let now = 10_000_000;
  const w = new TelemetryWindow({ now: () => now, workload: (ns, name) => (ns === 'demo' ? WORKLOADS.get(name) : undefined) });
  return { w, advance: (ms) => void (now += ms) };
}

t.test('rates over the last minute, the source\'s view preferred', async (t) => {
  const { w, advance } = setup();
  t.match(w.record('node-a', { edges: [edge('source')], denials: [], denialsDropped: 0 }), { edges: 1, refusedEdges: [] });
  advance(1000);
  w.record('node-a', { edges: [edge('source', { connectionsOpened: 6, connectionsClosed: 6, connectionsFailed: 3 })], denials: [], denialsDropped: 0 });
  // The destination reports the same connections: not counted twice.
  w.record('node-b', { edges: [edge('destination', { connectionsOpened: 100 })], denials: [], denialsDropped: 0 });
  const [e] = w.edges();
  t.match(e, { reporter: 'source', connections: 12, connectionsPerSecond: 12 / 60, errorRate: 3 / 12, security: 'mutual_tls', nodes: ['node-a', 'node-b'] });
  advance(WINDOW_MS - 500);
  t.equal(w.edges()[0]?.connections, 6, 'the first report left the window');
  advance(1000);
  t.same(w.edges(), [], 'and then the second');
});

t.test('without the source\'s report, the destination\'s counts', async (t) => {
  const { w } = setup();
  w.record('node-b', { edges: [edge('destination', { sourceWorkload: 'unknown', security: 'none' })], denials: [], denialsDropped: 0 });
  t.match(w.edges(), [{ reporter: 'destination', connections: 6, security: 'none' }]);
});

t.test('node authorization: a node reports only for its own workloads', async (t) => {
  const { w } = setup();
  const out = w.record('node-a', {
    edges: [edge('destination'), edge('source', { sourceWorkload: 'web' }), edge('sideways')],
    denials: [denial(), denial({ direction: 'outbound', sourceWorkload: 'web' }), denial({ direction: 'x' })],
    denialsDropped: 0,
  });
  t.equal(out.edges, 0);
  t.equal(out.refusedEdges.length, 3, 'node-a cannot report as web\'s destination, nor for web as a source, nor as no reporter');
  t.equal(out.denials, 0);
  t.equal(out.refusedDenials.length, 3, 'node-a cannot report denials web\'s agent made');
  t.same(w.edges(), []);
  t.same(w.denials(), []);
  const ok = w.record('node-b', { edges: [edge('destination')], denials: [denial()], denialsDropped: 0 });
  t.match(ok, { edges: 1, denials: 1, refusedEdges: [], refusedDenials: [] }, 'node-b may: web is its workload');
});

t.test('denials: newest first, bounded, times clamped to the controller\'s clock', async (t) => {
  const { w, advance } = setup();
  for (let i = 0; i < MAX_DENIALS + 10; i++) {
    w.record('node-b', { edges: [], denials: [denial({ destinationPort: i, atMs: 1 })], denialsDropped: 0 });
    advance(10);
  }
  const list = w.denials();
  t.equal(list.length, MAX_DENIALS);
  t.equal(list[0]?.destinationPort, MAX_DENIALS + 9, 'the newest first');
  w.record('node-b', { edges: [], denials: [denial({ destinationPort: 1, atMs: Number.MAX_SAFE_INTEGER })], denialsDropped: 0 });
  t.ok(w.denials()[0]!.at <= 10_000_000 + (MAX_DENIALS + 10) * 10, 'a denial from the future is clamped to now');
});

t.test('request counts: the source\'s when it has them, else the destination\'s; errors per request', async (t) => {
  const { w } = setup();
  w.record('node-a', { edges: [edge('source')], denials: [], denialsDropped: 0 });
  w.record('node-b', { edges: [edge('destination', { connectionsOpened: 0, connectionsClosed: 0, bytesSent: 0, bytesReceived: 0, requests: 30, requestErrors: 3 })], denials: [], denialsDropped: 0 });
  t.match(w.edges(), [{ reporter: 'source', connections: 6, requests: 30, requestsPerSecond: 0.5, errorRate: 0.1 }]);
});
