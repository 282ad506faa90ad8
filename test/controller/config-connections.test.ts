import t from 'tap';
import { autoMaxConnections, DESCRIPTOR_RESERVE, parseControllerConfig } from '../../controller/config.ts';

t.test('gRPC connection limits: defaults, auto from the descriptor limit, and explicit values', async (t) => {
  const cfg = parseControllerConfig({ argv: ['--data-dir', 'd'], env: {} }, () => 256);
  t.equal(cfg.connectDeadline, 10_000, '--connect-deadline defaults to 10s');
  t.equal(cfg.idleTimeout, 300_000, '--idle-timeout defaults to 5m');
  t.equal(cfg.maxConnectionsPerSource, 32, '--max-connections-per-source defaults to 32');
  t.equal(cfg.maxConnections, 256 - DESCRIPTOR_RESERVE, '--max-connections auto: the descriptor limit less the reserve');
  t.equal(autoMaxConnections(undefined), 4096, 'a fixed cap when the limit is unknown or unlimited');
  t.equal(autoMaxConnections(40), 16, 'never below 16');
  const set = parseControllerConfig({ argv: ['--data-dir', 'd', '--max-connections', '500', '--connect-deadline', '5s', '--idle-timeout', '2m'], env: { AMBIT_MAX_CONNECTIONS_PER_SOURCE: '8' } }, () => 256);
  t.same([set.maxConnections, set.connectDeadline, set.idleTimeout, set.maxConnectionsPerSource], [500, 5_000, 120_000, 8]);
  t.throws(() => parseControllerConfig({ argv: ['--data-dir', 'd', '--max-connections', 'lots'], env: {} }), { code: 'AMBIT_ERR_CONFIG_INVALID', message: /--max-connections/ });
  t.throws(() => parseControllerConfig({ argv: ['--data-dir', 'd', '--connect-deadline', '100ms'], env: {} }), { code: 'AMBIT_ERR_CONFIG_INVALID', message: /at least 1s/ });
});
