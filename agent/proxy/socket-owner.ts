/**
 * Which Unix user owns the client end of a local TCP connection. On a VM run
 * without iptables capture, workloads connect to the agent over loopback and
 * the agent tells them apart by uid: the kernel's socket table in
 * /proc/net/tcp{,6} records the owner of every socket, including the peer's
 * end of a connection we accepted, as long as the peer is in our network
 * namespace.
 *
 * Line format (whitespace separated):
 *   sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ...
 * Addresses are hex 32-bit words printed in host byte order (%08X of the
 * in-memory word, so 127.0.0.1 is 0100007F on little-endian machines); tcp6
 * prints four such words. Ports are %04X of the host-order port.
 */
import { readFile } from 'node:fs/promises';
import { endianness } from 'node:os';
import { formatIp, parseIp } from '../../shared/net-address.ts';

export interface Endpoint {
  readonly address: string;
  readonly port: number;
}

export interface ProcNetTcpEntry {
  local: Endpoint;
  remote: Endpoint;
  /** Kernel TCP state (1 ESTABLISHED, 6 TIME_WAIT, 10 LISTEN, ...). */
  state: number;
  uid: number;
  /** 0 when no process holds the socket any more (TIME_WAIT, orphaned). */
  inode: number;
}

const LITTLE_ENDIAN = endianness() === 'LE';
const TCP_TIME_WAIT = 6;

/** 16 network-order bytes; IPv4 becomes ::ffff:a.b.c.d so both tables compare alike. */
function toV6Bytes(address: string): Uint8Array | undefined {
  const ip = parseIp(address);
  if (ip === undefined) return undefined;
  if (ip.family === 6) return ip.bytes;
  const out = new Uint8Array(16);
  out[10] = 0xff;
  out[11] = 0xff;
  out.set(ip.bytes, 12);
  return out;
}

function isV4Mapped(b: Uint8Array): boolean {
  return b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff;
}

/** Network-order bytes → the kernel's hex spelling (whole 32-bit words). */
function procHex(bytes: Uint8Array): string {
  let out = '';
  for (let w = 0; w < bytes.length; w += 4) {
    const word = bytes.subarray(w, w + 4);
    const ordered = LITTLE_ENDIAN ? Array.from(word).reverse() : Array.from(word);
    for (const b of ordered) out += b.toString(16).padStart(2, '0');
  }
  return out.toUpperCase();
}

/** The kernel's hex spelling → network-order bytes, or undefined if malformed. */
function fromProcHex(hex: string, byteLength: 4 | 16): Uint8Array | undefined {
  if (hex.length !== byteLength * 2 || !/^[0-9A-Fa-f]+$/.test(hex)) return undefined;
  const out = new Uint8Array(byteLength);
  for (let w = 0; w < byteLength; w += 4) {
    for (let i = 0; i < 4; i++) {
      const b = parseInt(hex.slice((w + i) * 2, (w + i) * 2 + 2), 16);
      out[LITTLE_ENDIAN ? w + 3 - i : w + i] = b;
    }
  }
  return out;
}

function parseProcEndpoint(text: string, v6: boolean): Endpoint | undefined {
  const colon = text.indexOf(':');
  if (colon < 0) return undefined;
  const bytes = fromProcHex(text.slice(0, colon), v6 ? 16 : 4);
  const portHex = text.slice(colon + 1);
  if (bytes === undefined || !/^[0-9A-Fa-f]{4}$/.test(portHex)) return undefined;
  return { address: formatIp({ family: v6 ? 6 : 4, bytes }), port: parseInt(portHex, 16) };
}

