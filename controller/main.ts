#!/usr/bin/env node
import { runDaemon } from '../shared/daemon.ts';
import { CONTROLLER_OPTIONS, parseControllerConfig } from './config.ts';
import { optimizeHeapForSize } from './v8-heap.ts';

optimizeHeapForSize();

void runDaemon({
  name: 'ambit-controller',
  usage: 'Usage: ambit-controller --data-dir DIR [options]\n\nExample:\n  ambit-controller --data-dir /var/lib/ambit-controller --listen 0.0.0.0:15012',
  options: CONTROLLER_OPTIONS,
  dataDir: (cfg) => cfg.dataDir,
  parse: parseControllerConfig,
  // The controller proper is loaded once the configuration is good: --help and a usage error do without it.
  // A replica that can no longer follow its shared store exits; its supervisor restarts it on a fresh snapshot.
  start: async (cfg, logger) => (await import('./app.ts')).startController(cfg, { logger, onFatal: () => process.exit(1) }),
  argv: process.argv.slice(2),
  env: process.env,
  stoppingMessage: 'shutting down',
});
