import { createHash, X509Certificate } from 'node:crypto';
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { Backoff } from '../../shared/backoff.ts';
import { errorMessage } from '../../shared/errors.ts';
import { ensurePrivateDir, writeFileAtomic } from '../../shared/files.ts';
import type { Logger } from '../../shared/logger.ts';
import { parseSpiffeId, type SpiffeId } from '../../shared/spiffe-id.ts';
import { parseCertificates } from '../../shared/tls.ts';
import { newKeyPair } from './ca-client.ts';

/** One identity's credentials. The private key was made on this host and never leaves it. */
export interface CertEntry {
  readonly identity: SpiffeId;
  readonly keyPem: string;
  /** Leaf then intermediates. */
  readonly chainPem: string;
  readonly notBefore: number;
  readonly notAfter: number;
}

/** What the manager needs from the CA: sign a CSR for an identity with a key pair made here. */
export type Issuer = (identity: SpiffeId, keys: ReturnType<typeof newKeyPair>) => Promise<{ certChainPem: string }>;

export interface CertManagerOptions {
  /** Directory (0700) holding one 0600 JSON file per identity. */
  readonly dir: string;
  readonly issuer: () => Issuer;
  readonly logger: Logger;
  readonly now?: () => number;
  readonly random?: () => number;
  /** Renew when this fraction of the lifetime has passed (DESIGN: half-life). */
  readonly renewAt?: number;
  /** ± fraction of the lifetime added to the renewal time, so a fleet does not renew together. */
  readonly jitter?: number;
  /**
   * How a certificate file is written and removed. The agent passes its
   * Persister, which never throws: a certificate the CA issued is served from
   * memory even when the disk is full, and written once it can be.
   */
  readonly write?: (path: string, data: string) => void;
  readonly remove?: (path: string) => void;
}

interface Slot {
  entry: CertEntry | undefined;
  /** When `entry` arrived (its notBefore when loaded from disk): where its renewal clock starts. */
  since: number;
  timer: NodeJS.Timeout | undefined;
  /** When `timer` fires (ms since epoch); undefined without a timer. */
  dueAt: number | undefined;
  backoff: Backoff;
  inflight: Promise<void> | undefined;
  lastError: string;
}

/**
 * Keeps a certificate for each wanted identity (the node's and every local
 * workload's): issues missing ones, renews at half-life with jitter, retries
 * failures with exponential backoff, and keeps serving the old certificate
 * until it actually expires (DESIGN §2). State is persisted so a restarted
 * agent serves without the controller.
 */
export class CertManager {
  readonly #o: CertManagerOptions;
  readonly #now: () => number;
  readonly #slots = new Map<string, Slot>();
  readonly #listeners = new Set<(identity: SpiffeId) => void>();
  #closed = false;

  constructor(o: CertManagerOptions) {
    this.#o = o;
    this.#now = o.now ?? Date.now;
    ensurePrivateDir(o.dir);
  }

