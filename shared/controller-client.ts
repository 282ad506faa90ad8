import { credentials, type ChannelCredentials, type ChannelOptions } from '@grpc/grpc-js';
import type { PeerCertificate } from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { controllerId } from './spiffe-id.ts';
import { spiffeIdOfCertificate } from './tls.ts';
import { SPREAD_OVER_REPLICAS } from './controller-target.ts';

/**
 * Channel credentials for talking to the controller. The controller is
 * authenticated by its SPIFFE ID (spiffe://<td>/ambit/controller) rather than
 * by hostname, so agents can dial it by any address (IP, service name, VIP)
 * without the serving certificate having to list them all.
 */
export function controllerCredentials(o: {
  readonly caPem: string;
  readonly trustDomain: string;
  readonly keyPem?: string;
  readonly certChainPem?: string;
}): ChannelCredentials {
  const expected = controllerId(o.trustDomain).uri;
  return credentials.createSsl(
    Buffer.from(o.caPem),
    o.keyPem ? Buffer.from(o.keyPem) : null,
    o.certChainPem ? Buffer.from(o.certChainPem) : null,
    {
      checkServerIdentity: (_host: string, cert: PeerCertificate) => {
        try {
          const id = spiffeIdOfCertificate(new X509Certificate(cert.raw));
          if (id.uri === expected) return undefined;
          return new Error(`controller presented ${id.uri}, expected ${expected}`);
        } catch (err) {
          return err as Error;
        }
      },
    },
  );
}

/** Channel options shared by every controller client: keepalive so dead controllers are noticed, bounded messages. */
export const CONTROLLER_CHANNEL_OPTIONS: ChannelOptions = {
  'grpc.keepalive_time_ms': 20_000,
  'grpc.keepalive_timeout_ms': 10_000,
  'grpc.keepalive_permit_without_calls': 1,
  'grpc.max_receive_message_length': 64 * 1024 * 1024,
  'grpc.initial_reconnect_backoff_ms': 500,
  'grpc.max_reconnect_backoff_ms': 10_000,
  // The controller is verified by SPIFFE ID, not by name; a fixed DNS-style
  // server name also keeps Node from sending an IP address as SNI (RFC 6066).
  'grpc.ssl_target_name_override': 'ambit-controller',
  // Several replicas (a list or a name with several addresses): each client picks one at random and moves on when it fails.
  ...SPREAD_OVER_REPLICAS,
};
