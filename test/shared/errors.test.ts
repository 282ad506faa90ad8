import t from 'tap';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AmbitError, ERROR_CODES, errorMessage, isAmbitError, type ErrorCode } from '../../shared/errors.ts';

// Codes are a public contract (DESIGN §9 rule 3): unique, well formed,
// documented in docs/errors.md, and every code the sources mention exists.

const root = fileURLToPath(new URL('../../', import.meta.url));
const CODE_SHAPE = /^AMBIT_ERR_[A-Z]+_[A-Z_]+$/;
/**
 * Codes that predate the AREA_WHAT shape and cannot be renamed (codes are
 * stable; this one is on the wire in the ambit-error-code trailer). Each entry
 * must exist and must really break the shape, so the list cannot go stale.
 */
const SHAPE_EXCEPTIONS: Readonly<Record<string, string>> = {
  AMBIT_ERR_INTERNAL: 'catch-all with no area; sent by shared/grpc-errors.ts toStatus for untyped errors',
};
/** A code mention in source text: the prefix alone (e.g. in `code.replace('AMBIT_ERR_', '')`) is not one. */
const CODE_MENTION = /\bAMBIT_ERR_[A-Z0-9_]*[A-Z0-9]\b/g;
const SKIP_DIRS = new Set(['node_modules', 'dist']);
const SKIP_PATHS = new Set([join('shared', 'proto', 'gen')]);

function walkTs(dir: string, out: string[] = []): string[] {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const abs = join(dir, e.name);
    const rel = relative(root, abs);
    if (e.isDirectory()) {
      if (SKIP_DIRS.has(e.name) || SKIP_PATHS.has(rel)) continue;
      walkTs(abs, out);
    } else if (e.isFile() && e.name.endsWith('.ts')) {
      out.push(rel.split(sep).join('/'));
    }
  }
  return out;
}

