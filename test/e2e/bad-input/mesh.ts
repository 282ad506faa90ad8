/**
 * Shared set-up for the bad-input tests: a controller and two agents on
 * loopback (node-a holds the client workload, node-b an echo server), plus
 * raw HBONE clients with real certificates from node-a's data dir.
 */
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import http2, { type ClientHttp2Session } from 'node:http2';
import type { Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serverNameFor } from '../../../agent/proxy/hbone-names.ts';
import { agentsReady, ambitctl, eventually, httpGet, hostPortOf, setUp, startAgentPair, startEchoServer, startController, type RunningAgent, type RunningController } from '../harness.ts';

export const TD = 'cluster.local';
export const CLIENT_ID = `spiffe://${TD}/ns/default/sa/client`;
export const WEB_ID = `spiffe://${TD}/ns/default/sa/web`;
export const WEB_PORT = 8080;

export interface Mesh {
  readonly ctl: RunningController;
  readonly a: RunningAgent;
  readonly b: RunningAgent;
  readonly web: Server;
  readonly webAuthority: string;
  readonly clientIp: string;
  stop(): Promise<void>;
}

/** net = "127.0.12.1x" style prefix: controller .{base}, agents .{base+1}/.{base+2}, workloads .{base+3}/.{base+4}. */
export async function startMesh(prefix: string, base: number, name: string): Promise<Mesh> {
  const ip = (n: number): string => `${prefix}.${base + n}`;
  const clientIp = ip(3);
  const webIp = ip(4);
  const root = mkdtempSync(join(tmpdir(), `ambit-e2e-${name}-`));
  return setUp(async (started) => {
    const web = await startEchoServer(webIp, WEB_PORT);
    started(() => web.close());
    const ctl = await startController(join(root, 'ctl'), [], ip(0));
    started(() => ctl.proc.stop());
    const ok = async (args: string[]): Promise<string> => {
      const r = await ambitctl(ctl, args);
      if (r.code !== 0) throw new Error(`ambitctl ${args.join(' ')} failed: ${r.stderr}`);
      return r.stdout;
    };
    await ok(['workload', 'register', '--name', 'web', '--service-account', 'web', '--node', 'node-b', '--address', webIp, '--port', String(WEB_PORT), '--label', 'app=web']);
    await ok(['workload', 'register', '--name', 'client', '--service-account', 'client', '--node', 'node-a', '--address', clientIp]);
    const ta = (await ok(['node', 'token', 'create', '--node', 'node-a'])).trim();
    const tb = (await ok(['node', 'token', 'create', '--node', 'node-b'])).trim();
    const [a, b] = await startAgentPair(started, [
      { node: 'node-a', address: ip(1), controller: ctl.address, dataDir: join(root, 'a'), join: ta },
      { node: 'node-b', address: ip(2), controller: ctl.address, dataDir: join(root, 'b'), join: tb },
    ]);
    await agentsReady([a, b]);
    await eventually(async () => {
      const certs = JSON.parse((await httpGet(hostPortOf(b.admin), '/certs')).body) as { identity: string; state: string }[];
      return certs.some((c) => c.identity === WEB_ID && c.state === 'valid');
    }, 'node-b holds the web certificate');
    await eventually(async () => clientCredentialsFrom(a.dataDir), 'node-a holds the client certificate');
    return {
      ctl, a, b, web, clientIp, webAuthority: `${webIp}:${WEB_PORT}`,
      stop: async () => {
        await a.proc.stop();
        await b.proc.stop();
        await ctl.proc.stop();
        web.close();
      },
    };
  });
}

export function clientCredentialsFrom(dataDir: string): { key: string; cert: string } | undefined {
  const dir = join(dataDir, 'certs');
  let files: string[];
  try {
    files = readdirSync(dir);
  } catch {
    return undefined;
  }
  for (const f of files) {
    try {
      const e = JSON.parse(readFileSync(join(dir, f), 'utf8')) as { uri: string; keyPem: string; chainPem: string };
      if (e.uri === CLIENT_ID) return { key: e.keyPem, cert: e.chainPem };
    } catch {
      // not a certificate entry
    }
  }
  return undefined;
}

export function clientCredentials(m: Mesh): { key: string; cert: string } {
  const c = clientCredentialsFrom(m.a.dataDir);
  if (!c) throw new Error('client certificate not found in node-a data dir');
  return c;
}

/** A TLS/HTTP/2 session to node-b's HBONE port as the client workload, asking for the web identity. */
export function hboneSession(m: Mesh): ClientHttp2Session {
  const session = http2.connect(`https://${m.b.hbone}`, {
    ca: readFileSync(join(m.ctl.dataDir, 'ca/bundle.pem'), 'utf8'),
    ...clientCredentials(m),
    servername: serverNameFor(WEB_ID),
    minVersion: 'TLSv1.3',
    checkServerIdentity: () => undefined,
  });
  session.on('error', () => undefined);
  return session;
}

