import t from 'tap';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { basename, dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

/*
 * Static checks of the source tree against DESIGN §9. Each check is a pure
 * function over (path, text) or a graph, run once over the real tree and once
 * over a small in-memory sample that must trip it, so a check that silently
 * stopped finding anything would fail here too.
 *
 *  (a) no import cycles among our modules (type-only cycles are a note)
 *  (b) layering: shared/ → nothing of ours above it; agent/ and controller/
 *      never import each other; runtime code never imports test/bench/scripts
 *  (c) process.env only in config modules and main.ts entry points (rule 4)
 *  (d) no TS enum (rule 8)
 *  (e) no prom-client global register, no module-level registries, metrics
 *      or loggers (rule 2: no singletons)
 *  (f) which modules no test imports (informational only)
 */

const root = fileURLToPath(new URL('../', import.meta.url));
const SOURCE_DIRS = ['shared', 'controller', 'agent', 'scripts', 'bench'] as const;
const SKIP_DIRS = new Set(['node_modules', 'dist']);
const SKIP_PATHS = new Set(['shared/proto/gen']);

/** Source modules that need no test of their own, each with the reason. */
const UNTESTED_ALLOWED: Readonly<Record<string, string>> = {
  'controller/store/sqlite-schema.ts': 'migrations and row mapping private to SqliteStore; exercised by test/controller/store/sqlite-store.test.ts',
  'controller/metrics.ts': 'metric definitions only; their values are asserted through /metrics by the controller tests',
};

// ---------------------------------------------------------------- the tree

/** Repository-relative, '/'-separated paths of the .ts files under `dir`. */
function walkTs(dir: string, out: string[] = []): string[] {
  if (!existsSync(join(root, dir))) return out;
  for (const e of readdirSync(join(root, dir), { withFileTypes: true })) {
    const rel = `${dir}/${e.name}`;
    if (e.isDirectory()) {
      if (SKIP_DIRS.has(e.name) || SKIP_PATHS.has(rel)) continue;
      walkTs(rel, out);
    } else if (e.isFile() && e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) {
      out.push(rel);
    }
  }
  return out.sort();
}

function parse(path: string, text: string): ts.SourceFile {
  return ts.createSourceFile(path, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
}

function lineOf(sf: ts.SourceFile, node: ts.Node): number {
  return sf.getLineAndCharacterOfPosition(node.getStart(sf)).line + 1;
}

// ---------------------------------------------------------------- imports

/**
 * 'value': a static import/export that loads the module at run time. Note that
 * `import { type A } from './a.ts'` is a value edge: under verbatimModuleSyntax
 * and Node's type stripping it becomes `import {} from './a.ts'`, which still
 * loads ./a.ts. Only `import type` / `export type` are erased entirely.
 * 'type': erased at run time, but still couples the modules.
 * 'dynamic': import() or an import type node; lazy, so it cannot take part in a
 * load-time cycle, but it still counts for layering.
 */
type EdgeKind = 'value' | 'type' | 'dynamic';

interface ImportRef {
  readonly spec: string;
  readonly kind: EdgeKind;
  readonly line: number;
}

function importsOf(path: string, text: string): ImportRef[] {
  const sf = parse(path, text);
  const out: ImportRef[] = [];
  const visit = (node: ts.Node): void => {
    if (ts.isImportDeclaration(node) && ts.isStringLiteral(node.moduleSpecifier)) {
      out.push({ spec: node.moduleSpecifier.text, kind: node.importClause?.isTypeOnly ? 'type' : 'value', line: lineOf(sf, node) });
    } else if (ts.isExportDeclaration(node) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) {
      out.push({ spec: node.moduleSpecifier.text, kind: node.isTypeOnly ? 'type' : 'value', line: lineOf(sf, node) });
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
      const arg = node.arguments[0];
      if (arg && ts.isStringLiteralLike(arg)) out.push({ spec: arg.text, kind: 'dynamic', line: lineOf(sf, node) });
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument) && ts.isStringLiteral(node.argument.literal)) {
      out.push({ spec: node.argument.literal.text, kind: 'dynamic', line: lineOf(sf, node) });
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

/** A relative specifier resolved to a repository-relative path; undefined for packages. */
function resolveSpec(fromPath: string, spec: string): string | undefined {
  if (!spec.startsWith('./') && !spec.startsWith('../')) return undefined;
  return relative(root, resolve(root, dirname(fromPath), spec)).split(sep).join('/');
}

interface Edge {
  readonly kind: EdgeKind;
  readonly line: number;
}
type Graph = Map<string, Map<string, Edge>>;

interface ScanResult {
  readonly graph: Graph;
  readonly unresolved: string[];
}

/** The import graph over `files`; a value import wins over a type import of the same module. */
function buildGraph(files: readonly string[], read: (path: string) => string, exists: (path: string) => boolean): ScanResult {
  const graph: Graph = new Map();
  const unresolved: string[] = [];
  for (const f of files) {
    const edges = new Map<string, Edge>();
    graph.set(f, edges);
    for (const ref of importsOf(f, read(f))) {
      const target = resolveSpec(f, ref.spec);
      if (target === undefined) continue;
      if (!target.endsWith('.ts')) unresolved.push(`${f}:${ref.line}: relative import ${ref.spec} lacks the .ts extension Node needs`);
      else if (!exists(target)) unresolved.push(`${f}:${ref.line}: ${ref.spec} does not exist`);
      const prev = edges.get(target);
      const rank = { value: 2, type: 1, dynamic: 0 } as const;
      if (!prev || rank[ref.kind] > rank[prev.kind]) edges.set(target, ref);
    }
  }
  return { graph, unresolved };
}

/**
 * Depth-first search for cycles. Returns one cycle per back edge found, each
 * as a path that starts and ends at the same node. Deterministic: nodes and
 * edges are visited in sorted order.
 */
function findCycles(graph: ReadonlyMap<string, Iterable<string>>): string[][] {
  const state = new Map<string, 'active' | 'done'>();
  const stack: string[] = [];
  const cycles: string[][] = [];
  const visit = (node: string): void => {
    state.set(node, 'active');
    stack.push(node);
    for (const next of [...(graph.get(node) ?? [])].sort()) {
      const s = state.get(next);
      if (s === 'active') cycles.push([...stack.slice(stack.indexOf(next)), next]);
      else if (s === undefined) visit(next);
    }
    stack.pop();
    state.set(node, 'done');
  };
  for (const node of [...graph.keys()].sort()) if (!state.has(node)) visit(node);
  return cycles;
}

function subgraph(graph: Graph, keep: (e: Edge) => boolean): Map<string, string[]> {
  return new Map([...graph].map(([from, edges]) => [from, [...edges].filter(([, e]) => keep(e)).map(([to]) => to)]));
}

function describeCycle(graph: Graph, cycle: readonly string[]): string {
  const hops = cycle.slice(0, -1).map((from, i) => {
    const to = cycle[i + 1]!;
    const e = graph.get(from)?.get(to);
    return `${from}:${e?.line ?? '?'}${e?.kind === 'type' ? ' (type-only)' : ''} → ${to}`;
  });
  return hops.join('\n    ');
}

// ---------------------------------------------------------------- layering

const RUNTIME_LAYERS = ['shared', 'controller', 'agent'];

function topDir(path: string): string {
  return path.split('/', 1)[0]!;
}

/** Why `from` may not import `to`, or undefined when it may. */
function layerViolation(from: string, to: string): string | undefined {
  const a = topDir(from);
  const b = topDir(to);
  if (a === 'shared' && (b === 'controller' || b === 'agent')) return `shared/ must not import from ${b}/`;
  if (a === 'agent' && b === 'controller') return 'agent/ must not import from controller/';
  if (a === 'controller' && b === 'agent') return 'controller/ must not import from agent/';
  if (RUNTIME_LAYERS.includes(a) && (b === 'test' || b === 'bench' || b === 'scripts')) return `runtime code in ${a}/ must not import from ${b}/`;
  return undefined;
}

// ---------------------------------------------------------------- process.env

/** Config modules and entry points: main.ts files, and the programs directly in scripts/ and bench/. */
function mayReadEnv(path: string): boolean {
  const name = basename(path);
  const entry = /^(scripts|bench)\/[^/]+\.ts$/.test(path.replace(/\\/g, '/'));
  return name === 'config.ts' || name.endsWith('-config.ts') || name === 'main.ts' || entry;
}

function envReads(path: string, text: string): number[] {
  const sf = parse(path, text);
  const lines: number[] = [];
  const isProcess = (e: ts.Expression): boolean =>
    (ts.isIdentifier(e) && e.text === 'process') ||
    (ts.isPropertyAccessExpression(e) && e.name.text === 'process' && ts.isIdentifier(e.expression) && e.expression.text === 'globalThis');
  const visit = (node: ts.Node): void => {
    if (ts.isPropertyAccessExpression(node) && node.name.text === 'env' && isProcess(node.expression)) lines.push(lineOf(sf, node));
    else if (ts.isElementAccessExpression(node) && isProcess(node.expression) && ts.isStringLiteralLike(node.argumentExpression) && node.argumentExpression.text === 'env') {
      lines.push(lineOf(sf, node));
    } else if (ts.isVariableDeclaration(node) && ts.isObjectBindingPattern(node.name) && node.initializer && isProcess(node.initializer)) {
      // const { env } = process
      if (node.name.elements.some((el) => (el.propertyName ?? el.name).getText(sf) === 'env')) lines.push(lineOf(sf, node));
    } else if (ts.isImportDeclaration(node) && ts.isStringLiteral(node.moduleSpecifier) && /^(node:)?process$/.test(node.moduleSpecifier.text)) {
      // import { env } from 'node:process'
      const nb = node.importClause?.namedBindings;
      if (nb && ts.isNamedImports(nb) && nb.elements.some((el) => (el.propertyName ?? el.name).text === 'env')) lines.push(lineOf(sf, node));
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return lines;
}

// ---------------------------------------------------------------- enum

function enumDeclarations(path: string, text: string): number[] {
  const sf = parse(path, text);
  const lines: number[] = [];
  const visit = (node: ts.Node): void => {
    if (ts.isEnumDeclaration(node)) lines.push(lineOf(sf, node));
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return lines;
}

// ---------------------------------------------------------------- singletons

const METRIC_CLASSES = new Set(['Counter', 'Gauge', 'Histogram', 'Summary']);

/** True when `node` runs once per module load rather than per call or per instance. */
function atModuleLevel(node: ts.Node): boolean {
  for (let p = node.parent; p !== undefined; p = p.parent) {
    if (ts.isFunctionLike(p)) return false;
    if (ts.isPropertyDeclaration(p) && !p.modifiers?.some((m) => m.kind === ts.SyntaxKind.StaticKeyword)) return false;
  }
  return true;
}

function objectLacks(arg: ts.Expression | undefined, prop: string): boolean {
  if (arg === undefined) return true;
  if (!ts.isObjectLiteralExpression(arg)) return false; // cannot tell: give the benefit of the doubt
  if (arg.properties.some((p) => ts.isSpreadAssignment(p))) return false;
  return !arg.properties.some((p) => p.name !== undefined && (ts.isIdentifier(p.name) || ts.isStringLiteral(p.name)) && p.name.text === prop);
}

/** prom-client's global register, module-level registries/metrics/loggers. */
function singletonUses(path: string, text: string): string[] {
  const sf = parse(path, text);
  const out: string[] = [];
  const prom = new Map<string, string>(); // local name → prom-client export ('*' for the namespace)
  const pinoNames = new Set<string>();
  for (const st of sf.statements) {
    if (!ts.isImportDeclaration(st) || !ts.isStringLiteral(st.moduleSpecifier) || !st.importClause || st.importClause.isTypeOnly) continue;
    const mod = st.moduleSpecifier.text;
    const clause = st.importClause;
    if (mod === 'prom-client') {
      if (clause.name) prom.set(clause.name.text, '*');
      const nb = clause.namedBindings;
      if (nb && ts.isNamespaceImport(nb)) prom.set(nb.name.text, '*');
      if (nb && ts.isNamedImports(nb)) {
        for (const el of nb.elements) {
          if (el.isTypeOnly) continue;
          const imported = (el.propertyName ?? el.name).text;
          prom.set(el.name.text, imported);
          if (imported === 'register') out.push(`${path}:${lineOf(sf, el)}: imports prom-client's global default register`);
        }
      }
    } else if (mod === 'pino') {
      if (clause.name) pinoNames.add(clause.name.text);
      const nb = clause.namedBindings;
      if (nb && ts.isNamedImports(nb)) for (const el of nb.elements) if ((el.propertyName ?? el.name).text === 'pino' && !el.isTypeOnly) pinoNames.add(el.name.text);
    }
  }
  /** The prom-client export an expression names (`Registry`, `client.Registry`), if any. */
  const promExport = (e: ts.Expression): string | undefined => {
    if (ts.isIdentifier(e)) {
      const v = prom.get(e.text);
      return v === '*' ? undefined : v;
    }
    if (ts.isPropertyAccessExpression(e) && ts.isIdentifier(e.expression) && prom.get(e.expression.text) === '*') return e.name.text;
    return undefined;
  };
  const isPino = (e: ts.Expression): boolean =>
    (ts.isIdentifier(e) && pinoNames.has(e.text)) || (ts.isPropertyAccessExpression(e) && ts.isIdentifier(e.expression) && pinoNames.has(e.expression.text) && e.name.text === 'destination');
  const visit = (node: ts.Node): void => {
    const where = (): string => `${path}:${lineOf(sf, node)}`;
    if (ts.isPropertyAccessExpression(node) && ts.isIdentifier(node.expression) && prom.get(node.expression.text) === '*' && node.name.text === 'register') {
      out.push(`${where()}: uses prom-client's global default register`);
    } else if (ts.isNewExpression(node)) {
      const cls = promExport(node.expression);
      if (cls === 'Registry' && atModuleLevel(node)) out.push(`${where()}: module-level prom-client Registry (build it in app.ts and pass it down)`);
      if (cls !== undefined && METRIC_CLASSES.has(cls)) {
        if (atModuleLevel(node)) out.push(`${where()}: module-level prom-client ${cls}`);
        else if (objectLacks(node.arguments?.[0], 'registers')) out.push(`${where()}: ${cls} without a registers option lands in prom-client's global default register`);
      }
    } else if (ts.isCallExpression(node)) {
      if (promExport(node.expression) === 'collectDefaultMetrics' && objectLacks(node.arguments[0], 'register')) {
        out.push(`${where()}: collectDefaultMetrics() without a register option fills prom-client's global default register`);
      }
      if (isPino(node.expression) && atModuleLevel(node)) out.push(`${where()}: module-level pino logger (build it in app.ts or main.ts and pass it down)`);
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out;
}

// ---------------------------------------------------------------- self-checks

t.test('the checks themselves catch what they look for', async (t) => {
  t.test('cycle detector', async (t) => {
    const g = new Map([
      ['a', ['b']],
      ['b', ['c']],
      ['c', ['a']],
      ['d', ['a', 'e']],
      ['e', []],
    ]);
    t.same(findCycles(g), [['a', 'b', 'c', 'a']], 'finds a → b → c → a');
    t.same(findCycles(new Map([['x', ['x']]])), [['x', 'x']], 'finds a self-import');
    t.same(findCycles(new Map([['a', ['b', 'c']], ['b', ['c']], ['c', []]])), [], 'a diamond is not a cycle');
  });

  t.test('import parser and graph', async (t) => {
    const src = [
      "import { a } from './a.ts';",
      "import type { B } from './b.ts';",
      "import { type C } from './c.ts';",
      "export * from './d.ts';",
      "export type { E } from './e.ts';",
      "import './f.ts';",
      "import fs from 'node:fs';",
      "// import { z } from './commented.ts';",
      "const s = \"import { y } from './in-a-string.ts'\";",
      "const g = await import('./g.ts');",
      "type H = typeof import('./h.ts');",
    ].join('\n');
    t.same(
      importsOf('x/m.ts', src).map((r) => `${r.kind} ${r.spec} @${r.line}`),
      ['value ./a.ts @1', 'type ./b.ts @2', 'value ./c.ts @3', 'value ./d.ts @4', 'type ./e.ts @5', 'value ./f.ts @6', 'value node:fs @7', 'dynamic ./g.ts @10', 'dynamic ./h.ts @11'],
    );
    t.equal(resolveSpec('shared/resources/wire.ts', '../errors.ts'), 'shared/errors.ts');
    t.equal(resolveSpec('shared/x.ts', 'prom-client'), undefined, 'packages are not our modules');

    const files: Record<string, string> = {
      'shared/a.ts': "import { b } from './b.ts';\nimport type { C } from './c.ts';",
      'shared/b.ts': "import { a } from './a.ts';",
      'shared/c.ts': "import { a } from './a.ts';\nimport { gone } from './gone.ts';\nimport { x } from './no-ext';",
    };
    const { graph, unresolved } = buildGraph(Object.keys(files), (p) => files[p]!, (p) => p in files);
    t.same(findCycles(subgraph(graph, (e) => e.kind === 'value')), [['shared/a.ts', 'shared/b.ts', 'shared/a.ts']], 'value cycle a ↔ b');
    const all = findCycles(subgraph(graph, (e) => e.kind !== 'dynamic'));
    t.ok(all.some((c) => c.includes('shared/c.ts')), 'the type edge a → c closes a cycle in the full graph');
    t.match(describeCycle(graph, ['shared/a.ts', 'shared/c.ts', 'shared/a.ts']), /shared\/a\.ts:2 \(type-only\) → shared\/c\.ts/);
    t.equal(unresolved.length, 2, 'a missing module and a missing .ts extension are reported');
  });

  t.test('layering', async (t) => {
    t.ok(layerViolation('shared/x.ts', 'controller/y.ts'));
    t.ok(layerViolation('shared/x.ts', 'agent/y.ts'));
    t.ok(layerViolation('agent/x.ts', 'controller/y.ts'));
    t.ok(layerViolation('controller/x.ts', 'agent/y.ts'));
    t.ok(layerViolation('controller/x.ts', 'test/y.ts'));
    t.equal(layerViolation('agent/x.ts', 'shared/y.ts'), undefined);
    t.equal(layerViolation('controller/cli/x.ts', 'controller/y.ts'), undefined);
    t.equal(layerViolation('bench/ca.ts', 'controller/ca/authority.ts'), undefined);
  });

  t.test('process.env', async (t) => {
    const src = 'const a = process.env.X;\nconst b = process["env"];\nconst { env } = process;\nimport { env as e } from "node:process";\nconst c = globalThis.process.env;\nconst d = process.argv;\n// process.env in a comment';
    t.same(envReads('x.ts', src), [1, 2, 3, 4, 5]);
    t.ok(mayReadEnv('agent/config.ts'));
    t.ok(mayReadEnv('controller/cli/main.ts'));
    t.ok(mayReadEnv('scripts/demo.ts'), 'a program in scripts/ is an entry point');
    t.notOk(mayReadEnv('scripts/demo/processes.ts'), 'a module under it is not');
    t.ok(mayReadEnv('shared/tls-config.ts'));
    t.notOk(mayReadEnv('shared/config-parse.ts'));
    t.notOk(mayReadEnv('agent/app.ts'));
  });

  t.test('enum', async (t) => {
    t.same(enumDeclarations('x.ts', 'enum A { X }\nconst enum B { Y }\nexport const C = { Z: 1 } as const;\nfunction f() { enum D { W } }'), [1, 2, 4]);
  });

  t.test('prom-client and logger singletons', async (t) => {
    const bad = [
      "import { register, Registry, Counter, collectDefaultMetrics } from 'prom-client';",
      "import * as client from 'prom-client';",
      "import { pino } from 'pino';",
      'const r = new Registry();',
      "const c = new Counter({ name: 'x', help: 'y', registers: [r] });",
      'collectDefaultMetrics();',
      "collectDefaultMetrics({ prefix: 'a_' });",
      'client.register.clear();',
      'const log = pino();',
      "function f() { return new Counter({ name: 'x', help: 'y' }); }",
      'class K { static r = new client.Registry(); }',
    ].join('\n');
    t.same(
      singletonUses('x.ts', bad).map((v) => v.replace(/: .*/, '')),
      ['x.ts:1', 'x.ts:4', 'x.ts:5', 'x.ts:6', 'x.ts:7', 'x.ts:8', 'x.ts:9', 'x.ts:10', 'x.ts:11'],
    );
    const good = [
      "import { Registry, Counter, collectDefaultMetrics, type Gauge } from 'prom-client';",
      "import { pino } from 'pino';",
      "import { Registry as StateRegistry } from './registry.ts';",
      'export function make(prefix: string) {',
      '  const registry = new Registry();',
      '  collectDefaultMetrics({ register: registry, prefix });',
      "  return { c: new Counter({ name: 'x', help: 'y', registers: [registry] }), log: pino({}, pino.destination(2)) };",
      '}',
      'class App { readonly registry = new Registry(); }',
      'const state = new StateRegistry();',
    ].join('\n');
    t.same(singletonUses('y.ts', good), [], 'per-call and per-instance registries, and other Registry classes, are fine');
  });
});

// ---------------------------------------------------------------- the real tree

const sources = SOURCE_DIRS.flatMap((d) => walkTs(d));
const read = (p: string): string => readFileSync(join(root, p), 'utf8');
const texts = new Map(sources.map((f) => [f, read(f)]));

t.test('source tree is found', async (t) => {
  for (const d of ['shared', 'controller', 'agent']) t.ok(sources.some((f) => f.startsWith(`${d}/`)), `found .ts files under ${d}/`);
  t.notOk(sources.some((f) => f.startsWith('shared/proto/gen/')), 'generated code is skipped');
});

t.test('(a) no import cycles', async (t) => {
  const { graph, unresolved } = buildGraph(sources, (p) => texts.get(p) ?? read(p), (p) => existsSync(join(root, p)));
  t.same(unresolved, [], 'every relative import names an existing .ts file');
  const valueCycles = findCycles(subgraph(graph, (e) => e.kind === 'value'));
  for (const c of valueCycles) t.fail(`import cycle:\n    ${describeCycle(graph, c)}`);
  t.equal(valueCycles.length, 0, 'no cycle of value imports');
  const typeCycles = findCycles(subgraph(graph, (e) => e.kind !== 'dynamic')).filter((c) =>
    c.slice(0, -1).some((from, i) => graph.get(from)?.get(c[i + 1]!)?.kind === 'type'),
  );
  for (const c of typeCycles) t.comment(`note: cycle closed only by type imports (erased at run time, but the modules are coupled):\n    ${describeCycle(graph, c)}`);
});

t.test('(b) layering', async (t) => {
  const violations: string[] = [];
  for (const f of sources) {
    for (const ref of importsOf(f, texts.get(f)!)) {
      const target = resolveSpec(f, ref.spec);
      const why = target === undefined ? undefined : layerViolation(f, target);
      if (why !== undefined) violations.push(`${f}:${ref.line}: imports ${ref.spec}${ref.kind === 'value' ? '' : ` (${ref.kind})`}: ${why}`);
    }
  }
  t.same(violations, [], 'shared/ imports nothing of controller/ or agent/; agent/ and controller/ do not import each other');
});

t.test('(c) process.env only in config modules and main.ts', async (t) => {
  const violations = sources.filter((f) => !mayReadEnv(f)).flatMap((f) => envReads(f, texts.get(f)!).map((line) => `${f}:${line}`));
  t.same(violations, [], 'no process.env outside config.ts, *-config.ts and main.ts (DESIGN rule 4)');
});

t.test('(d) no TS enum', async (t) => {
  const violations = sources.flatMap((f) => enumDeclarations(f, texts.get(f)!).map((line) => `${f}:${line}`));
  t.same(violations, [], 'use `as const` objects and unions instead (DESIGN rule 8)');
});

t.test('(e) no prom-client global register, no module-level registries, metrics or loggers', async (t) => {
  const violations = sources.flatMap((f) => singletonUses(f, texts.get(f)!));
  t.same(violations, [], 'build registries and loggers in app.ts and pass them down (DESIGN rule 2)');
});

t.test('(f) modules without a test (informational)', async (t) => {
  const tested = new Set<string>();
  for (const f of walkTs('test')) {
    for (const ref of importsOf(f, read(f))) {
      const target = resolveSpec(f, ref.spec);
      if (target !== undefined) tested.add(target);
    }
  }
  const candidates = sources.filter((f) => RUNTIME_LAYERS.includes(topDir(f)) && basename(f) !== 'main.ts');
  const untested = candidates.filter((f) => !tested.has(f) && !(f in UNTESTED_ALLOWED));
  if (untested.length > 0) t.comment(`${untested.length} of ${candidates.length} modules have no test that imports them:\n${untested.map((f) => `  ${f}`).join('\n')}`);
  for (const [f, why] of Object.entries(UNTESTED_ALLOWED)) {
    if (!existsSync(join(root, f))) t.comment(`allow-list entry ${f} names no file; remove it`);
    else if (tested.has(f)) t.comment(`allow-listed ${f} now has a test; the entry (${why}) can go`);
  }
  t.pass(`${candidates.length - untested.length} of ${candidates.length} modules are imported by a test or allow-listed`);
});
