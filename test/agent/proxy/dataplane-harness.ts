/**
 * Drives ambit-dataplane over its control socket, as the agent does, for the
 * tests that run the executable directly (native-dataplane.test.ts,
 * native-outbound.test.ts, and the capture fixture): a real process; certificates from a throwaway CA.
 */
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import { connect as netConnect, createServer as createNetServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex, Readable } from 'node:stream';
import { issueCertificate, KeyUsage, EKU, NAME_OID, toPem } from '../../../shared/x509.ts';
import { defaultDataplaneBinary } from '../../../agent/dataplane/inbound.ts';
import { frame, FrameReader, type FromDataplane, type ToDataplane } from '../../../agent/dataplane/supervisor.ts';
import { AgentMessage, ListenerKind, RouteVerdict, type Endpoint } from '../../../shared/proto/gen/dataplane.ts';

export const BINARY = defaultDataplaneBinary();
/** This machine's loopback block for these tests. */
export const HOST = '127.0.19.1';
export const WEB_ID = 'spiffe://cluster.local/ns/default/sa/web';

/**
 * A message as the tests read and write it: its kind as `t` beside its
 * fields (the generated types' names), endpoints as [address, port],
 * certificate chains as base64 DER, listener kinds and route verdicts by
 * name, CONNECT headers as [name, value]; say() and the reader convert.
 */
export type Msg = Record<string, unknown> & { t: string };

const KINDS: Record<string, ListenerKind> = { upstream: ListenerKind.LISTENER_KIND_UPSTREAM, socks5: ListenerKind.LISTENER_KIND_SOCKS5, capture: ListenerKind.LISTENER_KIND_CAPTURE, plaintext: ListenerKind.LISTENER_KIND_PLAINTEXT };
const VERDICTS: Record<string, RouteVerdict> = { refuse: RouteVerdict.ROUTE_VERDICT_REFUSE, tunnel: RouteVerdict.ROUTE_VERDICT_TUNNEL, direct: RouteVerdict.ROUTE_VERDICT_DIRECT };
const kindName = (k: unknown): string => Object.keys(KINDS).find((n) => KINDS[n] === k) ?? String(k);

/** A test's message as the agent sends it. */
export function toAgentMessage(m: Msg): ToDataplane {
  const { t, ...body } = m;
  if (t === 'listen' && typeof body.kind === 'string') body.kind = KINDS[body.kind];
  if (t === 'route') {
    if (typeof body.verdict === 'string') body.verdict = VERDICTS[body.verdict];
    body.attempts = ((body.attempts ?? []) as Record<string, unknown>[]).map((a) => ({ ...a, headers: ((a.headers ?? []) as [string, string][]).map(([name, value]) => ({ name, value })) }));
  }
  const msg = AgentMessage.fromPartial({ msg: { $case: t, [t]: body } as never }).msg;
  if (!msg) throw new Error(`no message of kind ${t}`);
  return msg;
}

/** A message from the data plane as the tests read it. */
export function flat(m: FromDataplane): Msg {
  const body = { ...(m as unknown as Record<string, Record<string, unknown>>)[m.$case] } as Record<string, unknown>;
  for (const k of ['remote', 'local', 'dst']) {
    const e = body[k] as Endpoint | undefined;
    if (e === undefined) delete body[k];
    else body[k] = [e.address, e.port];
  }
  if (Array.isArray(body.chain)) body.chain = (body.chain as Uint8Array[]).map((c) => Buffer.from(c).toString('base64'));
  if (Array.isArray(body.listeners)) body.listeners = (body.listeners as Record<string, unknown>[]).map((l) => ({ ...l, kind: kindName(l.kind) }));
  if (body.uid === undefined) delete body.uid;
  if (body.lid === undefined) delete body.lid;
  return { t: m.$case, ...body };
}

export interface Leaf {
  readonly chain: string;
  readonly key: string;
}

/** A root and a leaf per URI (the first also as chain/key), valid for an hour. */
export function pki(uris: readonly string[] = [WEB_ID]): { bundle: string; chain: string; key: string; leaves: Map<string, Leaf> } {
  const rk = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const rootDer = issueCertificate({ subjectPublicKey: rk.publicKey.export({ type: 'spki', format: 'der' }), subject: [{ oid: NAME_OID.commonName, value: 'test root' }], notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 86_400_000), isCa: true, keyUsage: KeyUsage.keyCertSign, selfSignKey: rk.privateKey });
  const rootCert = new X509Certificate(toPem('CERTIFICATE', rootDer));
  const leaves = new Map<string, Leaf>();
  for (const uri of uris) {
    const lk = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const leafDer = issueCertificate({
      subjectPublicKey: lk.publicKey.export({ type: 'spki', format: 'der' }), uris: [uri],
      notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 3_600_000), isCa: false,
      keyUsage: KeyUsage.digitalSignature, extKeyUsage: [EKU.serverAuth, EKU.clientAuth],
      issuer: { certDer: rootCert.raw, key: rk.privateKey },
    });
    leaves.set(uri, { chain: toPem('CERTIFICATE', leafDer), key: lk.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() });
  }
  const first = leaves.get(uris[0]!)!;
  return { bundle: toPem('CERTIFICATE', rootDer), chain: first.chain, key: first.key, leaves };
}

/**
 * The running data plane and its messages, awaited by predicate: the line it
 * says on stdout (`ready` or `error`) and everything it says on its control
 * socket, to which this connects as the agent does once it is ready.
 */
