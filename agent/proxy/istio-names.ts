import type { Service, Workload } from '../../shared/resources/types.ts';

/*
 * How Istio names workloads and services in its telemetry, so that Istio's
 * dashboards and Kiali read Ambit's metrics unchanged. The rules are Istio's
 * (pkg/model's canonical service labels; the proxy's and ztunnel's app and
 * version): each value falls back through the labels an operator is likely
 * to have set, ending in one that is always there.
 */

/** Istio's default cluster id (its CLUSTER_ID when none is configured). */
export const DEFAULT_CLUSTER_ID = 'Kubernetes';
/** The DNS domain of service names (Istio's domainSuffix; Kubernetes' default). */
export const DEFAULT_CLUSTER_DOMAIN = 'cluster.local';

/** `destination_service_name` of a connection dialled outside the mesh (Envoy's cluster of the same name). */
export const PASSTHROUGH = 'PassthroughCluster';

/** What Istio's labels say of one workload. */
export interface WorkloadNames {
  readonly app: string;
  readonly version: string;
  readonly canonicalService: string;
  readonly canonicalRevision: string;
  readonly cluster: string;
}

const label = (w: Workload, ...keys: string[]): string | undefined => {
  for (const k of keys) {
    const v = w.metadata.labels[k];
    if (v) return v;
  }
  return undefined;
};

/** `service.istio.io/canonical-name`, else `app.kubernetes.io/name`, else `app`, else the workload's name. */
export function canonicalService(w: Workload): string {
  return label(w, 'service.istio.io/canonical-name', 'app.kubernetes.io/name', 'app') ?? w.metadata.name;
}

/** `service.istio.io/canonical-revision`, else `app.kubernetes.io/version`, else `version`, else `latest`. */
export function canonicalRevision(w: Workload): string {
  return label(w, 'service.istio.io/canonical-revision', 'app.kubernetes.io/version', 'version') ?? 'latest';
}

/** Istio's labels of a workload: `app` (`app`, `app.kubernetes.io/name`, else the canonical service), `version` (`version`, `app.kubernetes.io/version`, else the canonical revision). */
export function workloadNames(w: Workload, cluster: string): WorkloadNames {
  const cs = canonicalService(w);
  const cr = canonicalRevision(w);
  return {
    app: label(w, 'app', 'app.kubernetes.io/name') ?? cs,
    version: label(w, 'version', 'app.kubernetes.io/version') ?? cr,
    canonicalService: cs,
    canonicalRevision: cr,
    cluster,
  };
}

/** A service's host name as Istio reports it in `destination_service`: `name.namespace.svc.<cluster domain>`. */
export function serviceHost(svc: Service, clusterDomain: string): string {
  return `${svc.metadata.name}.${svc.metadata.namespace}.svc.${clusterDomain}`;
}

/**
 * `destination_service`, `destination_service_name` and
 * `destination_service_namespace` of a connection's service host (as
 * serviceHost writes it, or PASSTHROUGH, or '' for none). Kubernetes service
 * and namespace names are DNS labels (no dots), so the first two labels of
 * the host are the name and the namespace.
 */
export function serviceLabels(host: string): { readonly service: string; readonly name: string; readonly namespace: string } {
  if (host === PASSTHROUGH) return { service: 'unknown', name: PASSTHROUGH, namespace: 'unknown' };
  const m = /^([^.]+)\.([^.]+)\.svc\./.exec(host);
  if (!m) return { service: host || 'unknown', name: host || 'unknown', namespace: 'unknown' };
  return { service: host, name: m[1]!, namespace: m[2]! };
}
