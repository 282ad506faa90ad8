import { isIP } from 'node:net';
import type { Logger } from '../../shared/logger.ts';
import { canonicalIp } from '../../shared/net-address.ts';
import { parseTraceparent, SpanKind, startConnectionSpan, type Tracer } from '../../shared/tracing.ts';
import type { DeniedConnection } from '../proxy/telemetry-reporter.ts';
import { isHttpProtocol, type AppProtocol, type Workload } from '../../shared/resources/types.ts';
import { deniedBy, type ConnectionFacts, type Decision } from '../../shared/authorization.ts';
import type { MeshState } from '../state/mesh-state.ts';
import type { DestinationWait } from '../state/subscriptions.ts';
import { ConnectionRecord, UNKNOWN_PEER, type Peer } from '../proxy/connection-record.ts';
import type { ConnectionTracker } from '../proxy/connection-tracker.ts';
import type { PeerInfo } from '../proxy/hbone-names.ts';
import type { AgentMetrics } from '../proxy/metrics.ts';
import { verifyClaimedSource } from './source-proof.ts';
import { answerStatusOf, deniedAnswer, flagOf, type RefusalReason } from './refusals.ts';

/*
 * Inbound admission: whether a connection to a local workload may open, for
 * both inbound entry points ambit-dataplane serves (an HBONE CONNECT on
 * :15008, admitInbound; captured plaintext on :15006, admitPlaintext). Pure
 * over the mesh state: no sockets; the caller (dataplane/inbound.ts)
 * answers the data plane with the decision.
 */

/** Response flag of a stream refused because its `Forwarded` address is not the peer's (docs/refusals.md). */
export const UNVERIFIED_SOURCE_FLAG = flagOf('unverified_source_address');

export interface InboundDeps {
  readonly state: MeshState;
  readonly metrics: AgentMetrics;
  readonly accessLog: Logger;
  readonly tracer: Tracer;
  readonly tracker: ConnectionTracker;
  readonly connectTimeoutMs: number;
  /** Where to dial a local workload (tests and VMs: its address; a pod network could map differently). */
  readonly dialAddress?: (w: Workload) => string;
  /** Told of each policy denial (the console's recent denials). */
  readonly denials?: { denied(d: DeniedConnection): void };
  /** Node scope: what judging a `Forwarded` claim waits for, so the claimed address is held (state/subscriptions.ts); absent on a full watch. */
  readonly awaitDestination?: DestinationWait;
}

/** "ip:port" or "[v6]:port" → parts, or undefined when malformed. */
export function parseAuthority(authority: string | undefined): { ip: string; port: number } | undefined {
  if (!authority || authority.length > 64) return undefined;
  const m = /^\[([0-9a-fA-F:.]+)\]:(\d{1,5})$/.exec(authority) ?? /^([0-9.]+):(\d{1,5})$/.exec(authority);
  if (!m || !isIP(m[1]!)) return undefined;
  const port = Number(m[2]);
  return port >= 1 && port <= 65535 ? { ip: m[1]!, port } : undefined;
}

/** The client address the source agent reports in `Forwarded: for=…` (RFC 7239). */
export function forwardedFor(header: string | string[] | undefined): string | undefined {
  const v = Array.isArray(header) ? header[0] : header;
  const m = v ? /(?:^|[;,\s])for=(?:"\[?([^"\]]+)\]?(?::\d+)?"|([0-9.]+))/i.exec(v) : null;
  const ip = m?.[1] ?? m?.[2];
  return ip && isIP(ip) ? ip : undefined;
}

/** decodeURIComponent that yields undefined for malformed escapes instead of throwing (a peer's header must not crash the agent). */
function decodeOrUndefined(v: string): string | undefined {
  try {
    return decodeURIComponent(v);
  } catch {
    return undefined;
  }
}

/** Baggage "k=v,k=v" → the source workload's name/namespace if it names them. */
function baggageWorkload(header: string | string[] | undefined): { name?: string; namespace?: string } {
  const v = Array.isArray(header) ? header.join(',') : header ?? '';
  const out: { name?: string; namespace?: string } = {};
  for (const part of v.split(',').slice(0, 32)) {
    const [k, val] = part.trim().split('=');
    const decoded = val ? decodeOrUndefined(val) : undefined;
    if (k === 'k8s.workload.name' && decoded) out.name = decoded.slice(0, 253);
    if (k === 'k8s.namespace.name' && decoded) out.namespace = decoded.slice(0, 63);
  }
  return out;
}

/** What the inbound path reads of a CONNECT request (as ambit-dataplane reports it). */
export interface InboundRequest {
  readonly method: string | undefined;
  readonly authority: string | undefined;
  readonly forwarded: string | string[] | undefined;
  readonly baggage: string | string[] | undefined;
  readonly traceparent: string | undefined;
}

