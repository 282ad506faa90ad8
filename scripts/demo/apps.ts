/**
 * The demo's applications: small HTTP servers standing in for the "web"
 * workloads, each bound to its workload's own loopback address. They answer
 * every request with JSON naming the instance that answered and the peer
 * address it saw (the local agent, which dialled it after the tunnel).
 */
import { createServer, type Server } from 'node:http';

export interface WebApp {
  readonly workload: string;
  readonly node: string;
  readonly address: string;
  readonly port: number;
}

/** What a web instance answers; the demo client parses it back. */
export interface WebAnswer {
  readonly workload: string;
  readonly node: string;
  readonly listen: string;
  readonly peer: string;
  readonly method: string;
  readonly path: string;
  readonly host: string;
  readonly time: string;
}

export class RunningWebApp {
  readonly app: WebApp;
  readonly server: Server;
  requests = 0;
  /** When set to n > 0, every n-th request is answered 503 (a failing instance, for the retry part of the demo). */
  failEvery = 0;
  /** Requests answered 503 because of failEvery. */
  failed = 0;

  constructor(app: WebApp) {
    this.app = app;
    this.server = createServer((req, res) => {
      this.requests++;
      if (this.failEvery > 0 && this.requests % this.failEvery === 0) {
        this.failed++;
        res.writeHead(503, { 'content-type': 'text/plain' }).end(`${app.workload} is failing this request on purpose\n`);
        return;
      }
      const answer: WebAnswer = {
        workload: app.workload,
        node: app.node,
        listen: `${app.address}:${app.port}`,
        peer: `${req.socket.remoteAddress}:${req.socket.remotePort}`,
        method: req.method ?? '',
        path: req.url ?? '',
        host: req.headers.host ?? '',
        time: new Date().toISOString(),
      };
      const body = `${JSON.stringify(answer)}\n`;
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }).end(body);
    });
    // Keep-alive sockets would hold the server open at shutdown; the demo's clients close after one request anyway.
    this.server.keepAliveTimeout = 1000;
  }

  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.app.port, this.app.address, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      if (!this.server.listening) return resolve();
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }
}

export function parseAnswer(body: string): WebAnswer | undefined {
  try {
    const a = JSON.parse(body) as WebAnswer;
    return typeof a.workload === 'string' ? a : undefined;
  } catch {
    return undefined;
  }
}
