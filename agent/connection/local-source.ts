import type { Workload } from '../../shared/resources/types.ts';
import { socketOwnerUid } from '../proxy/socket-owner.ts';
import { proveLocalSource, type AddressSharing } from './source-proof.ts';

/** A connection's two ends: a net.Socket, or what the native data plane reports of one. */
export interface SocketEnds {
  readonly remoteAddress?: string;
  readonly remotePort?: number;
  readonly localAddress?: string;
  readonly localPort?: number;
}

/**
 * Is the process behind `socket` really `claimed`? Without iptables the agent
 * cannot see which pod or process a connection comes from, so a name alone
 * (a SOCKS username, an upstream port) would let any local process use any
 * workload's identity. The proof required is requiredProof's
 * (connection/source-proof.ts): the socket owner's uid (read from
 * /proc/net/tcp) for a workload with a uid or on a shared address (the
 * host's, a loopback one, one several workloads have), the source address
 * only where it is the workload's alone.
 *
 * `sharing` names the agent's address and the mesh's workloads by address;
 * without it, the agent's address is taken to be the listener's (`socket`'s
 * local address: loopback-only listeners bind the agent's address when it is
 * loopback, else 127.0.0.1) and the workload to be alone at its address.
 */
export async function isSourceWorkload(socket: SocketEnds, claimed: Workload, procRoot?: string, sharing?: AddressSharing, ownerUid?: number): Promise<boolean> {
  const facts = sharing ?? { agentAddress: socket.localAddress ?? '127.0.0.1', workloadsAt: () => [claimed] };
  // The data plane asks the kernel for the client socket's owner (sock_diag);
  // /proc/net/tcp is read only when it could not.
  if (ownerUid !== undefined) return proveLocalSource(socket, claimed, facts, () => Promise.resolve(ownerUid));
  return proveLocalSource(socket, claimed, facts, () => socketOwnerUid(
    { address: socket.remoteAddress ?? '', port: socket.remotePort ?? 0 },
    { address: socket.localAddress ?? '', port: socket.localPort ?? 0 },
    procRoot,
  ));
}
