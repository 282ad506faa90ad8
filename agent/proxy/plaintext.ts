import { SpanKind, startConnectionSpan } from '../../shared/tracing.ts';
import { canonicalIp } from '../../shared/net-address.ts';
import { ConnectionRecord, UNKNOWN_PEER } from './connection-record.ts';
import { deniedDetail, refuseAdmission, type Admitted, type InboundDeps, type Refused } from './inbound.ts';
import type { RefusalReason } from '../connection/refusals.ts';

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
  record.dst = { addr: `${dst.address}:${dst.port}`, workload: w.metadata.name, namespace: w.metadata.namespace, identity: d.state.identityOf(w).uri };
  record.service = d.state.serviceNameFor(w, dst.port);
  if (d.mode === 'strict') return refuse('plaintext_refused_strict_mode');
  const facts = { sourceIdentity: undefined, sourceAddress: srcAddr, destination: w, destinationPort: dst.port };
  const decision = d.state.authorizer.evaluate(facts);
  if (!decision.allowed) return refuse('denied', deniedDetail(d, decision));
  return { allowed: true, record, facts, dial: { host: d.dialAddress?.(w) ?? w.spec.address, port: dst.port } };
}
