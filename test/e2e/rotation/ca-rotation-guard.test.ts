/**
 * Issue 6, promise 3 — CA root rotation is guarded, prompt and visible, with
 * real processes and 1-hour certificate TTLs (so half-life renewal cannot be
 * what moves anything within the test):
 *
 * - `activate` is refused (AMBIT_ERR_CA_ROTATION_UNSAFE, naming the node)
 *   while a node's agent has not acknowledged the bundle holding the new root;
 *   `ambitctl node list` shows which (BUNDLE current/stale).
 * - After `activate`, agents renew every certificate from the old root within
 *   seconds (they are told which root is active), not at half-life.
 * - `retire` is refused while a live certificate still chains to the old root
 *   (here: node-b was down during activation), naming the node, the count and
 *   until when; `ambitctl ca show` shows the same. Once node-b is back it
 *   renews at once and retire goes through.
 * - `--force` overrides the guard — and shows what the guard prevents: a node
 *   that missed the new root cannot verify the controller (whose serving
 *   certificate the new root now signs) nor its peers' new certificates, so
 *   it stays cut off until it joins again.
 */
import t from 'tap';
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ambitctl, eventually, startAgent, type RunningAgent } from '../harness.ts';
import { agentBundle, certsOf, issuedBy, newConnection, startMesh, type Mesh } from './mesh.ts';

let mesh: Mesh;
let agentB: RunningAgent | undefined;
t.teardown(async () => {
  await agentB?.proc.stop();
  await mesh?.close();
});

interface NodeJson {
  readonly name: string;
  readonly connected: boolean;
  readonly bundleCurrent: boolean;
  readonly trustedRoots: string[];
  readonly oldRootCertificates: number;
  readonly oldRootCertificatesUntilMs: number;
}
interface RotationJson {
  readonly phase: string;
  readonly nodesWithoutBundle: string[];
  readonly oldRootCertificates: number;
  readonly nodesWithOldCertificates: string[];
  readonly safeToActivate: boolean;
  readonly safeToRetire: boolean;
  readonly blocking: string;
}

const fp = (c: X509Certificate): string => c.fingerprint256.replace(/:/g, '').toLowerCase();

