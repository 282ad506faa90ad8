/**
 * Offline stand-in for the API server's handling of a CRD's openAPIV3Schema
 * (apiextensions.k8s.io/v1), used by manifests.test.ts:
 *
 * - structuralProblems(): the rules the API server applies when the CRD is
 *   created (a "structural" schema: every node typed, no additionalProperties
 *   beside properties, no $ref, anyOf only in the int-or-string form, ...).
 * - validateCustomResource(): how a custom resource is checked against the
 *   schema under kubectl's default strict field validation: unknown fields
 *   are errors, null values count as absent (the API server prunes them),
 *   x-kubernetes-list-type: set refuses duplicates.
 *
 * Only the keywords the test needs are implemented. A schema using any other
 * keyword is refused, so a constraint can never be silently ignored.
 */

type Schema = Readonly<Record<string, unknown>>;

const KEYWORDS = new Set([
  'description', 'type', 'properties', 'required', 'items', 'additionalProperties', 'enum', 'pattern',
  'minLength', 'maxLength', 'minimum', 'maximum', 'minItems', 'maxItems', 'minProperties', 'maxProperties',
  'x-kubernetes-int-or-string', 'anyOf', 'x-kubernetes-list-type',
]);
const TYPES = new Set(['object', 'array', 'string', 'integer', 'number', 'boolean']);

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function children(s: Schema): [string, Schema][] {
  const out: [string, Schema][] = [];
  if (isRecord(s.properties)) {
    for (const [k, v] of Object.entries(s.properties)) if (isRecord(v)) out.push([`.properties.${k}`, v]);
  }
  if (isRecord(s.items)) out.push(['.items', s.items]);
  if (isRecord(s.additionalProperties)) out.push(['.additionalProperties', s.additionalProperties]);
  return out;
}

function isIntOrStringAnyOf(v: unknown): boolean {
  return Array.isArray(v) && v.length === 2 && isRecord(v[0]) && isRecord(v[1])
    && Object.keys(v[0]).join() === 'type' && v[0].type === 'integer'
    && Object.keys(v[1]).join() === 'type' && v[1].type === 'string';
}

/** Why the API server (or this validator) would refuse `schema` as a CRD's openAPIV3Schema; [] if it is fine. */
export function structuralProblems(schema: unknown, at = 'openAPIV3Schema', root = true): string[] {
  if (!isRecord(schema)) return [`${at}: not a schema object`];
  const out: string[] = [];
  for (const k of Object.keys(schema)) {
    if (!KEYWORDS.has(k)) out.push(`${at}: keyword ${k} is not supported here (preserve-unknown-fields, $ref, uniqueItems, ... are refused)`);
  }
  const intOrString = schema['x-kubernetes-int-or-string'] === true;
  if (intOrString) {
    if (schema.type !== undefined) out.push(`${at}: an int-or-string node has no type`);
    if (schema.anyOf !== undefined && !isIntOrStringAnyOf(schema.anyOf)) out.push(`${at}: anyOf must be [{type: integer}, {type: string}]`);
  } else {
    if (typeof schema.type !== 'string' || !TYPES.has(schema.type)) out.push(`${at}: every node needs a type (structural schema)`);
    if (schema.anyOf !== undefined) out.push(`${at}: anyOf is only allowed for x-kubernetes-int-or-string`);
  }
  if (schema.additionalProperties !== undefined) {
    if (!isRecord(schema.additionalProperties)) out.push(`${at}: additionalProperties must be a schema (false is refused by the API server)`);
    if (schema.properties !== undefined) out.push(`${at}: additionalProperties and properties are mutually exclusive`);
  }
  if (Array.isArray(schema.required)) {
    const props = isRecord(schema.properties) ? schema.properties : {};
    for (const r of schema.required) if (typeof r !== 'string' || !Object.hasOwn(props, r)) out.push(`${at}: required ${String(r)} is not a property`);
  }
  if (schema['x-kubernetes-list-type'] !== undefined) {
    if (schema.type !== 'array') out.push(`${at}: x-kubernetes-list-type needs type array`);
    const item = isRecord(schema.items) ? schema.items : {};
    if (schema['x-kubernetes-list-type'] === 'set' && (item.type === 'object' || item.type === 'array')) {
      out.push(`${at}: a set's items must be scalars`);
    }
  }
  if (schema.type === 'array' && !isRecord(schema.items)) out.push(`${at}: an array needs items`);
  if (root) {
    if (schema.type !== 'object') out.push(`${at}: the root must be an object`);
    const meta = isRecord(schema.properties) ? schema.properties.metadata : undefined;
    if (meta !== undefined && !(isRecord(meta) && Object.keys(meta).join() === 'type' && meta.type === 'object')) {
      out.push(`${at}.properties.metadata: only "type: object" is allowed (the API server validates ObjectMeta itself)`);
    }
  }
  for (const [sub, child] of children(schema)) out.push(...structuralProblems(child, at + sub, false));
  return out;
}

