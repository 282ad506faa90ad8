import { X509Certificate } from 'node:crypto';
import { AmbitError } from '../../shared/errors.ts';
import type { SpiffeId } from '../../shared/spiffe-id.ts';
import { verifyPeer } from '../../shared/tls.ts';

/**
 * Reading ambit-dataplane's messages (dataplane/src/control.rs): one JSON
 * object per line, whose fields are checked where they are used, so a
 * malformed one yields NaN or '' and is refused there rather than thrown.
 */
export type Message = Record<string, unknown> & { t: string };

export const num = (v: unknown): number => (typeof v === 'number' ? v : Number.NaN);
export const str = (v: unknown): string => (typeof v === 'string' ? v : '');

/**
 * The identity of a peer whose chain the data plane reported (base64 DER,
 * leaf first), checked as the node:http2 path checks a TLS peer: chains to
 * the bundle, in our trust domain. Throws an AmbitError naming what failed.
 */
export function verifyReportedChain(chain: unknown, bundle: readonly X509Certificate[], trustDomain: string, now: number, role: 'client' | 'server'): SpiffeId {
  const der = (Array.isArray(chain) ? chain : []).map((c) => Buffer.from(str(c), 'base64'));
  const leaf = der[0];
  if (!leaf) throw new AmbitError('AMBIT_ERR_AUTH_UNAUTHENTICATED', `no ${role} certificate`);
  return verifyPeer(leaf, der.slice(1).map((c) => new X509Certificate(c)), bundle, trustDomain, now);
}
