import t from 'tap';
import { isDeepStrictEqual } from 'node:util';
import { stringify } from 'yaml';
import { isAmbitError } from '../../../shared/errors.ts';
import type { ErrorCode } from '../../../shared/errors.ts';
import { canonicalIp } from '../../../shared/net-address.ts';
import type { Resource } from '../../../shared/resources/types.ts';
import { parseSourcedDocuments, toDocument, validateResource } from '../../../shared/resources/validate.ts';

/**
 * Bounded mutation fuzzing with a seeded PRNG, so a failure reproduces: the
 * report names the seed and iteration. Properties checked:
 *  - validateResource either returns a resource that keeps the core
 *    invariants and round-trips through toDocument, or throws an
 *    AMBIT_ERR_RESOURCE_INVALID naming the document — never anything else;
 *  - parseSourcedDocuments on arbitrary text either returns documents (which
 *    then obey the property above) or throws AMBIT_ERR_RESOURCE_PARSE.
 */

// ------------------------------------------------------------------ PRNG (xorshift32)

interface Rng {
  /** uniform integer in [0, n) */
  int(n: number): number;
  pick<T>(xs: readonly T[]): T;
  chance(p: number): boolean;
}

function rng(seed: number): Rng {
  let s = seed >>> 0 || 0x9e3779b9;
  const next = (): number => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
  const int = (n: number): number => next() % n;
  return {
    int,
    pick: <T>(xs: readonly T[]): T => {
      const x = xs[int(xs.length)];
      if (x === undefined && xs.length === 0) throw new Error('pick from an empty list');
      return x as T;
    },
    chance: (p) => next() / 0x1_0000_0000 < p,
  };
}

// ------------------------------------------------------------------ seeds: valid documents

const API = 'ambit.dev/v1alpha1';
const SEEDS: readonly Record<string, unknown>[] = [
  {
    apiVersion: API, kind: 'Workload',
    metadata: { name: 'web', namespace: 'shop', labels: { app: 'web', 'example.com/tier': 'front' }, revision: 3 },
    spec: {
      serviceAccount: 'web', node: 'node-a', address: '10.0.0.1', ports: [80, 443, 8080],
      uid: 1000, weight: 5, locality: 'eu/eu-1', healthy: true,
    },
  },
  {
    apiVersion: API, kind: 'Workload', metadata: { name: 'db' },
    spec: { serviceAccount: 'db', node: 'vm-1', address: 'fd00::7' },
  },
  {
    apiVersion: API, kind: 'Service', metadata: { name: 'web', namespace: 'shop', labels: { app: 'web' } },
    spec: {
      addresses: ['10.96.0.1', 'fd00::1'], selector: { app: 'web' },
      ports: [{ name: 'http', port: 80, targetPort: 8080 }, { port: 443 }, { name: 'admin', port: 9000 }],
    },
  },
  {
    apiVersion: API, kind: 'AuthorizationPolicy', metadata: { name: 'web-in', namespace: 'shop' },
    spec: {
      selector: { matchLabels: { app: 'web' } }, action: 'ALLOW',
      rules: [
        {
          from: [
            { source: { principals: ['spiffe://cluster.local/ns/shop/sa/front', 'cluster.local/ns/ops/*'], notNamespaces: ['test'] } },
            { source: { ipBlocks: ['10.0.0.0/8', '192.168.1.1'], notIpBlocks: ['10.9.0.0/16'] } },
            { source: { serviceAccounts: ['shop/api', 'ops/*'], notServiceAccounts: ['shop/evil'], namespaces: ['prod-*'], notPrincipals: ['*/sa/bad'] } },
          ],
          to: [{ operation: { ports: [80, '443'] } }, { operation: { notPorts: [22] } }],
        },
        {},
      ],
    },
  },
  { apiVersion: API, kind: 'AuthorizationPolicy', metadata: { name: 'deny-all' }, spec: { action: 'DENY', rules: [{}] } },
];

// ------------------------------------------------------------------ mutations

