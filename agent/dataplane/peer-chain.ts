import { X509Certificate } from 'node:crypto';
import { AmbitError } from '../../shared/errors.ts';
import type { SpiffeId } from '../../shared/spiffe-id.ts';
import { verifyPeer } from '../../shared/tls.ts';

/**
 * The identity of a peer whose chain ambit-dataplane reported (DER, leaf
 * first: SessionQuestion.chain, PeerQuestion.chain), checked as the
 * node:http2 path checks a TLS peer: chains to the bundle, in our trust
 * domain. Throws an AmbitError naming what failed.
 */
export function verifyReportedChain(chain: readonly Uint8Array[], bundle: readonly X509Certificate[], trustDomain: string, now: number, role: 'client' | 'server'): SpiffeId {
  const der = chain.map((c) => Buffer.from(c.buffer, c.byteOffset, c.byteLength));
  const leaf = der[0];
  if (!leaf) throw new AmbitError('AMBIT_ERR_AUTH_UNAUTHENTICATED', `no ${role} certificate`);
  return verifyPeer(leaf, der.slice(1).map((c) => new X509Certificate(c)), bundle, trustDomain, now);
}
