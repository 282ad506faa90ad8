import type { ReferenceGrantFrom, ReferenceGrantSpec, ReferenceGrantTo } from './route-types.ts';
import { Checker, isDnsLabel, join } from './validate-fields.ts';

/**
 * The spec of a Gateway API ReferenceGrant (v1beta1), checked against the
 * upstream schema: `from` and `to` hold 1 to 16 entries, every field
 * upstream has and none other. Groups and kinds beyond the ones Ambit acts
 * on (from HTTPRoute/GRPCRoute, to core Services) are accepted and have no
 * effect, as upstream (a grant for a Gateway's Secrets applies unchanged).
 * The inverse is referenceGrantDocument in ./route-document.ts.
 */

export const REFERENCE_GRANT_LIMITS = { from: 16, to: 16 } as const;

/** The upstream Group pattern: "" (core) or a DNS subdomain. */
const GROUP = /^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
/** The upstream Kind pattern. */
const KIND = /^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$/;

function group(c: Checker, v: unknown, field: string): string | undefined {
  const s = c.string(v, field);
  if (s === undefined) return undefined;
  return s.length <= 253 && GROUP.test(s) ? s : c.bad(field, 'must be "" (the core group) or an API group such as gateway.networking.k8s.io', s);
}

function kind(c: Checker, v: unknown, field: string): string | undefined {
  const s = c.string(v, field);
  if (s === undefined) return undefined;
  return s.length <= 63 && KIND.test(s) ? s : c.bad(field, 'must be a kind such as HTTPRoute or Service (a letter, then letters, digits and "-", at most 63)', s);
}

function list<T>(c: Checker, m: Readonly<Record<string, unknown>>, key: 'from' | 'to', parent: string, item: (x: unknown, at: string) => T | undefined): T[] | undefined {
  const field = join(parent, key);
  const raw = c.required(m, key, parent);
  if (raw === undefined) return undefined;
  const xs = c.list(raw, field);
  if (xs === undefined) return undefined;
  const max = REFERENCE_GRANT_LIMITS[key];
  if (xs.length < 1 || xs.length > max) return c.fail(field, `must list 1 to ${max} entries, got ${xs.length}`, xs);
  const out: T[] = [];
  let ok = true;
  xs.forEach((x, i) => {
    const r = item(x, join(field, i));
    if (r === undefined) ok = false;
    else out.push(r);
  });
  return ok ? out : undefined;
}

function fromEntry(c: Checker, v: unknown, field: string): ReferenceGrantFrom | undefined {
  const m = c.mapping(v, field, ['group', 'kind', 'namespace']);
  if (m === undefined) return undefined;
  const g = c.req(m, 'group', field, (x, f) => group(c, x, f));
  const k = c.req(m, 'kind', field, (x, f) => kind(c, x, f));
  const namespace = c.req(m, 'namespace', field, (x, f) => c.matching(x, f, isDnsLabel, 'a namespace name (a DNS label)'));
  if (g === undefined || k === undefined || namespace === undefined) return undefined;
  return { group: g, kind: k, namespace };
}

function toEntry(c: Checker, v: unknown, field: string): ReferenceGrantTo | undefined {
  const m = c.mapping(v, field, ['group', 'kind', 'name']);
  if (m === undefined) return undefined;
  const g = c.req(m, 'group', field, (x, f) => group(c, x, f));
  const k = c.req(m, 'kind', field, (x, f) => kind(c, x, f));
  const before = c.errors.length;
  const name = c.opt(m, 'name', field, (x, f) => {
    const s = c.string(x, f);
    return s === undefined ? undefined : s.length >= 1 && s.length <= 253 ? s : c.bad(f, 'must be 1-253 characters', s);
  }, undefined);
  if (g === undefined || k === undefined || c.errors.length !== before) return undefined;
  return { group: g, kind: k, ...(name === undefined ? {} : { name }) };
}

export function checkReferenceGrantSpec(c: Checker, v: unknown, field: string): ReferenceGrantSpec | undefined {
  const before = c.errors.length;
  const m = c.mapping(v, field, ['from', 'to']);
  if (m === undefined) return undefined;
  const from = list(c, m, 'from', field, (x, at) => fromEntry(c, x, at));
  const to = list(c, m, 'to', field, (x, at) => toEntry(c, x, at));
  if (c.errors.length !== before || from === undefined || to === undefined) return undefined;
  return { from, to };
}
