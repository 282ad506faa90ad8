import t from 'tap';
import { AGENT_OPTIONS, loopbackAddressFor, parseAgentConfig, parseUpstreams } from '../../agent/config.ts';
import { AmbitError, isAmbitError } from '../../shared/errors.ts';

const REQUIRED = ['--node', 'node-a', '--controller', 'ctl.example:15012', '--address', '10.0.0.5', '--data-dir', '/var/lib/ambit'];

function configError(fn: () => unknown): AmbitError {
  try {
    fn();
  } catch (err) {
    if (err instanceof AmbitError) return err;
    throw err;
  }
  throw new Error('expected an AmbitError');
}

t.test('parseUpstreams: valid lists', async (t) => {
  t.same(parseUpstreams('shop/client:9080=web.shop:80'), [
    { namespace: 'shop', workload: 'client', localPort: 9080, destination: { host: 'web.shop', port: 80 } },
  ]);
  t.same(parseUpstreams(' shop/client:9080=web.shop:80 , ops/job-1.a:1=10.96.0.1:65535,, default/x:65535=[fd00::1]:443 '), [
    { namespace: 'shop', workload: 'client', localPort: 9080, destination: { host: 'web.shop', port: 80 } },
    { namespace: 'ops', workload: 'job-1.a', localPort: 1, destination: { host: '10.96.0.1', port: 65535 } },
    { namespace: 'default', workload: 'x', localPort: 65535, destination: { host: 'fd00::1', port: 443 } },
  ], 'comma-separated, blanks and empty items ignored, names, IPv4 and [IPv6]');
  t.same(parseUpstreams(''), [], 'empty: none');
});

t.test('parseUpstreams: invalid forms name the item', async (t) => {
  const bad = [
    'client:9080=web.shop:80', // no namespace
    'Shop/client:9080=web.shop:80', // upper case
    '-shop/client:9080=web.shop:80',
    'shop/client=web.shop:80', // no local port
    'shop/client:9080', // no destination
    'shop/client:9080=', 'shop/client:9080=web.shop', // destination without a port
    'shop/client:0=web.shop:80', 'shop/client:65536=web.shop:80', 'shop/client:123456=web.shop:80',
    'shop/client:9080=web.shop:0', 'shop/client:9080=web.shop:65536',
    'shop/client:9080=bad host:80', 'shop/client:9080=[10.0.0.1]:80',
    'shop/client:9080=web.shop:80,junk',
  ];
  for (const b of bad) t.throws(() => parseUpstreams(b), Error, JSON.stringify(b));
  t.throws(() => parseUpstreams(undefined), /must be a list/);
  t.throws(() => parseUpstreams(42), /must be a list/);
  t.throws(() => parseUpstreams('shop/client:9080=web.shop:80,junk'), /"junk" is not NAMESPACE\/WORKLOAD:LOCAL_PORT=HOST:PORT/);
});

t.test('parseAgentConfig: required flags', async (t) => {
  for (const [flag, key] of [['--node', 'node'], ['--controller', 'controller'], ['--address', 'address'], ['--data-dir', 'data-dir']] as const) {
    const argv = [...REQUIRED];
    argv.splice(argv.indexOf(flag), 2);
    const err = configError(() => parseAgentConfig({ argv, env: {} }));
    t.equal(err.code, 'AMBIT_ERR_CONFIG_INVALID', `${flag} missing`);
    t.equal(err.details.key, key);
    t.match(err.message, new RegExp(`missing required --${key}`));
  }
  t.equal(parseAgentConfig({ argv: ['--help'], env: {} }).help, true, '--help needs nothing else');
  // The environment can supply them.
  const cfg = parseAgentConfig({ argv: [], env: { AMBIT_NODE: 'n1', AMBIT_CONTROLLER: '10.0.0.1', AMBIT_ADDRESS: '::1', AMBIT_DATA_DIR: '/d' } });
  t.equal(cfg.node, 'n1');
  t.same(cfg.controller, [{ host: '10.0.0.1', port: 15012 }], 'controller port defaults to 15012');
  t.equal(cfg.address, '::1');
});

t.test('parseAgentConfig: --controller takes every replica: IP addresses, or one name', async (t) => {
  const base = { AMBIT_NODE: 'n1', AMBIT_ADDRESS: '10.0.0.9', AMBIT_DATA_DIR: '/d' };
  const cfg = parseAgentConfig({ argv: [], env: { ...base, AMBIT_CONTROLLER: '10.0.0.1,10.0.0.2:15099, 10.0.0.3' } });
  t.same(cfg.controller, [{ host: '10.0.0.1', port: 15012 }, { host: '10.0.0.2', port: 15099 }, { host: '10.0.0.3', port: 15012 }]);
  t.same(parseAgentConfig({ argv: [], env: { ...base, AMBIT_CONTROLLER: '[fd00::1]:15012,[fd00::2]:15012' } }).controller.length, 2);
  for (const [value, why] of [
    ['ctl-a.example,ctl-b.example', /must all be IP addresses/],
    ['10.0.0.1,ctl.example', /must all be IP addresses/],
    ['10.0.0.1,[fd00::1]:15012', /all IPv4 or all IPv6/],
    ['10.0.0.1,10.0.0.1:15012', /twice/],
    ['10.0.0.1,bad host', /"bad host"/],
  ] as const) {
    t.throws(() => parseAgentConfig({ argv: [], env: { ...base, AMBIT_CONTROLLER: value } }), { code: 'AMBIT_ERR_CONFIG_INVALID', message: why }, value);
  }
});