function documentedCodes(markdown: string): string[] {
  return [...markdown.matchAll(/^###\s+(\S+)\s*$/gm)].map((m) => m[1]!);
}

const codes = Object.keys(ERROR_CODES) as ErrorCode[];
const docs = readFileSync(join(root, 'docs', 'errors.md'), 'utf8');

t.test('every code has the AMBIT_ERR_<AREA>_<WHAT> shape', async (t) => {
  t.ok(codes.length > 0, 'ERROR_CODES is not empty');
  for (const code of codes) {
    if (code in SHAPE_EXCEPTIONS) continue;
    t.match(code, CODE_SHAPE, `${code} is AMBIT_ERR_<AREA>_<WHAT>`);
  }
  for (const [code, why] of Object.entries(SHAPE_EXCEPTIONS)) {
    t.ok(code in ERROR_CODES, `shape exception ${code} (${why}) is a real code`);
    t.notOk(CODE_SHAPE.test(code), `shape exception ${code} really needs the exception`);
  }
  t.notOk(CODE_SHAPE.test('AMBIT_ERR_CONFIG'), 'a code without a WHAT part is rejected by the shape check');
  t.notOk(CODE_SHAPE.test('AMBIT_ERR_Config_invalid'), 'a lower-case code is rejected by the shape check');
});

t.test('codes and their descriptions are unique', async (t) => {
  // Object keys cannot repeat at run time, so also compare the source text:
  // a repeated key in the literal would silently keep only the last one.
  const source = readFileSync(join(root, 'shared', 'errors.ts'), 'utf8');
  const literal = /export const ERROR_CODES = \{([\s\S]*?)\n\} as const;/.exec(source);
  t.ok(literal, 'ERROR_CODES literal found in shared/errors.ts');
  const keysInSource = [...(literal?.[1] ?? '').matchAll(/^\s*(AMBIT_ERR_[A-Z0-9_]+)\s*:/gm)].map((m) => m[1]!);
  t.same(keysInSource, codes, 'the literal lists each code exactly once');
  t.equal(new Set(keysInSource).size, keysInSource.length, 'no key repeats in the literal');

  const byDescription = new Map<string, string[]>();
  for (const code of codes) {
    const d = ERROR_CODES[code].trim().toLowerCase();
    t.ok(d.length > 10, `${code} has a real description`);
    byDescription.set(d, [...(byDescription.get(d) ?? []), code]);
  }
  for (const [d, owners] of byDescription) t.equal(owners.length, 1, `description "${d}" belongs to one code (${owners.join(', ')})`);
});

t.test('docs/errors.md documents every code, once, and nothing else', async (t) => {
  const headings = documentedCodes(docs);
  for (const code of codes) {
    t.equal(headings.filter((h) => h === code).length, 1, `docs/errors.md has one "### ${code}" section`);
  }
  for (const h of headings) t.ok(h in ERROR_CODES, `documented heading ${h} is a code in ERROR_CODES`);
  const mentioned = new Set(docs.match(CODE_MENTION) ?? []);
  for (const m of mentioned) t.ok(m in ERROR_CODES, `code ${m} mentioned in docs/errors.md exists`);
  // Every section says what to do and who raises it, so the page stays useful.
  const sections = docs.split(/^### /m).slice(1);
  for (const s of sections) {
    const name = s.split('\n', 1)[0]!.trim();
    t.match(s, /\*\*What to do:\*\*/, `${name} says what the operator should do`);
    t.match(s, /\*\*Raised by:\*\*/, `${name} says which component raises it`);
  }
  t.same(documentedCodes('### AMBIT_ERR_A_B\ntext\n#### not this\n### AMBIT_ERR_C_D \n'), ['AMBIT_ERR_A_B', 'AMBIT_ERR_C_D'], 'heading parser self-check');
});

t.test('every code mentioned in shared/, controller/ and agent/ exists', async (t) => {
  const files = ['shared', 'controller', 'agent'].flatMap((d) => walkTs(join(root, d)));
  t.ok(files.includes('shared/errors.ts'), 'the walk reaches shared/errors.ts');
  t.notOk(files.some((f) => f.startsWith('shared/proto/gen/')), 'generated code is skipped');
  let mentions = 0;
  const unknown: string[] = [];
  for (const f of files) {
    readFileSync(join(root, f), 'utf8').split('\n').forEach((line, i) => {
      for (const m of line.match(CODE_MENTION) ?? []) {
        mentions++;
        if (!(m in ERROR_CODES)) unknown.push(`${f}:${i + 1}: ${m}`);
      }
    });
  }
  t.same(unknown, [], 'no source file mentions a code missing from ERROR_CODES');
  t.ok(mentions > codes.length, `found ${mentions} code mentions in ${files.length} files`);
  t.same("x.replace('AMBIT_ERR_', '') AMBIT_ERR_CSR_INVALID, AMBIT_ERR_NOPE_X.".match(CODE_MENTION), ['AMBIT_ERR_CSR_INVALID', 'AMBIT_ERR_NOPE_X'], 'mention scanner self-check');
});

t.test('AmbitError keeps code, message, cause and frozen details', async (t) => {
  const cause = new Error('disk full');
  const details: Record<string, unknown> = { path: '/var/lib/ambit', op: 'write' };
  const err = new AmbitError('AMBIT_ERR_STORE_IO', 'store write failed', { cause, details });
  t.ok(err instanceof Error, 'is an Error');
  t.ok(err instanceof AmbitError, 'is an AmbitError');
  t.equal(err.name, 'AmbitError');
  t.equal(err.code, 'AMBIT_ERR_STORE_IO');
  t.equal(err.message, 'store write failed');
  t.equal(err.cause, cause, 'cause is the original error, not a copy');
  t.match(err.stack, /AmbitError: store write failed/, 'stack names the error');
  t.same(err.details, { path: '/var/lib/ambit', op: 'write' });
  t.ok(Object.isFrozen(err.details), 'details are frozen');
  t.throws(() => {
    (err.details as Record<string, unknown>).path = '/tmp';
  }, TypeError, 'writing to details throws (ES modules are strict)');
  details.path = '/elsewhere';
  t.equal(err.details.path, '/var/lib/ambit', 'details are a copy: later changes to the caller\'s object do not leak in');

  const bare = new AmbitError('AMBIT_ERR_INTERNAL', 'boom');
  t.notOk('cause' in bare, 'no cause property when none was given');
  t.same(bare.details, {}, 'details default to empty');
  t.ok(Object.isFrozen(bare.details), 'empty details are frozen too');

  const falsy = new AmbitError('AMBIT_ERR_INTERNAL', 'falsy cause', { cause: 0 });
  t.equal(falsy.cause, 0, 'a falsy cause is kept');
});

t.test('isAmbitError and errorMessage', async (t) => {
  const err = new AmbitError('AMBIT_ERR_CSR_INVALID', 'bad csr');
  t.ok(isAmbitError(err));
  t.ok(isAmbitError(err, 'AMBIT_ERR_CSR_INVALID'));
  t.notOk(isAmbitError(err, 'AMBIT_ERR_CERT_INVALID'), 'another code does not match');
  const lookalike = Object.assign(new Error('x'), { code: 'AMBIT_ERR_CSR_INVALID' });
  t.notOk(isAmbitError(lookalike), 'a plain Error with a code property is not an AmbitError');
  t.notOk(isAmbitError(undefined));
  t.equal(errorMessage(err), 'bad csr');
  t.equal(errorMessage('text'), 'text');
  t.equal(errorMessage(42), '42');
});
