import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../../shared/files.ts';
import { toDocument, validateResource } from '../../shared/resources/validate.ts';
import type { Resource } from '../../shared/resources/types.ts';
import type { Logger } from '../../shared/logger.ts';
import { subscriptionHost } from '../../shared/service-host.ts';
import type { NodeEndpoint } from './mesh-state.ts';
import { DEFAULT_MAX_SUBSCRIPTIONS } from './subscriptions.ts';

/**
 * The agent's last good mesh state on disk (<data-dir>/state.json, 0600), so a
 * restarted agent serves while the controller is unreachable (DESIGN §3
 * Resilience) and resumes its watch from the cached revision.
 */
export interface CachedState {
  readonly revision: number;
  /** Identity of the controller store the state came from ('' in caches written before identities): agent/state/store-guard.ts. */
  readonly storeId: string;
  readonly resources: readonly Resource[];
  readonly nodes: readonly NodeEndpoint[];
  readonly bundlePem: string;
  /**
   * Node scope: the destinations followed (Subscriptions.hosts(), least
   * recently used first), so a restarted agent's first WatchStart asks for
   * them again and the snapshot that replaces this state still holds what its
   * workloads use. Empty in full scope and in caches written before the field.
   */
  readonly subscriptions: readonly string[];
}

export interface LoadStateOptions {
  /** Most subscriptions kept (--watch-subscriptions): the most recently used ones. */
  readonly maxSubscriptions?: number;
}

const FILE = 'state.json';

export function statePath(dataDir: string): string {
  return join(dataDir, FILE);
}

/** The file's content for `s` (the agent writes it through its Persister, which survives a full disk). */
export function serializeState(s: CachedState): string {
  return JSON.stringify({ version: 1, ...s, resources: s.resources.map((r) => ({ revision: r.metadata.revision, doc: toDocument(r) })) });
}

export function saveState(dataDir: string, s: CachedState): void {
  writeFileAtomic(statePath(dataDir), serializeState(s));
}

/** The cached state, or undefined when there is none or it is unreadable (logged; the agent then waits for the controller). */
export function loadState(dataDir: string, logger: Logger, o: LoadStateOptions = {}): CachedState | undefined {
  let text: string;
  try {
    text = readFileSync(join(dataDir, FILE), 'utf8');
  } catch {
    return undefined;
  }
  try {
    const raw = JSON.parse(text) as { version: number; revision: number; storeId?: string; resources: { revision: number; doc: unknown }[]; nodes: NodeEndpoint[]; bundlePem: string; subscriptions?: unknown };
    if (raw.version !== 1) throw new Error(`unknown cache version ${raw.version}`);
    const resources = raw.resources.map((r, i) => {
      const res = validateResource(r.doc, `${FILE}#${i + 1}`);
      return { ...res, metadata: { ...res.metadata, revision: r.revision } } as Resource;
    });
    const subscriptions = loadSubscriptions(raw.subscriptions, o.maxSubscriptions ?? DEFAULT_MAX_SUBSCRIPTIONS, logger);
    return { revision: raw.revision, storeId: typeof raw.storeId === 'string' ? raw.storeId : '', resources, nodes: raw.nodes, bundlePem: raw.bundlePem, subscriptions };
  } catch (err) {
    logger.warn({ err }, 'cached mesh state is unreadable; ignoring it');
    return undefined;
  }
}

/**
 * The followed hosts as saved, checked as the live path checks them
 * (subscriptionHost): a bad entry is dropped with a warning naming it rather
 * than losing the whole cache (the state itself is good; a dropped host is
 * only subscribed again on its next use). At most `max`, keeping the most
 * recently used (the end of the list).
 */
function loadSubscriptions(raw: unknown, max: number, logger: Logger): string[] {
  if (raw === undefined) return [];
  if (!Array.isArray(raw)) {
    logger.warn({ subscriptions: raw }, 'cached subscriptions are not a list; ignoring them');
    return [];
  }
  // Insertion order is use order: a host written twice (two spellings of one address) counts at its later, more recent place.
  const kept = new Set<string>();
  const invalid: unknown[] = [];
  for (const h of raw as unknown[]) {
    const host = typeof h === 'string' ? subscriptionHost(h) : undefined;
    if (host === undefined) invalid.push(h);
    else {
      kept.delete(host);
      kept.add(host);
    }
  }
  const hosts = [...kept];
  if (invalid.length > 0) logger.warn({ invalid }, 'cached subscriptions that are neither an IP address nor a service name; dropping them');
  if (hosts.length <= max) return hosts;
  logger.warn({ cached: hosts.length, max }, 'more cached subscriptions than --watch-subscriptions allows; keeping the most recently used');
  return hosts.slice(hosts.length - max);
}
