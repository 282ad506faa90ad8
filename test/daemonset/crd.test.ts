import t from 'tap';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { AmbitError } from '../../shared/errors.ts';
import { parseDocuments, validateResource } from '../../shared/resources/validate.ts';
import { OPERATION_FIELDS, SOURCE_FIELDS } from '../../shared/resources/validate-policy.ts';
import { HTTP_OPERATION_FIELDS } from '../../shared/authorization-http.ts';
import { API_VERSION } from '../../shared/resources/types.ts';
import { structuralProblems, validateCustomResource } from './crd-schema.ts';
import { ROOT, at, find, loadManifests, obj, type Obj } from './load.ts';

/*
 * The AuthorizationPolicy CRD (daemonset/crd.yaml) against Ambit's own policy
 * validator (shared/resources/validate-policy.ts): the API server must admit
 * what Ambit accepts and refuse, at least, every structural mistake Ambit
 * refuses (unknown fields, actions, port ranges, types). Values the schema
 * cannot judge (SPIFFE IDs, CIDRs) are left to the controller.
 */

const docs = loadManifests(['crd.yaml']);
const crd = find(docs, 'CustomResourceDefinition', 'authorizationpolicies.ambit.dev') ?? {};
const version = obj((at(crd, 'spec.versions') as unknown[] | undefined)?.[0]);
const schema = obj(at(version, 'schema.openAPIV3Schema'));

function policy(spec: unknown, name = 'p'): Obj {
  return { apiVersion: API_VERSION, kind: 'AuthorizationPolicy', metadata: { name, namespace: 'demo' }, spec };
}

/** undefined when Ambit's validator accepts the document, else its message. */
function ambitVerdict(doc: unknown): string | undefined {
  try {
    validateResource(doc, 'test');
    return undefined;
  } catch (err) {
    if (err instanceof AmbitError) return err.message;
    throw err;
  }
}

t.test('the CRD is the one the controller reads', async (tt) => {
  tt.equal(at(crd, 'spec.group'), 'ambit.dev');
  tt.equal(at(crd, 'spec.scope'), 'Namespaced');
  tt.equal(at(crd, 'spec.names.kind'), 'AuthorizationPolicy');
  tt.equal(at(crd, 'metadata.name'), `${String(at(crd, 'spec.names.plural'))}.${String(at(crd, 'spec.group'))}`, 'name is <plural>.<group>');
  tt.equal(`${String(at(crd, 'spec.group'))}/${String(version.name)}`, API_VERSION, 'the resource files\' apiVersion');
  tt.equal(version.served, true);
  tt.equal(version.storage, true);
  const shortNames = at(crd, 'spec.names.shortNames') as unknown[];
  tt.ok(shortNames.includes('aap'), 'short name aap');
  tt.notOk(shortNames.includes('ap'), 'not Istio\'s "ap"');
  const columns = (at(version, 'additionalPrinterColumns') as Obj[]).map((c) => `${String(c.name)}=${String(c.jsonPath)}`);
  tt.same(columns, ['Action=.spec.action', 'Age=.metadata.creationTimestamp']);
});

t.test('the schema is structural, closed, and in step with the validator', async (tt) => {
  tt.same(structuralProblems(schema), [], 'the API server would accept it');
  const spec = obj(at(schema, 'properties.spec'));
  tt.same(Object.keys(obj(spec.properties)).sort(), ['action', 'rules', 'selector']);
  tt.same(at(spec, 'properties.action.enum'), ['ALLOW', 'DENY']);
  tt.same(at(spec, 'required'), ['action'], 'action is required, as in the validator');
  const source = obj(at(spec, 'properties.rules.items.properties.from.items.properties.source.properties'));
  const operation = obj(at(spec, 'properties.rules.items.properties.to.items.properties.operation.properties'));
  tt.same(Object.keys(source).sort(), [...SOURCE_FIELDS].sort(), 'source fields are exactly validate-policy.ts\'s');
  tt.same(Object.keys(operation).sort(), [...OPERATION_FIELDS].sort(), 'operation fields are exactly validate-policy.ts\'s');
  for (const k of ['ports', 'notPorts']) tt.equal(at(operation[k], 'items.x-kubernetes-int-or-string'), true, `${k}: int or string`);
  for (const k of HTTP_OPERATION_FIELDS) tt.equal(at(operation[k], 'items.type'), 'string', `${k}: strings`);
  const text = JSON.stringify(schema);
  tt.notOk(text.includes('x-kubernetes-preserve-unknown-fields'), 'no preserve-unknown-fields anywhere');

  // The structural check itself must see what the API server would refuse.
  const broken = (change: (s: Obj) => void): string[] => {
    const s = structuredClone(schema) as Obj;
    change(s);
    return structuralProblems(s);
  };
  const specOf = (s: Obj): Obj => obj(at(s, 'properties.spec'));
  tt.not(broken((s) => { specOf(s).additionalProperties = false; }).length, 0, 'detects: additionalProperties: false beside properties');
  tt.not(broken((s) => { specOf(s)['x-kubernetes-preserve-unknown-fields'] = true; }).length, 0, 'detects: preserve-unknown-fields');
  tt.not(broken((s) => { delete obj(at(specOf(s), 'properties.action')).type; }).length, 0, 'detects: an untyped node');
  tt.not(broken((s) => { obj(at(specOf(s), 'properties.rules')).uniqueItems = true; }).length, 0, 'detects: uniqueItems');
  tt.not(broken((s) => { obj(s.properties).metadata = { type: 'object', properties: { name: { type: 'string' } } }; }).length, 0, 'detects: constraints on metadata');
});

