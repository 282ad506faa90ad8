import http2, { type ClientHttp2Session, type ClientHttp2Stream, type OutgoingHttpHeaders } from 'node:http2';
import { connect as tlsConnect, type PeerCertificate } from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { AmbitError } from '../../shared/errors.ts';
import type { Logger } from '../../shared/logger.ts';
import type { SpiffeId } from '../../shared/spiffe-id.ts';
import { spiffeIdOfCertificate, TLS_MIN_VERSION } from '../../shared/tls.ts';
import type { CertManager } from '../identity/cert-manager.ts';
import { HBONE_SESSION_WINDOW, HBONE_SETTINGS, serverNameFor } from './hbone-server.ts';
import type { AgentMetrics } from './metrics.ts';
import { SessionStreams } from './session-flush.ts';

/** A refused or failed tunnel, with the HTTP status the peer agent answered (0: no answer). */
export class TunnelError extends Error {
  readonly status: number;
  readonly reason: string;
  constructor(status: number, reason: string, message: string) {
    super(message);
    this.name = 'TunnelError';
    this.status = status;
    this.reason = reason;
  }
}

export interface TunnelRequest {
  readonly source: SpiffeId;
  readonly destination: SpiffeId;
  /** The destination node's agent, "ip:port". */
  readonly hboneAddress: string;
  /** The destination workload "ip:port" (the CONNECT authority). */
  readonly authority: string;
  readonly headers: OutgoingHttpHeaders;
}

/** CONNECT streams per pooled HTTP/2 connection before another one to the same peer is dialled. */
export const DEFAULT_MAX_STREAMS_PER_SESSION = 100;

interface PooledSession {
  readonly session: ClientHttp2Session;
  readonly key: string;
  streams: number;
  idleTimer: NodeJS.Timeout | undefined;
}

export interface TunnelPoolOptions {
  readonly certs: CertManager;
  readonly bundlePem: () => string;
  readonly metrics: AgentMetrics;
  readonly logger: Logger;
  readonly connectTimeoutMs: number;
  /** Streams per connection before another connection to the same peer is opened. */
  readonly maxStreamsPerSession?: number;
  /** Close a connection that carried no stream for this long. */
  readonly idleTimeoutMs?: number;
}

/**
 * Pooled HBONE connections. Many CONNECT streams share one HTTP/2 connection
 * per (source identity, destination identity, destination agent): the
 * identity pair is part of the key because the client presents the source's
 * certificate and the server presents the destination's (DESIGN §3), and the
 * source certificate's version is part of it so connections opened after a
 * renewal use the new certificate while older ones finish on the old.
 */
export class TunnelPool {
  readonly #o: TunnelPoolOptions;
  readonly #pool = new Map<string, PooledSession[]>();
  readonly #dialing = new Map<string, Promise<PooledSession>>();
  /** Every connected session until it closes, including those a GOAWAY took out of #pool while their streams finish. */
  readonly #sessions = new SessionStreams<ClientHttp2Session>();
  #closed = false;

  constructor(o: TunnelPoolOptions) {
    this.#o = o;
  }

