import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import type { ChannelOptions } from '@grpc/grpc-js';
import { formatHostPort, type HostPort } from './config-parse.ts';

/**
 * The controller replicas a client talks to, as one grpc-js target: a list
 * of IP addresses becomes an `ipv4:`/`ipv6:` target of several addresses,
 * a DNS name a `dns:` target that resolves to all of its addresses. grpc-js
 * then owns fail-over: its pick_first policy connects to the first address
 * that answers, and when that connection is lost the next call reconnects to
 * another address that answers. Several names in one list are refused
 * (checkControllerList): a grpc-js target resolves one name.
 *
 * A list is shuffled here, at each call, so a fleet of agents spreads evenly
 * over the replicas, and so do those of a lost replica when they move: the
 * pick_first shuffle of grpc-js 1.14 stops one swap short (its loop ends at
 * index 2), so of three addresses the second is never tried first, and a
 * list of two is never shuffled at all.
 */
export function controllerTarget(controllers: Controllers, random: () => number = Math.random): string {
  const list = controllerList(controllers);
  if (list.length === 1) {
    const only = list[0]!;
    return isIP(only.host) === 0 ? `dns:${only.host}:${only.port}` : formatHostPort(only);
  }
  const family = isIP(list[0]!.host);
  return `${family === 6 ? 'ipv6' : 'ipv4'}:${shuffled(list, random).map(formatHostPort).join(',')}`;
}

/** The addresses a name resolves to (getaddrinfo, as grpc-js's own resolver asks). */
export type ResolveName = (host: string) => Promise<readonly string[]>;

export const lookupAll: ResolveName = async (host) => (await lookup(host, { all: true })).map((a) => a.address);

/**
 * The replica a client that connects anew at each attempt (the agent's
 * watch) tries: one address per attempt, in an order shuffled once per set
 * of addresses, moving to the next after a failed attempt or a broken
 * stream. Not a target of several addresses: grpc-js's pick_first opens a
 * second connection, to the next address, whenever the first has not become
 * ready within 250 ms, so in a reconnect storm (the agents of a dead
 * replica, all at once) slow handshakes would double the TLS work of the
 * surviving replicas, and slow them further. A DNS name is resolved at
 * each attempt; one that does not resolve stays a `dns:` target, so grpc-js
 * reports (and retries) the failure.
 */
export class ReplicaRotation {
  readonly #controllers: Controllers;
  readonly #resolve: ResolveName;
  readonly #random: () => number;
  #order: string[] = [];
  #next = 0;

  constructor(controllers: Controllers, resolve: ResolveName = lookupAll, random: () => number = Math.random) {
    this.#controllers = controllers;
    this.#resolve = resolve;
    this.#random = random;
  }

  /** The target of the next attempt: one replica's address. */
  async target(): Promise<string> {
    const targets = await this.#targets();
    const known = new Set(this.#order);
    if (targets.length !== known.size || targets.some((t) => !known.has(t))) {
      this.#order = shuffled(targets, this.#random);
      this.#next = 0;
    }
    return this.#order[this.#next % this.#order.length]!;
  }

  /** The attempt failed or its stream broke: the next attempt goes to the next replica. */
  advance(): void {
    this.#next++;
  }

  async #targets(): Promise<string[]> {
    const list = controllerList(this.#controllers);
    const only = list[0];
    if (list.length !== 1 || only === undefined || isIP(only.host) !== 0) return [...new Set(list.map(formatHostPort))];
    const addresses = await this.#resolve(only.host).catch(() => []);
    const family = isIP(addresses[0] ?? '');
    const usable = [...new Set(addresses.filter((a) => family !== 0 && isIP(a) === family))];
    return usable.length > 0 ? usable.map((host) => formatHostPort({ host, port: only.port })) : [`dns:${only.host}:${only.port}`];
  }
}

/** Fisher-Yates: every order equally likely. */
function shuffled<T>(list: readonly T[], random: () => number): T[] {
  const out = [...list];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
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

/** pick_first over the shuffled address list (grpc's service config): the only spread a DNS name's addresses get, which controllerTarget cannot shuffle. */
export const SPREAD_OVER_REPLICAS: ChannelOptions = {
  'grpc.service_config': JSON.stringify({ loadBalancingConfig: [{ pick_first: { shuffleAddressList: true } }] }),
};