const HUGE = 'a'.repeat(300_000);
const NUMBERS = [-1, 0, 1, 2, 22, 80, 1000, 1001, 65535, 65536, 4294967294, 4294967295, 2 ** 53, -(2 ** 31), 1.5, -0, NaN, Infinity, 1e300];
const STRINGS = [
  '', '*', ' ', 'web', 'Web', 'a_b', 'web-', '10.0.0.1', '10.0.0.01', '::1', '::FFFF:1.2.3.4', '10.0.0.0/8', '10.0.0.1/8',
  'fe80::1%eth0', 'cluster.local/ns/a/sa/b', 'spiffe://td/ns/a/sa/b', 'ns/a/sa/b', 'td/ns/a/*', '*/sa/b', 'a*b', 'ns/*',
  'prod/web', 'prod/*', 'ALLOW', 'DENY', 'allow', '80', '080', '0', 'a/b', 'a/b/c/d', '__proto__', 'constructor',
  'toString', API, 'v1', 'Workload', 'Service', 'AuthorizationPolicy', 'Pod', 'port-80', 'x'.repeat(64), 'x'.repeat(254),
  'ü', '\u0000', 'a\nb', '😀', '\uD800',
];
const KEYS = [
  'extra', '__proto__', 'constructor', 'toString', 'hasOwnProperty', 'serviceAcount', 'ports', 'source', 'operation',
  'matchLabels', 'revision', 'status', 'name', 'spec', 'methods', 'when', 'app', 'example.com/x', HUGE,
];

function randomValue(r: Rng, depth = 0): unknown {
  switch (r.int(16)) {
    case 0: return null;
    case 1: return undefined;
    case 2: return r.chance(0.5);
    case 3: case 4: return r.pick(NUMBERS);
    case 5: return r.int(70000);
    case 6: case 7: case 8: return r.pick(STRINGS);
    case 9: return String.fromCharCode(...Array.from({ length: r.int(12) }, () => r.int(0x3000)));
    case 10: return HUGE;
    case 11: return [];
    case 12: return {};
    case 13: return depth > 2 ? 1 : Array.from({ length: 1 + r.int(3) }, () => randomValue(r, depth + 1));
    case 14: return depth > 2 ? 'x' : { [r.pick(KEYS)]: randomValue(r, depth + 1) };
    default: return r.pick<unknown>([10n, new Date(0), new Map([['a', 1]]), () => 1, Symbol('s')]);
  }
}

type Container = Record<string, unknown> | unknown[];
interface Slot {
  readonly parent: Container;
  readonly key: string | number;
}

function slots(v: unknown, out: Slot[] = []): Slot[] {
  if (Array.isArray(v)) {
    v.forEach((x, i) => {
      out.push({ parent: v, key: i });
      slots(x, out);
    });
  } else if (typeof v === 'object' && v !== null) {
    const o = v as Record<string, unknown>;
    for (const k of Object.keys(o)) {
      out.push({ parent: o, key: k });
      slots(o[k], out);
    }
  }
  return out;
}

function containers(v: unknown, out: Container[] = []): Container[] {
  if (Array.isArray(v)) {
    out.push(v);
    for (const x of v) containers(x, out);
  } else if (typeof v === 'object' && v !== null) {
    out.push(v as Record<string, unknown>);
    for (const x of Object.values(v)) containers(x, out);
  }
  return out;
}

/** A deep copy of lists and mappings; other values (functions, symbols, Maps) are shared, which is fine here. */
function copy(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(copy);
  if (typeof v === 'object' && v !== null && Object.getPrototypeOf(v) === Object.prototype) {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) put(out, k, copy(x));
    return out;
  }
  return v;
}

/** Own-property assignment, so "__proto__" becomes a key (as JSON.parse makes it) rather than a prototype. */
function put(c: Container, key: string | number, value: unknown): void {
  Object.defineProperty(c, key, { value, enumerable: true, writable: true, configurable: true });
}

function mutate(r: Rng, doc: Record<string, unknown>): unknown {
  const kind = r.int(5);
  const all = slots(doc);
  const slot = r.pick(all);
  if (kind === 0) {
    // delete a field or list item
    if (Array.isArray(slot.parent)) slot.parent.splice(Number(slot.key), 1);
    else delete slot.parent[slot.key as string];
  } else if (kind === 1) {
    put(slot.parent, slot.key, randomValue(r));
  } else if (kind === 2) {
    const maps = containers(doc).filter((c) => !Array.isArray(c));
    put(r.pick(maps), r.pick(KEYS), randomValue(r));
  } else if (kind === 3) {
    const lists = containers(doc).filter((c) => Array.isArray(c) && c.length > 0) as unknown[][];
    if (lists.length > 0) {
      const list = r.pick(lists);
      list.push(copy(list[r.int(list.length)]));
    }
  } else {
    // move a value to another place: valid values in the wrong field
    const other = r.pick(all);
    put(slot.parent, slot.key, copy(other.parent[other.key as never]));
  }
  return doc;
}

// ------------------------------------------------------------------ properties

const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

function ascending(xs: readonly (string | number)[]): boolean {
  return xs.every((x, i) => i === 0 || (xs[i - 1] as string | number) < x);
}

