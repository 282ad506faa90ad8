#!/usr/bin/env node
import tls from 'node:tls';
import { readFileSync } from 'node:fs';
import { AmbitError, errorMessage } from '../shared/errors.ts';
import { configHelp } from '../shared/config-parse.ts';
import { createLogger } from '../shared/logger.ts';
import { AGENT_OPTIONS, parseAgentConfig } from './config.ts';
import { startAgent } from './app.ts';

// Every Ambit connection is TLS 1.3 (DESIGN §3); set before anything connects.
tls.DEFAULT_MIN_VERSION = 'TLSv1.3';

async function main(): Promise<void> {
  let cfg;
  try {
    cfg = parseAgentConfig({ argv: process.argv.slice(2), env: process.env, readFile: (p) => readFileSync(p, 'utf8') });
  } catch (err) {
    process.stderr.write(`ambit-agent: ${errorMessage(err)}\n`);
    process.exit(2);
  }
  if (cfg.help) {
    process.stdout.write(`${configHelp('Usage: ambit-agent --node NAME --controller HOST:15012 --address IP --data-dir DIR [options]\n\nExample (first start on a VM):\n  ambit-agent --node vm-1 --controller 10.0.0.10:15012 --address 10.0.0.21 \\\n    --data-dir /var/lib/ambit-agent --join "$(cat /etc/ambit/join-token)"', AGENT_OPTIONS)}\n`);
    return;
  }
  const logger = createLogger({ name: 'ambit-agent', level: cfg.logLevel });
  const accessLog = logger.child({ log: 'access' });
  let app;
  try {
    app = await startAgent(cfg, { logger, accessLog });
  } catch (err) {
    logger.fatal({ err, code: err instanceof AmbitError ? err.code : undefined }, 'agent failed to start');
    logger.flush();
    process.stderr.write(`ambit-agent: ${errorMessage(err)}\n`);
    process.exit(1);
  }
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'draining');
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
