#!/usr/bin/env node
import { runDaemon } from '../shared/daemon.ts';
import { AGENT_OPTIONS, parseAgentConfig } from './config.ts';
import { startAgent } from './app.ts';

void runDaemon({
  name: 'ambit-agent',
  usage: 'Usage: ambit-agent --node NAME --controller HOST:15012 --address IP --data-dir DIR [options]\n\nExample (first start on a VM):\n  ambit-agent --node vm-1 --controller 10.0.0.10:15012 --address 10.0.0.21 \\\n    --data-dir /var/lib/ambit-agent --join "$(cat /etc/ambit/join-token)"',
  options: AGENT_OPTIONS,
  parse: parseAgentConfig,
  start: (cfg, logger) => startAgent(cfg, { logger, accessLog: logger.child({ log: 'access' }) }),
  argv: process.argv.slice(2),
  env: process.env,
  stoppingMessage: 'draining',
});
