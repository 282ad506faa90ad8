#!/usr/bin/env node
import { runDaemon } from '../shared/daemon.ts';
import { CONTROLLER_OPTIONS, parseControllerConfig } from './config.ts';
import { startController } from './app.ts';

void runDaemon({
  name: 'ambit-controller',
  usage: 'Usage: ambit-controller --data-dir DIR [options]\n\nExample:\n  ambit-controller --data-dir /var/lib/ambit-controller --listen 0.0.0.0:15012',
  options: CONTROLLER_OPTIONS,
  dataDir: (cfg) => cfg.dataDir,
  parse: parseControllerConfig,
  start: (cfg, logger) => startController(cfg, { logger }),
  argv: process.argv.slice(2),
  env: process.env,
  stoppingMessage: 'shutting down',
});
