// The comparison peers of bench/dataplane.ts — a stunnel pair, an nginx
// stream TLS pair and an haproxy TCP-mode pair, each a client-side proxy (plaintext in, TLS 1.3 with a
// client certificate out) and a server-side proxy (TLS in, verifies the
// client certificate, plaintext to the server) — plus the child-process
// bookkeeping the bench uses to stop everything it started.
import { spawn, spawnSync, execFileSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { join } from 'node:path';

/** Every process the bench starts, so that all of them can be killed on any exit path. */
export class Children {
  readonly #all = new Set<ChildProcess>();

  spawn(cmd: string, args: readonly string[], opts: SpawnOptions = {}): TrackedChild {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    this.#all.add(child);
    child.once('exit', () => this.#all.delete(child));
    return new TrackedChild(child);
  }

  /** Tracks a process started elsewhere (the harness's agents and controller). */
  track(child: ChildProcess): void {
    if (child.exitCode !== null || child.signalCode !== null) return;
    this.#all.add(child);
    child.once('exit', () => this.#all.delete(child));
  }

  /**
   * Synchronous, for process.on('exit'): SIGKILL whatever is still running —
   * the tracked children and any other direct child of this process (an
   * agent whose start timed out in the harness was never handed to track()).
   */
  killAllNow(): void {
    for (const c of this.#all) {
      try {
        c.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
    for (const pid of childPidsOf(process.pid)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
}

/** PIDs whose parent is `ppid` (from /proc/<pid>/stat); empty where /proc is not readable. */
export function childPidsOf(ppid: number): number[] {
  const out: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return out;
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      // Field 4 (ppid) follows the ") state " part; the command name may contain spaces.
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(rest[1]) === ppid) out.push(Number(e));
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

export class TrackedChild {
  readonly child: ChildProcess;
  /** The last few KiB of stderr and stdout, for error messages. */
  tail = '';
  readonly exited: Promise<void>;

  constructor(child: ChildProcess) {
    this.child = child;
    const keep = (d: Buffer | string): void => {
      this.tail = (this.tail + d.toString()).slice(-4000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    this.exited = new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve();
      else child.once('exit', () => resolve());
    });
  }

  get pid(): number {
    return this.child.pid ?? 0;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  async stop(timeoutMs = 5_000): Promise<void> {
    if (!this.running) return;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    await this.exited;
    clearTimeout(t);
  }
}

export interface HostPort {
  readonly host: string;
  readonly port: number;
}

/** A port free on `host` right now (the proxies' configuration files need fixed ports). */
export function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

/** Resolves once something accepts TCP connections at host:port; rejects after timeoutMs or when `alive` turns false. */
export async function waitListening(at: HostPort, timeoutMs: number, alive: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ host: at.host, port: at.port });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (!alive()) throw new Error('process exited');
    if (Date.now() > deadline) throw new Error(`nothing listens at ${at.host}:${at.port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export function which(cmd: string): string | undefined {
  for (const dir of ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin']) {
    const p = join(dir, cmd);
    if (existsSync(p)) return p;
  }
  return undefined;
}

export interface PeerCerts {
  readonly ca: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
  /** The name in the server certificate that the client-side proxy checks. */
  readonly serverName: string;
}

/**
 * A throw-away CA and two leaf certificates (ECDSA P-256, like Ambit's
 * workload certificates) made with the openssl CLI in `dir`.
 */
export function makePeerCerts(dir: string, openssl: string): PeerCerts {
  const run = (args: string[]): void => {
    execFileSync(openssl, args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  };
  const serverName = 'server.bench.test';
  run(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=ambit-bench-ca',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  for (const [name, ext] of [['server', `subjectAltName=DNS:${serverName}\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n`], ['client', 'subjectAltName=DNS:client.bench.test\nextendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n']] as const) {
    writeFileSync(join(dir, `${name}.ext`), ext);
    run(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`]);
    run(['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', '-extfile', `${name}.ext`]);
  }
  return {
    ca: join(dir, 'ca.pem'),
    serverCert: join(dir, 'server.pem'),
    serverKey: join(dir, 'server.key'),
    clientCert: join(dir, 'client.pem'),
    clientKey: join(dir, 'client.key'),
    serverName,
  };
}

/** A running proxy pair: connect to `entry`; `procs` are the proxy processes whose CPU and RSS are counted. */
export interface ProxyPair {
  readonly entry: HostPort;
  readonly procs: readonly { readonly label: string; readonly pid: number }[];
  stop(): Promise<void>;
}

export interface PairAddresses {
  /** Where the client-side proxy listens. */
  readonly clientSide: string;
  /** Where the server-side proxy listens (TLS). */
  readonly serverSide: string;
  /** The final destination (the bench server). */
  readonly upstream: HostPort;
}

export async function startPair(what: string, start: (side: 'client' | 'server') => TrackedChild, entry: HostPort, tls: HostPort): Promise<ProxyPair> {
  const server = start('server');
  let client: TrackedChild | undefined;
  try {
    await waitListening(tls, 10_000, () => server.running).catch((err: Error) => {
      throw new Error(`${what} server side did not start: ${err.message}\n${server.tail}`);
    });
    client = start('client');
    const c = client;
    await waitListening(entry, 10_000, () => c.running).catch((err: Error) => {
      throw new Error(`${what} client side did not start: ${err.message}\n${c.tail}`);
    });
  } catch (err) {
    await Promise.all([server.stop(), client?.stop()]);
    throw err;
  }
  const cl = client;
  return {
    entry,
    procs: [{ label: `${what}-client`, pid: cl.pid }, { label: `${what}-server`, pid: server.pid }],
    stop: async () => {
      await Promise.all([cl.stop(), server.stop()]);
    },
  };
}

/**
 * stunnel client → TLS 1.3 (client certificate, chain and name verified) →
 * stunnel server. stunnel's defaults otherwise (session cache, threads).
 */
export async function startStunnel(children: Children, stunnel: string, dir: string, certs: PeerCerts, a: PairAddresses): Promise<ProxyPair> {
  const entry = { host: a.clientSide, port: await freePort(a.clientSide) };
  const tls = { host: a.serverSide, port: await freePort(a.serverSide) };
  const common = ['foreground = yes', 'pid =', 'syslog = no', 'debug = 3', ''];
  const sockopts = ['socket = l:TCP_NODELAY=1', 'socket = r:TCP_NODELAY=1', 'sslVersionMin = TLSv1.3', 'sslVersionMax = TLSv1.3'];
  writeFileSync(join(dir, 'stunnel-server.conf'), [...common, '[bench]', `accept = ${tls.host}:${tls.port}`, `connect = ${a.upstream.host}:${a.upstream.port}`,
    `cert = ${certs.serverCert}`, `key = ${certs.serverKey}`, `CAfile = ${certs.ca}`, 'verifyChain = yes', 'requireCert = yes', ...sockopts, ''].join('\n'));
  writeFileSync(join(dir, 'stunnel-client.conf'), [...common, '[bench]', 'client = yes', `accept = ${entry.host}:${entry.port}`, `connect = ${tls.host}:${tls.port}`,
    `cert = ${certs.clientCert}`, `key = ${certs.clientKey}`, `CAfile = ${certs.ca}`, 'verifyChain = yes', `checkHost = ${certs.serverName}`, `sni = ${certs.serverName}`, ...sockopts, ''].join('\n'));
  return startPair('stunnel', (side) => children.spawn(stunnel, [join(dir, `stunnel-${side}.conf`)], { cwd: dir }), entry, tls);
}

/**
 * The rust-h2 baseline (bench/native-h2): the same transport in tokio + h2 +
 * rustls, one thread per side. `binary` is the built executable
 * (bench/native-h2/build.sh).
 */
export async function startRustH2(children: Children, binary: string, certs: PeerCerts, a: PairAddresses): Promise<ProxyPair> {
  const entry = { host: a.clientSide, port: await freePort(a.clientSide) };
  const tls = { host: a.serverSide, port: await freePort(a.serverSide) };
  const at = (h: HostPort): string => `${h.host}:${h.port}`;
  return startPair('rust-h2', (side) => side === 'server'
    ? children.spawn(binary, ['server', at(tls), at(a.upstream), certs.serverCert, certs.serverKey, certs.ca])
    : children.spawn(binary, ['client', at(entry), at(tls), certs.clientCert, certs.clientKey, certs.ca, certs.serverName]), entry, tls);
}

/** Why nginx cannot be a peer here (undefined: it can), and the load_module line it needs. */
export function nginxStreamSupport(nginx: string): { missing?: string; loadModule?: string } {
  // nginx -V prints its build configuration on stderr.
  const r = spawnSync(nginx, ['-V'], { encoding: 'utf8', timeout: 10_000 });
  const v = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  if (!v.includes('configure arguments')) return { missing: `cannot run ${nginx} -V${r.error ? `: ${r.error.message}` : ''}` };
  if (!/--with-stream(=dynamic)?(\s|$)/.test(v)) return { missing: 'nginx was built without the stream module (--with-stream)' };
  if (!/--with-stream_ssl_module/.test(v)) return { missing: 'nginx was built without --with-stream_ssl_module' };
  if (/--with-stream=dynamic/.test(v)) {
    const modules = /--modules-path=(\S+)/.exec(v)?.[1] ?? '/usr/lib/nginx/modules';
    const so = join(modules, 'ngx_stream_module.so');
    if (!existsSync(so)) return { missing: `nginx has the stream module only as a dynamic module and ${so} is not installed (Debian: apt-get install libnginx-mod-stream)` };
    return { loadModule: so };
  }
  return {};
}

/**
 * nginx stream client (proxy_ssl, client certificate, verifies the server)
 * → TLS 1.3 → nginx stream server (ssl_verify_client on). One process each
 * (master_process off, one worker's worth), as the agents are one each.
 */
export async function startNginx(children: Children, nginx: string, loadModule: string | undefined, dir: string, certs: PeerCerts, a: PairAddresses): Promise<ProxyPair> {
  const entry = { host: a.clientSide, port: await freePort(a.clientSide) };
  const tls = { host: a.serverSide, port: await freePort(a.serverSide) };
  const conf = (side: 'client' | 'server', server: string[]): string =>
    [
      ...(loadModule ? [`load_module ${loadModule};`] : []),
      'daemon off;',
      'master_process off;',
      'worker_processes 1;',
      `pid ${join(dir, `nginx-${side}.pid`)};`,
      'error_log stderr error;',
      'events { worker_connections 8192; }',
      'stream {',
      '  server {',
      ...server.map((l) => `    ${l}`),
      '  }',
      '}',
      '',
    ].join('\n');
  writeFileSync(join(dir, 'nginx-server.conf'), conf('server', [
    `listen ${tls.host}:${tls.port} ssl backlog=1024;`,
    'ssl_protocols TLSv1.3;',
    `ssl_certificate ${certs.serverCert};`,
    `ssl_certificate_key ${certs.serverKey};`,
    `ssl_client_certificate ${certs.ca};`,
    'ssl_verify_client on;',
    'ssl_session_cache shared:bench:4m;',
    'tcp_nodelay on;',
    'proxy_half_close on;',
    `proxy_pass ${a.upstream.host}:${a.upstream.port};`,
  ]));
  writeFileSync(join(dir, 'nginx-client.conf'), conf('client', [
    `listen ${entry.host}:${entry.port} backlog=1024;`,
    'tcp_nodelay on;',
    'proxy_half_close on;',
    `proxy_pass ${tls.host}:${tls.port};`,
    'proxy_ssl on;',
    'proxy_ssl_protocols TLSv1.3;',
    `proxy_ssl_certificate ${certs.clientCert};`,
    `proxy_ssl_certificate_key ${certs.clientKey};`,
    `proxy_ssl_trusted_certificate ${certs.ca};`,
    'proxy_ssl_verify on;',
    `proxy_ssl_name ${certs.serverName};`,
    'proxy_ssl_server_name on;',
    'proxy_ssl_session_reuse on;',
  ]));
  return startPair('nginx', (side) => children.spawn(nginx, ['-p', dir, '-e', 'stderr', '-c', join(dir, `nginx-${side}.conf`)], { cwd: dir }), entry, tls);
}

/**
 * haproxy client (mode tcp, `ssl` towards the server with a client
 * certificate, verifying the server's chain and name) → TLS 1.3 → haproxy
 * server (`ssl ... verify required`) → server. One process and one thread
 * per side (nbthread 1), as the other peers; haproxy sets TCP_NODELAY on
 * every socket and reuses TLS sessions towards its servers by default.
 */
export async function startHaproxy(children: Children, haproxy: string, dir: string, certs: PeerCerts, a: PairAddresses): Promise<ProxyPair> {
  const entry = { host: a.clientSide, port: await freePort(a.clientSide) };
  const tls = { host: a.serverSide, port: await freePort(a.serverSide) };
  // haproxy wants certificate and key in one PEM file.
  const combined = (cert: string, key: string, name: string): string => {
    const path = join(dir, `haproxy-${name}.pem`);
    writeFileSync(path, readFileSync(cert, 'utf8') + readFileSync(key, 'utf8'), { mode: 0o600 });
    return path;
  };
  const conf = (frontend: string[], backend: string[]): string =>
    [
      'global',
      '  nbthread 1',
      '  maxconn 8192',
      '  log stderr format raw local0 err',
      'defaults',
      '  mode tcp',
      '  log global',
      '  timeout connect 5s',
      '  timeout client 120s',
      '  timeout server 120s',
      'frontend in',
      ...frontend.map((l) => `  ${l}`),
      '  default_backend out',
      'backend out',
      ...backend.map((l) => `  ${l}`),
      '',
    ].join('\n');
  writeFileSync(join(dir, 'haproxy-server.cfg'), conf(
    [`bind ${tls.host}:${tls.port} ssl crt ${combined(certs.serverCert, certs.serverKey, 'server')} ca-file ${certs.ca} verify required ssl-min-ver TLSv1.3`],
    [`server up ${a.upstream.host}:${a.upstream.port}`],
  ));
  writeFileSync(join(dir, 'haproxy-client.cfg'), conf(
    [`bind ${entry.host}:${entry.port}`],
    [`server tls ${tls.host}:${tls.port} ssl crt ${combined(certs.clientCert, certs.clientKey, 'client')} ca-file ${certs.ca} verify required verifyhost ${certs.serverName} sni str(${certs.serverName}) ssl-min-ver TLSv1.3`],
  ));
  // -db: stay in the foreground, no daemon or master process.
  return startPair('haproxy', (side) => children.spawn(haproxy, ['-db', '-f', join(dir, `haproxy-${side}.cfg`)], { cwd: dir }), entry, tls);
}

/** utime+stime of a process (all its threads), in seconds; 0 when it is gone. */
export function cpuSecondsOf(pid: number, clockTicks: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may contain spaces) start at ") ".
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    return (Number(rest[11]) + Number(rest[12])) / clockTicks;
  } catch {
    return 0;
  }
}

/** VmRSS and VmHWM of a process in MiB (NaN when it is gone). */
export function memoryOf(pid: number): { rssMiB: number; hwmMiB: number } {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kib = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+)\\s+kB`, 'm').exec(status)?.[1] ?? Number.NaN);
    return { rssMiB: kib('VmRSS') / 1024, hwmMiB: kib('VmHWM') / 1024 };
  } catch {
    return { rssMiB: Number.NaN, hwmMiB: Number.NaN };
  }
}

export function clockTicksPerSecond(): number {
  try {
    const n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return n > 0 ? n : 100;
  } catch {
    return 100;
  }
}
