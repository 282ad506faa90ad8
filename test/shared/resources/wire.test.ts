import t from 'tap';
import { isAmbitError } from '../../../shared/errors.ts';
import { Change as PbChange, Resource as PbResource, ResourceKey as PbResourceKey } from '../../../shared/proto/gen/ambit.ts';
import type { AuthorizationPolicy, Change, Resource, ResourceKey, Service, Workload } from '../../../shared/resources/types.ts';
import { changeFromWire, changeToWire, keyFromWire, keyToWire, resourceFromWire, resourceToWire } from '../../../shared/resources/wire.ts';

/** Core → wire → protobuf bytes → wire → core. */
function roundTrip(r: Resource): Resource {
  return resourceFromWire(PbResource.decode(PbResource.encode(resourceToWire(r)).finish()));
}

const workload: Workload = {
  kind: 'Workload',
  metadata: { name: 'api-1', namespace: 'web', labels: { app: 'api', 'example.com/tier': 'backend' }, revision: 2 ** 40 + 7 },
  spec: { serviceAccount: 'api', node: 'node-a', address: '2001:db8::7', ports: [80, 8080, 65535], uid: 1001, weight: 1000, locality: 'eu-west/1a/rack-2', healthy: false },
};

const service: Service = {
  kind: 'Service',
  metadata: { name: 'api', namespace: 'web', labels: { team: 'core' }, revision: 12 },
  spec: {
    addresses: ['10.96.0.10', 'fd00:96::a'],
    ports: [{ name: 'http', port: 80, targetPort: 8080, appProtocol: 'http' }, { name: 'grpc', port: 9000, targetPort: 9000, appProtocol: 'grpc' }],
    selector: { app: 'api', tier: 'backend' },
  },
};

function policy(selector: Record<string, string> | undefined): AuthorizationPolicy {
  return {
    kind: 'AuthorizationPolicy',
    metadata: { name: 'p', namespace: 'web', labels: {}, revision: 3 },
    spec: {
      ...(selector === undefined ? {} : { selector }),
      action: 'DENY',
      rules: [
        {
          from: [
            {
              principals: ['cluster.local/ns/web/sa/a', '*'], notPrincipals: ['cluster.local/ns/web/sa/b'],
              namespaces: ['web'], notNamespaces: ['kube-system'],
              serviceAccounts: ['web/a'], notServiceAccounts: ['web/*'],
              ipBlocks: ['10.0.0.0/8', '2001:db8::/32'], notIpBlocks: ['10.1.0.0/16'],
            },
            { principals: [], notPrincipals: [], namespaces: ['ops'], notNamespaces: [], serviceAccounts: [], notServiceAccounts: [], ipBlocks: [], notIpBlocks: [] },
          ],
          to: [{ ports: [80, 443], notPorts: [] }, { ports: [], notPorts: [22] }],
        },
        { from: [], to: [] },
      ],
    },
  };
}

t.test('a rich Workload survives the wire, with and without uid', async (t) => {
  t.strictSame(roundTrip(workload), workload, 'with uid');
  const rootUid: Workload = { ...workload, spec: { ...workload.spec, uid: 0 } };
  t.strictSame(roundTrip(rootUid), rootUid, 'uid 0 (root) is kept, not confused with absent');
  const { uid: _uid, ...noUidSpec } = workload.spec;
  const noUid: Workload = { ...workload, spec: noUidSpec };
  const back = roundTrip(noUid);
  t.strictSame(back, noUid, 'without uid');
  t.notOk('uid' in back.spec, 'no uid key at all (a pod-network workload)');
  const minimal: Workload = { kind: 'Workload', metadata: { name: 'm', namespace: 'default', labels: {}, revision: 0 }, spec: { serviceAccount: 'default', node: 'n', address: '10.0.0.1', ports: [], weight: 1, locality: '', healthy: true } };
  t.strictSame(roundTrip(minimal), minimal, 'defaults and empty lists');
});

t.test('a Service survives the wire', async (t) => {
  t.strictSame(roundTrip(service), service);
  const headless: Service = { ...service, spec: { ...service.spec, addresses: [], selector: {} } };
  t.strictSame(roundTrip(headless), headless, 'no addresses, empty selector');
  // A sender that predates app_protocol leaves it empty: its ports are TCP.
  const wire = resourceToWire(service);
  if (wire.kind?.$case === 'service') for (const p of wire.kind.service.spec?.ports ?? []) p.appProtocol = '';
  const old = resourceFromWire(PbResource.decode(PbResource.encode(wire).finish()));
  t.same(old.kind === 'Service' && old.spec.ports.map((p) => p.appProtocol), ['tcp', 'tcp'], 'an empty app_protocol reads as tcp');
});

