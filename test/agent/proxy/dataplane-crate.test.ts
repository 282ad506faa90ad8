/**
 * The data plane crate's own unit tests (`cargo test` in dataplane/), run as
 * part of the suite so that each one counts here: pieces of the native path
 * that are easier to pin down in Rust than through a running process, such
 * as how the TLS writer groups an HTTP/2 frame's pieces (coalesce.rs).
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const CRATE = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'dataplane');

/** Tests that must be there: a rename or a lost module fails here, not silently. */
const EXPECTED = [
  'coalesce::tests::a_small_frame_is_one_write',
  'coalesce::tests::a_frame_larger_than_a_record_passes_its_first_piece',
  'coalesce::tests::a_partial_write_reports_what_was_taken',
];

t.test('cargo test passes every unit test of the crate', async (t) => {
  // --release: the same profile dataplane/build.sh built, so only the crate recompiles.
  const run = spawnSync('cargo', ['test', '--release', '--offline'], { cwd: CRATE, encoding: 'utf8', timeout: 300_000 });
  if (run.error) throw run.error;
  const results = new Map<string, string>();
  for (const m of run.stdout.matchAll(/^test (\S+) \.\.\. (\w+)$/gm)) results.set(m[1]!, m[2]!);
  for (const [name, outcome] of results) t.equal(outcome, 'ok', name);
  for (const name of EXPECTED) t.ok(results.has(name), `${name} ran`);
  t.equal(run.status, 0, `cargo test exit status\n${run.stdout.slice(-2000)}\n${run.stderr.slice(-2000)}`);
});
