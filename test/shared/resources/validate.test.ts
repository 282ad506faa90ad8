import t from 'tap';
import type { Test } from 'tap';
import { stringify } from 'yaml';
import { AmbitError } from '../../../shared/errors.ts';
import type { ErrorCode } from '../../../shared/errors.ts';
import type { AuthorizationPolicy, Resource, Service, Workload } from '../../../shared/resources/types.ts';
import {
  MAX_DOCUMENTS, MAX_INPUT_BYTES, parseDocuments, parsePortMapping, parseSourcedDocuments, toDocument, validateAll,
  validateResource,
} from '../../../shared/resources/validate.ts';

// ------------------------------------------------------------------ helpers

const API = 'ambit.dev/v1alpha1';
/** Marks a field to delete in with(). */
const DELETE = Symbol('delete');
type Doc = Record<string, unknown>;

function workloadDoc(): Doc {
  return { apiVersion: API, kind: 'Workload', metadata: { name: 'web' }, spec: { serviceAccount: 'web', node: 'node-a', address: '10.0.0.1' } };
}
function serviceDoc(): Doc {
  return { apiVersion: API, kind: 'Service', metadata: { name: 'web' }, spec: { ports: [{ port: 80 }] } };
}
function policyDoc(): Doc {
  return { apiVersion: API, kind: 'AuthorizationPolicy', metadata: { name: 'p' }, spec: { action: 'ALLOW' } };
}

/** A copy of `doc` with the dotted `path` set to `value` (or deleted). */
function withField(doc: Doc, path: string, value: unknown): Doc {
  const copy = structuredClone(doc);
  const keys = path.split('.');
  const last = keys.pop() ?? '';
  let at: Doc = copy;
  for (const k of keys) {
    const next = at[k];
    if (typeof next !== 'object' || next === null) at[k] = {};
    at = at[k] as Doc;
  }
  if (value === DELETE) delete at[last];
  else at[last] = value;
  return copy;
}

function thrown(fn: () => unknown): AmbitError {
  try {
    fn();
  } catch (err) {
    if (err instanceof AmbitError) return err;
    throw err;
  }
  throw new Error('expected an AmbitError, but nothing was thrown');
}

function errorLines(err: AmbitError): string[] {
  const e = err.details['errors'];
  return Array.isArray(e) ? e.map(String) : [];
}

function expectInvalid(tt: Test, doc: unknown, field: string, pattern: RegExp, code: ErrorCode = 'AMBIT_ERR_RESOURCE_INVALID'): void {
  const err = thrown(() => validateResource(doc, 'f.yaml#1'));
  tt.equal(err.code, code);
  tt.equal(err.details['field'], field, `details.field (message: ${err.message})`);
  tt.match(err.message, `: ${field}: `, 'the message names the field');
  tt.match(err.message, pattern);
  tt.equal(errorLines(err).length, 1, `exactly one problem reported: ${errorLines(err).join(' | ')}`);
}

// ------------------------------------------------------------------ valid documents and defaults

t.test('a minimal Workload gets every default', async (t) => {
  const r = validateResource(workloadDoc(), 'w.yaml#1');
  t.same(r, {
    kind: 'Workload',
    metadata: { name: 'web', namespace: 'default', labels: {}, revision: 0 },
    spec: { serviceAccount: 'web', node: 'node-a', address: '10.0.0.1', ports: [], weight: 1, locality: '', healthy: true },
  });
  t.notOk('uid' in r.spec, 'uid stays absent');
});

t.test('a full Workload is normalised', async (t) => {
  const doc = {
    apiVersion: API, kind: 'Workload',
    metadata: { name: 'web-1.v2', namespace: 'shop', labels: { 'app.kubernetes.io/name': 'web', tier: '' }, revision: 17 },
    spec: {
      serviceAccount: 'web.sa', node: 'node-a.example', address: '2001:DB8:0:0:0:0:0:0001', ports: [8443, 80, 8080],
      uid: 4294967294, weight: 1000, locality: 'eu-west/eu-west-1a/rack_3', healthy: false,
    },
  };
  const r = validateResource(doc, 'w.yaml#1') as Workload;
  t.same(r.metadata, { name: 'web-1.v2', namespace: 'shop', labels: { 'app.kubernetes.io/name': 'web', tier: '' }, revision: 0 },
    'input revision is ignored');
  t.equal(r.spec.address, '2001:db8::1', 'IPv6 in canonical form');
  t.same(r.spec.ports, [80, 8080, 8443], 'ports ascending');
  t.equal(r.spec.uid, 4294967294);
  t.equal(r.spec.weight, 1000);
  t.equal(r.spec.healthy, false);
});

t.test('a minimal Service gets every default', async (t) => {
  const doc = withField(serviceDoc(), 'spec.ports', [{ port: 9090, name: 'grpc' }, { port: 80, targetPort: 8080 }, { port: 443 }]);
  t.same(validateResource(doc, 's.yaml#1'), {
    kind: 'Service',
    metadata: { name: 'web', namespace: 'default', labels: {}, revision: 0 },
    spec: {
      addresses: [],
      ports: [
        { name: 'port-80', port: 80, targetPort: 8080, appProtocol: 'tcp' },
        { name: 'port-443', port: 443, targetPort: 443, appProtocol: 'tcp' },
        { name: 'grpc', port: 9090, targetPort: 9090, appProtocol: 'tcp' },
      ],
      selector: {},
    },
  });
});

t.test('a Service port declares its application protocol', async (t) => {
  const doc = withField(serviceDoc(), 'spec.ports', [
    { port: 80, appProtocol: 'http' }, { port: 81, appProtocol: 'http2' }, { port: 82, appProtocol: 'grpc' }, { port: 83, appProtocol: 'tcp' },
  ]);
  const r = validateResource(doc, 's.yaml') as Service;
  t.same(r.spec.ports.map((p) => p.appProtocol), ['http', 'http2', 'grpc', 'tcp']);
  const back = toDocument(r) as { spec: { ports: Record<string, unknown>[] } };
  t.same(back.spec.ports.map((p) => p['appProtocol']), ['http', 'http2', 'grpc', undefined], 'tcp, the default, is left out when printed');
  t.same(validateResource(back, 'back'), r, 'round trip');
});

