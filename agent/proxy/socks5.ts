/**
 * Server side of SOCKS5 (RFC 1928) with username/password authentication
 * (RFC 1929), CONNECT only. The agent's explicit-mode outbound listener uses
 * it: a workload that cannot be captured by iptables points its proxy setting
 * here and names itself with the SOCKS user; the caller maps that name to a
 * workload, resolves the destination and answers with sendSocksReply.
 *
 * The parser works on an accumulating buffer so that it does not care how the
 * client splits its writes (all phases in one segment, or one byte at a time),
 * and it reads with 'readable'/read() rather than 'data' so that, once the
 * request is parsed, the bytes it has not consumed can be pushed back and the
 * socket handed over in its initial (not flowing, not paused) state.
 */
import type { Socket } from 'node:net';
import { formatIp, parseIp } from '../../shared/net-address.ts';

export const SOCKS_REPLY = {
  succeeded: 0,
  generalFailure: 1,
  notAllowed: 2,
  networkUnreachable: 3,
  hostUnreachable: 4,
  connectionRefused: 5,
  ttlExpired: 6,
  commandNotSupported: 7,
  addressTypeNotSupported: 8,
} as const;

export interface SocksRequest {
  /** The RFC 1929 user name, or undefined when the client did not authenticate. */
  readonly username: string | undefined;
  readonly password: string | undefined;
  /** Dotted quad, canonical IPv6 (RFC 5952), or the domain name as the client sent it. */
  readonly host: string;
  readonly port: number;
  readonly addressType: 'ipv4' | 'ipv6' | 'domain';
}

export type Socks5Phase = 'greeting' | 'auth' | 'request';

/**
 * Why a negotiation failed. `reply` is the SOCKS reply code that goes with the
 * failure (for the request phase it is the code sent to the client; in the
 * greeting and auth phases the wire answer is a method refusal or an auth
 * failure instead, and the code only classifies the failure for logs).
 */
export class Socks5Error extends Error {
  readonly reply: number;
  readonly phase: Socks5Phase;

  constructor(message: string, reply: number, phase: Socks5Phase, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'Socks5Error';
    this.reply = reply;
    this.phase = phase;
  }
}

const VERSION = 0x05;
const AUTH_VERSION = 0x01;
const METHOD_NONE = 0x00;
const METHOD_USERPASS = 0x02;
const METHOD_REFUSED = 0xff;
const CMD_CONNECT = 0x01;
const ATYP_IPV4 = 0x01;
const ATYP_DOMAIN = 0x03;
const ATYP_IPV6 = 0x04;

/**
 * After a refusal the socket is half-closed and drained for this long before
 * being destroyed: closing at once with unread input makes the kernel send a
 * RST, which can discard the refusal before the client reads it.
 */
const REFUSAL_LINGER_MS = 1000;

/** A failure found while parsing, with the bytes (if any) to answer it with. */
interface Refusal {
  readonly error: Socks5Error;
  readonly response: Buffer | undefined;
}

/** One parse step: more bytes needed, a message of `size` bytes, or a refusal. */
type Step<T> =
  | { readonly kind: 'more' }
  | { readonly kind: 'ok'; readonly size: number; readonly value: T }
  | { readonly kind: 'refuse'; readonly refusal: Refusal };

const MORE = { kind: 'more' } as const;

function refuse(phase: Socks5Phase, reply: number, message: string, response: Buffer | undefined): { kind: 'refuse'; refusal: Refusal } {
  return { kind: 'refuse', refusal: { error: new Socks5Error(message, reply, phase), response } };
}

function replyBytes(code: number, bound: { address: string; port: number } = { address: '0.0.0.0', port: 0 }): Buffer {
  if (!Number.isInteger(code) || code < 0 || code > 0xff) throw new RangeError(`SOCKS reply code out of range: ${code}`);
  if (!Number.isInteger(bound.port) || bound.port < 0 || bound.port > 0xffff) throw new RangeError(`port out of range: ${bound.port}`);
  const ip = parseIp(bound.address);
  let atyp: number;
  let addr: Uint8Array;
  if (ip !== undefined) {
    atyp = ip.family === 4 ? ATYP_IPV4 : ATYP_IPV6;
    addr = ip.bytes;
  } else {
    // RFC 1928 allows a domain as the bound address; anything else would be a caller bug.
    const name = Buffer.from(bound.address, 'latin1');
    if (!isValidDomain(name)) throw new RangeError(`bound address is neither an IP nor a domain: ${JSON.stringify(bound.address)}`);
    atyp = ATYP_DOMAIN;
    addr = Buffer.concat([Buffer.of(name.length), name]);
  }
  const out = Buffer.alloc(4 + addr.length + 2);
  out[0] = VERSION;
  out[1] = code;
  out[2] = 0x00;
  out[3] = atyp;
  out.set(addr, 4);
  out.writeUInt16BE(bound.port, 4 + addr.length);
  return out;
}

function isValidDomain(name: Uint8Array): boolean {
  if (name.length < 1 || name.length > 255) return false;
  // Printable ASCII without space: a name with control bytes or spaces would
  // reach logs and the resolver verbatim.
  return name.every((b) => b > 0x20 && b < 0x7f);
}

