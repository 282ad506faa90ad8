#!/usr/bin/env node
import { setFlagsFromString } from 'node:v8';
import { runDaemon } from '../shared/daemon.ts';
import { CONTROLLER_OPTIONS, parseControllerConfig } from './config.ts';

// The controller holds the whole mesh in memory; a bounded footprint matters
// more to it than peak apply throughput. V8's size-optimized mode grows the
// heap conservatively after a burst of applies instead of keeping what the
// burst's garbage needed (bench/controller.ts, 110,000 resources: RSS after
// the load 333 → 227 MiB, applies 17,600 → 12,600/s). NODE_OPTIONS cannot
// carry this V8 flag, so it is set here, before the controller is loaded.
setFlagsFromString('--optimize-for-size');

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
