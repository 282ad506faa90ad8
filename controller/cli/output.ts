import { createRequire } from 'node:module';
import { AmbitError } from '../../shared/errors.ts';

/** The YAML printer, loaded for -o yaml only: tables and JSON do without it. */
function stringify(value: unknown, options: { lineWidth: number }): string {
  return (createRequire(import.meta.url)('yaml') as typeof import('yaml')).stringify(value, options);
}

export const OUTPUT_FORMATS = ['table', 'json', 'yaml'] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

export function parseOutput(v: string): OutputFormat {
  if (!(OUTPUT_FORMATS as readonly string[]).includes(v)) {
    throw new AmbitError('AMBIT_ERR_CLI_USAGE', `invalid -o ${JSON.stringify(v)}: use table, json or yaml`, { details: { field: 'output' } });
  }
  return v as OutputFormat;
}

/** Column-aligned text, kubectl style: upper-case headers, two spaces between columns. */
export function table(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

/**
 * Lists: JSON array (DESIGN §6), or multi-document YAML so that
 * `ambitctl workload list -o yaml > f.yaml && ambitctl apply -f f.yaml` round-trips.
 */
export function formatList(format: 'json' | 'yaml', items: readonly unknown[]): string {
  if (format === 'json') return JSON.stringify(items, null, 2) + '\n';
  return items.map((i) => stringify(i, { lineWidth: 0 })).join('---\n');
}

export function formatOne(format: 'json' | 'yaml', item: unknown): string {
  return format === 'json' ? JSON.stringify(item, null, 2) + '\n' : stringify(item, { lineWidth: 0 });
}

export function ago(ms: number, now: number): string {
  if (ms <= 0) return 'never';
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 120) return `${s}s ago`;
  if (s < 7200) return `${Math.round(s / 60)}m ago`;
  if (s < 172_800) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86_400)}d ago`;
}

export function until(ms: number, now: number): string {
  if (ms <= 0) return 'unknown';
  const s = Math.round((ms - now) / 1000);
  if (s <= 0) return 'expired';
  if (s < 7200) return `in ${Math.round(s / 60)}m`;
  if (s < 172_800) return `in ${Math.round(s / 3600)}h`;
  return `in ${Math.round(s / 86_400)}d`;
}

export function labelsText(labels: Readonly<Record<string, string>>): string {
  const e = Object.entries(labels);
  return e.length === 0 ? '<none>' : e.map(([k, v]) => `${k}=${v}`).join(',');
}
