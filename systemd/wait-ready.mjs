// ExecStartPost= readiness gate for the Ambit units (the binaries do not speak
// sd_notify). Installed as <prefix>/lib/wait-ready.mjs; run through
// <prefix>/bin/ambit-wait-ready.
//
//   ambit-wait-ready agent|controller [--timeout SECONDS] [-- DAEMON_ARGS...]
//
// It reads the daemon's settings the way the daemon does (AMBIT_* from the
// unit's EnvironmentFile=, an AMBIT_CONFIG file, DAEMON_ARGS), through the
// daemon's own config parser, and polls its readiness endpoint:
//   agent:      GET http://<--address>:<--ready-port>/healthz/ready
//   controller: GET http://<--monitoring>/healthz/ready (0.0.0.0 / :: → loopback)
// Exit 0 on the first 200; exit 1 when --timeout (default 60 s) passes first,
// which fails the unit's start. Every 5 s it says on stderr what it waits for.
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

function usage(message) {
  process.stderr.write(`ambit-wait-ready: ${message}\nusage: ambit-wait-ready agent|controller [--timeout SECONDS] [-- DAEMON_ARGS...]\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const [which, ...rest] = argv;
  if (which !== 'agent' && which !== 'controller') usage(`unknown daemon ${JSON.stringify(which ?? '')}`);
  let timeoutS = 60;
  let daemonArgs = [];
  for (let i = 0; i < rest.length; i++) {
    if (rest[i] === '--timeout') {
      timeoutS = Number(rest[++i]);
      if (!Number.isFinite(timeoutS) || timeoutS <= 0) usage(`--timeout must be a positive number of seconds, not ${JSON.stringify(rest[i])}`);
    } else if (rest[i] === '--') {
      daemonArgs = rest.slice(i + 1);
      break;
    } else {
      usage(`unknown argument ${JSON.stringify(rest[i])}`);
    }
  }
  return { which, timeoutMs: timeoutS * 1000, daemonArgs };
}

const loopbackFor = (host) => (host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host);
const urlHost = (host) => (isIP(host) === 6 ? `[${host}]` : host);

async function readinessUrl(which, daemonArgs) {
  // --data-dir is required by both parsers but irrelevant here.
  const argv = daemonArgs.includes('--data-dir') || process.env.AMBIT_DATA_DIR ? daemonArgs : [...daemonArgs, '--data-dir', '/nonexistent'];
  const sources = { argv, env: process.env, readFile: (p) => readFileSync(p, 'utf8') };
  if (which === 'agent') {
    const { parseAgentConfig } = await import(pathToFileURL(join(root, 'agent/config.ts')).href);
    const cfg = parseAgentConfig(sources);
    if (cfg.readyPort === 0) throw new Error('--ready-port 0 (an OS-chosen port) cannot be polled');
    return `http://${urlHost(cfg.address)}:${cfg.readyPort}/healthz/ready`;
  }
  const { parseControllerConfig } = await import(pathToFileURL(join(root, 'controller/config.ts')).href);
  const cfg = parseControllerConfig(sources);
  if (cfg.monitoring.port === 0) throw new Error('--monitoring port 0 (an OS-chosen port) cannot be polled');
  return `http://${urlHost(loopbackFor(cfg.monitoring.host))}:${cfg.monitoring.port}/healthz/ready`;
}

async function probe(url) {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
    const body = (await res.text()).trim();
    return { ready: res.status === 200, why: `${res.status} ${body}`.trim() };
  } catch (err) {
    return { ready: false, why: err?.cause?.code ?? err?.message ?? String(err) };
  }
}

async function main() {
  const { which, timeoutMs, daemonArgs } = parseArgs(process.argv.slice(2));
  let url;
  try {
    url = await readinessUrl(which, daemonArgs);
  } catch (err) {
    process.stderr.write(`ambit-wait-ready: cannot tell where the ${which} reports readiness: ${err.message}\n`);
    process.exit(2);
  }
  const start = Date.now();
  let lastReport = start;
  for (;;) {
    const r = await probe(url);
    if (r.ready) {
      process.stderr.write(`ambit-wait-ready: ${which} ready (${url}) after ${((Date.now() - start) / 1000).toFixed(1)} s\n`);
      return;
    }
    const elapsed = Date.now() - start;
    if (elapsed >= timeoutMs) {
      process.stderr.write(`ambit-wait-ready: ${which} not ready after ${timeoutMs / 1000} s (${url}: ${r.why})\n`);
      process.exit(1);
    }
    if (Date.now() - lastReport >= 5000) {
      lastReport = Date.now();
      process.stderr.write(`ambit-wait-ready: waiting for the ${which} (${url}: ${r.why})\n`);
    }
    await new Promise((done) => setTimeout(done, Math.min(250, Math.max(0, timeoutMs - elapsed))));
  }
}

void main();
