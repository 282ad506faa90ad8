import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { HostPort } from './config-parse.ts';
import { ConnectionAdmission, type AdmissionLimits } from './connection-admission.ts';

export type Route = (req: IncomingMessage, res: ServerResponse) => void | Promise<void>;

/**
 * Connection limits of an operational endpoint (docs/reliability.md,
 * "Connection floods"): a scraper or probe needs one connection at a time.
 * A connection lives `proveWithinMs` at most, unless a request is in flight
 * (then until it ends); past `maxConnections`, the oldest idle one makes way
 * for a new one, so a flood cannot keep a readiness probe out.
 */
export const HTTP_ENDPOINT_LIMITS: AdmissionLimits = { maxConnections: 64, maxPendingPerSource: 16, proveWithinMs: 10_000 };

/**
 * A small plain-HTTP server for operational endpoints (/metrics, readiness,
 * agent admin). Routes are exact paths; anything else is 404 and any method
 * but GET/HEAD (unless a route says so) is 405. Timeouts are short: these
 * endpoints answer in milliseconds and must not be held open by slow clients.
 */
export class HttpEndpoint {
  readonly #server: Server;
  readonly #routes: ReadonlyMap<string, { handler: Route; methods: readonly string[] }>;
  readonly #admission: ConnectionAdmission;

  constructor(routes: Record<string, Route | { handler: Route; methods: readonly string[] }>, limits: AdmissionLimits = HTTP_ENDPOINT_LIMITS) {
    const m = new Map<string, { handler: Route; methods: readonly string[] }>();
    for (const [path, r] of Object.entries(routes)) m.set(path, typeof r === 'function' ? { handler: r, methods: ['GET', 'HEAD'] } : r);
    this.#routes = m;
    // Node checks the request and headers timeouts every connectionsCheckingInterval (30 s by default), so a
    // connection that never sends a request would outlive headersTimeout by up to that much.
    this.#server = createServer({ requestTimeout: 10_000, headersTimeout: 5_000, keepAliveTimeout: 5_000, connectionsCheckingInterval: 1_000 }, (req, res) => this.#handle(req, res));
    this.#admission = new ConnectionAdmission(limits);
    this.#server.on('connection', (socket: Socket) => {
      this.#admission.admit(socket);
    });
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    res.once('close', this.#admission.callStarted(req.socket.remoteAddress, req.socket.remotePort));
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const route = this.#routes.get(path);
    if (!route) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end(`not found: ${path}\n`);
      return;
    }
    if (!route.methods.includes(req.method ?? 'GET')) {
      res.writeHead(405, { 'content-type': 'text/plain', allow: route.methods.join(', ') }).end('method not allowed\n');
      return;
    }
    Promise.resolve(route.handler(req, res)).catch((err: unknown) => {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(`error: ${(err as Error).message}\n`);
    });
  }

  listen(at: HostPort): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(at.port, at.host, () => {
        this.#server.off('error', reject);
        resolve(this.#server.address() as AddressInfo);
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
  }
}
