import { isDeepStrictEqual } from 'node:util';
import { resourceKey } from '../../../shared/resources/types.ts';
import type { Change, Kind, Resource, ResourceKey } from '../../../shared/resources/types.ts';

/** Equal apart from the store revision: a re-derived resource that matches needs no commit. */
export function sameContent(a: Resource, b: Resource): boolean {
  return isDeepStrictEqual({ ...a, metadata: { ...a.metadata, revision: 0 } }, { ...b, metadata: { ...b.metadata, revision: 0 } });
}

export function parseKey(key: string): ResourceKey {
  const [kind, namespace, name] = key.split('/') as [Kind, string, string];
  return { kind, namespace, name };
}

/**
 * The changes that turn `current` into `desired` for the keys `desired`
 * names (undefined: must not exist). Keys not named are left alone, so a
 * caller re-derives only what an event touched. Unchanged content yields no
 * change, which is what keeps a re-list from flapping anything. Ordered by
 * key, so equal inputs give equal change sets.
 */
export function diffResources(current: ReadonlyMap<string, Resource>, desired: ReadonlyMap<string, Resource | undefined>): Change[] {
  const changes: Change[] = [];
  for (const key of [...desired.keys()].sort()) {
    const want = desired.get(key);
    const have = current.get(key);
    if (want === undefined) {
      if (have !== undefined) changes.push({ op: 'delete', key: parseKey(key) });
    } else if (have === undefined || !sameContent(have, want)) {
      if (resourceKey(want) !== key) throw new Error(`derived ${resourceKey(want)} under key ${key}`);
      changes.push({ op: 'put', resource: want });
    }
  }
  return changes;
}
