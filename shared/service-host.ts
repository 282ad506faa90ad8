import { canonicalIp } from './net-address.ts';
import type { AppProtocol, Service, Workload } from './resources/types.ts';

/**
 * Which mesh service a host name names: "name.namespace", or
 * "name.namespace.svc[.<cluster domain>]" (as Kubernetes DNS spells it).
 * Any other name (api.github.com) is outside the mesh even if a service
 * "api" lives in a namespace "github". The agent routes by this rule and
 * the controller's explain resolves by it, so the two never disagree.
 */
export function serviceKeyOfHost(host: string): string | undefined {
  const parts = host.toLowerCase().replace(/\.$/, '').split('.');
  if (parts.length === 2 || (parts.length >= 3 && parts[2] === 'svc')) return `${parts[0]}.${parts[1]}`;
  return undefined;
}

/**
 * The Service a workload's port belongs to: the first by name of those in
 * the workload's namespace that select it (every selector pair; an empty
 * selector selects nothing) and target `port`. What the destination agent
 * names the connection's service by and reads the port's appProtocol from,
 * so explain reads it the same way.
 */
export function serviceAtWorkloadPort(services: Iterable<Service>, w: Workload, port: number): Service | undefined {
  let best: Service | undefined;
  for (const svc of services) {
    if (svc.metadata.namespace !== w.metadata.namespace || !svc.spec.ports.some((p) => p.targetPort === port)) continue;
    const sel = Object.entries(svc.spec.selector);
    if (sel.length === 0 || !sel.every(([k, v]) => Object.hasOwn(w.metadata.labels, k) && w.metadata.labels[k] === v)) continue;
    if (!best || svc.metadata.name < best.metadata.name) best = svc;
  }
  return best;
}

/** What a workload's port speaks: the appProtocol its Service declares for it; `tcp` when no Service selects it. */
export function appProtocolAtWorkloadPort(services: Iterable<Service>, w: Workload, port: number): AppProtocol {
  return serviceAtWorkloadPort(services, w, port)?.spec.ports.find((p) => p.targetPort === port)?.appProtocol ?? 'tcp';
}

/**
 * A destination as a node-scoped watch subscribes to it (Subscribe.hosts): an
 * IP address in canonical form, or a service's `name.namespace`; undefined
 * when the host is neither (a name outside the mesh's service names).
 */
export function subscriptionHost(host: string): string | undefined {
  return canonicalIp(host) ?? serviceKeyOfHost(host);
}
