import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { lintDockerfile, parseDockerfile, stages, type Stage } from './dockerfile.ts';
import { DAEMONSET_DIR, ROOT, at, find, loadManifests } from './load.ts';

/*
 * daemonset/Dockerfile, read rather than built (no Docker engine here): the
 * general lint, then what this project's image needs, each rule also shown to
 * fail on a Dockerfile broken on purpose.
 */

const dockerfile = readFileSync(join(DAEMONSET_DIR, 'Dockerfile'), 'utf8');
const manifests = loadManifests();

function runs(stage: Stage | undefined, re: RegExp): boolean {
  return stage?.instructions.some((i) => i.op === 'RUN' && re.test(i.args)) ?? false;
}

/** What Ambit's image needs, beyond the general lint. */
function projectProblems(text: string): string[] {
  const problems: string[] = [];
  const all = stages(parseDockerfile(text));
  const build = all.find((s) => s.name === 'build');
  const final = all.at(-1);
  if (all.length < 2 || build === undefined || final === undefined || final === build) return ['multi-stage: a "build" stage and a separate runtime stage'];
  // Every stage on Node 24 (package.json engines) but the data plane's, which needs a Rust toolchain.
  for (const s of all) if (s.name !== 'dataplane' && !/^node:24[.-]/.test(s.image)) problems.push(`FROM ${s.image}: Node 24 (package.json engines) on a node: image`);
  // Nothing in the build stage compiles native code (better-sqlite3 loads its prebuilt addon;
  // ambit-dataplane has its own stage): a compiler toolchain there is only weight and time.
  if (runs(build, /\b(python3|make|g\+\+|gcc|build-essential|node-gyp)\b/)) problems.push('build stage: no compilers or node-gyp (nothing there compiles native code)');
  if (!runs(build, /\bnpm ci\b/)) problems.push('build stage: npm ci (reproducible)');
  // npm ci's install script also runs dataplane/build.sh: the build stage has no Rust, so it must say skip.
  if (!runs(build, /\bAMBIT_DATAPLANE_BUILD=skip npm ci\b/)) problems.push('build stage: AMBIT_DATAPLANE_BUILD=skip npm ci (the dataplane stage builds ambit-dataplane)');
  if (!build.instructions.some((i) => i.op === 'COPY' && /(^|\s)dataplane\/build\.sh\s/.test(i.args))) problems.push('build stage: COPY dataplane/build.sh (npm ci\'s install script runs it)');
  if (!runs(build, /\bnpm run build\b/)) problems.push('build stage: npm run build');
  if (!runs(build, /\bnpm prune --omit=dev\b/)) problems.push('build stage: npm prune --omit=dev');
  // Every source COPY'd into the build stage must exist in the repository.
  for (const i of build.instructions.filter((x) => x.op === 'COPY' && !x.args.includes('--from'))) {
    const words = i.args.split(/\s+/).filter((w) => !w.startsWith('--'));
    for (const src of words.slice(0, -1)) if (!existsSync(join(ROOT, src))) problems.push(`line ${i.line}: COPY ${src}: no such file in the repository`);
  }
  const workdir = final.instructions.filter((i) => i.op === 'WORKDIR').at(-1)?.args;
  if (workdir !== '/app') problems.push('runtime stage: WORKDIR /app (the manifests run /app/dist/...)');
  if (!runs(final, /apt-get install\b[^&]*\biptables\b/)) problems.push('runtime stage: the agent needs iptables');
  const copies = final.instructions.filter((i) => i.op === 'COPY' && i.args.includes('--from=build')).map((i) => i.args);
  for (const want of [/\/app\/dist\/? dist\/?$/, /\/app\/node_modules\/? node_modules\/?$/, /\/app\/package\.json \.\/?$/]) {
    if (!copies.some((c) => want.test(c))) problems.push(`runtime stage: COPY --from=build matching ${want.source}`);
  }
  if (final.instructions.some((i) => i.op === 'RUN' && /\b(python3|g\+\+|build-essential|cargo)\b/.test(i.args))) problems.push('runtime stage: no compilers');
  // The native data path: built by the same script as in a checkout, with a toolchain new enough for the crate.
  const dataplane = all.find((s) => s.name === 'dataplane');
  if (dataplane === undefined) problems.push('a "dataplane" stage builds ambit-dataplane');
  else {
    // A Rust toolchain of today (Debian 12's cargo, Rust 1.63, is older than the crates' MSRV) on
    // the runtime's Debian release, so the executable needs no newer glibc than the runtime has.
    const release = final.image.match(/-(bookworm|trixie|bullseye)\b/)?.[1];
    if (!/^rust:1(\.\d+)*-/.test(dataplane.image) || release === undefined || !dataplane.image.includes(`-${release}`)) problems.push(`dataplane stage: FROM rust:1-${release ?? '<runtime release>'} (the official Rust image on the runtime's Debian release)`);
    // --locked needs the lock file: the crates of Cargo.lock, not whatever is newest.
    if (!dataplane.instructions.some((i) => i.op === 'COPY' && /\bdataplane\/Cargo\.lock\b/.test(i.args))) problems.push('dataplane stage: COPY dataplane/Cargo.lock (build.sh builds --locked)');
    if (!runs(dataplane, /\bbash dataplane\/build\.sh\b/)) problems.push('dataplane stage: bash dataplane/build.sh');
    for (const i of dataplane.instructions.filter((x) => x.op === 'COPY')) {
      const words = i.args.split(/\s+/).filter((w) => !w.startsWith('--'));
      for (const src of words.slice(0, -1)) if (!existsSync(join(ROOT, src))) problems.push(`line ${i.line}: COPY ${src}: no such file in the repository`);
    }
  }
  if (!final.instructions.some((i) => i.op === 'COPY' && /--from=dataplane \/src\/dataplane\/target\/release\/ambit-dataplane dataplane\/target\/release\/$/.test(i.args))) {
    problems.push('runtime stage: COPY --from=dataplane the executable to /app/dataplane/target/release/ (where the agent looks for it)');
  }
  return problems;
}