  /** Loads persisted certificates that are still valid; returns how many. */
  load(): number {
    let n = 0;
    for (const f of readdirSync(this.#o.dir)) {
      if (!f.endsWith('.json')) continue;
      try {
        const raw = JSON.parse(readFileSync(join(this.#o.dir, f), 'utf8')) as { uri: string; keyPem: string; chainPem: string };
        const entry = toEntry(parseSpiffeId(raw.uri), raw.keyPem, raw.chainPem);
        if (entry.notAfter <= this.#now()) continue;
        const slot = this.#slot(entry.identity.uri);
        slot.entry = entry;
        slot.since = entry.notBefore;
        n++;
      } catch (err) {
        this.#o.logger.warn({ err, file: f }, 'ignoring an unreadable cached certificate');
      }
    }
    return n;
  }

  /** Adds credentials obtained elsewhere (the node certificate from bootstrap). */
  put(identity: SpiffeId, keyPem: string, chainPem: string): CertEntry {
    const entry = toEntry(identity, keyPem, chainPem);
    this.#store(entry);
    return entry;
  }

  onChange(listener: (identity: SpiffeId) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** The current certificate of an identity if it is valid now. */
  get(uri: string): CertEntry | undefined {
    const e = this.#slots.get(uri)?.entry;
    return e && e.notAfter > this.#now() ? e : undefined;
  }

  entries(): CertEntry[] {
    return [...this.#slots.values()].flatMap((s) => (s.entry ? [s.entry] : []));
  }

  /** Per identity: the held certificate's validity, when it is next renewed or retried (0: nothing scheduled), and the last error. */
  status(): { identity: string; notBefore: number; notAfter: number; renewsAt: number; lastError: string }[] {
    return [...this.#slots].map(([uri, s]) => ({ identity: uri, notBefore: s.entry?.notBefore ?? 0, notAfter: s.entry?.notAfter ?? 0, renewsAt: s.dueAt ?? 0, lastError: s.lastError }));
  }

  /** Earliest expiry among held certificates: how long the node survives without the controller. */
  earliestExpiry(): number {
    let min = 0;
    for (const s of this.#slots.values()) if (s.entry && (min === 0 || s.entry.notAfter < min)) min = s.entry.notAfter;
    return min;
  }

  /**
   * Makes `identities` (plus those in `keep`) the wanted set: issues what is
   * missing, schedules renewals, forgets (and deletes from disk) the rest.
   * Resolves once every wanted identity has a valid certificate or its first
   * attempt failed (failures keep retrying in the background).
   */
  async want(identities: readonly SpiffeId[]): Promise<void> {
    const wanted = new Map(identities.map((i) => [i.uri, i]));
    for (const [uri, slot] of this.#slots) {
      if (wanted.has(uri)) continue;
      clearTimeout(slot.timer);
      this.#slots.delete(uri);
      (this.#o.remove ?? ((p: string) => rmSync(p, { force: true })))(this.#file(uri));
      this.#o.logger.info({ identity: uri }, 'certificate dropped: identity no longer on this node');
    }
    const pending: Promise<void>[] = [];
    for (const id of wanted.values()) {
      const slot = this.#slot(id.uri);
      if (!slot.entry || slot.entry.notAfter <= this.#now()) pending.push(this.#renew(id));
      else if (!slot.timer) this.#schedule(id, slot);
    }
    await Promise.all(pending);
  }

  /** Renews one identity now (used for the node certificate when the controller asks, and by tests). */
  renewNow(identity: SpiffeId): Promise<void> {
    return this.#renew(identity);
  }

  /**
   * Renews, within `spreadMs` (a random delay each, so a fleet does not hit
   * the CA at one instant), every certificate for which `stale` holds — e.g.
   * those that do not chain to the root the CA now signs with, so that
   * certificates of the old root are gone long before it is retired, instead
   * of at half-life. A renewal already due sooner is left alone. Returns how
   * many certificates are (or already were) due within the spread.
   */
  renewWhere(stale: (e: CertEntry) => boolean, spreadMs: number): number {
    if (this.#closed) return 0;
    let n = 0;
    for (const [uri, slot] of this.#slots) {
      if (!slot.entry || !stale(slot.entry)) continue;
      n++;
      if (slot.inflight) continue;
      const delay = Math.round((this.#o.random ?? Math.random)() * spreadMs);
      if (slot.dueAt !== undefined && slot.dueAt <= this.#now() + delay) continue;
      this.#setTimer(slot, delay, () => void this.#renew(parseSpiffeId(uri)));
    }
    return n;
  }

  /**
   * Retries at once every identity whose last request failed (it is waiting
   * out its backoff), e.g. when the controller is reachable again: an agent
   * whose certificates expired during an outage must not wait up to a full
   * backoff interval after the controller returns.
   */
  retryFailed(): void {
    if (this.#closed) return;
    for (const [uri, slot] of this.#slots) {
      if (slot.lastError === '' || slot.inflight) continue;
      slot.backoff.reset();
      void this.#renew(parseSpiffeId(uri));
    }
  }

  close(): void {
    this.#closed = true;
    for (const s of this.#slots.values()) clearTimeout(s.timer);
  }

  #slot(uri: string): Slot {
    let s = this.#slots.get(uri);
    if (!s) {
      s = { entry: undefined, since: 0, timer: undefined, dueAt: undefined, backoff: new Backoff({ initialMs: 1000, maxMs: 60_000, ...(this.#o.random ? { random: this.#o.random } : {}) }), inflight: undefined, lastError: '' };
      this.#slots.set(uri, s);
    }
    return s;
  }

  #file(uri: string): string {
    return join(this.#o.dir, `${createHash('sha256').update(uri).digest('hex').slice(0, 24)}.json`);
  }

  #store(entry: CertEntry): void {
    (this.#o.write ?? writeFileAtomic)(this.#file(entry.identity.uri), JSON.stringify({ uri: entry.identity.uri, keyPem: entry.keyPem, chainPem: entry.chainPem }));
    const slot = this.#slot(entry.identity.uri);
    slot.entry = entry;
    slot.since = this.#now();
    slot.lastError = '';
    slot.backoff.reset();
    this.#schedule(entry.identity, slot);
    for (const l of this.#listeners) l(entry.identity);
  }

  #schedule(identity: SpiffeId, slot: Slot): void {
    clearTimeout(slot.timer);
    if (this.#closed || !slot.entry) return;
    // Renew at renewAt ± jitter of the lifetime (0.5 ± 0.1: between 40 % and 60 %).
    // The lifetime counts from when the certificate arrived, not from its
    // notBefore: the CA backdates notBefore (clock skew), and with a short TTL
    // the backdated half-life would already be past, renewing in a tight loop.
    const start = Math.min(Math.max(slot.entry.notBefore, slot.since), slot.entry.notAfter);
    const life = slot.entry.notAfter - start;
    const spread = (this.#o.jitter ?? 0.1) * (2 * (this.#o.random ?? Math.random)() - 1);
    const at = start + life * ((this.#o.renewAt ?? 0.5) + spread);
    this.#setTimer(slot, Math.max(0, at - this.#now()), () => void this.#renew(identity));
  }

  #setTimer(slot: Slot, delayMs: number, fn: () => void): void {
    clearTimeout(slot.timer);
    const delay = Math.min(delayMs, 2 ** 31 - 1);
    slot.dueAt = this.#now() + delay;
    slot.timer = setTimeout(() => {
      slot.dueAt = undefined;
      fn();
    }, delay);
    slot.timer.unref();
  }

  #renew(identity: SpiffeId): Promise<void> {
    const slot = this.#slot(identity.uri);
    if (slot.inflight) return slot.inflight;
    clearTimeout(slot.timer);
    slot.dueAt = undefined;
    const run = async (): Promise<void> => {
      try {
        const keys = newKeyPair();
        const issued = await this.#o.issuer()(identity, keys);
        // want() dropped the identity while the request was in flight: do not bring it back.
        if (this.#slots.get(identity.uri) !== slot) return;
        const keyPem = keys.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
        this.#store(toEntry(identity, keyPem, issued.certChainPem));
        this.#o.logger.info({ identity: identity.uri, expiresAt: new Date(slot.entry!.notAfter).toISOString() }, 'certificate issued');
      } catch (err) {
        slot.lastError = errorMessage(err);
        if (this.#closed || this.#slots.get(identity.uri) !== slot) return;
        const delay = slot.backoff.next();
        // Keep the old certificate (if any) until it expires; just try again later.
        this.#o.logger.warn({ identity: identity.uri, err: slot.lastError, retryInMs: delay, validUntil: slot.entry ? new Date(slot.entry.notAfter).toISOString() : 'none' }, 'certificate request failed; will retry');
        this.#setTimer(slot, delay, () => void this.#renew(identity));
      }
    };
    // Cleared after the attempt settles. Not in run()'s own finally: an issuer
    // that throws synchronously would settle run() before slot.inflight is
    // assigned, leaving a settled promise there that blocks every later attempt.
    const attempt: Promise<void> = run().finally(() => {
      if (slot.inflight === attempt) slot.inflight = undefined;
    });
    slot.inflight = attempt;
    return attempt;
  }
}

function toEntry(identity: SpiffeId, keyPem: string, chainPem: string): CertEntry {
  const leaf: X509Certificate | undefined = parseCertificates(chainPem)[0];
  if (!leaf) throw new Error('no certificate in chain');
  return { identity, keyPem, chainPem, notBefore: Date.parse(leaf.validFrom), notAfter: Date.parse(leaf.validTo) };
}

/**
 * Whether a chain (leaf then intermediates, as the CA returns it) leads to
 * `root`: its last certificate is the root itself or was signed by it.
 */
export function chainsTo(chainPem: string, root: X509Certificate): boolean {
  const top = parseCertificates(chainPem).at(-1);
  if (!top) return false;
  return top.fingerprint256 === root.fingerprint256 || (top.checkIssued(root) && top.verify(root.publicKey));
}
