import { isIPv4, isIPv6 } from 'node:net';

/**
 * IP addresses and CIDR blocks in one canonical text form, so that resources,
 * the registry and the authorization engine compare strings, not spellings:
 * IPv4 dotted quad without leading zeros (a leading zero is octal to some
 * parsers and decimal to others, so it is refused rather than guessed);
 * IPv6 per RFC 5952 (lower case, no leading zeros, the longest run of zero
 * groups compressed, IPv4-mapped addresses as ::ffff:a.b.c.d — which is also
 * how Node reports IPv4 peers on dual-stack sockets). Zone ids (fe80::1%eth0)
 * are refused: they name a local interface, not a mesh address.
 */
export type IpFamily = 4 | 6;

export interface IpAddress {
  readonly family: IpFamily;
  /** 4 bytes for IPv4, 16 for IPv6, network order. */
  readonly bytes: Uint8Array;
}

export interface Cidr {
  /** The network address: host bits are always zero. */
  readonly network: IpAddress;
  readonly prefix: number;
}

export type CidrResult =
  | { readonly ok: true; readonly cidr: Cidr; readonly text: string }
  | { readonly ok: false; readonly reason: string };

const V4_OCTET = '(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])';
const V4 = new RegExp(`^${V4_OCTET}(?:\\.${V4_OCTET}){3}$`);
const V6_GROUP = /^[0-9A-Fa-f]{1,4}$/;

function parseV4(s: string): Uint8Array | undefined {
  if (!V4.test(s) || !isIPv4(s)) return undefined;
  return Uint8Array.from(s.split('.'), Number);
}

function parseV6(s: string): Uint8Array | undefined {
  if (!isIPv6(s) || s.includes('%')) return undefined;
  let text = s;
  const lastColon = text.lastIndexOf(':');
  const tail = text.slice(lastColon + 1);
  if (tail.includes('.')) {
    // Rewrite an embedded IPv4 tail as two hex groups so one parser handles both spellings.
    const v4 = parseV4(tail);
    if (v4 === undefined) return undefined;
    const [a = 0, b = 0, c = 0, d = 0] = v4;
    text = `${text.slice(0, lastColon + 1)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const split = (h: string | undefined): string[] => (h === undefined || h === '' ? [] : h.split(':'));
  const left = split(halves[0]);
  const right = split(halves[1]);
  const missing = 8 - left.length - right.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return undefined;
  const groups = [...left, ...Array<string>(halves.length === 1 ? 0 : missing).fill('0'), ...right];
  const bytes = new Uint8Array(16);
  for (const [i, g] of groups.entries()) {
    if (!V6_GROUP.test(g)) return undefined;
    const n = parseInt(g, 16);
    bytes[2 * i] = n >> 8;
    bytes[2 * i + 1] = n & 0xff;
  }
  return bytes;
}

export function parseIp(s: string): IpAddress | undefined {
  if (typeof s !== 'string') return undefined;
  const v4 = parseV4(s);
  if (v4 !== undefined) return { family: 4, bytes: v4 };
  const v6 = parseV6(s);
  return v6 === undefined ? undefined : { family: 6, bytes: v6 };
}

function isV4Mapped(b: Uint8Array): boolean {
  return b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff;
}

export function formatIp(ip: IpAddress): string {
  const b = ip.bytes;
  if (ip.family === 4) return Array.from(b).join('.');
  if (isV4Mapped(b)) return `::ffff:${Array.from(b.subarray(12)).join('.')}`;
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((b[i] ?? 0) << 8) | (b[i + 1] ?? 0));
  // RFC 5952 §4.2: compress the longest run of two or more zero groups, the first on a tie.
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) [bestStart, bestLen] = [i, j - i];
    i = j === i ? i + 1 : j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart === -1) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}

/** The canonical text form of an IP address, or undefined if `s` is not one. */
export function canonicalIp(s: string): string | undefined {
  // Dotted decimal without leading zeros is already canonical: the common
  // case, on every connection's source-address lookup.
  if (typeof s === 'string' && V4.test(s)) return s;
  const ip = parseIp(s);
  return ip === undefined ? undefined : formatIp(ip);
}

function masked(ip: IpAddress, prefix: number): IpAddress {
  const bytes = Uint8Array.from(ip.bytes, (x, i) => {
    const keep = Math.min(8, Math.max(0, prefix - 8 * i));
    return x & ((0xff << (8 - keep)) & 0xff);
  });
  return { family: ip.family, bytes };
}

export function formatCidr(c: Cidr): string {
  return `${formatIp(c.network)}/${c.prefix}`;
}

/**
 * Parses "address/prefix". A block with host bits set (10.0.0.1/8) is refused
 * rather than silently widened: the author probably meant something else, and
 * the reason names the block it would be.
 */
export function parseCidr(s: string): CidrResult {
  const slash = s.indexOf('/');
  if (slash === -1) return { ok: false, reason: 'is not a CIDR block (address/prefix)' };
  const ip = parseIp(s.slice(0, slash));
  if (ip === undefined) return { ok: false, reason: 'has an invalid IP address before "/"' };
  const max = ip.family === 4 ? 32 : 128;
  const p = s.slice(slash + 1);
  if (!/^(0|[1-9][0-9]{0,2})$/.test(p) || Number(p) > max) {
    return { ok: false, reason: `prefix length must be an integer 0-${max}` };
  }
  const prefix = Number(p);
  const network = masked(ip, prefix);
  const cidr = { network, prefix };
  if (!network.bytes.every((x, i) => x === ip.bytes[i])) {
    return { ok: false, reason: `has host bits set; did you mean ${formatCidr(cidr)}?` };
  }
  return { ok: true, cidr, text: formatCidr(cidr) };
}

/**
 * Whether `ip` lies in `cidr`. An IPv4-mapped IPv6 address (how a dual-stack
 * socket reports an IPv4 peer) is matched as the IPv4 address it carries.
 */
export function cidrContains(cidr: Cidr, ip: IpAddress): boolean {
  let candidate = ip;
  if (cidr.network.family === 4 && ip.family === 6 && isV4Mapped(ip.bytes)) {
    candidate = { family: 4, bytes: ip.bytes.subarray(12) };
  }
  if (candidate.family !== cidr.network.family) return false;
  const m = masked(candidate, cidr.prefix);
  return m.bytes.every((x, i) => x === cidr.network.bytes[i]);
}
