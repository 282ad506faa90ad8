import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { AmbitError } from '../../shared/errors.ts';

/** Default and bounds of a login token's life: long enough to paste, short enough not to matter in a scrollback. */
export const DEFAULT_LOGIN_TTL_MS = 5 * 60_000;
export const MAX_LOGIN_TTL_MS = 60 * 60_000;
/** A session lasts this long from login (absolute, not sliding): an admin logs in again each working day. */
export const SESSION_TTL_MS = 8 * 3_600_000;
/** Bounds on what is held in memory: a flood of token requests or logins cannot grow the controller without limit. */
const MAX_PENDING_LOGINS = 64;
const MAX_SESSIONS = 256;

const TOKEN_PREFIX = 'ambit-console-';

function digest(secret: string): Buffer {
  return createHash('sha256').update(secret).digest();
}

interface Held {
  readonly hash: Buffer;
  readonly expiresAt: number;
  readonly who: string;
}

/**
 * The console's credentials: single-use login tokens (minted over the Admin
 * API for an admin identity) and the sessions they are exchanged for. Only
 * SHA-256 digests are held, so a memory dump or a log of this object shows no
 * usable secret; lookups compare digests in constant time. Both live in the
 * controller's memory only: a restart logs everyone out, which is the safe
 * direction for an admin console.
 */
export class ConsoleLogins {
  readonly #now: () => number;
  readonly #logins = new Map<string, Held>();
  readonly #sessions = new Map<string, Held>();

  constructor(now: () => number) {
    this.#now = now;
  }

  /** A new single-use login token for `who` (the admin identity that asked), valid for ttlMs. */
  createLogin(who: string, ttlMs: number): { token: string; expiresAt: number } {
    if (!Number.isInteger(ttlMs) || ttlMs <= 0 || ttlMs > MAX_LOGIN_TTL_MS) {
      throw new AmbitError('AMBIT_ERR_CONSOLE_LOGIN', `a console login token lives from 1 ms to ${MAX_LOGIN_TTL_MS / 60_000} min; asked for ${ttlMs} ms`, { details: { ttlMs } });
    }
    this.#expire();
    if (this.#logins.size >= MAX_PENDING_LOGINS) this.#dropOldest(this.#logins);
    const token = TOKEN_PREFIX + randomBytes(32).toString('base64url');
    const expiresAt = this.#now() + ttlMs;
    this.#logins.set(digest(token).toString('hex'), { hash: digest(token), expiresAt, who });
    return { token, expiresAt };
  }

  /**
   * Exchanges a login token for a session: the token is spent whether or not
   * the session is used. Throws AMBIT_ERR_CONSOLE_LOGIN for an unknown,
   * expired or already used token (one message for all three, so a caller
   * learns nothing about which tokens exist).
   */
  login(token: string): { session: string; expiresAt: number; who: string } {
    this.#expire();
    const held = typeof token === 'string' && token.startsWith(TOKEN_PREFIX) ? this.#take(this.#logins, token) : undefined;
    if (!held) throw new AmbitError('AMBIT_ERR_CONSOLE_LOGIN', 'the console login token is unknown, expired or already used; run `ambitctl console` for a new one');
    if (this.#sessions.size >= MAX_SESSIONS) this.#dropOldest(this.#sessions);
    const session = randomBytes(32).toString('base64url');
    const expiresAt = this.#now() + SESSION_TTL_MS;
    this.#sessions.set(digest(session).toString('hex'), { hash: digest(session), expiresAt, who: held.who });
    return { session, expiresAt, who: held.who };
  }

  /** The admin identity a live session belongs to, or undefined. */
  session(session: string | undefined): string | undefined {
    if (!session) return undefined;
    const held = this.#find(this.#sessions, session);
    if (!held) return undefined;
    if (held.expiresAt <= this.#now()) {
      this.#sessions.delete(held.hash.toString('hex'));
      return undefined;
    }
    return held.who;
  }

  logout(session: string | undefined): void {
    if (session) this.#take(this.#sessions, session);
  }

  get sessions(): number {
    return this.#sessions.size;
  }

  #find(m: Map<string, Held>, secret: string): Held | undefined {
    const h = digest(secret);
    const held = m.get(h.toString('hex'));
    // The map lookup already found it by digest; the constant-time compare keeps the check honest if the key scheme changes.
    return held && timingSafeEqual(held.hash, h) ? held : undefined;
  }

  #take(m: Map<string, Held>, secret: string): Held | undefined {
    const held = this.#find(m, secret);
    if (held) m.delete(held.hash.toString('hex'));
    return held && held.expiresAt > this.#now() ? held : undefined;
  }

  #expire(): void {
    const now = this.#now();
    for (const m of [this.#logins, this.#sessions]) for (const [k, v] of m) if (v.expiresAt <= now) m.delete(k);
  }

  #dropOldest(m: Map<string, Held>): void {
    const first = m.keys().next();
    if (!first.done) m.delete(first.value);
  }
}
