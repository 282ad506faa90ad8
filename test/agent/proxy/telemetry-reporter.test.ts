import t from 'tap';
import { TCP_LABELS, TcpSeriesTable, type TcpLabels } from '../../../agent/proxy/metrics.ts';
import { MAX_PENDING_DENIALS, TelemetryReporter } from '../../../agent/proxy/telemetry-reporter.ts';

const labels = (flags = '-'): TcpLabels => ({
  ...(Object.fromEntries(TCP_LABELS.map((l) => [l, 'unknown'])) as TcpLabels),
  reporter: 'source', source_workload: 'client', source_workload_namespace: 'demo', source_principal: 'spiffe://cluster.local/ns/demo/sa/client',
  destination_workload: 'web', destination_workload_namespace: 'demo', destination_principal: 'spiffe://cluster.local/ns/demo/sa/web',
  destination_service: 'web.demo.svc.cluster.local', connection_security_policy: 'mutual_tls', response_flags: flags,
});

t.test('reports what each series grew by since the last report, once', async (t) => {
  const tcp = new TcpSeriesTable();
  const r = new TelemetryReporter(tcp, () => 42);
  t.equal(r.take(), undefined, 'nothing happened: nothing to report');
  const ok = tcp.series(labels());
  ok.opened += 3;
  ok.closed += 2;
  ok.sent += 300;
  ok.received += 30;
  const failed = tcp.series(labels('UF'));
  failed.closed += 1;
  const first = r.take();
  t.match(first?.edges, [
    { reporter: 'source', sourceWorkload: 'client', destinationService: 'web.demo.svc.cluster.local', security: 'mutual_tls', connectionsOpened: 3, connectionsClosed: 2, connectionsFailed: 0, bytesSent: 300, bytesReceived: 30 },
    { connectionsOpened: 0, connectionsClosed: 1, connectionsFailed: 1 },
  ]);
  t.equal(r.take(), undefined, 'reported once');
  ok.opened += 1;
  t.match(r.take()?.edges, [{ connectionsOpened: 1, connectionsClosed: 0, bytesSent: 0 }], 'then only the growth');
});

t.test('denials: passed on once, bounded, with the overflow counted', async (t) => {
  const r = new TelemetryReporter(new TcpSeriesTable(), () => 7);
  const d = {
    direction: 'inbound', sourcePrincipal: 'spiffe://cluster.local/ns/demo/sa/intruder', sourceWorkload: 'intruder', sourceNamespace: 'demo', sourceAddress: '10.0.0.9',
    destinationWorkload: 'web', destinationNamespace: 'demo', destinationPort: 8080, destinationService: 'web.demo.svc.cluster.local', policy: '', reason: 'no_allow_match',
  };
  for (let i = 0; i < MAX_PENDING_DENIALS + 5; i++) r.denied(d);
  const rep = r.take();
  t.equal(rep?.denials.length, MAX_PENDING_DENIALS);
  t.equal(rep?.denialsDropped, 5);
  t.match(rep?.denials[0], { ...d, atMs: 7 });
  t.equal(r.take(), undefined, 'nothing twice');
});

t.test('request counts per edge, with 5xx, no response and response flags counted as errors', async (t) => {
  const r = new TelemetryReporter(new TcpSeriesTable(), () => 7);
  r.requests({ ...labels(), response_code: '200' }, 8);
  r.requests({ ...labels(), response_code: '404' }, 1);
  r.requests({ ...labels(), response_code: '503' }, 2);
  r.requests({ ...labels(), response_code: '0' }, 1);
  r.requests({ ...labels('UF'), response_code: '200' }, 1);
  const rep = r.take();
  t.equal(rep?.edges.length, 1, 'one edge: response codes and flags are not part of it');
  t.match(rep?.edges[0], { sourceWorkload: 'client', destinationService: 'web.demo.svc.cluster.local', connectionsOpened: 0, requests: 13, requestErrors: 4 });
  t.equal(r.take(), undefined, 'reported once');
});