export class Dataplane {
  readonly child: ChildProcessByStdio<null, Readable, Readable>;
  readonly messages: Msg[] = [];
  /** Each message's place in the order they arrived (1, 2, …). */
  readonly order = new WeakMap<Msg, number>();
  /** The control socket's path (given with --control, or made here). */
  readonly controlPath: string;
  #count = 0;
  #waiters: { pred: (m: Msg) => boolean; resolve: (m: Msg) => void }[] = [];
  #agent: Socket | undefined;
  #queued: Buffer[] = [];
  /** What the data plane wrote on stderr (its log). */
  stderr = '';
  readonly exited: Promise<number | null>;

  /** `wrap`: a command that execs the data plane (e.g. `prlimit --nofile=256:256 --`), keeping its pid. */
  constructor(args: string[], wrap: readonly string[] = []) {
    const given = args.indexOf('--control');
    this.controlPath = given >= 0 ? args[given + 1]! : join(mkdtempSync(join(tmpdir(), 'ambit-dp-')), 'dataplane.sock');
    const full = args.includes('--listen') && given < 0 ? [...args, '--control', this.controlPath] : args;
    this.child = wrap.length > 0 ? spawn(wrap[0]!, [...wrap.slice(1), BINARY, ...full], { stdio: ['ignore', 'pipe', 'pipe'] }) : spawn(BINARY, full, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.exited = new Promise((r) => this.child.once('exit', (code) => r(code)));
    this.child.stderr.setEncoding('utf8');
    this.child.stderr.on('data', (d: string) => (this.stderr += d));
    this.#lines(this.child.stdout, (m) => {
      if (m.t === 'ready') this.attach();
    });
  }

  /** Connects to the control socket as an agent (again, after detach()); resolves once connected. */
  attach(): Promise<Socket> {
    const agent = netConnect({ path: this.controlPath });
    agent.on('error', () => undefined);
    const reader = new FrameReader();
    agent.on('data', (d: Buffer) => reader.push(d, (m) => this.#arrived(flat(m)), (p) => this.#arrived({ t: 'unreadable', message: p.message })));
    return new Promise((resolve) => agent.once('connect', () => {
      this.#agent = agent;
      for (const b of this.#queued.splice(0)) agent.write(b);
      resolve(agent);
    }));
  }

  /** The agent's current control connection, if attached. */
  get agent(): Socket | undefined {
    return this.#agent;
  }

  #arrived(m: Msg): void {
    this.order.set(m, ++this.#count);
    this.messages.push(m);
    this.#waiters = this.#waiters.filter((w) => (w.pred(m) ? (w.resolve(m), false) : true));
  }

  /** The agent goes away: its control connection closes; the data plane goes on. */
  detach(): void {
    this.#agent?.end();
    this.#agent = undefined;
  }

  #lines(from: Readable, also: (m: Msg) => void): void {
    let buf = '';
    from.setEncoding('utf8');
    from.on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const m = JSON.parse(buf.slice(0, nl)) as Msg;
        buf = buf.slice(nl + 1);
        this.#arrived(m);
        also(m);
      }
    });
  }

  /** Writes raw bytes on the control socket (for the tests of what cannot be read). */
  send(bytes: Buffer): void {
    if (this.#agent) this.#agent.write(bytes);
    else this.#queued.push(bytes);
  }

  /** Sends a message, framed as the agent frames it. */
  say(m: Msg): void {
    this.send(frame(toAgentMessage(m)));
  }

  /** The first message (seen or to come, within `ms`) that `pred` accepts, taken from the list. */
  next(pred: (m: Msg) => boolean, what: string, ms = 5_000): Promise<Msg> {
    const seen = this.messages.find(pred);
    if (seen) {
      this.messages.splice(this.messages.indexOf(seen), 1);
      return Promise.resolve(seen);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms; got ${JSON.stringify(this.messages)}`)), ms);
      this.#waiters.push({ pred, resolve: (m) => (clearTimeout(timer), this.messages.splice(this.messages.indexOf(m), 1), resolve(m)) });
    });
  }
}

/**
 * A plain TCP relay in front of `target` that records the size of every
 * chunk each side sends through it, for the tests that check how the data
 * plane writes TLS records onto the wire.
 */
export class RecordingRelay {
  readonly server: Server;
  /** Chunk sizes from the side that connected to the relay, and from the target. */
  readonly fromClient: number[] = [];
  readonly fromTarget: number[] = [];

  constructor(target: { host: string; port: number }) {
    this.server = createNetServer((down) => {
      const up = netConnect(target.port, target.host);
      down.on('data', (d: Buffer) => (this.fromClient.push(d.length), up.write(d)));
      up.on('data', (d: Buffer) => (this.fromTarget.push(d.length), down.write(d)));
      down.on('end', () => up.end());
      up.on('end', () => down.end());
      up.on('error', () => down.destroy());
      down.on('error', () => up.destroy());
    });
  }

  listen(): Promise<number> {
    return new Promise((r) => this.server.listen(0, HOST, () => r((this.server.address() as AddressInfo).port)));
  }
}

/** On the wire, one TLS 1.3 record carrying an HTTP/2 DATA frame of n bytes: record header, frame head, payload, content type, AEAD tag. */
export const dataRecordBytes = (n: number): number => 5 + 9 + n + 1 + 16;

/** `rounds` echo round trips of `size` bytes over `s`, one at a time; resolves when all came back. */
export async function echoRounds(s: Duplex, rounds: number, size: number): Promise<void> {
  const msg = Buffer.alloc(size, 0x61);
  for (let i = 0; i < rounds; i++) {
    await new Promise<void>((resolve, reject) => {
      let got = 0;
      const onData = (d: Buffer): void => {
        got += d.length;
        if (got >= size) {
          s.off('data', onData);
          s.off('close', onClose);
          resolve();
        }
      };
      const onClose = (): void => reject(new Error(`echo closed in round ${i} after ${got} bytes`));
      s.on('data', onData);
      s.once('close', onClose);
      s.write(msg);
    });
  }
}
