import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/*
 * How ambit-dataplane is built from a checkout: `npm ci` builds it (the
 * package's install script), from crates.io with the versions of the
 * committed Cargo.lock, and says what to install when Rust is missing. The
 * crate's own tests (the HTTP/2 limits) run with `npm test`
 * (dataplane/build.sh --test); the image's build is checked in
 * test/daemonset/dockerfile.test.ts.
 */

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const read = (rel: string): string => readFileSync(join(ROOT, rel), 'utf8');
const pkg = JSON.parse(read('package.json')) as { scripts: Record<string, string>; allowScripts?: Record<string, boolean> };
const cargoToml = read('dataplane/Cargo.toml');
const lock = read('dataplane/Cargo.lock');

/** The packages of a Cargo.lock, as name → versions. */
function locked(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const [, name = '', version = ''] of text.matchAll(/^\[\[package\]\]\nname = "([^"]+)"\nversion = "([^"]+)"/gm)) out.set(name, [...(out.get(name) ?? []), version]);
  return out;
}

t.test('npm ci builds the data plane; npm test builds it and runs its crate tests', async (t) => {
  // The package has no native addon of its own (ambit-dataplane reads SO_ORIGINAL_DST itself), so
  // npm ci needs no C toolchain or node-gyp for it: the install script builds the data plane only, and no
  // binding.gyp at the root would make npm run an implicit `node-gyp rebuild` were that script removed.
  t.equal(pkg.scripts.install, 'bash dataplane/build.sh', 'the install script builds ambit-dataplane, nothing else');
  t.notOk(existsSync(join(ROOT, 'binding.gyp')), 'no binding.gyp at the root');
  t.match(pkg.scripts.test, /bash dataplane\/build\.sh --test && tap\b/, 'npm test: current executable and crate tests before tap');
});

t.test('every dependency install script is approved or denied in package.json (npm 11 allowScripts)', async (t) => {
  const lockfile = JSON.parse(read('package-lock.json')) as { packages: Record<string, { hasInstallScript?: boolean }> };
  // npm runs `node-gyp rebuild` for a package with a binding.gyp and no install script of its own,
  // even one whose package.json says "gypfile": false; the lock file does not mark those.
  const implicitGyp = (path: string): boolean => {
    if (!existsSync(join(ROOT, path, 'binding.gyp'))) return false;
    const scripts = (JSON.parse(read(join(path, 'package.json'))) as { scripts?: Record<string, string> }).scripts ?? {};
    return scripts.install === undefined && scripts.preinstall === undefined;
  };
  const withScripts = Object.entries(lockfile.packages)
    .filter(([path, p]) => path !== '' && (p.hasInstallScript === true || implicitGyp(path)))
    .map(([path]) => path.slice(path.lastIndexOf('node_modules/') + 'node_modules/'.length));
  t.ok(withScripts.includes('node'), 'the lock file marks install scripts (node has one)');
  t.ok(withScripts.includes('better-sqlite3'), 'and node_modules shows the implicit node-gyp ones (better-sqlite3)');
  const decided = Object.keys(pkg.allowScripts ?? {}).map((k) => k.replace(/(.)@.*$/, '$1'));
  t.same(withScripts.filter((name) => !decided.includes(name)), [], 'none left for npm to skip with a warning');
  // Node.js itself comes from the `node` package's preinstall: without it npm scripts would run the host's node.
  t.equal(pkg.allowScripts?.node, true, 'node\'s preinstall is allowed');
  // better-sqlite3 ships prebuilt addons (linux-x64 among them) and loads those: compiling SQLite is not needed.
  t.equal(pkg.allowScripts?.['better-sqlite3'], false, 'better-sqlite3 is not rebuilt from source');
});

t.test('the crate builds from crates.io with the committed lock file', async (t) => {
  // Read, not asked of git: the tests also run from a tree without .git.
  for (const ignore of ['.gitignore', 'dataplane/.gitignore']) {
    t.notMatch(read(ignore), /^[^#\n]*Cargo\.lock/m, `${ignore} does not ignore Cargo.lock`);
  }
  const packages = locked(lock);
  t.ok(packages.has('ambit-dataplane'), 'Cargo.lock is this crate\'s');
  for (const [name, major] of [['tokio', /^1\./], ['h2', /^0\.4\./], ['http', /^1\./], ['rustls', /^0\.23\./], ['tokio-rustls', /^0\.26\./], ['prost', /^0\.14\./]] as const) {
    t.match(packages.get(name)?.join(' ') ?? '', major, `${name} locked at ${major.source}`);
  }
  // ring, not aws-lc-rs (cmake and NASM to build): Cargo.toml says why.
  t.ok(packages.has('ring'), 'rustls on ring');
  t.notOk([...packages.keys()].some((n) => n.startsWith('aws-lc')), 'no aws-lc crates');
  t.notOk(packages.has('webpki'), 'no webpki 0.22 beside rustls-webpki');
  const build = read('dataplane/build.sh');
  t.match(build, /^cargo build --release --locked\b/m, 'build.sh builds --locked');
  t.notMatch(build, /apt-get|librust-|\/usr\/share\/cargo/, 'no Debian crates');
});

t.test('build.sh without cargo: names the Rust version needed and fails', async (t) => {
  const msrv = /^rust-version = "([^"]+)"$/m.exec(cargoToml)?.[1];
  t.match(msrv ?? '', /^1\.\d+$/, 'Cargo.toml states its rust-version');
  const r = spawnSync('bash', [join(ROOT, 'dataplane/build.sh')], { env: { PATH: '/usr/bin:/bin', HOME: '/nonexistent' }, encoding: 'utf8' });
  t.equal(r.status, 1);
  t.match(r.stderr, `needs a Rust toolchain, Rust ${String(msrv)} or newer`);
  t.match(r.stderr, /rustup/);
});

t.test('build.sh with AMBIT_DATAPLANE_BUILD=skip builds nothing and succeeds', async (t) => {
  // No cargo on PATH either: a skip must not even look for it.
  const r = spawnSync('bash', [join(ROOT, 'dataplane/build.sh')], { env: { PATH: '/usr/bin:/bin', HOME: '/nonexistent', AMBIT_DATAPLANE_BUILD: 'skip' }, encoding: 'utf8' });
  t.equal(r.status, 0);
  t.match(r.stderr, /not built/);
});
