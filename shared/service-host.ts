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