/** An admitted CONNECT: where to dial, and the record and facts that go with the connection. */
export interface Admitted {
  readonly allowed: true;
  readonly record: ConnectionRecord;
  readonly facts: ConnectionFacts;
  readonly dial: { readonly host: string; readonly port: number };
  /** What the destination port speaks: on http, http2 and grpc the data plane serves HTTP and authorizes each request. */
  readonly protocol: AppProtocol;
}

export interface Refused {
  readonly allowed: false;
  readonly status: number;
  /** What the answer says (HBONE `x-ambit-reason`): the registered reason, or for `denied` the rule and policy too. */
  readonly reason: string;
  /** The registered reason it was counted under. */
  readonly refusal: RefusalReason;
}

/**
 * The decision half of an inbound connection, shared by both data paths
 * (ambit-dataplane asks it through dataplane/inbound.ts): resolve the local
 * workload, check the identity the client asked for, authorize. A refusal is
 * counted and recorded here; the caller only answers with its status.
 */
export function admitInbound(d: InboundDeps, req: InboundRequest, peer: PeerInfo): Admitted | Refused {
  const bag = baggageWorkload(req.baggage);
  const claimed = forwardedFor(req.forwarded);
  const claim = verifyClaimedSource(d.state, claimed, { identityUri: peer.identity.uri, remoteAddress: peer.remoteAddress });
  // Name the source workload only when the claim is verified: telemetry must not be spoofable by a header.
  const srcNamed = claim.ok ? claim.workload : undefined;
  const src: Peer = {
    // What was claimed (refused or not) is worth logging; with no claim, the TCP peer (the source agent).
    addr: claimed ?? peer.remoteAddress,
    workload: srcNamed?.metadata.name ?? (bag.namespace === peer.identity.namespace ? bag.name ?? 'unknown' : 'unknown'),
    namespace: peer.identity.namespace ?? 'unknown',
    identity: peer.identity.uri,
    ...(srcNamed ? { names: d.state.namesOf(srcNamed) } : {}),
  };
  const authority = String(req.authority ?? '');
  const record = new ConnectionRecord({ direction: 'inbound', src, dst: { ...UNKNOWN_PEER, addr: authority }, service: '', security: 'mutual_tls', metrics: d.metrics, log: d.accessLog });
  const parent = parseTraceparent(req.traceparent);
  const span = startConnectionSpan(d.tracer, 'ambit.inbound', SpanKind.SERVER, parent, { 'ambit.source.identity': peer.identity.uri, 'ambit.destination.authority': authority });
  record.setSpan(span.span, span.context.traceId);

  const refuse = (reason: RefusalReason, detail?: string): Refused => refuseAdmission(d, record, reason, detail);

  if (req.method !== 'CONNECT') return refuse('not_connect');
  const target = parseAuthority(req.authority);
  if (!target) return refuse('bad_authority');
  const dst = d.state.localWorkloadAt(target.ip, target.port);
  if (!dst) return refuse('not_a_local_workload');
  const dstIdentity = d.state.identityOf(dst).uri;
  record.dst = { addr: `${target.ip}:${target.port}`, workload: dst.metadata.name, namespace: dst.metadata.namespace, identity: dstIdentity, names: d.state.namesOf(dst) };
  record.service = d.state.serviceNameFor(dst, target.port);
  // The client verified our certificate for peer.servedIdentity; tunnelling it to a workload of another identity would break that promise.
  if (dstIdentity !== peer.servedIdentity) return refuse('identity_mismatch');
  // Policy never sees an address nobody vouched for: a forged claim is refused outright.
  if (!claim.ok) {
    refuseRecord(d, record, claim.reason, `${claim.reason}: ${claim.detail}`);
    return { allowed: false, status: answerStatusOf(claim.reason), reason: claim.reason, refusal: claim.reason };
  }

  const protocol = d.state.appProtocolAt(dst, target.port);
  const facts: ConnectionFacts = { sourceIdentity: peer.identity, sourceAddress: claim.address, destination: dst, destinationPort: target.port, httpPort: isHttpProtocol(protocol) };
  const decision = d.state.authorizer.evaluate(facts);
  if (!decision.allowed) return refuseDenied(d, record, decision, target.port);
  return { allowed: true, record, facts, dial: { host: d.dialAddress?.(dst) ?? dst.spec.address, port: target.port }, protocol };
}

/**
 * Refuses a connection policy denied: counted in ambit_policy_denials_total
 * and logged under the deciding policy (or '(no ALLOW matched)'), answered
 * `denied: <reason> [by ns/policy]`, and reported to the controller for the
 * console's recent denials.
 */
