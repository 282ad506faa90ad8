/**
 * Issue 6, promise 3 — CA root rotation with traffic flowing:
 * `ambitctl ca rotate` (prepare: both roots published) → every agent holds
 * the two-root bundle and `ambitctl node list` shows it acknowledged →
 * `--phase activate` (the new root signs) → every certificate the agents hold
 * (workload and node) chains to the new root within seconds: the agents are
 * told the active root and renew at once (1-hour TTLs, so half-life renewal
 * would take ~30 min) → `ambitctl ca show` says retire is safe →
 * `--phase retire` → agents hold only the new root → 5 s more traffic. Zero
 * failed connections throughout; the long-lived connection survives it all.
 * The refusals of an unsafe step are in ca-rotation-guard.test.ts.
 */
import t from 'tap';
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { eventually } from '../harness.ts';
import { agentBundle, certsOf, issuedBy, recentLogs, startMesh, Traffic, type Mesh } from './mesh.ts';

let mesh: Mesh;
t.teardown(async () => mesh?.close());

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

t.test('root rotation prepare → activate → retire under traffic', async (t) => {
  mesh = await startMesh('ca-rotation', 21, ['--cert-ttl', '1h', '--node-cert-ttl', '1h']);
  const { agentA, agentB } = mesh;
  const agents = [agentA, agentB];
  const oldRoot = new X509Certificate(readFileSync(join(mesh.ctl.dataDir, 'ca/signer-cert.pem')));
  for (const ag of agents) t.equal(agentBundle(ag).length, 1, `${ag.node} starts with one root`);

  const traffic = await Traffic.start(mesh, { newEveryMs: 200, roundMs: 100 });
  await sleep(1_000);
  const t0 = Date.now();

  await mesh.ok(['ca', 'rotate']);
  const bundle = readFileSync(join(mesh.ctl.dataDir, 'ca/bundle.pem'), 'utf8');
  const newRoot = new X509Certificate(readFileSync(join(mesh.ctl.dataDir, 'ca/next-cert.pem')));
  for (const ag of agents) {
    await eventually(async () => {
      const fps = agentBundle(ag).map((c) => c.fingerprint256);
      return fps.length === 2 && fps.includes(oldRoot.fingerprint256) && fps.includes(newRoot.fingerprint256);
    }, `${ag.node} holds the two-root bundle`, 15_000);
  }
  t.pass(`prepare: both agents hold old + new root (${Date.now() - t0} ms)`);
  t.equal((bundle.match(/BEGIN CERTIFICATE/g) ?? []).length, 2, 'the controller publishes both roots');
  await eventually(async () => {
    const nodes = JSON.parse(await mesh.ok(['node', 'list', '-o', 'json'])) as { name: string; bundleCurrent: boolean }[];
    return nodes.length === 2 && nodes.every((n) => n.bundleCurrent);
  }, 'node list shows both nodes acknowledged the two-root bundle', 15_000);
  t.pass(`prepare: node list shows BUNDLE current for both nodes (${Date.now() - t0} ms)`);

  await mesh.ok(['ca', 'rotate', '--phase', 'activate']);
  const activatedAt = Date.now();
  for (const ag of agents) {
    await eventually(async () => {
      const certs = (await certsOf(ag)).filter((c) => c.state === 'valid');
      return certs.length >= 2 && certs.every((c) => issuedBy(c.chainPem, newRoot));
    }, `every certificate on ${ag.node} (node and workloads) chains to the new root`, 30_000);
  }
  const renewedMs = Date.now() - activatedAt;
  t.ok(renewedMs < 20_000, `activate: every certificate chains to the new root ${renewedMs} ms after activation (1-hour TTL)`);
  await eventually(async () => {
    const ca = JSON.parse(await mesh.ok(['ca', 'show', '-o', 'json'])) as { rotation: { safeToRetire: boolean; oldRootCertificates: number } };
    return ca.rotation.safeToRetire && ca.rotation.oldRootCertificates === 0;
  }, 'ca show says retire is safe', 10_000);
  t.pass(`ca show: no live certificate from the old root, retire safe (${Date.now() - activatedAt} ms after activation)`);
  const mid = traffic.report();
  t.same(mid.newFailures, [], 'no failed connection through prepare and activate');

  await mesh.ok(['ca', 'rotate', '--phase', 'retire']);
  const retiredAt = Date.now();
  for (const ag of agents) {
    await eventually(async () => {
      const b = agentBundle(ag);
      return b.length === 1 && b[0]!.fingerprint256 === newRoot.fingerprint256;
    }, `${ag.node} holds only the new root`, 15_000);
  }
  t.pass(`retire: both agents hold exactly one root, the new one (${Date.now() - retiredAt} ms)`);
  await sleep(5_000);
  for (let i = 0; i < 5; i++) t.equal(await traffic.oneNew(), '', `new connection ${i + 1} after retire works`);

  const report = await traffic.stop();
  t.comment(`rotation took ${Date.now() - t0} ms; ${report.newOk} new connections ok; ${report.longRounds} long-lived echo rounds`);
  t.same(report.newFailures, [], 'zero failed connections throughout the rotation');
  t.same(report.longFailures, [], 'the long-lived connection survived the rotation intact');
  t.ok(report.newOk > 0 && report.longestOkGapMs < 3_000, `connections kept opening throughout: ${report.newOk} ok, never more than ${report.longestOkGapMs} ms without one (< 3 s)`);
  if (report.longFailures.length + report.newFailures.length > 0) t.comment(recentLogs(mesh, 20));
  for (const ag of agents) {
    t.ok((await certsOf(ag)).every((c) => c.state === 'valid' && !issuedBy(c.chainPem, oldRoot)), `${ag.node}: no certificate from the retired root left`);
  }
  const st = JSON.parse(await mesh.ok(['status', '-o', 'json'])) as { nodes: { name: string; connected: boolean }[] };
  t.ok(['node-a', 'node-b'].every((n) => st.nodes.some((x) => x.name === n && x.connected)), 'both agents still connected to the controller (node certificates from the new root)');
});
