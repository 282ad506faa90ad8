/**
 * Every reason a connection can be refused for, in one registry: the value
 * of `ambit_connections_refused_total{reason}`, of the HBONE answer's
 * `x-ambit-reason` (with detail appended for `denied`), and the start of the
 * access log's `error`. Each entry states the HBONE status that carries it,
 * the access log's `response_flags`, and what it means to an operator.
 *
 * A decision module cannot emit a reason that is not here: the helpers take
 * a RefusalReason, and a reason the data plane reports over its socket is
 * checked with refusalOf() before it becomes a metric label.
 * test/agent/connection/refusals.test.ts checks that every reason the agent
 * and ambit-dataplane emit is registered and that docs/refusals.md documents
 * every entry exactly as it is here.
 */

import { deniedBy } from '../../shared/authorization.ts';

export type RefusalDirection = 'inbound' | 'outbound';

/**
 * The access log's `response_flags` of a refused connection; null: the
 * refusal happens before the connection has a record, so no access-log line
 * is written (only the counter, and a debug or warning log line).
 */
export type RefusalFlag = 'NR' | 'DENY' | 'UF' | 'UNVERIFIED_SOURCE';

export interface RefusalSpec {
  readonly directions: readonly RefusalDirection[];
  /**
   * The HBONE response status that carries the reason: inbound, what the
   * destination agent answers a CONNECT with; outbound, the peer agent's
   * answer that the source agent reports as this reason. null: no HBONE
   * response (a TLS or plaintext connection reset, a stream reset, a SOCKS5
   * reply, or a failure before any answer).
   */
  readonly hboneStatus: 400 | 401 | 405 | 503 | null;
  readonly responseFlag: RefusalFlag | null;
  /** One sentence an operator understands. */
  readonly meaning: string;
}

export const REFUSALS = {
  // Inbound HBONE: the destination agent's CONNECT decision (admitInbound).
  not_connect: { directions: ['inbound'], hboneStatus: 405, responseFlag: 'NR', meaning: 'The HBONE stream asked for a method other than CONNECT.' },
  bad_authority: { directions: ['inbound'], hboneStatus: 400, responseFlag: 'NR', meaning: 'The CONNECT :authority is not an ip:port.' },
  not_a_local_workload: { directions: ['inbound'], hboneStatus: 400, responseFlag: 'NR', meaning: 'No workload scheduled on this node serves the requested address and port.' },
  identity_mismatch: { directions: ['inbound'], hboneStatus: 400, responseFlag: 'NR', meaning: 'The workload at :authority has another identity than the one the client asked for by SNI.' },
  unverified_source_address: { directions: ['inbound'], hboneStatus: 401, responseFlag: 'UNVERIFIED_SOURCE', meaning: 'The Forwarded source address is not an address of a workload with the peer certificate\'s identity on the peer\'s node.' },
  denied: { directions: ['inbound', 'outbound'], hboneStatus: 401, responseFlag: 'DENY', meaning: 'Authorization policy denied the connection (the error and x-ambit-reason say which rule and policy).' },
  unknown_session: { directions: ['inbound'], hboneStatus: 400, responseFlag: null, meaning: 'A stream arrived on an HBONE session the agent did not approve (the data plane and agent are out of step).' },
  workload_unreachable: { directions: ['inbound'], hboneStatus: 503, responseFlag: 'UF', meaning: 'The local workload refused the connection or did not answer within --connect-timeout.' },
  agent_unavailable: { directions: ['inbound', 'outbound'], hboneStatus: 503, responseFlag: null, meaning: 'ambit-dataplane asked and no agent answered in time: 5 s with no agent attached (restarting or away), 30 s for an attached one.' },
  // Inbound before the agent is asked: ambit-dataplane's own refusals.
  tls: { directions: ['inbound'], hboneStatus: null, responseFlag: null, meaning: 'The TLS handshake on the HBONE port failed for a reason other than the client certificate or ALPN.' },
  peer_certificate: { directions: ['inbound'], hboneStatus: null, responseFlag: null, meaning: 'The HBONE client presented no certificate, one that does not chain to the trust bundle, or one that is not a workload identity of this trust domain.' },
  not_h2: { directions: ['inbound'], hboneStatus: null, responseFlag: null, meaning: 'The HBONE client did not offer HTTP/2 by ALPN.' },
  unknown_server_name: { directions: ['inbound'], hboneStatus: null, responseFlag: null, meaning: 'The HBONE client asked by SNI for an identity no local workload has.' },
  draining: { directions: ['inbound'], hboneStatus: null, responseFlag: null, meaning: 'A new HBONE stream arrived while the agent drains; it is reset with REFUSED_STREAM so the peer retries elsewhere.' },
  // ambit-dataplane's connection-flood limits (dataplane/src/admission.rs): HBONE (inbound) and SOCKS5 (outbound) before authentication; descriptor_limit on any listener.
  too_many_handshakes: { directions: ['inbound', 'outbound'], hboneStatus: null, responseFlag: null, meaning: 'A source address already had 32 connections on the HBONE port or a SOCKS5 listener that had not finished their handshake; the new one was closed at once.' },
  handshake_evicted: { directions: ['inbound', 'outbound'], hboneStatus: null, responseFlag: null, meaning: 'The listener had its limit of connections still in their handshake (a quarter of the descriptor limit); the oldest was closed to admit a new one.' },
  descriptor_limit: { directions: ['inbound', 'outbound'], hboneStatus: null, responseFlag: null, meaning: 'ambit-dataplane had no file descriptor left; the connection was accepted and closed at once.' },
  // Inbound plaintext capture (:15006, admitPlaintext) and outbound capture (:15001).
  no_original_destination: { directions: ['inbound', 'outbound'], hboneStatus: null, responseFlag: 'NR', meaning: 'A captured connection has no original destination (it was not redirected by iptables).' },
  loop: { directions: ['inbound', 'outbound'], hboneStatus: null, responseFlag: 'NR', meaning: 'A client connected to the capture port itself, which would make the agent dial itself.' },
  plaintext_refused_strict_mode: { directions: ['inbound'], hboneStatus: null, responseFlag: 'DENY', meaning: 'Plaintext reached a captured local workload while --mode is strict (mTLS only).' },
  // Outbound: the source workload (resolveOutboundSource) and its route (planOutbound, tunnelFailure).
  socks_protocol: { directions: ['outbound'], hboneStatus: null, responseFlag: null, meaning: 'A SOCKS5 client broke the protocol (no username/password method, a malformed request, or too slow).' },
  source_not_verified: { directions: ['outbound'], hboneStatus: null, responseFlag: null, meaning: 'The client could not prove it is the workload its upstream listener or SOCKS5 username names.' },
  unknown_source: { directions: ['outbound'], hboneStatus: null, responseFlag: null, meaning: 'A captured connection comes from no known local workload (no matching pod address or socket owner uid).' },
  no_route: { directions: ['outbound'], hboneStatus: 400, responseFlag: 'NR', meaning: 'The service has no endpoint serving the port, the endpoint\'s node has no known agent address, or the peer agent has no such workload.' },
  passthrough_denied: { directions: ['outbound'], hboneStatus: null, responseFlag: 'NR', meaning: 'The destination is outside the mesh and --passthrough is deny.' },
  refused: { directions: ['outbound'], hboneStatus: 503, responseFlag: 'UF', meaning: 'The peer agent answered 503: its workload refused or did not answer, or no agent answered its data plane.' },
  unreachable: { directions: ['outbound'], hboneStatus: null, responseFlag: 'UF', meaning: 'No endpoint could be reached: the connection, TLS or stream to the peer agent failed or timed out, or a passthrough dial failed.' },
  // Neither: a reason this agent does not know (its data plane is of another version).
  unrecognized: { directions: ['inbound', 'outbound'], hboneStatus: null, responseFlag: null, meaning: 'ambit-dataplane reported a refusal reason this agent does not know (the two are of different versions).' },
} as const satisfies Record<string, RefusalSpec>;

