import { createHash } from 'node:crypto';
import type { SpiffeId } from '../../shared/spiffe-id.ts';

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

/** The verified peer of an inbound HBONE session. */
export interface PeerInfo {
  /** The verified source identity (client certificate). */
  readonly identity: SpiffeId;
  /** The identity the client asked us to present (from SNI). */
  readonly servedIdentity: string;
  /** The peer agent's address (the TCP peer of the session). */
  readonly remoteAddress: string;
}
