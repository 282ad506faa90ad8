import type { HttpOperation, HttpPolicy, RequestPolicy, StringMatch } from '../../shared/authorization-http.ts';
import { MatchKind, type HttpInbound, type RequestPolicy as WireRequestPolicy } from '../../shared/proto/gen/dataplane.ts';
import type { AppProtocol } from '../../shared/resources/types.ts';

/*
 * A connection's request policy (shared/authorization-http.ts) as the data
 * plane's control protocol carries it (Decide.http, RequestPolicyUpdate).
 */

const KIND = { exact: MatchKind.MATCH_KIND_EXACT, prefix: MatchKind.MATCH_KIND_PREFIX, suffix: MatchKind.MATCH_KIND_SUFFIX, any: MatchKind.MATCH_KIND_ANY } as const;

function matches(list: readonly StringMatch[]): { kind: MatchKind; value: string }[] {
  return list.map((m) => ({ kind: KIND[m.kind], value: m.value }));
}

function operation(o: HttpOperation): WireRequestPolicy['deny'][number]['operations'][number] {
  return {
    methods: matches(o.methods), notMethods: matches(o.notMethods),
    paths: matches(o.paths), notPaths: matches(o.notPaths),
    hosts: matches(o.hosts), notHosts: matches(o.notHosts),
  };
}

function policy(p: HttpPolicy): WireRequestPolicy['deny'][number] {
  return { name: p.name, operations: p.operations.map(operation) };
}

export function requestPolicyToWire(p: RequestPolicy): WireRequestPolicy {
  return { deny: p.deny.map(policy), allow: p.allow.map(policy), allowRequired: p.allowRequired };
}

/** Who a connection's requests are between, as its record names them. */
export interface RequestEnds {
  readonly src: { readonly identity: string; readonly workload: string; readonly namespace: string };
  readonly dst: { readonly identity: string; readonly workload: string; readonly namespace: string };
  readonly service: string;
}

/** What the record says when it does not know: Istio's "unknown" is for labels, the data plane's outcome leaves it empty. */
const known = (v: string): string => (v === 'unknown' ? '' : v);

/** Decide.http for a connection to a port that speaks `protocol`; undefined for tcp (relayed as bytes). */
export function httpInbound(protocol: AppProtocol, p: RequestPolicy, ends: RequestEnds): HttpInbound | undefined {
  if (protocol === 'tcp') return undefined;
  return {
    protocol, policy: requestPolicyToWire(p),
    sourceIdentity: known(ends.src.identity), sourceWorkload: known(ends.src.workload), sourceNamespace: known(ends.src.namespace),
    destinationIdentity: known(ends.dst.identity), destinationWorkload: known(ends.dst.workload), destinationNamespace: known(ends.dst.namespace),
    service: ends.service,
  };
}
