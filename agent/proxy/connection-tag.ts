import type { Logger } from '../../shared/logger.ts';
import { parseSpiffeId } from '../../shared/spiffe-id.ts';
import type { ConnectionFacts } from '../../shared/authorization.ts';
import type { MeshState } from '../state/mesh-state.ts';
import { ConnectionRecord, type Direction, type Peer } from './connection-record.ts';
import type { AgentMetrics } from './metrics.ts';

/**
 * What the agent tells ambit-dataplane about a connection it admits or
 * routes, and gets back from it when it attaches again after a restart
 * (dataplane/src/core.rs): enough to go on recording the connection (its
 * access-log line, metrics) and, inbound, to re-check it against policy.
 * Opaque to the data plane. Version 1.
 */
interface Tag {
  readonly v: 1;
  readonly d: Direction;
  readonly src: Peer;
  readonly dst: Peer;
  readonly svc: string;
  readonly sec: 'mutual_tls' | 'none';
  readonly at: number;
  readonly trace: string;
  /** Inbound: what authorization re-checks (the destination by namespace/name). */
  readonly facts?: { readonly id?: string; readonly addr?: string; readonly ns: string; readonly name: string; readonly port: number; readonly http?: true };
}

export function connectionTag(record: ConnectionRecord, facts?: ConnectionFacts): string {
  const tag: Tag = {
    v: 1, d: record.direction, src: record.src, dst: record.dst, svc: record.service, sec: record.security, at: record.startedAt, trace: record.traceId,
    ...(facts ? { facts: { id: facts.sourceIdentity?.uri, addr: facts.sourceAddress, ns: facts.destination.metadata.namespace, name: facts.destination.metadata.name, port: facts.destinationPort, ...(facts.httpPort ? { http: true as const } : {}) } } : {}),
  };
  return JSON.stringify(tag);
}

/**
 * The record (and, inbound, the facts) of a connection from its tag; a tag
 * that cannot be read gives a record of unknown peers, so the connection is
 * still counted and logged.
 */
export function fromConnectionTag(text: string, direction: Direction, d: { readonly metrics: AgentMetrics; readonly log: Logger; readonly state: MeshState }): { record: ConnectionRecord; facts?: ConnectionFacts } {
  let tag: Tag | undefined;
  try {
    const parsed = JSON.parse(text) as Tag;
    if (parsed?.v === 1) tag = parsed;
  } catch {
    tag = undefined;
  }
  const unknown: Peer = { addr: '', workload: 'unknown', namespace: 'unknown', identity: 'unknown' };
  const record = new ConnectionRecord({
    direction: tag?.d ?? direction, src: tag?.src ?? unknown, dst: tag?.dst ?? unknown, service: tag?.svc ?? '', security: tag?.sec ?? 'mutual_tls',
    metrics: d.metrics, log: d.log, startedAt: tag?.at,
  });
  record.setSpan(undefined, tag?.trace ?? '');
  const f = tag?.facts;
  const destination = f ? d.state.localWorkloadByName(f.ns, f.name) : undefined;
  if (!f || !destination) return { record };
  let sourceIdentity;
  try {
    sourceIdentity = f.id ? parseSpiffeId(f.id) : undefined;
  } catch {
    sourceIdentity = undefined;
  }
  return { record, facts: { sourceIdentity, sourceAddress: f.addr, destination, destinationPort: f.port, httpPort: f.http === true } };
}
