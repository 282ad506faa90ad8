import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import { AmbitError } from './errors.ts';

/**
 * The YAML parser, loaded at the first --config file: it costs a daemon about
 * 13 MiB of RSS, and most daemons are configured by flags and environment.
 */
function yaml(): typeof import('yaml') {
  return createRequire(import.meta.url)('yaml') as typeof import('yaml');
}

/**
 * One configuration parser for the daemons: flags win over AMBIT_<FLAG>
 * environment variables, which win over a YAML --config file, which wins over
 * defaults (DESIGN §6). The result is validated once and frozen. Every
 * rejection names the key, where the value came from and the value.
 */
export interface Option<T> {
  readonly description: string;
  /** Turns a raw value (string from flags/env, any YAML scalar from the file) into T, or throws a plain Error saying why. */
  readonly parse: (raw: unknown) => T;
  readonly default?: T;
  readonly required?: boolean;
  /** Boolean flags take no value on the command line. */
  readonly boolean?: boolean;
  readonly example?: string;
  /**
   * A value as a user writes it (`24h`, `0.0.0.0:15012`), for --help: parse
   * of the result gives the value back. Without it the help shows strings,
   * numbers and lists (comma-separated) as they are.
   */
  // A method, so that an Option<number> is still an Option<unknown> (methods are bivariant in their parameters).
  format?(value: T): string;
  /**
   * The environment variable that sets it, when a standard one names it
   * rather than AMBIT_<FLAG> (OpenTelemetry's OTEL_*: operators set those
   * once for every process on a host).
   */
  readonly env?: string;
}

export type OptionSpecs = Readonly<Record<string, Option<unknown>>>;
/** An option whose type records whether it has a default, so ConfigValues can say "always set". */
export type OptionWith<T, D> = [D] extends [undefined] ? Option<T> : Option<T> & { readonly default: T };
export type ConfigValues<S extends OptionSpecs> = {
  readonly [K in keyof S]: S[K] extends Option<infer T> ? (S[K] extends { required: true } | { default: unknown } ? T : T | undefined) : never;
};

export interface ConfigSources {
  readonly argv: readonly string[];
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly readFile?: (path: string) => string;
}

/** "dataDir" → "data-dir" */
export function flagName(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/** "dataDir" → "AMBIT_DATA_DIR" */
export function envName(key: string): string {
  return `AMBIT_${flagName(key).replace(/-/g, '_').toUpperCase()}`;
}

function invalid(key: string, source: string, raw: unknown, why: string, cause?: unknown): AmbitError {
  const shown = typeof raw === 'string' ? JSON.stringify(raw) : JSON.stringify(raw) ?? String(raw);
  return new AmbitError('AMBIT_ERR_CONFIG_INVALID', `invalid --${flagName(key)} ${shown} (from ${source}): ${why}`, {
    cause,
    details: { key: flagName(key), source, value: raw },
  });
}

export function parseConfig<S extends OptionSpecs>(specs: S, sources: ConfigSources): ConfigValues<S> & { readonly help: boolean } {
  const argOptions: Record<string, { type: 'string' | 'boolean' }> = { config: { type: 'string' }, help: { type: 'boolean' } };
  for (const [key, spec] of Object.entries(specs)) argOptions[flagName(key)] = { type: spec.boolean ? 'boolean' : 'string' };
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args: [...sources.argv], options: argOptions, strict: true, allowPositionals: false });
  } catch (cause) {
    throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', (cause as Error).message, { cause });
  }
  const flags = parsed.values as Record<string, string | boolean | undefined>;

  let file: Record<string, unknown> = {};
  const configPath = typeof flags.config === 'string' ? flags.config : sources.env.AMBIT_CONFIG;
  if (configPath) {
    let text: string;
    try {
      text = (sources.readFile ?? ((p: string) => readFileSync(p, 'utf8')))(configPath);
    } catch (cause) {
      throw new AmbitError('AMBIT_ERR_CONFIG_FILE', `cannot read config file ${configPath}: ${(cause as Error).message}`, { cause });
    }
    let doc: unknown;
    try {
      doc = yaml().parse(text);
    } catch (cause) {
      throw new AmbitError('AMBIT_ERR_CONFIG_FILE', `config file ${configPath} is not valid YAML: ${(cause as Error).message}`, { cause });
    }
    if (doc !== null && doc !== undefined) {
      if (typeof doc !== 'object' || Array.isArray(doc)) {
        throw new AmbitError('AMBIT_ERR_CONFIG_FILE', `config file ${configPath} must be a mapping of option names to values`);
      }
      const known = new Map<string, string>();
      for (const key of Object.keys(specs)) {
        known.set(key, key);
        known.set(flagName(key), key);
      }
      for (const [k, v] of Object.entries(doc as Record<string, unknown>)) {
        const key = known.get(k);
        if (!key) throw new AmbitError('AMBIT_ERR_CONFIG_FILE', `config file ${configPath}: unknown key ${JSON.stringify(k)}`, { details: { key: k } });
        file[key] = v;
      }
    }
  }

  const out: Record<string, unknown> = {};
  for (const [key, spec] of Object.entries(specs)) {
    const flag = flags[flagName(key)];
    const envVar = spec.env ?? envName(key);
    const env = sources.env[envVar];
    let raw: unknown;
    let source: string;
    if (flag !== undefined) {
      raw = flag;
      source = `flag --${flagName(key)}`;
    } else if (env !== undefined && env !== '') {
      raw = env;
      source = `env ${envVar}`;
    } else if (file[key] !== undefined) {
      raw = file[key];
      source = `config file ${configPath ?? ''}`;
    } else {
      if (spec.required && spec.default === undefined && !flags.help) {
        throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', `missing required --${flagName(key)} (or ${envVar}): ${spec.description}`, {
          details: { key: flagName(key) },
        });
      }
      out[key] = spec.default;
      continue;
    }
    try {
      out[key] = spec.parse(raw);
    } catch (cause) {
      throw invalid(key, source, raw, (cause as Error).message, cause);
    }
  }
  out.help = flags.help === true;
  return Object.freeze(out) as ConfigValues<S> & { readonly help: boolean };
}

