import { isIP } from 'node:net';
import type * as pb from '../../shared/proto/gen/ambit.ts';
import { AmbitError } from '../../shared/errors.ts';
import { parseHostPort } from '../../shared/config-parse.ts';
import { EXPLAIN_ERRORS, type ExplainErrorCode, type ExplainFrom, type ExplainQuery, type Explanation, type ExplainedVerdict, type PeerAuthentication } from '../explain/explain.ts';
import type { DecisionReason } from '../../shared/authorization.ts';
import type { HttpRequestFacts, RequestDecisionReason } from '../../shared/authorization-http.ts';
import { APP_PROTOCOLS } from '../../shared/resources/types.ts';

/*
 * Explain across the Admin API: the query and the Explanation to and from
 * their protobuf messages, so ambitctl prints (-o json) exactly what the
 * engine returned in-process.
 */

function invalid(message: string, field: string): AmbitError {
  return new AmbitError('AMBIT_ERR_EXPLAIN_QUERY_INVALID', message, { details: { field } });
}

/** The source and destination ambitctl's flags name → a query; checks what the engine needs (exactly one source, a port). */
export function explainQuery(o: {
  readonly from?: string; readonly fromIdentity?: string; readonly fromAddress?: string; readonly to: string;
  readonly method?: string; readonly path?: string; readonly host?: string;
}): ExplainQuery {
  const given = [o.from ? 'from' : '', o.fromIdentity ? 'from-identity' : '', o.fromAddress ? 'from-address' : ''].filter(Boolean);
  if (given.length !== 1) throw invalid(given.length === 0 ? 'give the source: --from NS/WORKLOAD, --from-identity SPIFFE_ID or --from-address IP' : `give one source, not ${given.map((g) => `--${g}`).join(' and ')}`, 'from');
  let from: ExplainFrom;
  if (o.from) {
    const m = /^([^/\s]+)\/([^/\s]+)$/.exec(o.from);
    if (!m) throw invalid(`--from ${JSON.stringify(o.from)}: expected NAMESPACE/WORKLOAD`, 'from');
    from = { kind: 'workload', namespace: m[1]!, name: m[2]! };
  } else if (o.fromIdentity) {
    from = { kind: 'identity', identity: o.fromIdentity };
  } else {
    from = { kind: 'address', address: o.fromAddress! };
  }
  const badTo = (cause?: unknown): AmbitError =>
    new AmbitError('AMBIT_ERR_EXPLAIN_QUERY_INVALID', `--to ${JSON.stringify(o.to)}: expected HOST:PORT (a service name, VIP or address, and a port 1-65535)`, { cause, details: { field: 'to' } });
  let to: { host: string; port: number };
  try {
    to = parseHostPort(o.to);
  } catch (cause) {
    throw badTo(cause);
  }
  // parseHostPort takes port 0 (a listener's "any port"); a connection has a real one.
  if (to.port < 1) throw badTo();
  if (o.method === undefined && o.path === undefined && o.host === undefined) return { from, host: to.host, port: to.port };
  // As curl sends it: the Host is the name dialled, with its port unless that is 80.
  const host = o.host ?? (to.port === 80 ? o.to.replace(/:80$/, '') : o.to);
  return { from, host: to.host, port: to.port, request: httpRequest(o.method ?? 'GET', o.path ?? '/', host) };
}

// RFC 9110's token: what a method may be.
const METHOD = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}$/;

function httpRequest(method: string, path: string, host: string | undefined): HttpRequestFacts {
  if (!METHOD.test(method)) throw invalid(`--method ${JSON.stringify(method)}: not an HTTP method`, 'method');
  if (!path.startsWith('/') || path.length > 8192) throw invalid(`--path ${JSON.stringify(path.slice(0, 100))}: expected an origin-form path starting with /`, 'path');
  return { method, path, host };
}

export function explainRequestToWire(q: ExplainQuery): pb.ExplainRequest {
  return {
    fromWorkload: q.from.kind === 'workload' ? `${q.from.namespace}/${q.from.name}` : '',
    fromIdentity: q.from.kind === 'identity' ? q.from.identity : '',
    fromAddress: q.from.kind === 'address' ? q.from.address : '',
    toHost: q.host,
    toPort: q.port,
    method: q.request?.method ?? '',
    path: q.request?.path ?? '',
    host: q.request?.host ?? '',
  };
}

