import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import type { Logger } from '../../shared/logger.ts';
import { listenOn } from '../../shared/listen.ts';
import { canonicalIp } from '../../shared/net-address.ts';
import { SpanKind, startConnectionSpan, type Tracer } from '../../shared/tracing.ts';
import type { Workload } from '../../shared/resources/types.ts';
import type { MeshState } from '../state/mesh-state.ts';
import { ConnectionRecord, UNKNOWN_PEER } from './connection-record.ts';
import type { ConnectionTracker } from './connection-tracker.ts';
import type { AgentMetrics } from './metrics.ts';
import type { OriginalDestination } from './original-dst.ts';
import { handleOutbound, type OutboundDeps } from './outbound.ts';
import { relay } from './relay.ts';
import { socketOwnerUid } from './socket-owner.ts';

export interface CaptureListenerDeps {
  readonly state: MeshState;
  readonly metrics: AgentMetrics;
  readonly logger: Logger;
  readonly originalDestination: (socket: Socket) => OriginalDestination;
  /** vm: the source workload is found by socket owner uid; pod: by source address. */
  readonly captureMode: 'vm' | 'pod';
}


/** Direct connections to a capture port (not redirected) would have the agent dial itself. */
function isLoop(socket: Socket, dst: OriginalDestination): boolean {
  return canonicalIp(dst.address) === canonicalIp(socket.localAddress ?? '') && dst.port === socket.localPort;
}

/** The local workload behind a captured outbound connection. */
async function sourceWorkload(d: CaptureListenerDeps, socket: Socket, dst: OriginalDestination): Promise<Workload | undefined> {
  if (d.captureMode === 'pod') {
    const w = d.state.workloadByAddress(socket.remoteAddress ?? '');
    return w && w.spec.node === d.state.node ? w : undefined;
  }
  // REDIRECT kept the client's socket connected to the original destination, so that is its peer in /proc/net/tcp.
  const uid = await socketOwnerUid({ address: socket.remoteAddress ?? '', port: socket.remotePort ?? 0 }, { address: dst.address, port: dst.port });
  if (uid === undefined) return undefined;
  return d.state.localWorkloads().find((w) => w.spec.uid === uid);
}

/**
 * :15001, transparent outbound (DESIGN §3 Capture): iptables redirected a
 * workload's connection here; the original destination comes from
 * SO_ORIGINAL_DST, the source workload from the pod address or the socket
 * owner's uid. Then it is an ordinary outbound connection.
 */
export function outboundCaptureServer(d: CaptureListenerDeps, outbound: OutboundDeps): { server: Server; listen: (host: string, port: number) => Promise<AddressInfo> } {
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    socket.setNoDelay(true);
    socket.on('error', () => undefined);
    socket.pause();
    void (async () => {
      let dst: OriginalDestination;
      try {
        dst = d.originalDestination(socket);
      } catch (err) {
        d.metrics.refused.inc({ direction: 'outbound', reason: 'no_original_destination' });
        d.logger.warn({ err: (err as Error).message, peer: socket.remoteAddress }, 'captured connection without an original destination; reset');
        return socket.resetAndDestroy();
      }
      if (isLoop(socket, dst)) {
        d.metrics.refused.inc({ direction: 'outbound', reason: 'loop' });
        return socket.resetAndDestroy();
      }
      const source = await sourceWorkload(d, socket, dst);
      if (!source) {
        d.metrics.refused.inc({ direction: 'outbound', reason: 'unknown_source' });
        d.logger.warn({ peer: `${socket.remoteAddress}:${socket.remotePort}`, dst: `${dst.address}:${dst.port}` }, 'captured connection from no known local workload; reset');
        return socket.resetAndDestroy();
      }
      await handleOutbound(outbound, {
        client: socket,
        source,
        host: dst.address,
        port: dst.port,
        ready: (failure) => (failure ? socket.resetAndDestroy() : socket.resume()),
      });
    })();
  });
  return { server, listen: (host, port) => listenOn(server, host, port) };
}

