import { AmbitError } from '../../shared/errors.ts';
import type { IssuedCertificateRecord, NodeRecord } from '../store/store.ts';
import type { RotationState } from './authority.ts';

/**
 * Whether the next phase of a CA root rotation is safe, from what the
 * controller knows of every node: the trust bundle its agent acknowledged
 * (WatchAck.trusted_roots) and the latest certificate issued to it per
 * identity, with the root it chains to. Pure: the admin API and tests feed it.
 *
 * - activate is safe once every node in use trusts every root of the bundle:
 *   an agent that does not yet trust the new root would refuse the peers'
 *   certificates the new root is about to sign.
 * - retire is safe once every node in use trusts the active root and no live
 *   certificate (of an identity the node still holds) chains to an old root:
 *   after retire such a certificate no longer verifies anywhere.
 *
 * A node is "in use" while a certificate it holds is still valid; a node
 * whose certificates all expired cannot talk to anyone and blocks nothing.
 */
export interface RotationInput {
  readonly state: RotationState;
  /** Fingerprints of the roots in the current bundle. */
  readonly bundle: readonly string[];
  /** Fingerprint of the root that signs. */
  readonly active: string;
  readonly nodes: readonly NodeRecord[];
  /** May the node still hold this identity (its node identity, or a workload scheduled on it)? */
  readonly holds: (node: string, identity: string) => boolean;
  readonly now: number;
}

export interface NodeRotationView {
  /** The agent acknowledged exactly the roots of the current bundle. */
  readonly bundleCurrent: boolean;
  /** The agent acknowledged every root of the current bundle (possibly more). */
  readonly trustsBundle: boolean;
  readonly trustsActive: boolean;
  /** Live certificates that chain to a bundle root other than the active one. */
  readonly oldCertificates: number;
  readonly oldUntil: number;
  readonly inUse: boolean;
}

export interface RotationStatus {
  readonly state: RotationState;
  readonly nodesWithoutBundle: readonly string[];
  readonly oldCertificates: number;
  readonly nodesWithOldCertificates: readonly string[];
  readonly oldUntil: number;
  readonly safeToActivate: boolean;
  readonly safeToRetire: boolean;
  /** Why the next phase is not safe; '' when it is (or there is none). */
  readonly blocking: string;
  readonly byNode: ReadonlyMap<string, NodeRotationView>;
}

const short = (fp: string): string => `${fp.slice(0, 16)}…`;

/** "node-a, node-b and 3 more" */
function names(list: readonly string[], max = 5): string {
  return list.length <= max ? list.join(', ') : `${list.slice(0, max).join(', ')} and ${list.length - max} more`;
}

const plural = (n: number, one: string, many: string): string => `${n} ${n === 1 ? one : many}`;

function nodeView(n: NodeRecord, i: RotationInput): NodeRotationView {
  const trusted = new Set(n.trustedRoots);
  const live = (c: IssuedCertificateRecord): boolean => c.notAfter > i.now && i.holds(n.name, c.identity);
  const held = n.certificates.filter(live);
  // Nodes from before certificates were recorded: their reported earliest expiry is all there is.
  const inUse = n.certificates.length > 0 ? held.length > 0 : n.certExpiresAt > i.now;
  const old = held.filter((c) => c.root !== i.active && i.bundle.includes(c.root));
  return {
    bundleCurrent: trusted.size === i.bundle.length && i.bundle.every((fp) => trusted.has(fp)),
    trustsBundle: i.bundle.every((fp) => trusted.has(fp)),
    trustsActive: trusted.has(i.active),
    oldCertificates: old.length,
    oldUntil: old.reduce((max, c) => Math.max(max, c.notAfter), 0),
    inUse,
  };
}