/** Invariants every validated resource keeps; returns the broken ones. */
function broken(r: Resource): string[] {
  const out: string[] = [];
  const m = r.metadata;
  if (!DNS_SUBDOMAIN.test(m.name) || m.name.length > 253) out.push(`name ${m.name}`);
  if (!DNS_LABEL.test(m.namespace) || m.namespace.length > 63) out.push(`namespace ${m.namespace}`);
  if (m.revision !== 0) out.push('revision not 0');
  if (!Object.values(m.labels).every((v) => typeof v === 'string' && v.length <= 63)) out.push('labels');
  if (r.kind === 'Workload') {
    const s = r.spec;
    if (canonicalIp(s.address) !== s.address) out.push(`address ${s.address}`);
    if (!ascending(s.ports) || !s.ports.every((p) => Number.isInteger(p) && p >= 1 && p <= 65535)) out.push('ports');
    if (!Number.isInteger(s.weight) || s.weight < 1 || s.weight > 1000) out.push('weight');
    if (typeof s.healthy !== 'boolean' || typeof s.locality !== 'string') out.push('healthy/locality');
    if (s.uid !== undefined && !(Number.isInteger(s.uid) && s.uid >= 0 && s.uid < 4294967295)) out.push('uid');
  } else if (r.kind === 'Service') {
    const s = r.spec;
    if (s.ports.length === 0 || !ascending(s.ports.map((p) => p.port))) out.push('ports');
    if (new Set(s.ports.map((p) => p.name)).size !== s.ports.length) out.push('port names');
    if (!s.addresses.every((a) => canonicalIp(a) === a) || new Set(s.addresses).size !== s.addresses.length) out.push('addresses');
  } else if (r.kind === 'AuthorizationPolicy') {
    const s = r.spec;
    if (s.action !== 'ALLOW' && s.action !== 'DENY') out.push('action');
    for (const rule of s.rules) {
      for (const src of rule.from) {
        const lists = Object.values(src) as (readonly string[])[];
        if (lists.every((l) => l.length === 0)) out.push('empty source');
        if (!lists.every((l) => ascending(l) && l.every((x) => typeof x === 'string' && x !== '' && !x.startsWith('spiffe://')))) out.push('source lists');
      }
      for (const op of rule.to) {
        if (op.ports.length + op.notPorts.length === 0) out.push('empty operation');
        if (!ascending(op.ports) || !ascending(op.notPorts)) out.push('operation ports');
      }
    }
  }
  return out;
}

/** Why an error is not the one allowed, or undefined when it is. */
function wrongError(err: unknown, code: ErrorCode, where: string): string | undefined {
  if (!isAmbitError(err, code)) return `threw ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`;
  if (!err.message.startsWith(where)) return `message does not name ${where}: ${err.message}`;
  if (err.message.length > 2000) return `message is ${err.message.length} characters long`;
  if (code === 'AMBIT_ERR_RESOURCE_INVALID') {
    const lines = err.details['errors'];
    if (!Array.isArray(lines) || lines.length === 0) return 'details.errors is empty';
    if (!lines.every((l) => typeof l === 'string' && l.startsWith(where))) return 'details.errors lines do not name the document';
    if (typeof err.details['field'] !== 'string') return 'details.field is not a string';
  }
  return undefined;
}

/** Checks one document against the validation property; returns a problem description or undefined. */
function checkDocument(doc: unknown, where: string): { problem?: string; valid: boolean } {
  let r: Resource;
  try {
    r = validateResource(doc, where);
  } catch (err) {
    return { problem: wrongError(err, 'AMBIT_ERR_RESOURCE_INVALID', where), valid: false };
  }
  const bad = broken(r);
  if (bad.length > 0) return { problem: `invariants broken: ${bad.join(', ')}`, valid: true };
  try {
    const again = validateResource(toDocument(r), `${where}/toDocument`);
    if (!isDeepStrictEqual(again, r)) return { problem: `round trip differs: ${JSON.stringify(r)} vs ${JSON.stringify(again)}`, valid: true };
  } catch (err) {
    return { problem: `toDocument output does not validate: ${err instanceof Error ? err.message : String(err)}`, valid: true };
  }
  return { valid: true };
}

function safeJson(v: unknown): string {
  try {
    const s = JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? `${x}n` : x));
    return s.length > 500 ? `${s.slice(0, 500)}…` : s;
  } catch {
    return '(unserialisable)';
  }
}