export interface PlaintextDeps extends CaptureListenerDeps {
  readonly mode: 'strict' | 'permissive';
  readonly accessLog: Logger;
  readonly tracer: Tracer;
  readonly tracker: ConnectionTracker;
  readonly connectTimeoutMs: number;
}

/**
 * :15006, inbound plaintext to a captured local workload. Strict mode refuses
 * it (mTLS only); permissive mode lets it through when policy allows a
 * connection without identity (rules naming principals or namespaces never
 * match plaintext), reported as connection_security_policy "none".
 */
export function inboundPlaintextServer(d: PlaintextDeps): { server: Server; listen: (host: string, port: number) => Promise<AddressInfo> } {
  const server = createServer({ allowHalfOpen: true }, (client) => {
    client.setNoDelay(true);
    client.on('error', () => undefined);
    client.pause();
    const srcAddr = client.remoteAddress ?? '';
    const record = new ConnectionRecord({ direction: 'inbound', src: { ...UNKNOWN_PEER, addr: srcAddr, identity: '' }, dst: UNKNOWN_PEER, service: '', security: 'none', metrics: d.metrics, log: d.accessLog });
    const span = startConnectionSpan(d.tracer, 'ambit.inbound.plaintext', SpanKind.SERVER, undefined, { 'ambit.source.address': srcAddr });
    record.setSpan(span.span, span.context.traceId);
    const refuse = (reason: string, flags: string): void => {
      d.metrics.refused.inc({ direction: 'inbound', reason });
      client.resetAndDestroy();
      record.finish(reason, flags);
    };
    let dst: OriginalDestination;
    try {
      dst = d.originalDestination(client);
    } catch {
      return refuse('no_original_destination', 'NR');
    }
    if (isLoop(client, dst)) return refuse('loop', 'NR');
    const w = d.state.localWorkloadAt(dst.address, dst.port);
    if (!w) return refuse('not_a_local_workload', 'NR');
    record.dst = { addr: `${dst.address}:${dst.port}`, workload: w.metadata.name, namespace: w.metadata.namespace, identity: d.state.identityOf(w).uri };
    record.service = d.state.serviceNameFor(w, dst.port);
    if (d.mode === 'strict') return refuse('plaintext_refused_strict_mode', 'DENY');
    const facts = { sourceIdentity: undefined, sourceAddress: srcAddr, destination: w, destinationPort: dst.port };
    const decision = d.state.authorizer.evaluate(facts);
    if (!decision.allowed) {
      d.metrics.denials.inc({ direction: 'inbound', policy: decision.policy ?? '', reason: decision.reason });
      return refuse(`denied: ${decision.reason}${decision.policy ? ` by ${decision.policy}` : ''}`, 'DENY');
    }
    const upstream = connect({ host: w.spec.address, port: dst.port, allowHalfOpen: true, noDelay: true });
    upstream.setTimeout(d.connectTimeoutMs, () => upstream.destroy(Object.assign(new Error('connect timeout'), { code: 'ETIMEDOUT' })));
    let resolveDone: () => void = () => undefined;
    const done = new Promise<void>((r) => (resolveDone = r));
    d.tracker.add({ direction: 'inbound', facts, close: (reason, flags) => { record.finish(reason, flags); upstream.resetAndDestroy(); client.resetAndDestroy(); }, done });
    upstream.once('error', (err: NodeJS.ErrnoException) => {
      if (record.bytesFromSource > 0 || record.bytesToSource > 0) return;
      refuse(`workload_unreachable: ${err.code ?? err.message}`, 'UF');
      resolveDone();
    });
    upstream.once('connect', () => {
      upstream.setTimeout(0);
      record.open();
      void relay(client, upstream, { leftToRight: (n) => record.fromSource(n), rightToLeft: (n) => record.toSource(n) }).then((err) => {
        record.finish(err);
        resolveDone();
      });
    });
  });
  return { server, listen: (host, port) => listenOn(server, host, port) };
}
