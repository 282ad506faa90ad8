/**
 * Drives ambit-dataplane over its control socket, as the agent does, for the
 * tests that run the executable directly (native-dataplane.test.ts,
 * native-outbound.test.ts): a real process; certificates from a throwaway CA.
 */
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import { connect as netConnect, createServer as createNetServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex, Readable } from 'node:stream';
import { issueCertificate, KeyUsage, EKU, NAME_OID, toPem } from '../../../shared/x509.ts';
import { defaultDataplaneBinary } from '../../../agent/proxy/native-inbound.ts';

export const BINARY = defaultDataplaneBinary();
/** This machine's loopback block for these tests. */
export const HOST = '127.0.19.1';
export const WEB_ID = 'spiffe://cluster.local/ns/default/sa/web';

export type Msg = Record<string, unknown> & { t: string };

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
  #queued: string[] = [];
  readonly exited: Promise<number | null>;

  constructor(args: string[]) {
    const given = args.indexOf('--control');
    this.controlPath = given >= 0 ? args[given + 1]! : join(mkdtempSync(join(tmpdir(), 'ambit-dp-')), 'dataplane.sock');
    const full = args.includes('--listen') && given < 0 ? [...args, '--control', this.controlPath] : args;
    this.child = spawn(BINARY, full, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.exited = new Promise((r) => this.child.once('exit', (code) => r(code)));
    this.#lines(this.child.stdout, (m) => {
      if (m.t === 'ready') this.attach();
    });
  }

  /** Connects to the control socket as an agent (again, after detach()). */
  attach(): void {
    const agent = netConnect({ path: this.controlPath });
    agent.on('error', () => undefined);
    agent.once('connect', () => {
      this.#agent = agent;
      for (const line of this.#queued.splice(0)) agent.write(`${line}\n`);
    });
    this.#lines(agent, () => undefined);
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
        this.order.set(m, ++this.#count);
        this.messages.push(m);
        this.#waiters = this.#waiters.filter((w) => (w.pred(m) ? (w.resolve(m), false) : true));
        also(m);
      }
    });
  }

  send(line: string): void {
    if (this.#agent) this.#agent.write(`${line}\n`);
    else this.#queued.push(line);
  }

  /** Sends a message object. */
  say(m: Msg): void {
    this.send(JSON.stringify(m));
  }

  next(pred: (m: Msg) => boolean, what: string): Promise<Msg> {
    const seen = this.messages.find(pred);
    if (seen) {
      this.messages.splice(this.messages.indexOf(seen), 1);
      return Promise.resolve(seen);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${what} within 5 s; got ${JSON.stringify(this.messages)}`)), 5_000);
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
