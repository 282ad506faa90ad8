import { isIP } from 'node:net';
import type { ChannelOptions } from '@grpc/grpc-js';
import { formatHostPort, type HostPort } from './config-parse.ts';

/**
 * The controller replicas a client talks to, as one grpc-js target: a list
 * of IP addresses becomes an `ipv4:`/`ipv6:` target of several addresses,
 * a DNS name a `dns:` target that resolves to all of its addresses. grpc-js
 * then owns fail-over: its pick_first policy connects to one address (the
 * list shuffled, so a fleet of agents spreads over the replicas), and when
 * that connection is lost the next call reconnects to another address that
 * answers. Several names in one list are refused (checkControllerList): a
 * grpc-js target resolves one name.
 */
export function controllerTarget(controllers: Controllers): string {
  const list = controllerList(controllers);
  if (list.length === 1) {
    const only = list[0]!;
    return isIP(only.host) === 0 ? `dns:${only.host}:${only.port}` : formatHostPort(only);
  }
  const family = isIP(list[0]!.host);
  return `${family === 6 ? 'ipv6' : 'ipv4'}:${list.map(formatHostPort).join(',')}`;
}

/** One controller address or the list of every replica's. */
export type Controllers = HostPort | readonly HostPort[];

export function controllerList(c: Controllers): readonly HostPort[] {
  return 'host' in c ? [c] : c;
}

/** Why a --controller list cannot be one target, or undefined when it can. */
export function controllerListProblem(list: readonly HostPort[]): string | undefined {
  if (list.length <= 1) return undefined;
  if (list.some((h) => isIP(h.host) === 0)) return 'several addresses must all be IP addresses; give a DNS name that resolves to every replica on its own';
  const families = new Set(list.map((h) => isIP(h.host)));
  if (families.size > 1) return 'several addresses must be all IPv4 or all IPv6';
  return undefined;
}

/** pick_first over the shuffled address list (grpc's service config). */
export const SPREAD_OVER_REPLICAS: ChannelOptions = {
  'grpc.service_config': JSON.stringify({ loadBalancingConfig: [{ pick_first: { shuffleAddressList: true } }] }),
};
