import { AuthenticationV1Api, CoreV1Api, type KubeConfig, type V1Pod, type V1TokenReview } from '@kubernetes/client-node';
import { AmbitError } from '../../shared/errors.ts';
import type { Logger } from '../../shared/logger.ts';
import { kubeErrorMessage } from '../store/kubernetes/kube-sources.ts';

/** The audience agents' projected tokens are minted for (the DaemonSet's serviceAccountToken volume). */
export const TOKEN_AUDIENCE = 'ambit';
const POD_NAME = 'authentication.kubernetes.io/pod-name';
const POD_UID = 'authentication.kubernetes.io/pod-uid';
const NODE_NAME = 'authentication.kubernetes.io/node-name';

export interface TokenReviewDeps {
  /** POSTs a TokenReview and returns the API server's answer. */
  readonly createTokenReview: (review: V1TokenReview) => Promise<V1TokenReview>;
  /** The pod (the one with `uid`, when given), from the informer cache or else the API; undefined when it does not exist. */
  readonly getPod: (namespace: string, name: string, uid: string | undefined) => Promise<V1Pod | undefined>;
  /** "namespace/name" of the agents' service account: only its tokens may join. */
  readonly agentServiceAccount: string;
  readonly logger: Logger;
}

function refuse(reason: string, message: string, details: Record<string, unknown> = {}): AmbitError {
  return new AmbitError('AMBIT_ERR_TOKEN_INVALID', `Kubernetes token refused: ${message}`, { details: { reason, ...details } });
}

/**
 * Bootstrap with a projected service-account token (DESIGN §2). The API
 * server vouches for the token (TokenReview, audience "ambit"); the
 * controller then requires that it belongs to the agents' service account
 * and is bound to a pod that runs on the node being claimed — so a token
 * lifted from one node cannot enrol another, and a token of any other pod
 * cannot enrol at all. Every refusal is an AMBIT_ERR_TOKEN_INVALID with a
 * reason, which the Join handler logs and counts.
 */
export function tokenReviewer(d: TokenReviewDeps): (token: string, node: string) => Promise<void> {
  const [saNamespace, saName] = d.agentServiceAccount.split('/') as [string, string];
  const expectedUser = `system:serviceaccount:${saNamespace}:${saName}`;
  return async (token, node) => {
    if (token.trim() === '') throw refuse('k8s-empty', 'the token is empty');
    let review: V1TokenReview;
    try {
      review = await d.createTokenReview({ apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token: token.trim(), audiences: [TOKEN_AUDIENCE] } });
    } catch (err) {
      throw new AmbitError('AMBIT_ERR_STORE_IO', `cannot review the Kubernetes token: ${kubeErrorMessage(err)}`, { cause: err, details: { op: 'tokenreview', reason: 'k8s-api' } });
    }
    const status = review.status;
    if (status?.authenticated !== true) {
      throw refuse('k8s-unauthenticated', `the API server did not authenticate it${status?.error ? ` (${status.error})` : ''}`);
    }
    // An API server that ignores spec.audiences answers with the token's own; check rather than trust.
    if (!(status.audiences ?? []).includes(TOKEN_AUDIENCE)) {
      throw refuse('k8s-audience', `it is not valid for audience "${TOKEN_AUDIENCE}" (audiences: ${(status.audiences ?? []).join(', ') || 'none'})`);
    }
    const user = status.user?.username ?? '';
    if (user !== expectedUser) {
      throw refuse('k8s-service-account', `it belongs to ${user || 'an unnamed user'}, not the agent service account ${d.agentServiceAccount}`, { user });
    }
    const extra = status.user?.extra ?? {};
    const podName = extra[POD_NAME]?.[0];
    if (!podName) throw refuse('k8s-unbound', 'it is not bound to a pod (use a projected service-account token)');
    const claimedNode = extra[NODE_NAME]?.[0];
    if (claimedNode !== undefined && claimedNode !== node) {
      throw refuse('k8s-wrong-node', `its pod ${saNamespace}/${podName} runs on node ${claimedNode}, not ${node}`, { pod: podName, podNode: claimedNode });
    }
    const uid = extra[POD_UID]?.[0];
    let pod: V1Pod | undefined;
    try {
      pod = await d.getPod(saNamespace, podName, uid);
    } catch (err) {
      throw new AmbitError('AMBIT_ERR_STORE_IO', `cannot look up pod ${saNamespace}/${podName}: ${kubeErrorMessage(err)}`, { cause: err, details: { op: 'get-pod', reason: 'k8s-api' } });
    }
    if (pod === undefined) throw refuse('k8s-pod-missing', `its pod ${saNamespace}/${podName} does not exist`, { pod: podName });
    if (uid !== undefined && pod.metadata?.uid !== undefined && uid !== pod.metadata.uid) {
      throw refuse('k8s-pod-replaced', `its pod ${saNamespace}/${podName} was replaced by another of the same name`, { pod: podName });
    }
    const podNode = pod.spec?.nodeName ?? '';
    if (podNode !== node) {
      throw refuse('k8s-wrong-node', `its pod ${saNamespace}/${podName} runs on node ${podNode || '(none)'}, not ${node}`, { pod: podName, podNode });
    }
    d.logger.info({ node, pod: `${saNamespace}/${podName}`, user }, 'Kubernetes token accepted');
  };
}

/** tokenReviewer wired to the API server of `kubeConfig`; pods come from `cache` first (the store's informer), then a GET. */
export function kubernetesTokenReviewer(o: {
  readonly kubeConfig: KubeConfig;
  readonly cache: { pod(namespace: string, name: string): V1Pod | undefined };
  readonly agentServiceAccount: string;
  readonly logger: Logger;
}): (token: string, node: string) => Promise<void> {
  const auth = o.kubeConfig.makeApiClient(AuthenticationV1Api);
  const core = o.kubeConfig.makeApiClient(CoreV1Api);
  return tokenReviewer({
    createTokenReview: (body) => auth.createTokenReview({ body }),
    getPod: async (namespace, name, uid) => {
      // A pod's node never changes once set, so the cached pod is as good as a
      // GET — unless it is not there yet, or is an older pod of the same name.
      const cached = o.cache.pod(namespace, name);
      if (cached?.spec?.nodeName && (uid === undefined || cached.metadata?.uid === uid)) return cached;
      try {
        return await core.readNamespacedPod({ namespace, name });
      } catch (err) {
        if ((err as { code?: unknown }).code === 404) return undefined;
        throw err;
      }
    },
    agentServiceAccount: o.agentServiceAccount,
    logger: o.logger,
  });
}
