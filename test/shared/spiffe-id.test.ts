import t from 'tap';
import {
  adminId, controllerId, isValidName, isValidTrustDomain, nodeId, parseSpiffeId, workloadId,
} from '../../shared/spiffe-id.ts';

t.test('valid IDs parse into their kind and parts', async (t) => {
  const cases: [string, Record<string, string | undefined>][] = [
    ['spiffe://cluster.local/ns/default/sa/web', { trustDomain: 'cluster.local', kind: 'workload', namespace: 'default', serviceAccount: 'web' }],
    ['spiffe://td/ns/My_NS/sa/Svc-1.2', { trustDomain: 'td', kind: 'workload', namespace: 'My_NS', serviceAccount: 'Svc-1.2' }],
    ['spiffe://a-b_c.9/ns/x/sa/y', { trustDomain: 'a-b_c.9', kind: 'workload', namespace: 'x', serviceAccount: 'y' }],
    ['spiffe://cluster.local/ambit/node/node-1', { trustDomain: 'cluster.local', kind: 'node', name: 'node-1' }],
    ['spiffe://cluster.local/ambit/admin/admin', { trustDomain: 'cluster.local', kind: 'admin', name: 'admin' }],
    ['spiffe://cluster.local/ambit/controller', { trustDomain: 'cluster.local', kind: 'controller' }],
  ];
  for (const [uri, want] of cases) {
    const id = parseSpiffeId(uri);
    t.match(id, { ...want, uri }, uri);
    t.ok(Object.isFrozen(id), `${uri} is frozen`);
    if (want.kind !== 'workload') t.equal(id.namespace, undefined);
  }
});

t.test('invalid IDs are refused with AMBIT_ERR_SPIFFE_INVALID', async (t) => {
  const long = `spiffe://cluster.local/ns/${'a'.repeat(2030)}/sa/b`;
  t.ok(long.length > 2048);
  const cases: [string, string][] = [
    ['http://cluster.local/ns/a/sa/b', 'bad scheme'],
    ['SPIFFE://cluster.local/ns/a/sa/b', 'upper-case scheme'],
    ['spiffe:/cluster.local/ns/a/sa/b', 'one slash'],
    ['spiffe://Cluster.local/ns/a/sa/b', 'upper-case trust domain'],
    ['spiffe:///ns/a/sa/b', 'empty trust domain'],
    ['spiffe://cluster.local', 'no path'],
    ['spiffe://cluster.local/', 'empty path'],
    ['spiffe://cluster.local:8443/ns/a/sa/b', 'port'],
    ['spiffe://user@cluster.local/ns/a/sa/b', 'user info'],
    ['spiffe://cluster.local/ns//sa/b', 'empty segment'],
    ['spiffe://cluster.local/ns/a/sa/b/', 'trailing slash'],
    ['spiffe://cluster.local/ns/../sa/b', '".." segment'],
    ['spiffe://cluster.local/ns/./sa/b', '"." segment'],
    ['spiffe://cluster.local/ns/a/sa/b?x=1', 'query'],
    ['spiffe://cluster.local/ns/a/sa/b#frag', 'fragment'],
    ['spiffe://cluster.local/ns/a%2F/sa/b', 'percent-encoding'],
    ['spiffe://cluster.local/ns/a b/sa/b', 'space'],
    ['spiffe://cluster.local/ns/a/sa', 'workload without service account'],
    ['spiffe://cluster.local/ns/a/sa/b/c', 'workload with an extra segment'],
    ['spiffe://cluster.local/ns/a/xx/b', 'not sa'],
    ['spiffe://cluster.local/ambit/node', 'node without name'],
    ['spiffe://cluster.local/ambit/root/x', 'unknown ambit kind'],
    ['spiffe://cluster.local/ambit/controller/x', 'controller with a name'],
    ['spiffe://cluster.local/foo', 'unknown shape'],
    [long, 'over 2048 bytes'],
    ['', 'empty'],
  ];
  for (const [uri, why] of cases) {
    t.throws(() => parseSpiffeId(uri), { code: 'AMBIT_ERR_SPIFFE_INVALID' }, why);
  }
  t.throws(() => parseSpiffeId(long), { message: /longer than 2048/ });
  t.throws(() => parseSpiffeId('spiffe://cluster.local/ns/../sa/b'), { code: 'AMBIT_ERR_SPIFFE_INVALID', details: { uri: 'spiffe://cluster.local/ns/../sa/b' } });
  t.throws(() => parseSpiffeId(42 as unknown as string), { code: 'AMBIT_ERR_SPIFFE_INVALID' }, 'not a string');
});

t.test('the trust domain limit is 255 characters', async (t) => {
  t.equal(parseSpiffeId(`spiffe://${'a'.repeat(255)}/ambit/controller`).trustDomain.length, 255);
  t.throws(() => parseSpiffeId(`spiffe://${'a'.repeat(256)}/ambit/controller`), { code: 'AMBIT_ERR_SPIFFE_INVALID' });
  t.ok(isValidTrustDomain('cluster.local'));
  t.notOk(isValidTrustDomain(''));
  t.notOk(isValidTrustDomain('Cluster.local'));
  t.notOk(isValidTrustDomain('a:1'));
});

t.test('constructors build the same IDs parseSpiffeId reads', async (t) => {
  const w = workloadId('cluster.local', 'default', 'web');
  t.equal(w.uri, 'spiffe://cluster.local/ns/default/sa/web');
  t.same({ ...parseSpiffeId(w.uri) }, { ...w });
  const n = nodeId('cluster.local', 'node-1');
  t.equal(n.uri, 'spiffe://cluster.local/ambit/node/node-1');
  t.same({ ...parseSpiffeId(n.uri) }, { ...n });
  const a = adminId('td', 'ops');
  t.equal(a.uri, 'spiffe://td/ambit/admin/ops');
  t.same({ ...parseSpiffeId(a.uri) }, { ...a });
  const c = controllerId('td');
  t.equal(c.uri, 'spiffe://td/ambit/controller');
  t.same({ ...parseSpiffeId(c.uri) }, { ...c });
  for (const id of [w, n, a, c]) t.ok(Object.isFrozen(id));
});

t.test('constructors refuse what the parser refuses', async (t) => {
  const bad: [string, () => unknown][] = [
    ['upper-case trust domain', () => workloadId('Cluster.local', 'a', 'b')],
    ['port in trust domain', () => nodeId('td:1', 'n')],
    ['empty namespace', () => workloadId('td', '', 'b')],
    ['"/" in namespace', () => workloadId('td', 'a/sa/x', 'b')],
    ['".." service account', () => workloadId('td', 'a', '..')],
    ['"." node name', () => nodeId('td', '.')],
    ['"?" in admin name', () => adminId('td', 'a?b')],
    ['empty trust domain', () => controllerId('')],
  ];
  for (const [why, fn] of bad) t.throws(fn, { code: 'AMBIT_ERR_SPIFFE_INVALID' }, why);
});

t.test('isValidName: Kubernetes-style names', async (t) => {
  for (const ok of ['a', 'node-1', 'a.b-c', '0abc', 'a'.repeat(253)]) t.ok(isValidName(ok), ok);
  for (const bad of ['', '-a', 'a-', 'A', 'a_b', 'a/b', '.a', 'a'.repeat(254)]) t.notOk(isValidName(bad), JSON.stringify(bad));
});
