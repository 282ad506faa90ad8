import t from 'tap';
import { readFileSync } from 'node:fs';
import { compileHttpOperation, evaluateRequest, normalizePath, stringMatch, type RequestPolicy } from '../../shared/authorization-http.ts';

/*
 * The request-level authorization definition against the cases the data
 * plane's evaluator (dataplane/src/l7/authz.rs) is tested against too.
 */

interface Vectors {
  readonly normalize: readonly { readonly in: string; readonly out: string | null }[];
  readonly evaluate: readonly {
    readonly name: string;
    readonly policy: RequestPolicy;
    readonly requests: readonly { method: string; path: string; host: string | null; allowed: boolean; reason: string; policy: string | null }[];
  }[];
}

const vectors = JSON.parse(readFileSync(new URL('./authorization-http-vectors.json', import.meta.url), 'utf8')) as Vectors;

t.test('paths are normalised as Istio normalises them (BASE), query kept apart', async (t) => {
  for (const c of vectors.normalize) {
    const n = normalizePath(c.in);
    t.equal(n === undefined ? null : n.path + n.query, c.out, JSON.stringify(c.in));
    if (n !== undefined) {
      const again = normalizePath(n.path + n.query);
      t.equal(again && again.path + again.query, n.path + n.query, `idempotent on ${JSON.stringify(n.path + n.query)}`);
    }
  }
});

t.test('requests are decided DENY first, then ALLOW, naming the deciding policy', async (t) => {
  for (const c of vectors.evaluate) {
    for (const r of c.requests) {
      const d = evaluateRequest(c.policy, { method: r.method, path: r.path, host: r.host ?? undefined });
      t.same({ allowed: d.allowed, reason: d.reason, policy: d.policy ?? null }, { allowed: r.allowed, reason: r.reason, policy: r.policy }, `${c.name}: ${r.method} ${r.path} host ${r.host}`);
    }
  }
});

t.test('compiling an operation keeps only HTTP conditions, hosts lower-cased', async (t) => {
  t.equal(compileHttpOperation({ ports: [80], notPorts: [] }), undefined, 'a port-only operation has no HTTP part');
  t.same(compileHttpOperation({ ports: [], notPorts: [], hosts: ['API.Example.com:*'], methods: ['GET'] }), {
    methods: [{ kind: 'exact', value: 'GET' }], notMethods: [], paths: [], notPaths: [],
    hosts: [{ kind: 'prefix', value: 'api.example.com:' }], notHosts: [],
  });
  t.same(stringMatch('*', false), { kind: 'any', value: '' });
  t.same(stringMatch('*.png', false), { kind: 'suffix', value: '.png' });
  t.same(stringMatch('/api/*', false), { kind: 'prefix', value: '/api/' });
});