t.test('parseAgentConfig: defaults', async (t) => {
  const cfg = parseAgentConfig({ argv: REQUIRED, env: {} });
  t.equal(cfg.help, false);
  t.same(cfg.controller, [{ host: 'ctl.example', port: 15012 }]);
  t.equal(cfg.hbonePort, 15008);
  t.equal(cfg.outboundPort, 15001);
  t.equal(cfg.inboundPlaintextPort, 15006);
  t.equal(cfg.socksPort, 15080);
  t.equal(cfg.adminPort, 15000);
  t.equal(cfg.metricsPort, 15020);
  t.equal(cfg.readyPort, 15021);
  t.equal(cfg.capture, 'transparent');
  t.equal(cfg.captureMode, 'vm');
  t.equal(cfg.mode, 'strict');
  t.equal(cfg.passthrough, 'allow');
  t.equal(cfg.drainTimeout, 20_000);
  t.equal(cfg.connectTimeout, 5_000);
  t.equal(cfg.logLevel, 'info');
  t.same(cfg.upstreams, []);
  t.equal(cfg.join, undefined);
  t.equal(cfg.podCidrs, undefined);
  t.ok(Object.isFrozen(cfg), 'frozen');
});

t.test('parseAgentConfig: values and their validation', async (t) => {
  const cfg = parseAgentConfig({
    argv: [...REQUIRED, '--hbone-port', '0', '--capture', 'none', '--mode', 'permissive', '--connect-timeout', '250ms', '--upstreams', 'shop/c:9080=web.shop:80', '--passthrough', 'deny'],
    env: { AMBIT_SOCKS_PORT: '1080' },
  });
  t.equal(cfg.hbonePort, 0, 'port 0: any free port');
  t.equal(cfg.socksPort, 1080, 'from the environment');
  t.equal(cfg.capture, 'none');
  t.equal(cfg.mode, 'permissive');
  t.equal(cfg.connectTimeout, 250);
  t.equal(cfg.passthrough, 'deny');
  t.same(cfg.upstreams, [{ namespace: 'shop', workload: 'c', localPort: 9080, destination: { host: 'web.shop', port: 80 } }]);

  const bad: [string[], string][] = [
    [['--hbone-port', '65536'], 'hbone-port'],
    [['--address', 'host.example'], 'address'],
    [['--node', 'Node_A'], 'node'],
    [['--capture', 'magic'], 'capture'],
    [['--connect-timeout', '10ms'], 'connect-timeout'],
    [['--upstreams', 'nope'], 'upstreams'],
    [['--no-such-flag', 'x'], ''],
  ];
  for (const [extra, key] of bad) {
    const err = configError(() => parseAgentConfig({ argv: [...REQUIRED, ...extra], env: {} }));
    t.equal(err.code, 'AMBIT_ERR_CONFIG_INVALID', extra.join(' '));
    if (key) t.equal(err.details.key, key, `names ${key}`);
  }
});

t.test('--capture-mode pod requires --pod-cidrs', async (t) => {
  const err = configError(() => parseAgentConfig({ argv: [...REQUIRED, '--capture-mode', 'pod'], env: {} }));
  t.equal(err.code, 'AMBIT_ERR_CONFIG_INVALID');
  t.equal(err.details.key, 'pod-cidrs');
  t.match(err.message, /--capture-mode pod needs --pod-cidrs/);
  t.ok(isAmbitError(err));

  const ok = parseAgentConfig({ argv: [...REQUIRED, '--capture-mode', 'pod', '--pod-cidrs', '10.244.1.0/24'], env: {} });
  t.equal(ok.captureMode, 'pod');
  t.equal(ok.podCidrs, '10.244.1.0/24');
  t.equal(parseAgentConfig({ argv: [...REQUIRED, '--capture-mode', 'pod', '--capture', 'none'], env: {} }).captureMode, 'pod', 'not needed without transparent capture');
  t.equal(parseAgentConfig({ argv: [...REQUIRED, '--capture-mode', 'pod', '--help'], env: {} }).help, true, 'not needed for --help');
});

t.test('every option is documented', async (t) => {
  for (const [key, spec] of Object.entries(AGENT_OPTIONS)) t.ok(spec.description.length > 5, key);
});

t.test('loopbackAddressFor', async (t) => {
  t.equal(loopbackAddressFor('127.0.0.2'), '127.0.0.2', 'a loopback --address is used itself');
  t.equal(loopbackAddressFor('127.0.0.1'), '127.0.0.1');
  t.equal(loopbackAddressFor('::1'), '::1');
  t.equal(loopbackAddressFor('10.0.0.5'), '127.0.0.1', 'otherwise 127.0.0.1');
  t.equal(loopbackAddressFor('2001:db8::5'), '127.0.0.1');
  t.equal(loopbackAddressFor('0.0.0.0'), '127.0.0.1');
  t.equal(loopbackAddressFor('127.example.com'), '127.0.0.1', 'a name is not an address');
});

t.test('the retry budget and body buffer flags refuse 0, which the control protocol reads as "the data plane\'s default"', async (t) => {
  const env = { AMBIT_NODE: 'n1', AMBIT_ADDRESS: '10.0.0.9', AMBIT_DATA_DIR: '/d', AMBIT_CONTROLLER: '10.0.0.1' };
  for (const flag of ['--retry-budget-percent', '--retry-budget-min-concurrency', '--http-max-buffered-body']) {
    t.throws(() => parseAgentConfig({ argv: [flag, '0'], env }), { code: 'AMBIT_ERR_CONFIG_INVALID', message: new RegExp(`${flag}.*from 1 to`) }, flag);
  }
  const cfg = parseAgentConfig({ argv: ['--retry-budget-percent', '1', '--retry-budget-min-concurrency', '1', '--http-max-buffered-body', '1'], env });
  t.same([cfg.retryBudgetPercent, cfg.retryBudgetMinConcurrency, cfg.httpMaxBufferedBody], [1, 1, 1]);
});