export type RefusalReason = keyof typeof REFUSALS;

/**
 * The answer text (x-ambit-reason, the access log's `error`) of a policy
 * denial: `denied: <reason>[ by <namespace>/<policy>]`. The source agent
 * reads the policy back from it (policyOfDeniedAnswer), so both agents'
 * telemetry name the same policy.
 */
export function deniedAnswer(decision: { readonly policy?: string | undefined; readonly reason: string }): string {
  return `denied: ${decision.reason}${decision.policy ? ` by ${decision.policy}` : ''}`;
}

// Names as the resource schema allows them (DNS labels); anything else is not read as a policy.
const DENIED_ANSWER = /^denied: ([a-z_]{1,32})(?: by ([a-z0-9][a-z0-9.-]{0,252}\/[a-z0-9][a-z0-9.-]{0,252}))?$/;

/** A peer's denied answer → the reason and the `policy` a denial is counted under (deniedBy); undefined when it is not one. */
export function policyOfDeniedAnswer(answer: string): { readonly reason: string; readonly policy: string } | undefined {
  const m = DENIED_ANSWER.exec(answer);
  if (!m) return undefined;
  return { reason: m[1]!, policy: deniedBy({ policy: m[2], reason: m[1]! }) };
}

/** The failures planOutbound and tunnelFailure report, which the front end (SOCKS5 reply, reset) acts on. */
export const OUTBOUND_FAILURES = ['denied', 'no_route', 'unreachable', 'refused', 'passthrough_denied'] as const satisfies readonly RefusalReason[];
export type OutboundFailure = (typeof OUTBOUND_FAILURES)[number];

export function refusal(reason: RefusalReason): RefusalSpec {
  return REFUSALS[reason];
}

export function isRefusalReason(s: string): s is RefusalReason {
  return Object.hasOwn(REFUSALS, s);
}

/** A reason reported over the data plane's socket, as a metric label: registered, or `unrecognized`. */
export function refusalOf(s: string): RefusalReason {
  return isRefusalReason(s) ? s : 'unrecognized';
}

/** The response flag a record of this refusal ends with (a reason with none never has a record: '-' is what the log would show). */
export function flagOf(reason: RefusalReason): string {
  return REFUSALS[reason].responseFlag ?? '-';
}

/**
 * The status the agent answers ambit-dataplane with for an inbound refusal:
 * its HBONE status; a plaintext refusal (no HBONE answer: the data plane
 * resets the client) says only which kind it was, 401 for policy, else 400.
 */
export function answerStatusOf(reason: RefusalReason): number {
  const spec: RefusalSpec = REFUSALS[reason];
  return spec.hboneStatus ?? (spec.responseFlag === 'DENY' ? 401 : 400);
}

/** The outbound failure a peer agent's HBONE answer stands for; no answer (0) or any other status: unreachable. */
export function failureOfStatus(status: number): OutboundFailure {
  return OUTBOUND_FAILURES.find((f) => REFUSALS[f].hboneStatus === status) ?? 'unreachable';
}

/**
 * ambit_connections_refused_total as the agent's code sees it: its reason
 * label takes only a registered reason, so an unregistered one does not
 * type-check.
 */
export interface RefusalCounter {
  inc(labels: { readonly direction: RefusalDirection; readonly reason: RefusalReason }, value?: number): void;
}
