/**
 * Every program's --help: each option's default is shown as a user writes it
 * (`24h`, `0.0.0.0:15012`, `table`), and what is shown, given back to the
 * program's own parser, is the default it uses; and --help loads only what
 * printing help needs (no gRPC, generated protocol, YAML, forge, store or the
 * daemon proper), recorded by a module-load hook (fixtures/loaded-modules.ts),
 * not timed: how fast that makes it is bench/cli.ts's figure.
 */
import t from 'tap';
import { controllerTarget } from '../../shared/controller-target.ts';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Command } from 'commander';
import { AGENT_OPTIONS, parseAgentConfig } from '../../agent/config.ts';
import { CONTROLLER_OPTIONS, parseControllerConfig } from '../../controller/config.ts';
import { resolveConnection } from '../../controller/cli/config.ts';
import { buildProgram, shownDefault } from '../../controller/cli/program.ts';
import { defaultText, flagName, type ConfigSources, type OptionSpecs } from '../../shared/config-parse.ts';
import { AGENT_MAIN, AMBITCTL_MAIN, CONTROLLER_MAIN, ROOT } from './harness.ts';

const HOOK = join(ROOT, 'test', 'e2e', 'fixtures', 'loaded-modules.ts');
const dir = mkdtempSync(join(tmpdir(), 'ambit-help-'));

/** Runs `node main args` to its exit; with `record`, the modules it loaded. */
async function run(main: string, args: readonly string[], record?: string): Promise<{ code: number | null; stdout: string; loaded: string[] }> {
  const env = { ...process.env, ...(record ? { NODE_OPTIONS: `--import=${pathToFileURL(HOOK).href}`, AMBIT_TEST_LOADED_MODULES: record } : {}) };
  const child = spawn(process.execPath, [main, ...args], { env, stdio: ['ignore', 'pipe', 'inherit'] });
  let stdout = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  const [code] = (await once(child, 'exit')) as [number | null];
  return { code, stdout, loaded: record ? readFileSync(record, 'utf8').split('\n').filter(Boolean) : [] };
}

interface Daemon {
  readonly name: string;
  readonly main: string;
  readonly options: OptionSpecs;
  readonly parse: (sources: ConfigSources) => Record<string, unknown>;
  readonly required: readonly string[];
  /** Defaults a user reads in the help exactly so. */
  readonly expected: Readonly<Record<string, string>>;
}

const DAEMONS: readonly Daemon[] = [
  {
    name: 'ambit-controller', main: CONTROLLER_MAIN, options: CONTROLLER_OPTIONS, parse: (s) => parseControllerConfig(s, () => 1024),
    required: ['--data-dir', '/var/lib/ambit-controller'],
    expected: { listen: '0.0.0.0:15012', monitoring: '0.0.0.0:15014', certTtl: '24h', nodeCertTtl: '7d', idleTimeout: '5m', store: 'sqlite', maxConnections: 'auto' },
  },
  {
    name: 'ambit-agent', main: AGENT_MAIN, options: AGENT_OPTIONS, parse: parseAgentConfig,
    required: ['--node', 'n1', '--controller', '10.0.0.1:15012', '--address', '10.0.0.2', '--data-dir', '/var/lib/ambit-agent'],
    expected: { hbonePort: '15008', drainTimeout: '20s', capture: 'transparent', outlierMaxEjection: '5m' },
  },
];

for (const d of DAEMONS) {
  t.test(`${d.name} --help shows each default as written, and it parses back to the default`, async (t) => {
    const { code, stdout } = await run(d.main, ['--help']);
    t.equal(code, 0);
    const defaults = d.parse({ argv: d.required, env: {} });
    for (const [key, spec] of Object.entries(d.options)) {
      const flag = `--${flagName(key)}`;
      const line = stdout.split('\n').find((l) => l.startsWith(`  ${flag} `) || l === `  ${flag}`);
      if (!line) {
        t.fail(`${flag} is not in the help`);
        continue;
      }
      // A value default is "(default X)" just before "(required)" or the env var; "(default: ...)" inside a description is prose.
      const shown = /\(default ([^)]+)\)(?: \(required\))? \[[A-Z_]+\]$/.exec(line)?.[1];
      t.equal(shown, defaultText(spec), `${flag}: the help shows the option's default text`);
      if (d.expected[key] !== undefined) t.equal(shown, d.expected[key], `${flag}: shown as a user writes it`);
      if (shown === undefined) {
        // Nothing shown: no default, an off switch or an empty list.
        t.ok(spec.default === undefined || spec.default === false || (Array.isArray(spec.default) && spec.default.length === 0), `${flag}: no default hidden`);
        continue;
      }
      const given = d.parse({ argv: [...d.required, ...(spec.boolean ? (shown === 'true' ? [flag] : []) : [flag, shown])], env: {} });
      t.same(given[key], defaults[key], `${flag} ${shown} parses to the default`);
    }
  });
}

/** Every command under `cmd` with its path of names. */
function commands(cmd: Command, path: string[] = []): [string[], Command][] {
  return [[path, cmd], ...cmd.commands.flatMap((c) => commands(c, [...path, c.name()]))];
}

