import { existsSync } from 'node:fs';
import { KubeConfig } from '@kubernetes/client-node';
import { AmbitError, errorMessage } from '../../../shared/errors.ts';

const IN_CLUSTER_TOKEN = '/var/run/secrets/kubernetes.io/serviceaccount/token';

/**
 * How the controller reaches the API server: a kubeconfig file (--kubeconfig,
 * for running outside the cluster), else the pod's own service account.
 */
export function loadKubeConfig(file: string | undefined): KubeConfig {
  const kc = new KubeConfig();
  try {
    if (file !== undefined) kc.loadFromFile(file);
    else kc.loadFromCluster();
  } catch (err) {
    throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', `cannot load --kubeconfig ${file ?? '(in-cluster)'}: ${errorMessage(err)}`, { cause: err, details: { key: 'kubeconfig', value: file } });
  }
  const server = kc.getCurrentCluster()?.server;
  if (file === undefined && (!existsSync(IN_CLUSTER_TOKEN) || server === undefined || server.includes('undefined'))) {
    throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', '--store kubernetes or --kubernetes-join outside a Kubernetes pod needs --kubeconfig FILE', { details: { key: 'kubeconfig' } });
  }
  if (server === undefined) {
    throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', `--kubeconfig ${file}: its current context names no cluster`, { details: { key: 'kubeconfig', value: file } });
  }
  return kc;
}