function typeOf(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
  return typeof v;
}

function hasType(v: unknown, type: unknown): boolean {
  const t = typeOf(v);
  return t === type || (type === 'number' && t === 'integer') || (type === 'object' && isRecord(v));
}

function num(s: Schema, k: string): number | undefined {
  return typeof s[k] === 'number' ? s[k] : undefined;
}

function check(schema: Schema, v: unknown, at: string, out: string[]): void {
  if (schema['x-kubernetes-int-or-string'] === true) {
    if (typeOf(v) !== 'integer' && typeof v !== 'string') {
      out.push(`${at}: must be an integer or a string, got ${typeOf(v)}`);
      return;
    }
  } else if (!hasType(v, schema.type)) {
    out.push(`${at}: must be of type ${String(schema.type)}, got ${typeOf(v)}`);
    return;
  }
  if (Array.isArray(schema.enum) && !schema.enum.includes(v)) {
    out.push(`${at}: unsupported value ${JSON.stringify(v)}, must be one of ${schema.enum.map((e) => JSON.stringify(e)).join(', ')}`);
  }
  if (typeof v === 'string') {
    const length = [...v].length;
    const min = num(schema, 'minLength');
    const max = num(schema, 'maxLength');
    if (min !== undefined && length < min) out.push(`${at}: must have at least ${min} characters`);
    if (max !== undefined && length > max) out.push(`${at}: may not be longer than ${max}`);
    if (typeof schema.pattern === 'string' && !new RegExp(schema.pattern, 'u').test(v)) out.push(`${at}: ${JSON.stringify(v)} does not match ${schema.pattern}`);
  }
  if (typeof v === 'number') {
    const min = num(schema, 'minimum');
    const max = num(schema, 'maximum');
    if (min !== undefined && v < min) out.push(`${at}: must be greater than or equal to ${min}`);
    if (max !== undefined && v > max) out.push(`${at}: must be less than or equal to ${max}`);
  }
  if (Array.isArray(v)) {
    const min = num(schema, 'minItems');
    const max = num(schema, 'maxItems');
    if (min !== undefined && v.length < min) out.push(`${at}: must have at least ${min} items`);
    if (max !== undefined && v.length > max) out.push(`${at}: must have at most ${max} items`);
    const items = isRecord(schema.items) ? schema.items : {};
    v.forEach((x, i) => check(items, x, `${at}[${i}]`, out));
    if (schema['x-kubernetes-list-type'] === 'set') {
      const seen = new Set<string>();
      v.forEach((x, i) => {
        const key = JSON.stringify(x);
        if (seen.has(key)) out.push(`${at}[${i}]: duplicate value ${key}`);
        seen.add(key);
      });
    }
  }
  if (isRecord(v)) {
    const props = isRecord(schema.properties) ? schema.properties : undefined;
    const extra = isRecord(schema.additionalProperties) ? schema.additionalProperties : undefined;
    // The API server prunes nulls of non-nullable fields: they count as absent.
    const present = Object.entries(v).filter(([, x]) => x !== null);
    for (const [k, x] of present) {
      const sub = props !== undefined && Object.hasOwn(props, k) ? props[k] : extra;
      if (isRecord(sub)) check(sub, x, `${at}.${k}`, out);
      else out.push(`${at}.${k}: unknown field`);
    }
    if (Array.isArray(schema.required)) {
      for (const r of schema.required) {
        if (typeof r === 'string' && (v[r] === undefined || v[r] === null)) out.push(`${at}.${r}: Required value`);
      }
    }
    const min = num(schema, 'minProperties');
    const max = num(schema, 'maxProperties');
    if (min !== undefined && present.length < min) out.push(`${at}: must have at least ${min} properties`);
    if (max !== undefined && present.length > max) out.push(`${at}: must have at most ${max} properties`);
  }
}

/** The problems the API server would report for `resource` under this schema; [] when it would be admitted. */
export function validateCustomResource(schema: unknown, resource: unknown): string[] {
  if (!isRecord(schema)) return ['the CRD has no openAPIV3Schema'];
  const out: string[] = [];
  // ObjectMeta is validated by the API server itself, not by the CRD's schema.
  const { metadata: _metadata, ...rest } = isRecord(resource) ? resource : { metadata: undefined };
  check(schema, isRecord(resource) ? rest : resource, '', out);
  return out.map((p) => (p.startsWith('.') ? p.slice(1) : p));
}
