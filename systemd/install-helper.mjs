// Install-time helper for systemd/install.sh: the parts a shell does poorly.
// It runs with the Node.js bundled in the checkout being installed
// (<from>/node_modules/node/bin/node) and reuses that checkout's own modules
// for validation, so the installer accepts exactly what the daemons accept.
//
//   node install-helper.mjs plan FROM GENDIR         print the manifest of the runtime tree
//   node install-helper.mjs verify DEST              exit 0 iff DEST matches its manifest exactly
//   node install-helper.mjs copy FROM GENDIR DEST    create DEST (must not exist) from the plan
//   node install-helper.mjs check-config FROM agent|controller ENVFILE
//   node install-helper.mjs check-pin FROM HOST:PORT[,HOST:PORT…] SHA256 [TIMEOUT_MS]
//
// The runtime tree (what /usr/lib/ambit holds):
//   package.json (its "type": "module" makes Node read the .ts sources as ESM)
//   agent/ controller/ shared/   the TypeScript sources; Node strips the types
//   node_modules/   the production dependency closure of package.json only
//                   (no devDependencies), including the "node" package whose
//                   bin/node is the Node.js 24 that runs everything
//   docs/vm.md, and GENDIR's files (bin/ wrappers, lib/wait-ready.mjs)
//   dataplane/target/release/ambit-dataplane   the data path, which carries every
//                   byte the agent proxies (and reads SO_ORIGINAL_DST for transparent
//                   capture), as the checkout built it (npm ci does, or npm run
//                   build:dataplane); where the agent looks for it. Required: the
//                   tree is the same for both roles, and no agent runs without it.
// Every file is 0644 or 0755 (0755 when the source has any execute bit).
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { pathToFileURL } from 'node:url';

const MANIFEST = '.ambit-manifest';
const MANIFEST_HEADER = '# ambit runtime tree manifest v1: mode sha256 path';
const SOURCE_DIRS = ['agent', 'controller', 'shared'];
const DATAPLANE = 'dataplane/target/release/ambit-dataplane';
const OPTIONAL_FILES = ['docs/vm.md'];

class UsageError extends Error {}

function fail(message, code = 1) {
  process.stderr.write(`install-helper: ${message}\n`);
  process.exit(code);
}

function readJson(path) {
  return JSON.parse(readFileSync(path, 'utf8'));
}

/** Regular files under dir (following symlinks to files, never into directories), as paths relative to base. */
function walkFiles(dir, base, skip = () => false) {
  const out = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const abs = join(dir, entry.name);
    if (skip(abs)) continue;
    if (entry.isDirectory()) {
      out.push(...walkFiles(abs, base, skip));
    } else if (entry.isFile() || (entry.isSymbolicLink() && statSync(abs, { throwIfNoEntry: false })?.isFile())) {
      out.push(relative(base, abs));
    }
  }
  return out;
}

/**
 * The package directories (relative to from) that package.json's
 * dependencies need at run time, resolved the way Node does: a package's
 * own node_modules first, then each parent's.
 */
export function dependencyClosure(from) {
  const seen = new Set();
  const queue = [{ dir: from, pkg: readJson(join(from, 'package.json')), isRoot: true }];
  while (queue.length > 0) {
    const { dir, pkg, isRoot } = queue.shift();
    const required = { ...(pkg.dependencies ?? {}) };
    const optional = { ...(pkg.optionalDependencies ?? {}), ...(isRoot ? {} : pkg.peerDependencies ?? {}) };
    for (const [names, must] of [[Object.keys(required), true], [Object.keys(optional).filter((n) => !(n in required)), false]]) {
      for (const name of names) {
        const found = resolvePackage(from, dir, name);
        if (found === undefined) {
          if (must) throw new UsageError(`${relative(from, dir) || 'package.json'} needs ${name}, which is not installed in ${join(from, 'node_modules')}: run "npm ci" there`);
          continue;
        }
        const rel = relative(from, found);
        if (seen.has(rel)) continue;
        seen.add(rel);
        queue.push({ dir: found, pkg: readJson(join(found, 'package.json')), isRoot: false });
      }
    }
  }
  return [...seen].sort();
}

function resolvePackage(from, dir, name) {
  const top = resolve(from);
  for (let d = resolve(dir); ; d = dirname(d)) {
    const candidate = join(d, 'node_modules', name);
    if (existsSync(join(candidate, 'package.json'))) return candidate;
    if (d === top || d === dirname(d)) return undefined;
  }
}

