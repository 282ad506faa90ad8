/**
 * Where the agent looks for ambit-dataplane when --dataplane-binary is not
 * given, in each layout the agent runs from: a checkout (sources or dist/),
 * the systemd runtime tree (sources, no crate), the container image (dist/,
 * the executable without the crate).
 */
import t, { type Test } from 'tap';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DATAPLANE_PROTOCOL, dataplaneBinaryFrom, defaultDataplaneBinary, resolveDataplane } from '../../../agent/proxy/native-inbound.ts';

const BIN = join('dataplane', 'target', 'release', 'ambit-dataplane');

function layout(t: Test, files: readonly string[]): string {
  const root = mkdtempSync(join(tmpdir(), 'ambit-dp-layout-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  for (const f of files) {
    mkdirSync(join(root, f, '..'), { recursive: true });
    writeFileSync(join(root, f), '');
  }
  return root;
}

t.test('a checkout, run from the sources: the crate\'s target directory', async (t) => {
  const root = layout(t, ['dataplane/Cargo.toml']);
  t.equal(dataplaneBinaryFrom(join(root, 'agent/proxy')), join(root, BIN));
});

t.test('a checkout, run from dist/: the checkout\'s target directory, not dist/\'s', async (t) => {
  const root = layout(t, ['dataplane/Cargo.toml']);
  t.equal(dataplaneBinaryFrom(join(root, 'dist/agent/proxy')), join(root, BIN));
});

t.test('the container image (dist/, the executable without the crate)', async (t) => {
  const root = layout(t, [BIN]);
  t.equal(dataplaneBinaryFrom(join(root, 'dist/agent/proxy')), join(root, BIN));
});

t.test('the systemd runtime tree (sources, the executable without the crate)', async (t) => {
  const root = layout(t, [BIN]);
  t.equal(dataplaneBinaryFrom(join(root, 'agent/proxy')), join(root, BIN));
});

t.test('nothing built: the path named in the error is the one beside the sources', async (t) => {
  const root = layout(t, []);
  t.equal(dataplaneBinaryFrom(join(root, 'agent/proxy')), join(root, BIN));
});

t.test('--dataplane auto: native only for an executable that speaks this agent\'s control protocol', async (t) => {
  const root = layout(t, [BIN]);
  const bin = join(root, BIN);
  writeFileSync(bin, `#!/bin/sh\n[ "$1" = --protocol ] && echo ${DATAPLANE_PROTOCOL}\n`);
  chmodSync(bin, 0o644);
  t.match(resolveDataplane('auto', bin), { path: 'node', why: /no executable ambit-dataplane at / }, 'a file that cannot be executed: node');
  chmodSync(bin, 0o755);
  t.same(resolveDataplane('auto', bin), { path: 'native' }, 'an executable of this protocol: native');
  writeFileSync(bin, `#!/bin/sh\necho ${DATAPLANE_PROTOCOL + 1}\n`);
  t.match(resolveDataplane('auto', bin), { path: 'node', why: new RegExp(`speaks control protocol ${DATAPLANE_PROTOCOL + 1}, this agent ${DATAPLANE_PROTOCOL}: it was built from other sources`) }, 'another protocol: node, saying why');
  writeFileSync(bin, '#!/bin/sh\necho "usage: ambit-dataplane --listen HOST:PORT" >&2\nexit 2\n');
  t.match(resolveDataplane('auto', bin), { path: 'node', why: /speaks control protocol none/ }, 'a build from before the protocol was stated: node');
  t.match(resolveDataplane('auto', join(root, 'missing')), { path: 'node' }, 'nothing there: node');
  t.same(resolveDataplane('node', bin), { path: 'node' }, 'node is node');
  t.same(resolveDataplane('native', join(root, 'missing')), { path: 'native' }, 'native is native, whatever is there (it fails at start, naming the path)');
});

t.test('the built executable speaks this agent\'s control protocol', async (t) => {
  t.same(resolveDataplane('auto', defaultDataplaneBinary()), { path: 'native' }, 'npm test built it from these sources');
});
