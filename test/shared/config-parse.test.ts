import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { CONTROLLER_OPTIONS, parseControllerConfig } from '../../controller/config.ts';
import {
  boolOption, configHelp, durationOption, enumOption, envName, flagName, formatDuration, formatHostPort, hostPortOption,
  intOption, ipOption, parseConfig, parseDuration, parseHostPort, stringOption, type ConfigSources,
} from '../../shared/config-parse.ts';

const SPECS = {
  dataDir: { ...stringOption('data directory'), required: true },
  certTtl: durationOption('certificate lifetime', 24 * 3_600_000, { minMs: 60_000, maxMs: 90 * 86_400_000 }),
  mode: enumOption('mode', ['strict', 'permissive'] as const, 'strict'),
  port: intOption('a port', 15008, 1, 65535),
  listen: hostPortOption('listen address', { host: '0.0.0.0', port: 15012 }, 15012),
  address: ipOption('host address'),
  verbose: boolOption('verbose logging'),
} as const;

/** Sources with a config file served from memory. */
function src(argv: string[], env: Record<string, string> = {}, file?: string): ConfigSources {
  return { argv, env, readFile: (p) => {
    if (file === undefined) throw new Error(`ENOENT: ${p}`);
    return file;
  } };
}

t.test('flag and env names', async (t) => {
  t.equal(flagName('dataDir'), 'data-dir');
  t.equal(flagName('inboundPlaintextPort'), 'inbound-plaintext-port');
  t.equal(envName('certTtl'), 'AMBIT_CERT_TTL');
  t.equal(envName('dataDir'), 'AMBIT_DATA_DIR');
});

t.test('defaults fill what no source sets; the result is frozen', async (t) => {
  const cfg = parseConfig(SPECS, src(['--data-dir', '/d']));
  t.same({ ...cfg }, {
    dataDir: '/d', certTtl: 86_400_000, mode: 'strict', port: 15008, listen: { host: '0.0.0.0', port: 15012 },
    address: undefined, verbose: false, help: false,
  });
  t.ok(Object.isFrozen(cfg));
});

t.test('precedence: flag > env > config file > default', async (t) => {
  const file = 'certTtl: 3h\nmode: permissive\nport: 3\n';
  const env = { AMBIT_CERT_TTL: '2h', AMBIT_MODE: 'strict', AMBIT_CONFIG: '/etc/ambit.yaml' };
  const all = parseConfig(SPECS, src(['--data-dir', '/d', '--cert-ttl', '1h'], env, file));
  t.equal(all.certTtl, 3_600_000, 'flag wins over env and file');
  t.equal(all.mode, 'strict', 'env wins over file');
  t.equal(all.port, 3, 'file wins over default');
  const noFlag = parseConfig(SPECS, src(['--data-dir', '/d'], env, file));
  t.equal(noFlag.certTtl, 2 * 3_600_000, 'env wins over file');
  const fileOnly = parseConfig(SPECS, src(['--data-dir', '/d', '--config', 'c.yaml'], {}, file));
  t.equal(fileOnly.certTtl, 3 * 3_600_000, 'file wins over default');
  const emptyEnv = parseConfig(SPECS, src(['--data-dir', '/d', '--config', 'c.yaml'], { AMBIT_CERT_TTL: '' }, file));
  t.equal(emptyEnv.certTtl, 3 * 3_600_000, 'an empty env var counts as unset');
  const reqFromEnv = parseConfig(SPECS, src([], { AMBIT_DATA_DIR: '/from-env' }));
  t.equal(reqFromEnv.dataDir, '/from-env', 'a required option may come from env');
});

