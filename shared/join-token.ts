import { AmbitError } from './errors.ts';

/**
 * Join tokens (DESIGN §2): single use, expiring, stored hashed, and pinning the
 * controller's CA so `ambit-agent --join TOKEN` needs nothing else to trust the
 * controller (the kubeadm discovery-token idea).
 *
 * Format: ambit-join.<id>.<secret>.<ca-sha256>
 *   id      16 hex chars, public: finds the record
 *   secret  43 base64url chars (256 bits); only its SHA-256 is stored
 *   ca-sha256  64 hex chars: SHA-256 of the root certificate's DER
 */
export const TOKEN_PREFIX = 'ambit-join';
const TOKEN_RE = /^ambit-join\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})\.([0-9a-f]{64})$/;

export interface ParsedToken {
  readonly id: string;
  readonly secret: string;
  readonly caFingerprint: string;
}

/** Parses a token string without consulting any store (the agent uses this to read the CA pin). */
export function parseJoinToken(token: string): ParsedToken {
  const m = TOKEN_RE.exec(typeof token === 'string' ? token.trim() : '');
  if (!m) {
    throw new AmbitError('AMBIT_ERR_TOKEN_INVALID', `malformed join token: expected ${TOKEN_PREFIX}.<id>.<secret>.<ca-sha256> as printed by "ambitctl node token create"`, {
      details: { reason: 'malformed' },
    });
  }
  return { id: m[1]!, secret: m[2]!, caFingerprint: m[3]! };
}

