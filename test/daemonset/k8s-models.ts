/**
 * Offline validation of Kubernetes manifests with kubernetes-models, whose
 * models and TypeScript types are generated from the Kubernetes OpenAPI spec:
 *
 * - schemaProblems(): the model of the document's apiVersion and kind, and its
 *   validate() (the OpenAPI schema: types, enums, formats, required fields).
 * - strictTypeProblems(): the generated schemas allow unknown fields, which the
 *   API server under kubectl's strict field validation does not; so each
 *   document is also type-checked as an object literal against the model's
 *   TypeScript interface, where every unknown field, at any depth, is an
 *   excess-property error. One TypeScript program checks many documents.
 */
import { join } from 'node:path';
import ts from 'typescript';

export interface Manifest {
  readonly doc: Readonly<Record<string, unknown>>;
  /** "daemonset/agent.yaml#2 DaemonSet ambit-agent": how problems name the document. */
  readonly where: string;
}

/** "apps/v1" + "DaemonSet" → "kubernetes-models/apps/v1/DaemonSet"; core "v1" → "kubernetes-models/v1/Namespace". */
export function modelSpecifier(apiVersion: string, kind: string): string {
  if (!/^([a-z0-9.-]+\/)?v[0-9]+((alpha|beta)[0-9]+)?$/.test(apiVersion) || !/^[A-Z][A-Za-z0-9]*$/.test(kind)) {
    throw new Error(`not a Kubernetes apiVersion/kind: ${apiVersion} ${kind}`);
  }
  return `kubernetes-models/${apiVersion}/${kind}`;
}

interface ModelInstance {
  validate(): void;
}
type ModelClass = (new (data: unknown) => ModelInstance) & { readonly apiVersion: string; readonly kind: string };

function isModelClass(v: unknown): v is ModelClass {
  const c = v as { apiVersion?: unknown; prototype?: { validate?: unknown } } | undefined;
  return typeof v === 'function' && typeof c?.apiVersion === 'string' && typeof c.prototype?.validate === 'function';
}

/** Problems the OpenAPI schema of the document's kind finds; [] when it validates. */
export async function schemaProblems(m: Manifest): Promise<string[]> {
  const { apiVersion, kind } = m.doc;
  if (typeof apiVersion !== 'string' || typeof kind !== 'string') return [`${m.where}: apiVersion and kind must be strings`];
  let model: unknown;
  try {
    const mod: unknown = await import(modelSpecifier(apiVersion, kind));
    model = (mod as Record<string, unknown>)[kind];
  } catch (err) {
    return [`${m.where}: no Kubernetes model for ${apiVersion} ${kind}: ${(err as Error).message}`];
  }
  if (!isModelClass(model) || model.apiVersion !== apiVersion || model.kind !== kind) {
    return [`${m.where}: no Kubernetes model for ${apiVersion} ${kind}`];
  }
  try {
    new model(m.doc).validate();
    return [];
  } catch (err) {
    return [`${m.where}: ${(err as Error).message}`];
  }
}

/**
 * For each manifest, the TypeScript errors of `const d: I<Kind> = <document>`
 * (unknown fields, wrong types). `root` is the repository, where
 * kubernetes-models is installed.
 */
export function strictTypeProblems(manifests: readonly Manifest[], root: string): string[][] {
  const file = join(root, 'test', 'daemonset', '__strict_manifests__.ts');
  const imports: string[] = [];
  const decls: string[] = [];
  const out: string[][] = manifests.map(() => []);
  manifests.forEach((m, i) => {
    const { apiVersion, kind } = m.doc;
    let spec: string;
    try {
      spec = modelSpecifier(String(apiVersion), String(kind));
    } catch (err) {
      out[i]?.push(`${m.where}: ${(err as Error).message}`);
      spec = 'kubernetes-models/v1/Namespace';
    }
    imports.push(`import type { I${String(kind)} as T${i} } from ${JSON.stringify(spec)};`);
    decls.push(`export const d${i}: T${i} = ${JSON.stringify(m.doc)};`);
  });
  const text = [...imports, ...decls].join('\n');
  const options: ts.CompilerOptions = {
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
    lib: ['lib.es2022.d.ts'],
  };
  const host = ts.createCompilerHost(options, true);
  const { getSourceFile, fileExists, readFile } = host;
  host.getSourceFile = (name, lang, onError, create) =>
    name === file ? ts.createSourceFile(name, text, lang, true, ts.ScriptKind.TS) : getSourceFile.call(host, name, lang, onError, create);
  host.fileExists = (name) => name === file || fileExists.call(host, name);
  host.readFile = (name) => (name === file ? text : readFile.call(host, name));
  const program = ts.createProgram([file], options, host);
  const source = program.getSourceFile(file);
  for (const d of ts.getPreEmitDiagnostics(program)) {
    const message = ts.flattenDiagnosticMessageText(d.messageText, '\n');
    if (d.file === undefined || d.file !== source || d.start === undefined) {
      // Not attributable to one document (a broken installation): every document fails.
      out.forEach((o) => o.push(message));
      continue;
    }
    const { line, character } = d.file.getLineAndCharacterOfPosition(d.start);
    const i = line < manifests.length ? line : line - manifests.length;
    const near = (text.split('\n')[line] ?? '').slice(Math.max(0, character - 60), character + 40);
    out[i]?.push(`${manifests[i]?.where ?? '?'}: ${message} (near …${near}…)`);
  }
  return out;
}