function parseGreeting(buf: Buffer, authRequired: boolean): Step<{ method: number }> {
  if (buf.length < 1) return MORE;
  if (buf[0] !== VERSION) {
    // Not SOCKS5 (often SOCKS4 or HTTP sent to the wrong port): no SOCKS5 answer would be understood.
    return refuse('greeting', SOCKS_REPLY.generalFailure, `unsupported SOCKS version ${buf[0]}`, undefined);
  }
  if (buf.length < 2) return MORE;
  const n = buf[1] ?? 0;
  if (n === 0) return refuse('greeting', SOCKS_REPLY.generalFailure, 'greeting offers no methods', Buffer.of(VERSION, METHOD_REFUSED));
  if (buf.length < 2 + n) return MORE;
  const methods = buf.subarray(2, 2 + n);
  // Username/password is preferred even when optional: it is how a client names its workload.
  if (methods.includes(METHOD_USERPASS)) return { kind: 'ok', size: 2 + n, value: { method: METHOD_USERPASS } };
  if (!authRequired && methods.includes(METHOD_NONE)) return { kind: 'ok', size: 2 + n, value: { method: METHOD_NONE } };
  return refuse(
    'greeting',
    SOCKS_REPLY.notAllowed,
    authRequired ? 'client does not offer username/password authentication' : 'client offers no supported authentication method',
    Buffer.of(VERSION, METHOD_REFUSED),
  );
}

function parseAuth(buf: Buffer): Step<{ username: string; password: string }> {
  const fail = Buffer.of(AUTH_VERSION, 0x01);
  if (buf.length < 1) return MORE;
  if (buf[0] !== AUTH_VERSION) return refuse('auth', SOCKS_REPLY.generalFailure, `unsupported auth version ${buf[0]}`, fail);
  if (buf.length < 2) return MORE;
  const ulen = buf[1] ?? 0;
  if (buf.length < 2 + ulen + 1) return MORE;
  const plen = buf[2 + ulen] ?? 0;
  const size = 2 + ulen + 1 + plen;
  if (buf.length < size) return MORE;
  // RFC 1929 says 1..255 for both, but some clients send an empty password;
  // empty values are passed on and the caller's user lookup refuses them.
  return {
    kind: 'ok',
    size,
    value: { username: buf.toString('utf8', 2, 2 + ulen), password: buf.toString('utf8', 3 + ulen, size) },
  };
}

function parseRequest(buf: Buffer): Step<{ host: string; port: number; addressType: SocksRequest['addressType'] }> {
  const failWith = (code: number, message: string) => refuse('request', code, message, replyBytes(code));
  if (buf.length < 1) return MORE;
  if (buf[0] !== VERSION) return failWith(SOCKS_REPLY.generalFailure, `unsupported SOCKS version ${buf[0]} in request`);
  if (buf.length < 2) return MORE;
  if (buf[1] !== CMD_CONNECT) return failWith(SOCKS_REPLY.commandNotSupported, `unsupported SOCKS command ${buf[1]}`);
  if (buf.length < 3) return MORE;
  if (buf[2] !== 0x00) return failWith(SOCKS_REPLY.generalFailure, 'reserved byte in request is not zero');
  if (buf.length < 4) return MORE;
  const atyp = buf[3];
  let host: string;
  let addressType: SocksRequest['addressType'];
  let end: number;
  if (atyp === ATYP_IPV4) {
    end = 4 + 4;
    if (buf.length < end + 2) return MORE;
    host = formatIp({ family: 4, bytes: buf.subarray(4, end) });
    addressType = 'ipv4';
  } else if (atyp === ATYP_IPV6) {
    end = 4 + 16;
    if (buf.length < end + 2) return MORE;
    host = formatIp({ family: 6, bytes: buf.subarray(4, end) });
    addressType = 'ipv6';
  } else if (atyp === ATYP_DOMAIN) {
    if (buf.length < 5) return MORE;
    const len = buf[4] ?? 0;
    end = 5 + len;
    if (buf.length < end + 2) return MORE;
    const name = buf.subarray(5, end);
    if (!isValidDomain(name)) return failWith(SOCKS_REPLY.generalFailure, 'malformed domain name in request');
    host = name.toString('latin1');
    addressType = 'domain';
  } else {
    return failWith(SOCKS_REPLY.addressTypeNotSupported, `unsupported address type ${atyp}`);
  }
  return { kind: 'ok', size: end + 2, value: { host, port: buf.readUInt16BE(end), addressType } };
}

/**
 * Runs the greeting, optional auth and request phases on an accepted socket.
 * Resolves with the CONNECT request; bytes the client sent after the request
 * (pipelined data) are pushed back with socket.unshift so none is lost, and
 * the socket is left neither flowing nor paused, so the caller's
 * on('data')/pipe starts it as usual. The caller must answer with
 * sendSocksReply. Rejects with a Socks5Error after sending the right refusal
 * and closing the socket on protocol errors, unsupported commands or address
 * types, a client that closes early, or when the whole negotiation takes
 * longer than timeoutMs (a slow client must not hold a socket).
 */
