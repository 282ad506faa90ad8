/**
 * What an agent loads: a node agent (--capture none, joining with a join
 * token) must not load the libraries it has no use for, each of which would
 * sit in its memory for its whole life: the Kubernetes client (the
 * controller's, for its Kubernetes store and TokenReview), the YAML parser
 * (only for a --config file; resources reach the agent as protobuf), the rest
 * of node-forge (the agent uses its ASN.1 codec only), nor any controller
 * module. The agent runs with a preloaded hook that records every module it
 * loads (fixtures/loaded-modules.ts); memory itself is the benchmark's
 * (bench/dataplane.ts), not this test's.
 */
import t from 'tap';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ROOT, ambitctl, agentsReady, startAgent, startController } from './harness.ts';

const CONTROLLER_HOST = '127.0.112.1';
const AGENT_HOST = '127.0.112.2';
const HOOK = join(ROOT, 'test', 'e2e', 'fixtures', 'loaded-modules.ts');

/** Loaded module URLs that the agent must not have, each with what it is. */
const NOT_LOADED: readonly { readonly what: string; readonly match: (url: string) => boolean }[] = [
  { what: 'the Kubernetes client', match: (u) => u.includes('/node_modules/@kubernetes/') },
  { what: 'the YAML parser', match: (u) => u.includes('/node_modules/yaml/') },
  { what: "node-forge's index (all of forge)", match: (u) => u.endsWith('/node_modules/node-forge/lib/index.js') },
  { what: "node-forge's TLS", match: (u) => u.endsWith('/node_modules/node-forge/lib/tls.js') },
  { what: 'a controller module', match: (u) => u.startsWith(pathToFileURL(join(ROOT, 'controller')).href + '/') },
];

t.test('a joined --capture none agent loads neither the Kubernetes client, the YAML parser, all of node-forge nor controller code', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ambit-agent-modules-'));
  const record = join(dir, 'loaded-modules.txt');
  const c = await startController(join(dir, 'controller'), [], CONTROLLER_HOST);
  t.teardown(() => c.proc.stop());
  const token = await ambitctl(c, ['node', 'token', 'create', '--node', 'mod-1']);
  t.equal(token.code, 0, token.stderr);
  const agent = await startAgent({
    node: 'mod-1', address: AGENT_HOST, controller: c.address, dataDir: join(dir, 'agent'), join: token.stdout.trim(),
    env: { NODE_OPTIONS: `--import=${pathToFileURL(HOOK).href}`, AMBIT_TEST_LOADED_MODULES: record },
  });
  t.teardown(() => agent.proc.stop());
  await agentsReady([agent]);
  // The record is written at exit: a clean stop, so everything the agent
  // loaded while serving (and while draining) is in it.
  const exit = await agent.proc.stop();
  t.equal(exit.code, 0, 'the agent stopped cleanly');

  const loaded = readFileSync(record, 'utf8').split('\n').filter(Boolean);
  // The record is the agent's: its own modules and its libraries are there.
  t.ok(loaded.some((u) => u.endsWith('/agent/app.ts')), 'the record holds the agent');
  t.ok(loaded.some((u) => u.includes('/node_modules/@grpc/grpc-js/')), 'the record holds its libraries');
  t.ok(loaded.some((u) => u.endsWith('/node_modules/node-forge/lib/asn1.js')), "the record holds forge's ASN.1 codec");
  for (const { what, match } of NOT_LOADED) {
    t.same(loaded.filter(match), [], `${what} is not loaded`);
  }
});
