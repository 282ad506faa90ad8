import t from 'tap';
import { parseAgentConfig } from '../../agent/config.ts';
import { parseControllerConfig } from '../../controller/config.ts';
import { configHelp } from '../../shared/config-parse.ts';
import { AGENT_OPTIONS } from '../../agent/config.ts';
import { AmbitError } from '../../shared/errors.ts';
import { parseResourceAttributes } from '../../shared/tracing-config.ts';

const AGENT = ['--node', 'node-a', '--controller', 'ctl.example:15012', '--address', '10.0.0.5', '--data-dir', '/var/lib/ambit'];
const agent = (env: Record<string, string> = {}, argv: string[] = []) => parseAgentConfig({ argv: [...AGENT, ...argv], env }).tracing;
const controller = (env: Record<string, string> = {}, argv: string[] = []) => parseControllerConfig({ argv: ['--data-dir', '/var/lib/ctl', ...argv], env }, () => 1024).tracing;

function configError(fn: () => unknown): AmbitError {
  try {
    fn();
  } catch (err) {
    if (err instanceof AmbitError) return err;
    throw err;
  }
  throw new Error('expected an AmbitError');
}

t.test('off by default, with the specification\'s defaults', async (t) => {
  t.same(agent(), {
    enabled: false, protocol: 'http/protobuf', url: 'http://localhost:4318/v1/traces', sampler: 'parentbased_always_on', ratio: 1,
    serviceName: 'ambit-agent', resourceAttributes: {}, exportDelayMs: 5000,
  });
  t.equal(controller().serviceName, 'ambit-controller', 'the controller names itself');
  t.equal(agent({ OTEL_TRACES_EXPORTER: 'none' }).enabled, false, 'none: off');
  t.equal(agent({ OTEL_TRACES_EXPORTER: '' }).enabled, false, 'empty: unset, off');
});