export function refuseDenied(d: InboundDeps, record: ConnectionRecord, decision: Decision, port: number): Refused {
  const policy = deniedBy(decision);
  d.metrics.denials.inc({ direction: 'inbound', policy, reason: decision.reason });
  record.policy = policy;
  reportDenial(d, record, port, decision.policy ?? '', decision.reason);
  return refuseAdmission(d, record, 'denied', deniedAnswer(decision));
}

/** Tells the controller (the console's recent denials) of a connection policy refused or closed; `policy` '' when no single policy decided. */
export function reportDenial(d: InboundDeps, record: ConnectionRecord, port: number, policy: string, reason: string): void {
  d.denials?.denied({
    direction: 'inbound', sourcePrincipal: record.src.identity, sourceWorkload: record.src.workload, sourceNamespace: record.src.namespace, sourceAddress: record.src.addr,
    destinationWorkload: record.dst.workload, destinationNamespace: record.dst.namespace, destinationPort: port, destinationService: record.service,
    policy, reason,
  });
}

/** Refuses an inbound connection: counted, its record ended, answered with the registered status; `detail` (default: the reason) is the answer's reason text and the record's error. */
export function refuseAdmission(d: InboundDeps, record: ConnectionRecord, reason: RefusalReason, detail: string = reason): Refused {
  refuseRecord(d, record, reason, detail);
  return { allowed: false, status: answerStatusOf(reason), reason: detail, refusal: reason };
}

/** Counts a refused inbound connection under its registered reason and ends its record with `detail` (default: the reason) and the reason's flag. */
export function refuseRecord(d: InboundDeps, record: ConnectionRecord, reason: RefusalReason, detail: string = reason): void {
  d.metrics.refused.inc({ direction: 'inbound', reason });
  record.finish(detail, flagOf(reason));
}

export interface PlaintextDeps extends InboundDeps {
  /** strict: mTLS only, plaintext refused; permissive: plaintext allowed where policy allows a connection without identity. */
  readonly mode: 'strict' | 'permissive';
}

/** What the data plane reports of a connection redirected to :15006. */
export interface PlaintextArrival {
  readonly remote: { readonly address: string; readonly port: number };
  readonly local: { readonly address: string; readonly port: number };
  /** The original destination (empty address when there was none). */
  readonly destination: { readonly address: string; readonly port: number };
  readonly destinationError?: string;
}

/**
 * The decision on inbound plaintext to a captured local workload (:15006).
 * Strict mode refuses it (mTLS only); permissive mode lets it through when
 * policy allows a connection without identity (rules naming principals or
 * namespaces never match plaintext), reported as connection_security_policy
 * "none". A refusal is counted and recorded here; the data plane resets the
 * client. Status 400/401 only say which kind of refusal it was.
 */
export function admitPlaintext(d: PlaintextDeps, a: PlaintextArrival): Admitted | Refused {
  const srcAddr = a.remote.address;
  const record = new ConnectionRecord({ direction: 'inbound', src: { ...UNKNOWN_PEER, addr: srcAddr, identity: '' }, dst: UNKNOWN_PEER, service: '', security: 'none', metrics: d.metrics, log: d.accessLog });
  const span = startConnectionSpan(d.tracer, 'ambit.inbound.plaintext', SpanKind.SERVER, undefined, { 'ambit.source.address': srcAddr });
  record.setSpan(span.span, span.context.traceId);
  const refuse = (reason: RefusalReason, detail?: string): Refused => refuseAdmission(d, record, reason, detail);
  const dst = a.destination;
  if (dst.address === '') return refuse('no_original_destination');
  // Someone dialled :15006 itself: the agent would dial itself.
  if (canonicalIp(dst.address) === canonicalIp(a.local.address) && dst.port === a.local.port) return refuse('loop');
  const w = d.state.localWorkloadAt(dst.address, dst.port);
  if (!w) return refuse('not_a_local_workload');
  record.dst = { addr: `${dst.address}:${dst.port}`, workload: w.metadata.name, namespace: w.metadata.namespace, identity: d.state.identityOf(w).uri, names: d.state.namesOf(w) };
  record.service = d.state.serviceNameFor(w, dst.port);
  if (d.mode === 'strict') return refuse('plaintext_refused_strict_mode');
  const protocol = d.state.appProtocolAt(w, dst.port);
  const facts: ConnectionFacts = { sourceIdentity: undefined, sourceAddress: srcAddr, destination: w, destinationPort: dst.port, httpPort: isHttpProtocol(protocol) };
  const decision = d.state.authorizer.evaluate(facts);
  if (!decision.allowed) return refuseDenied(d, record, decision, dst.port);
  return { allowed: true, record, facts, dial: { host: d.dialAddress?.(w) ?? w.spec.address, port: dst.port }, protocol };
}
