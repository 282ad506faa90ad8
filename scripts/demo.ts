#!/usr/bin/env node
/**
 * `npm start`: a local demo mesh, no root needed. A controller (embedded
 * SQLite store) and two agents ("hosts" node-a and node-b on loopback
 * addresses, --capture none) run as child processes; the demo workloads and
 * policy are registered with `ambitctl apply -f examples/…yaml`, exactly as
 * a user would; small HTTP servers stand in for the web workloads; a client
 * and an intruder send requests through node-a. Then it prints a summary and
 * keeps running until Ctrl-C / SIGTERM, when it stops everything it started.
 *
 * State lives in .demo/ (AMBIT_DEMO_DIR overrides it): a second run reuses
 * the CA, the mesh state and the agents' node credentials, so it needs no
 * join tokens and starts fast. AMBIT_DEMO_EXIT_AFTER_SUMMARY=1 stops right
 * after the summary (tests, CI).
 */
import { createWriteStream, existsSync, mkdirSync, readFileSync, rmSync, type WriteStream } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseCertificates } from '../shared/tls.ts';
import { RunningWebApp } from './demo/apps.ts';
import { eventually, getJson, type CertStatus } from './demo/http-poll.ts';
import { canaryFrom, canaryTraffic, describeCanary, type Canary } from './demo/canary.ts';
import { AGENT_PORTS, CONTROLLER, demoEndpoints, layoutFrom, NODES, TRUST_DOMAIN, upstreamsOf, type Layout, type NodeSpec } from './demo/layout.ts';
import { busyEndpoints, describeBusy, describeBusyByHolder, isOrphanedDaemon, isRunningDemo, type Endpoint } from './demo/ports.ts';
import { childEnv, DemoProcess, describeExit, runOnce } from './demo/processes.ts';
import { Progress, styleFor, type Style } from './demo/progress.ts';
import { savedNodeCredentials } from './demo/saved-credentials.ts';
import { formatSummary, type IdentityRow } from './demo/summary.ts';
import { clientRequest, intruderRequest, l7DeniedRequest, oneConnectionRequests, type Exchange, type TrafficDeps } from './demo/traffic.ts';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const ENTRY = {
  controller: join(ROOT, 'controller/main.ts'),
  agent: join(ROOT, 'agent/main.ts'),
  ambitctl: join(ROOT, 'controller/cli/ambitctl.mjs'),
} as const;
const DEMO_FILE = 'examples/demo.yaml';
const POLICY_FILE = 'examples/policy.yaml';
const CANARY_FILE = 'examples/canary.yaml';
/** Requests the client sends to the canary's Service to measure its split (and half as many with a failing instance). */
const CANARY_REQUESTS = 200;
/** The failing instance answers 503 to every FAIL_EVERY-th request it gets. */
const FAIL_EVERY = 3;
const POLICY_NAME = 'demo/web-allow-client';
/** Requests the client sends to the service (half by SOCKS5, half by the upstream listener). */
const LB_REQUESTS = 20;
/** Requests on one keep-alive connection: balanced per request across the web instances. */
const ONE_CONNECTION_REQUESTS = 12;
/** A path examples/policy.yaml's DENY (web-deny-admin) names: the client asks for it once. */
const L7_DENIED_PATH = '/admin/config';
const L7_POLICY_NAME = 'demo/web-deny-admin';
const STEPS = 11;

interface DemoOptions {
  readonly dir: string;
  readonly exitAfterSummary: boolean;
  readonly tty: boolean;
  readonly color: boolean;
}

/** The only place the demo reads its environment. */
function demoOptions(env: NodeJS.ProcessEnv, stdout: NodeJS.WriteStream): DemoOptions {
  return {
    dir: resolve(env.AMBIT_DEMO_DIR || join(ROOT, '.demo')),
    exitAfterSummary: env.AMBIT_DEMO_EXIT_AFTER_SUMMARY === '1',
    tty: stdout.isTTY === true && env.TERM !== 'dumb',
    color: env.NO_COLOR === undefined,
  };
}

class UserError extends Error {}

