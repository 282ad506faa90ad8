import http2, { type Http2SecureServer, type Http2Session, type IncomingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import { createSecureContext, type SecureContext, type TLSSocket } from 'node:tls';
import { X509Certificate, createHash } from 'node:crypto';
import { Server as NetServer, type AddressInfo } from 'node:net';
import { AmbitError } from '../../shared/errors.ts';
import type { Logger } from '../../shared/logger.ts';
import type { SpiffeId } from '../../shared/spiffe-id.ts';
import { bundleCertificates, TLS_MIN_VERSION, verifyPeer } from '../../shared/tls.ts';
import type { CertManager } from '../identity/cert-manager.ts';
import type { AgentMetrics } from './metrics.ts';
import { SessionStreams } from './session-flush.ts';

const serverNames = new Map<string, string>();

/**
 * The TLS server name a client uses to ask for a destination identity. The
 * server presents the destination workload's certificate (DESIGN §3), and
 * several workloads with different identities share one agent address, so
 * the client names the identity it expects; a hash keeps it a valid DNS label.
 */
export function serverNameFor(identityUri: string): string {
  let name = serverNames.get(identityUri);
  if (name === undefined) {
    name = `w${createHash('sha256').update(identityUri).digest('hex').slice(0, 40)}.hbone.ambit`;
    // Asked per connection for a handful of identities: remembered, within a bound.
    if (serverNames.size >= 4096) serverNames.clear();
    serverNames.set(identityUri, name);
  }
  return name;
}

/** HTTP/2 settings for tunnels: large windows so one stream can fill a fast link (tuned with bench/dataplane.ts). */
export const HBONE_SETTINGS = {
  initialWindowSize: 4 * 1024 * 1024,
  maxFrameSize: 1024 * 1024,
  maxConcurrentStreams: 1000,
  enablePush: false,
} as const;
export const HBONE_SESSION_WINDOW = 32 * 1024 * 1024;

export interface PeerInfo {
  /** The verified source identity (client certificate). */
  readonly identity: SpiffeId;
  /** The identity the client asked us to present (from SNI). */
  readonly servedIdentity: string;
  readonly remoteAddress: string;
}

export interface HboneServerOptions {
  readonly host: string;
  readonly port: number;
  readonly trustDomain: string;
  readonly certs: CertManager;
  readonly bundlePem: () => string;
  readonly metrics: AgentMetrics;
  readonly logger: Logger;
  readonly now?: () => number;
  /** Handles one verified CONNECT (or any other request, which it refuses). */
  readonly onStream: (stream: ServerHttp2Stream, headers: IncomingHttpHeaders, peer: PeerInfo) => void;
  /** How long a TLS handshake may take: slow clients must not hold sockets. */
  readonly handshakeTimeoutMs?: number;
}

/**
 * Inbound HBONE on :15008: TLS 1.3 only, ALPN h2, a client certificate that
 * chains to the trust bundle in our trust domain, then HTTP/2 CONNECT streams.
 */
export class HboneServer {
  readonly #o: HboneServerOptions;
  readonly #server: Http2SecureServer;
  readonly #peers = new WeakMap<Http2Session, PeerInfo>();
  readonly #sessions = new SessionStreams();
  #contexts = new Map<string, { ctx: SecureContext; version: string }>();
  #names = new Map<string, string>();
  readonly #bundle: () => X509Certificate[];
  #draining = false;

  constructor(o: HboneServerOptions) {
    this.#o = o;
    this.#bundle = bundleCertificates(o.bundlePem);
    this.#server = http2.createSecureServer({
      allowHTTP1: false,
      noDelay: true,
      minVersion: TLS_MIN_VERSION,
      ALPNProtocols: ['h2'],
      requestCert: true,
      // Verified in 'session' against the current bundle and trust domain:
      // the bundle changes on root rotation, and OpenSSL's check knows
      // nothing of SPIFFE trust domains.
      rejectUnauthorized: false,
      handshakeTimeout: o.handshakeTimeoutMs ?? 10_000,
      SNICallback: (name, cb) => {
        try {
          cb(null, this.#contextFor(name));
        } catch (err) {
          o.metrics.refused.inc({ direction: 'inbound', reason: 'unknown_server_name' });
          cb(err as Error);
        }
      },
      settings: HBONE_SETTINGS,
      maxSessionMemory: 64,
      peerMaxConcurrentStreams: 1000,
      // Peers are mTLS-authenticated agents, and applications abort
      // connections legitimately; nghttp2's default rapid-reset guard (1,000
      // burst, 33/s) would GOAWAY every tunnel of a busy source's session.
      streamResetBurst: 10_000,
      streamResetRate: 1_000,
    });
    this.#server.on('session', (session) => this.#onSession(session));
    this.#server.on('stream', (stream, headers) => {
      // A stream can fail (session error, REFUSED_STREAM) before anything
      // else listens to it; an unhandled 'error' would take the agent down.
      // Failures still surface through 'close' and the relay.
      stream.on('error', () => undefined);
      const peer = this.#peers.get(stream.session!);
      this.#sessions.stream(stream.session!, stream);
      if (!peer) {
        stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
        return;
      }
      if (this.#draining) {
        // REFUSED_STREAM: not processed, safe to open elsewhere; the peer's
        // pool stops using this connection on it (see stopAccepting).
        o.metrics.refused.inc({ direction: 'inbound', reason: 'draining' });
        stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
        return;
      }
      try {
        o.onStream(stream, headers, peer);
      } catch (err) {
        // A bug in request handling must cost one stream, not the agent and every tunnel on it.
        o.logger.error({ err: (err as Error).message, peer: peer.identity.uri }, 'HBONE stream handler failed');
        if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
      }
    });
    this.#server.on('unknownProtocol', (socket) => {
      o.metrics.refused.inc({ direction: 'inbound', reason: 'not_h2' });
      socket.destroy();
    });
    this.#server.on('tlsClientError', (err, socket) => {
      o.metrics.refused.inc({ direction: 'inbound', reason: 'tls' });
      o.logger.debug({ err: err.message, peer: socket.remoteAddress }, 'HBONE TLS handshake failed');
    });
    this.#server.setTimeout(0);
  }

  /** Maps local identities to the SNI names clients use; called when local workloads or certificates change. */
  refresh(identityUris: readonly string[]): void {
    this.#names = new Map(identityUris.map((u) => [serverNameFor(u), u]));
    this.#contexts = new Map([...this.#contexts].filter(([uri]) => identityUris.includes(uri)));
  }


  #contextFor(serverName: string): SecureContext {
    const uri = this.#names.get(serverName.toLowerCase());
    if (!uri) throw new AmbitError('AMBIT_ERR_CERT_INVALID', `no local workload answers to server name ${serverName}`);
    const entry = this.#o.certs.get(uri);
    if (!entry) throw new AmbitError('AMBIT_ERR_CERT_INVALID', `no valid certificate for ${uri} yet`);
    const bundle = this.#o.bundlePem();
    const version = `${entry.notAfter}|${entry.chainPem.length}|${bundle.length}|${bundle.slice(-64)}`;
    const cached = this.#contexts.get(uri);
    if (cached && cached.version === version) return cached.ctx;
    const ctx = createSecureContext({ key: entry.keyPem, cert: entry.chainPem, ca: bundle, minVersion: TLS_MIN_VERSION });
    this.#contexts.set(uri, { ctx, version });
    return ctx;
  }

  #onSession(session: Http2Session): void {
    const socket = session.socket as TLSSocket;
    try {
      const leaf = socket.getPeerX509Certificate();
      if (!leaf) throw new AmbitError('AMBIT_ERR_AUTH_UNAUTHENTICATED', 'no client certificate');
      const chain: X509Certificate[] = [];
      let c = socket.getPeerCertificate(true);
      const seen = new Set<string>();
      while (c?.raw && !seen.has(c.fingerprint256)) {
        seen.add(c.fingerprint256);
        chain.push(new X509Certificate(c.raw));
        c = c.issuerCertificate;
      }
      const identity = verifyPeer(leaf.raw, chain.slice(1), this.#bundle(), this.#o.trustDomain, (this.#o.now ?? Date.now)());
      if (identity.kind !== 'workload') throw new AmbitError('AMBIT_ERR_AUTH_DENIED', `${identity.uri} is not a workload identity`);
      const servedIdentity = this.#names.get(String((socket as TLSSocket & { servername?: string }).servername ?? '').toLowerCase()) ?? '';
      this.#peers.set(session, { identity, servedIdentity, remoteAddress: socket.remoteAddress ?? '' });
    } catch (err) {
      this.#o.metrics.refused.inc({ direction: 'inbound', reason: 'peer_certificate' });
      this.#o.logger.warn({ err: (err as Error).message, peer: socket.remoteAddress }, 'HBONE peer rejected');
      session.destroy();
      return;
    }
    this.#sessions.add(session);
    session.setLocalWindowSize(HBONE_SESSION_WINDOW);
    session.on('error', () => undefined);
  }

  listen(): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(this.#o.port, this.#o.host, () => {
        this.#server.off('error', reject);
        resolve(this.#server.address() as AddressInfo);
      });
    });
  }

  /**
   * Stops accepting connections, and refuses new streams on open ones;
   * open streams continue. No GOAWAY yet: a Node.js peer answers one by
   * closing the connection as soon as its own streams end, without
   * answering the PING flush() relies on, and Node.js gives the server no
   * sign of that close. The http2 server's own close() is not used either:
   * it closes every session, and Node.js tears a closed session down as
   * soon as its last stream ends, dropping output its peer has not read.
   */
  stopAccepting(): void {
    this.#draining = true;
    NetServer.prototype.close.call(this.#server);
  }

  /**
   * After stopAccepting(): waits, for at most ms, until every session's
   * streams are over and its peer confirmed it read everything; resolves
   * with how many were not confirmed. Then asks each session to close
   * (GOAWAY), which a destroy() right after may cut short: by then there is
   * nothing left for the peer to read.
   */
  async flush(ms: number): Promise<number> {
    const unconfirmed = await this.#sessions.flush(ms);
    for (const s of this.#sessions.sessions) if (!s.closed && !s.destroyed) s.close();
    return unconfirmed;
  }

  destroy(): void {
    this.#server.close();
    for (const s of this.#sessions.sessions) s.destroy();
  }
}
