/**
 * The applications and clients the L7 end-to-end tests run: real node:http
 * and @grpc/grpc-js servers bound to a workload's address, an HTTP/1.1
 * client that reaches a service through an agent's upstream listener from
 * the client workload's address, and one unary gRPC call framed by hand
 * over node:http2 (so that the test, not a gRPC client library, decides
 * what is sent and what counts as an answer: no client-side retries).
 */
import { once } from 'node:events';
import http, { type IncomingMessage } from 'node:http';
import type http2 from 'node:http2';
import type { Socket } from 'node:net';
import * as grpc from '@grpc/grpc-js';

/** An HTTP/1.1 server; a request with `Upgrade: echo` is answered 101, then its bytes are echoed back. */
export async function httpServer(host: string, port: number, handle: (req: IncomingMessage, res: http.ServerResponse) => void): Promise<http.Server> {
  const s = http.createServer(handle);
  s.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n');
    if (head.length > 0) socket.write(head);
    socket.pipe(socket);
  });
  s.listen(port, host);
  await once(s, 'listening');
  return s;
}

const unary = (path: string) => ({
  path, requestStream: false, responseStream: false,
  requestSerialize: (b: Buffer): Buffer => b, requestDeserialize: (b: Buffer): Buffer => b,
  responseSerialize: (b: Buffer): Buffer => b, responseDeserialize: (b: Buffer): Buffer => b,
} as const);

/** The echo service: two unary methods (so that routes can tell them apart), raw bytes both ways. */
export const ECHO = { say: unary('/test.Echo/Say'), shout: unary('/test.Echo/Shout') } as const;

/**
 * A grpc-js server of the echo service on host:port. By default every call
 * answers `<name>:<request>` and a request "fail" ends with NOT_FOUND;
 * `answer` replaces that (null: OK with the default body).
 */
export async function grpcServer(host: string, port: number, name: string, answer?: (request: string) => grpc.ServiceError | null): Promise<grpc.Server> {
  const s = new grpc.Server();
  const handle = (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>): void => {
    const request = call.request.toString();
    const err = answer ? answer(request) : request === 'fail' ? { code: grpc.status.NOT_FOUND, details: 'no such thing' } as grpc.ServiceError : null;
    if (err) cb(err);
    else cb(null, Buffer.from(`${name}:${request}`));
  };
  s.addService(ECHO, { say: handle, shout: handle });
  await new Promise<void>((resolve, reject) => s.bindAsync(`${host}:${port}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())));
  return s;
}

export interface GrpcAnswer {
  readonly status: number;
  readonly grpcStatus: string;
  readonly body: string;
  /** x-ambit-response-flags, when the data plane answered itself. */
  readonly flags: string;
}

/** One unary call (`path`, default the echo service's Say) with node:http2: its answer and grpc-status. */
export function grpcCall(session: http2.ClientHttp2Session, authority: string, message: string, path: string = ECHO.say.path): Promise<GrpcAnswer> {
  return new Promise((resolve, reject) => {
    const payload = Buffer.from(message);
    const frame = Buffer.alloc(5 + payload.length);
    frame.writeUInt32BE(payload.length, 1);
    payload.copy(frame, 5);
    const s = session.request({ ':method': 'POST', ':path': path, ':authority': authority, 'content-type': 'application/grpc', te: 'trailers' });
    let status = 0;
    let grpcStatus = '';
    let flags = '';
    const chunks: Buffer[] = [];
    s.on('response', (h) => {
      status = Number(h[':status']);
      if (h['grpc-status'] !== undefined) grpcStatus = String(h['grpc-status']);
      flags = String(h['x-ambit-response-flags'] ?? '');
    });
    s.on('trailers', (h) => (grpcStatus = String(h['grpc-status'])));
    s.on('data', (d: Buffer) => chunks.push(d));
    s.on('end', () => {
      const all = Buffer.concat(chunks);
      resolve({ status, grpcStatus, flags, body: all.length >= 5 ? all.subarray(5, 5 + all.readUInt32BE(1)).toString() : '' });
    });
    s.on('error', reject);
    s.end(frame);
  });
}

export interface HttpAnswer {
  readonly status: number;
  readonly body: string;
  readonly headers: http.IncomingHttpHeaders;
  /** x-ambit-response-flags, when the data plane answered itself. */
  readonly flags: string;
}

/**
 * One HTTP/1.1 request to `host:port` (an agent's upstream listener) through
 * `agent` (whose localAddress is the client workload's), with `Host: authority`.
 */
export function request(agent: http.Agent, to: { host: string; port: number }, authority: string, o: { path?: string; method?: string; headers?: http.OutgoingHttpHeaders; body?: string; timeoutMs?: number } = {}): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: to.host, port: to.port, path: o.path ?? '/', method: o.method ?? 'GET', agent, headers: { host: authority, ...o.headers } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers, flags: String(res.headers['x-ambit-response-flags'] ?? '') }));
    });
    req.on('error', reject);
    req.setTimeout(o.timeoutMs ?? 10_000, () => req.destroy(new Error('request timed out')));
    req.end(o.body);
  });
}

/** How many times each value occurs. */
export const tally = (names: readonly string[]): Record<string, number> => names.reduce<Record<string, number>>((m, n) => ({ ...m, [n]: (m[n] ?? 0) + 1 }), {});
