/**
 * Issue 6, promise 5: fuzzing the CONNECT handling. Bounded and seeded
 * (xorshift32), so a failure reproduces from the seed and iteration it names.
 *
 * 1. Properties of parseAuthority / forwardedFor over random and mutated
 *    inputs: never throw; return undefined or a canonical value.
 * 2. End to end: random CONNECT header sets (authority, extra headers, large
 *    values, baggage / forwarded / traceparent) sent with a valid client
 *    certificate to a real agent: every answer is 200/400/401/405/503 or a
 *    stream reset, and the agent stays healthy and keeps tunnelling.
 */
import t from 'tap';
import { isIP } from 'node:net';
import { forwardedFor, parseAuthority } from '../../../agent/connection/admission.ts';
import { alive, hboneSession, liveConnections, request, startMesh, tunnelWorks, type Mesh } from '../../e2e/bad-input/mesh.ts';
import { eventually, hostPortOf, httpGet } from '../../e2e/harness.ts';

const SEED = Number(process.env.AMBIT_FUZZ_SEED ?? 0x6b1d5eed);

interface Rng { int(n: number): number; pick<T>(xs: readonly T[]): T; chance(p: number): boolean }
function rng(seed: number): Rng {
  let s = seed >>> 0 || 0x9e3779b9;
  const next = (): number => {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    return s;
  };
  const int = (n: number): number => next() % n;
  return { int, pick: <T>(xs: readonly T[]): T => xs[int(xs.length)] as T, chance: (p) => next() / 0x100000000 < p };
}

const SEEDS = ['10.0.0.1:8080', '[2001:db8::1]:443', '[::1]:1', '255.255.255.255:65535', '[::ffff:10.0.0.1]:80', '127.0.12.24:8080', 'for=1.2.3.4', 'for="[::1]:80"', 'proto=https;for=10.1.2.3;by=10.0.0.1', 'for=1.2.3.4, for=5.6.7.8'];
const ALPHABET = ['0', '1', '9', '.', ':', '[', ']', '"', '=', ';', ',', ' ', '%', 'f', 'F', 'x', '-', '/', '\n', '\0', 'for', '::', '65535', '65536', '99999', '0000', '256', '\u00e9', '\ud800', '\u{1f600}', 'ffff', '%00'];

function randomString(r: Rng, max: number): string {
  let s = '';
  const n = r.int(max + 1);
  for (let i = 0; i < n; i++) s += r.pick(ALPHABET);
  return s;
}

function mutate(r: Rng, input: string): string {
  let s = input;
  const rounds = 1 + r.int(4);
  for (let i = 0; i < rounds; i++) {
    const at = r.int(s.length + 1);
    switch (r.int(6)) {
      case 0: s = s.slice(0, at) + r.pick(ALPHABET) + s.slice(at); break; // insert
      case 1: s = s.slice(0, at) + s.slice(at + 1 + r.int(3)); break; // delete
      case 2: s = s.slice(0, at) + r.pick(ALPHABET) + s.slice(at + 1); break; // replace
      case 3: s = s + s.slice(at); break; // duplicate a tail
      case 4: s = s.slice(0, at) + String(r.int(200_000)) + s.slice(at); break; // numbers
      default: s = s.repeat(1 + r.int(3)); break;
    }
  }
  return s;
}

function input(r: Rng): string {
  if (r.chance(0.05)) return r.pick(SEEDS);
  return r.chance(0.5) ? mutate(r, r.pick(SEEDS)) : randomString(r, 40);
}

t.test('parseAuthority: never throws; undefined or a canonical ip:port with port 1..65535', async (t) => {
  const r = rng(SEED);
  let accepted = 0;
  for (let i = 0; i < 2000; i++) {
    const a = input(r);
    let got: ReturnType<typeof parseAuthority>;
    try {
      got = parseAuthority(a);
    } catch (err) {
      t.fail(`seed ${SEED} iteration ${i}: threw on ${JSON.stringify(a)}: ${String(err)}`);
      continue;
    }
    if (got === undefined) continue;
    accepted++;
    const v = isIP(got.ip);
    const problems: string[] = [];
    if (v === 0) problems.push('ip is not an IP');
    if (!Number.isInteger(got.port) || got.port < 1 || got.port > 65535) problems.push(`port ${got.port}`);
    const formatted = v === 6 ? `[${got.ip}]:${got.port}` : `${got.ip}:${got.port}`;
    const again = parseAuthority(formatted);
    if (!again || again.ip !== got.ip || again.port !== got.port) problems.push(`${formatted} does not parse back to itself`);
    if (problems.length) t.fail(`seed ${SEED} iteration ${i}: ${JSON.stringify(a)} → ${JSON.stringify(got)}: ${problems.join(', ')}`);
  }
  t.ok(accepted > 20, `some mutated inputs are still valid and accepted (${accepted}/2000)`);
  t.pass(`2,000 inputs, seed ${SEED}`);
});

