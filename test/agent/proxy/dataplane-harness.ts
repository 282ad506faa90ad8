/**
 * Drives ambit-dataplane over its control pipe, as the agent does, for the
 * tests that run the executable directly (native-dataplane.test.ts,
 * native-outbound.test.ts): a real process; certificates from a throwaway CA.
 */
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import { connect as netConnect, createServer as createNetServer, type AddressInfo, type Server } from 'node:net';
import type { Duplex, Readable, Writable } from 'node:stream';
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

/** The running data plane and its messages, awaited by predicate. */
export class Dataplane {
  readonly child: ChildProcessByStdio<Writable, Readable, Readable>;
  readonly messages: Msg[] = [];
  /** Each message's place in the order they arrived (1, 2, …). */
  readonly order = new WeakMap<Msg, number>();
  #count = 0;
  #waiters: { pred: (m: Msg) => boolean; resolve: (m: Msg) => void }[] = [];
  #buf = '';
  readonly exited: Promise<number | null>;

  constructor(args: string[]) {
    this.child = spawn(BINARY, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.exited = new Promise((r) => this.child.once('exit', (code) => r(code)));
    this.child.stdout.setEncoding('utf8');
    this.child.stdout.on('data', (d: string) => {
      this.#buf += d;
      let nl: number;
      while ((nl = this.#buf.indexOf('\n')) >= 0) {
        const m = JSON.parse(this.#buf.slice(0, nl)) as Msg;
        this.#buf = this.#buf.slice(nl + 1);
        this.order.set(m, ++this.#count);
        this.messages.push(m);
        this.#waiters = this.#waiters.filter((w) => (w.pred(m) ? (w.resolve(m), false) : true));
      }
    });
  }

  send(line: string): void {
    this.child.stdin.write(`${line}\n`);
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
