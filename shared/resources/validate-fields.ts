import { canonicalIp } from '../net-address.ts';

/**
 * Field-level checks shared by the resource validators. A Checker collects
 * every problem of one document instead of stopping at the first, so a user
 * fixes a file in one round. Each check returns the checked (and normalised)
 * value, or undefined after recording why it is unusable; callers carry on
 * with the other fields and build the resource only when nothing was recorded.
 *
 * Input values are whatever a YAML/JSON parser or an RPC produced: anything,
 * including shared or circular structures (YAML anchors). Checks only ever
 * descend into the fields a schema names, so they cannot loop.
 */
export interface FieldError {
  /** Path such as "spec.ports[1]"; "(document)" for the document itself. */
  readonly field: string;
  /** What is wrong, e.g. "must be an integer 1-65535, got 70000". */
  readonly message: string;
  /** The offending value, reduced to something safe to log. */
  readonly value: unknown;
}

export type Mapping = Readonly<Record<string, unknown>>;

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const LABEL_NAME = /^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
const SHOWN_CHARS = 64;

export function isDnsLabel(s: string): boolean {
  return s.length <= 63 && DNS_LABEL.test(s);
}

export function isDnsSubdomain(s: string): boolean {
  return s.length <= 253 && DNS_SUBDOMAIN.test(s);
}

/** Kubernetes label key: [prefix/]name, prefix a DNS subdomain, name <=63 of [A-Za-z0-9._-] with alnum ends. */
export function labelKeyProblem(k: string): string | undefined {
  const slash = k.indexOf('/');
  const prefix = slash === -1 ? undefined : k.slice(0, slash);
  const name = slash === -1 ? k : k.slice(slash + 1);
  if (prefix !== undefined && !isDnsSubdomain(prefix)) {
    return 'prefix before "/" must be a DNS subdomain (lower-case letters, digits, "-", "."; at most 253)';
  }
  if (name.length > 63 || !LABEL_NAME.test(name)) {
    return 'name must be at most 63 letters, digits, "-", "_" or ".", starting and ending with a letter or digit';
  }
  return undefined;
}

export function labelValueProblem(v: string): string | undefined {
  if (v === '' || (v.length <= 63 && LABEL_NAME.test(v))) return undefined;
  return 'must be empty or at most 63 letters, digits, "-", "_" or ".", starting and ending with a letter or digit';
}

/** A short, safe rendering of any value for an error message. */
export function describe(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (typeof v === 'string') {
    return v.length > SHOWN_CHARS ? `${JSON.stringify(v.slice(0, SHOWN_CHARS))}… (${v.length} characters)` : JSON.stringify(v);
  }
  if (v === null || typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  if (Array.isArray(v)) return `a list of ${v.length} item${v.length === 1 ? '' : 's'}`;
  if (typeof v === 'object') return 'a mapping';
  return `a ${typeof v}`;
}

/** What goes into error details: primitives as they are (long strings cut), structures described. */
function loggable(v: unknown): unknown {
  if (typeof v === 'string') return v.length > 256 ? `${v.slice(0, 256)}…` : v;
  if (v === null || v === undefined || typeof v === 'number' || typeof v === 'boolean') return v;
  return describe(v);
}

export function isMapping(v: unknown): v is Mapping {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A field path: "spec.ports[1]", 'metadata.labels["app.kubernetes.io/name"]'; keys from input are cut short. */
export function join(parent: string, key: string | number): string {
  if (typeof key === 'number') return `${parent}[${key}]`;
  const shown = key.length > SHOWN_CHARS ? `${key.slice(0, SHOWN_CHARS)}…` : key;
  if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(shown)) return parent === '' ? shown : `${parent}.${shown}`;
  return `${parent}[${JSON.stringify(shown)}]`;
}

/** Levenshtein distance, capped: only to suggest a known field for a typo. */
function distance(a: string, b: string): number {
  if (Math.abs(a.length - b.length) > 2 || a.length > 64 || b.length > 64) return 3;
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      cur.push(Math.min((prev[j] ?? 0) + 1, (cur[j - 1] ?? 0) + 1, (prev[j - 1] ?? 0) + cost));
    }
    prev = cur;
  }
  return prev[b.length] ?? 3;
}

function suggestion(key: string, allowed: readonly string[]): string {
  const lower = key.toLowerCase();
  const best = allowed.find((a) => a.toLowerCase() === lower) ?? allowed.find((a) => distance(key, a) <= 2);
  return best === undefined ? `; known fields: ${allowed.join(', ')}` : ` (did you mean "${best}"?)`;
}

export class Checker {
  readonly errors: FieldError[] = [];

  fail(field: string, message: string, value: unknown): undefined {
    this.errors.push({ field: field === '' ? '(document)' : field, message, value: loggable(value) });
    return undefined;
  }

  /** fail() with the value shown: "<message>, got <value>". */
  bad(field: string, message: string, value: unknown): undefined {
    return this.fail(field, `${message}, got ${describe(value)}`, value);
  }

  /**
   * A mapping holding only `allowed` keys. Unknown keys are errors (typos such
   * as `serviceAcount` must not be silently dropped); `hints` explains keys
   * that are known elsewhere but not supported here.
   */
  mapping(v: unknown, field: string, allowed: readonly string[], hints: Readonly<Record<string, string>> = {}): Mapping | undefined {
    if (!isMapping(v)) return this.bad(field, 'must be a mapping', v);
    for (const key of Object.keys(v)) {
      if (allowed.includes(key)) continue;
      const hint = Object.hasOwn(hints, key) ? `: ${hints[key]}` : suggestion(key, allowed);
      this.fail(join(field, key), `unknown field${hint}`, v[key]);
    }
    return v;
  }

