#!/usr/bin/env node
import { runDaemon } from '../shared/daemon.ts';
import { createLogger } from '../shared/logger.ts';
import { AGENT_OPTIONS, parseAgentConfig } from './config.ts';

void runDaemon({
  name: 'ambit-agent',
  usage: 'Usage: ambit-agent --node NAME --controller HOST:15012 --address IP --data-dir DIR [options]\n\nExample (first start on a VM):\n  ambit-agent --node vm-1 --controller 10.0.0.10:15012 --address 10.0.0.21 \\\n    --data-dir /var/lib/ambit-agent --join-file /etc/ambit/join-token',
  options: AGENT_OPTIONS,
  dataDir: (cfg) => cfg.dataDir,
  parse: parseAgentConfig,
  // The access log (a line per connection) goes through the sink's batched
  // entrance: one write per 16 KiB or 10 ms instead of one per connection.
  // The agent proper is loaded once the configuration is good: --help and a usage error do without it.
  start: async (cfg, logger, sink) => (await import('./app.ts')).startAgent(cfg, { logger, accessLog: createLogger({ name: 'ambit-agent', level: cfg.logLevel, destination: sink.batched }).child({ log: 'access' }) }),
  argv: process.argv.slice(2),
  env: process.env,
  stoppingMessage: 'draining',
});
