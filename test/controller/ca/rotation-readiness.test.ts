import t from 'tap';
import { assertRotationSafe, rotationStatus, type RotationInput } from '../../../controller/ca/rotation-readiness.ts';
import type { IssuedCertificateRecord, NodeRecord } from '../../../controller/store/store.ts';

const OLD = 'a'.repeat(64);
const NEW = 'b'.repeat(64);
const NOW = 1_000_000;
const node = (name: string, o: Partial<NodeRecord> = {}): NodeRecord => ({
  name, registeredAt: 0, lastSeen: 0, ackedRevision: 0, nackedRevision: 0, nackReason: '', certExpiresAt: 0, hboneAddress: '', trustedRoots: [], certificates: [], ...o,
});
const cert = (identity: string, root: string, notAfter: number): IssuedCertificateRecord => ({ identity, root, notAfter });
const nodeId = (n: string): string => `spiffe://cluster.local/ambit/node/${n}`;
const web = 'spiffe://cluster.local/ns/default/sa/web';
/** Nodes hold their own identity and `web` (as if a web workload were on every node). */
const holds = (n: string, identity: string): boolean => identity === nodeId(n) || identity === web;

function input(o: Partial<RotationInput>): RotationInput {
  return { state: 'activated', bundle: [OLD, NEW], active: NEW, nodes: [], holds, now: NOW, ...o };
}

t.test('prepared: activate waits for every node in use to acknowledge both roots', async (t) => {
  const acked = node('a', { trustedRoots: [OLD, NEW], certificates: [cert(nodeId('a'), OLD, NOW + 10)] });
  const behind = node('b', { trustedRoots: [OLD], certificates: [cert(nodeId('b'), OLD, NOW + 10)] });
  const gone = node('c', { trustedRoots: [OLD], certificates: [cert(nodeId('c'), OLD, NOW - 1)] });
  const i = input({ state: 'prepared', active: OLD, nodes: [acked, behind, gone] });
  const s = rotationStatus(i);
  t.same(s.nodesWithoutBundle, ['b'], 'a node whose certificates all expired is not in use and blocks nothing');
  t.equal(s.safeToActivate, false);
  t.match(s.blocking, /1 node has not acknowledged the trust bundle holding the new root \(b\)/);
  t.equal(s.byNode.get('a')?.bundleCurrent, true);
  t.equal(s.byNode.get('b')?.bundleCurrent, false);
  t.equal(s.oldCertificates, 0, 'before activation nothing is "old": the prepared root has signed nothing');
  t.throws(() => assertRotationSafe('activate', s, i), { code: 'AMBIT_ERR_CA_ROTATION_UNSAFE', message: /refusing to activate root bbbbbbbbbbbbbbbb…: .*\(b\).*--force/, details: { nodesWithoutBundle: ['b'] } });
  t.doesNotThrow(() => assertRotationSafe('retire', s, i), 'retire is not judged here: the CA refuses it out of order');

  const ok = rotationStatus(input({ state: 'prepared', active: OLD, nodes: [acked, { ...behind, trustedRoots: [NEW, OLD] }] }));
  t.equal(ok.safeToActivate, true, 'order of the acknowledged roots does not matter');
  t.equal(ok.blocking, '');
});

t.test('activated: retire waits until no live certificate of a held identity chains to the old root', async (t) => {
  const renewed = node('a', { trustedRoots: [OLD, NEW], certificates: [cert(nodeId('a'), NEW, NOW + 50), cert(web, NEW, NOW + 50)] });
  const stale = node('b', { trustedRoots: [OLD, NEW], certificates: [cert(nodeId('b'), NEW, NOW + 50), cert(web, OLD, NOW + 7_200_000)] });
  const i = input({ nodes: [renewed, stale] });
  const s = rotationStatus(i);
  t.equal(s.safeToRetire, false);
  t.equal(s.oldCertificates, 1);
  t.same(s.nodesWithOldCertificates, ['b']);
  t.equal(s.oldUntil, NOW + 7_200_000);
  t.equal(s.byNode.get('b')?.oldCertificates, 1);
  t.equal(s.byNode.get('a')?.oldCertificates, 0);
  t.match(s.blocking, `1 live certificate on 1 node (b) still chain to the old root, the last valid until ${new Date(NOW + 7_200_000).toISOString()}`);
  t.throws(() => assertRotationSafe('retire', s, i), {
    code: 'AMBIT_ERR_CA_ROTATION_UNSAFE',
    message: /^refusing to retire root aaaaaaaaaaaaaaaa…: 1 live certificate/,
    details: { oldCertificates: 1, nodesWithOldCertificates: ['b'], oldCertificatesUntil: new Date(NOW + 7_200_000).toISOString() },
  });

  t.equal(rotationStatus(input({ nodes: [renewed, stale], now: NOW + 7_200_000 })).safeToRetire, true, 'safe once the old certificate has expired');
  const moved = rotationStatus(input({ nodes: [renewed, stale], holds: (n, id) => id === nodeId(n) }));
  t.equal(moved.safeToRetire, true, 'a certificate of an identity no longer on the node does not count');
  const renewedToo = rotationStatus(input({ nodes: [renewed, { ...stale, certificates: [cert(nodeId('b'), NEW, NOW + 50), cert(web, NEW, NOW + 50)] }] }));
  t.equal(renewedToo.safeToRetire, true, 'safe once every certificate was renewed');
  t.equal(renewedToo.blocking, '');
});

t.test('activated: retire also waits for nodes that do not trust the active root, and for nodes it cannot judge', async (t) => {
  const noNew = node('a', { trustedRoots: [OLD], certificates: [cert(nodeId('a'), NEW, NOW + 50)] });
  const legacy = node('old-agent', { trustedRoots: [OLD, NEW], certExpiresAt: NOW + 100 });
  const s = rotationStatus(input({ nodes: [noNew, legacy] }));
  t.equal(s.safeToRetire, false);
  t.match(s.blocking, /1 node has not acknowledged a trust bundle holding the active root \(a\)/);
  t.match(s.blocking, /1 node has no certificate records to check \(old-agent;/);
  const legacyGone = rotationStatus(input({ nodes: [{ ...legacy, certExpiresAt: NOW - 1 }] }));
  t.equal(legacyGone.safeToRetire, true, 'a node without records whose reported certificates expired blocks nothing');
});

t.test('an old root certificate not in the bundle any more, or many nodes, are reported sensibly', async (t) => {
  const earlier = 'c'.repeat(64);
  const s = rotationStatus(input({ nodes: [node('a', { trustedRoots: [OLD, NEW], certificates: [cert(nodeId('a'), earlier, NOW + 50)] })] }));
  t.equal(s.oldCertificates, 0, 'a root already gone from the bundle is not the one retire would drop');
  const many = Array.from({ length: 8 }, (_, k) => node(`n${k}`, { trustedRoots: [OLD], certificates: [cert(nodeId(`n${k}`), OLD, NOW + 50)] }));
  const p = rotationStatus(input({ state: 'prepared', active: OLD, nodes: many }));
  t.match(p.blocking, /8 nodes have not acknowledged .* \(n0, n1, n2, n3, n4 and 3 more\)/);
  const none = rotationStatus(input({ state: 'none', bundle: [NEW], nodes: many }));
  t.same([none.safeToActivate, none.safeToRetire, none.blocking], [false, false, ''], 'no rotation: nothing to judge');
});
