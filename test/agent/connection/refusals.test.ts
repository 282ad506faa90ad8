/**
 * The registry of refusal reasons (agent/connection/refusals.ts) against
 * the code and the docs: every reason the agent or ambit-dataplane emits is
 * registered, and docs/refusals.md documents every registered reason exactly
 * as the registry states it. Each scanner also runs over a small sample
 * that must trip it, so a scanner that stopped finding anything fails here.
 */
import t from 'tap';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import {
  answerStatusOf, failureOfStatus, flagOf, isRefusalReason, OUTBOUND_FAILURES, REFUSALS, refusalOf,
  type RefusalReason, type RefusalSpec,
} from '../../../agent/connection/refusals.ts';
import type { SourceRefusal } from '../../../agent/connection/outbound-source.ts';
import type { ClaimVerdict } from '../../../agent/connection/source-proof.ts';

// Compile-time: the refusal unions of the decision modules are registered reasons.
const sourceRefusal: RefusalReason = null as unknown as SourceRefusal;
const claimRefusal: RefusalReason = null as unknown as Extract<ClaimVerdict, { ok: false }>['reason'];
void sourceRefusal;
void claimRefusal;

const root = fileURLToPath(new URL('../../../', import.meta.url));
const REASON = /^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$/;

function walk(dir: string, ext: string, out: string[] = []): string[] {
  if (!existsSync(join(root, dir))) return out;
  for (const e of readdirSync(join(root, dir), { withFileTypes: true })) {
    const rel = `${dir}/${e.name}`;
    if (e.isDirectory() && e.name !== 'target' && e.name !== 'node_modules') walk(rel, ext, out);
    else if (e.isFile() && e.name.endsWith(ext)) out.push(rel);
  }
  return out.sort();
}

interface Found {
  readonly reason: string;
  readonly where: string;
}

// ------------------------------------------------------------ the agent

/** Functions whose string-literal arguments are refusal reasons. */
const REFUSING_CALLS = new Set(['refuse', 'refused', 'refuseRecord', 'refuseAdmission', 'refuseOutbound', 'flagOf', 'answerStatusOf', 'refusal']);

/**
 * The reasons a TypeScript module emits as literals: the `reason` of an
 * object passed to `….refused.inc(…)`, of a `decide` answer to the data
 * plane (a message or its oneof case) and of a failed verdict (`ok: false`), and the snake_case literals
 * passed to the refusing helpers.
 */
