import t from 'tap';
import { Registry } from 'prom-client';
import { createLogger } from '../../../shared/logger.ts';
import { ConnectionRecord, type Peer } from '../../../agent/proxy/connection-record.ts';
import { createAgentMetrics } from '../../../agent/proxy/metrics.ts';

/**
 * ConnectionRecord → the Istio TCP metrics as a scrape of /metrics sees them
 * (Registry.metrics(), the text the agent serves), and one access log line
 * per connection.
 */
const client: Peer = { addr: '10.0.0.1:5000', workload: 'client', namespace: 'default', identity: 'spiffe://cluster.local/ns/default/sa/client' };
const server: Peer = { addr: '10.0.0.2:8080', workload: 'server', namespace: 'default', identity: 'spiffe://cluster.local/ns/default/sa/server' };

function rig() {
  const registry = new Registry();
  const metrics = createAgentMetrics(registry);
  const lines: Record<string, unknown>[] = [];
  const log = createLogger({ name: 'test', level: 'info', destination: { write: (l: string) => void lines.push(JSON.parse(l) as Record<string, unknown>) } });
  const record = (direction: 'inbound' | 'outbound' = 'outbound') =>
    new ConnectionRecord({ direction, src: client, dst: server, service: 'server.default.svc.cluster.local', security: 'mutual_tls', metrics, log });
  /** name{labels} → value, from the exposition text. */
  const scrape = async (): Promise<Map<string, number>> => {
    const out = new Map<string, number>();
    for (const line of (await registry.metrics()).split('\n')) {
      const m = /^((?:istio_tcp|ambit_connections_active)\w*)(\{[^}]*\})? (\S+)$/.exec(line);
      if (!m) continue;
      const flags = /response_flags="([^"]*)"/.exec(m[2] ?? '')?.[1];
      const dir = /direction="([^"]*)"/.exec(m[2] ?? '')?.[1];
      out.set(`${m[1]}${flags ? `[${flags}]` : ''}${dir ? `[${dir}]` : ''}`, Number(m[3]));
    }
    return out;
  };
  return { registry, lines, record, scrape };
}

t.test('a live connection is counted opened, active, with its exact bytes so far', async (t) => {
  const { record, scrape, lines } = rig();
  const r = record();
  r.open();
  r.fromSource(10);
  r.toSource(20);
  r.fromSource(5);
  const m = await scrape();
  t.equal(m.get('istio_tcp_connections_opened_total[-]'), 1);
  t.equal(m.get('istio_tcp_received_bytes_total[-]'), 15, 'bytes from the source, not batched');
  t.equal(m.get('istio_tcp_sent_bytes_total[-]'), 20);
  t.equal(m.get('istio_tcp_connections_closed_total[-]'), undefined, 'not closed yet');
  t.equal(m.get('ambit_connections_active[outbound]'), 1);
  t.equal(m.get('ambit_connections_active[inbound]'), 0);
  t.equal(lines.length, 0, 'no access log line before the end');
  const again = await scrape();
  t.same([...again], [...m], 'a second scrape with nothing new reports the same totals (nothing counted twice)');
});

t.test('connections with the same labels share a series; closed is counted with the flags at the end', async (t) => {
  const { record, scrape, lines } = rig();
  const a = record();
  const b = record();
  a.open();
  b.open();
  a.fromSource(100);
  b.fromSource(1);
  b.toSource(7);
  b.finish();
  let m = await scrape();
  t.equal(m.get('istio_tcp_connections_opened_total[-]'), 2);
  t.equal(m.get('istio_tcp_connections_closed_total[-]'), 1);
  t.equal(m.get('istio_tcp_received_bytes_total[-]'), 101);
  t.equal(m.get('ambit_connections_active[outbound]'), 1);
  a.toSource(3);
  a.finish('policy denies', 'DENY');
  a.toSource(1000); // after the end: the relay's last callbacks
  a.finish('again', 'UF');
  m = await scrape();
  t.equal(m.get('istio_tcp_connections_closed_total[DENY]'), 1, 'closed under the flags it ended with');
  t.equal(m.get('istio_tcp_connections_closed_total[-]'), 1);
  t.equal(m.get('istio_tcp_sent_bytes_total[-]'), 7 + 3, 'bytes stay in the series the connection opened with; none after the end');
  t.equal(m.get('ambit_connections_active[outbound]'), 0, 'finish twice is counted once');
  t.equal(lines.length, 2, 'one access log line per connection');
  const denied = lines.find((l) => l.response_flags === 'DENY');
  t.ok(denied, 'the DENY line is there');
  t.match(denied, { 'src.identity': client.identity, 'dst.identity': server.identity, bytes_recv: 100, bytes_sent: 3, error: 'policy denies', direction: 'outbound', msg: 'connection' });
});

t.test('a connection that never opened is logged but not counted opened or closed', async (t) => {
  const { record, scrape, lines } = rig();
  const r = record('inbound');
  let m = await scrape();
  t.equal(m.get('ambit_connections_active[inbound]'), 1, 'active from the start');
  r.finish('no route', 'NR');
  m = await scrape();
  t.equal(m.get('istio_tcp_connections_opened_total[NR]'), undefined);
  t.equal(m.get('istio_tcp_connections_closed_total[NR]'), undefined);
  t.equal(m.get('ambit_connections_active[inbound]'), 0);
  t.equal(lines.length, 1);
  t.match(lines[0], { response_flags: 'NR', error: 'no route', direction: 'inbound' });
});

t.test('labels differ by reporter and by peer', async (t) => {
  const { registry, record } = rig();
  const out = record('outbound');
  const inn = record('inbound');
  out.open();
  inn.open();
  out.finish();
  inn.finish();
  const text = await registry.metrics();
  const opened = text.split('\n').filter((l) => l.startsWith('istio_tcp_connections_opened_total{'));
  t.equal(opened.length, 2, 'one series per reporter');
  t.ok(opened.some((l) => l.includes('reporter="source"')) && opened.some((l) => l.includes('reporter="destination"')));
  t.ok(opened.every((l) => l.includes(`source_principal="${client.identity}"`) && l.includes('destination_service="server.default.svc.cluster.local"') && l.includes('destination_service_name="server"')), 'the Istio labels carry the peers');
});