/**
 * An option's default as a user writes it, or undefined when there is nothing
 * to show: no default, a boolean flag that is off unless given, an empty list.
 */
export function defaultText(spec: Option<unknown>): string | undefined {
  const v = spec.default;
  if (v === undefined || (spec.boolean && v === false) || (Array.isArray(v) && v.length === 0)) return undefined;
  if (spec.format) return spec.format(v);
  const plain = (x: unknown): x is string | number | boolean => typeof x === 'string' || typeof x === 'number' || typeof x === 'boolean';
  if (plain(v)) return String(v);
  if (Array.isArray(v) && v.every(plain)) return v.join(',');
  // An object default needs a format; test/e2e/help.test.ts finds any shown this way (it does not parse back).
  return JSON.stringify(v);
}

/** Help text listing every option with its env var and default. */
export function configHelp(usage: string, specs: OptionSpecs): string {
  const rows: [string, string][] = Object.entries(specs).map(([key, spec]) => {
    const shown = defaultText(spec);
    const def = shown === undefined ? '' : ` (default ${shown})`;
    const req = spec.required ? ' (required)' : '';
    return [`  --${flagName(key)}${spec.boolean ? '' : ' VALUE'}`, `${spec.description}${def}${req} [${spec.env ?? envName(key)}]`];
  });
  rows.push(['  --config FILE', 'YAML file of option: value [AMBIT_CONFIG]']);
  const width = Math.max(...rows.map(([flag]) => flag.length)) + 2;
  const lines = [usage, '', 'Options (each also from the env var in brackets or a YAML --config FILE; flags win):'];
  for (const [flag, text] of rows) lines.push(flag.padEnd(width) + text);
  return lines.join('\n');
}

// ------------------------------------------------------------------ value parsers

const DURATION_UNITS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Go-style durations: "24h", "1h30m", "90s", "250ms", "7d". Returns milliseconds. */
export function parseDuration(raw: unknown): number {
  if (typeof raw === 'number' && Number.isFinite(raw) && raw >= 0) return raw * 1000; // bare YAML numbers are seconds
  if (typeof raw !== 'string') throw new Error('must be a duration such as 24h, 30m or 90s');
  const s = raw.trim();
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/gy;
  let total = 0;
  let consumed = 0;
  for (let m = re.exec(s); m; m = re.exec(s)) {
    total += Number(m[1]) * DURATION_UNITS[m[2]!]!;
    consumed = re.lastIndex;
  }
  if (s === '' || consumed !== s.length) throw new Error('must be a duration such as 24h, 30m or 90s');
  return Math.round(total);
}