class Demo {
  readonly #o: DemoOptions;
  readonly #style: Style;
  readonly #progress: Progress;
  readonly #layout: Layout;
  readonly #canary: Canary;
  readonly #endpoints: Endpoint[];
  readonly #dirs: { readonly controller: string; readonly credentials: string; readonly logs: string };
  #ctlLog: WriteStream | undefined;
  #controller: DemoProcess | undefined;
  readonly #agents = new Map<string, DemoProcess>();
  readonly #apps: RunningWebApp[] = [];
  #phase: 'starting' | 'running' | 'stopping' = 'starting';
  #stopped: Promise<number> | undefined;
  readonly #done = Promise.withResolvers<number>();

  constructor(o: DemoOptions) {
    this.#o = o;
    this.#style = styleFor(o.tty, !o.color);
    this.#progress = new Progress({ total: STEPS, write: (t) => process.stdout.write(t), tty: o.tty, style: this.#style });
    this.#layout = layoutFrom(readFileSync(join(ROOT, DEMO_FILE), 'utf8'), DEMO_FILE);
    this.#canary = canaryFrom(readFileSync(join(ROOT, CANARY_FILE), 'utf8'), CANARY_FILE);
    this.#endpoints = demoEndpoints(this.#layout, this.#canary.apps);
    this.#dirs = { controller: join(o.dir, 'controller'), credentials: join(o.dir, 'controller', 'admin'), logs: join(o.dir, 'logs') };
  }