function parseLine(line: string, v6: boolean): ProcNetTcpEntry | undefined {
  const f = line.trim().split(/\s+/);
  const [sl, localText, remoteText, stateText, , , , uidText, , inodeText] = f;
  if (sl === undefined || !/^\d+:$/.test(sl) || localText === undefined || remoteText === undefined) return undefined;
  if (stateText === undefined || uidText === undefined || inodeText === undefined) return undefined;
  if (!/^[0-9A-Fa-f]{2}$/.test(stateText) || !/^\d+$/.test(uidText) || !/^\d+$/.test(inodeText)) return undefined;
  const local = parseProcEndpoint(localText, v6);
  const remote = parseProcEndpoint(remoteText, v6);
  if (local === undefined || remote === undefined) return undefined;
  return { local, remote, state: parseInt(stateText, 16), uid: Number(uidText), inode: Number(inodeText) };
}

/** Every socket in a /proc/net/tcp (v6 false) or /proc/net/tcp6 (v6 true) text; the header and malformed lines are skipped. */
export function parseProcNetTcp(text: string, v6: boolean): ProcNetTcpEntry[] {
  const out: ProcNetTcpEntry[] = [];
  for (const line of text.split('\n')) {
    const e = parseLine(line, v6);
    if (e !== undefined) out.push(e);
  }
  return out;
}

async function readOptional(path: string): Promise<string> {
  try {
    return await readFile(path, 'latin1');
  } catch (err) {
    // No tcp6 table on a kernel without IPv6; treat a missing table as empty.
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw err;
  }
}

/**
 * The uid owning the first live socket in `text` whose columns start with
 * `needle` (local and remote endpoint, in the kernel's spelling). Only lines
 * containing the needle are parsed, so a big table costs one substring scan.
 */
function findUid(text: string, needle: string, v6: boolean): number | undefined {
  for (let at = text.indexOf(needle); at >= 0; at = text.indexOf(needle, at + needle.length)) {
    const lineStart = text.lastIndexOf('\n', at) + 1;
    const lineEnd = text.indexOf('\n', at);
    const entry = parseLine(text.slice(lineStart, lineEnd < 0 ? undefined : lineEnd), v6);
    // The needle must be the address columns, not a coincidence elsewhere on the line.
    if (entry === undefined || text.slice(lineStart, at).trim().split(/\s+/).length !== 1) continue;
    // A TIME_WAIT or orphaned socket reports uid 0: never attribute it to root.
    if (entry.state === TCP_TIME_WAIT || entry.inode === 0) continue;
    return entry.uid;
  }
  return undefined;
}

function portHex(port: number): string {
  return port.toString(16).toUpperCase().padStart(4, '0');
}

/**
 * The uid of the socket whose local end is `client` and remote end is
 * `server` (the peer's view of a connection we accepted), or undefined if
 * none is found (peer in another network namespace, connection already
 * closed, or an address that is not an IP). IPv4 peers are also matched in
 * tcp6 as ::ffff:a.b.c.d, where dual-stack client sockets appear. procRoot
 * defaults to '/proc' (tests pass a fixture directory).
 */
export async function socketOwnerUid(client: Endpoint, server: Endpoint, procRoot = '/proc'): Promise<number | undefined> {
  const c = toV6Bytes(client.address);
  const s = toV6Bytes(server.address);
  if (c === undefined || s === undefined) return undefined;
  const validPort = (p: number) => Number.isInteger(p) && p > 0 && p <= 0xffff;
  if (!validPort(client.port) || !validPort(server.port)) return undefined;

  const bothV4 = isV4Mapped(c) && isV4Mapped(s);
  const [tcp, tcp6] = await Promise.all([
    bothV4 ? readOptional(`${procRoot}/net/tcp`) : Promise.resolve(''),
    readOptional(`${procRoot}/net/tcp6`),
  ]);
  if (bothV4) {
    const needle = `${procHex(c.subarray(12))}:${portHex(client.port)} ${procHex(s.subarray(12))}:${portHex(server.port)}`;
    const uid = findUid(tcp, needle, false);
    if (uid !== undefined) return uid;
  }
  const needle6 = `${procHex(c)}:${portHex(client.port)} ${procHex(s)}:${portHex(server.port)}`;
  return findUid(tcp6, needle6, true);
}
