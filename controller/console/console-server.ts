import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { isIP, type AddressInfo, type Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { AmbitError } from '../../shared/errors.ts';
import type { HostPort } from '../../shared/config-parse.ts';
import type { Logger } from '../../shared/logger.ts';
import { TLS_MIN_VERSION } from '../../shared/tls.ts';
import { ConnectionAdmission } from '../../shared/connection-admission.ts';
import { HTTP_ENDPOINT_LIMITS } from '../../shared/http-endpoint.ts';
import type { ServingCertificates } from '../api/peer.ts';
import type { ConsoleAssets } from './console-assets.ts';
import type { ConsoleLogins } from './console-logins.ts';
import { denialsView, graphView, nodesView, policiesView, statusView, workloadsView, type ViewDeps } from './console-views.ts';

/** The session cookie. __Host-: only ever set by this origin over HTTPS, for every path, never for a parent domain. */
export const SESSION_COOKIE = '__Host-ambit-console';
const MAX_LOGIN_BODY = 4096;

export interface ConsoleServerDeps {
  readonly views: ViewDeps;
  readonly logins: ConsoleLogins;
  readonly assets: ConsoleAssets;
  readonly serving: ServingCertificates;
  /** The admin identity (URI) of a verified client certificate, or undefined (none, or not an admin's). */
  readonly adminOf: (leafDer: Buffer) => string | undefined;
  /** Host names (besides IP literals and localhost) a request's Host header may carry. */
  readonly hostNames: readonly string[];
  readonly logger: Logger;
}

const API: Record<string, (d: ViewDeps) => unknown> = {
  '/api/status': statusView,
  '/api/nodes': nodesView,
  '/api/workloads': workloadsView,
  '/api/policies': policiesView,
  '/api/graph': graphView,
  '/api/denials': denialsView,
};

/**
 * The controller's read-only web console (docs/console.md). HTTPS (TLS 1.3)
 * with the controller's serving certificate. Who may see anything: a client
 * presenting the admin certificate (mTLS), or a browser holding a session
 * from a single-use login token (ambitctl console). Everything else gets
 * 401 and no data: no version, no names, not even whether a path exists.
 * The only requests that change anything are POST /login and POST /logout.
 */
export class ConsoleServer {
  readonly #d: ConsoleServerDeps;
  readonly #server: Server;
  readonly #csp: string;
  readonly #unwatch: () => void;
  /** The operational endpoints' limits (docs/reliability.md): a flood of idle connections cannot keep the admin out. */
  readonly #admission = new ConnectionAdmission(HTTP_ENDPOINT_LIMITS);

  constructor(d: ConsoleServerDeps) {
    this.#d = d;
    // No remote source anywhere; the one inline script is the import map, allowed by its hash.
    this.#csp = [
      "default-src 'none'", `script-src 'self' ${d.assets.importMapHash}`, "style-src 'self'", "img-src 'self'", "connect-src 'self'",
      "form-action 'self'", "base-uri 'none'", "frame-ancestors 'none'",
    ].join('; ');
    this.#server = createServer({
      minVersion: TLS_MIN_VERSION,
      // Asked for, not required: a browser without the admin certificate logs in with a token instead.
      requestCert: true,
      rejectUnauthorized: false,
      handshakeTimeout: 10_000,
      requestTimeout: 10_000,
      headersTimeout: 5_000,
      keepAliveTimeout: 5_000,
      connectionsCheckingInterval: 1_000,
    }, (req, res) => {
      res.once('close', this.#admission.callStarted(req.socket.remoteAddress, req.socket.remotePort));
      this.#handle(req, res);
    });
    this.#server.on('connection', (socket: Socket) => {
      this.#admission.admit(socket);
    });
    this.#unwatch = d.serving.watch((o) => this.#server.setSecureContext({ cert: o.cert, key: o.key, ca: o.ca, minVersion: TLS_MIN_VERSION }));
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
    this.#unwatch();
    return new Promise((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
  }

  #headers(res: ServerResponse, type?: string): void {
    res.setHeader('content-security-policy', this.#csp);
    res.setHeader('x-frame-options', 'DENY');
    res.setHeader('x-content-type-options', 'nosniff');
    res.setHeader('referrer-policy', 'no-referrer');
    res.setHeader('cross-origin-opener-policy', 'same-origin');
    res.setHeader('cross-origin-resource-policy', 'same-origin');
    res.setHeader('permissions-policy', 'camera=(), microphone=(), geolocation=()');
    res.setHeader('strict-transport-security', 'max-age=31536000');
    res.setHeader('cache-control', 'no-store');
    if (type) res.setHeader('content-type', type);
  }

  #send(req: IncomingMessage, res: ServerResponse, status: number, type: string, body: Buffer | string, extra: Record<string, string | string[]> = {}): void {
    this.#headers(res, type);
    res.writeHead(status, extra);
    res.end(req.method === 'HEAD' ? undefined : body);
  }

  /** 401 with nothing in it but the login form (for a page) or one word (for anything else). */
  #unauthorized(req: IncomingMessage, res: ServerResponse, path: string, error?: string): void {
    if (req.method === 'GET' && !path.startsWith('/api/') && !path.startsWith('/assets/') && !path.startsWith('/vendor/')) {
      this.#send(req, res, 401, 'text/html; charset=utf-8', this.#d.assets.login(error));
    } else {
      this.#send(req, res, 401, 'application/json; charset=utf-8', '{"error":"unauthorized"}');
    }
  }

  /** Whom this request is from: the admin certificate, or a live session cookie. */
  #who(req: IncomingMessage): string | undefined {
    const cert = (req.socket as TLSSocket).getPeerCertificate?.();
    if (cert?.raw) {
      const admin = this.#d.adminOf(cert.raw);
      if (admin) return admin;
    }
    return this.#d.logins.session(sessionOf(req));
  }

  #allowedHost(req: IncomingMessage): boolean {
    // A page on another name that resolves here (DNS rebinding) must not reach the console as if it were it.
    const host = (req.headers.host ?? '').replace(/:\d+$/, '').replace(/^\[(.*)\]$/, '$1').toLowerCase();
    return host !== '' && (isIP(host) !== 0 || host === 'localhost' || this.#d.hostNames.includes(host));
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const path = (req.url ?? '/').split(/[?#]/)[0] ?? '/';
    const method = req.method ?? 'GET';
    if (!this.#allowedHost(req)) {
      this.#send(req, res, 421, 'text/plain; charset=utf-8', 'misdirected request\n');
      return;
    }
    if (path === '/login') {
      if (method === 'POST') {
        return void this.#login(req, res).catch((err: unknown) => {
          this.#d.logger.error({ err }, 'console login failed');
          if (!res.headersSent) this.#send(req, res, 500, 'text/plain; charset=utf-8', 'internal error\n');
        });
      }
      if (method === 'GET' || method === 'HEAD') {
        // Already signed in (or holding the admin certificate): straight to the console.
        if (this.#who(req)) return this.#send(req, res, 303, 'text/plain; charset=utf-8', '', { location: '/' });
        return this.#send(req, res, 200, 'text/html; charset=utf-8', this.#d.assets.login());
      }
    }
    if (path === '/logout' && method === 'POST') {
      if (!this.#sameOrigin(req)) return this.#send(req, res, 403, 'text/plain; charset=utf-8', 'cross-origin request refused\n');
      const session = sessionOf(req);
      const who = this.#d.logins.session(session);
      this.#d.logins.logout(session);
      if (who) this.#d.logger.info({ who, remote: req.socket.remoteAddress }, 'console logout');
      return this.#send(req, res, 303, 'text/plain; charset=utf-8', '', { location: '/login', 'set-cookie': `${SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0` });
    }
    const asset = this.#d.assets.files.get(path);
    if (asset && this.#d.assets.public.has(path) && (method === 'GET' || method === 'HEAD')) {
      return this.#send(req, res, 200, asset.type, asset.body);
    }
    const who = this.#who(req);
    if (!who) return this.#unauthorized(req, res, path);
    if (method !== 'GET' && method !== 'HEAD') {
      return this.#send(req, res, 405, 'text/plain; charset=utf-8', 'the console is read-only\n', { allow: 'GET, HEAD' });
    }
    if (path === '/' || path === '/index.html') return this.#send(req, res, 200, 'text/html; charset=utf-8', this.#d.assets.index);
    if (asset) return this.#send(req, res, 200, asset.type, asset.body);
    const view = API[path];
    if (!view) return this.#send(req, res, 404, 'text/plain; charset=utf-8', 'not found\n');
    Promise.resolve()
      .then(() => view(this.#d.views))
      .then(
        (data) => this.#send(req, res, 200, 'application/json; charset=utf-8', JSON.stringify(data)),
        (err: unknown) => {
          this.#d.logger.error({ err, path }, 'console view failed');
          this.#send(req, res, 500, 'application/json; charset=utf-8', '{"error":"internal"}');
        },
      );
  }

  /**
   * A post from another site is refused (SameSite=Strict already keeps the
   * cookie off it). Browsers say where a request comes from in Sec-Fetch-Site;
   * Origin is the fallback (under Referrer-Policy no-referrer a form post's
   * Origin is "null", so Sec-Fetch-Site is the one that counts there).
   */
  #sameOrigin(req: IncomingMessage): boolean {
    const site = req.headers['sec-fetch-site'];
    if (site !== undefined) return site === 'same-origin' || site === 'none';
    const origin = req.headers.origin;
    if (origin === undefined) return true;
    try {
      return new URL(origin).host === req.headers.host;
    } catch {
      return false;
    }
  }

  async #login(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (!this.#sameOrigin(req)) return this.#send(req, res, 403, 'text/plain; charset=utf-8', 'cross-origin request refused\n');
    let body = '';
    try {
      body = await readBody(req, MAX_LOGIN_BODY);
    } catch {
      return this.#send(req, res, 413, 'text/plain; charset=utf-8', 'request too large\n');
    }
    const token = new URLSearchParams(body).get('token')?.trim() ?? '';
    try {
      const s = this.#d.logins.login(token);
      // Never the token or the session in a log line: only who logged in and from where.
      this.#d.logger.info({ who: s.who, remote: req.socket.remoteAddress }, 'console login');
      const maxAge = Math.max(1, Math.floor((s.expiresAt - Date.now()) / 1000));
      this.#send(req, res, 303, 'text/plain; charset=utf-8', '', {
        location: '/',
        'set-cookie': `${SESSION_COOKIE}=${s.session}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=${maxAge}`,
      });
    } catch (err) {
      if (!(err instanceof AmbitError)) throw err;
      this.#d.logger.warn({ remote: req.socket.remoteAddress }, 'console login refused: unknown, expired or used token');
      this.#send(req, res, 401, 'text/html; charset=utf-8', this.#d.assets.login('That login token is unknown, expired or already used. Run `ambitctl console` for a new one.'));
    }
  }
}

function sessionOf(req: IncomingMessage): string | undefined {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const i = part.indexOf('=');
    if (i > 0 && part.slice(0, i).trim() === SESSION_COOKIE) return part.slice(i + 1).trim();
  }
  return undefined;
}

function readBody(req: IncomingMessage, max: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > max) {
        reject(new Error('too large'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}
