/**
 * The Gateway API's ReferenceGrant (gateway.networking.k8s.io/v1beta1) as a
 * resource: validation against the upstream schema with the field named,
 * other groups and kinds accepted, and the round trips through the document
 * and the wire.
 */
import t from 'tap';
import { AmbitError } from '../../../shared/errors.ts';
import type { ReferenceGrant } from '../../../shared/resources/route-types.ts';
import { toDocument, validateResource } from '../../../shared/resources/validate.ts';
import { resourceFromWire, resourceToWire } from '../../../shared/resources/wire.ts';

type Doc = Record<string, unknown>;
const V1BETA1 = 'gateway.networking.k8s.io/v1beta1';
const FROM = { group: 'gateway.networking.k8s.io', kind: 'HTTPRoute', namespace: 'client' };
const TO = { group: '', kind: 'Service' };

function grantDoc(spec: Doc = {}, top: Doc = {}): Doc {
  return { apiVersion: V1BETA1, kind: 'ReferenceGrant', metadata: { name: 'g', namespace: 'shop' }, spec: { from: [FROM], to: [TO], ...spec }, ...top };
}

function refusal(doc: unknown): { field: string; message: string } {
  try {
    validateResource(doc, 'test.yaml#1');
  } catch (err) {
    if (!(err instanceof AmbitError) || err.code !== 'AMBIT_ERR_RESOURCE_INVALID') throw err;
    return { field: String(err.details['field']), message: err.message };
  }
  throw new Error('accepted');
}

t.test('a ReferenceGrant as upstream writes it', async (t) => {
  const g = validateResource(grantDoc({ to: [TO, { group: '', kind: 'Service', name: 'web' }] }), 'x') as ReferenceGrant;
  t.same(g, {
    kind: 'ReferenceGrant', metadata: { name: 'g', namespace: 'shop', labels: {}, revision: 0 },
    spec: { from: [FROM], to: [TO, { group: '', kind: 'Service', name: 'web' }] },
  });
});

t.test('other groups and kinds are accepted (a Gateway\'s grant to Secrets applies unchanged)', async (t) => {
  const g = validateResource(grantDoc({ from: [{ group: 'gateway.networking.k8s.io', kind: 'Gateway', namespace: 'infra' }], to: [{ group: '', kind: 'Secret', name: 'tls' }] }), 'x') as ReferenceGrant;
  t.same(g.spec.to, [{ group: '', kind: 'Secret', name: 'tls' }]);
});

t.test('refused, with the field named', async (t) => {
  const cases: [Doc, string, RegExp][] = [
    [grantDoc({}, { apiVersion: 'gateway.networking.k8s.io/v1' }), 'apiVersion', /must be "gateway\.networking\.k8s\.io\/v1beta1"/],
    [grantDoc({ extra: 1 }), 'spec.extra', /unknown field/],
    [grantDoc({ from: [{ ...FROM, nmespace: 'x' }] }), 'spec.from[0].nmespace', /unknown field \(did you mean "namespace"\?\)/],
    [grantDoc({ to: [{ ...TO, port: 80 }] }), 'spec.to[0].port', /unknown field/],
    [grantDoc({ from: [] }), 'spec.from', /must list 1 to 16 entries, got 0/],
    [grantDoc({ to: Array.from({ length: 17 }, () => TO) }), 'spec.to', /must list 1 to 16 entries, got 17/],
    [grantDoc({ from: undefined }), 'spec.from', /is required/],
    [grantDoc({ from: [{ group: 'gateway.networking.k8s.io', kind: 'HTTPRoute' }] }), 'spec.from[0].namespace', /is required/],
    [grantDoc({ from: [{ ...FROM, namespace: 'Not_A_Label' }] }), 'spec.from[0].namespace', /namespace name/],
    [grantDoc({ from: [{ ...FROM, group: 'Bad Group' }] }), 'spec.from[0].group', /API group/],
    [grantDoc({ to: [{ group: '', kind: '1Service' }] }), 'spec.to[0].kind', /must be a kind/],
    [grantDoc({ to: [{ kind: 'Service' }] }), 'spec.to[0].group', /is required/],
    [grantDoc({ to: [{ ...TO, name: '' }] }), 'spec.to[0].name', /1-253 characters/],
    [grantDoc({ to: [{ ...TO, name: 5 }] }), 'spec.to[0].name', /must be a string/],
  ];
  for (const [doc, field, message] of cases) {
    const r = refusal(doc);
    t.equal(r.field, field, field);
    t.match(r.message, message, field);
  }
});

t.test('document and wire round trips', async (t) => {
  const g = validateResource(grantDoc({ to: [TO, { group: '', kind: 'Service', name: 'web' }] }), 'x') as ReferenceGrant;
  const doc = toDocument(g);
  t.equal(doc['apiVersion'], V1BETA1);
  t.same(doc['spec'], { from: [FROM], to: [TO, { group: '', kind: 'Service', name: 'web' }] });
  t.same(validateResource(JSON.parse(JSON.stringify(doc)), 'y'), g, 'validate(toDocument(g)) equals g');
  const withRev = { ...g, metadata: { ...g.metadata, revision: 4 } };
  t.same(resourceFromWire(resourceToWire(withRev)), withRev, 'through the wire');
  const wire = resourceToWire(g);
  if (wire.kind?.$case !== 'referenceGrant') throw new Error('not a referenceGrant');
  const bad = { kind: { $case: 'referenceGrant' as const, referenceGrant: { ...wire.kind.referenceGrant, specJson: JSON.stringify({ from: [], to: [TO] }) } } };
  t.throws(() => resourceFromWire(bad), { code: 'AMBIT_ERR_RESOURCE_INVALID', message: /spec\.from: must list 1 to 16 entries/ }, 'the wire re-validates');
});