/** relative path in the runtime tree → absolute source path */
function planFiles(from, gendir) {
  from = resolve(from);
  const files = new Map();
  const add = (rel, abs) => files.set(rel.split(sep).join('/'), abs);
  if (!existsSync(join(from, 'package.json'))) throw new UsageError(`${from} is not an Ambit checkout: no package.json`);
  add('package.json', join(from, 'package.json'));
  for (const d of SOURCE_DIRS) {
    if (!existsSync(join(from, d))) throw new UsageError(`${from} is not an Ambit checkout: no ${d}/`);
    for (const rel of walkFiles(join(from, d), from)) add(rel, join(from, rel));
  }
  if (!existsSync(join(from, DATAPLANE))) throw new UsageError(`${join(from, DATAPLANE)} is missing: run "npm ci" (it builds ambit-dataplane) in ${from}`);
  add(DATAPLANE, join(from, DATAPLANE));
  for (const rel of OPTIONAL_FILES) if (existsSync(join(from, rel))) add(rel, join(from, rel));
  for (const pkgDir of dependencyClosure(from)) {
    const abs = join(from, pkgDir);
    // A package's own node_modules holds other packages: those in the closure are added on their own.
    const nested = join(abs, 'node_modules');
    for (const rel of walkFiles(abs, from, (p) => p === nested)) add(rel, join(from, rel));
  }
  if (gendir !== undefined) for (const rel of walkFiles(gendir, gendir)) add(rel, join(gendir, rel));
  return files;
}

function fileEntry(abs) {
  const st = statSync(abs);
  const mode = st.mode & 0o111 ? '755' : '644';
  const sha = createHash('sha256').update(readFileSync(abs)).digest('hex');
  return { mode, sha };
}

function manifestText(entries) {
  const lines = [...entries].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([rel, e]) => `${e.mode} ${e.sha} ${rel}`);
  return `${MANIFEST_HEADER}\n${lines.join('\n')}\n`;
}

function plan(from, gendir) {
  const entries = new Map();
  for (const [rel, abs] of planFiles(from, gendir)) entries.set(rel, fileEntry(abs));
  return manifestText(entries);
}

/** Compares DEST with its manifest: same files, modes and contents, nothing extra. */
function verify(dest) {
  const path = join(dest, MANIFEST);
  if (!existsSync(path)) return `${path} is missing`;
  const listed = new Map();
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^(644|755) ([0-9a-f]{64}) (.+)$/.exec(line);
    if (!m) return `${path}: malformed line ${JSON.stringify(line)}`;
    listed.set(m[3], { mode: m[1], sha: m[2] });
  }
  const present = walkFiles(dest, dest).map((p) => p.split(sep).join('/')).filter((p) => p !== MANIFEST);
  for (const rel of present) if (!listed.has(rel)) return `${rel} is not part of the installed tree`;
  for (const [rel, want] of listed) {
    const abs = join(dest, rel);
    if (!existsSync(abs)) return `${rel} is missing`;
    const st = statSync(abs);
    if ((st.mode & 0o7777).toString(8) !== want.mode) return `${rel} has mode ${(st.mode & 0o7777).toString(8)}, not ${want.mode}`;
    if (fileEntry(abs).sha !== want.sha) return `${rel} differs from the manifest`;
  }
  return undefined;
}

function copy(from, gendir, dest) {
  if (existsSync(dest)) throw new UsageError(`${dest} already exists`);
  const entries = new Map();
  mkdirSync(dest, { recursive: true, mode: 0o755 });
  chmodSync(dest, 0o755);
  for (const [rel, abs] of planFiles(from, gendir)) {
    const target = join(dest, rel);
    mkdirSync(dirname(target), { recursive: true, mode: 0o755 });
    copyFileSync(abs, target);
    const e = fileEntry(abs);
    chmodSync(target, Number.parseInt(e.mode, 8));
    entries.set(rel, e);
  }
  // Directories: 0755 whatever the umask was.
  const fixDirs = (dir) => {
    chmodSync(dir, 0o755);
    for (const d of readdirSync(dir, { withFileTypes: true })) if (d.isDirectory()) fixDirs(join(dir, d.name));
  };
  fixDirs(dest);
  writeFileSync(join(dest, MANIFEST), manifestText(entries), { mode: 0o644 });
  chmodSync(join(dest, MANIFEST), 0o644);
}

/** KEY=VALUE lines (comments and blank lines ignored), as systemd's EnvironmentFile= reads our simple files. */
function readEnvFile(path) {
  const env = {};
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    const m = /^\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (m && !line.trimStart().startsWith('#')) env[m[1]] = m[2];
  }
  return env;
}