t.test('Service addresses are canonical and keep their order', async (t) => {
  const doc = withField(withField(serviceDoc(), 'spec.addresses', ['FD00::10', '10.96.0.10']), 'spec.selector', { app: 'web' });
  const r = validateResource(doc, 's.yaml#1') as Service;
  t.same(r.spec.addresses, ['fd00::10', '10.96.0.10']);
  t.same(r.spec.selector, { app: 'web' });
});

t.test('a minimal AuthorizationPolicy has no selector and no rules', async (t) => {
  const r = validateResource(policyDoc(), 'p.yaml#1');
  t.same(r, { kind: 'AuthorizationPolicy', metadata: { name: 'p', namespace: 'default', labels: {}, revision: 0 }, spec: { action: 'ALLOW', rules: [] } });
  t.notOk('selector' in r.spec, 'no selector key: applies to the whole namespace');
});

t.test('an AuthorizationPolicy in Istio shape maps to the flat core types', async (t) => {
  const doc = withField(withField(policyDoc(), 'spec.selector', { matchLabels: { app: 'web' } }), 'spec.rules', [
    {
      from: [
        { source: { principals: ['spiffe://cluster.local/ns/shop/sa/front', 'cluster.local/ns/ops/*', '*/sa/monitor'], notNamespaces: ['test-*'] } },
        { source: { ipBlocks: ['10.1.2.3', '192.168.0.0/16', '2001:DB8::/32'], notIpBlocks: ['::FFFF:192.168.1.1'] } },
      ],
      to: [{ operation: { ports: ['8080', 443], notPorts: [22] } }],
    },
    { from: [{ source: { serviceAccounts: ['shop/front', 'ops/*'], namespaces: ['*'], notPrincipals: ['*'] } }] },
    {},
  ]);
  const r = validateResource(doc, 'p.yaml#1') as AuthorizationPolicy;
  const none = { principals: [], notPrincipals: [], namespaces: [], notNamespaces: [], serviceAccounts: [], notServiceAccounts: [], ipBlocks: [], notIpBlocks: [] };
  t.same(r.spec, {
    selector: { app: 'web' },
    action: 'ALLOW',
    rules: [
      {
        from: [
          { ...none, principals: ['*/sa/monitor', 'cluster.local/ns/ops/*', 'cluster.local/ns/shop/sa/front'], notNamespaces: ['test-*'] },
          { ...none, ipBlocks: ['10.1.2.3', '192.168.0.0/16', '2001:db8::/32'], notIpBlocks: ['::ffff:192.168.1.1'] },
        ],
        to: [{ ports: [443, 8080], notPorts: [22] }],
      },
      { from: [{ ...none, serviceAccounts: ['ops/*', 'shop/front'], namespaces: ['*'], notPrincipals: ['*'] }], to: [] },
      { from: [], to: [] },
    ],
  });
});

t.test('HTTP operation fields are kept as sets, hosts lower-cased, absent when unset', async (t) => {
  const doc = withField(policyDoc(), 'spec.rules', [{
    to: [
      { operation: { methods: ['POST', 'GET'], paths: ['/api/*', '*.png', '/healthz', '*'], notHosts: ['Admin.Example.com:*', '*.Internal'] } },
      { operation: { ports: [8080], notMethods: ['DELETE'], notPaths: ['/admin/*'], hosts: ['*'] } },
    ],
  }]);
  const r = validateResource(doc, 'p.yaml#1') as AuthorizationPolicy;
  t.same(r.spec.rules[0]!.to, [
    { ports: [], notPorts: [], methods: ['GET', 'POST'], paths: ['*', '*.png', '/api/*', '/healthz'], notHosts: ['*.internal', 'admin.example.com:*'] },
    { ports: [8080], notPorts: [], notMethods: ['DELETE'], notPaths: ['/admin/*'], hosts: ['*'] },
  ]);
  t.notOk('methods' in r.spec.rules[0]!.to[1]!, 'an unset HTTP field is absent');
});

t.test('an empty policy selector selects everything and is kept as {}', async (t) => {
  for (const sel of [{}, { matchLabels: {} }, { matchLabels: null }]) {
    const r = validateResource(withField(policyDoc(), 'spec.selector', sel), 'p.yaml#1') as AuthorizationPolicy;
    t.same(r.spec.selector, {}, JSON.stringify(sel));
  }
});

t.test('null counts as an omitted optional field', async (t) => {
  const doc = withField(withField(workloadDoc(), 'metadata.labels', null), 'spec.ports', null);
  const r = validateResource(doc, 'w.yaml#1') as Workload;
  t.same(r.metadata.labels, {});
  t.same(r.spec.ports, []);
});

// ------------------------------------------------------------------ one rule, one bad value

interface BadCase {
  readonly name: string;
  readonly doc: Doc;
  readonly field: string;
  readonly pattern: RegExp;
}

const bad = (name: string, base: () => Doc, path: string, value: unknown, field: string, pattern: RegExp): BadCase => ({
  name, doc: withField(base(), path, value), field, pattern,
});
const rule = (source: unknown): unknown[] => [{ from: [{ source }] }];
const op = (operation: unknown): unknown[] => [{ to: [{ operation }] }];
const SRC = 'spec.rules[0].from[0].source';
const OP = 'spec.rules[0].to[0].operation';