t.test('an AuthorizationPolicy keeps "selector absent" apart from "selector present but empty"', async (t) => {
  const absent = policy(undefined);
  const empty = policy({});
  const some = policy({ app: 'api' });
  const absentBack = roundTrip(absent);
  const emptyBack = roundTrip(empty);
  t.strictSame(absentBack, absent, 'absent selector');
  t.notOk('selector' in absentBack.spec, 'absent stays absent');
  t.strictSame(emptyBack, empty, 'empty selector');
  t.ok(emptyBack.kind === 'AuthorizationPolicy' && emptyBack.spec.selector !== undefined, 'present-but-empty stays present');
  t.strictSame(roundTrip(some), some, 'a selector with labels');
  const allow: AuthorizationPolicy = { ...absent, spec: { action: 'ALLOW', rules: [] } };
  t.strictSame(roundTrip(allow), allow, 'ALLOW with no rules');

  const wireAbsent = resourceToWire(absent);
  const wireEmpty = resourceToWire(empty);
  t.equal(wireAbsent.kind?.$case === 'authorizationPolicy' && wireAbsent.kind.authorizationPolicy.spec?.hasSelector, false);
  t.equal(wireEmpty.kind?.$case === 'authorizationPolicy' && wireEmpty.kind.authorizationPolicy.spec?.hasSelector, true);
});

t.test('the core value is not shared with the wire value', async (t) => {
  const w = resourceToWire(service);
  if (w.kind?.$case !== 'service') throw new Error('wrong case');
  w.kind.service.spec!.addresses.push('10.0.0.99');
  w.kind.service.metadata!.labels.extra = 'x';
  t.same(service.spec.addresses, ['10.96.0.10', 'fd00:96::a'], 'a list is copied');
  t.same(service.metadata.labels, { team: 'core' }, 'labels are copied');
});

t.test('keys and changes survive the wire', async (t) => {
  const key: ResourceKey = { kind: 'Service', namespace: 'web', name: 'api' };
  t.strictSame(keyFromWire(PbResourceKey.decode(PbResourceKey.encode(keyToWire(key)).finish())), key);
  t.strictSame(keyFromWire({ kind: 'Workload', namespace: '', name: 'x' }), { kind: 'Workload', namespace: 'default', name: 'x' }, 'an empty namespace is "default"');

  const changes: Change[] = [
    { op: 'put', resource: workload },
    { op: 'put', resource: policy({}) },
    { op: 'delete', key: { kind: 'AuthorizationPolicy', namespace: 'web', name: 'p' } },
  ];
  for (const c of changes) {
    const back = changeFromWire(PbChange.decode(PbChange.encode(changeToWire(c)).finish()));
    t.strictSame(back, c, `${c.op} ${c.op === 'put' ? c.resource.kind : c.key.kind}`);
  }
});

t.test('malformed wire values are refused with AMBIT_ERR_RESOURCE_INVALID', async (t) => {
  for (const k of [{ kind: 'Pod', namespace: 'web', name: 'x' }, { kind: '', namespace: 'web', name: 'x' }, { kind: 'workload', namespace: 'web', name: 'x' }, undefined]) {
    let err: unknown;
    try {
      keyFromWire(k);
    } catch (e) {
      err = e;
    }
    t.ok(isAmbitError(err, 'AMBIT_ERR_RESOURCE_INVALID'), `key ${JSON.stringify(k)}`);
    if (isAmbitError(err)) t.equal(err.details.field, 'kind');
  }
  t.throws(() => resourceFromWire(PbResource.decode(new Uint8Array())), { code: 'AMBIT_ERR_RESOURCE_INVALID' }, 'a resource without a kind');
  t.throws(() => changeFromWire(PbChange.decode(new Uint8Array())), { code: 'AMBIT_ERR_RESOURCE_INVALID' }, 'a change with neither put nor delete');
  t.throws(() => changeFromWire({ change: { $case: 'delete', delete: { kind: 'Nope', namespace: '', name: 'x' } } }), { code: 'AMBIT_ERR_RESOURCE_INVALID' }, 'a delete of an unknown kind');
});