t.test('the config file: path from --config or AMBIT_CONFIG, kebab or camel keys', async (t) => {
  const dir = t.testdir({ 'c.yaml': 'data-dir: /from-file\ncert-ttl: 90\nverbose: true\n' });
  const file = path.join(dir, 'c.yaml');
  const viaFlag = parseConfig(SPECS, { argv: ['--config', file], env: {} });
  t.equal(viaFlag.dataDir, '/from-file', 'read from disk by default');
  t.equal(viaFlag.certTtl, 90_000, 'a bare YAML number is seconds');
  t.equal(viaFlag.verbose, true);
  const viaEnv = parseConfig(SPECS, { argv: [], env: { AMBIT_CONFIG: file } });
  t.equal(viaEnv.dataDir, '/from-file');
  t.throws(() => parseConfig(SPECS, { argv: ['--config', path.join(dir, 'missing.yaml')], env: {} }), { code: 'AMBIT_ERR_CONFIG_FILE', message: /cannot read config file/ });
  t.throws(() => parseConfig(SPECS, src(['--config', 'c'], {}, 'a: [')), { code: 'AMBIT_ERR_CONFIG_FILE', message: /not valid YAML/ });
  t.throws(() => parseConfig(SPECS, src(['--config', 'c'], {}, '- a\n- b\n')), { code: 'AMBIT_ERR_CONFIG_FILE', message: /mapping/ });
  t.throws(() => parseConfig(SPECS, src(['--config', 'c'], {}, 'dataDir: /d\ncertTTL: 1h\n')), {
    code: 'AMBIT_ERR_CONFIG_FILE', message: /unknown key "certTTL"/, details: { key: 'certTTL' },
  });
  t.throws(() => parseConfig(SPECS, src(['--config', 'c'], {}, 'help: true\n')), { code: 'AMBIT_ERR_CONFIG_FILE', message: /unknown key "help"/ });
  const empty = parseConfig(SPECS, src(['--config', 'c', '--data-dir', '/d'], {}, ''));
  t.equal(empty.certTtl, 86_400_000, 'an empty file sets nothing');
});

t.test('unknown flags and positionals are refused', async (t) => {
  t.throws(() => parseConfig(SPECS, src(['--data-dir', '/d', '--bogus'])), { code: 'AMBIT_ERR_CONFIG_INVALID', message: /--bogus/ });
  t.throws(() => parseConfig(SPECS, src(['--data-dir', '/d', 'extra'])), { code: 'AMBIT_ERR_CONFIG_INVALID' });
  t.throws(() => parseConfig(SPECS, src(['--data-dir'])), { code: 'AMBIT_ERR_CONFIG_INVALID' }, 'a value-taking flag without value');
});

t.test('a bad value names the flag, the source and the value', async (t) => {
  const cases: [ConfigSources, RegExp[]][] = [
    [src(['--data-dir', '/d', '--cert-ttl', '3x']), [/--cert-ttl/, /flag --cert-ttl/, /"3x"/]],
    [src(['--data-dir', '/d'], { AMBIT_CERT_TTL: '3x' }), [/--cert-ttl/, /env AMBIT_CERT_TTL/, /"3x"/]],
    [src(['--data-dir', '/d', '--config', 'a.yaml'], {}, 'certTtl: 3x\n'), [/--cert-ttl/, /config file a\.yaml/, /"3x"/]],
    [src(['--data-dir', '/d', '--mode', 'loose']), [/--mode/, /"loose"/, /strict, permissive/]],
    [src(['--data-dir', '/d', '--port', '70000']), [/--port/, /"70000"/, /1 to 65535/]],
    [src(['--data-dir', '/d', '--port', '1.5']), [/--port/, /"1.5"/]],
    [src(['--data-dir', '/d', '--address', '10.0.0.300']), [/--address/, /"10.0.0.300"/]],
    [src(['--data-dir', '/d', '--listen', 'host:65536']), [/--listen/, /"host:65536"/]],
    [src(['--data-dir', '/d', '--cert-ttl', '30s']), [/--cert-ttl/, /at least 1m/]],
    [src(['--data-dir', '/d', '--cert-ttl', '91d']), [/--cert-ttl/, /at most 90d/]],
    [src(['--data-dir', '/d'], { AMBIT_VERBOSE: 'maybe' }), [/--verbose/, /env AMBIT_VERBOSE/, /"maybe"/]],
  ];
  for (const [sources, patterns] of cases) {
    try {
      parseConfig(SPECS, sources);
      t.fail(`accepted ${JSON.stringify(sources.argv)} ${JSON.stringify(sources.env)}`);
    } catch (err) {
      t.match(err, { code: 'AMBIT_ERR_CONFIG_INVALID' });
      for (const p of patterns) t.match((err as Error).message, p);
    }
  }
  t.throws(() => parseConfig(SPECS, src(['--data-dir', '/d'], { AMBIT_CERT_TTL: '3x' })), {
    code: 'AMBIT_ERR_CONFIG_INVALID', details: { key: 'cert-ttl', source: 'env AMBIT_CERT_TTL', value: '3x' },
  });
});

