/**
 * Kubernetes token bootstrap checks. The last test runs against the FAKE API
 * server (test/e2e/fake-kube/server.ts), which speaks the real TokenReview
 * protocol, since no API server can run here.
 */
import t from 'tap';
import path from 'node:path';
import type { V1Pod, V1TokenReview } from '@kubernetes/client-node';
import { kubernetesTokenReviewer, tokenReviewer } from '../../../controller/api/token-review.ts';
import { loadKubeConfig } from '../../../controller/store/kubernetes/kube-config.ts';
import { isAmbitError } from '../../../shared/errors.ts';
import { createLogger } from '../../../shared/logger.ts';
import { FakeKube, pod } from '../../e2e/fake-kube/server.ts';

const logger = createLogger({ name: 'test', level: 'silent' });

function answer(status: V1TokenReview['status']): V1TokenReview {
  return { spec: { token: '' }, status };
}

const agentUser = (extra: Record<string, string[]> = { 'authentication.kubernetes.io/pod-name': ['agent-a'], 'authentication.kubernetes.io/pod-uid': ['uid-a'] }) =>
  ({ username: 'system:serviceaccount:ambit-system:ambit-agent', extra });

function reviewer(status: V1TokenReview['status'], pods: Record<string, V1Pod> = { 'agent-a': { metadata: { name: 'agent-a', uid: 'uid-a' }, spec: { nodeName: 'node-a', containers: [] } } }) {
  const sent: V1TokenReview[] = [];
  const review = tokenReviewer({
    createTokenReview: async (r) => {
      sent.push(r);
      return answer(status);
    },
    getPod: async (_ns, name) => pods[name],
    agentServiceAccount: 'ambit-system/ambit-agent',
    logger,
  });
  return { review, sent };
}

async function refusal(p: Promise<void>): Promise<{ code: string; reason: unknown; message: string }> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  if (!isAmbitError(err)) throw new Error(`expected a refusal, got ${String(err)}`);
  return { code: err.code, reason: err.details.reason, message: err.message };
}

t.test('accepts the agent service account\'s token of a pod on the claimed node', async (t) => {
  const { review, sent } = reviewer({ authenticated: true, audiences: ['ambit'], user: agentUser() });
  await review('tok\n', 'node-a');
  t.same(sent[0]?.spec, { token: 'tok', audiences: ['ambit'] }, 'asks for audience "ambit"');
});

t.test('refusals carry AMBIT_ERR_TOKEN_INVALID and a reason', async (t) => {
  const cases: [string, V1TokenReview['status'], string, Record<string, V1Pod>?][] = [
    ['k8s-unauthenticated', { authenticated: false, error: 'invalid bearer token' }, 'node-a'],
    ['k8s-audience', { authenticated: true, audiences: ['https://kubernetes.default.svc'], user: agentUser() }, 'node-a'],
    ['k8s-service-account', { authenticated: true, audiences: ['ambit'], user: { ...agentUser(), username: 'system:serviceaccount:shop:web' } }, 'node-a'],
    ['k8s-unbound', { authenticated: true, audiences: ['ambit'], user: agentUser({}) }, 'node-a'],
    ['k8s-wrong-node', { authenticated: true, audiences: ['ambit'], user: agentUser() }, 'node-b'],
    ['k8s-wrong-node', { authenticated: true, audiences: ['ambit'], user: agentUser({ 'authentication.kubernetes.io/pod-name': ['agent-a'], 'authentication.kubernetes.io/node-name': ['node-a'] }) }, 'node-b'],
    ['k8s-pod-missing', { authenticated: true, audiences: ['ambit'], user: agentUser() }, 'node-a', {}],
    ['k8s-pod-replaced', { authenticated: true, audiences: ['ambit'], user: agentUser() }, 'node-a', { 'agent-a': { metadata: { uid: 'uid-new' }, spec: { nodeName: 'node-a', containers: [] } } }],
  ];
  for (const [reason, status, node, pods] of cases) {
    const r = await refusal(reviewer(status, pods).review('tok', node));
    t.equal(r.code, 'AMBIT_ERR_TOKEN_INVALID', `${reason}: TOKEN_INVALID`);
    t.equal(r.reason, reason, `${reason}: ${r.message}`);
  }
  t.equal((await refusal(reviewer({ authenticated: true }).review('  ', 'node-a'))).reason, 'k8s-empty');
  const down = tokenReviewer({ createTokenReview: () => Promise.reject(Object.assign(new Error('x'), { code: 503, body: { message: 'etcd down' } })), getPod: async () => undefined, agentServiceAccount: 'a/b', logger });
  const r = await refusal(down('tok', 'node-a'));
  t.equal(r.code, 'AMBIT_ERR_STORE_IO', 'an API failure is not a verdict on the token');
  t.match(r.message, /HTTP 503: etcd down/);
});

t.test('against the (fake) TokenReview API', async (t) => {
  const fake = await FakeKube.start();
  t.teardown(() => fake.stop());
  fake.put('pods', pod({ name: 'agent-a', namespace: 'ambit-system', node: 'node-a', serviceAccount: 'ambit-agent', hostNetwork: true, ip: '10.0.0.1' }));
  const kubeConfig = loadKubeConfig(fake.writeKubeconfig(path.join(t.testdir(), 'kubeconfig')));
  const review = kubernetesTokenReviewer({ kubeConfig, cache: { pod: () => undefined }, agentServiceAccount: 'ambit-system/ambit-agent', logger });
  const good = fake.issueToken({ namespace: 'ambit-system', serviceAccount: 'ambit-agent', pod: 'agent-a' });
  await review(good, 'node-a');
  t.pass('a good token is accepted (pod looked up with a GET when not cached)');
  t.equal((await refusal(review(good, 'node-b'))).reason, 'k8s-wrong-node');
  t.equal((await refusal(review('garbage', 'node-a'))).reason, 'k8s-unauthenticated');
  const otherAudience = fake.issueToken({ namespace: 'ambit-system', serviceAccount: 'ambit-agent', pod: 'agent-a', audiences: ['vault'] });
  t.equal((await refusal(review(otherAudience, 'node-a'))).reason, 'k8s-unauthenticated', 'the API server itself refuses a token for another audience');
  fake.remove('pods', 'ambit-system', 'agent-a');
  t.equal((await refusal(review(good, 'node-a'))).reason, 'k8s-unauthenticated', 'a bound token dies with its pod');
  t.ok(fake.requests.some((r) => r.method === 'POST' && r.path === '/apis/authentication.k8s.io/v1/tokenreviews'));
});
