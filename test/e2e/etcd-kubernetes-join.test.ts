/**
 * Agents on Kubernetes joining controllers on etcd (docs/ha.md, "Three
 * replicas on Kubernetes"): with --kubernetes-join a replica on --store etcd
 * reviews an agent's projected service-account token with the API server
 * (a fake one speaking the real TokenReview and Pod APIs through a
 * kubeconfig: test/e2e/fake-kube/server.ts) and checks the token's pod runs
 * on the node claimed, as the Kubernetes store does; without the flag such a
 * token is refused. Real processes on 127.0.137.0/24: one etcd member (.31),
 * two controller replicas (.21 with the flag, .22 without), one agent (.41).
 */
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { joinWithKubernetesToken } from '../../agent/identity/ca-client.ts';
import { isAmbitError } from '../../shared/errors.ts';
import { agentsReady, startAgent, startController, type RunningAgent, type RunningController } from './harness.ts';
import { EtcdCluster } from './fixtures/etcd-cluster.ts';
import { writeMeshCa } from './fixtures/test-pki.ts';
import { FakeKube, node, pod } from './fake-kube/server.ts';

const NET = '127.0.137';
const root = mkdtempSync(join(tmpdir(), 'ambit-e2e-etcd-k8s-join-'));
const etcd = new EtcdCluster({ hosts: [`${NET}.31`], dir: join(root, 'etcd') });
const ca = writeMeshCa(root);
let fake: FakeKube | undefined;
let withJoin: RunningController | undefined;
let withoutJoin: RunningController | undefined;
let agent: RunningAgent | undefined;

t.teardown(async () => {
  await agent?.proc.stop();
  await withJoin?.proc.stop();
  await withoutJoin?.proc.stop();
  await fake?.stop();
  await etcd.stop();
  rmSync(root, { recursive: true, force: true });
});

const agentToken = (f: FakeKube, n: string): string => f.issueToken({ namespace: 'ambit-system', serviceAccount: 'ambit-agent', pod: `ambit-agent-${n}` });

t.before(async () => {
  await etcd.start();
  fake = await FakeKube.start({ host: `${NET}.10` });
  for (const n of ['a', 'b']) {
    fake.put('nodes', node(`node-${n}`));
    fake.put('pods', pod({ name: `ambit-agent-${n}`, namespace: 'ambit-system', node: `node-${n}`, ip: `${NET}.${n === 'a' ? 41 : 42}`, serviceAccount: 'ambit-agent', hostNetwork: true }));
  }
  fake.put('pods', pod({ name: 'client', node: 'node-a', ip: `${NET}.61`, serviceAccount: 'client' }));
  const kubeconfig = fake.writeKubeconfig(join(root, 'kubeconfig'));
  const etcdArgs = ['--store', 'etcd', '--etcd-endpoints', etcd.endpoints, '--ca-cert', ca.caCert, '--ca-key', ca.caKey];
  withJoin = await startController(join(root, 'ctl1'), [...etcdArgs, '--kubernetes-join', '--kubeconfig', kubeconfig], `${NET}.21`);
  withoutJoin = await startController(join(root, 'ctl2'), etcdArgs, `${NET}.22`);
});

t.test('an agent joins a replica on etcd with its projected service-account token', async (t) => {
  const tokenFile = join(root, 'agent-a.token');
  writeFileSync(tokenFile, `${agentToken(fake!, 'a')}\n`, { mode: 0o600 });
  agent = await startAgent({ node: 'node-a', address: `${NET}.41`, controller: withJoin!.address, dataDir: join(root, 'agent-a'), extra: ['--kubernetes-token-file', tokenFile, '--ca-bundle', ca.caCert] });
  await agentsReady([agent]);
  const joined = await agent.proc.waitForLog((l) => l.msg === 'node joined the mesh');
  t.equal(joined.with, 'Kubernetes service-account token', 'node-a joined with its service-account token');
  await withJoin!.proc.waitForLog((l) => l.msg === 'Kubernetes token accepted' && l.node === 'node-a' && l.pod === 'ambit-system/ambit-agent-a');
  t.pass('the replica reviewed the token and found its pod on node-a');
  t.ok(fake!.requests.some((r) => r.method === 'POST' && r.path === '/apis/authentication.k8s.io/v1/tokenreviews'), 'through the TokenReview API');
});

t.test('tokens of another node or another service account are refused; a replica without --kubernetes-join refuses every one', async (t) => {
  const bundlePem = readFileSync(ca.caCert, 'utf8');
  const joinWith = (ctl: RunningController, n: string, token: string): Promise<unknown> =>
    joinWithKubernetesToken({ controller: ctl.grpc, node: n, token, bundlePem }).then(() => undefined, (e: unknown) => e);
  const wrongNode = await joinWith(withJoin!, 'node-a', agentToken(fake!, 'b'));
  t.ok(isAmbitError(wrongNode, 'AMBIT_ERR_TOKEN_INVALID'), `a token whose pod runs on node-b, for node-a: TOKEN_INVALID (${String(wrongNode)})`);
  t.match((wrongNode as Error).message, /runs on node node-b, not node-a/);
  const otherSa = await joinWith(withJoin!, 'node-a', fake!.issueToken({ namespace: 'default', serviceAccount: 'client', pod: 'client' }));
  t.ok(isAmbitError(otherSa, 'AMBIT_ERR_TOKEN_INVALID'), 'a token of another service account: TOKEN_INVALID');
  t.match((otherSa as Error).message, /not the agent service account ambit-system\/ambit-agent/);
  const disabled = await joinWith(withoutJoin!, 'node-b', agentToken(fake!, 'b'));
  t.ok(isAmbitError(disabled, 'AMBIT_ERR_TOKEN_INVALID'), 'the replica without the flag: TOKEN_INVALID');
  t.match((disabled as Error).message, /needs the controller to run with --store kubernetes or --kubernetes-join/);
  const accepted = await joinWith(withJoin!, 'node-b', agentToken(fake!, 'b'));
  t.equal(accepted, undefined, 'the same token is accepted by the replica with the flag');
});
