/**
 * A small Dockerfile reader and linter for manifests.test.ts: no Docker engine
 * runs here, so the image build is checked by reading the file. Parsing
 * follows the Dockerfile reference closely enough for the rules below:
 * comments and parser directives are dropped, "\" continues a line, the first
 * word is the instruction.
 */

export interface Instruction {
  /** Upper-case: FROM, RUN, COPY, ... */
  readonly op: string;
  readonly args: string;
  /** 1-based line where the instruction starts. */
  readonly line: number;
}

export interface Stage {
  readonly image: string;
  readonly name: string | undefined;
  readonly instructions: readonly Instruction[];
}

export function parseDockerfile(text: string): Instruction[] {
  const out: Instruction[] = [];
  let buf = '';
  let start = 0;
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/\r$/, '');
    if (buf === '' && /^\s*$/.test(line)) return;
    // Comments (and parser directives such as "# syntax=") are dropped, also inside a continued instruction.
    if (/^\s*#/.test(line)) return;
    if (buf === '') start = i + 1;
    if (/\\\s*$/.test(line)) {
      buf += `${line.replace(/\\\s*$/, '')} `;
      return;
    }
    buf += line;
    const m = /^\s*([A-Za-z]+)\s*(.*)$/s.exec(buf);
    if (m) out.push({ op: (m[1] ?? '').toUpperCase(), args: (m[2] ?? '').trim(), line: start });
    buf = '';
  });
  if (buf.trim() !== '') out.push({ op: 'INVALID', args: buf.trim(), line: start });
  return out;
}

/** Instructions grouped by build stage (global ARGs before the first FROM are dropped). */
export function stages(instructions: readonly Instruction[]): Stage[] {
  const out: { image: string; name: string | undefined; instructions: Instruction[] }[] = [];
  for (const ins of instructions) {
    if (ins.op === 'FROM') {
      const words = ins.args.split(/\s+/).filter((w) => !w.startsWith('--'));
      const as = words.findIndex((w) => w.toUpperCase() === 'AS');
      out.push({ image: words[0] ?? '', name: as >= 0 ? words[as + 1] : undefined, instructions: [] });
    } else {
      out.at(-1)?.instructions.push(ins);
    }
  }
  return out;
}

/** "node:24-bookworm-slim" → tag "24-bookworm-slim"; a digest counts as pinned. */
export function imageTag(image: string): { tag: string | undefined; digest: boolean } {
  const digest = image.includes('@sha256:');
  const name = image.split('@')[0] ?? '';
  const lastSlash = name.lastIndexOf('/');
  const colon = name.indexOf(':', lastSlash + 1);
  return { tag: colon >= 0 ? name.slice(colon + 1) : undefined, digest };
}

/**
 * General hygiene: every FROM names an image by tag (not "latest") or digest,
 * or an earlier stage; no ADD of a URL (use a package manager or COPY); the
 * final stage runs as a non-root numeric USER and has no ENTRYPOINT (each
 * manifest names the program it runs).
 */
export function lintDockerfile(text: string): string[] {
  const problems: string[] = [];
  const ins = parseDockerfile(text);
  for (const i of ins) {
    if (i.op === 'INVALID') problems.push(`line ${i.line}: unterminated instruction`);
    if (i.op === 'ADD' && /(^|\s)(https?|ftp|git):\/\//i.test(i.args)) problems.push(`line ${i.line}: ADD of a URL; fetch with a package manager instead`);
    if (i.op === 'MAINTAINER') problems.push(`line ${i.line}: MAINTAINER is deprecated`);
  }
  const all = stages(ins);
  if (all.length === 0) problems.push('no FROM');
  const names = new Set<string>();
  for (const s of all) {
    if (s.image.includes('$')) problems.push(`FROM ${s.image}: an ARG-built image name cannot be checked`);
    else if (!names.has(s.image)) {
      const { tag, digest } = imageTag(s.image);
      if (!digest && tag === undefined) problems.push(`FROM ${s.image}: untagged (means latest)`);
      if (tag === 'latest') problems.push(`FROM ${s.image}: the latest tag is not reproducible`);
    }
    if (s.name !== undefined) {
      if (names.has(s.name)) problems.push(`stage name ${s.name} used twice`);
      names.add(s.name);
    }
  }
  const last = all.at(-1);
  if (last !== undefined) {
    const users = last.instructions.filter((i) => i.op === 'USER');
    const user = users.at(-1)?.args.split(':')[0];
    if (user === undefined) problems.push('final stage sets no USER: it would run as root');
    else if (!/^[0-9]+$/.test(user)) problems.push(`final USER ${user} is not numeric (runAsNonRoot cannot verify a name)`);
    else if (user === '0') problems.push('final USER is root');
    if (last.instructions.some((i) => i.op === 'ENTRYPOINT')) problems.push('final stage has an ENTRYPOINT; the manifests name the program to run');
  }
  return problems;
}