t.test('a missing required option is named; --help skips the check', async (t) => {
  t.throws(() => parseConfig(SPECS, src([])), { code: 'AMBIT_ERR_CONFIG_INVALID', message: /missing required --data-dir \(or AMBIT_DATA_DIR\)/, details: { key: 'data-dir' } });
  const help = parseConfig(SPECS, src(['--help']));
  t.equal(help.help, true);
  t.equal(help.dataDir, undefined);
});

t.test('boolean flags take no value; env and file spell them as words', async (t) => {
  t.equal(parseConfig(SPECS, src(['--data-dir', '/d', '--verbose'])).verbose, true);
  t.equal(parseConfig(SPECS, src(['--data-dir', '/d'])).verbose, false);
  for (const [v, want] of [['true', true], ['1', true], ['yes', true], ['false', false], ['0', false], ['no', false]] as const) {
    t.equal(parseConfig(SPECS, src(['--data-dir', '/d'], { AMBIT_VERBOSE: v })).verbose, want, `env ${v}`);
  }
  t.equal(parseConfig(SPECS, src(['--data-dir', '/d', '--config', 'c'], {}, 'verbose: false\n')).verbose, false);
  t.throws(() => parseConfig(SPECS, src(['--data-dir', '/d', '--verbose=true'])), { code: 'AMBIT_ERR_CONFIG_INVALID' });
  t.equal(parseConfig(SPECS, src(['--data-dir', '/d', '--verbose'], { AMBIT_VERBOSE: 'false' })).verbose, true, 'the flag wins');
});

t.test('durations', async (t) => {
  const good: [unknown, number][] = [
    ['24h', 86_400_000], ['1h30m', 5_400_000], ['250ms', 250], ['7d', 7 * 86_400_000], ['90s', 90_000],
    ['1m30s', 90_000], ['1.5h', 5_400_000], [' 10m ', 600_000], ['0s', 0], [30, 30_000], [0.5, 500], [0, 0],
  ];
  for (const [raw, ms] of good) t.equal(parseDuration(raw), ms, JSON.stringify(raw));
  for (const bad of ['', '10', 'h', '1x', '1h 30m', '-1h', '1h-', '1hh', 'ms', '1.h', -5, Number.NaN, Number.POSITIVE_INFINITY, true, null, undefined, {}]) {
    t.throws(() => parseDuration(bad), /duration/, `refuses ${String(bad)}`);
  }
  t.equal(formatDuration(86_400_000), '24h');
  t.equal(formatDuration(90_000), '90s');
  t.equal(formatDuration(120_000), '2m');
  t.equal(formatDuration(250), '250ms');
  t.equal(formatDuration(7 * 86_400_000), '7d', 'whole days past one in days');
  t.equal(formatDuration(36 * 3_600_000), '36h');
  for (const ms of [86_400_000, 90_000, 120_000, 250, 5_400_000, 7 * 86_400_000, 36 * 3_600_000]) t.equal(parseDuration(formatDuration(ms)), ms, 'format round-trips');
});

t.test('parseHostPort', async (t) => {
  const good: [string, number | undefined, string, number][] = [
    ['127.0.0.1:15012', undefined, '127.0.0.1', 15012],
    ['ctl.example:80', undefined, 'ctl.example', 80],
    ['[::1]:15012', undefined, '::1', 15012],
    ['[fd00::1]', 443, 'fd00::1', 443],
    ['::1', 15012, '::1', 15012],
    ['fd00::a:b', 9, 'fd00::a:b', 9],
    ['localhost', 15012, 'localhost', 15012],
    ['h:65535', undefined, 'h', 65535],
    ['127.0.0.1:0', undefined, '127.0.0.1', 0],
  ];
  for (const [raw, def, host, port] of good) t.same(parseHostPort(raw, def), { host, port }, raw);
  const bad: [unknown, number | undefined][] = [
    ['localhost', undefined], ['h:65536', undefined], ['h:-1', undefined], ['h:', undefined], [':80', undefined], ['h:8x', undefined],
    ['[::1]:99999', undefined], ['[not-v6]:80', undefined], ['[10.0.0.1]:80', undefined], ['a b:80', undefined], ['h/x:80', undefined],
    ['', 80], [80, 80], ['::1', undefined],
  ];
  for (const [raw, def] of bad) t.throws(() => parseHostPort(raw, def), Error, `refuses ${JSON.stringify(raw)}`);
  t.equal(formatHostPort({ host: '::1', port: 15012 }), '[::1]:15012');
  t.equal(formatHostPort({ host: '10.0.0.1', port: 80 }), '10.0.0.1:80');
  t.same(parseHostPort(formatHostPort({ host: 'fd00::1', port: 8 })), { host: 'fd00::1', port: 8 });
});