export function explainRequestFromWire(r: pb.ExplainRequest): ExplainQuery {
  const to = isIP(r.toHost) === 6 ? `[${r.toHost}]:${r.toPort}` : `${r.toHost}:${r.toPort}`;
  const q = explainQuery({ from: r.fromWorkload || undefined, fromIdentity: r.fromIdentity || undefined, fromAddress: r.fromAddress || undefined, to });
  // On the wire an empty host is a request without one (ambitctl has already applied its default).
  return r.method === '' ? q : { ...q, request: httpRequest(r.method, r.path || '/', r.host === '' ? undefined : r.host) };
}

export function explanationToWire(e: Explanation): pb.ExplainResponse {
  return {
    revision: e.revision,
    queryFrom: e.query.from,
    queryTo: e.query.to,
    queryRequest: e.query.request,
    source: e.source ?? undefined,
    destination: e.destination === null ? undefined : { ...e.destination, serviceAddresses: [...e.destination.serviceAddresses], servicePort: e.destination.servicePort ?? undefined },
    endpoints: e.endpoints.map((p) => ({
      ...p,
      verdict: {
        ...p.verdict,
        allowPolicies: [...p.verdict.allowPolicies],
        request: p.verdict.request === null ? undefined : { ...p.verdict.request, denyPolicies: [...p.verdict.request.denyPolicies], allowPolicies: [...p.verdict.request.allowPolicies] },
      },
    })),
    error: e.error ?? undefined,
    routes: e.routes === null ? undefined : { ...e.routes, rules: e.routes.rules.map((r) => ({ ...r, backends: r.backends.map((b) => ({ ...b })), actions: [...r.actions] })) },
  };
}

function oneOf<T extends string>(value: string, allowed: readonly T[], what: string): T {
  if ((allowed as readonly string[]).includes(value)) return value as T;
  throw new AmbitError('AMBIT_ERR_RPC_FAILED', `explain answer: unknown ${what} ${JSON.stringify(value)} (controller of another version?)`);
}

const REASONS = ['denied_by_policy', 'no_allow_match', 'allowed_by_policy', 'no_policies'] as const satisfies readonly DecisionReason[];
const REQUEST_REASONS = ['', 'denied_by_policy', 'no_allow_match', 'allowed_by_policy', 'connection_allowed', 'bad_path'] as const satisfies readonly (RequestDecisionReason | '')[];
const AUTHN = ['mutual_tls', 'plaintext'] as const satisfies readonly PeerAuthentication[];

function verdictFromWire(v: pb.ExplainVerdict | undefined): ExplainedVerdict {
  if (v === undefined) throw new AmbitError('AMBIT_ERR_RPC_FAILED', 'explain answer: an endpoint without a verdict');
  const r = v.request;
  return {
    allowed: v.allowed, reason: oneOf(v.reason, REASONS, 'verdict reason'), policy: v.policy, rule: v.rule, allowPolicies: v.allowPolicies, summary: v.summary,
    request: r === undefined ? null : {
      ...r,
      outcome: oneOf(r.outcome, ['allowed', 'denied', 'per_request', 'all_allowed'] as const, 'request outcome'),
      reason: oneOf<RequestDecisionReason | ''>(r.reason, REQUEST_REASONS, 'request reason'),
    },
  };
}

export function explanationFromWire(r: pb.ExplainResponse): Explanation {
  const s = r.source;
  const d = r.destination;
  return {
    revision: r.revision,
    query: { from: r.queryFrom, to: r.queryTo, request: r.queryRequest },
    source: s === undefined ? null : { ...s, kind: oneOf(s.kind, ['workload', 'identity', 'external'] as const, 'source kind'), peerAuthentication: oneOf(s.peerAuthentication, AUTHN, 'peer authentication') },
    destination: d === undefined ? null : {
      ...d,
      kind: oneOf(d.kind, ['service', 'workload', 'passthrough'] as const, 'destination kind'),
      servicePort: d.servicePort === undefined ? null : { ...d.servicePort, appProtocol: oneOf(d.servicePort.appProtocol, APP_PROTOCOLS, 'appProtocol') },
    },
    endpoints: r.endpoints.map((p) => ({ ...p, verdict: verdictFromWire(p.verdict) })),
    error: r.error === undefined ? null : { code: oneOf<ExplainErrorCode>(r.error.code, EXPLAIN_ERRORS, 'error code'), message: r.error.message },
    routes: r.routes === undefined ? null : {
      ...r.routes,
      kind: oneOf(r.routes.kind, ['consumer', 'producer', 'none'] as const, 'routes kind'),
      rules: r.routes.rules.map((x) => ({ ...x, backends: x.backends.map((b) => ({ ...b, unresolved: oneOf(b.unresolved, ['', 'BackendNotFound', 'RefNotPermitted'] as const, 'backend reason') })) })),
    },
  };
}
