/**
 * Loading the Kubernetes manifests of daemonset/ for the tests, and small
 * helpers to read (and, for the tests that prove a check can fail, change)
 * untyped YAML documents.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';
import type { Manifest } from './k8s-models.ts';

export type Obj = Record<string, unknown>;

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const DAEMONSET_DIR = join(ROOT, 'daemonset');
export const KUSTOMIZATION = 'kustomization.yaml';

export function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The value at a dotted path ("spec.template.spec.containers.0"); undefined when any step is missing. */
export function at(v: unknown, path: string): unknown {
  let cur: unknown = v;
  for (const key of path.split('.')) {
    if (Array.isArray(cur) && /^\d+$/.test(key)) cur = cur[Number(key)];
    else if (isObj(cur)) cur = cur[key];
    else return undefined;
  }
  return cur;
}

export function obj(v: unknown): Obj {
  return isObj(v) ? v : {};
}

export function list(v: unknown): unknown[] {
  return Array.isArray(v) ? v : [];
}

export function objs(v: unknown): Obj[] {
  return list(v).filter(isObj);
}

/** The array stored at o[key] itself (created when missing), for changing it in place. */
export function liveArray(o: Obj, key: string): unknown[] {
  const v = o[key];
  if (Array.isArray(v)) return v;
  const created: unknown[] = [];
  o[key] = created;
  return created;
}

/** The YAML files of daemonset/ that hold Kubernetes objects (everything but the kustomization). */
export function manifestFiles(): string[] {
  return readdirSync(DAEMONSET_DIR).filter((f) => /\.ya?ml$/.test(f) && f !== KUSTOMIZATION).sort();
}

export function readYamlFile(path: string): unknown[] {
  const docs = parseAllDocuments(readFileSync(path, 'utf8'), { uniqueKeys: true });
  const out: unknown[] = [];
  for (const d of docs) {
    if (d.errors.length > 0) throw new Error(`${path}: ${d.errors.map((e) => e.message).join('; ')}`);
    const v: unknown = d.toJS();
    if (v !== null && v !== undefined) out.push(v);
  }
  return out;
}

export function loadManifests(files: readonly string[] = manifestFiles()): Manifest[] {
  return files.flatMap((f) => readYamlFile(join(DAEMONSET_DIR, f)).map((doc, i) => {
    const o = obj(doc);
    return { doc: o, where: `daemonset/${f}#${i + 1} ${String(o.kind)} ${String(at(o, 'metadata.name'))}` };
  }));
}

export function find(docs: readonly Manifest[], kind: string, name: string): Obj | undefined {
  return docs.find((m) => m.doc.kind === kind && at(m.doc, 'metadata.name') === name)?.doc;
}

export function ofKind(docs: readonly Manifest[], ...kinds: string[]): Obj[] {
  return docs.filter((m) => kinds.includes(String(m.doc.kind))).map((m) => m.doc);
}

/** A deep copy of `docs` in which `change` was applied to (a copy of) the named object; throws if there is none. */
export function mutate(docs: readonly Manifest[], kind: string, name: string, change: (doc: Obj) => void): Manifest[] {
  let hit = false;
  const out = docs.map((m) => {
    const doc = structuredClone(m.doc) as Obj;
    if (doc.kind === kind && at(doc, 'metadata.name') === name) {
      change(doc);
      hit = true;
    }
    return { doc, where: m.where };
  });
  if (!hit) throw new Error(`no ${kind} ${name} to change`);
  return out;
}

export function packageVersion(): string {
  const pkg: unknown = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
  const v = at(pkg, 'version');
  if (typeof v !== 'string') throw new Error('package.json has no version');
  return v;
}