const BAD: readonly BadCase[] = [
  // document
  bad('wrong apiVersion', workloadDoc, 'apiVersion', 'v1', 'apiVersion', /must be "ambit\.dev\/v1alpha1", got "v1"/),
  bad('missing apiVersion', workloadDoc, 'apiVersion', DELETE, 'apiVersion', /is required/),
  bad('unknown kind', workloadDoc, 'kind', 'Pod', 'kind', /must be one of Workload, Service, AuthorizationPolicy, HTTPRoute, GRPCRoute, FaultInjection, ReferenceGrant, got "Pod"/),
  bad('missing spec', workloadDoc, 'spec', DELETE, 'spec', /is required/),
  bad('unknown top-level field', workloadDoc, 'status', {}, 'status', /unknown field/),
  bad('spec not a mapping', workloadDoc, 'spec', [1], 'spec', /must be a mapping, got a list of 1 item/),
  // metadata
  bad('missing name', workloadDoc, 'metadata.name', DELETE, 'metadata.name', /is required/),
  bad('upper-case name', workloadDoc, 'metadata.name', 'Web', 'metadata.name', /DNS subdomain.*got "Web"/),
  bad('name with underscore', workloadDoc, 'metadata.name', 'a_b', 'metadata.name', /DNS subdomain/),
  bad('name ending in -', workloadDoc, 'metadata.name', 'web-', 'metadata.name', /DNS subdomain/),
  bad('name too long', workloadDoc, 'metadata.name', 'a'.repeat(254), 'metadata.name', /at most 253/),
  bad('name a number', workloadDoc, 'metadata.name', 7, 'metadata.name', /must be a string \(quote it\), got 7/),
  bad('namespace with a dot', workloadDoc, 'metadata.namespace', 'a.b', 'metadata.namespace', /DNS label/),
  bad('namespace too long', workloadDoc, 'metadata.namespace', 'a'.repeat(64), 'metadata.namespace', /at most 63/),
  bad('label key with bad prefix', workloadDoc, 'metadata.labels', { 'Example.com/app': 'x' }, 'metadata.labels["Example.com/app"]', /invalid label key.*prefix/),
  bad('label key empty name', workloadDoc, 'metadata.labels', { 'example.com/': 'x' }, 'metadata.labels["example.com/"]', /invalid label key/),
  bad('label key too long', workloadDoc, 'metadata.labels', { ['k'.repeat(64)]: 'x' }, `metadata.labels.${'k'.repeat(64)}`, /invalid label key/),
  bad('label value too long', workloadDoc, 'metadata.labels', { app: 'v'.repeat(64) }, 'metadata.labels.app', /at most 63/),
  bad('label value bad start', workloadDoc, 'metadata.labels', { app: '-v' }, 'metadata.labels.app', /starting and ending/),
  bad('label value a number', workloadDoc, 'metadata.labels', { version: 1.5 }, 'metadata.labels.version', /quote it/),
  bad('labels a list', workloadDoc, 'metadata.labels', ['app'], 'metadata.labels', /must be a mapping/),
  bad('negative revision', workloadDoc, 'metadata.revision', -1, 'metadata.revision', /integer/),
  bad('metadata annotations', workloadDoc, 'metadata.annotations', {}, 'metadata.annotations', /unknown field: not supported/),
  // Workload
  bad('typo in a field name', workloadDoc, 'spec.serviceAcount', 'web', 'spec.serviceAcount', /unknown field \(did you mean "serviceAccount"\?\)/),
  bad('missing serviceAccount', workloadDoc, 'spec.serviceAccount', DELETE, 'spec.serviceAccount', /is required/),
  bad('bad serviceAccount', workloadDoc, 'spec.serviceAccount', 'Web_SA', 'spec.serviceAccount', /DNS subdomain/),
  bad('missing node', workloadDoc, 'spec.node', DELETE, 'spec.node', /is required/),
  bad('bad node', workloadDoc, 'spec.node', 'Node A', 'spec.node', /DNS subdomain/),
  bad('missing address', workloadDoc, 'spec.address', DELETE, 'spec.address', /is required/),
  bad('IPv4 with leading zero', workloadDoc, 'spec.address', '10.0.0.01', 'spec.address', /IPv4 or IPv6 address.*got "10\.0\.0\.01"/),
  bad('address a hostname', workloadDoc, 'spec.address', 'web.local', 'spec.address', /IPv4 or IPv6/),
  bad('address with zone id', workloadDoc, 'spec.address', 'fe80::1%eth0', 'spec.address', /IPv4 or IPv6/),
  bad('address a CIDR', workloadDoc, 'spec.address', '10.0.0.0/8', 'spec.address', /IPv4 or IPv6/),
  bad('port too large', workloadDoc, 'spec.ports', [80, 70000], 'spec.ports[1]', /must be an integer 1-65535, got 70000/),
  bad('port zero', workloadDoc, 'spec.ports', [0], 'spec.ports[0]', /1-65535, got 0/),
  bad('port fractional', workloadDoc, 'spec.ports', [80.5], 'spec.ports[0]', /got 80\.5/),
  bad('port a string', workloadDoc, 'spec.ports', ['80'], 'spec.ports[0]', /got "80"/),
  bad('duplicate port', workloadDoc, 'spec.ports', [80, 8080, 80], 'spec.ports[2]', /duplicate port 80 \(also at spec\.ports\[0\]\)/),
  bad('ports not a list', workloadDoc, 'spec.ports', 80, 'spec.ports', /must be a list, got 80/),
  bad('negative uid', workloadDoc, 'spec.uid', -1, 'spec.uid', /0-4294967294/),
  bad('uid (uid_t)-1', workloadDoc, 'spec.uid', 4294967295, 'spec.uid', /0-4294967294/),
  bad('weight zero', workloadDoc, 'spec.weight', 0, 'spec.weight', /1-1000, got 0/),
  bad('weight too large', workloadDoc, 'spec.weight', 1001, 'spec.weight', /1-1000/),
  bad('weight a string', workloadDoc, 'spec.weight', '5', 'spec.weight', /1-1000, got "5"/),
  bad('locality with 4 segments', workloadDoc, 'spec.locality', 'a/b/c/d', 'spec.locality', /region\/zone\/subzone/),
  bad('locality with an empty segment', workloadDoc, 'spec.locality', 'a//c', 'spec.locality', /region/),
  bad('healthy a string', workloadDoc, 'spec.healthy', 'yes', 'spec.healthy', /must be true or false, got "yes"/),
  // Service
  bad('no ports', serviceDoc, 'spec.ports', [], 'spec.ports', /at least one port/),
  bad('missing ports', serviceDoc, 'spec.ports', DELETE, 'spec.ports', /is required/),
  bad('service port too large', serviceDoc, 'spec.ports', [{ port: 65536 }], 'spec.ports[0].port', /1-65535/),
  bad('service port missing', serviceDoc, 'spec.ports', [{ name: 'http' }], 'spec.ports[0].port', /is required/),
  bad('targetPort zero', serviceDoc, 'spec.ports', [{ port: 80, targetPort: 0 }], 'spec.ports[0].targetPort', /1-65535/),
  bad('named targetPort', serviceDoc, 'spec.ports', [{ port: 80, targetPort: 'http' }], 'spec.ports[0].targetPort', /1-65535/),
  bad('port name upper-case', serviceDoc, 'spec.ports', [{ port: 80, name: 'HTTP' }], 'spec.ports[0].name', /DNS label/),
  bad('duplicate service port', serviceDoc, 'spec.ports', [{ port: 80 }, { port: 80, name: 'b' }], 'spec.ports[1]', /duplicate port 80/),
  bad('duplicate port name', serviceDoc, 'spec.ports', [{ port: 80, name: 'web' }, { port: 81, name: 'web' }], 'spec.ports[1]', /duplicate port name "web"/),
  bad('explicit name clashing with a default', serviceDoc, 'spec.ports', [{ port: 80, name: 'port-81' }, { port: 81 }], 'spec.ports[1]', /duplicate port name "port-81"/),
  bad('protocol field', serviceDoc, 'spec.ports', [{ port: 80, protocol: 'TCP' }], 'spec.ports[0].protocol', /TCP only/),
  bad('unknown appProtocol', serviceDoc, 'spec.ports', [{ port: 80, appProtocol: 'https' }], 'spec.ports[0].appProtocol',
    /must be one of tcp, http, http2, grpc, got "https"/),
  bad('upper-case appProtocol', serviceDoc, 'spec.ports', [{ port: 80, appProtocol: 'HTTP' }], 'spec.ports[0].appProtocol', /must be one of/),
  bad('appProtocol a number', serviceDoc, 'spec.ports', [{ port: 80, appProtocol: 2 }], 'spec.ports[0].appProtocol', /must be a string/),
  bad('bad service address', serviceDoc, 'spec.addresses', ['10.0.0.300'], 'spec.addresses[0]', /IPv4 or IPv6/),
  bad('same address spelt twice', serviceDoc, 'spec.addresses', ['::1', '0:0::1'], 'spec.addresses[1]', /duplicate address/),
  bad('selector value a number', serviceDoc, 'spec.selector', { app: 1 }, 'spec.selector.app', /quote it/),
  bad('clusterIP', serviceDoc, 'spec.clusterIP', '10.0.0.1', 'spec.clusterIP', /use addresses/),
  // AuthorizationPolicy
  bad('missing action', policyDoc, 'spec.action', DELETE, 'spec.action', /is required/),
  bad('lower-case action', policyDoc, 'spec.action', 'allow', 'spec.action', /must be "ALLOW" or "DENY", got "allow"/),
  bad('AUDIT action', policyDoc, 'spec.action', 'AUDIT', 'spec.action', /AUDIT is not supported/),
  bad('selector without matchLabels wrapper', policyDoc, 'spec.selector', { app: 'web' }, 'spec.selector.app', /unknown field/),
  bad('matchExpressions', policyDoc, 'spec.selector', { matchExpressions: [] }, 'spec.selector.matchExpressions', /use matchLabels/),
  bad('bad matchLabels value', policyDoc, 'spec.selector', { matchLabels: { app: 'a b' } }, 'spec.selector.matchLabels.app', /letters, digits/),
  bad('rules not a list', policyDoc, 'spec.rules', {}, 'spec.rules', /must be a list/),
  bad('when conditions', policyDoc, 'spec.rules', [{ when: [] }], 'spec.rules[0].when', /conditions are not supported: Ambit authorizes by peer, port, method, path and host/),
  bad('from item without source', policyDoc, 'spec.rules', [{ from: [{}] }], 'spec.rules[0].from[0].source', /is required/),
  bad('empty source', policyDoc, 'spec.rules', rule({}), SRC, /matches everything; omit it instead/),
  bad('source of empty lists', policyDoc, 'spec.rules', rule({ principals: [], ipBlocks: [] }), SRC, /matches everything/),
  bad('empty operation', policyDoc, 'spec.rules', op({}), OP, /matches everything/),
  bad('method with a space', policyDoc, 'spec.rules', op({ methods: ['GE T'] }), `${OP}.methods[0]`, /HTTP method such as GET, got "GE T"/),
  bad('method with a star inside', policyDoc, 'spec.rules', op({ notMethods: ['G*T'] }), `${OP}.notMethods[0]`, /first or last character/),
  bad('relative path', policyDoc, 'spec.rules', op({ paths: ['admin/*'] }), `${OP}.paths[0]`, /must start with "\/"/),
  bad('path template', policyDoc, 'spec.rules', op({ paths: ['/a/{*}/b'] }), `${OP}.paths[0]`, /no path templates/),
  bad('path with a star inside', policyDoc, 'spec.rules', op({ notPaths: ['/a*b'] }), `${OP}.notPaths[0]`, /first or last character/),
  bad('path normalisation would change', policyDoc, 'spec.rules', op({ paths: ['/a/../admin'] }), `${OP}.paths[0]`, /would never match.*normalised path, "\/admin"/),
  bad('path with a query', policyDoc, 'spec.rules', op({ paths: ['/a?b=1'] }), `${OP}.paths[0]`, /without its query/),
  bad('path with a space', policyDoc, 'spec.rules', op({ paths: ['/a b'] }), `${OP}.paths[0]`, /visible ASCII/),
  bad('host with a slash', policyDoc, 'spec.rules', op({ hosts: ['a.com/x'] }), `${OP}.hosts[0]`, /host name or address/),
  bad('one host in two cases', policyDoc, 'spec.rules', op({ notHosts: ['A.example', 'a.example'] }), `${OP}.notHosts[1]`, /duplicate entry "a\.example"/),
  bad('empty method', policyDoc, 'spec.rules', op({ methods: [''] }), `${OP}.methods[0]`, /non-empty string/),
  bad('requestPrincipals', policyDoc, 'spec.rules', rule({ requestPrincipals: ['*'] }), `${SRC}.requestPrincipals`, /JWT/),
  bad('principal without trust domain', policyDoc, 'spec.rules', rule({ principals: ['ns/a/sa/b'] }), `${SRC}.principals[0]`, /trust domain \(e\.g\. cluster\.local\/ns\/a\/sa\/b\)/),
  bad('principal prefix without trust domain', policyDoc, 'spec.rules', rule({ principals: ['ns/a/*'] }), `${SRC}.principals[0]`, /trust domain/),
  bad('principal with a star inside', policyDoc, 'spec.rules', rule({ principals: ['td/ns/*/sa/b'] }), `${SRC}.principals[0]`, /first or last character/),
  bad('principal with two stars', policyDoc, 'spec.rules', rule({ principals: ['*td*'] }), `${SRC}.principals[0]`, /first or last character/),
  bad('principal of another scheme', policyDoc, 'spec.rules', rule({ principals: ['https://td/ns/a/sa/b'] }), `${SRC}.principals[0]`, /spiffe:\/\//),
  bad('principal of a bad path', policyDoc, 'spec.rules', rule({ principals: ['spiffe://td/ns/a'] }), `${SRC}.principals[0]`, /path is not/),
  bad('principal upper-case trust domain', policyDoc, 'spec.rules', rule({ principals: ['TD/ns/a/sa/b'] }), `${SRC}.principals[0]`, /trust domain/),
  bad('empty principal', policyDoc, 'spec.rules', rule({ principals: [''] }), `${SRC}.principals[0]`, /non-empty string/),
  bad('principal a number', policyDoc, 'spec.rules', rule({ principals: [5] }), `${SRC}.principals[0]`, /must be a string/),
  bad('principals not a list', policyDoc, 'spec.rules', rule({ principals: 'td/ns/a/sa/b' }), `${SRC}.principals`, /must be a list/),
  bad('one principal in two spellings', policyDoc, 'spec.rules', rule({ principals: ['spiffe://td/ns/a/sa/b', 'td/ns/a/sa/b'] }), `${SRC}.principals[1]`, /duplicate entry "td\/ns\/a\/sa\/b"/),
  bad('bad namespace', policyDoc, 'spec.rules', rule({ notNamespaces: ['Prod'] }), `${SRC}.notNamespaces[0]`, /namespace name/),
  bad('namespace star inside', policyDoc, 'spec.rules', rule({ namespaces: ['a*b'] }), `${SRC}.namespaces[0]`, /namespace name/),
  bad('service account without namespace', policyDoc, 'spec.rules', rule({ serviceAccounts: ['web'] }), `${SRC}.serviceAccounts[0]`, /<namespace>\/<service-account>/),
  bad('service account with three parts', policyDoc, 'spec.rules', rule({ notServiceAccounts: ['a/b/c'] }), `${SRC}.notServiceAccounts[0]`, /<namespace>\/<service-account>/),
  bad('CIDR with host bits', policyDoc, 'spec.rules', rule({ ipBlocks: ['10.1.2.3/8'] }), `${SRC}.ipBlocks[0]`, /host bits set; did you mean 10\.0\.0\.0\/8\?/),
  bad('IPv6 CIDR with host bits', policyDoc, 'spec.rules', rule({ ipBlocks: ['2001:db8::1/32'] }), `${SRC}.ipBlocks[0]`, /did you mean 2001:db8::\/32\?/),
  bad('prefix too long', policyDoc, 'spec.rules', rule({ notIpBlocks: ['10.0.0.0/33'] }), `${SRC}.notIpBlocks[0]`, /0-32/),
  bad('prefix missing', policyDoc, 'spec.rules', rule({ ipBlocks: ['10.0.0.0/'] }), `${SRC}.ipBlocks[0]`, /0-32/),
  bad('IPv4 block with leading zero', policyDoc, 'spec.rules', rule({ ipBlocks: ['010.0.0.0/8'] }), `${SRC}.ipBlocks[0]`, /invalid IP address/),
  bad('bad bare IP', policyDoc, 'spec.rules', rule({ ipBlocks: ['1.2.3'] }), `${SRC}.ipBlocks[0]`, /IP address or CIDR/),
  bad('operation port zero', policyDoc, 'spec.rules', op({ ports: [0] }), `${OP}.ports[0]`, /1-65535/),
  bad('operation port a name', policyDoc, 'spec.rules', op({ ports: ['http'] }), `${OP}.ports[0]`, /1-65535, got "http"/),
  bad('operation port with leading zero', policyDoc, 'spec.rules', op({ notPorts: ['080'] }), `${OP}.notPorts[0]`, /1-65535/),
  bad('operation port string and number', policyDoc, 'spec.rules', op({ ports: [80, '80'] }), `${OP}.ports[1]`, /duplicate entry 80/),
];

t.test('each rule rejects a bad value with a message naming the field', async (t) => {
  for (const c of BAD) {
    t.test(c.name, async (tt) => expectInvalid(tt, c.doc, c.field, c.pattern));
  }
});

t.test('the error message and details name where, kind, object and field', async (t) => {
  const err = thrown(() => validateResource(withField(workloadDoc(), 'spec.ports', [80, 70000]), 'examples/web.yaml#2'));
  t.equal(err.message, 'examples/web.yaml#2 Workload default/web: spec.ports[1]: must be an integer 1-65535, got 70000');
  t.match(err.details, { field: 'spec.ports[1]', where: 'examples/web.yaml#2', kind: 'Workload', name: 'web', namespace: 'default', value: 70000 });
});

t.test('documents that are not mappings', async (t) => {
  for (const doc of [null, 'Workload', 42, [workloadDoc()]]) {
    const err = thrown(() => validateResource(doc, 'x#1'));
    t.equal(err.code, 'AMBIT_ERR_RESOURCE_INVALID');
    t.match(err.message, /^x#1: \(document\): must be a mapping/);
  }
});

t.test('huge values are cut in messages', async (t) => {
  const err = thrown(() => validateResource(withField(workloadDoc(), 'spec.node', 'x'.repeat(100_000)), 'x#1'));
  t.ok(err.message.length < 400, `message is ${err.message.length} characters`);
  t.match(err.message, /\(100000 characters\)/);
});

// ------------------------------------------------------------------ several problems at once

t.test('all problems of a document are reported together', async (t) => {
  let doc = withField(workloadDoc(), 'metadata.namespace', 'Bad_NS');
  doc = withField(doc, 'spec.address', '999.0.0.1');
  doc = withField(doc, 'spec.weight', 0);
  doc = withField(doc, 'spec.nodeName', 'n');
  const err = thrown(() => validateResource(doc, 'w.yaml#3'));
  const lines = errorLines(err);
  t.equal(lines.length, 4, lines.join('\n'));
  t.match(err.message, /^w\.yaml#3 Workload web: metadata\.namespace: .* \(and 3 more errors\)$/);
  for (const field of ['metadata.namespace', 'spec.address', 'spec.weight', 'spec.nodeName']) {
    t.ok(lines.some((l) => l.startsWith(`w.yaml#3 Workload web: ${field}: `)), `${field} is listed`);
  }
});

t.test('metadata and spec problems are reported in one round', async (t) => {
  const doc = withField(withField(policyDoc(), 'metadata.name', 'P'), 'spec.action', 'MAYBE');
  const err = thrown(() => validateResource(doc, 'p#1'));
  t.same(errorLines(err), [
    'p#1 AuthorizationPolicy: metadata.name: must be a DNS subdomain (lower-case letters, digits, "-" and ".", starting and ending with a letter or digit, at most 253), got "P"',
    'p#1 AuthorizationPolicy: spec.action: must be "ALLOW" or "DENY", got "MAYBE"',
  ]);
});

// ------------------------------------------------------------------ batches

t.test('validateAll returns every resource of a valid batch', async (t) => {
  const out = validateAll([
    { doc: workloadDoc(), where: 'a#1' },
    { doc: serviceDoc(), where: 'a#2' },
    { doc: withField(workloadDoc(), 'metadata.namespace', 'other'), where: 'a#3' },
    { doc: policyDoc(), where: 'a#4' },
  ].map((d, i) => (i === 2 ? { ...d, doc: withField(d.doc, 'spec.address', '10.0.0.2') } : d)));
  t.same(out.map((r) => `${r.kind}/${r.metadata.namespace}/${r.metadata.name}`),
    ['Workload/default/web', 'Service/default/web', 'Workload/other/web', 'AuthorizationPolicy/default/p']);
});

t.test('validateAll reports every invalid document in one error', async (t) => {
  const err = thrown(() => validateAll([
    { doc: withField(workloadDoc(), 'spec.weight', 0), where: 'a.yaml#1' },
    { doc: serviceDoc(), where: 'a.yaml#2' },
    { doc: withField(withField(policyDoc(), 'spec.action', 'x'), 'kind', 'AuthorizationPolicy'), where: 'a.yaml#3' },
  ]));
  t.equal(err.code, 'AMBIT_ERR_RESOURCE_INVALID');
  t.match(err.message, /^a\.yaml#1 Workload default\/web: spec\.weight: .* \(2 of 3 documents are invalid; nothing was applied\)$/);
  t.same(err.details['documents'], ['a.yaml#1', 'a.yaml#3']);
  const lines = errorLines(err);
  t.equal(lines.length, 2);
  t.match(lines[1], /^a\.yaml#3 AuthorizationPolicy default\/p: spec\.action: /);
  t.ok(err.cause instanceof AggregateError, 'cause holds each document error');
});

t.test('validateAll refuses one name twice in a batch', async (t) => {
  const err = thrown(() => validateAll([
    { doc: workloadDoc(), where: 'a.yaml#1' },
    { doc: serviceDoc(), where: 'a.yaml#2' },
    { doc: withField(workloadDoc(), 'spec.address', '10.0.0.9'), where: 'b.yaml#4' },
  ]));
  t.equal(err.code, 'AMBIT_ERR_RESOURCE_CONFLICT');
  t.equal(err.message, 'b.yaml#4 Workload default/web: also defined at a.yaml#1');
});

t.test('validateAll refuses two workloads with one address, however spelt', async (t) => {
  const err = thrown(() => validateAll([
    { doc: withField(workloadDoc(), 'spec.address', 'fd00::1'), where: 'a.yaml#1' },
    { doc: withField(withField(workloadDoc(), 'metadata.name', 'api'), 'spec.address', 'FD00:0::1'), where: 'a.yaml#2' },
  ]));
  t.equal(err.code, 'AMBIT_ERR_RESOURCE_CONFLICT');
  t.equal(err.message, 'a.yaml#2 Workload default/api: spec.address fd00::1 is also used by Workload default/web at a.yaml#1');
});

// ------------------------------------------------------------------ YAML parsing

t.test('parseDocuments reads multi-document YAML and skips empty documents', async (t) => {
  const text = '---\n# comment only\n---\napiVersion: ambit.dev/v1alpha1\nkind: Service\n---\n\n---\n{"a": [1, 2]}\n---\n~\n';
  t.same(parseDocuments(text, 'x.yaml'), [{ apiVersion: 'ambit.dev/v1alpha1', kind: 'Service' }, { a: [1, 2] }]);
  t.same(parseSourcedDocuments(text, 'x.yaml').map((d) => d.where), ['x.yaml#2', 'x.yaml#4'],
    'documents are numbered as a reader counts them, empty ones included');
  t.same(parseDocuments('', 'empty.yaml'), []);
});

t.test('JSON input is YAML too', async (t) => {
  const json = JSON.stringify(toDocument(validateResource(workloadDoc(), 'x')));
  t.same(validateAll(parseSourcedDocuments(json, 'w.json'))[0]?.metadata.name, 'web');
});

t.test('a YAML syntax error names the source and the line', async (t) => {
  const text = 'apiVersion: ambit.dev/v1alpha1\nkind: Workload\nmetadata: {name: web\nspec: {}\n';
  const err = thrown(() => parseDocuments(text, 'bad.yaml'));
  t.equal(err.code, 'AMBIT_ERR_RESOURCE_PARSE');
  t.match(err.message, /^bad\.yaml: line \d+, column \d+: /);
  t.type(err.details['line'], 'number');
  t.ok(err.cause instanceof Error, 'the parser error is the cause');

  const second = thrown(() => parseDocuments('a: 1\n---\nb: c: d\n', 'two.yaml'));
  t.match(second.message, /^two\.yaml: line 3, column 4: /);
  t.equal(second.details['line'], 3, 'lines count from the start of the file, across documents');
});

t.test('duplicate keys are a parse error', async (t) => {
  const err = thrown(() => parseDocuments('kind: Workload\nkind: Service\n', 'dup.yaml'));
  t.equal(err.code, 'AMBIT_ERR_RESOURCE_PARSE');
  t.match(err.message, /dup\.yaml: line 2, .*unique/);
});

t.test('input over 1 MiB is refused before parsing', async (t) => {
  t.doesNotThrow(() => parseDocuments(`# ${'x'.repeat(MAX_INPUT_BYTES - 3)}\n`, 'edge.yaml'), 'exactly 1 MiB is fine');
  const err = thrown(() => parseDocuments(`# ${'é'.repeat(MAX_INPUT_BYTES / 2)}\n`, 'big.yaml'));
  t.equal(err.code, 'AMBIT_ERR_RESOURCE_PARSE');
  t.match(err.message, /^big\.yaml: input is \d+ bytes, over the limit of 1048576 \(1 MiB\)/, 'counted in UTF-8 bytes');
});

t.test('more than 1000 documents are refused', async (t) => {
  t.equal(parseDocuments('---\na: 1\n'.repeat(MAX_DOCUMENTS), 'ok.yaml').length, MAX_DOCUMENTS);
  const err = thrown(() => parseDocuments('---\na: 1\n'.repeat(MAX_DOCUMENTS + 1), 'many.yaml'));
  t.equal(err.code, 'AMBIT_ERR_RESOURCE_PARSE');
  t.match(err.message, /many\.yaml: holds 1001 documents, over the limit of 1000/);
});

t.test('alias expansion bombs and dangling aliases are parse errors', async (t) => {
  const levels = ['a: &a ["x","x","x","x","x","x","x","x","x"]'];
  for (let i = 1; i < 8; i++) levels.push(`${'abcdefgh'[i]}: &${'abcdefgh'[i]} [${Array(9).fill(`*${'abcdefgh'[i - 1]}`).join(',')}]`);
  const bomb = thrown(() => parseDocuments(levels.join('\n'), 'bomb.yaml'));
  t.equal(bomb.code, 'AMBIT_ERR_RESOURCE_PARSE');
  t.match(bomb.message, /^bomb\.yaml#1: .*alias/i);
  t.same(parseDocuments('a: &x [1]\nb: *x\n', 'ok.yaml'), [{ a: [1], b: [1] }], 'a modest alias is fine');
  const dangling = thrown(() => parseDocuments('a: *nope\n', 'd.yaml'));
  t.equal(dangling.code, 'AMBIT_ERR_RESOURCE_PARSE');
});

t.test('YAML 1.1 surprises do not sneak in', async (t) => {
  const [doc] = parseDocuments('a: yes\nb: !!binary aGk=\nc: 0x50\n', 'x.yaml');
  t.same(doc, { a: 'yes', b: 'aGk=', c: 80 }, '"yes" stays a string; !!binary is not decoded');
});

// ------------------------------------------------------------------ round trips

const RICH: readonly Doc[] = [
  {
    apiVersion: API, kind: 'Workload',
    metadata: { name: 'db', namespace: 'data', labels: { app: 'db', 'example.com/tier': 'backend' } },
    spec: {
      serviceAccount: 'db', node: 'vm-3', address: '::ffff:10.0.0.7', ports: [5432, 9187], uid: 999, weight: 10,
      locality: 'eu/eu-1/r1', healthy: false,
    },
  },
  workloadDoc(),
  {
    apiVersion: API, kind: 'Service', metadata: { name: 'db', namespace: 'data' },
    spec: {
      addresses: ['10.96.0.5', 'fd00::5'], selector: { app: 'db' },
      ports: [{ port: 5432 }, { name: 'metrics', port: 9187, targetPort: 19187 }, { name: 'port-6000', port: 6000 }],
    },
  },
  serviceDoc(),
  {
    apiVersion: API, kind: 'AuthorizationPolicy', metadata: { name: 'db-access', namespace: 'ambit-system', labels: { team: 'data' } },
    spec: {
      selector: { matchLabels: { app: 'db' } }, action: 'DENY',
      rules: [
        {
          from: [{ source: { notPrincipals: ['spiffe://cluster.local/ns/data/sa/app', 'cluster.local/ns/ops/*'], notNamespaces: ['data'] } }],
          to: [{ operation: { ports: [5432] } }, { operation: { notPorts: ['9187'] } }],
        },
        { from: [{ source: { ipBlocks: ['0.0.0.0/0'], notIpBlocks: ['10.0.0.0/8', '::/0'], serviceAccounts: ['*/default'] } }] },
        {},
      ],
    },
  },
  withField(policyDoc(), 'spec.selector', {}),
  policyDoc(),
];

t.test('toDocument round-trips through validateResource', async (t) => {
  for (const doc of RICH) {
    const r = validateResource(doc, 'rich');
    const back = toDocument(r);
    t.same(validateResource(back, 'back'), r, `${r.kind} ${r.metadata.name}`);
    // Through YAML text too, with a stored revision: what `get -o yaml | apply -f -` does.
    const stored: Resource = { ...r, metadata: { ...r.metadata, revision: 42 } } as Resource;
    const text = stringify(toDocument(stored));
    t.match(text, /revision: 42/);
    t.same(validateAll(parseSourcedDocuments(text, 'get.yaml')), [r], `${r.kind} ${r.metadata.name} via YAML text`);
  }
});

t.test('toDocument writes the input shape and leaves out defaults', async (t) => {
  const [w, , s, , p] = RICH.map((d) => toDocument(validateResource(d, 'x')));
  t.same(toDocument(validateResource(workloadDoc(), 'x')), {
    apiVersion: API, kind: 'Workload', metadata: { name: 'web', namespace: 'default', labels: {}, revision: 0 },
    spec: { serviceAccount: 'web', node: 'node-a', address: '10.0.0.1' },
  });
  t.match(w, { spec: { ports: [5432, 9187], uid: 999, weight: 10, locality: 'eu/eu-1/r1', healthy: false } });
  t.same((s as { spec: unknown }).spec, {
    addresses: ['10.96.0.5', 'fd00::5'],
    ports: [{ port: 5432, targetPort: 5432 }, { port: 6000, targetPort: 6000 }, { name: 'metrics', port: 9187, targetPort: 19187 }],
    selector: { app: 'db' },
  }, 'a port name is left out when it is the default for its port, even if it was written out');
  t.same((p as { spec: unknown }).spec, {
    selector: { matchLabels: { app: 'db' } }, action: 'DENY',
    rules: [
      {
        from: [{ source: { notPrincipals: ['cluster.local/ns/data/sa/app', 'cluster.local/ns/ops/*'], notNamespaces: ['data'] } }],
        to: [{ operation: { ports: [5432] } }, { operation: { notPorts: [9187] } }],
      },
      { from: [{ source: { serviceAccounts: ['*/default'], ipBlocks: ['0.0.0.0/0'], notIpBlocks: ['10.0.0.0/8', '::/0'] } }] },
      {},
    ],
  });
});

t.test('toDocument shares nothing with the resource', async (t) => {
  const r = validateResource(RICH[0], 'x') as Workload;
  const doc = toDocument(r) as { metadata: { labels: Record<string, string> }; spec: { ports: number[] } };
  doc.metadata.labels['x'] = 'y';
  doc.spec.ports.push(1);
  t.same(r.metadata.labels, { app: 'db', 'example.com/tier': 'backend' });
  t.same(r.spec.ports, [5432, 9187]);
});

// ------------------------------------------------------------------ CLI port mappings

t.test('parsePortMapping', async (t) => {
  const good: [string, object][] = [
    ['80', { name: 'port-80', port: 80, targetPort: 80, appProtocol: 'tcp' }],
    ['80:8080', { name: 'port-80', port: 80, targetPort: 8080, appProtocol: 'tcp' }],
    ['http=80:8080', { name: 'http', port: 80, targetPort: 8080, appProtocol: 'tcp' }],
    ['grpc=9090', { name: 'grpc', port: 9090, targetPort: 9090, appProtocol: 'tcp' }],
    ['web=80:8080/http', { name: 'web', port: 80, targetPort: 8080, appProtocol: 'http' }],
    ['9090/grpc', { name: 'port-9090', port: 9090, targetPort: 9090, appProtocol: 'grpc' }],
    ['81:8081/http2', { name: 'port-81', port: 81, targetPort: 8081, appProtocol: 'http2' }],
  ];
  for (const [text, want] of good) t.same(parsePortMapping(text), want, text);
  const badOnes: [string, RegExp][] = [
    ['', /expected \[NAME=\]PORT\[:TARGET_PORT\]\[\/APP_PROTOCOL\]/],
    ['80:', /expected \[NAME=\]PORT/],
    ['http', /expected \[NAME=\]PORT/],
    ['80:8080:9090', /expected \[NAME=\]PORT/],
    ['70000', /port must be an integer 1-65535, got 70000/],
    ['80:0', /targetPort must be an integer 1-65535, got 0/],
    ['HTTP=80', /name must be a DNS label/],
    ['=80', /name must be a DNS label/],
    ['80/https', /appProtocol must be one of tcp, http, http2, grpc, got "https"/],
    ['80/http/x', /expected/],
  ];
  for (const [text, pattern] of badOnes) {
    const err = thrown(() => parsePortMapping(text));
    t.equal(err.code, 'AMBIT_ERR_RESOURCE_INVALID', text);
    t.match(err.message, new RegExp(`^invalid port mapping ${JSON.stringify(text).replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: `), text);
    t.match(err.message, pattern, text);
  }
});
