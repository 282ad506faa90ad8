/**
 * Issue 6, promise 2 — certificate rotation: workload certificates renew
 * (1-minute TTL: renewal 24–36 s after issue) while a long-lived tunnelled
 * connection keeps echoing and a new connection opens every 200 ms. The
 * long-lived connection must never break and no new connection may fail.
 */
import t from 'tap';
import { CLIENT_ID, metric, recentLogs, serialOf, startMesh, Traffic, WEB_ID, type Mesh } from './mesh.ts';

let mesh: Mesh;
t.teardown(async () => mesh?.close());

t.test('workload certificates renew under traffic; nothing breaks', async (t) => {
  mesh = await startMesh('cert-rotation', 1, ['--cert-ttl', '1m']);
  const { agentA, agentB } = mesh;
  const before = { client: await serialOf(agentA, CLIENT_ID), web: await serialOf(agentB, WEB_ID) };
  t.ok(before.client && before.web, 'both workloads hold a certificate');
  const renewalsBefore = { client: await metric(agentA, 'ambit_certificate_renewals_total', { identity: CLIENT_ID }), web: await metric(agentB, 'ambit_certificate_renewals_total', { identity: WEB_ID }) };

  const traffic = await Traffic.start(mesh, { newEveryMs: 200, roundMs: 100 });
  const started = Date.now();
  let renewed = false;
  let after = { client: '', web: '' };
  while (Date.now() - started < 50_000) {
    after = { client: await serialOf(agentA, CLIENT_ID), web: await serialOf(agentB, WEB_ID) };
    if (after.client && after.web && after.client !== before.client && after.web !== before.web) {
      renewed = true;
      break;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  const renewedAfterMs = Date.now() - started;
  // Keep traffic going a little past the last renewal: connections on the new certificates too.
  await new Promise((r) => setTimeout(r, 3_000));
  const report = await traffic.stop();
  t.comment(`renewal of both workload certificates seen after ${renewedAfterMs} ms; long-lived echo rounds ${report.longRounds}; new connections ok ${report.newOk}`);

  t.ok(renewed, `both workload certificates renewed within 50 s (client ${before.client} → ${after.client}, web ${before.web} → ${after.web})`);
  t.ok(await metric(agentA, 'ambit_certificate_renewals_total', { identity: CLIENT_ID }) > renewalsBefore.client, 'node-a counts the client renewal');
  t.ok(await metric(agentB, 'ambit_certificate_renewals_total', { identity: WEB_ID }) > renewalsBefore.web, 'node-b counts the web renewal');
  t.same(report.longFailures, [], 'the long-lived connection never broke; every echo came back intact');
  t.ok(report.longRounds > 100, `the long-lived connection carried traffic throughout (${report.longRounds} rounds)`);
  t.same(report.newFailures, [], 'no new connection failed');
  t.ok(report.newOk > 0 && report.longestOkGapMs < 3_000, `new connections kept opening: ${report.newOk} ok, never more than ${report.longestOkGapMs} ms without one (< 3 s)`);
  if (report.longFailures.length + report.newFailures.length > 0) t.comment(recentLogs(mesh));
  t.equal(await traffic.oneNew(), '', 'a new connection after renewal works');
});