t.test('the Dockerfile passes the general lint', async (tt) => {
  tt.same(lintDockerfile(dockerfile), []);
  const broken: [string, string][] = [
    ['a latest base image', dockerfile.replace('FROM node:24-bookworm-slim AS runtime', 'FROM node:latest AS runtime')],
    ['an untagged base image', dockerfile.replace('FROM node:24-bookworm-slim AS build', 'FROM node AS build')],
    ['no USER', dockerfile.replace(/^USER .*$/m, '')],
    ['USER root', dockerfile.replace(/^USER .*$/m, 'USER 0')],
    ['a named USER', dockerfile.replace(/^USER .*$/m, 'USER ambit')],
    ['ADD of a URL', `${dockerfile}\nADD https://example.com/x.tgz /tmp/\n`],
    ['an ENTRYPOINT', `${dockerfile}\nENTRYPOINT ["node"]\n`],
    ['a stage name used twice', dockerfile.replace('AS runtime', 'AS build')],
    ['an unterminated line', `${dockerfile}\nRUN true \\`],
  ];
  for (const [what, text] of broken) {
    tt.not(text, dockerfile, `${what}: the file was changed`);
    tt.notSame(lintDockerfile(text), [], `detects: ${what}`);
  }
});

/** RUN lines in shell form that `sh -n` (parse only, run nothing) refuses. */
function shellSyntaxProblems(text: string): string[] {
  return parseDockerfile(text)
    .filter((i) => i.op === 'RUN' && !i.args.startsWith('['))
    .flatMap((i) => {
      const r = spawnSync('sh', ['-n', '-c', i.args], { encoding: 'utf8' });
      return r.status === 0 ? [] : [`line ${i.line}: ${r.stderr.trim()}`];
    });
}

