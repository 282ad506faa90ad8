import { canonicalIp } from '../../shared/net-address.ts';
import type { Workload } from '../../shared/resources/types.ts';
import type { UpstreamListener } from '../config.ts';
import type { MeshState } from '../state/mesh-state.ts';
import type { RefusalReason } from './refusals.ts';
import { isSourceWorkload } from './local-source.ts';
import { socketOwnerUid } from '../proxy/socket-owner.ts';

/**
 * The outbound entry points ambit-dataplane serves for local workloads, and
 * what each tells about a connection's source and destination:
 * - `upstream` (an upstream listener, `--upstreams`): the listener names the
 *   workload and the destination;
 * - `socks5` (:15080): the SOCKS username names the workload
 *   (`namespace/name`), the request the destination;
 * - `capture` (:15001, transparent): iptables redirected the connection;
 *   the original destination is the destination, and the source is found
 *   by pod address or socket owner uid.
 * Naming a workload is never enough: the connection must prove it
 * (isSourceWorkload).
 */
export type OutboundEntry =
  | { readonly kind: 'upstream'; readonly upstream: UpstreamListener }
  | { readonly kind: 'socks5' }
  | { readonly kind: 'capture'; readonly captureMode: 'vm' | 'pod' };

export interface Endpoint {
  readonly address: string;
  readonly port: number;
}

/** What the data plane reports of an accepted outbound connection. */
export interface OutboundArrival {
  readonly remote: Endpoint;
  readonly local: Endpoint;
  /** SOCKS5: the username. */
  readonly user?: string;
  /** SOCKS5: the requested destination; capture: the original destination (empty when there was none). */
  readonly destination?: Endpoint;
  /** Capture: why the original destination could not be read. */
  readonly destinationError?: string;
  /** The uid owning the client's socket, when the data plane could ask the kernel (a client on this host). */
  readonly ownerUid?: number;
}

/** Registered reasons (connection/refusals.ts) a source can be refused for. */
export type SourceRefusal = Extract<RefusalReason, 'source_not_verified' | 'unknown_source' | 'no_original_destination' | 'loop'>;

export type SourceVerdict =
  | { readonly ok: true; readonly source: Workload; readonly destination: Endpoint }
  | { readonly ok: false; readonly reason: SourceRefusal; readonly detail: string };

export interface SourceDeps {
  readonly state: MeshState;
  /** The agent's --address: a workload registered at it shares it with the host (requiredProof). */
  readonly agentAddress: string;
  /** Where /proc is (tests point it elsewhere). */
  readonly procRoot?: string;
}

const refused = (reason: SourceRefusal, detail: string): SourceVerdict => ({ ok: false, reason, detail });

/** Which local workload an outbound connection comes from, proven, and where it goes. */
export async function resolveOutboundSource(d: SourceDeps, entry: OutboundEntry, a: OutboundArrival): Promise<SourceVerdict> {
  const ends = { remoteAddress: a.remote.address, remotePort: a.remote.port, localAddress: a.local.address, localPort: a.local.port };
  const sharing = { agentAddress: d.agentAddress, workloadsAt: (ip: string) => d.state.workloadsAt(ip) };
  switch (entry.kind) {
    case 'upstream': {
      const u = entry.upstream;
      const source = d.state.localWorkloadByName(u.namespace, u.workload);
      if (!source || !(await isSourceWorkload(ends, source, d.procRoot, sharing, a.ownerUid))) {
        return refused('source_not_verified', `client ${a.remote.address}:${a.remote.port} is not ${u.namespace}/${u.workload}, whose upstream listener it used`);
      }
      return { ok: true, source, destination: { address: u.destination.host, port: u.destination.port } };
    }
    case 'socks5': {
      const [ns, name, extra] = (a.user ?? '').split('/');
      const source = ns && name && extra === undefined ? d.state.localWorkloadByName(ns, name) : undefined;
      if (!source || !a.destination || !(await isSourceWorkload(ends, source, d.procRoot, sharing, a.ownerUid))) {
        return refused('source_not_verified', `SOCKS5 client ${a.remote.address}:${a.remote.port} is not the workload it names (${JSON.stringify(a.user ?? '')})`);
      }
      return { ok: true, source, destination: a.destination };
    }
    case 'capture': {
      const dst = a.destination;
      if (!dst || dst.address === '') return refused('no_original_destination', `captured connection from ${a.remote.address}:${a.remote.port} has no original destination (${a.destinationError || 'not redirected'})`);
      // Someone dialled the capture port itself: the agent would dial itself.
      if (canonicalIp(dst.address) === canonicalIp(a.local.address) && dst.port === a.local.port) return refused('loop', `connection to the capture port ${a.local.address}:${a.local.port} itself`);
      const source = await captureSource(d, entry.captureMode, a.remote, dst, a.ownerUid);
      if (!source) return refused('unknown_source', `captured connection from ${a.remote.address}:${a.remote.port} to ${dst.address}:${dst.port} is from no known local workload`);
      return { ok: true, source, destination: dst };
    }
  }
}

/** Pod mode: the pod's own address (capture only redirects registered pods); VM mode: the socket owner's uid. */
async function captureSource(d: SourceDeps, mode: 'vm' | 'pod', remote: Endpoint, dst: Endpoint, ownerUid: number | undefined): Promise<Workload | undefined> {
  if (mode === 'pod') {
    const w = d.state.workloadByAddress(remote.address);
    return w && w.spec.node === d.state.node ? w : undefined;
  }
  // REDIRECT kept the client's socket connected to the original destination, so that is its peer in /proc/net/tcp.
  const uid = ownerUid ?? await socketOwnerUid(remote, dst, d.procRoot);
  if (uid === undefined) return undefined;
  return d.state.localWorkloads().find((w) => w.spec.uid === uid);
}
