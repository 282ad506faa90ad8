import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import type { Logger } from '../../shared/logger.ts';
import { listenOn } from '../../shared/listen.ts';
import type { Workload } from '../../shared/resources/types.ts';
import type { UpstreamListener } from '../config.ts';
import type { MeshState } from '../state/mesh-state.ts';
import type { AgentMetrics } from './metrics.ts';
import { handleOutbound, type OutboundDeps, type OutboundFailure } from './outbound.ts';
import { socketOwnerUid } from './socket-owner.ts';
import { proveLocalSource, type AddressSharing } from '../connection/source-proof.ts';
import { acceptSocks5, sendSocksReply, SOCKS_REPLY } from './socks5.ts';

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
export async function isSourceWorkload(socket: SocketEnds, claimed: Workload, procRoot?: string, sharing?: AddressSharing): Promise<boolean> {
  const facts = sharing ?? { agentAddress: socket.localAddress ?? '127.0.0.1', workloadsAt: () => [claimed] };
  return proveLocalSource(socket, claimed, facts, () => socketOwnerUid(
    { address: socket.remoteAddress ?? '', port: socket.remotePort ?? 0 },
    { address: socket.localAddress ?? '', port: socket.localPort ?? 0 },
    procRoot,
  ));
}

function sharingOf(d: ExplicitDeps, socket: SocketEnds): AddressSharing {
  return { agentAddress: d.agentAddress ?? socket.localAddress ?? '127.0.0.1', workloadsAt: (ip) => d.state.workloadsAt(ip) };
}

const SOCKS_REPLY_OF: Record<OutboundFailure, number> = {
  denied: SOCKS_REPLY.notAllowed,
  passthrough_denied: SOCKS_REPLY.notAllowed,
  no_route: SOCKS_REPLY.hostUnreachable,
  unreachable: SOCKS_REPLY.hostUnreachable,
  refused: SOCKS_REPLY.connectionRefused,
};

export interface ExplicitDeps {
  readonly state: MeshState;
  readonly outbound: OutboundDeps;
  readonly metrics: AgentMetrics;
  readonly logger: Logger;
  readonly handshakeTimeoutMs: number;
  readonly procRoot?: string;
  /** The agent's --address, for the source proof (requiredProof); default: the listener's address. */
  readonly agentAddress?: string;
}


/**
 * SOCKS5 on loopback (DESIGN §3 explicit mode): the username names the source
 * workload as "namespace/name"; the tunnel's outcome is the SOCKS reply, so
 * the application sees a refused connection as a failed CONNECT.
 */
export function socksServer(d: ExplicitDeps): { server: Server; listen: (host: string, port: number) => Promise<AddressInfo> } {
  const server = createServer({ allowHalfOpen: true, pauseOnConnect: false }, (socket) => {
    socket.setNoDelay(true);
    socket.on('error', () => undefined);
    void (async () => {
      let req;
      try {
        req = await acceptSocks5(socket, { authRequired: true, timeoutMs: d.handshakeTimeoutMs });
      } catch (err) {
        d.metrics.refused.inc({ direction: 'outbound', reason: 'socks_protocol' });
        d.logger.debug({ err: (err as Error).message, peer: socket.remoteAddress }, 'SOCKS5 negotiation failed');
        return;
      }
      const [ns, name] = (req.username ?? '').split('/');
      const source = ns && name ? d.state.localWorkloadByName(ns, name) : undefined;
      if (!source || !(await isSourceWorkload(socket, source, d.procRoot, sharingOf(d, socket)))) {
        d.metrics.refused.inc({ direction: 'outbound', reason: 'source_not_verified' });
        d.logger.warn({ user: req.username, peer: socket.remoteAddress }, 'SOCKS5 client is not the workload it names; refused');
        sendSocksReply(socket, SOCKS_REPLY.notAllowed);
        socket.end();
        return;
      }
      await handleOutbound(d.outbound, {
        client: socket,
        source,
        host: req.host,
        port: req.port,
        ready: (failure) => {
          if (failure) {
            sendSocksReply(socket, SOCKS_REPLY_OF[failure]);
            socket.end();
          } else {
            sendSocksReply(socket, SOCKS_REPLY.succeeded);
          }
        },
      });
    })();
  });
  return { server, listen: (host, port) => listenOn(server, host, port) };
}

/**
 * An upstream listener (Consul-style): connections to host:localPort are the
 * named workload's connections to a fixed destination. A failed tunnel resets
 * the client's connection.
 */
export function upstreamServer(d: ExplicitDeps, u: UpstreamListener): { server: Server; listen: (host: string) => Promise<AddressInfo> } {
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    socket.setNoDelay(true);
    socket.on('error', () => undefined);
    // Hold incoming bytes until the tunnel is open; nothing is lost, back-pressure applies.
    socket.pause();
    void (async () => {
      const source = d.state.localWorkloadByName(u.namespace, u.workload);
      if (!source || !(await isSourceWorkload(socket, source, d.procRoot, sharingOf(d, socket)))) {
        d.metrics.refused.inc({ direction: 'outbound', reason: 'source_not_verified' });
        d.logger.warn({ workload: `${u.namespace}/${u.workload}`, peer: socket.remoteAddress, port: u.localPort }, 'upstream client is not the workload the listener belongs to; refused');
        socket.resetAndDestroy();
        return;
      }
      await handleOutbound(d.outbound, {
        client: socket,
        source,
        host: u.destination.host,
        port: u.destination.port,
        ready: (failure) => {
          if (failure) socket.resetAndDestroy();
          else socket.resume();
        },
      });
    })();
  });
  return { server, listen: (host) => listenOn(server, host, u.localPort) };
}
