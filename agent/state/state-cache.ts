import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../../shared/files.ts';
import { toDocument, validateResource } from '../../shared/resources/validate.ts';
import type { Resource } from '../../shared/resources/types.ts';
import type { Logger } from '../../shared/logger.ts';
import type { NodeEndpoint } from './mesh-state.ts';

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
export function loadState(dataDir: string, logger: Logger): CachedState | undefined {
  let text: string;
  try {
    text = readFileSync(join(dataDir, FILE), 'utf8');
  } catch {
    return undefined;
  }
  try {
    const raw = JSON.parse(text) as { version: number; revision: number; storeId?: string; resources: { revision: number; doc: unknown }[]; nodes: NodeEndpoint[]; bundlePem: string };
    if (raw.version !== 1) throw new Error(`unknown cache version ${raw.version}`);
    const resources = raw.resources.map((r, i) => {
      const res = validateResource(r.doc, `${FILE}#${i + 1}`);
      return { ...res, metadata: { ...res.metadata, revision: r.revision } } as Resource;
    });
    return { revision: raw.revision, storeId: typeof raw.storeId === 'string' ? raw.storeId : '', resources, nodes: raw.nodes, bundlePem: raw.bundlePem };
  } catch (err) {
    logger.warn({ err }, 'cached mesh state is unreadable; ignoring it');
    return undefined;
  }
}