export type Outcome = { status: number } | { reset: string };

/** One request on a session: its :status, or how the stream ended without one. */
export function request(session: ClientHttp2Session, headers: http2.OutgoingHttpHeaders, timeoutMs = 5000): Promise<Outcome> {
  return new Promise((resolve) => {
    let req: http2.ClientHttp2Stream;
    try {
      req = session.request(headers, { endStream: false });
    } catch (e) {
      resolve({ reset: `client refused to send: ${(e as Error).message}` });
      return;
    }
    const timer = setTimeout(() => finish({ reset: 'timeout' }), timeoutMs);
    const finish = (o: Outcome): void => {
      clearTimeout(timer);
      if (!req.destroyed) req.close();
      resolve(o);
    };
    req.on('response', (h) => finish({ status: Number(h[':status']) }));
    req.on('error', (e) => finish({ reset: e.message }));
    req.on('close', () => finish({ reset: `closed rst=${req.rstCode}` }));
  });
}

/** A normal tunnel: CONNECT to the web workload, echo a few bytes. */
export async function tunnelWorks(m: Mesh): Promise<boolean> {
  const session = hboneSession(m);
  try {
    return await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 5000);
      const req = session.request({ ':method': 'CONNECT', ':authority': m.webAuthority });
      req.on('error', () => resolve(false));
      req.on('response', (h) => {
        if (Number(h[':status']) !== 200) return resolve(false);
        let got = '';
        req.setEncoding('utf8').on('data', (d: string) => {
          got += d;
          if (got === 'ping') {
            clearTimeout(timer);
            req.close();
            resolve(true);
          }
        });
        req.write('ping');
      });
    });
  } finally {
    session.destroy();
  }
}

export async function liveConnections(agent: RunningAgent): Promise<number> {
  return (JSON.parse((await httpGet(hostPortOf(agent.admin), '/config_dump')).body) as { connections: number }).connections;
}

export function fdCount(agent: RunningAgent): number {
  return readdirSync(`/proc/${agent.proc.child.pid}/fd`).length;
}

export function alive(agent: { proc: { child: { exitCode: number | null; signalCode: string | null } } }): boolean {
  return agent.proc.child.exitCode === null && agent.proc.child.signalCode === null;
}

/** HPACK: a literal header field without indexing, new name, no Huffman (RFC 7541 §6.2.2). */
function hpackInt(n: number, prefixBits: number, first: number): number[] {
  const max = (1 << prefixBits) - 1;
  if (n < max) return [first | n];
  const out = [first | max];
  n -= max;
  while (n >= 128) {
    out.push((n % 128) + 128);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
}
export function hpackLiteral(headers: readonly (readonly [string, string])[]): Buffer {
  const parts: Buffer[] = [];
  for (const [k, v] of headers) {
    const kb = Buffer.from(k, 'latin1');
    const vb = Buffer.from(v, 'latin1');
    parts.push(Buffer.from([0x00]), Buffer.from(hpackInt(kb.length, 7, 0)), kb, Buffer.from(hpackInt(vb.length, 7, 0)), vb);
  }
  return Buffer.concat(parts);
}
export function frame(type: number, flags: number, streamId: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(streamId & 0x7fffffff, 5);
  return Buffer.concat([h, payload]);
}
export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
export const FRAME = { DATA: 0, HEADERS: 1, RST_STREAM: 3, SETTINGS: 4, PING: 6, GOAWAY: 7, WINDOW_UPDATE: 8 } as const;
export function headersFrame(streamId: number, headers: readonly (readonly [string, string])[], endStream = false): Buffer {
  return frame(FRAME.HEADERS, 0x4 | (endStream ? 0x1 : 0), streamId, hpackLiteral(headers));
}
export function rstFrame(streamId: number, code = 8): Buffer {
  const p = Buffer.alloc(4);
  p.writeUInt32BE(code);
  return frame(FRAME.RST_STREAM, 0, streamId, p);
}

export interface RawFrame { type: number; flags: number; streamId: number; payload: Buffer }

/** Splits a byte stream into HTTP/2 frames as they arrive. */
export function frameReader(onFrame: (f: RawFrame) => void): (d: Buffer) => void {
  let buf = Buffer.alloc(0);
  return (d) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 9) {
      const len = buf.readUIntBE(0, 3);
      if (buf.length < 9 + len) break;
      onFrame({ type: buf[3]!, flags: buf[4]!, streamId: buf.readUInt32BE(5) & 0x7fffffff, payload: buf.subarray(9, 9 + len) });
      buf = buf.subarray(9 + len);
    }
  };
}
