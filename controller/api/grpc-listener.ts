import { ServerCredentials, ServerInterceptingCall, type Server, type ServerInterceptor } from '@grpc/grpc-js';
import { createServer, type Server as NetServer } from 'node:net';
import { createServer as createTlsServer, type TLSSocket } from 'node:tls';
import type { ConnectionAdmission } from '../../shared/connection-admission.ts';
import type { ServingCertificates } from './peer.ts';

/**
 * Tells admission which connection each call runs on, so a certificate-less
 * connection (Bootstrap) is not closed or evicted while its call runs. Pass it
 * in the grpc-js Server's `interceptors` option.
 */
export function trackCalls(admission: ConnectionAdmission): ServerInterceptor {
  return (_method, call) => {
    let ended: (() => void) | undefined;
    const end = (): void => ended?.();
    return new ServerInterceptingCall(call, {
      start: (next) => {
        const info = call.getConnectionInfo();
        ended = admission.callStarted(info.remoteAddress, info.remotePort);
        next({ onCancel: end });
      },
      sendStatus: (status, next) => {
        end();
        next(status);
      },
    });
  };
}

export interface GrpcListener {
  readonly server: NetServer;
  /** Stops following certificate changes. */
  close(): void;
}

/**
 * The gRPC port's own listener: the controller accepts each connection,
 * applies admission, terminates TLS itself (a tls.Server that never listens)
 * and hands grpc-js only the established connection
 * (Server.createConnectionInjector). Terminating TLS here lets admission
 * know at the handshake whether the peer proved itself with a certificate.
 *
 * Client certificates are requested but not required: Bootstrap is called by
 * nodes that have none yet. Every other handler authenticates the peer itself
 * (peerAuthenticator); grpc-js reports a peer certificate only when the
 * handshake verified it (TLSSocket.authorized).
 */
export function grpcListener(server: Server, certs: ServingCertificates, admission: ConnectionAdmission, handshakeTimeoutMs: number): GrpcListener {
  // TLS is done here, so grpc-js sees HTTP/2 over an already-secure socket.
  const injector = server.createConnectionInjector(ServerCredentials.createInsecure());
  const tls = createTlsServer({ requestCert: true, rejectUnauthorized: false, ALPNProtocols: ['h2'], handshakeTimeout: handshakeTimeoutMs });
  const unwatch = certs.watch((o) => tls.setSecureContext(o));
  tls.on('secureConnection', (socket: TLSSocket) => {
    socket.on('error', () => socket.destroy());
    const admitted = admission.find(socket.remoteAddress, socket.remotePort);
    // gRPC is HTTP/2 only; a client that did not negotiate h2 has nothing to say here.
    if (!admitted || socket.alpnProtocol !== 'h2') {
      socket.destroy();
      return;
    }
    admitted.use(socket, () => socket.destroy());
    if (socket.authorized) admitted.authenticated();
    injector.injectConnection(socket);
  });
  // A failed handshake: tls.Server destroys the socket; nothing to report to the peer.
  tls.on('tlsClientError', () => undefined);
  const listener = createServer({ noDelay: true }, (raw) => {
    raw.on('error', () => undefined);
    if (admission.admit(raw)) tls.emit('connection', raw);
  });
  return { server: listener, close: unwatch };
}