t.test('every RUN is valid shell', async (tt) => {
  tt.same(shellSyntaxProblems(dockerfile), []);
  tt.notSame(shellSyntaxProblems(`${dockerfile}\nRUN for p in a b; do echo "$p"\n`), [], 'detects: an unterminated loop');
});

t.test('the image builds what the manifests run', async (tt) => {
  tt.same(projectProblems(dockerfile), []);
  const broken: [string, string][] = [
    ['no iptables', dockerfile.replace(/install -y --no-install-recommends iptables/, 'install -y --no-install-recommends curl')],
    ['a compiler toolchain in the build stage', dockerfile.replace('WORKDIR /app\nCOPY package.json', 'RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++\nWORKDIR /app\nCOPY package.json')],
    ['node-gyp run in the build stage', dockerfile.replace('RUN npm run build', 'RUN npx node-gyp rebuild && npm run build')],
    ['the removed addon sources copied', dockerfile.replace('COPY shared/ shared/', 'COPY native/ native/\nCOPY shared/ shared/')],
    ['npm install instead of npm ci', dockerfile.replace('npm ci ', 'npm install ')],
    ['dev dependencies kept', dockerfile.replace('npm prune --omit=dev', 'true')],
    ['a source that does not exist', dockerfile.replace('COPY agent/ agent/', 'COPY agents/ agents/')],
    ['another WORKDIR', dockerfile.replace(/WORKDIR \/app\nENV/, 'WORKDIR /srv\nENV')],
    ['a single stage', `FROM node:24-bookworm-slim\nRUN true\nUSER 10001\n`],
    ['the native data path left out', dockerfile.replace(/^COPY --from=dataplane .*$/m, '')],
    ['a Rust image of another Debian release', dockerfile.replace('FROM rust:1-bookworm AS dataplane', 'FROM rust:1-trixie AS dataplane')],
    ['the data plane on a Node image (no Rust)', dockerfile.replace('FROM rust:1-bookworm AS dataplane', 'FROM node:24-bookworm-slim AS dataplane')],
    ['the build stage on a Rust image', dockerfile.replace('FROM node:24-bookworm-slim AS build', 'FROM rust:1-bookworm AS build')],
    ['the lock file left out', dockerfile.replace('dataplane/Cargo.lock ', '')],
    ['npm ci building the data plane in the build stage', dockerfile.replace('AMBIT_DATAPLANE_BUILD=skip npm ci', 'npm ci')],
    ['build.sh left out of the build stage', dockerfile.replace('COPY dataplane/build.sh dataplane/\n', '')],
    ['a dataplane source that does not exist', dockerfile.replace('COPY dataplane/src/ dataplane/src/', 'COPY dataplane/source/ dataplane/src/')],
  ];
  for (const [what, text] of broken) {
    tt.not(text, dockerfile, `${what}: the file was changed`);
    tt.notSame(projectProblems(text), [], `detects: ${what}`);
  }
});

t.test('the image user is the controller\'s uid', async (tt) => {
  const final = stages(parseDockerfile(dockerfile)).at(-1);
  const user = final?.instructions.filter((i) => i.op === 'USER').at(-1)?.args.split(':')[0];
  const controller = find(manifests, 'Deployment', 'ambit-controller');
  tt.equal(Number(user), at(controller, 'spec.template.spec.securityContext.runAsUser'), 'USER = runAsUser');
  tt.match(final?.instructions.filter((i) => i.op === 'RUN').map((i) => i.args).join('\n') ?? '', new RegExp(`useradd .*--uid ${String(user)}\\b`), 'the user exists in the image');
});

t.test('host build output stays out of the build context', async (tt) => {
  const ignore = readFileSync(join(DAEMONSET_DIR, 'Dockerfile.dockerignore'), 'utf8').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  for (const p of ['**/node_modules', 'dist', 'build', 'dataplane/target']) tt.ok(ignore.includes(p), `ignores ${p}`);
  // The lock file must reach the dataplane stage (cargo build --locked).
  tt.notOk(ignore.some((p) => /Cargo\.lock/.test(p)), 'keeps dataplane/Cargo.lock in the context');
});