t.test('each standard variable', async (t) => {
  t.equal(agent({ OTEL_TRACES_EXPORTER: 'otlp' }).enabled, true, 'OTEL_TRACES_EXPORTER=otlp turns export on');
  t.equal(controller({ OTEL_TRACES_EXPORTER: 'otlp' }).enabled, true, 'for the controller too');
  t.equal(agent({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' }).url, 'http://collector:4318/v1/traces', 'ENDPOINT: the signal path appended');
  t.equal(agent({ OTEL_EXPORTER_OTLP_ENDPOINT: 'https://collector.example/otlp/' }).url, 'https://collector.example/otlp/v1/traces', 'under a base path, one slash');
  t.equal(agent({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://a:4318', OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://b:9999/custom' }).url, 'http://b:9999/custom', 'TRACES_ENDPOINT used as given, and wins');
  t.same(
    [agent({ OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }).protocol, agent({ OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }).url],
    ['grpc', 'http://localhost:4317/'],
    'PROTOCOL grpc: port 4317 by default',
  );
  t.equal(agent({ OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4317' }).url, 'http://collector:4317/', 'grpc: the endpoint without a signal path');
  t.equal(agent({ OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.25' }).ratio, 0.25, 'SAMPLER_ARG');
  t.equal(agent({ OTEL_TRACES_SAMPLER: 'always_off' }).sampler, 'always_off', 'SAMPLER');
  t.equal(agent({ OTEL_SERVICE_NAME: 'edge-agent' }).serviceName, 'edge-agent', 'SERVICE_NAME');
  t.same(agent({ OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment=prod,team=pay%20ments' }).resourceAttributes, { 'deployment.environment': 'prod', team: 'pay ments' }, 'RESOURCE_ATTRIBUTES, percent-decoded');
  t.equal(agent({ OTEL_RESOURCE_ATTRIBUTES: 'service.name=from-attrs' }).serviceName, 'from-attrs', 'service.name from RESOURCE_ATTRIBUTES');
  t.equal(agent({ OTEL_RESOURCE_ATTRIBUTES: 'service.name=from-attrs', OTEL_SERVICE_NAME: 'named' }).serviceName, 'named', 'SERVICE_NAME wins over it');
  t.equal(agent({ OTEL_BSP_SCHEDULE_DELAY: '200' }).exportDelayMs, 200, 'BSP_SCHEDULE_DELAY');
  t.equal(agent({ AMBIT_TRACES_EXPORTER: 'otlp' }).enabled, false, 'only the standard variable is read (not AMBIT_*)');
});

t.test('flags win over the variables', async (t) => {
  const s = agent(
    { OTEL_TRACES_EXPORTER: 'none', OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://env:4317', OTEL_TRACES_SAMPLER: 'always_off', OTEL_SERVICE_NAME: 'env' },
    ['--traces-exporter', 'otlp', '--otlp-protocol', 'http/protobuf', '--otlp-endpoint', 'http://flag:4318', '--traces-sampler', 'traceidratio', '--traces-sampler-arg', '0.5', '--traces-service-name', 'flag', '--traces-resource-attributes', 'a=b'],
  );
  t.same(s, { enabled: true, protocol: 'http/protobuf', url: 'http://flag:4318/v1/traces', sampler: 'traceidratio', ratio: 0.5, serviceName: 'flag', resourceAttributes: { a: 'b' }, exportDelayMs: 5000 });
  t.equal(controller({}, ['--otlp-traces-endpoint', 'http://x:1/t']).url, 'http://x:1/t', 'the controller takes the flags too');
});

t.test('bad values are refused, naming the variable and the value', async (t) => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ OTEL_TRACES_EXPORTER: 'jaeger' }, /invalid --traces-exporter "jaeger" \(from env OTEL_TRACES_EXPORTER\): must be one of otlp, none/],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318' }, /invalid --otlp-endpoint "collector:4318" \(from env OTEL_EXPORTER_OTLP_ENDPOINT\): must be an http:\/\/ or https:\/\/ URL/],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: 'not a url' }, /OTEL_EXPORTER_OTLP_ENDPOINT/],
    [{ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'ftp://x/y' }, /invalid --otlp-traces-endpoint "ftp:\/\/x\/y" \(from env OTEL_EXPORTER_OTLP_TRACES_ENDPOINT\)/],
    [{ OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' }, /invalid --otlp-protocol "http\/json" \(from env OTEL_EXPORTER_OTLP_PROTOCOL\): must be one of http\/protobuf, grpc/],
    [{ OTEL_TRACES_SAMPLER: 'sometimes' }, /invalid --traces-sampler "sometimes" \(from env OTEL_TRACES_SAMPLER\)/],
    [{ OTEL_TRACES_SAMPLER_ARG: '1.5' }, /invalid --traces-sampler-arg "1.5" \(from env OTEL_TRACES_SAMPLER_ARG\): must be a number from 0 to 1/],
    [{ OTEL_TRACES_SAMPLER_ARG: 'half' }, /OTEL_TRACES_SAMPLER_ARG/],
    [{ OTEL_TRACES_SAMPLER_ARG: '-0.1' }, /OTEL_TRACES_SAMPLER_ARG/],
    [{ OTEL_RESOURCE_ATTRIBUTES: 'team' }, /invalid --traces-resource-attributes "team" \(from env OTEL_RESOURCE_ATTRIBUTES\): "team" is not KEY=VALUE/],
    [{ OTEL_RESOURCE_ATTRIBUTES: 'a=%zz' }, /OTEL_RESOURCE_ATTRIBUTES.*not valid percent-encoding/],
    [{ OTEL_BSP_SCHEDULE_DELAY: '0' }, /invalid --traces-export-delay "0" \(from env OTEL_BSP_SCHEDULE_DELAY\)/],
  ];
  for (const [env, re] of cases) {
    const err = configError(() => agent(env));
    t.equal(err.code, 'AMBIT_ERR_CONFIG_INVALID', JSON.stringify(env));
    t.match(err.message, re, JSON.stringify(env));
    t.equal(configError(() => controller(env)).message, err.message, `${JSON.stringify(env)}: the controller says the same`);
  }
  t.match(configError(() => agent({}, ['--otlp-protocol', 'udp'])).message, /invalid --otlp-protocol "udp" \(from flag --otlp-protocol\)/, 'a bad flag names the flag');
});

t.test('parseResourceAttributes', async (t) => {
  t.same(parseResourceAttributes(' a = 1 , ,b=x%2Cy'), { a: '1', b: 'x,y' }, 'blanks and empty items ignored; an encoded comma');
  t.same(parseResourceAttributes('k=a=b'), { k: 'a=b' }, 'the value may hold "="');
  t.throws(() => parseResourceAttributes('=v'), /not KEY=VALUE/, 'an empty key');
});

t.test('--help names the standard variables', async (t) => {
  const help = configHelp('usage', AGENT_OPTIONS);
  for (const v of ['OTEL_TRACES_EXPORTER', 'OTEL_EXPORTER_OTLP_ENDPOINT', 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', 'OTEL_EXPORTER_OTLP_PROTOCOL', 'OTEL_TRACES_SAMPLER', 'OTEL_TRACES_SAMPLER_ARG', 'OTEL_SERVICE_NAME', 'OTEL_RESOURCE_ATTRIBUTES']) {
    t.match(help, `[${v}]`, v);
  }
  t.match(help, '[AMBIT_NODE]', 'other options keep AMBIT_<FLAG>');
});