  /** A present, non-null value of a field; null counts as absent (YAML `key:` with nothing after it). */
  optional(m: Mapping, key: string): unknown {
    const v = Object.hasOwn(m, key) ? m[key] : undefined;
    return v === null ? undefined : v;
  }

  required(m: Mapping, key: string, parent: string): unknown {
    const v = this.optional(m, key);
    if (v === undefined) this.fail(join(parent, key), 'is required', v);
    return v;
  }

  /** A required field passed through `check`. */
  req<T>(m: Mapping, key: string, parent: string, check: (v: unknown, field: string) => T | undefined): T | undefined {
    const v = this.required(m, key, parent);
    return v === undefined ? undefined : check(v, join(parent, key));
  }

  /** An optional field passed through `check`, or `fallback` when absent. */
  opt<T>(m: Mapping, key: string, parent: string, check: (v: unknown, field: string) => T | undefined, fallback: T): T | undefined {
    const v = this.optional(m, key);
    return v === undefined ? fallback : check(v, join(parent, key));
  }

  readonly string = (v: unknown, field: string): string | undefined => {
    if (typeof v === 'string') return v;
    return this.bad(field, typeof v === 'number' || typeof v === 'boolean' ? 'must be a string (quote it)' : 'must be a string', v);
  };

  /** A non-empty string; `what` names the rule for the message. */
  readonly matching = (v: unknown, field: string, ok: (s: string) => boolean, what: string): string | undefined => {
    const s = this.string(v, field);
    if (s === undefined) return undefined;
    return ok(s) ? s : this.bad(field, `must be ${what}`, s);
  };

  readonly subdomain = (v: unknown, field: string): string | undefined => {
    return this.matching(v, field, isDnsSubdomain, 'a DNS subdomain (lower-case letters, digits, "-" and ".", starting and ending with a letter or digit, at most 253)');
  };

  readonly label = (v: unknown, field: string): string | undefined => {
    return this.matching(v, field, isDnsLabel, 'a DNS label (lower-case letters, digits and "-", starting and ending with a letter or digit, at most 63)');
  };

  readonly int = (v: unknown, field: string, min: number, max: number): number | undefined => {
    if (typeof v === 'number' && Number.isSafeInteger(v) && v >= min && v <= max) return v;
    return this.bad(field, `must be an integer ${min}-${max}`, v);
  };

  /** One of a fixed set of strings (exact case: the values are names, as in Kubernetes). */
  readonly oneOf = <T extends string>(v: unknown, field: string, allowed: readonly T[]): T | undefined => {
    const s = this.string(v, field);
    if (s === undefined) return undefined;
    return (allowed as readonly string[]).includes(s) ? (s as T) : this.bad(field, `must be one of ${allowed.join(', ')}`, s);
  };

  readonly bool = (v: unknown, field: string): boolean | undefined => {
    return typeof v === 'boolean' ? v : this.bad(field, 'must be true or false', v);
  };

  readonly list = (v: unknown, field: string): readonly unknown[] | undefined => {
    return Array.isArray(v) ? v : this.bad(field, 'must be a list', v);
  };

  readonly ip = (v: unknown, field: string): string | undefined => {
    const s = this.string(v, field);
    if (s === undefined) return undefined;
    return canonicalIp(s) ?? this.bad(field, 'must be an IPv4 or IPv6 address (IPv4 without leading zeros)', s);
  };

  /** A label map (metadata.labels, selectors): keys and values by Kubernetes rules; returned with sorted keys. */
  readonly labels = (v: unknown, field: string): Record<string, string> | undefined => {
    if (!isMapping(v)) return this.bad(field, 'must be a mapping of label keys to values', v);
    const out: Record<string, string> = {};
    let ok = true;
    for (const key of Object.keys(v).sort()) {
      const at = join(field, key);
      const keyProblem = labelKeyProblem(key);
      if (keyProblem !== undefined) this.fail(at, `invalid label key ${describe(key)}: ${keyProblem}`, key);
      const value = this.string(v[key], at);
      const valueProblem = value === undefined ? undefined : labelValueProblem(value);
      if (valueProblem !== undefined) this.bad(at, valueProblem, value);
      if (keyProblem !== undefined || value === undefined || valueProblem !== undefined) ok = false;
      else out[key] = value;
    }
    return ok ? out : undefined;
  };

  /**
   * Reports items whose key repeats an earlier one (lists that are sets: ports,
   * addresses, names). Returns whether all were unique.
   */
  unique<T>(items: readonly { readonly key: T; readonly field: string; readonly shown: unknown }[], what: string): boolean {
    const seen = new Map<T, string>();
    let ok = true;
    for (const item of items) {
      const first = seen.get(item.key);
      if (first === undefined) {
        seen.set(item.key, item.field);
        continue;
      }
      this.fail(item.field, `duplicate ${what} ${describe(item.shown)} (also at ${first})`, item.shown);
      ok = false;
    }
    return ok;
  }

  /** A list that is a set: each item checked by `item`, a repeat refused, returned sorted. */
  set<T extends string | number>(
    v: unknown, field: string, item: (x: unknown, at: string) => T | undefined, what = 'entry',
  ): T[] | undefined {
    const list = this.list(v, field);
    if (list === undefined) return undefined;
    const items: { key: T; field: string; shown: unknown }[] = [];
    let ok = true;
    list.forEach((x, i) => {
      const at = join(field, i);
      const value = item(x, at);
      if (value === undefined) ok = false;
      else items.push({ key: value, field: at, shown: value });
    });
    if (!this.unique(items, what)) ok = false;
    if (!ok) return undefined;
    return items.map((i) => i.key).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  }
}
