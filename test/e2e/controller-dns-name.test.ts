/**
 * An agent given the controller replicas as one DNS name (docs/ha.md):
 * `--controller NAME:15012` where NAME resolves to three replicas on etcd.
 * The agent resolves the name itself (getaddrinfo, as grpc-js's resolver
 * does), watches from one replica, and when that one is killed resumes its
 * watch on another within seconds and receives what is applied meanwhile.
 *
 * The name is the test's own: the agent runs in a private mount namespace
 * (`unshare -m`) in which a hosts file of the test is bound over /etc/hosts,
 * so the machine's /etc/hosts and resolver are never touched. That needs
 * root (as the netns suites do). Real processes on 127.0.137.0/24: one etcd
 * member (.131), three replicas (.121-.123, one port: a name has one), the
 * agent (.141).
 */
import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { AdminApi } from '../../controller/cli/client.ts';
import { resourceToWire } from '../../shared/resources/wire.ts';
import { validateResource } from '../../shared/resources/validate.ts';
import { API_VERSION } from '../../shared/resources/types.ts';
import { agentsReady, eventually, hostPortOf, httpGet, startAgent, startController, type LogLine, type RunningAgent, type RunningController } from './harness.ts';
import { EtcdCluster } from './fixtures/etcd-cluster.ts';
import { writeMeshCa } from './fixtures/test-pki.ts';

const NET = '127.0.137';
const NAME = 'controllers.ha-perf.test';
const HOSTS = [`${NET}.121`, `${NET}.122`, `${NET}.123`];
const PORT = 15012;

const unshare = spawnSync('unshare', ['--version'], { stdio: 'ignore' }).status === 0;
const skip = process.getuid?.() !== 0 ? `needs root to bind a hosts file in a private mount namespace; running as uid ${process.getuid?.()}`
  : unshare ? false : 'needs unshare (util-linux)';

t.test('an agent given one DNS name for three replicas fails over to another when its replica is killed', { skip }, async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-dns-name-'));
  const etcd = new EtcdCluster({ hosts: [`${NET}.131`], dir: join(root, 'etcd') });
  const ca = writeMeshCa(root);
  const replicas: RunningController[] = [];
  const apis: AdminApi[] = [];
  let agent: RunningAgent | undefined;
  t.teardown(async () => {
    for (const a of apis) a.close();
    await agent?.proc.stop();
    await Promise.all(replicas.map((r) => r.proc.stop()));
    await etcd.stop();
    rmSync(root, { recursive: true, force: true });
  });
  await etcd.start();
  for (const [i, host] of HOSTS.entries()) {
    replicas.push(await startController(join(root, `ctl${i}`), ['--store', 'etcd', '--etcd-endpoints', etcd.endpoints, '--ca-cert', ca.caCert, '--ca-key', ca.caKey, '--console', 'none'], host, { grpc: PORT, monitoring: 0 }));
    apis.push(new AdminApi({ controller: replicas[i]!.grpc, credentialsDir: replicas[i]!.credentials }));
  }
  const hostsFile = join(root, 'hosts');
  writeFileSync(hostsFile, ['127.0.0.1 localhost', ...HOSTS.map((h) => `${h} ${NAME}`), ''].join('\n'));
  const { token } = await apis[0]!.call('CreateJoinToken', apis[0]!.client.createJoinToken, { node: 'node-dns', ttlMs: 600_000 });
  agent = await startAgent({
    node: 'node-dns', address: `${NET}.141`, controller: `${NAME}:${PORT}`, dataDir: join(root, 'agent'), join: token,
    // sh's $0 is the hosts file, "$@" the agent's command line: exec keeps node's pid the one the test stops.
    prefix: ['unshare', '--mount', 'sh', '-c', 'mount --bind "$0" /etc/hosts && exec "$@"', hostsFile],
  });
  await agentsReady([agent]);
  const established = (exclude: readonly LogLine[]): Promise<LogLine> => agent!.proc.waitForLog((l) => l.msg === 'controller watch established' && !exclude.includes(l), 15_000);
  const first = await established([]);
  const firstAt = String(first.controller);
  const victim = replicas.findIndex((r) => r.address === firstAt);
  t.ok(victim >= 0, `the agent resolved ${NAME} and watches from one of the replicas (${firstAt})`);

  await replicas[victim]!.proc.stop('SIGKILL');
  const killedAt = Date.now();
  const survivor = apis[(victim + 1) % HOSTS.length]!;
  const probe = validateResource({
    apiVersion: API_VERSION, kind: 'Workload', metadata: { name: 'after-failover', namespace: 'default', labels: {} },
    spec: { serviceAccount: 'probe', node: 'node-other', address: '10.9.9.9', ports: [8080] },
  }, 'probe');
  await survivor.call('Apply', survivor.client.apply, { resources: [resourceToWire(probe)], createOnly: false, dryRun: false });
  const second = await established([first]);
  const tookMs = Date.parse(String(second.time)) - killedAt;
  t.not(second.controller, firstAt, `it watches from another replica (${String(second.controller)})`);
  t.ok(HOSTS.some((h) => String(second.controller).startsWith(`${h}:`)), 'one the name resolves to');
  t.ok(tookMs < 5_000, `within 5 s of the kill (${tookMs} ms)`);
  await eventually(async () => {
    const dump = JSON.parse((await httpGet(hostPortOf(agent!.admin), '/config_dump')).body) as { resources: { metadata: { name: string } }[] };
    return dump.resources.some((r) => r.metadata.name === 'after-failover');
  }, 'the change applied during the failover reaches the agent');
});
