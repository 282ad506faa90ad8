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

/** What requiredProof needs to know besides the workload: who else could send from its address. */
export interface AddressSharing {
  /**
   * The agent's own address (--address): the host's, which every local
   * process can bind. On an agent whose address is loopback (several
   * simulated hosts on one machine), the rest of the loopback block stands
   * for other hosts' and pods' addresses.
   */
  readonly agentAddress: string;
  /** Every workload registered at an address (MeshState.workloadsAt). */
  workloadsAt(ip: string): readonly Workload[];
}

export type RequiredProof =
  /** The connection's source address is the workload's alone: it proves the workload. */
  | { readonly by: 'address' }
  /** Only the socket owner's uid proves it (/proc/net/tcp). */
  | { readonly by: 'uid'; readonly uid: number }
  /** Nothing can: the address is shared and no uid is registered. */
  | { readonly by: 'none'; readonly why: string };

/**
 * Why an address cannot tell local processes apart, or undefined when it
 * can (a pod address, routed from another network namespace, that no other
 * workload has). Any local process may bind the host's address or a
 * loopback address, and an address two workloads share names neither.
 */
export function sharedAddressReason(address: string, sharing: AddressSharing): string | undefined {
  const a = plain(address);
  if (a === plain(sharing.agentAddress)) return 'the agent\'s own (host) address';
  if (isLoopback(a) && (!isLoopback(sharing.agentAddress) || a === '127.0.0.1' || a === '::1')) return 'a loopback address';
  if (sharing.workloadsAt(a).length > 1) return 'registered by more than one workload';
  return undefined;
}

/**
 * How a local connection must prove it comes from workload `w` (SOCKS5,
 * upstream listeners): a workload with a uid, or on a shared address, is
 * proven by its socket owner's uid alone; an address proves identity only
 * where it is the workload's alone.
 */
export function requiredProof(w: Workload, sharing: AddressSharing): RequiredProof {
  if (w.spec.uid !== undefined) return { by: 'uid', uid: w.spec.uid };
  const why = sharedAddressReason(w.spec.address, sharing);
  return why === undefined ? { by: 'address' } : { by: 'none', why: `${w.spec.address} is ${why} and the workload has no uid` };
}

/** A local connection's two ends, as a net.Socket or the data plane reports them. */
export interface LocalEnds {
  readonly remoteAddress?: string;
  readonly remotePort?: number;
  readonly localAddress?: string;
  readonly localPort?: number;
}

/**
 * Is the process behind `ends` really `claimed`? Checks the proof
 * requiredProof names, and no other: the source address where it is the
 * workload's alone, else the socket owner's uid (`ownerUid` looks it up,
 * from /proc/net/tcp in the agent; called only when needed).
 */
export async function proveLocalSource(ends: LocalEnds, claimed: Workload, sharing: AddressSharing, ownerUid: () => Promise<number | undefined>): Promise<boolean> {
  const proof = requiredProof(claimed, sharing);
  if (proof.by === 'none') return false;
  if (proof.by === 'uid') return (await ownerUid()) === proof.uid;
  const remote = ends.remoteAddress ?? '';
  // Usually the same text as the registered address: no parsing needed then.
  if (remote !== '' && remote === claimed.spec.address) return true;
  // A dual-stack listener reports an IPv4 client as ::ffff:a.b.c.d.
  return canonicalIp(remote) !== undefined && plain(remote) === plain(claimed.spec.address);
}