t.test('the real controller options', async (t) => {
  const cfg = parseControllerConfig({ argv: ['--data-dir', '/var/lib/ambit', '--listen', '[::1]:9000', '--cert-ttl', '1h30m'], env: { AMBIT_STORE: 'kubernetes' } });
  t.equal(cfg.dataDir, '/var/lib/ambit');
  t.same(cfg.listen, { host: '::1', port: 9000 });
  t.same(cfg.monitoring, { host: '0.0.0.0', port: 15014 });
  t.equal(cfg.certTtl, 5_400_000);
  t.equal(cfg.nodeCertTtl, 7 * 86_400_000);
  t.equal(cfg.store, 'kubernetes');
  t.throws(() => parseControllerConfig({ argv: ['--data-dir', 'd', '--store', 'etcd'], env: {} }), { code: 'AMBIT_ERR_CONFIG_INVALID', details: { key: 'etcd-endpoints' } }, '--store etcd without endpoints');
  t.equal(cfg.trustDomain, 'cluster.local');
  t.equal(cfg.adminName, 'admin');
  t.equal(cfg.logLevel, 'info');
  t.same(parseControllerConfig({ argv: ['--data-dir', 'd', '--listen', '10.0.0.1'], env: {} }).listen, { host: '10.0.0.1', port: 15012 }, 'default port');
  t.same(parseControllerConfig({ argv: ['--data-dir', 'd', '--listen', '::'], env: {} }).listen, { host: '::', port: 15012 }, 'bare IPv6 any-address');

  t.throws(() => parseConfig(CONTROLLER_OPTIONS, { argv: ['--data-dir', 'd'], env: { AMBIT_CERT_TTL: '3x' } }), {
    code: 'AMBIT_ERR_CONFIG_INVALID', message: /--cert-ttl "3x" \(from env AMBIT_CERT_TTL\)/,
  });
  t.throws(() => parseControllerConfig({ argv: ['--data-dir', 'd', '--trust-domain', 'Cluster.Local'], env: {} }), {
    code: 'AMBIT_ERR_CONFIG_INVALID', message: /--trust-domain "Cluster.Local"/,
  });
  t.throws(() => parseControllerConfig({ argv: ['--data-dir', 'd', '--store', 'mysql'], env: {} }), { code: 'AMBIT_ERR_CONFIG_INVALID', message: /--store/ });
  t.throws(() => parseControllerConfig({ argv: [], env: {} }), { code: 'AMBIT_ERR_CONFIG_INVALID', message: /--data-dir/ });
  t.throws(() => parseControllerConfig({ argv: ['--data-dir', 'd', '--ca-cert', 'c.pem'], env: {} }), {
    code: 'AMBIT_ERR_CONFIG_INVALID', message: /--ca-cert and --ca-key/, details: { key: 'ca-key' },
  });
  const dir = t.testdir();
  const file = path.join(dir, 'controller.yaml');
  fs.writeFileSync(file, 'data-dir: /srv/ambit\ncert-ttl: 3600\ntrustDomain: mesh.example\n');
  const fromFile = parseControllerConfig({ argv: ['--config', file], env: {} });
  t.equal(fromFile.dataDir, '/srv/ambit');
  t.equal(fromFile.certTtl, 3_600_000);
  t.equal(fromFile.trustDomain, 'mesh.example');
});

t.test('configHelp lists every option with its env var and default', async (t) => {
  const help = configHelp('usage: x', SPECS);
  t.match(help, /^usage: x\n/);
  t.match(help, /--cert-ttl VALUE.*certificate lifetime \(default 24h\).*\[AMBIT_CERT_TTL\]/);
  t.match(help, /--data-dir VALUE.*\(required\) \[AMBIT_DATA_DIR\]/);
  t.match(help, /--verbose {2,}verbose logging/);
  t.match(help, /--config FILE/);
  t.match(help, /--listen VALUE.*\(default 0\.0\.0\.0:15012\)/, 'an address as HOST:PORT');
  t.notMatch(help, /--verbose.*\(default/, 'an off switch shows no default');
});