t.test('activate and retire wait for the nodes; agents renew at activation; --force overrides', async (t) => {
  mesh = await startMesh('ca-rotation-guard', 20, ['--cert-ttl', '1h', '--node-cert-ttl', '1h'], '127.0.15');
  const { agentA } = mesh;
  agentB = mesh.agentB;
  const nodeList = async (): Promise<NodeJson[]> => JSON.parse(await mesh.ok(['node', 'list', '-o', 'json'])) as NodeJson[];
  const nodeOf = async (name: string): Promise<NodeJson> => (await nodeList()).find((n) => n.name === name)!;
  const rotation = async (): Promise<RotationJson> => (JSON.parse(await mesh.ok(['ca', 'show', '-o', 'json'])) as { rotation: RotationJson }).rotation;
  const rotate = (...args: string[]) => ambitctl(mesh.ctl, ['ca', 'rotate', ...args]);
  const startB = async (): Promise<RunningAgent> => {
    agentB = await startAgent({ node: 'node-b', address: mesh.ips.b, controller: mesh.ctl.address, dataDir: join(mesh.root, 'b') });
    return agentB;
  };
  const stopB = async (): Promise<void> => {
    await agentB!.proc.stop();
    await eventually(async () => !(await nodeOf('node-b')).connected, 'the controller sees node-b gone');
  };
  const allFrom = async (ag: RunningAgent, root: X509Certificate): Promise<boolean> => {
    const certs = (await certsOf(ag)).filter((c) => c.state === 'valid');
    return certs.length >= 2 && certs.every((c) => issuedBy(c.chainPem, root));
  };
  const root1 = new X509Certificate(readFileSync(join(mesh.ctl.dataDir, 'ca/signer-cert.pem')));

  await eventually(async () => (await nodeList()).every((n) => n.bundleCurrent), 'both nodes acknowledged the one-root bundle');
  t.same((await nodeOf('node-a')).trustedRoots, [fp(root1)], 'node list shows the root each node trusts');
  t.equal((await rotation()).phase, 'none');

  // --- prepare with node-b down: activate must wait for it
  await stopB();
  await mesh.ok(['ca', 'rotate']);
  const root2 = new X509Certificate(readFileSync(join(mesh.ctl.dataDir, 'ca/next-cert.pem')));
  await eventually(async () => (await nodeOf('node-a')).bundleCurrent, 'node-a acknowledges the two-root bundle', 15_000);
  const b1 = await nodeOf('node-b');
  t.notOk(b1.bundleCurrent, 'node list: node-b (down) has not acknowledged the new bundle');
  t.same(b1.trustedRoots, [fp(root1)], 'node-b still trusts only the old root');
  const r1 = await rotation();
  t.same([r1.phase, r1.nodesWithoutBundle, r1.safeToActivate], ['prepared', ['node-b'], false], 'ca show: activation not safe yet, because of node-b');

  const refusedActivate = await rotate('--phase', 'activate');
  t.equal(refusedActivate.code, 1, 'activate refused');
  t.match(refusedActivate.stderr, /refusing to activate root .*1 node has not acknowledged the trust bundle holding the new root \(node-b\).*--force.*\[AMBIT_ERR_CA_ROTATION_UNSAFE\]/s, 'the refusal names the node and the code');
  t.comment(refusedActivate.stderr.trim());
  t.notOk(agentBundle(agentA).length !== 2, 'nothing changed: node-a still holds both roots');

  const restartedAt = Date.now();
  await startB();
  await eventually(async () => (await nodeOf('node-b')).bundleCurrent, 'node-b acknowledges the two-root bundle after its restart', 20_000);
  t.pass(`node-b back and acknowledged the bundle ${Date.now() - restartedAt} ms after its restart`);
  t.equal((await rotation()).safeToActivate, true, 'ca show: activation safe now');

  // --- activate with node-b down again (it trusts both roots now): allowed; node-a renews at once
  await stopB();
  const activatedAt = Date.now();
  await mesh.ok(['ca', 'rotate', '--phase', 'activate']);
  await eventually(() => allFrom(agentA, root2), 'every certificate on node-a chains to the new root', 30_000);
  const renewMs = Date.now() - activatedAt;
  t.ok(renewMs < 20_000, `node-a renewed every certificate ${renewMs} ms after activation (1-hour TTL: half-life would be ~30 min)`);

  // node-b still holds its node certificate and the web certificate from the old root.
  const r2 = await rotation();
  t.equal(r2.phase, 'activated');
  t.equal(r2.oldRootCertificates, 2, 'ca show: 2 live certificates still from the old root');
  t.same(r2.nodesWithOldCertificates, ['node-b']);
  t.notOk(r2.safeToRetire, 'ca show: retire not safe yet');
  const b2 = await nodeOf('node-b');
  t.equal(b2.oldRootCertificates, 2, 'node list: node-b holds 2 old-root certificates');
  t.ok(b2.oldRootCertificatesUntilMs > Date.now() + 50 * 60_000, `valid until ${new Date(b2.oldRootCertificatesUntilMs).toISOString()} (about an hour)`);
  t.equal((await nodeOf('node-a')).oldRootCertificates, 0, 'node-a holds none');

  const refusedRetire = await rotate('--phase', 'retire');
  t.equal(refusedRetire.code, 1, 'retire refused');
  t.match(refusedRetire.stderr, /refusing to retire root .*2 live certificates on 1 node \(node-b\) still chain to the old root, the last valid until \d{4}-.*\[AMBIT_ERR_CA_ROTATION_UNSAFE\]/s, 'the refusal names the node, the count and until when');
  t.comment(refusedRetire.stderr.trim());
  t.equal(agentBundle(agentA).length, 2, 'nothing retired: node-a still trusts both roots');
  const show = await mesh.ok(['ca', 'show']);
  t.match(show, /rotation: activated\n.*live certificates from the old root: 2 on node-b.*\n.*next: ambitctl ca rotate --phase retire: not safe yet/s, 'ca show (table) says the same');

  // --- node-b returns: it learns the active root on reconnect and renews at once
  const backAt = Date.now();
  await startB();
  await eventually(async () => (await rotation()).safeToRetire, 'retire becomes safe', 30_000);
  t.pass(`node-b renewed its old-root certificates; retire safe ${Date.now() - backAt} ms after node-b restarted`);
  t.ok(await allFrom(agentB!, root2), 'every certificate on node-b chains to the new root');
  t.equal(await newConnection(mesh), '', 'node-a → node-b works');

  await mesh.ok(['ca', 'rotate', '--phase', 'retire']);
  for (const ag of [agentA, agentB!]) {
    await eventually(async () => agentBundle(ag).length === 1 && agentBundle(ag)[0]!.fingerprint256 === root2.fingerprint256, `${ag.node} holds only the new root`);
  }
  await eventually(async () => (await nodeList()).every((n) => n.bundleCurrent), 'both nodes acknowledged the one-root bundle');
  for (let i = 0; i < 5; i++) t.equal(await newConnection(mesh), '', `connection ${i + 1} after retire works`);

  // --- --force: activate a third root although node-b (down) never saw it; node-b catches up on reconnect
  await stopB();
  await mesh.ok(['ca', 'rotate']);
  const root3 = new X509Certificate(readFileSync(join(mesh.ctl.dataDir, 'ca/next-cert.pem')));
  t.equal((await rotate('--phase', 'activate')).code, 1, 'activate refused again (node-b down)');
  const forced = await rotate('--phase', 'activate', '--force');
  t.equal(forced.code, 0, 'activate --force goes through');
  t.match(forced.stdout, /phase activate done \(forced\)/);
  await mesh.ctl.proc.waitForLog((l) => l.msg === 'CA root rotation phase forced although not safe');
  t.pass('the controller logs the forced phase with what it overrode');
  await eventually(() => allFrom(agentA, root3), 'node-a renews to the third root', 30_000);
  t.pass('node-a renewed to the third root');
  await startB();
  const lost = await agentB!.proc.waitForLog((l) => l.msg === 'controller watch lost; serving cached state', 15_000);
  t.pass(`node-b, which never saw the third root, cannot reach the controller: ${String(lost.err).slice(0, 160)}`);
  await new Promise((r) => setTimeout(r, 5_000));
  t.notOk((await nodeOf('node-b')).connected, 'node-b stays disconnected');
  t.not(await newConnection(mesh), '', 'and node-a → node-b fails: node-b does not trust node-a\'s new certificate');
});