t.test('ambitctl: every command\'s help shows each default as written, and it parses back to the default', async (t) => {
  const out: string[] = [];
  const ctx = { env: {}, out: (s: string) => void out.push(s), err: () => {}, readFile: () => '', readStdin: async () => '', now: Date.now };
  const program = buildProgram(ctx);
  let checked = 0;
  for (const [path, cmd] of commands(program)) {
    const help = cmd.helpInformation().replace(/\s+/g, ' ');
    t.notMatch(help, /\(default: \[/, `ambitctl ${path.join(' ')}: no list shown as JSON`);
    t.notMatch(help, /\(default: "/, `ambitctl ${path.join(' ')}: no default in JSON quotes`);
    for (const option of cmd.options) {
      const shown = shownDefault(option);
      if (shown === undefined) continue;
      checked++;
      t.ok(help.includes(`(default: ${shown})`), `ambitctl ${path.join(' ')} ${option.long}: shows (default: ${shown})`);
      // Parsed as commander parses the flag given on the command line.
      const parsed: unknown = option.parseArg ? option.parseArg(shown, undefined) : shown;
      t.same(parsed, option.defaultValue, `ambitctl ${path.join(' ')} ${option.long} ${shown} parses to the default`);
    }
  }
  t.ok(checked >= 10, `checked ${checked} defaults`);
  // The global --controller's default is the connection's.
  const help = program.helpInformation().replace(/\s+/g, ' ');
  const shown = /--controller <host:port> .*?\(default: ([^)]+)\)/.exec(help)?.[1];
  t.equal(shown, '127.0.0.1:15012');
  t.equal(controllerTarget(resolveConnection({}, { AMBIT_CREDENTIALS: '/x' }).controller), shown, '--controller: the shown default is the one used');
});

/** What --help must not load, with what it is. */
const NOT_LOADED: readonly { readonly what: string; readonly match: (url: string) => boolean }[] = [
  { what: 'the gRPC library', match: (u) => u.includes('/node_modules/@grpc/') },
  { what: 'the protobuf runtime', match: (u) => u.includes('/node_modules/@bufbuild/') },
  { what: 'the generated protocol', match: (u) => u.includes('/shared/proto/gen/') },
  { what: 'the YAML parser', match: (u) => u.includes('/node_modules/yaml/') },
  { what: 'node-forge', match: (u) => u.includes('/node_modules/node-forge/') },
  { what: 'the Kubernetes client', match: (u) => u.includes('/node_modules/@kubernetes/') },
  { what: 'SQLite', match: (u) => u.includes('/node_modules/better-sqlite3/') },
  { what: 'the resource validator', match: (u) => u.endsWith('/shared/resources/validate.ts') },
  { what: 'the controller proper', match: (u) => u.endsWith('/controller/app.ts') },
  { what: 'the agent proper', match: (u) => u.endsWith('/agent/app.ts') },
];

const HELP_RUNS: readonly [string, string, readonly string[]][] = [
  ['ambitctl', AMBITCTL_MAIN, ['--help']],
  ['ambitctl', AMBITCTL_MAIN, ['workload', 'register', '--help']],
  ['ambitctl', AMBITCTL_MAIN, ['apply', '--help']],
  ['ambit-controller', CONTROLLER_MAIN, ['--help']],
  ['ambit-agent', AGENT_MAIN, ['--help']],
];

for (const [name, main, args] of HELP_RUNS) {
  t.test(`${name} ${args.join(' ')} loads none of what running a command needs`, async (t) => {
    const record = join(dir, `${name}-${args.join('-')}.txt`);
    const { code, stdout, loaded } = await run(main, args, record);
    t.equal(code, 0);
    t.match(stdout, /Usage: /);
    t.ok(loaded.some((u) => u.endsWith(main.slice(ROOT.length))), 'the record holds the program');
    for (const { what, match } of NOT_LOADED) t.same(loaded.filter(match), [], `${what} is not loaded`);
  });
}

t.test('the hook sees what a command loads: ambitctl status loads the gRPC client', async (t) => {
  const record = join(dir, 'status.txt');
  // No controller listens on port 1 of this block: the call fails, after the client is loaded.
  const { code, loaded } = await run(AMBITCTL_MAIN, ['--controller', '127.0.128.9:1', '--credentials', join(dir, 'none'), 'status'], record);
  t.not(code, 0);
  t.ok(loaded.some((u) => u.endsWith('/controller/cli/client.ts')), 'the client is loaded');
});

t.test('ambitctl.mjs, the entry an install runs: with its compile cache warm, Node\'s TypeScript stripper is never loaded', async (t) => {
  const env = { ...process.env, XDG_CACHE_HOME: join(dir, 'cache-entry') };
  // A preloaded hook that names, at exit, the stripper if it was loaded (an ES module as a data: URL: it is not stripped itself).
  const hook = `--import=data:text/javascript,process.on('exit',()=>process.stderr.write('stripper:'+process.moduleLoadList.some((m)=>m.includes('amaro'))+'\\n'))`;
  const runEntry = async (main: string): Promise<{ stdout: string; stripper: boolean }> => {
    const child = spawn(process.execPath, [hook, main, 'node', 'list', '--help'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const [code] = (await once(child, 'exit')) as [number | null];
    t.equal(code, 0, `${main} exits 0 (${stderr})`);
    const m = /stripper:(true|false)/.exec(stderr);
    t.ok(m, 'the hook reported');
    return { stdout, stripper: m?.[1] === 'true' };
  };
  const entry = join(ROOT, 'controller/cli/ambitctl.mjs');
  const first = await runEntry(entry);
  t.ok(first.stripper, 'the first run strips the sources (an empty cache)');
  const warm = await runEntry(entry);
  t.notOk(warm.stripper, 'a later run reads every module, main.ts included, from the cache');
  t.equal(warm.stdout, first.stdout, 'and prints the same');
  const direct = await runEntry(AMBITCTL_MAIN);
  t.ok(direct.stripper, 'main.ts as the entry loads the stripper whatever the cache holds (what ambitctl.mjs avoids)');
  t.equal(direct.stdout, first.stdout, 'the same program');
});