export function rotationStatus(i: RotationInput): RotationStatus {
  const byNode = new Map(i.nodes.map((n) => [n.name, nodeView(n, i)] as const));
  const inUse = [...byNode].filter(([, v]) => v.inUse);
  const nodesWithoutBundle = inUse.filter(([, v]) => !v.trustsBundle).map(([name]) => name);
  const withoutActive = inUse.filter(([, v]) => !v.trustsActive).map(([name]) => name);
  const withOld = inUse.filter(([, v]) => v.oldCertificates > 0);
  const oldCertificates = withOld.reduce((sum, [, v]) => sum + v.oldCertificates, 0);
  const oldUntil = withOld.reduce((max, [, v]) => Math.max(max, v.oldUntil), 0);
  // Nodes with no certificate records at all (joined before this release) cannot be judged.
  const unknown = inUse.filter(([name]) => i.nodes.find((n) => n.name === name)!.certificates.length === 0).map(([name]) => name);

  const safeToActivate = i.state === 'prepared' && nodesWithoutBundle.length === 0;
  const safeToRetire = i.state === 'activated' && withoutActive.length === 0 && oldCertificates === 0 && unknown.length === 0;
  let blocking = '';
  if (i.state === 'prepared' && !safeToActivate) {
    blocking = `${plural(nodesWithoutBundle.length, 'node has', 'nodes have')} not acknowledged the trust bundle holding the new root (${names(nodesWithoutBundle)}): their agents would refuse certificates the new root signs`;
  } else if (i.state === 'activated' && !safeToRetire) {
    const why: string[] = [];
    if (oldCertificates > 0) {
      why.push(`${plural(oldCertificates, 'live certificate', 'live certificates')} on ${plural(withOld.length, 'node', 'nodes')} (${names(withOld.map(([name]) => name))}) still chain to the old root, the last valid until ${new Date(oldUntil).toISOString()}`);
    }
    if (withoutActive.length > 0) {
      why.push(`${plural(withoutActive.length, 'node has', 'nodes have')} not acknowledged a trust bundle holding the active root (${names(withoutActive)})`);
    }
    if (unknown.length > 0) {
      why.push(`${plural(unknown.length, 'node has', 'nodes have')} no certificate records to check (${names(unknown)}; they joined before this controller recorded issued certificates)`);
    }
    blocking = why.join('; ');
  }
  return { state: i.state, nodesWithoutBundle, oldCertificates, nodesWithOldCertificates: withOld.map(([name]) => name), oldUntil, safeToActivate, safeToRetire, blocking, byNode };
}

/**
 * Throws AMBIT_ERR_CA_ROTATION_UNSAFE when `phase` would strand a node now.
 * Only the phase that is next is judged; out-of-order phases are refused by
 * the CA itself (AMBIT_ERR_CA_LOAD).
 */
export function assertRotationSafe(phase: 'activate' | 'retire', s: RotationStatus, i: Pick<RotationInput, 'bundle' | 'active'>): void {
  if (phase === 'activate' && s.state === 'prepared' && !s.safeToActivate) {
    const next = i.bundle.find((fp) => fp !== i.active) ?? '';
    throw new AmbitError('AMBIT_ERR_CA_ROTATION_UNSAFE', `refusing to activate root ${short(next)}: ${s.blocking}. Wait until every node shows BUNDLE current in "ambitctl node list", or pass --force`, {
      details: { phase, nodesWithoutBundle: [...s.nodesWithoutBundle] },
    });
  }
  if (phase === 'retire' && s.state === 'activated' && !s.safeToRetire) {
    const old = i.bundle.filter((fp) => fp !== i.active);
    throw new AmbitError('AMBIT_ERR_CA_ROTATION_UNSAFE', `refusing to retire root ${old.map(short).join(', ')}: ${s.blocking}. Wait ("ambitctl ca show" shows the progress), or pass --force`, {
      details: {
        phase,
        oldCertificates: s.oldCertificates,
        nodesWithOldCertificates: [...s.nodesWithOldCertificates],
        oldCertificatesUntil: s.oldUntil > 0 ? new Date(s.oldUntil).toISOString() : '',
        nodesWithoutBundle: [...s.nodesWithoutBundle],
      },
    });
  }
}
