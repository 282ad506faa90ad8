#!/usr/bin/env node
// ambitctl as an install from the sources runs it (systemd/install.sh's
// wrapper). Plain JavaScript because Node loads its TypeScript stripper (a
// WebAssembly module: about 150 ms of CPU, half of what `ambitctl status`
// costs) for any .ts entry, before that entry could turn the compile cache
// on. Turned on here first, the cache gives every module of the command,
// main.ts included, already stripped, and the stripper is never loaded.
import { mkdirSync, statSync } from 'node:fs';
import { enableCompileCache } from 'node:module';
import { join } from 'node:path';

/**
 * The user's own cache directory, as main.ts chooses it (see there): code
 * read from it is run, so only a directory the user owns and no one else may
 * write is used; without one ambitctl runs uncached.
 */
function compileCacheDir(env) {
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

const cacheDir = compileCacheDir(process.env);
if (cacheDir) enableCompileCache(cacheDir);
await import('./main.ts');