function agentReasons(path: string, text: string): Found[] {
  const sf = ts.createSourceFile(path, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const out: Found[] = [];
  const where = (n: ts.Node): string => `${path}:${sf.getLineAndCharacterOfPosition(n.getStart(sf)).line + 1}`;
  const literalProp = (o: ts.ObjectLiteralExpression, name: string): ts.StringLiteralLike | undefined => {
    for (const p of o.properties) {
      if (ts.isPropertyAssignment(p) && (ts.isIdentifier(p.name) || ts.isStringLiteral(p.name)) && p.name.text === name && ts.isStringLiteralLike(p.initializer)) return p.initializer;
    }
    return undefined;
  };
  const hasProp = (o: ts.ObjectLiteralExpression, name: string, value: string | boolean): boolean =>
    o.properties.some((p) => ts.isPropertyAssignment(p) && ts.isIdentifier(p.name) && p.name.text === name &&
      (typeof value === 'string' ? ts.isStringLiteralLike(p.initializer) && p.initializer.text === value : p.initializer.kind === (value ? ts.SyntaxKind.TrueKeyword : ts.SyntaxKind.FalseKeyword)));
  // The answer to the data plane as a oneof: `{ $case: 'decide', decide: { …, reason } }`.
  const isDecide = (o: ts.ObjectLiteralExpression): boolean => ts.isPropertyAssignment(o.parent) && ts.isIdentifier(o.parent.name) && o.parent.name.text === 'decide';
  const visit = (node: ts.Node): void => {
    if (ts.isCallExpression(node)) {
      const callee = node.expression.getText(sf);
      const name = ts.isPropertyAccessExpression(node.expression) ? node.expression.name.text : callee;
      if (/(?:^|\.)refused\.inc$/.test(callee)) {
        for (const a of node.arguments) {
          const lit = ts.isObjectLiteralExpression(a) ? literalProp(a, 'reason') : undefined;
          if (lit) out.push({ reason: lit.text, where: where(lit) });
        }
      } else if (REFUSING_CALLS.has(name)) {
        for (const a of node.arguments) if (ts.isStringLiteralLike(a) && REASON.test(a.text)) out.push({ reason: a.text, where: where(a) });
      }
    } else if (ts.isObjectLiteralExpression(node) && (hasProp(node, 't', 'decide') || isDecide(node) || hasProp(node, 'ok', false))) {
      const lit = literalProp(node, 'reason');
      // An admission answers with no reason ('').
      if (lit && lit.text !== '') out.push({ reason: lit.text, where: where(lit) });
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

// ------------------------------------------------------------ ambit-dataplane

/** Keys and values of the messages around a reason, not reasons themselves. */
const MESSAGE_WORDS = new Set(['t', 'refused', 'reason', 'direction', 'inbound', 'outbound', 'error', 'id', 'status']);

/**
 * The reasons the data plane's Rust sources emit: the snake_case literals
 * of a line that sends a refusal (`"t": "refused"`, `refused(…)`,
 * `Refused { … }`) or answers a stream (`status_response(…)`), the prefix
 * of a reason built with `format!("<reason>: …")`, and what
 * `handshake_failure` (the reason of a failed handshake) returns.
 */
function dataplaneReasons(path: string, text: string): Found[] {
  const out: Found[] = [];
  const lines = text.split('\n');
  const add = (reason: string, i: number): void => {
    if (REASON.test(reason) && !MESSAGE_WORDS.has(reason)) out.push({ reason, where: `${path}:${i + 1}` });
  };
  let inHandshakeFailure = false;
  // A crate's unit tests (after `#[cfg(test)]`) send made-up reasons.
  const end = lines.findIndex((l) => /^#\[cfg\(test\)\]/.test(l.trim()));
  lines.slice(0, end < 0 ? lines.length : end).forEach((line, i) => {
    const code = line.replace(/\/\/.*$/, '');
    if (/^\s*(?:pub\s+)?fn handshake_failure\b/.test(code)) inHandshakeFailure = true;
    else if (inHandshakeFailure && /^}/.test(code)) inHandshakeFailure = false;
    const sends = /"t":\s*"refused"|\brefused\(|\bRefused\s*\{|\bstatus_response\(/.test(code);
    if (sends || inHandshakeFailure) for (const m of code.matchAll(/"([a-z][a-z0-9_]*)"/g)) add(m[1]!, i);
    for (const m of code.matchAll(/let\s+reason\s*=\s*format!\("([a-z][a-z0-9_]*):/g)) add(m[1]!, i);
  });
  return out;
}

// ------------------------------------------------------------ the docs

interface DocRow {
  readonly reason: string;
  readonly direction: string;
  readonly status: string;
  readonly flag: string;
  readonly meaning: string;
  readonly action: string;
}

/** The rows of the table headed `| reason | direction | HBONE status | response flag | meaning | what to do |`. */
function docRows(md: string): DocRow[] {
  const lines = md.split('\n');
  const head = lines.findIndex((l) => /^\|\s*reason\s*\|\s*direction\s*\|\s*HBONE status\s*\|\s*response flag\s*\|\s*meaning\s*\|\s*what to do\s*\|$/.test(l.trim()));
  if (head < 0) return [];
  const rows: DocRow[] = [];
  for (const l of lines.slice(head + 2)) {
    if (!l.trim().startsWith('|')) break;
    const cells = l.trim().slice(1, -1).split(' | ').map((c) => c.trim());
    const [reason = '', direction = '', status = '', flag = '', meaning = '', action = ''] = cells;
    rows.push({ reason: reason.replace(/^`|`$/g, ''), direction, status, flag: flag.replace(/^`|`$/g, ''), meaning, action });
  }
  return rows;
}

/** How a registry entry reads in the table. */
function expectedRow(reason: string, s: RefusalSpec): Omit<DocRow, 'action'> {
  return { reason, direction: s.directions.join(', '), status: s.hboneStatus === null ? '—' : String(s.hboneStatus), flag: s.responseFlag ?? '—', meaning: s.meaning };
}

function docDrift(rows: readonly DocRow[], registry: Readonly<Record<string, RefusalSpec>>): string[] {
  const problems: string[] = [];
  const seen = new Set<string>();
  for (const r of rows) {
    if (seen.has(r.reason)) problems.push(`${r.reason}: documented twice`);
    seen.add(r.reason);
    const spec = registry[r.reason];
    if (!spec) {
      problems.push(`${r.reason}: documented but not registered`);
      continue;
    }
    const { action, ...doc } = r;
    const want = expectedRow(r.reason, spec);
    for (const k of Object.keys(want) as (keyof typeof want)[]) if (doc[k] !== want[k]) problems.push(`${r.reason}: ${k} is "${doc[k]}" in the docs, "${want[k]}" in the registry`);
    if (!action) problems.push(`${r.reason}: no "what to do"`);
  }
  for (const reason of Object.keys(registry)) if (!seen.has(reason)) problems.push(`${reason}: registered but not documented`);
  return problems;
}

// ------------------------------------------------------------ self-checks

t.test('the scanners find what they look for', async (t) => {
  const ts_ = [
    "d.metrics.refused.inc({ direction: 'inbound', reason: 'made_up_a' });",
    "metrics.refused.inc({ direction: 'outbound', reason: refusalOf(x) });",
    "return refuse('made_up_b', `detail ${x}`);",
    "refuseRecord(d, record, 'made_up_c', error);",
    "this.#send({ t: 'decide', id, status: 400, reason: 'made_up_d' });",
    "this.#send({ $case: 'decide', decide: { id, status: 400, reason: 'made_up_d2', dial: '' } });",
    "return { ok: false, reason: 'made_up_e', detail: 'x' };",
    "return { ok: true, reason: 'not_a_refusal' };",
    "log.warn({ reason: 'not_a_refusal' }, 'x');",
    "refuse('denied', 'denied: rule by ns/p');",
  ].join('\n');
  t.same(agentReasons('x.ts', ts_).map((f) => f.reason), ['made_up_a', 'made_up_b', 'made_up_c', 'made_up_d', 'made_up_d2', 'made_up_e', 'denied']);

  const rs = [
    'self.core.outbox.send(json!({ "t": "refused", "reason": "made_up_f" }));',
    'self.core.outbox.send(json!({ "t": "refused", "direction": "outbound", "reason": "made_up_g", "error": e }));',
    'self.core.outbox.send(refused("made_up_h"));',
    'self.outbox.send(Out::Refused(pb::Refused { reason: "made_up_i".into(), ..Default::default() }));',
    'let _ = respond.send_response(status_response(503, "made_up_j"), true);',
    'let reason = format!("made_up_k: {code}");',
    'fn handshake_failure(e: &Error) -> &\'static str {',
    '    match e { A => "made_up_l", _ => "made_up_m" }',
    '}',
    'let x = "not_a_refusal"; // refused("in_a_comment")',
    '#[cfg(test)]',
    'mod tests { fn t() { status_response(403, "in_a_test"); } }',
  ].join('\n');
  t.same(dataplaneReasons('x.rs', rs).map((f) => f.reason), ['made_up_f', 'made_up_g', 'made_up_h', 'made_up_i', 'made_up_j', 'made_up_k', 'made_up_l', 'made_up_m']);

  const registry = { a_b: REFUSALS.not_connect, c: REFUSALS.tls };
  const good = [
    '| reason | direction | HBONE status | response flag | meaning | what to do |',
    '|---|---|---|---|---|---|',
    `| \`a_b\` | inbound | 405 | \`NR\` | ${REFUSALS.not_connect.meaning} | fix it |`,
    `| \`c\` | inbound | — | — | ${REFUSALS.tls.meaning} | fix it |`,
  ];
  t.same(docDrift(docRows(good.join('\n')), registry), [], 'a table that matches');
  const bad = [...good.slice(0, 2), `| \`a_b\` | inbound | 400 | \`NR\` | ${REFUSALS.not_connect.meaning} | |`, '| `gone` | inbound | — | — | x | y |'];
  t.same(docDrift(docRows(bad.join('\n')), registry).sort(), [
    'a_b: no "what to do"',
    'a_b: status is "400" in the docs, "405" in the registry',
    'c: registered but not documented',
    'gone: documented but not registered',
  ]);
});

// ------------------------------------------------------------ the real tree

t.test('every reason the agent emits is registered', async (t) => {
  // Where connections are decided and carried; agent/state/ refuses watch updates, not connections (ambit_watch_rejected_total).
  const found = ['agent/connection', 'agent/proxy', 'agent/dataplane'].flatMap((d) => walk(d, '.ts')).flatMap((p) => agentReasons(p, readFileSync(join(root, p), 'utf8')));
  const reasons = new Set(found.map((f) => f.reason));
  // Not blind: the decision modules' own reasons are found.
  for (const r of ['not_connect', 'plaintext_refused_strict_mode', 'source_not_verified', 'no_route', 'unknown_session', 'unverified_source_address'] as const) t.ok(reasons.has(r), `finds ${r}`);
  t.same(found.filter((f) => !isRefusalReason(f.reason)).map((f) => `${f.where}: ${f.reason}`), [], 'no unregistered reason');
});

t.test('every reason ambit-dataplane emits is registered', async (t) => {
  const found = walk('dataplane/src', '.rs').flatMap((p) => dataplaneReasons(p, readFileSync(join(root, p), 'utf8')));
  const reasons = new Set(found.map((f) => f.reason));
  for (const r of ['tls', 'peer_certificate', 'not_h2', 'draining', 'socks_protocol', 'agent_unavailable', 'workload_unreachable'] as const) t.ok(reasons.has(r), `finds ${r}`);
  t.same(found.filter((f) => !isRefusalReason(f.reason)).map((f) => `${f.where}: ${f.reason}`), [], 'no unregistered reason');
});

t.test('docs/refusals.md documents every registered reason as registered', async (t) => {
  const rows = docRows(readFileSync(join(root, 'docs/refusals.md'), 'utf8'));
  t.ok(rows.length > 0, 'the table is found');
  t.same(docDrift(rows, REFUSALS), []);
});

// ------------------------------------------------------------ the helpers

t.test('what the registry tells the decision modules', async (t) => {
  t.equal(failureOfStatus(401), 'denied', 'a peer\'s 401 is a denial');
  t.equal(failureOfStatus(400), 'no_route');
  t.equal(failureOfStatus(503), 'refused');
  t.equal(failureOfStatus(0), 'unreachable', 'no answer');
  t.equal(failureOfStatus(502), 'unreachable', 'any other status');
  t.same(OUTBOUND_FAILURES.map((f) => flagOf(f)), ['DENY', 'NR', 'UF', 'UF', 'NR']);
  t.equal(answerStatusOf('not_connect'), 405);
  t.equal(answerStatusOf('unverified_source_address'), 401);
  t.equal(answerStatusOf('plaintext_refused_strict_mode'), 401, 'a plaintext policy refusal answers 401');
  t.equal(answerStatusOf('loop'), 400, 'any other plaintext refusal 400');
  t.equal(flagOf('peer_certificate'), '-', 'refused before any record');
  t.equal(refusalOf('draining'), 'draining');
  t.equal(refusalOf('something new'), 'unrecognized', 'a data plane of another version cannot add a label');
  t.notOk(isRefusalReason('toString'), 'only own keys');
  for (const [reason, s] of Object.entries(REFUSALS) as [RefusalReason, RefusalSpec][]) {
    t.ok(s.directions.length > 0 && /^[^\s|].*[^.]\.$/.test(s.meaning) && !s.meaning.includes('\n'), `${reason}: a direction and a one-sentence meaning (one line, no table separator)`);
  }
});