t.test('forwardedFor: never throws; undefined or an IP address', async (t) => {
  const r = rng(SEED ^ 0x5a5a5a5a);
  let accepted = 0;
  for (let i = 0; i < 2000; i++) {
    const h: string | string[] = r.chance(0.2) ? [input(r), input(r)] : input(r);
    try {
      const got = forwardedFor(h);
      if (got === undefined) continue;
      accepted++;
      if (isIP(got) === 0) t.fail(`seed ${SEED} iteration ${i}: ${JSON.stringify(h)} → ${JSON.stringify(got)} is not an IP`);
    } catch (err) {
      t.fail(`seed ${SEED} iteration ${i}: threw on ${JSON.stringify(h)}: ${String(err)}`);
    }
  }
  t.ok(accepted > 20, `some inputs are accepted (${accepted}/2000)`);
});

// ---------------------------------------------------------------- end to end

const OK_STATUSES = new Set([200, 400, 401, 405, 503]);
const TOKEN = 'abcdefghijklmnopqrstuvwxyz0123456789-_.';

function headerName(r: Rng): string {
  let s = 'x-';
  for (let i = 0, n = 1 + r.int(20); i < n; i++) s += r.pick([...TOKEN]);
  return s;
}

/** A header value HTTP/2 can carry (visible ASCII, spaces, some latin-1), up to `max` bytes. */
function headerValue(r: Rng, max: number): string {
  if (r.chance(0.5)) return mutate(r, r.pick(SEEDS)).replace(/[\0\n\r]/g, '').replace(/[^\x20-\xff]/g, '?');
  const n = r.int(max + 1);
  const c = String.fromCharCode(0x21 + r.int(0x5e));
  return r.chance(0.5) ? c.repeat(n) : Array.from({ length: Math.min(n, 2000) }, () => String.fromCharCode(0x20 + r.int(0x5f))).join('');
}

function connectHeaders(r: Rng, m: Mesh): Record<string, string> {
  const h: Record<string, string> = { ':method': r.chance(0.9) ? 'CONNECT' : r.pick(['GET', 'PUT', 'CONNECTX', 'connect']) };
  if (h[':method'] !== 'CONNECT') {
    h[':path'] = '/';
    h[':scheme'] = 'https';
  }
  switch (r.int(4)) {
    case 0: h[':authority'] = m.webAuthority; break;
    case 1: h[':authority'] = mutate(r, m.webAuthority).replace(/[^\x21-\x7e]/g, '') || 'x'; break;
    case 2: h[':authority'] = headerValue(r, 200).replace(/[^\x21-\x7e]/g, '') || 'x'; break;
    default: h[':authority'] = `${r.int(300)}.${r.int(300)}.${r.int(300)}.${r.int(300)}:${r.int(70_000)}`;
  }
  for (let i = 0, n = r.int(6); i < n; i++) h[headerName(r)] = headerValue(r, 8 * 1024);
  if (r.chance(0.4)) h.forwarded = headerValue(r, 100);
  if (r.chance(0.4)) h.baggage = r.pick([
    `k8s.workload.name=${headerValue(r, 60).replace(/[,\s]/g, '')},k8s.namespace.name=default`,
    'k8s.workload.name=%E0%A4%A', 'k8s.namespace.name=%', `k8s.workload.name=${'%41'.repeat(500)}`, headerValue(r, 300),
  ]);
  if (r.chance(0.4)) h.traceparent = r.pick([`00-${'a'.repeat(32)}-${'b'.repeat(16)}-01`, `ff-${'0'.repeat(32)}-${'0'.repeat(16)}-00`, headerValue(r, 80)]);
  return h;
}

t.test('end to end: 200 random CONNECT requests to a real agent', async (t) => {
  const m = await startMesh('127.0.12', 20, 'connect-fuzz');
  t.teardown(() => m.stop());
  const r = rng(SEED ^ 0x13579bdf);
  let session = hboneSession(m);
  const seen = new Map<string, number>();
  for (let i = 0; i < 200; i++) {
    if (session.closed || session.destroyed) session = hboneSession(m);
    const h = connectHeaders(r, m);
    const o = await request(session, h);
    const key = 'status' in o ? String(o.status) : o.reset.startsWith('client refused') ? 'client refused to send' : `reset: ${o.reset.slice(0, 60)}`;
    seen.set(key, (seen.get(key) ?? 0) + 1);
    if ('status' in o && !OK_STATUSES.has(o.status)) t.fail(`seed ${SEED} iteration ${i}: status ${o.status} for ${JSON.stringify(h).slice(0, 300)}`);
    if (!alive(m.b)) {
      t.fail(`seed ${SEED} iteration ${i}: the agent died on ${JSON.stringify(h).slice(0, 500)}\n${m.b.proc.stderrText.slice(-2000)}`);
      break;
    }
  }
  session.destroy();
  t.comment(`outcomes: ${JSON.stringify(Object.fromEntries(seen))}`);
  t.ok(alive(m.b), 'agent still running');
  t.notOk(seen.has('reset: timeout'), 'no request was left unanswered');
  t.ok((seen.get('200') ?? 0) > 0 && (seen.get('400') ?? 0) > 0, 'the fuzz reached both open tunnels and refusals');
  t.equal((await httpGet(hostPortOf(m.b.ready), '/healthz/ready')).status, 200, 'agent still ready');
  t.ok(await tunnelWorks(m), 'a normal tunnel still works');
  t.ok(await eventually(async () => (await liveConnections(m.b)) === 0, 'connections back to 0').catch(() => false), 'config_dump connections back to 0');
});
