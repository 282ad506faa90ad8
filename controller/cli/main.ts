#!/usr/bin/env node
import { mkdirSync, readFileSync, statSync } from 'node:fs';
import { enableCompileCache, getCompileCacheDir } from 'node:module';
import { join } from 'node:path';
import { text } from 'node:stream/consumers';
import type { CliContext } from './context.ts';

/**
 * Node's compile cache for ambitctl's modules (their type-stripped source and
 * V8 code), in the user's own cache directory: a command run once before then
 * starts in a third of the time. Only a directory the user owns and no one
 * else may write is used, since code read from it is run; without one (no
 * home, a read-only one) ambitctl runs uncached. ambitctl.mjs, the entry an
 * install from the sources runs, applies the same rule before loading this
 * file (so that this file too comes from the cache); run directly, or built
 * to dist/, this file turns the cache on itself.
 */
function compileCacheDir(env: Readonly<Record<string, string | undefined>>): string | undefined {
  const base = env.XDG_CACHE_HOME || (env.HOME ? join(env.HOME, '.cache') : undefined);
  if (!base || typeof process.getuid !== 'function') return undefined;
  const dir = join(base, 'ambit', 'compile-cache');
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const st = statSync(dir);
    return st.uid === process.getuid() && (st.mode & 0o022) === 0 ? dir : undefined;
  } catch {
    return undefined;
  }
}

if (getCompileCacheDir() === undefined) {
  const cacheDir = compileCacheDir(process.env);
  if (cacheDir) enableCompileCache(cacheDir);
}

const ctx: CliContext = {
  env: process.env,
  out: (t) => process.stdout.write(t),
  err: (t) => process.stderr.write(t),
  readFile: (p) => readFileSync(p, 'utf8'),
  // Read as a stream to EOF: a synchronous read of fd 0 fails with EAGAIN
  // when stdin is a non-blocking pipe whose writer has not written yet.
  readStdin: () => text(process.stdin),
  now: Date.now,
};
// Imported after the cache is on, so the program's modules are read from it.
const { run } = await import('./program.ts');
process.exitCode = await run(process.argv.slice(2), ctx);
