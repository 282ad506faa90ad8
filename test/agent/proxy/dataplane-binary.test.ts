/**
 * Where the agent looks for ambit-dataplane when --dataplane-binary is not
 * given, in each layout the agent runs from: a checkout (sources or dist/),
 * the systemd runtime tree (sources, no crate), the container image (dist/,
 * the executable without the crate).
 */
import t, { type Test } from 'tap';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DATAPLANE_PROTOCOL, dataplaneBinaryFrom, defaultDataplaneBinary } from '../../../agent/dataplane/inbound.ts';

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

t.test('the built executable speaks this agent\'s control protocol', async (t) => {
  const asked = spawnSync(defaultDataplaneBinary(), ['--protocol'], { encoding: 'utf8' });
  t.equal(asked.stdout.trim(), String(DATAPLANE_PROTOCOL), 'npm ci built it from these sources');
});
