import t from 'tap';
import { readFileSync } from 'node:fs';
import { AmbitError } from '../../../shared/errors.ts';
import type { FaultInjection, GRPCRoute, HTTPRoute } from '../../../shared/resources/route-types.ts';
import { formatDuration, parseDuration, rustRegexProblem } from '../../../shared/resources/validate-route.ts';
import { parseDocuments, toDocument, validateAll, validateResource } from '../../../shared/resources/validate.ts';
import { resourceFromWire, resourceToWire } from '../../../shared/resources/wire.ts';
import type { Resource } from '../../../shared/resources/types.ts';

type Doc = Record<string, unknown>;
const GW = 'gateway.networking.k8s.io/v1';
const PARENT = { group: '', kind: 'Service', name: 'web', port: 80 };

function httpRoute(spec: Doc = {}, metadata: Doc = { name: 'r', namespace: 'shop' }): Doc {
  return { apiVersion: GW, kind: 'HTTPRoute', metadata, spec: { parentRefs: [PARENT], rules: [{ backendRefs: [{ name: 'web', port: 80 }] }], ...spec } };
}
function grpcRoute(spec: Doc = {}): Doc {
  return { apiVersion: GW, kind: 'GRPCRoute', metadata: { name: 'g', namespace: 'shop' }, spec: { parentRefs: [PARENT], rules: [{ backendRefs: [{ name: 'web', port: 80 }] }], ...spec } };
}
function fault(spec: Doc): Doc {
  return { apiVersion: 'ambit.dev/v1alpha1', kind: 'FaultInjection', metadata: { name: 'f', namespace: 'shop' }, spec };
}
/** An HTTPRoute whose one rule is `rule` (parentRefs as PARENT). */
function ruleDoc(rule: Doc): Doc {
  return httpRoute({ rules: [rule] });
}

