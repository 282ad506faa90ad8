import type { GRPCMethodMatch, HTTPPathMatch } from '../resources/route-types.ts';

/*
 * A gRPC call is an HTTP/2 POST to "/<package.Service>/<Method>", so a
 * GRPCRoute's method match is a path match: the data plane matches both
 * route kinds with one matcher, and both kinds share one precedence order
 * (shared/routes/attachment.ts).
 */

/** Rust's regex::escape: every meta character gets a backslash. */
export function escapeRegex(s: string): string {
  return s.replace(/[\\.+*?()|[\]{}^$#&\-~]/g, '\\$&');
}

/** Any one path segment: a service or a method left unnamed. */
const SEGMENT = '[^/]+';

/**
 * The path match of a GRPCRoute method match (undefined method match: every call).
 * Exact service and method: Exact "/pkg.Svc/Method"; service only: PathPrefix
 * "/pkg.Svc" (element-wise, so "/pkg.Svc/" and every method under it);
 * method only: a regular expression over any service; RegularExpression:
 * "/(service)/(method)", each part any segment when unnamed.
 */
export function grpcPathMatch(m: GRPCMethodMatch | undefined): HTTPPathMatch {
  if (m === undefined || (m.service === undefined && m.method === undefined)) return { type: 'PathPrefix', value: '/' };
  if (m.type === 'Exact') {
    if (m.service !== undefined && m.method !== undefined) return { type: 'Exact', value: `/${m.service}/${m.method}` };
    if (m.service !== undefined) return { type: 'PathPrefix', value: `/${m.service}` };
    return { type: 'RegularExpression', value: `/${SEGMENT}/${escapeRegex(m.method!)}` };
  }
  const part = (re: string | undefined): string => (re === undefined ? SEGMENT : `(?:${re})`);
  return { type: 'RegularExpression', value: `/${part(m.service)}/${part(m.method)}` };
}
