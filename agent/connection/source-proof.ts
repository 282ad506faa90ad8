/**
 * Source proof: what the agent believes about where a connection comes from.
 * Pure (no sockets, no I/O): the data paths hand in what they saw and act on
 * the verdict.
 *
 * Two questions, one per direction:
 *  - inbound (verifyClaimedSource): a peer agent's CONNECT says `Forwarded:
 *    for=<address>`; the address counts only when it is a workload with the
 *    peer certificate's identity, on a node whose address is the HBONE peer's;
 *  - outbound (requiredProof): a local process says it is a workload (SOCKS5
 *    user, upstream listener port); which fact about its socket proves it.
 */
import { canonicalIp, parseIp } from '../../shared/net-address.ts';
import type { Workload } from '../../shared/resources/types.ts';

/** What verifyClaimedSource reads of the mesh state (MeshState satisfies it). */
export interface SourceDirectory {
  workloadsAt(ip: string): readonly Workload[];
  identityOf(w: Workload): { readonly uri: string };
  /** The node's HBONE address "host:port" as it reported it, if known. */
  hboneAddressOf(node: string): string | undefined;
}

/** The verified side of an HBONE stream: the peer certificate's identity and the TCP peer address. */
export interface HbonePeer {
  readonly identityUri: string;
  readonly remoteAddress: string;
}

export type ClaimVerdict =
  /** address undefined: nothing was claimed, so policy sees no source address. */
  | { readonly ok: true; readonly address: string | undefined; readonly workload: Workload | undefined }
  | { readonly ok: false; readonly reason: 'unverified_source_address'; readonly detail: string };

/** The IP of an "ip:port" / "[v6]:port" / bare-IP text, canonical; undefined when it is no IP. */
function hostOf(hostPort: string): string | undefined {
  const bare = canonicalIp(hostPort);
  if (bare !== undefined) return bare;
  const m = /^\[([^\]]+)\]:\d+$/.exec(hostPort) ?? /^([^:]+):\d+$/.exec(hostPort);
  return m?.[1] === undefined ? undefined : canonicalIp(m[1]);
}

/** a.b.c.d, ::ffff:a.b.c.d → a.b.c.d; others as canonical. */
function plain(ip: string): string {
  const c = canonicalIp(ip) ?? ip;
  return c.startsWith('::ffff:') && c.includes('.') ? c.slice('::ffff:'.length) : c;
}

export function isLoopback(ip: string): boolean {
  const p = parseIp(plain(ip));
  if (p === undefined) return false;
  if (p.family === 4) return p.bytes[0] === 127;
  return p.bytes.subarray(0, 15).every((b) => b === 0) && p.bytes[15] === 1;
}

/**
 * Is `peer` (the TCP peer of an HBONE connection) the agent of a node at
 * `nodeAddress`? The same address, or both loopback: a connection from a
 * loopback address comes from this machine, and agents run on loopback
 * addresses (several simulated hosts on one machine) dial from 127.0.0.1,
 * the kernel's source address for the whole loopback block.
 */
function sameHost(nodeAddress: string, peer: string): boolean {
  const a = plain(nodeAddress), b = plain(peer);
  return a === b || (isLoopback(a) && isLoopback(b));
}

/**
 * Whether a peer agent's `Forwarded: for=` claim may be believed. A peer
 * holding a valid workload certificate could otherwise name any address and
 * pass an `ipBlocks` ALLOW or evade an `ipBlocks` DENY. The claim stands only
 * when some workload registered at that address has the certificate's
 * identity and runs on a node whose agent is the HBONE peer (where the
 * node's address is known). No claim is no address: policy then sees none,
 * so no `ipBlocks` ALLOW can match.
 */
export function verifyClaimedSource(dir: SourceDirectory, claimed: string | undefined, peer: HbonePeer): ClaimVerdict {
  if (claimed === undefined) return { ok: true, address: undefined, workload: undefined };
  const owners = dir.workloadsAt(claimed).filter((w) => dir.identityOf(w).uri === peer.identityUri);
  if (owners.length === 0) {
    return { ok: false, reason: 'unverified_source_address', detail: `${claimed} is not an address of a workload with identity ${peer.identityUri}` };
  }
  for (const w of owners) {
    const hbone = dir.hboneAddressOf(w.spec.node);
    const nodeAddress = hbone === undefined ? undefined : hostOf(hbone);
    if (nodeAddress === undefined || sameHost(nodeAddress, peer.remoteAddress)) return { ok: true, address: claimed, workload: w };
  }
  return { ok: false, reason: 'unverified_source_address', detail: `${claimed} belongs to ${peer.identityUri} on node ${owners[0]!.spec.node}, not at the HBONE peer ${peer.remoteAddress}` };
}