async function checkConfig(from, which, envFile) {
  const env = readEnvFile(envFile);
  const argv = ['--data-dir', '/var/lib/ambit-check'];
  if (which !== 'agent' && which !== 'controller') throw new UsageError(`check-config: unknown daemon ${which}`);
  const { envName } = await import(pathToFileURL(join(resolve(from), 'shared/config-parse.ts')).href);
  const config = which === 'agent'
    ? await import(pathToFileURL(join(resolve(from), 'agent/config.ts')).href)
    : await import(pathToFileURL(join(resolve(from), 'controller/config.ts')).href);
  const specs = which === 'agent' ? config.AGENT_OPTIONS : config.CONTROLLER_OPTIONS;
  // The daemons ignore environment variables they do not know: a misspelt
  // setting would be silently dropped, so it is refused here.
  const known = new Set([...Object.keys(specs).map(envName), 'AMBIT_CONFIG']);
  for (const key of Object.keys(env)) {
    if (!known.has(key)) fail(`unknown ${which} setting ${key}: the ${which} reads ${[...known].sort().join(', ')}`, 2);
  }
  try {
    if (which === 'agent') config.parseAgentConfig({ argv, env });
    else config.parseControllerConfig({ argv, env });
  } catch (err) {
    fail(`invalid ${which} setting: ${err.message}`, 2);
  }
}

/** Network-level failures mean "not reachable now"; anything else (a TLS or certificate problem) is an answer. */
const UNREACHABLE = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT', 'ENOTFOUND', 'EAI_AGAIN', 'ECONNRESET', 'EADDRNOTAVAIL']);

async function checkPin(from, hostPort, fingerprint, timeoutMs) {
  const { parseHostPortList } = await import(pathToFileURL(join(resolve(from), 'shared/config-parse.ts')).href);
  const { discoverPinnedRoot } = await import(pathToFileURL(join(resolve(from), 'agent/identity/ca-client.ts')).href);
  // One address or every replica's (comma-separated): the first that answers must present the pin.
  const controller = parseHostPortList(hostPort, 15012);
  try {
    const { trustDomain } = await discoverPinnedRoot(controller, fingerprint, Date.now, timeoutMs);
    process.stdout.write(`the controller at ${hostPort} presents the pinned CA (trust domain ${trustDomain})\n`);
  } catch (err) {
    const cause = err?.cause;
    const timedOut = /timed out/.test(cause?.message ?? '');
    if (err?.code === 'AMBIT_ERR_RPC_UNAVAILABLE' && (timedOut || UNREACHABLE.has(cause?.code))) {
      process.stderr.write(`${err.message}\n`);
      process.exit(3);
    }
    process.stderr.write(`${err?.message ?? String(err)}\n`);
    process.exit(4);
  }
}

async function main(argv) {
  const [cmd, ...args] = argv;
  switch (cmd) {
    case 'plan':
      if (args.length !== 2) throw new UsageError('usage: plan FROM GENDIR');
      process.stdout.write(plan(args[0], args[1]));
      return;
    case 'closure':
      if (args.length !== 1) throw new UsageError('usage: closure FROM');
      process.stdout.write(`${dependencyClosure(resolve(args[0])).join('\n')}\n`);
      return;
    case 'verify': {
      if (args.length !== 1) throw new UsageError('usage: verify DEST');
      const why = verify(args[0]);
      if (why !== undefined) {
        process.stdout.write(`${why}\n`);
        process.exit(1);
      }
      return;
    }
    case 'copy':
      if (args.length !== 3) throw new UsageError('usage: copy FROM GENDIR DEST');
      copy(args[0], args[1], args[2]);
      return;
    case 'check-config':
      if (args.length !== 3) throw new UsageError('usage: check-config FROM agent|controller ENVFILE');
      await checkConfig(args[0], args[1], args[2]);
      return;
    case 'check-pin':
      if (args.length < 3 || args.length > 4) throw new UsageError('usage: check-pin FROM HOST:PORT SHA256 [TIMEOUT_MS]');
      await checkPin(args[0], args[1], args[2], Number(args[3] ?? 5000));
      return;
    default:
      throw new UsageError(`unknown command ${JSON.stringify(cmd ?? '')}`);
  }
}

main(process.argv.slice(2)).catch((err) => fail(err instanceof UsageError ? err.message : (err?.stack ?? String(err))));