  #say(text = ''): void {
    process.stdout.write(`${text}\n`);
  }

  #shown(p: string): string {
    const r = relative(ROOT, p);
    return r === '' || r.startsWith('..') ? p : r;
  }

  async #ambitctl(args: readonly string[], opts: { redact?: boolean } = {}): Promise<string> {
    const full = ['--controller', `${CONTROLLER.host}:${CONTROLLER.grpcPort}`, '--credentials', this.#dirs.credentials, ...args];
    const r = await runOnce({ entry: ENTRY.ambitctl, args: full, cwd: ROOT, env: childEnv(process.env), log: this.#ctlLog!, shown: `ambitctl ${args.join(' ')}`, ...(opts.redact ? { redact: true } : {}) });
    if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')} failed (exit status ${r.code}): ${r.stderr.trim() || r.stdout.trim()}`);
    return r.stdout;
  }

  /** Resolves with the exit status once stop() has stopped everything. */
  get finished(): Promise<number> {
    return this.#done.promise;
  }

  /** Runs the demo; resolves with the process exit status once everything it started has stopped. */
  async run(): Promise<number> {
    const started = performance.now();
    const fresh = !existsSync(join(this.#dirs.controller, 'ambit.db'));
    this.#say(this.#style.bold(`Ambit demo mesh: a controller and ${NODES.length} agents on 127.0.10.x, state in ${this.#shown(this.#o.dir)}/`));
    this.#say(this.#style.dim(fresh
      ? 'First run: creates a CA, registers the demo workloads and joins the agents with join tokens.'
      : 'Reusing the state of the last run: the CA, the mesh state and the agents\' node credentials.'));
    this.#say();
    try {
      await this.#startup(fresh);
      const summary = await this.#trafficAndSummary(started);
      if (this.#phase !== 'starting') return await this.finished;
      process.stdout.write(summary);
      this.#phase = 'running';
      if (this.#o.exitAfterSummary) return await this.stop(0, 'AMBIT_DEMO_EXIT_AFTER_SUMMARY=1');
      return await this.finished; // the signal handlers (or a child exiting) call stop()
    } catch (err) {
      if (this.#phase !== 'starting') return await this.finished;
      this.#progress.interrupt();
      process.stderr.write(`\n${this.#style.red('error:')} ${(err as Error).message}\n`);
      if (!(err instanceof UserError)) process.stderr.write(`Logs of every process are in ${this.#shown(this.#dirs.logs)}/.\n`);
      return await this.stop(1, 'startup failed');
    }
  }

  async #startup(fresh: boolean): Promise<void> {
    const p = this.#progress;
    await p.step(`checking the demo's ${this.#endpoints.length} addresses and ports`, () => busyEndpoints(this.#endpoints), (busy) => ({ status: busy.length === 0 ? 'all free' : 'busy' }))
      .then((busy) => {
        if (busy.length === 0) return;
        const lines = describeBusyByHolder(busy).map((l) => `  ${l}`);
        const orphans = [...new Set(busy.filter((b) => isOrphanedDaemon(b.holder, this.#o.dir)).map((b) => b.holder?.pid))];
        const hints: string[] = [];
        if (busy.some((b) => isRunningDemo(b.holder))) hints.push('Another demo is running: press Ctrl-C in its terminal, or run\n  pkill -f scripts/demo.ts');
        // Such leftovers cannot log any more, and an Ambit daemon whose log pipe is gone does not stop on SIGTERM.
        if (orphans.length > 0) hints.push(`Processes of an earlier demo that was killed outright are still running; stop them with\n  kill -9 ${orphans.join(' ')}`);
        if (busy.some((b) => b.code === 'EADDRNOTAVAIL')) hints.push('The demo needs the loopback range 127.0.0.0/8 (standard on Linux).');
        if (hints.length === 0) hints.push('Stop what holds these ports (`ss -ltnp` shows them), then run the demo again.');
        const hint = `\n${hints.join('\n')}`;
        throw new UserError(`the demo cannot listen where it needs to:\n${lines.join('\n')}${hint}`);
      });

    mkdirSync(this.#dirs.logs, { recursive: true });
    this.#ctlLog = createWriteStream(join(this.#dirs.logs, 'ambitctl.log'), { flags: 'w' });

    await p.step(`starting the controller on ${CONTROLLER.host}:${CONTROLLER.grpcPort}`, async () => {
      const proc = new DemoProcess({
        name: 'controller', entry: ENTRY.controller, cwd: ROOT, env: childEnv(process.env), logPath: join(this.#dirs.logs, 'controller.log'),
        args: [
          '--data-dir', this.#dirs.controller, '--listen', `${CONTROLLER.host}:${CONTROLLER.grpcPort}`, '--monitoring', `${CONTROLLER.host}:${CONTROLLER.monitoringPort}`,
          '--console', `${CONTROLLER.host}:${CONTROLLER.consolePort}`,
        ],
      });
      this.#controller = proc;
      this.#watch(proc);
      return proc.waitForLog((l) => l.msg === 'controller ready', 'controller ready', 60_000);
    }, (ready) => ({
      status: 'ready',
      notes: [fresh
        ? `new CA (root ${String(ready.caRoot).slice(0, 16)}…), admin credentials for ambitctl in ${this.#shown(this.#dirs.credentials)}/`
        : `reused the CA (root ${String(ready.caRoot).slice(0, 16)}…) and the store at revision ${String(ready.revision)}`],
    }));

    // From here on the work overlaps: the agents (separate hosts; nothing orders them) start while ambitctl
    // applies the example files. Each is shown as its own step, timed from when its work began.
    const launches = NODES.map((n) => ({ n, since: performance.now(), done: this.#launchAgent(n, fresh) }));
    for (const l of launches) l.done.catch(() => undefined); // awaited below; one failing early is not "unhandled"

    for (const file of [DEMO_FILE, POLICY_FILE, CANARY_FILE]) {
      await p.step(`ambitctl apply -f ${file}`, () => this.#ambitctl(['apply', '-f', join(ROOT, file)]), (out) => {
        const lines = out.trim().split('\n').filter(Boolean);
        const changed = lines.filter((l) => !l.endsWith(' unchanged'));
        return changed.length === 0
          ? { status: `unchanged (${lines.length} resource${lines.length === 1 ? '' : 's'})` }
          : { status: 'applied', notes: lines };
      });
    }

    const apps = [...this.#layout.web, ...this.#canary.apps];
    await p.step(`starting the demo apps ${apps.map((w) => `${w.workload} (${w.address}:${w.port})`).join(', ')}`, async () => {
      for (const w of apps) {
        const app = new RunningWebApp(w);
        this.#apps.push(app);
        await app.listen();
      }
    }, () => ({ status: 'listening' }));

    for (const l of launches) {
      await p.step(`starting agent ${l.n.name} on ${l.n.address}`, () => l.done, (notes) => ({ status: 'ready', notes }), l.since);
    }

    await p.step('waiting for the mesh: certificates issued, agents know each other', () => this.#meshReady(), (certs) => ({ status: 'ready', notes: [`${certs} workload and node certificates valid; every agent knows every HBONE address`] }));
  }

  /**
   * Starts one agent: from its saved node credentials when they are still
   * good, else with a new join token (a fresh controller has a new CA, so
   * credentials saved under an older one are discarded). Resolves with notes
   * for the progress line once its readiness endpoint answers 200.
   */
  async #launchAgent(n: NodeSpec, freshController: boolean): Promise<string[]> {
    const dir = join(this.#o.dir, n.name);
    const saved = freshController ? (existsSync(dir) ? 'stale' : 'none') : savedNodeCredentials(dir, n.name, join(this.#dirs.controller, 'ca'), Date.now());
    const notes: string[] = [];
    if (saved === 'stale') {
      rmSync(dir, { recursive: true, force: true });
      notes.push(`discarded ${this.#shown(dir)}/: ${freshController ? 'its credentials came from the CA of an earlier controller state' : 'its node certificate had expired or came from another CA'}`);
    }
    let token: string | undefined;
    if (saved !== 'valid') {
      token = (await this.#ambitctl(['node', 'token', 'create', '--node', n.name, '--ttl', '10m'], { redact: true })).trim();
      notes.push(`joined with a single-use token from \`ambitctl node token create --node ${n.name}\``);
    }
    if (this.#phase !== 'starting') throw new Error('stopping');
    const args = [
      '--node', n.name, '--controller', `${CONTROLLER.host}:${CONTROLLER.grpcPort}`, '--address', n.address,
      '--data-dir', dir, '--capture', 'none',
      ...(upstreamsOf(n) ? ['--upstreams', upstreamsOf(n)!] : []),
    ];
    // The token goes in the environment, not the arguments, where every local user could read it (ps).
    const env = { ...childEnv(process.env), ...(token ? { AMBIT_JOIN: token } : {}) };
    const proc = new DemoProcess({ name: `agent ${n.name}`, entry: ENTRY.agent, args, cwd: ROOT, env, logPath: join(this.#dirs.logs, `${n.name}.log`) });
    this.#agents.set(n.name, proc);
    this.#watch(proc);
    await proc.waitForLog((l) => l.msg === 'agent started', 'agent started', 60_000);
    if (proc.logs.some((l) => l.msg === 'using saved node credentials')) {
      notes.push(`reused the saved node credentials in ${this.#shown(dir)}/ (no join token needed)`);
    }
    const url = `http://${n.address}:${AGENT_PORTS.ready}/healthz/ready`;
    await eventually(async () => {
      const r = await getJson<string>(url);
      if (r.status !== 200) throw new Error(`${url} answers ${r.status}: ${String(r.body).trim()}`);
      return true;
    }, `${n.name} to be ready`, 60_000);
    return notes;
  }

  #workloadsOn(node: string): { identity: string }[] {
    const l = this.#layout;
    return [l.client, l.intruder, ...l.web, ...this.#canary.apps].filter((w) => w.node === node);
  }

  /** Every agent holds valid certificates for its workloads and knows every node's HBONE address; returns the number of certificates. */
  async #meshReady(): Promise<number> {
    return eventually(async () => {
      let certs = 0;
      for (const n of NODES) {
        const admin = `http://${n.address}:${AGENT_PORTS.admin}`;
        const dump = await getJson<{ nodes: { name: string; hboneAddress: string }[] }>(`${admin}/config_dump`);
        for (const peer of NODES) {
          if (!dump.body.nodes.some((x) => x.name === peer.name && x.hboneAddress === `${peer.address}:${AGENT_PORTS.hbone}`)) {
            throw new Error(`${n.name} does not know ${peer.name}'s HBONE address yet`);
          }
        }
        const list = (await getJson<CertStatus[]>(`${admin}/certs`)).body;
        const valid = new Set(list.filter((c) => c.state === 'valid').map((c) => c.identity));
        const wanted = [`spiffe://${TRUST_DOMAIN}/ambit/node/${n.name}`, ...this.#workloadsOn(n.name).map((w) => w.identity)];
        const missing = wanted.filter((id) => !valid.has(id));
        if (missing.length > 0) throw new Error(`${n.name} has no valid certificate yet for ${missing.join(', ')}`);
        certs += valid.size;
      }
      return certs;
    }, 'the mesh', 60_000);
  }

  async #trafficAndSummary(started: number): Promise<string> {
    const a = NODES.find((n) => n.upstream);
    if (!a?.upstream) throw new Error('no node with an upstream listener');
    const deps: TrafficDeps = { layout: this.#layout, source: { ...a, upstream: a.upstream }, agents: this.#agents };
    const exchanges: Exchange[] = [];
    const { refusal, l7Denial, oneConnection } = await this.#progress.step(
      `sending traffic: ${LB_REQUESTS + ONE_CONNECTION_REQUESTS + 1} requests ${this.#layout.client.name} → ${this.#layout.service.host}, 1 from ${this.#layout.intruder.name}`,
      async () => {
        for (let k = 0; k < LB_REQUESTS; k++) exchanges.push(await clientRequest(deps, k % 2 === 0 ? 'socks' : 'upstream', `/hello?n=${k + 1}`));
        const bad = exchanges.find((e) => e.status !== 200 || !e.answer);
        if (bad) throw new Error(`${bad.url} answered HTTP ${bad.status}`);
        const oneConnection = await oneConnectionRequests(deps, ONE_CONNECTION_REQUESTS);
        return { refusal: await intruderRequest(deps), l7Denial: await l7DeniedRequest(deps, L7_DENIED_PATH), oneConnection };
      },
      () => {
        const per = this.#layout.web.map((w) => `${w.workload} ${exchanges.filter((e) => e.answer?.workload === w.workload).length}`).join(', ');
        return { status: 'done', notes: [`${exchanges.length} answered (${per}); ${this.#layout.intruder.name} refused; GET ${L7_DENIED_PATH} denied`] };
      },
    );
    const canaryUpstream = a.canaryUpstream;
    if (!canaryUpstream) throw new Error('no node with the canary\'s upstream listener');
    const c = this.#canary;
    await this.#progress.step(
      `canary: ${CANARY_REQUESTS} requests ${this.#layout.client.name} → ${c.host} (HTTPRoute ${c.route}), then ${CANARY_REQUESTS / 2} with ${c.failing} failing`,
      () => canaryTraffic({
        canary: c, upstream: { host: a.address, port: canaryUpstream.port }, clientAddress: this.#layout.client.address,
        metricsUrl: `http://${a.address}:${AGENT_PORTS.metrics}/metrics`, apps: new Map(this.#apps.map((x) => [x.app.workload, x])),
      }, CANARY_REQUESTS, FAIL_EVERY),
      (r) => ({ status: 'done', notes: describeCanary(c, r, a.name) }),
    );
    const showcase = exchanges.find((e) => e.via === 'socks' && e.answer && e.answer.node !== a.name)
      ?? exchanges.find((e) => e.answer && e.answer.node !== a.name) ?? exchanges[0]!;
    return formatSummary({
      style: this.#style,
      now: Date.now(),
      startupMs: performance.now() - started,
      layout: this.#layout,
      nodes: NODES,
      caRoot: String(this.#controller?.logs.find((l) => l.msg === 'controller ready')?.caRoot ?? ''),
      identities: await this.#identities(),
      exchanges,
      showcase,
      refusal,
      l7Denial,
      oneConnection,
      policy: { name: POLICY_NAME, file: POLICY_FILE, l7Name: L7_POLICY_NAME },
      paths: {
        root: ROOT, dir: this.#o.dir, credentials: this.#dirs.credentials, node: process.execPath, ambitctl: ENTRY.ambitctl,
        logs: ['controller', ...NODES.map((n) => n.name), 'ambitctl'].map((f) => join(this.#dirs.logs, `${f}.log`)),
      },
      pids: [
        { name: 'controller', pid: this.#controller?.pid },
        ...NODES.map((n) => ({ name: n.name, pid: this.#agents.get(n.name)?.pid })),
        { name: 'demo', pid: process.pid },
      ],
      exitAfterSummary: this.#o.exitAfterSummary,
    });
  }

  /** Identities with certificates: from each agent's admin /certs, plus the admin identity ambitctl uses. */
  async #identities(): Promise<IdentityRow[]> {
    const rows = new Map<string, { holders: string[]; notAfter: number }>();
    for (const n of NODES) {
      for (const c of (await getJson<CertStatus[]>(`http://${n.address}:${AGENT_PORTS.admin}/certs`)).body) {
        const r = rows.get(c.identity) ?? { holders: [], notAfter: Infinity };
        r.holders.push(n.name);
        r.notAfter = Math.min(r.notAfter, Date.parse(c.notAfter));
        rows.set(c.identity, r);
      }
    }
    try {
      const cert = parseCertificates(readFileSync(join(this.#dirs.credentials, 'cert.pem'), 'utf8'))[0];
      const uri = /URI:(spiffe:\/\/[^,\s]+)/.exec(cert?.subjectAltName ?? '')?.[1];
      if (cert && uri) rows.set(uri, { holders: ['ambitctl (admin)'], notAfter: Date.parse(cert.validTo) });
    } catch {
      // no admin credentials to show
    }
    const rank = (id: string): number => (id.includes('/ns/') ? 0 : id.includes('/ambit/node/') ? 1 : 2);
    return [...rows].map(([identity, r]) => ({ identity, holders: r.holders, notAfter: r.notAfter }))
      .sort((x, y) => rank(x.identity) - rank(y.identity) || x.identity.localeCompare(y.identity));
  }

  /** A long-lived child that exits on its own while the mesh runs stops the demo. */
  #watch(proc: DemoProcess): void {
    void proc.exited.then((e) => {
      if (this.#phase !== 'running') return;
      process.stderr.write(`\n${this.#style.red('error:')} ${proc.name} exited unexpectedly (${describeExit(e)}); see ${this.#shown(proc.logPath)}\n`);
      void this.stop(1, `${proc.name} exited`);
    });
  }

  /** Stops everything the demo started: agents first (they drain), then the controller, then the demo apps. */
  stop(code: number, why: string): Promise<number> {
    this.#stopped ??= (async () => {
      this.#phase = 'stopping';
      this.#progress.interrupt();
      const s = this.#style;
      if (!this.#controller && this.#agents.size === 0 && this.#apps.length === 0) {
        this.#ctlLog?.end();
        this.#done.resolve(code);
        return code; // nothing was started
      }
      this.#say(`\nStopping the demo mesh (${why}) …`);
      const stopOne = async (proc: DemoProcess): Promise<void> => {
        const t = performance.now();
        const e = await proc.stop();
        this.#say(`  ${proc.name} stopped (${describeExit(e)}, ${Math.round(performance.now() - t)} ms)`);
      };
      await Promise.all([...this.#agents.values()].map(stopOne));
      if (this.#controller) await stopOne(this.#controller);
      await Promise.all(this.#apps.map((a) => a.close()));
      if (this.#apps.length > 0) this.#say(`  demo apps closed`);
      await new Promise<void>((r) => (this.#ctlLog ? this.#ctlLog.end(() => r()) : r()));
      const left = await busyEndpoints(this.#endpoints);
      this.#say(left.length === 0
        ? s.green(`Stopped: no demo process or listener is left (${this.#endpoints.length} ports free).`)
        : `${s.yellow('warning:')} still in use after the stop: ${left.map(describeBusy).join('; ')}`);
      this.#done.resolve(code);
      return code;
    })();
    return this.#stopped;
  }

  /** Second Ctrl-C: no more waiting. */
  kill(): void {
    for (const p of [...this.#agents.values(), this.#controller]) if (p?.running) p.child.kill('SIGKILL');
  }

  /** At process exit, whatever still runs is killed: the demo never leaves processes behind. */
  killLeftovers(): void {
    this.kill();
  }
}

async function main(): Promise<void> {
  // Output piped into `head` or a closed terminal must not stop the demo from stopping what it started.
  process.stdout.on('error', () => undefined);
  process.stderr.on('error', () => undefined);
  const opts = demoOptions(process.env, process.stdout);
  let demo: Demo;
  try {
    demo = new Demo(opts);
  } catch (err) {
    process.stderr.write(`error: ${(err as Error).message}\n`);
    process.exit(1);
  }
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (++signals > 1) {
      process.stderr.write(`\n${sig} again: killing the demo's processes now.\n`);
      demo.kill();
      process.exit(130);
    }
    void demo.stop(0, `${sig} received`);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // Whatever still runs when this process exits is killed: the demo never leaves processes behind.
  process.on('exit', () => demo.kill());
  // A stop requested while starting ends the demo even if a startup step is still waiting.
  const code = await Promise.race([demo.run(), demo.finished]);
  process.exit(code);
}

void main();