t.test('mutated documents validate cleanly or fail with AMBIT_ERR_RESOURCE_INVALID', async (t) => {
  const seed = 0xa1b2c3d4;
  const r = rng(seed);
  const failures: string[] = [];
  let valid = 0;
  const iterations = 3000;
  for (let i = 0; i < iterations; i++) {
    const doc = copy(r.pick(SEEDS)) as Record<string, unknown>;
    let mutated: unknown = doc;
    const n = 1 + r.int(3);
    for (let k = 0; k < n; k++) {
      if (typeof mutated !== 'object' || mutated === null || Array.isArray(mutated)) break;
      mutated = r.chance(0.01) ? randomValue(r) : mutate(r, mutated as Record<string, unknown>);
    }
    const result = checkDocument(mutated, `fuzz#${i}`);
    if (result.valid) valid++;
    if (result.problem !== undefined && failures.length < 5) failures.push(`seed ${seed} iteration ${i}: ${result.problem}; doc ${safeJson(mutated)}`);
  }
  t.same(failures, [], 'no property violations');
  // Guard against a fuzzer that only ever exercises one side.
  t.ok(valid > iterations * 0.05, `${valid} of ${iterations} mutants were valid`);
  t.ok(valid < iterations * 0.95, `${iterations - valid} of ${iterations} mutants were invalid`);
});

t.test('the seeds themselves are valid', async (t) => {
  for (const [i, doc] of SEEDS.entries()) t.same(checkDocument(doc, `seed#${i}`), { valid: true });
});

// ------------------------------------------------------------------ parser fuzzing

const FRAGMENTS = [
  'a', 'b', 'kind', ':', ': ', '- ', '\n', '  ', '[', ']', '{', '}', ',', '&x ', '*x', '&y ', '*y', '!!str ', '!!binary ',
  '!!map ', '!foo ', '"', "'", '#', '---\n', '...\n', '? ', '|', '>', '%YAML 1.1\n', '%TAG ! tag:x,2000:\n', '<<: ', '1',
  '0x1F', '.inf', '~', 'null', 'true', '\t', '\r', '\u2028', '\uFEFF', '\uD800', '😀', '\\', '@', '`', '%', '\u0000',
];

function checkText(text: string, label: string): { problem?: string; parsed: boolean } {
  let docs;
  try {
    docs = parseSourcedDocuments(text, label);
  } catch (err) {
    const problem = wrongError(err, 'AMBIT_ERR_RESOURCE_PARSE', label);
    return problem === undefined ? { parsed: false } : { problem, parsed: false };
  }
  if (!Array.isArray(docs)) return { problem: 'did not return a list', parsed: true };
  for (const d of docs) {
    if (!d.where.startsWith(`${label}#`)) return { problem: `bad where ${d.where}`, parsed: true };
    if (d.doc === null || d.doc === undefined) return { problem: 'returned an empty document', parsed: true };
    const r = checkDocument(d.doc, d.where);
    if (r.problem !== undefined) return { problem: r.problem, parsed: true };
  }
  return { parsed: true };
}

t.test('arbitrary text parses or fails with AMBIT_ERR_RESOURCE_PARSE', async (t) => {
  const seed = 0x5eed1234;
  const r = rng(seed);
  const failures: string[] = [];
  let parsed = 0;
  const valid = SEEDS.map((d) => stringify(d)).join('---\n');
  const report = (i: number, text: string, { problem, parsed: ok }: { problem?: string; parsed: boolean }): void => {
    if (ok) parsed++;
    if (problem === undefined) return;
    if (failures.length < 5) failures.push(`seed ${seed} iteration ${i}: ${problem}; text ${JSON.stringify(text.slice(0, 300))}`);
  };
  for (let i = 0; i < 1500; i++) {
    // token soup of YAML-significant fragments
    const text = Array.from({ length: r.int(60) }, () => r.pick(FRAGMENTS)).join('');
    report(i, text, checkText(text, `soup${i}`));
  }
  for (let i = 0; i < 1000; i++) {
    // valid YAML with a few characters changed
    let text = valid;
    for (let k = 1 + r.int(4); k > 0; k--) {
      const at = r.int(text.length);
      const op = r.int(3);
      const frag = r.pick(FRAGMENTS);
      text = op === 0 ? text.slice(0, at) + text.slice(at + 1) : op === 1 ? text.slice(0, at) + frag + text.slice(at) : text.slice(0, at) + frag + text.slice(at + 1);
    }
    report(i, text, checkText(text, `edit${i}`));
  }
  for (let i = 0; i < 500; i++) {
    // random bytes, decoded both ways
    const bytes = Buffer.from(Array.from({ length: r.int(200) }, () => r.int(256)));
    report(i, bytes.toString('latin1'), checkText(bytes.toString('latin1'), `latin1-${i}`));
    report(i, bytes.toString('utf8'), checkText(bytes.toString('utf8'), `utf8-${i}`));
  }
  t.same(failures, [], 'no property violations');
  // Both outcomes must occur, or the generator is not exploring the parser.
  t.ok(parsed > 300 && parsed < 3000, `${parsed} of 3500 texts parsed; the rest were refused as syntax errors`);
});
