// The "node-h2" path of bench/dataplane.ts: the agent's tunnel transport and
// nothing else. Same HTTP/2 settings and window sizes as the agents
// (agent/proxy/hbone-server.ts), the same relay (agent/proxy/relay.ts), TLS
// 1.3 with client certificates verified against a CA — but no SPIFFE
// identities, no per-workload certificates, no policy, metrics, access log
// or spans. What Node's http2 + tls cost on this machine is the floor any
// agent built on them can reach: the gap between this path and `tunnel` is
// Ambit's own per-connection and per-byte work.
//
// Run as two processes (one per host, like the agents):
//   node bench/dataplane-nodeh2.ts server LISTEN_HOST:PORT UPSTREAM_HOST:PORT CERT KEY CA
//   node bench/dataplane-nodeh2.ts client LISTEN_HOST:PORT SERVER_HOST:PORT CERT KEY CA SERVER_NAME
// (bench/dataplane-peers.ts startNodeH2 starts both and stops them with SIGTERM).
import http2, { type ClientHttp2Session } from 'node:http2';
import { connect, createServer, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { readFileSync } from 'node:fs';
import { HBONE_SESSION_WINDOW, HBONE_SETTINGS } from '../agent/proxy/hbone-server.ts';
import { relay } from '../agent/proxy/relay.ts';
import { tuneGcForRelaying } from '../agent/proxy/gc-tuning.ts';

const NO_COUNT = { leftToRight: (): void => undefined, rightToLeft: (): void => undefined };

function hostPort(s: string): { host: string; port: number } {
  const i = s.lastIndexOf(':');
  return { host: s.slice(0, i), port: Number(s.slice(i + 1)) };
}

function server(listen: string, upstream: string, cert: string, key: string, ca: string): void {
  const up = hostPort(upstream);
  const srv = http2.createSecureServer({
    cert: readFileSync(cert), key: readFileSync(key), ca: readFileSync(ca),
    requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3', ALPNProtocols: ['h2'], allowHTTP1: false, noDelay: true,
    settings: HBONE_SETTINGS, maxSessionMemory: 64, streamResetBurst: 10_000, streamResetRate: 1_000,
  });
  srv.on('session', (s) => {
    s.setLocalWindowSize(HBONE_SESSION_WINDOW);
    s.on('error', () => undefined);
  });
  srv.on('stream', (stream) => {
    stream.on('error', () => undefined);
    const socket: Socket = connect({ ...up, allowHalfOpen: true, noDelay: true });
    socket.once('error', () => {
      if (!stream.headersSent) stream.respond({ ':status': 503 }, { endStream: true });
    });
    socket.once('connect', () => {
      stream.respond({ ':status': 200 });
      void relay(stream, socket, NO_COUNT);
    });
  });
  srv.listen(hostPort(listen).port, hostPort(listen).host);
}

function client(listen: string, serverAt: string, cert: string, key: string, ca: string, serverName: string, authority: string): void {
  const to = hostPort(serverAt);
  const tlsOptions = { ...to, servername: serverName, cert: readFileSync(cert), key: readFileSync(key), ca: readFileSync(ca), minVersion: 'TLSv1.3' as const, ALPNProtocols: ['h2'] };
  let session: ClientHttp2Session | undefined;
  const sessionNow = (): ClientHttp2Session => {
    if (session && !session.closed && !session.destroyed) return session;
    const s = http2.connect(`https://${serverAt}`, {
      settings: HBONE_SETTINGS, maxSessionMemory: 64,
      createConnection: () => {
        const sock = tlsConnect(tlsOptions);
        sock.setNoDelay(true);
        return sock;
      },
    });
    s.on('connect', () => s.setLocalWindowSize(HBONE_SESSION_WINDOW));
    s.on('error', () => undefined);
    session = s;
    return s;
  };
  const srv = createServer({ allowHalfOpen: true, noDelay: true }, (c) => {
    c.on('error', () => undefined);
    c.pause();
    const stream = sessionNow().request({ ':method': 'CONNECT', ':authority': authority }, { endStream: false });
    stream.on('error', () => c.resetAndDestroy());
    stream.once('response', (h) => {
      if (h[':status'] !== 200) return c.resetAndDestroy();
      c.resume();
      void relay(c, stream, NO_COUNT);
    });
  });
  srv.listen(hostPort(listen).port, hostPort(listen).host);
}

// A normal exit on SIGTERM, so that --cpu-prof and the like write their output.
process.on('SIGTERM', () => process.exit(0));
// The agents' GC setting for relaying (agent/proxy/gc-tuning.ts), so the
// baseline differs from them only in what Ambit does per connection.
tuneGcForRelaying();
// AMBIT_BENCH_EXTRA_HEAP_MIB: keep about that much more live JavaScript heap, to see
// how the per-byte cost depends on heap size (it does without the GC setting).
const extraHeap: unknown[] = [];
for (let i = 0; i < Number(process.env.AMBIT_BENCH_EXTRA_HEAP_MIB ?? 0) * 10_000; i++) extraHeap.push({ i, s: `x${i}`, a: [i, i + 1] });
(globalThis as { extraHeap?: unknown }).extraHeap = extraHeap;

const [role, listen, at, cert, key, ca, serverName] = process.argv.slice(2);
if (role === 'server' && listen && at && cert && key && ca) server(listen, at, cert, key, ca);
else if (role === 'client' && listen && at && cert && key && ca && serverName) client(listen, at, cert, key, ca, serverName, 'upstream:0');
else {
  process.stderr.write('usage: dataplane-nodeh2.ts server LISTEN UPSTREAM CERT KEY CA | client LISTEN SERVER CERT KEY CA SERVER_NAME\n');
  process.exit(2);
}