  /** Opens a CONNECT stream; resolves once the peer answered 200, rejects with TunnelError otherwise. */
  async open(req: TunnelRequest): Promise<ClientHttp2Stream> {
    if (this.#closed) throw new TunnelError(0, 'shutting_down', 'agent is shutting down');
    const cert = this.#o.certs.get(req.source.uri);
    if (!cert) throw new TunnelError(0, 'no_source_certificate', `no valid certificate for ${req.source.uri} yet`);
    const key = `${req.source.uri}|${cert.notAfter}|${req.destination.uri}|${req.hboneAddress}`;
    const pooled = await this.#session(key, req, cert);
    clearTimeout(pooled.idleTimer);
    this.#o.metrics.poolStreams.inc();
    let stream: ClientHttp2Stream;
    try {
      stream = pooled.session.request({ ':method': 'CONNECT', ':authority': req.authority, ...req.headers }, { endStream: false });
    } catch (err) {
      this.#release(pooled);
      throw new TunnelError(0, 'stream_failed', `cannot open a stream to ${req.hboneAddress}: ${(err as Error).message}`);
    }
    // One 'close' listener per stream (a hot path) releases the pool slot and the drain's count.
    this.#sessions.opened(pooled.session);
    stream.once('close', () => {
      this.#sessions.closed(pooled.session);
      this.#release(pooled);
    });
    // Never let a late stream error (after the answer, before the relay takes over) crash the agent.
    stream.on('error', () => undefined);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        stream.close(http2.constants.NGHTTP2_CANCEL);
        reject(new TunnelError(0, 'timeout', `no answer from ${req.hboneAddress} within ${this.#o.connectTimeoutMs} ms`));
      }, this.#o.connectTimeoutMs);
      stream.once('response', (headers) => {
        clearTimeout(timer);
        const status = Number(headers[':status']);
        if (status === 200) return resolve(stream);
        const reason = String(headers['x-ambit-reason'] ?? '');
        stream.close();
        reject(new TunnelError(status, reason || `status_${status}`, `peer agent ${req.hboneAddress} answered ${status}${reason ? ` (${reason})` : ''}`));
      });
      stream.once('error', (err) => {
        clearTimeout(timer);
        // A draining peer refuses new streams but keeps the connection up to
        // finish the open ones: open no more on it.
        if (stream.rstCode === http2.constants.NGHTTP2_REFUSED_STREAM) this.#retire(pooled);
        reject(new TunnelError(0, 'stream_error', `tunnel to ${req.hboneAddress} failed: ${err.message}`));
      });
    });
  }

  /**
   * Takes a session out of the pool: no new streams on it. It is not closed
   * here: a draining peer still confirms with a PING that we read its last
   * bytes, and closes the connection itself; otherwise the idle timer does.
   */
  #retire(p: PooledSession): void {
    const l = (this.#pool.get(p.key) ?? []).filter((x) => x !== p);
    if (l.length > 0) this.#pool.set(p.key, l);
    else this.#pool.delete(p.key);
  }

  #release(p: PooledSession): void {
    p.streams--;
    this.#o.metrics.poolStreams.dec();
    if (p.streams === 0 && !p.session.closed) {
      p.idleTimer = setTimeout(() => p.session.close(), this.#o.idleTimeoutMs ?? 60_000);
      p.idleTimer.unref();
    }
  }

  /**
   * A pooled connection with a stream slot reserved for the caller (its
   * `streams` already counts it). The slot is taken in the same synchronous
   * step as the check, so a burst of callers waiting for one dial cannot all
   * see room on it and overfill it past maxStreamsPerSession.
   */
  async #session(key: string, req: TunnelRequest, cert: { keyPem: string; chainPem: string }): Promise<PooledSession> {
    const max = this.#o.maxStreamsPerSession ?? DEFAULT_MAX_STREAMS_PER_SESSION;
    for (;;) {
      const usable = (this.#pool.get(key) ?? []).find((p) => !p.session.closed && !p.session.destroyed && p.streams < max);
      if (usable) {
        usable.streams++;
        return usable;
      }
      // One dial at a time per key: a burst of new connections shares the
      // first handshake; once it is full, the next waiter dials another.
      const inflight = this.#dialing.get(key);
      if (inflight) {
        await inflight; // its failure is ours too: no retry storm against a dead peer
        continue;
      }
      const dial = this.#dial(key, req, cert).finally(() => this.#dialing.delete(key));
      this.#dialing.set(key, dial);
      const p = await dial;
      if (p.streams < max && !p.session.closed) {
        p.streams++;
        return p;
      }
    }
  }

  #dial(key: string, req: TunnelRequest, cert: { keyPem: string; chainPem: string }): Promise<PooledSession> {
    const i = req.hboneAddress.lastIndexOf(':');
    const host = req.hboneAddress.slice(0, i).replace(/^\[(.*)\]$/, '$1');
    const port = Number(req.hboneAddress.slice(i + 1));
    const expected = req.destination.uri;
    return new Promise((resolve, reject) => {
      let settled = false;
      const session = http2.connect(`https://${req.hboneAddress}`, {
        settings: HBONE_SETTINGS,
        maxSessionMemory: 64,
        createConnection: () => {
          const socket = tlsConnect({
            host,
            port,
            servername: serverNameFor(expected),
            ALPNProtocols: ['h2'],
            minVersion: TLS_MIN_VERSION,
            key: cert.keyPem,
            cert: cert.chainPem,
            ca: this.#o.bundlePem(),
            // The chain is verified against the bundle by OpenSSL; identity is
            // the SPIFFE ID, which must be exactly the destination's.
            checkServerIdentity: (_h: string, pc: PeerCertificate) => {
              try {
                const got = spiffeIdOfCertificate(new X509Certificate(pc.raw)).uri;
                return got === expected ? undefined : new Error(`peer presented ${got}, expected ${expected}`);
              } catch (err) {
                return err as Error;
              }
            },
          });
          // Small frames (CONNECT headers, 1 KiB requests) must not wait for
          // an ACK behind Nagle's algorithm.
          socket.setNoDelay(true);
          return socket;
        },
      });
      const timer = setTimeout(() => fail(new Error('handshake timed out')), this.#o.connectTimeoutMs);
      const fail = (err: Error): void => {
        clearTimeout(timer);
        if (settled) return;
        settled = true;
        this.#o.metrics.poolDials.inc({ result: 'error' });
        session.destroy();
        reject(new TunnelError(0, 'connect_failed', `cannot open HBONE to ${req.hboneAddress} for ${expected}: ${err.message}`));
      };
      session.once('error', fail);
      session.once('connect', () => {
        clearTimeout(timer);
        if (settled) return;
        settled = true;
        session.off('error', fail);
        session.on('error', (err) => this.#o.logger.debug({ err: err.message, peer: req.hboneAddress }, 'HBONE session error'));
        session.setLocalWindowSize(HBONE_SESSION_WINDOW);
        this.#o.metrics.poolDials.inc({ result: 'ok' });
        this.#o.metrics.poolConnections.inc();
        const pooled: PooledSession = { session, key, streams: 0, idleTimer: undefined };
        const list = this.#pool.get(key) ?? [];
        list.push(pooled);
        this.#pool.set(key, list);
        this.#sessions.add(session);
        session.once('close', () => {
          clearTimeout(pooled.idleTimer);
          this.#o.metrics.poolConnections.dec();
          this.#retire(pooled);
        });
        session.once('goaway', () => this.#retire(pooled));
        resolve(pooled);
      });
    });
  }

  stats(): { connections: number; streams: number; peers: string[] } {
    let connections = 0;
    let streams = 0;
    for (const l of this.#pool.values()) for (const p of l) {
      connections++;
      streams += p.streams;
    }
    return { connections, streams, peers: [...this.#pool.keys()].map((k) => k.split('|').slice(2).join(' @ ')) };
  }

  /** Opens no more streams; open ones finish. */
  stopOpening(): void {
    this.#closed = true;
  }

  /** After stopOpening(): resolves once every session's streams are over and its peer confirmed it read everything, or after ms, with how many were not. */
  flush(ms: number): Promise<number> {
    return this.#sessions.flush(ms);
  }

  destroy(): void {
    this.#closed = true;
    for (const s of this.#sessions.sessions) s.destroy();
    this.#pool.clear();
  }
}

export function tunnelErrorOf(err: unknown): TunnelError {
  if (err instanceof TunnelError) return err;
  if (err instanceof AmbitError) return new TunnelError(0, err.code, err.message);
  return new TunnelError(0, 'internal', (err as Error).message ?? String(err));
}