/** The shortest of the units parseDuration reads; whole days past one (7d, 90d), a day as 24h. */
export function formatDuration(ms: number): string {
  if (ms > 86_400_000 && ms % 86_400_000 === 0) return `${ms / 86_400_000}d`;
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

export function durationOption<D extends number | undefined = undefined>(description: string, def?: D, bounds: { minMs?: number; maxMs?: number } = {}): OptionWith<number, D> {
  const option: Option<number> = {
    description,
    ...(def === undefined ? {} : { default: def }),
    format: formatDuration,
    parse: (raw) => {
      const ms = parseDuration(raw);
      if (bounds.minMs !== undefined && ms < bounds.minMs) throw new Error(`must be at least ${formatDuration(bounds.minMs)}`);
      if (bounds.maxMs !== undefined && ms > bounds.maxMs) throw new Error(`must be at most ${formatDuration(bounds.maxMs)}`);
      return ms;
    },
  };
  return option as OptionWith<number, D>;
}

export function stringOption<D extends string | undefined = undefined>(description: string, def?: D, pattern?: { re: RegExp; what: string }): OptionWith<string, D> {
  const option: Option<string> = {
    description,
    ...(def === undefined ? {} : { default: def }),
    parse: (raw) => {
      if (typeof raw !== 'string' || raw === '') throw new Error('must be a non-empty string');
      if (pattern && !pattern.re.test(raw)) throw new Error(`must be ${pattern.what}`);
      return raw;
    },
  };
  return option as OptionWith<string, D>;
}

export function intOption<D extends number | undefined>(description: string, def: D, min: number, max: number): OptionWith<number, D> {
  const option: Option<number> = {
    description,
    ...(def === undefined ? {} : { default: def }),
    parse: (raw) => {
      const n = typeof raw === 'number' ? raw : typeof raw === 'string' && /^-?\d+$/.test(raw.trim()) ? Number(raw) : NaN;
      if (!Number.isInteger(n) || n < min || n > max) throw new Error(`must be an integer from ${min} to ${max}`);
      return n;
    },
  };
  return option as OptionWith<number, D>;
}

export function boolOption(description: string, def = false): Option<boolean> {
  return {
    description,
    default: def,
    boolean: true,
    parse: (raw) => {
      if (typeof raw === 'boolean') return raw;
      if (raw === 'true' || raw === '1' || raw === 'yes') return true;
      if (raw === 'false' || raw === '0' || raw === 'no') return false;
      throw new Error('must be true or false');
    },
  };
}

export function enumOption<const V extends string, D extends V | undefined = undefined>(description: string, values: readonly V[], def?: D): OptionWith<V, D> {
  const option: Option<V> = {
    description,
    ...(def === undefined ? {} : { default: def }),
    parse: (raw) => {
      if (typeof raw !== 'string' || !(values as readonly string[]).includes(raw)) throw new Error(`must be one of ${values.join(', ')}`);
      return raw as V;
    },
  };
  return option as OptionWith<V, D>;
}

export function ipOption<D extends string | undefined = undefined>(description: string, def?: D): OptionWith<string, D> {
  const option: Option<string> = {
    description,
    ...(def === undefined ? {} : { default: def }),
    parse: (raw) => {
      if (typeof raw !== 'string' || isIP(raw) === 0) throw new Error('must be an IPv4 or IPv6 address');
      return raw;
    },
  };
  return option as OptionWith<string, D>;
}

export interface HostPort {
  readonly host: string;
  readonly port: number;
}

/** "host:port" or "[v6]:port"; host may be a name or an IP. */
export function parseHostPort(raw: unknown, defaultPort?: number): HostPort {
  if (typeof raw !== 'string' || raw === '') throw new Error('must be HOST:PORT');
  let host: string;
  let portText: string | undefined;
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(raw);
  if (v6) {
    host = v6[1]!;
    portText = v6[2];
    if (isIP(host) !== 6) throw new Error('bracketed host must be an IPv6 address');
  } else {
    const i = raw.lastIndexOf(':');
    if (i === -1 || isIP(raw) === 6) {
      host = raw;
      portText = undefined;
    } else {
      host = raw.slice(0, i);
      portText = raw.slice(i + 1);
    }
    // A bare IPv6 address (no port) is taken whole above; only names need the pattern.
    if (isIP(host) === 0 && !/^[A-Za-z0-9.-]+$/.test(host)) throw new Error('host must be a DNS name or an IP address');
  }
  if (portText === undefined) {
    if (defaultPort === undefined) throw new Error('must be HOST:PORT');
    return { host, port: defaultPort };
  }
  const port = Number(portText);
  // Port 0 asks the OS for a free port (tests, several instances on one host).
  if (!/^\d+$/.test(portText) || port > 65535) throw new Error('port must be 0-65535');
  return { host, port };
}

export function hostPortOption<D extends HostPort | undefined = undefined>(description: string, def?: D, defaultPort?: number): OptionWith<HostPort, D> {
  return { description, ...(def === undefined ? {} : { default: def }), format: formatHostPort, parse: (raw: unknown) => parseHostPort(raw, defaultPort) } as OptionWith<HostPort, D>;
}

/** "host:port,host:port": one address or several (of replicas), at least one, none twice. */
export function parseHostPortList(raw: unknown, defaultPort?: number): HostPort[] {
  if (typeof raw !== 'string' || raw.trim() === '') throw new Error('must be HOST:PORT or a comma-separated list of them');
  const list = raw.split(',').map((s) => s.trim()).filter(Boolean).map((s) => {
    try {
      return parseHostPort(s, defaultPort);
    } catch (err) {
      throw new Error(`${JSON.stringify(s)}: ${(err as Error).message}`);
    }
  });
  const seen = new Set(list.map(formatHostPort));
  if (seen.size !== list.length) throw new Error('lists an address twice');
  return list;
}

export function hostPortListOption<D extends readonly HostPort[] | undefined = undefined>(description: string, def?: D, defaultPort?: number): OptionWith<readonly HostPort[], D> {
  return { description, ...(def === undefined ? {} : { default: def }), parse: (raw: unknown) => parseHostPortList(raw, defaultPort) } as OptionWith<readonly HostPort[], D>;
}

export function formatHostPort(hp: HostPort): string {
  return isIP(hp.host) === 6 ? `[${hp.host}]:${hp.port}` : `${hp.host}:${hp.port}`;
}