t.test('the CRD admits the example policies', async (tt) => {
  const files = readdirSync(join(ROOT, 'examples')).filter((f) => /\.ya?ml$/.test(f));
  let policies = 0;
  for (const f of files) {
    for (const doc of parseDocuments(readFileSync(join(ROOT, 'examples', f), 'utf8'), f)) {
      if (obj(doc).kind !== 'AuthorizationPolicy') continue;
      policies++;
      tt.equal(ambitVerdict(doc), undefined, `${f}: Ambit accepts it`);
      tt.same(validateCustomResource(schema, doc), [], `${f}: the CRD admits it as it is`);
    }
  }
  tt.ok(policies > 0, `examples hold ${policies} AuthorizationPolicy`);
});

const ALLOW_CLIENT = { action: 'ALLOW', rules: [{ from: [{ source: { principals: ['cluster.local/ns/demo/sa/client'] } }], to: [{ operation: { ports: [8080] } }] }] };

/** Specs both Ambit and the CRD accept. */
const ACCEPTED: Readonly<Record<string, unknown>> = {
  'the minimal DENY': { action: 'DENY' },
  'ALLOW with rules': ALLOW_CLIENT,
  'ports as strings of digits': { action: 'ALLOW', rules: [{ to: [{ operation: { ports: ['80', '65535'], notPorts: [1] } }] }] },
  'every source field': {
    action: 'DENY',
    rules: [{ from: [{ source: {
      principals: ['*'], notPrincipals: ['cluster.local/ns/a/sa/b'], namespaces: ['prod-*'], notNamespaces: ['kube-system'],
      serviceAccounts: ['prod/*'], notServiceAccounts: ['prod/admin'], ipBlocks: ['10.0.0.0/8'], notIpBlocks: ['10.1.2.3'],
    } }] }],
  },
  'an empty selector': { selector: {}, action: 'ALLOW', rules: [] },
  'a label selector': { selector: { matchLabels: { app: 'web', 'app.kubernetes.io/name': 'web' } }, action: 'DENY', rules: [{}] },
  'a null field (absent)': { action: 'DENY', rules: null },
  'every HTTP operation field': {
    action: 'DENY',
    rules: [{ to: [{ operation: { ports: [8080], methods: ['POST'], notMethods: ['GET'], paths: ['/admin/*'], notPaths: ['*.png'], hosts: ['web.example:*'], notHosts: ['*.internal'] } }] }],
  },
};

