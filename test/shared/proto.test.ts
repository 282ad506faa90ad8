import t from 'tap';
import { accessSync, constants, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { generate } from '../../scripts/gen-proto.ts';
import { Resource, ResourceKey, WatchResponse } from '../../shared/proto/gen/ambit.ts';

const root = fileURLToPath(new URL('../../', import.meta.url));
const CHECKED_IN = join(root, 'shared', 'proto', 'gen', 'ambit.ts');

/** The first executable `cmd` on a PATH-style list of directories, or undefined. */
function findOnPath(cmd: string, pathList: string): string | undefined {
  for (const dir of pathList.split(delimiter)) {
    if (dir === '') continue;
    const candidate = join(dir, cmd);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here; keep looking
    }
  }
  return undefined;
}

t.test('findOnPath finds executables and reports absent ones', async (t) => {
  t.equal(findOnPath('node', join(root, 'node_modules', '.bin')), join(root, 'node_modules', '.bin', 'node'));
  t.equal(findOnPath('protoc', ''), undefined, 'an empty PATH holds no protoc');
  t.equal(findOnPath('no-such-tool-ambit', process.env.PATH ?? ''), undefined);
});

t.test('shared/proto/gen/ambit.ts is what ts-proto generates from shared/proto/ambit.proto', async (t) => {
  const protoc = findOnPath('protoc', process.env.PATH ?? '');
  if (protoc === undefined) {
    t.fail(
      'protoc is not on PATH, so the generated code cannot be checked. ' +
        "Install Debian's protobuf-compiler (apt-get install protobuf-compiler); CI installs it.",
    );
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'ambit-proto-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  generate(dir);
  const fresh = readFileSync(join(dir, 'ambit.ts'));
  const checkedIn = readFileSync(CHECKED_IN);
  const same = fresh.equals(checkedIn);
  t.ok(same, `checked-in shared/proto/gen/ambit.ts matches a fresh generation with ${protoc} (if not: run "npm run gen:proto" and commit the result)`);
  if (!same) {
    // A text diff tells whether the .proto changed or only the tool versions in the header did.
    t.equal(checkedIn.toString('utf8'), fresh.toString('utf8'), 'difference between checked-in (found) and generated (wanted)');
  }
  const freshDp = readFileSync(join(dir, 'dataplane.ts'));
  t.equal(readFileSync(join(root, 'shared', 'proto', 'gen', 'dataplane.ts'), 'utf8'), freshDp.toString('utf8'), 'checked-in shared/proto/gen/dataplane.ts matches a fresh generation from shared/proto/dataplane.proto (if not: npm run gen:proto)');
});

t.test('ResourceKey encodes to the protobuf wire bytes', async (t) => {
  const bytes = ResourceKey.encode({ kind: 'Workload', namespace: 'ns', name: 'a' }).finish();
  // field 1 (kind) len 8, field 2 (namespace) len 2, field 3 (name) len 1
  t.equal(Buffer.from(bytes).toString('hex'), '0a08' + Buffer.from('Workload').toString('hex') + '12026e73' + '1a0161');
  t.equal(WatchResponse.encode(WatchResponse.fromPartial({})).finish().length, 0, 'an all-default message encodes to no bytes (proto3)');
});

t.test('a Resource survives encode and decode', async (t) => {
  const workload = Resource.fromPartial({
    kind: {
      $case: 'workload',
      workload: {
        metadata: { name: 'api-1', namespace: 'web', labels: { app: 'api', tier: 'backend' }, revision: 2 ** 40 + 7 },
        spec: {
          serviceAccount: 'api',
          node: 'node-a',
          address: '10.0.0.7',
          ports: [8080, 9090],
          uid: 0,
          weight: 3,
          locality: 'eu-west/1a',
          healthy: true,
        },
      },
    },
  });
  const bytes = Resource.encode(workload).finish();
  t.ok(bytes.length > 40, 'encodes to real bytes');
  const back = Resource.decode(bytes);
  t.strictSame(back, workload, 'decoded equals the original');
  t.equal(back.kind?.$case, 'workload');
  if (back.kind?.$case === 'workload') {
    t.equal(back.kind.workload.metadata?.revision, 2 ** 40 + 7, 'a uint64 above 2^32 survives as a number');
    t.equal(back.kind.workload.spec?.uid, 0, 'an explicitly set optional uid of 0 keeps its presence');
    t.same(back.kind.workload.metadata?.labels, { app: 'api', tier: 'backend' }, 'map field survives');
  }

  const noUid = Resource.fromPartial({ kind: { $case: 'workload', workload: { spec: { serviceAccount: 'x' } } } });
  const noUidBack = Resource.decode(Resource.encode(noUid).finish());
  t.equal(noUidBack.kind?.$case === 'workload' ? noUidBack.kind.workload.spec?.uid : 'wrong case', undefined, 'an absent optional uid stays absent');

  const policy = Resource.fromPartial({
    kind: {
      $case: 'authorizationPolicy',
      authorizationPolicy: {
        metadata: { name: 'deny-legacy', namespace: 'web' },
        spec: {
          hasSelector: true,
          selector: {},
          action: 'DENY',
          rules: [{ from: [{ principals: ['spiffe://cluster.local/ns/legacy/sa/old'], notIpBlocks: ['10.1.0.0/16'] }], to: [{ ports: [5432], notPorts: [] }] }],
        },
      },
    },
  });
  t.strictSame(Resource.decode(Resource.encode(policy).finish()), policy, 'an AuthorizationPolicy with an empty but present selector survives');
});

t.test('a WatchResponse survives encode and decode', async (t) => {
  const svc = Resource.fromPartial({
    kind: {
      $case: 'service',
      service: {
        metadata: { name: 'api', namespace: 'web', revision: 41 },
        spec: { addresses: ['10.96.0.10', 'fd00::10'], ports: [{ name: 'http', port: 80, targetPort: 8080 }], selector: { app: 'api' } },
      },
    },
  });
  const msg = WatchResponse.fromPartial({
    revision: 42,
    snapshot: false,
    resources: [svc],
    changes: [
      { change: { $case: 'put', put: svc } },
      { change: { $case: 'delete', delete: { kind: 'Workload', namespace: 'web', name: 'api-0' } } },
    ],
    trustBundlePem: '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n',
  });
  const back = WatchResponse.decode(WatchResponse.encode(msg).finish());
  t.strictSame(back, msg, 'decoded equals the original');
  t.equal(back.revision, 42);
  t.equal(back.changes.length, 2);
  t.equal(back.changes[1]?.change?.$case, 'delete');
  t.equal(back.resources[0]?.kind?.$case, 'service');
});