function refusal(doc: unknown): { fields: string[]; message: string } {
  try {
    validateResource(doc, 'test.yaml#1');
  } catch (err) {
    if (!(err instanceof AmbitError) || err.code !== 'AMBIT_ERR_RESOURCE_INVALID') throw err;
    const errors = (err.details['errors'] as string[] | undefined) ?? [];
    return { fields: errors.map((e) => /: ([^:]+): /.exec(e.replace(/^test\.yaml#1 [A-Za-z]+ [^:]+/, ''))?.[1] ?? ''), message: err.message };
  }
  throw new Error('accepted');
}

t.test('an HTTPRoute gets the upstream defaults', async (t) => {
  const r = validateResource(httpRoute(), 'x') as HTTPRoute;
  t.equal(r.kind, 'HTTPRoute');
  t.same(r.spec.parentRefs, [{ group: '', kind: 'Service', namespace: 'shop', name: 'web', port: 80 }], 'the parent namespace defaults to the route\'s');
  t.same(r.spec.rules[0], {
    matches: [{ path: { type: 'PathPrefix', value: '/' }, headers: [], queryParams: [] }],
    filters: [],
    backendRefs: [{ group: '', kind: 'Service', namespace: 'shop', name: 'web', port: 80, weight: 1, filters: [] }],
  });
  const twoPorts = validateResource(httpRoute({ parentRefs: [PARENT, { ...PARENT, port: 81 }] }), 'x') as HTTPRoute;
  t.same(twoPorts.spec.parentRefs.map((p) => p.port), [80, 81], 'one Service twice, a port each');
  const noRules = validateResource(httpRoute({ rules: undefined }), 'x') as HTTPRoute;
  t.same(noRules.spec.rules, [{ matches: [{ path: { type: 'PathPrefix', value: '/' }, headers: [], queryParams: [] }], filters: [], backendRefs: [] }], 'no rules: one rule matching everything');
  const full = validateResource(ruleDoc({
    matches: [{ path: { type: 'Exact', value: '/a' }, headers: [{ name: 'X-User', value: 'bob' }], queryParams: [{ type: 'RegularExpression', name: 'Q', value: '^v[0-9]+$' }], method: 'GET' }],
    backendRefs: [{ name: 'web', port: 80, weight: 90 }, { name: 'web-canary', port: 80, weight: 10 }],
    timeouts: { request: '1m30s', backendRequest: '200ms' },
    retry: { codes: [503, 502], attempts: 3 },
    filters: [{ type: 'RequestMirror', requestMirror: { backendRef: { name: 'shadow', namespace: 'test', port: 8080 }, fraction: { numerator: 1, denominator: 3 } } }],
  }), 'x') as HTTPRoute;
  const rule = full.spec.rules[0]!;
  t.same(rule.matches[0]?.headers, [{ type: 'Exact', name: 'x-user', value: 'bob' }], 'header names lower-cased, type Exact by default');
  t.same(rule.matches[0]?.queryParams, [{ type: 'RegularExpression', name: 'Q', value: '^v[0-9]+$' }], 'query parameter names as written');
  t.same(rule.timeouts, { requestMs: 90_000, backendRequestMs: 200 });
  t.same(rule.retry, { codes: [502, 503], attempts: 3, backoffMs: 25 }, 'codes sorted; backoff 25 ms by default');
  t.same(rule.filters[0], { type: 'RequestMirror', requestMirror: { backendRef: { group: '', kind: 'Service', namespace: 'test', name: 'shadow', port: 8080 }, percent: 33.3333 } });
  const retryDefaults = validateResource(ruleDoc({ retry: {} }), 'x') as HTTPRoute;
  t.same(retryDefaults.spec.rules[0]?.retry, { codes: [], attempts: 1, backoffMs: 25 });
  const zero = validateResource(ruleDoc({ timeouts: { request: '0s', backendRequest: '0s' } }), 'x') as HTTPRoute;
  t.equal(zero.spec.rules[0]?.timeouts, undefined, '"0s" disables a timeout');
  const redirect = validateResource(ruleDoc({ filters: [{ type: 'RequestRedirect', requestRedirect: { scheme: 'https' } }] }), 'x') as HTTPRoute;
  t.same(redirect.spec.rules[0]?.filters, [{ type: 'RequestRedirect', requestRedirect: { scheme: 'https', statusCode: 302 } }], 'redirect status 302 by default');
  const mirror = validateResource(ruleDoc({ filters: [{ type: 'RequestMirror', requestMirror: { backendRef: { name: 'shadow', port: 80 } } }] }), 'x') as HTTPRoute;
  t.same(mirror.spec.rules[0]?.filters[0], { type: 'RequestMirror', requestMirror: { backendRef: { group: '', kind: 'Service', namespace: 'shop', name: 'shadow', port: 80 }, percent: 100 } }, 'mirror percent 100 by default');
});

t.test('durations follow the Gateway API format', async (t) => {
  t.equal(parseDuration('200ms'), 200);
  t.equal(parseDuration('1s'), 1000);
  t.equal(parseDuration('1m30s'), 90_000);
  t.equal(parseDuration('1h1m1s1ms'), 3_661_001);
  t.equal(parseDuration('0s'), 0);
  for (const bad of ['1', '1.5s', '-1s', '1d', '1h1m1s1ms1h', '123456s', ' 1s', '']) t.type(parseDuration(bad), 'string', `${JSON.stringify(bad)} refused`);
  t.equal(formatDuration(90_000), '1m30s');
  t.equal(formatDuration(200), '200ms');
  t.equal(formatDuration(0), '0s');
  t.equal(formatDuration(3_661_001), '1h1m1s1ms');
});

t.test('regular expressions the data plane cannot run are refused', async (t) => {
  // The vectors the data plane's own engine is tested against too (dataplane/tests/regex_vectors.rs).
  const vectors = JSON.parse(readFileSync(new URL('./regex-vectors.json', import.meta.url), 'utf8')) as { accepted: string[]; refused: string[] };
  for (const ok of vectors.accepted) t.equal(rustRegexProblem(ok), undefined, `${ok} accepted`);
  for (const bad of vectors.refused) t.type(rustRegexProblem(bad), 'string', `${bad} refused`);
  t.match(rustRegexProblem('a\\Z'), /the escape \\Z is not supported/);
  t.match(rustRegexProblem('\\0'), /octal/);
  t.match(rustRegexProblem('foo(?=bar)'), /look-ahead/);
  t.match(rustRegexProblem('foo(?!bar)'), /look-ahead/);
  t.match(rustRegexProblem('(?<=a)b'), /look-behind/);
  t.match(rustRegexProblem('(?<!a)b'), /look-behind/);
  t.match(rustRegexProblem('(a)\\1'), /backreference/);
  t.match(rustRegexProblem('(?<x>a)\\k<x>'), /backreference/);
  t.match(rustRegexProblem('(?>a)'), /atomic/);
  t.match(rustRegexProblem('(a'), /unclosed/);
  t.match(rustRegexProblem('[a'), /unclosed/);
  t.match(rustRegexProblem('a)'), /unopened/);
});

const REFUSED: [string, Doc, string, RegExp][] = [
  ['apiVersion of another group', { ...httpRoute(), apiVersion: 'ambit.dev/v1alpha1' }, 'apiVersion', /gateway\.networking\.k8s\.io\/v1/],
  ['unknown spec field', httpRoute({ parentRef: [] }), 'spec.parentRef', /unknown field.*did you mean "parentRefs"/],
  ['no parentRefs', httpRoute({ parentRefs: undefined }), 'spec.parentRefs', /required/],
  ['empty parentRefs', httpRoute({ parentRefs: [] }), 'spec.parentRefs', /at least 1/],
  ['a Gateway parent (the upstream default kind)', httpRoute({ parentRefs: [{ name: 'gw' }] }), 'spec.parentRefs[0].group', /no gateways/],
  ['a Gateway parent, kind named', httpRoute({ parentRefs: [{ group: '', kind: 'Gateway', name: 'gw' }] }), 'spec.parentRefs[0].kind', /no gateways/],
  ['sectionName', httpRoute({ parentRefs: [{ ...PARENT, sectionName: 'http' }] }), 'spec.parentRefs[0].sectionName', /use port/],
  ['parent port out of range', httpRoute({ parentRefs: [{ ...PARENT, port: 0 }] }), 'spec.parentRefs[0].port', /1-65535/],
  ['duplicate parentRef', httpRoute({ parentRefs: [PARENT, PARENT] }), 'spec.parentRefs[1]', /duplicate parentRef/],
  ['a parent named twice, once without a port', httpRoute({ parentRefs: [PARENT, { ...PARENT, port: undefined }] }), 'spec.parentRefs[1]', /needs its own port/],
  ['33 parentRefs', httpRoute({ parentRefs: Array.from({ length: 33 }, (_, i) => ({ ...PARENT, port: i + 1 })) }), 'spec.parentRefs', /at most 32/],
  ['17 rules', httpRoute({ rules: Array.from({ length: 17 }, () => ({})) }), 'spec.rules', /at most 16/],
  ['65 matches', ruleDoc({ matches: Array.from({ length: 65 }, () => ({})) }), 'spec.rules[0].matches', /at most 64/],
  ['129 matches in all', httpRoute({ rules: [0, 1, 2].map(() => ({ matches: Array.from({ length: 43 }, () => ({})) })) }), 'spec.rules', /at most 128 matches/],
  ['17 backendRefs', ruleDoc({ backendRefs: Array.from({ length: 17 }, () => ({ name: 'web', port: 80 })) }), 'spec.rules[0].backendRefs', /at most 16/],
  ['backendRef without port', ruleDoc({ backendRefs: [{ name: 'web' }] }), 'spec.rules[0].backendRefs[0].port', /required/],
  ['backendRef of another kind', ruleDoc({ backendRefs: [{ kind: 'ServiceImport', name: 'web', port: 80 }] }), 'spec.rules[0].backendRefs[0].kind', /must be Service/],
  ['weight over 1000000', ruleDoc({ backendRefs: [{ name: 'web', port: 80, weight: 1_000_001 }] }), 'spec.rules[0].backendRefs[0].weight', /0-1000000/],
  ['negative weight', ruleDoc({ backendRefs: [{ name: 'web', port: 80, weight: -1 }] }), 'spec.rules[0].backendRefs[0].weight', /0-1000000/],
  ['path without "/"', ruleDoc({ matches: [{ path: { type: 'PathPrefix', value: 'api' } }] }), 'spec.rules[0].matches[0].path.value', /start with "\/"/],
  ['path with "//"', ruleDoc({ matches: [{ path: { type: 'Exact', value: '/a//b' } }] }), 'spec.rules[0].matches[0].path.value', /"\/\/"/],
  ['path type', ruleDoc({ matches: [{ path: { type: 'Prefix', value: '/' } }] }), 'spec.rules[0].matches[0].path.type', /Exact, PathPrefix, RegularExpression/],
  ['look-ahead path', ruleDoc({ matches: [{ path: { type: 'RegularExpression', value: '/a(?=b)' } }] }), 'spec.rules[0].matches[0].path.value', /data plane can run: look-ahead/],
  ['backreference in a header match', ruleDoc({ matches: [{ headers: [{ type: 'RegularExpression', name: 'x', value: '(a)\\1' }] }] }), 'spec.rules[0].matches[0].headers[0].value', /backreference/],
  ['bad header name', ruleDoc({ matches: [{ headers: [{ name: 'x y', value: 'a' }] }] }), 'spec.rules[0].matches[0].headers[0].name', /header name/],
  ['header value with a newline', ruleDoc({ matches: [{ headers: [{ name: 'x', value: 'a\nb' }] }] }), 'spec.rules[0].matches[0].headers[0].value', /CR, LF/],
  ['duplicate header match (any case)', ruleDoc({ matches: [{ headers: [{ name: 'X-A', value: 'a' }, { name: 'x-a', value: 'b' }] }] }), 'spec.rules[0].matches[0].headers[1]', /duplicate header name/],
  ['17 header matches', ruleDoc({ matches: [{ headers: Array.from({ length: 17 }, (_, i) => ({ name: `h${i}`, value: 'a' })) }] }), 'spec.rules[0].matches[0].headers', /at most 16/],
  ['method', ruleDoc({ matches: [{ method: 'get' }] }), 'spec.rules[0].matches[0].method', /GET/],
  ['retry code 200', ruleDoc({ retry: { codes: [200] } }), 'spec.rules[0].retry.codes[0]', /400-599/],
  ['retry attempts', ruleDoc({ retry: { attempts: -1 } }), 'spec.rules[0].retry.attempts', /0-100/],
  ['retry backoff', ruleDoc({ retry: { backoff: '1.5s' } }), 'spec.rules[0].retry.backoff', /duration/],
  ['a gRPC code name on an HTTPRoute', ruleDoc({ retry: { codes: ['UNAVAILABLE'] } }), 'spec.rules[0].retry.codes[0]', /integer 400-599/],
  ['bad duration', ruleDoc({ timeouts: { request: '10' } }), 'spec.rules[0].timeouts.request', /Gateway API duration/],
  ['backendRequest over request', ruleDoc({ timeouts: { request: '1s', backendRequest: '2s' } }), 'spec.rules[0].timeouts.backendRequest', /not be longer than request \(1s\)/],
  ['unknown filter type', ruleDoc({ filters: [{ type: 'CORS' }] }), 'spec.rules[0].filters[0].type', /must be one of/],
  ['cors field', ruleDoc({ filters: [{ type: 'RequestHeaderModifier', requestHeaderModifier: { remove: ['x'] }, cors: {} }] }), 'spec.rules[0].filters[0].cors', /not supported/],
  ['filter field for another type', ruleDoc({ filters: [{ type: 'RequestHeaderModifier', requestHeaderModifier: { remove: ['x'] }, urlRewrite: { hostname: 'a' } }] }), 'spec.rules[0].filters[0].urlRewrite', /must not be set when type is "RequestHeaderModifier"/],
  ['filter without its field', ruleDoc({ filters: [{ type: 'URLRewrite' }] }), 'spec.rules[0].filters[0].urlRewrite', /required/],
  ['empty header modifier', ruleDoc({ filters: [{ type: 'RequestHeaderModifier', requestHeaderModifier: {} }] }), 'spec.rules[0].filters[0].requestHeaderModifier', /at least one header/],
  ['duplicate set header', ruleDoc({ filters: [{ type: 'RequestHeaderModifier', requestHeaderModifier: { set: [{ name: 'A', value: '1' }, { name: 'a', value: '2' }] } }] }), 'spec.rules[0].filters[0].requestHeaderModifier.set[1]', /duplicate header name/],
  ['header modifier twice', ruleDoc({ filters: [{ type: 'RequestHeaderModifier', requestHeaderModifier: { remove: ['a'] } }, { type: 'RequestHeaderModifier', requestHeaderModifier: { remove: ['b'] } }] }), 'spec.rules[0].filters[1].type', /at most once/],
  ['redirect with backendRefs', ruleDoc({ backendRefs: [{ name: 'web', port: 80 }], filters: [{ type: 'RequestRedirect', requestRedirect: { scheme: 'https' } }] }), 'spec.rules[0].filters[0]', /not be used together with backendRefs/],
  ['redirect and rewrite', ruleDoc({ backendRefs: [], filters: [{ type: 'RequestRedirect', requestRedirect: { port: 8443 } }, { type: 'URLRewrite', urlRewrite: { hostname: 'a' } }] }), 'spec.rules[0].filters[1].type', /together with RequestRedirect/],
  ['redirect status 304', ruleDoc({ backendRefs: [], filters: [{ type: 'RequestRedirect', requestRedirect: { statusCode: 304 } }] }), 'spec.rules[0].filters[0].requestRedirect.statusCode', /301, 302, 303, 307, 308/],
  ['ReplacePrefixMatch without a PathPrefix match', ruleDoc({ matches: [{ path: { type: 'Exact', value: '/a' } }], filters: [{ type: 'URLRewrite', urlRewrite: { path: { type: 'ReplacePrefixMatch', replacePrefixMatch: '/b' } } }] }), 'spec.rules[0].filters[0]', /exactly one match, of path type PathPrefix/],
  ['path modifier field for another type', ruleDoc({ filters: [{ type: 'URLRewrite', urlRewrite: { path: { type: 'ReplaceFullPath', replaceFullPath: '/a', replacePrefixMatch: '/b' } } }] }), 'spec.rules[0].filters[0].urlRewrite.path.replacePrefixMatch', /must not be set/],
  ['mirror percent and fraction', ruleDoc({ filters: [{ type: 'RequestMirror', requestMirror: { backendRef: { name: 's', port: 80 }, percent: 10, fraction: { numerator: 1 } } }] }), 'spec.rules[0].filters[0].requestMirror.fraction', /together with percent/],
  ['mirror percent over 100', ruleDoc({ filters: [{ type: 'RequestMirror', requestMirror: { backendRef: { name: 's', port: 80 }, percent: 101 } }] }), 'spec.rules[0].filters[0].requestMirror.percent', /0-100/],
  ['mirror fraction over 1', ruleDoc({ filters: [{ type: 'RequestMirror', requestMirror: { backendRef: { name: 's', port: 80 }, fraction: { numerator: 3, denominator: 2 } } }] }), 'spec.rules[0].filters[0].requestMirror.fraction.numerator', /at most the denominator/],
  ['extensionRef of another kind', ruleDoc({ filters: [{ type: 'ExtensionRef', extensionRef: { group: 'ambit.dev', kind: 'RateLimit', name: 'x' } }] }), 'spec.rules[0].filters[0].extensionRef.kind', /FaultInjection/],
  ['extensionRef of another group', ruleDoc({ filters: [{ type: 'ExtensionRef', extensionRef: { group: 'example.com', kind: 'FaultInjection', name: 'x' } }] }), 'spec.rules[0].filters[0].extensionRef.group', /ambit\.dev/],
  ['a mirror on a backendRef', ruleDoc({ backendRefs: [{ name: 'web', port: 80, filters: [{ type: 'RequestMirror', requestMirror: { backendRef: { name: 's', port: 80 } } }] }] }), 'spec.rules[0].backendRefs[0].filters[0].type', /RequestHeaderModifier, ResponseHeaderModifier on a backendRef/],
  ['duplicate rule name', httpRoute({ rules: [{ name: 'a' }, { name: 'a' }] }), 'spec.rules[1].name', /duplicate rule name/],
  ['sessionPersistence', ruleDoc({ sessionPersistence: {} }), 'spec.rules[0].sessionPersistence', /not supported/],
  ['hostname with upper case', httpRoute({ hostnames: ['Web.example.com'] }), 'spec.hostnames[0]', /host name/],
  ['annotations', httpRoute({}, { name: 'r', annotations: {} }), 'metadata.annotations', /use labels/],
];

t.test('HTTPRoute refusals name the field', async (t) => {
  for (const [what, doc, field, message] of REFUSED) {
    const r = refusal(doc);
    t.ok(r.fields.includes(field), `${what}: names ${field} (got ${r.fields.join(', ')})`);
    t.match(r.message, message, `${what}: says why`);
  }
});

t.test('GRPCRoute', async (t) => {
  const r = validateResource(grpcRoute({
    rules: [{
      matches: [{ method: { service: 'shop.Cart', method: 'Add' }, headers: [{ name: 'X-Tenant', value: 'a' }] }, { method: { type: 'RegularExpression', service: 'shop\\..*' } }],
      retry: { codes: ['UNAVAILABLE', 4], attempts: 2, backoff: '50ms' },
      timeouts: { request: '2s' },
      backendRefs: [{ name: 'cart', port: 9000, weight: 5 }],
    }],
  }), 'x') as GRPCRoute;
  const rule = r.spec.rules[0]!;
  t.same(rule.matches, [
    { method: { type: 'Exact', service: 'shop.Cart', method: 'Add' }, headers: [{ type: 'Exact', name: 'x-tenant', value: 'a' }] },
    { method: { type: 'RegularExpression', service: 'shop\\..*' }, headers: [] },
  ]);
  t.same(rule.retry, { codes: [4, 14], attempts: 2, backoffMs: 50 }, 'gRPC codes by name or number, stored as numbers');
  t.same(rule.timeouts, { requestMs: 2000 });
  t.same((validateResource(grpcRoute(), 'x') as GRPCRoute).spec.rules[0]?.matches, [], 'no matches: every call');
  t.same((validateResource(grpcRoute({ rules: undefined }), 'x') as GRPCRoute).spec.rules, [], 'no rules: none (no upstream default)');
  const refusals: [Doc, string, RegExp][] = [
    [grpcRoute({ rules: [{ retry: { codes: ['UNAVAILABLEE'] } }] }), 'spec.rules[0].retry.codes[0]', /gRPC status code 0-16 or its name/],
    [grpcRoute({ rules: [{ retry: { codes: [17] } }] }), 'spec.rules[0].retry.codes[0]', /0-16/],
    [grpcRoute({ rules: [{ matches: [{ method: {} }] }] }), 'spec.rules[0].matches[0].method', /service or method/],
    [grpcRoute({ rules: [{ matches: [{ method: { service: 'a/b' } }] }] }), 'spec.rules[0].matches[0].method.service', /gRPC service name/],
    [grpcRoute({ rules: [{ matches: [{ path: { value: '/' } }] }] }), 'spec.rules[0].matches[0].path', /unknown field/],
    [grpcRoute({ rules: [{ filters: [{ type: 'URLRewrite', urlRewrite: { hostname: 'a' } }] }] }), 'spec.rules[0].filters[0].type', /on a GRPCRoute rule/],
  ];
  for (const [doc, field, message] of refusals) {
    const x = refusal(doc);
    t.ok(x.fields.includes(field), `names ${field} (got ${x.fields.join(', ')})`);
    t.match(x.message, message);
  }
});

t.test('FaultInjection', async (t) => {
  const f = validateResource(fault({ delay: { fixedDelay: '1s', percentage: 12.5 }, abort: { httpStatus: 503, grpcStatus: 'UNAVAILABLE' } }), 'x') as FaultInjection;
  t.same(f.spec, { delay: { fixedDelayMs: 1000, percentage: 12.5 }, abort: { httpStatus: 503, grpcStatus: 14, percentage: 100 } });
  const refusals: [Doc, string, RegExp][] = [
    [fault({}), 'spec', /delay or abort/],
    [fault({ abort: { httpStatus: 200 } }), 'spec.abort.httpStatus', /300-599/],
    [fault({ abort: { httpStatus: 503, grpcStatus: 'OK' } }), 'spec.abort.grpcStatus', /error status/],
    [fault({ abort: { httpStatus: 503, percentage: 101 } }), 'spec.abort.percentage', /0-100/],
    [fault({ delay: { percentage: 10 } }), 'spec.delay.fixedDelay', /required/],
    [fault({ delay: { fixedDelay: '1s', percent: 10 } }), 'spec.delay.percent', /known fields: fixedDelay, percentage/],
    [{ ...fault({ delay: { fixedDelay: '1s' } }), apiVersion: GW }, 'apiVersion', /ambit\.dev\/v1alpha1/],
  ];
  for (const [doc, field, message] of refusals) {
    const x = refusal(doc);
    t.ok(x.fields.includes(field), `names ${field} (got ${x.fields.join(', ')})`);
    t.match(x.message, message);
  }
});

/** Kinds whose documents, validated, printed and validated again, must come back equal (and through the wire too). */
const ROUND_TRIP: Doc[] = [
  httpRoute(),
  httpRoute({ rules: undefined, hostnames: ['web.example.com'] }),
  httpRoute({ rules: [] }),
  grpcRoute({ rules: undefined }),
  httpRoute({
    rules: [{
      name: 'canary',
      matches: [{ path: { type: 'RegularExpression', value: '^/v[12]/.*' }, headers: [{ name: 'X-Canary', value: 'yes' }], queryParams: [{ name: 'a', value: 'b' }], method: 'POST' }],
      filters: [
        { type: 'RequestHeaderModifier', requestHeaderModifier: { set: [{ name: 'X-A', value: '1' }], add: [{ name: 'X-B', value: '2' }], remove: ['X-C'] } },
        { type: 'ResponseHeaderModifier', responseHeaderModifier: { remove: ['Server'] } },
        { type: 'RequestMirror', requestMirror: { backendRef: { name: 'shadow', namespace: 'test', port: 80 }, fraction: { numerator: 1, denominator: 3 } } },
        { type: 'URLRewrite', urlRewrite: { hostname: 'internal', path: { type: 'ReplaceFullPath', replaceFullPath: '/x' } } },
        { type: 'ExtensionRef', extensionRef: { group: 'ambit.dev', kind: 'FaultInjection', name: 'slow' } },
      ],
      backendRefs: [{ name: 'web', port: 80, weight: 0, filters: [{ type: 'RequestHeaderModifier', requestHeaderModifier: { add: [{ name: 'x-v', value: '1' }] } }] }, { name: 'web2', namespace: 'other', port: 80 }],
      timeouts: { request: '1m30s', backendRequest: '1s' },
      retry: { codes: [500, 503], attempts: 0, backoff: '1s' },
    }, {
      matches: [{ path: { type: 'PathPrefix', value: '/old' } }],
      filters: [{ type: 'RequestRedirect', requestRedirect: { scheme: 'https', hostname: 'new.example.com', port: 8443, statusCode: 301, path: { type: 'ReplacePrefixMatch', replacePrefixMatch: '/new' } } }],
    }],
  }),
  grpcRoute({ rules: [{ matches: [{ method: { service: 'a.B' } }], retry: { codes: ['UNAVAILABLE', 'RESOURCE_EXHAUSTED'] }, timeouts: { backendRequest: '200ms' }, filters: [{ type: 'RequestMirror', requestMirror: { backendRef: { name: 'm', port: 1 }, percent: 5 } }] }] }),
  fault({ delay: { fixedDelay: '250ms', percentage: 0.5 } }),
  fault({ abort: { httpStatus: 503, grpcStatus: 14, percentage: 10 } }),
];

t.test('document, core and wire forms round-trip', async (t) => {
  for (const doc of ROUND_TRIP) {
    const r = validateResource(doc, 'x');
    const printed = toDocument(r);
    t.equal(printed['apiVersion'], doc['apiVersion'], `${r.kind} keeps its apiVersion`);
    t.same(validateResource(JSON.parse(JSON.stringify(printed)), 'y'), r, `${r.kind} ${r.metadata.name}: validate(toDocument(r)) equals r`);
    const back = resourceFromWire(resourceToWire({ ...r, metadata: { ...r.metadata, revision: 7 } } as Resource));
    t.same(back, { ...r, metadata: { ...r.metadata, revision: 7 } }, `${r.kind}: through the wire`);
  }
  const printed = toDocument(validateResource(ROUND_TRIP[4]!, 'x'));
  t.match(printed, { spec: { parentRefs: [{ group: '', kind: 'Service', namespace: 'shop', name: 'web', port: 80 }], rules: [{ timeouts: { request: '1m30s', backendRequest: '1s' } }] } }, 'upstream shape');
});

t.test('decoding a route from the wire re-validates it', async (t) => {
  const wire = resourceToWire(validateResource(httpRoute(), 'x'));
  if (wire.kind?.$case !== 'httpRoute') throw new Error('not an httpRoute');
  wire.kind.httpRoute.specJson = JSON.stringify({ parentRefs: [{ name: 'gw' }] });
  t.throws(() => resourceFromWire(wire), { code: 'AMBIT_ERR_RESOURCE_INVALID', message: /HTTPRoute shop\/r: spec\.parentRefs\[0\]\.group/ });
  wire.kind.httpRoute.specJson = '{';
  t.throws(() => resourceFromWire(wire), { code: 'AMBIT_ERR_RESOURCE_INVALID', message: /spec is not JSON/ });
});

t.test('a file with one bad route applies nothing', async (t) => {
  const text = `apiVersion: ${GW}
kind: HTTPRoute
metadata: {name: good, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
---
apiVersion: ${GW}
kind: HTTPRoute
metadata: {name: bad, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{backendRefs: [{name: web, port: 80}], retry: {codes: [200]}}]
`;
  const docs = parseDocuments(text, 'f.yaml').map((doc, i) => ({ doc, where: `f.yaml#${i + 1}` }));
  t.throws(() => validateAll(docs), { code: 'AMBIT_ERR_RESOURCE_INVALID', message: /f\.yaml#2 HTTPRoute shop\/bad: spec\.rules\[0\]\.retry\.codes\[0\]/ });
});
