import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import type { Logger } from '../../shared/logger.ts';
import { listenOn } from '../../shared/listen.ts';
import { canonicalIp } from '../../shared/net-address.ts';
import type { Workload } from '../../shared/resources/types.ts';
import type { UpstreamListener } from '../config.ts';
import type { MeshState } from '../state/mesh-state.ts';
import type { AgentMetrics } from './metrics.ts';
import { handleOutbound, type OutboundDeps, type OutboundFailure } from './outbound.ts';
import { socketOwnerUid } from './socket-owner.ts';
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
 * workload's identity. A connection proves itself by coming from the
 * workload's registered address, or from a process running as its registered
 * uid (read from /proc/net/tcp).
 */
export async function isSourceWorkload(socket: SocketEnds, claimed: Workload, procRoot?: string): Promise<boolean> {
  const remote = socket.remoteAddress ?? '';
  // Usually the same text as the registered address: no parsing needed then.
  if (remote !== '' && remote === claimed.spec.address) return true;
  const from = canonicalIp(remote);
  if (from !== undefined && from === canonicalIp(claimed.spec.address)) return true;
  if (claimed.spec.uid === undefined) return false;
  const uid = await socketOwnerUid(
    { address: socket.remoteAddress ?? '', port: socket.remotePort ?? 0 },
    { address: socket.localAddress ?? '', port: socket.localPort ?? 0 },
    procRoot,
  );
  return uid === claimed.spec.uid;
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
      if (!source || !(await isSourceWorkload(socket, source, d.procRoot))) {
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
      if (!source || !(await isSourceWorkload(socket, source, d.procRoot))) {
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
