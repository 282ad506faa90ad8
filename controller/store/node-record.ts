import type { NodeFields, NodeRecord } from './store.ts';

/** The record of a node no store has seen yet. */
export function newNodeRecord(name: string, registeredAt: number): NodeRecord {
  return { name, registeredAt, lastSeen: 0, ackedRevision: 0, nackedRevision: 0, nackReason: '', certExpiresAt: 0, hboneAddress: '', trustedRoots: [], certificates: [] };
}

/**
 * `base` with the given fields (given ones win): the one merge every store's
 * upsertNode and upsertNodes apply. Listed field by field, copying arrays, so
 * stray keys (a `name` smuggled in) cannot change the record and the stored
 * record shares nothing with the caller's objects.
 */
export function mergeNodeRecord(name: string, base: NodeRecord, fields: NodeFields): NodeRecord {
  return {
    name,
    registeredAt: fields.registeredAt ?? base.registeredAt,
    lastSeen: fields.lastSeen ?? base.lastSeen,
    ackedRevision: fields.ackedRevision ?? base.ackedRevision,
    nackedRevision: fields.nackedRevision ?? base.nackedRevision,
    nackReason: fields.nackReason ?? base.nackReason,
    certExpiresAt: fields.certExpiresAt ?? base.certExpiresAt,
    hboneAddress: fields.hboneAddress ?? base.hboneAddress,
    trustedRoots: [...(fields.trustedRoots ?? base.trustedRoots)],
    certificates: (fields.certificates ?? base.certificates).map((c) => ({ identity: c.identity, root: c.root, notAfter: c.notAfter })),
  };
}