/** Specs both must refuse: every one is a structural mistake the API server can see. */
const REFUSED: Readonly<Record<string, unknown>> = {
  'action PERMIT': { ...ALLOW_CLIENT, action: 'PERMIT' },
  'action in lower case': { action: 'allow' },
  'action AUDIT': { action: 'AUDIT' },
  'no action': { rules: [] },
  'an unknown spec field': { action: 'ALLOW', provider: { name: 'x' } },
  'a misspelt spec field': { action: 'ALLOW', rule: [] },
  'an unknown source field': { action: 'ALLOW', rules: [{ from: [{ source: { principal: ['x/ns/a/sa/b'] } }] }] },
  'an HTTP method not a string': { action: 'ALLOW', rules: [{ to: [{ operation: { methods: [5] } }] }] },
  'a repeated path': { action: 'ALLOW', rules: [{ to: [{ operation: { paths: ['/a', '/a'] } }] }] },
  'a condition': { action: 'ALLOW', rules: [{ when: [{ key: 'request.headers[x]', values: ['y'] }] }] },
  'matchExpressions': { selector: { matchExpressions: [] }, action: 'DENY' },
  'a from entry without source': { action: 'ALLOW', rules: [{ from: [{}] }] },
  'an empty source': { action: 'ALLOW', rules: [{ from: [{ source: {} }] }] },
  'an empty operation': { action: 'ALLOW', rules: [{ to: [{ operation: {} }] }] },
  'principals not a list': { action: 'ALLOW', rules: [{ from: [{ source: { principals: 'cluster.local/ns/a/sa/b' } }] }] },
  'an empty principal': { action: 'ALLOW', rules: [{ from: [{ source: { principals: [''] } }] }] },
  'port 0': { action: 'ALLOW', rules: [{ to: [{ operation: { ports: [0] } }] }] },
  'port 65536': { action: 'ALLOW', rules: [{ to: [{ operation: { ports: [65536] } }] }] },
  'port "65536"': { action: 'ALLOW', rules: [{ to: [{ operation: { ports: ['65536'] } }] }] },
  'port "http"': { action: 'ALLOW', rules: [{ to: [{ operation: { ports: ['http'] } }] }] },
  'port "080"': { action: 'ALLOW', rules: [{ to: [{ operation: { ports: ['080'] } }] }] },
  'a fractional port': { action: 'ALLOW', rules: [{ to: [{ operation: { ports: [80.5] } }] }] },
  'a repeated port': { action: 'ALLOW', rules: [{ to: [{ operation: { ports: [80, 80] } }] }] },
  'a repeated namespace': { action: 'ALLOW', rules: [{ from: [{ source: { namespaces: ['a', 'a'] } }] }] },
  'a label value too long': { selector: { matchLabels: { app: 'x'.repeat(64) } }, action: 'DENY' },
  'a label value with a space': { selector: { matchLabels: { app: 'a b' } }, action: 'DENY' },
  'rules not a list': { action: 'ALLOW', rules: { from: [] } },
  'spec not a mapping': 'ALLOW',
};

t.test('the CRD and Ambit agree on accepted policies', async (tt) => {
  for (const [what, spec] of Object.entries(ACCEPTED)) {
    const doc = policy(spec);
    tt.equal(ambitVerdict(doc), undefined, `${what}: Ambit accepts`);
    tt.same(validateCustomResource(schema, doc), [], `${what}: the CRD admits`);
  }
});

t.test('the CRD refuses what Ambit refuses structurally', async (tt) => {
  for (const [what, spec] of Object.entries(REFUSED)) {
    const doc = policy(spec);
    tt.not(ambitVerdict(doc), undefined, `${what}: Ambit refuses`);
    tt.not(validateCustomResource(schema, doc), [], `${what}: the CRD refuses`);
  }
  tt.not(validateCustomResource(schema, { ...policy({ action: 'DENY' }), status: {} }), [], 'an unknown top-level field');
  tt.not(validateCustomResource(schema, { apiVersion: API_VERSION, kind: 'AuthorizationPolicy', metadata: { name: 'p' } }), [], 'no spec');
  tt.match(validateCustomResource(schema, policy({ action: 'PERMIT' })).join('\n'), /spec\.action: unsupported value "PERMIT"/, 'names the field');
  tt.match(validateCustomResource(schema, policy({ action: 'ALLOW', selectr: {} })).join('\n'), /spec\.selectr: unknown field/, 'names the unknown field');
});

t.test('the CRD check is not vacuous', async (tt) => {
  // A schema that admitted anything would pass "accepted" and fail "refused";
  // one with the enum widened must let PERMIT through.
  const widened = structuredClone(schema) as Obj;
  obj(at(widened, 'properties.spec.properties.action')).enum = ['ALLOW', 'DENY', 'PERMIT'];
  tt.same(validateCustomResource(widened, policy({ action: 'PERMIT' })), [], 'a widened enum admits PERMIT');
  const open = structuredClone(schema) as Obj;
  delete obj(at(open, 'properties.spec.properties.rules.items.properties.from.items.properties.source')).properties;
  obj(at(open, 'properties.spec.properties.rules.items.properties.from.items.properties.source')).additionalProperties = { type: 'array', items: { type: 'string' } };
  tt.same(validateCustomResource(open, policy(REFUSED['an unknown source field'])), [], 'an open source mapping admits unknown fields');
});
