#!/usr/bin/env node
import tls from 'node:tls';
import { readFileSync } from 'node:fs';
import { AmbitError, errorMessage } from '../shared/errors.ts';
import { configHelp } from '../shared/config-parse.ts';
import { createLogger } from '../shared/logger.ts';
import { CONTROLLER_OPTIONS, parseControllerConfig } from './config.ts';
import { startController } from './app.ts';

// Every Ambit connection is TLS 1.3 (DESIGN §3/§4); grpc-js offers no per-server
// minimum, so the process default is raised before any listener exists.
tls.DEFAULT_MIN_VERSION = 'TLSv1.3';

async function main(): Promise<void> {
  let cfg;
  try {
    cfg = parseControllerConfig({ argv: process.argv.slice(2), env: process.env, readFile: (p) => readFileSync(p, 'utf8') });
  } catch (err) {
    process.stderr.write(`ambit-controller: ${errorMessage(err)}\n`);
    process.exit(2);
  }
  if (cfg.help) {
    process.stdout.write(`${configHelp('Usage: ambit-controller --data-dir DIR [options]\n\nExample:\n  ambit-controller --data-dir /var/lib/ambit --listen 0.0.0.0:15012', CONTROLLER_OPTIONS)}\n`);
    return;
  }
  const logger = createLogger({ name: 'ambit-controller', level: cfg.logLevel });
  let app;
  try {
    app = await startController(cfg, { logger });
  } catch (err) {
    logger.fatal({ err, code: err instanceof AmbitError ? err.code : undefined }, 'controller failed to start');
    logger.flush();
    process.stderr.write(`ambit-controller: ${errorMessage(err)}\n`);
    process.exit(1);
  }
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down');
    app.close().then(
      () => {
        logger.info('stopped');
        logger.flush();
        process.exit(0);
      },
      (err: unknown) => {
        logger.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

void main();