export function acceptSocks5(
  socket: Socket,
  options: { readonly authRequired: boolean; readonly timeoutMs: number },
): Promise<SocksRequest> {
  if (!Number.isFinite(options.timeoutMs) || options.timeoutMs <= 0) {
    throw new RangeError(`timeoutMs must be a positive number, got ${options.timeoutMs}`);
  }
  return new Promise<SocksRequest>((resolve, reject) => {
    let buf: Buffer = Buffer.alloc(0);
    let phase: Socks5Phase = 'greeting';
    let credentials: { username: string; password: string } | undefined;
    let settled = false;

    const cleanup = (): void => {
      settled = true;
      clearTimeout(timer);
      socket.removeListener('readable', onReadable);
      socket.removeListener('end', onEnd);
      socket.removeListener('close', onClose);
      socket.removeListener('error', onError);
    };

    const fail = (error: Socks5Error, response: Buffer | undefined, linger: boolean): void => {
      cleanup();
      // Errors after the negotiation (ECONNRESET while lingering) must not
      // crash the process: the caller only learns of the rejection.
      socket.on('error', () => {});
      if (!linger || socket.destroyed) {
        socket.destroy();
      } else {
        const killer = setTimeout(() => socket.destroy(), REFUSAL_LINGER_MS);
        killer.unref();
        socket.once('close', () => clearTimeout(killer));
        socket.on('data', () => {}); // drain whatever else arrives so the close is a FIN, not a RST
        if (response !== undefined) socket.end(response);
        else socket.end();
      }
      reject(error);
    };

    const timer = setTimeout(() => {
      fail(new Socks5Error(`SOCKS5 negotiation timed out after ${options.timeoutMs} ms in ${phase} phase`, SOCKS_REPLY.ttlExpired, phase), undefined, false);
    }, options.timeoutMs);

    /** Consumes complete messages from `buf`; true when negotiation has ended either way. */
    const advance = (): boolean => {
      for (;;) {
        if (phase === 'greeting') {
          const step = parseGreeting(buf, options.authRequired);
          if (step.kind === 'more') return false;
          if (step.kind === 'refuse') {
            fail(step.refusal.error, step.refusal.response, true);
            return true;
          }
          buf = buf.subarray(step.size);
          socket.write(Buffer.of(VERSION, step.value.method));
          phase = step.value.method === METHOD_USERPASS ? 'auth' : 'request';
        } else if (phase === 'auth') {
          const step = parseAuth(buf);
          if (step.kind === 'more') return false;
          if (step.kind === 'refuse') {
            fail(step.refusal.error, step.refusal.response, true);
            return true;
          }
          buf = buf.subarray(step.size);
          credentials = step.value;
          // Success here only means "well-formed": whether this user may connect
          // is the caller's decision, answered with notAllowed on the request.
          socket.write(Buffer.of(AUTH_VERSION, 0x00));
          phase = 'request';
        } else {
          const step = parseRequest(buf);
          if (step.kind === 'more') return false;
          if (step.kind === 'refuse') {
            fail(step.refusal.error, step.refusal.response, true);
            return true;
          }
          const rest = buf.subarray(step.size);
          cleanup();
          if (rest.length > 0) socket.unshift(rest);
          resolve({
            username: credentials?.username,
            password: credentials?.password,
            host: step.value.host,
            port: step.value.port,
            addressType: step.value.addressType,
          });
          return true;
        }
      }
    };

    function onReadable(): void {
      if (settled) return;
      // Read one chunk at a time and stop as soon as the request is complete,
      // so anything behind it stays in the socket's buffer for the caller.
      let chunk: Buffer | null;
      while (!settled && (chunk = socket.read() as Buffer | null) !== null) {
        buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
        if (advance()) return;
      }
    }
    function onEnd(): void {
      fail(new Socks5Error(`client closed the connection during the ${phase} phase`, SOCKS_REPLY.generalFailure, phase), undefined, false);
    }
    function onClose(): void {
      fail(new Socks5Error(`connection closed during the ${phase} phase`, SOCKS_REPLY.generalFailure, phase), undefined, false);
    }
    function onError(err: Error): void {
      fail(new Socks5Error(`socket error during the ${phase} phase: ${err.message}`, SOCKS_REPLY.generalFailure, phase, { cause: err }), undefined, false);
    }

    if (socket.destroyed) {
      settled = true;
      clearTimeout(timer);
      reject(new Socks5Error('socket is already closed', SOCKS_REPLY.generalFailure, phase));
      return;
    }
    socket.on('readable', onReadable);
    socket.on('end', onEnd);
    socket.on('close', onClose);
    socket.on('error', onError);
  });
}

/** Sends the reply to a CONNECT (code from SOCKS_REPLY; bound address defaults to 0.0.0.0:0). */
export function sendSocksReply(socket: Socket, code: number, bound?: { address: string; port: number }): void {
  const bytes = replyBytes(code, bound);
  // The client may already be gone; writing to an ended socket would raise an error event.
  if (!socket.writable) return;
  socket.write(bytes);
}
