import { createHash, randomBytes } from 'node:crypto';
import { AmbitError } from '../../shared/errors.ts';
import { isValidName } from '../../shared/spiffe-id.ts';
import type { Store, TokenRecord } from '../store/store.ts';

export { parseJoinToken, TOKEN_PREFIX, type ParsedToken } from '../../shared/join-token.ts';
import { TOKEN_PREFIX, parseJoinToken } from '../../shared/join-token.ts';

export const DEFAULT_TOKEN_TTL_MS = 3_600_000;
export const MAX_TOKEN_TTL_MS = 30 * 86_400_000;

export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret).digest('hex');
}

export class JoinTokens {
  readonly #store: Store;
  readonly #now: () => number;

  constructor(store: Store, now: () => number) {
    this.#store = store;
    this.#now = now;
  }

  async create(node: string, ttlMs: number, caFingerprint: string): Promise<{ token: string; expiresAt: number }> {
    if (!isValidName(node)) {
      throw new AmbitError('AMBIT_ERR_RESOURCE_INVALID', `invalid node name ${JSON.stringify(node)}: use lower-case letters, digits, "-" and "."`, {
        details: { field: 'node', value: node },
      });
    }
    if (!(ttlMs > 0 && ttlMs <= MAX_TOKEN_TTL_MS)) {
      throw new AmbitError('AMBIT_ERR_RESOURCE_INVALID', `invalid token ttl ${ttlMs} ms: must be more than 0 and at most 30 days`, {
        details: { field: 'ttl', value: ttlMs },
      });
    }
    const id = randomBytes(8).toString('hex');
    const secret = randomBytes(32).toString('base64url');
    const now = this.#now();
    const record: TokenRecord = { id, secretHash: hashSecret(secret), node, createdAt: now, expiresAt: now + ttlMs, usedAt: 0 };
    await this.#store.putToken(record);
    return { token: `${TOKEN_PREFIX}.${id}.${secret}.${caFingerprint}`, expiresAt: record.expiresAt };
  }

  /**
   * Consumes a token for `node`. The token is burnt even when presented for
   * another node than it was made for: such a presentation means it leaked.
   */
  async consume(token: string, node: string, trustedFingerprints: readonly string[]): Promise<TokenRecord> {
    const parsed = parseJoinToken(token);
    if (!trustedFingerprints.includes(parsed.caFingerprint)) {
      throw new AmbitError('AMBIT_ERR_TOKEN_INVALID', 'join token pins a CA this controller does not have (token for another mesh?)', {
        details: { reason: 'ca-mismatch', id: parsed.id },
      });
    }
    const record = await this.#store.consumeToken(parsed.id, hashSecret(parsed.secret), this.#now());
    if (record.node !== node) {
      throw new AmbitError('AMBIT_ERR_TOKEN_INVALID', `join token was made for node ${record.node}, not ${node}; it is now spent`, {
        details: { reason: 'node-mismatch', id: parsed.id, tokenNode: record.node, node },
      });
    }
    return record;
  }
}
