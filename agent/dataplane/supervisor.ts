import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { accessSync, constants, lstatSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { connect, type Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { AmbitError } from '../../shared/errors.ts';
import type { Logger } from '../../shared/logger.ts';
import { AgentMessage, DataplaneMessage, FrameLimit, type Hello } from '../../shared/proto/gen/dataplane.ts';

/** A message to the data plane (shared/proto/dataplane.proto AgentMessage), by kind. */
export type ToDataplane = NonNullable<AgentMessage['msg']>;
/** A message from the data plane (DataplaneMessage), by kind. */
export type FromDataplane = NonNullable<DataplaneMessage['msg']>;
export type { Hello };

/** The largest frame either side reads or writes (FrameLimit in the .proto says why). */
export const MAX_FRAME_BYTES: number = FrameLimit.MAX_FRAME_BYTES;

/** How long a started ambit-dataplane has to say it is ready, and an attach to say hello. */
const START_TIMEOUT_MS = 10_000;
/** How long `exit` waits for the data plane to go before it is killed. */
const EXIT_WAIT_MS = 2_000;

export interface SupervisorOptions {
  readonly binary: string;
  /** Where the data plane serves inbound HBONE (host:port). */
  readonly listen: string;
  /** The control socket (in the agent's data directory, so only its user reaches it). */
  readonly controlPath: string;
  /** Other sockets a data plane may already serve at (tried before controlPath). */
  readonly alsoAttachAt?: readonly string[];
  /** The control protocol this agent speaks (hello must state the same). */
  readonly protocol: number;
  readonly logger: Logger;
  /** Every message, decoded, `hello` first on each attach. */
  readonly onMessage: (m: FromDataplane) => void;
  /** The link ended (the data plane exited or closed it): why. */
  readonly onLost: (why: string) => void;
}

/** One message framed as the data plane reads it: its length as a varint, then its bytes. */
export function frame(m: ToDataplane): Buffer {
  const body = AgentMessage.encode({ msg: m }).finish();
  const head: number[] = [];
  let n = body.length;
  while (n > 0x7f) {
    head.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  head.push(n);
  return Buffer.concat([Buffer.from(head), body]);
}

/** What cannot be read from the data plane; `fatal`: nothing after it can be (the connection is closed). */
export interface FrameProblem {
  readonly message: string;
  readonly fatal: boolean;
}

/**
 * Cuts the data plane's bytes into frames (a varint length, then that many
 * bytes) and decodes each: the one place its bytes are read. A frame that
 * does not decode is a problem and is skipped (the framing is intact); a
 * length over MAX_FRAME_BYTES is fatal (its length cannot be trusted, so
 * nothing after it can be read). end() names a frame cut short.
 */
export class FrameReader {
  #buf: Buffer = Buffer.alloc(0);
  #dead = false;

  /** Feeds bytes; calls `message` for each whole frame that decodes and `problem` for what cannot be read. */
  push(chunk: Buffer, message: (m: FromDataplane) => void, problem: (p: FrameProblem) => void): void {
    if (this.#dead) return;
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    for (;;) {
      let len = 0;
      let i = 0;
      let done = false;
      for (; i < this.#buf.length && i < 5; i++) {
        const b = this.#buf[i]!;
        len += (b & 0x7f) * 2 ** (7 * i);
        if ((b & 0x80) === 0) {
          done = true;
          i++;
          break;
        }
      }
      if (!done) {
        if (this.#buf.length >= 5) {
          // Five varint bytes already say more than 2^28: far over the limit.
          this.#dead = true;
          problem({ message: `ambit-dataplane sent a frame length over the limit of ${MAX_FRAME_BYTES} bytes`, fatal: true });
        }
        return;
      }
      if (len > MAX_FRAME_BYTES) {
        this.#dead = true;
        problem({ message: `ambit-dataplane sent a frame of ${len} bytes, over the limit of ${MAX_FRAME_BYTES} bytes`, fatal: true });
        return;
      }
      if (this.#buf.length < i + len) return;
      const body = this.#buf.subarray(i, i + len);
      this.#buf = this.#buf.subarray(i + len);
      let decoded: DataplaneMessage;
      try {
        decoded = DataplaneMessage.decode(body);
      } catch (err) {
        problem({ message: `ambit-dataplane sent a frame of ${len} bytes that is not a DataplaneMessage (${(err as Error).message}); skipped`, fatal: false });
        continue;
      }
      if (decoded.msg === undefined) {
        problem({ message: `ambit-dataplane sent a message of ${len} bytes of no kind this agent knows; skipped`, fatal: false });
        continue;
      }
      message(decoded.msg);
    }
  }

  /** The connection ended: what was cut short, if anything. */
  end(): string | undefined {
    if (this.#dead || this.#buf.length === 0) return undefined;
    return `ambit-dataplane's connection ended inside a frame (${this.#buf.length} bytes of it arrived)`;
  }
}

/**
 * ambit-dataplane as a process of its own lifetime (DESIGN §3: it outlives
 * an agent restart): attach() connects to the one already serving at the
 * control socket, if any, or starts one (detached, so that it survives this
 * process) and connects to it. Messages are length-delimited protobuf both
 * ways (shared/proto/dataplane.proto), decoded here and nowhere else: the
 * handlers get typed messages. Everything sent in one turn of the event loop
 * goes in one write.
 */
export class DataplaneSupervisor {
  readonly #o: SupervisorOptions;
  #socket: Socket | undefined;
  #out: Buffer[] = [];
  /** The serving data plane speaks the JSON lines of protocol 4 or older: told to exit in its own words. */
  #legacy = false;
  #pid: number | undefined;
  #closing = false;
  /** Data planes this agent started, by pid: resolved when each has exited (and been reaped). */
  readonly #spawned = new Map<number, Promise<void>>();

  constructor(o: SupervisorOptions) {
    this.#o = o;
  }

  /** The data plane's pid once attached. */
  get pid(): number | undefined {
    return this.#pid;
  }

  get attached(): boolean {
    return this.#socket !== undefined;
  }

  /**
   * Attaches to the data plane serving at the control socket, or starts one
   * and attaches; resolves with its hello. A data plane of another protocol
   * (an upgrade) is told to exit and replaced; one that cannot start is an
   * error naming why.
   */
  async attach(): Promise<Hello> {
    this.#closing = false;
    let existing: Socket | undefined;
    for (const path of [...(this.#o.alsoAttachAt ?? []), this.#o.controlPath]) {
      existing ??= await this.#connect(path).catch(() => undefined);
    }
    if (existing) {
      const hello = await this.#greet(existing);
      if (hello.protocol === this.#o.protocol) return hello;
      this.#o.logger.warn({ pid: hello.pid, protocol: hello.protocol, expected: this.#o.protocol }, 'the ambit-dataplane serving speaks another control protocol; replacing it');
      await this.exit();
      this.#closing = false;
    }
    await this.#start();
    return this.#greet(await this.#connect(this.#o.controlPath));
  }

  send(m: ToDataplane): void {
    if (!this.#socket) return;
    this.#out.push(frame(m));
    // Everything decided in one turn of the event loop goes in one write: one
    // syscall per message was the largest single cost of a new connection.
    if (this.#out.length === 1) setImmediate(() => this.#flush());
  }

  /** Tells the data plane to exit (the agent stops for good) and waits for it; SIGKILL if it lingers. */
  async exit(): Promise<void> {
    this.#closing = true;
    const socket = this.#socket;
    const pid = this.#pid;
    if (!socket) return;
    if (this.#legacy) socket.write('{"t":"exit"}\n');
    else {
      this.send({ $case: 'exit', exit: {} });
      this.#flush();
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        if (pid !== undefined) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // already gone
          }
        }
        resolve();
      }, EXIT_WAIT_MS);
      socket.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
    });
    // Its socket closes as it exits; the process itself is gone a moment
    // later. A stopped agent leaves no process behind, so it waits for that
    // too (a data plane this agent started is its child: its exit is reaped
    // by the 'exit' listener; one it attached to is polled).
    if (pid !== undefined) await gone(pid, this.#spawned.get(pid));
  }

  /** Lets go of the data plane without stopping it (it keeps carrying connections for the next agent). */
  detach(): void {
    this.#closing = true;
    this.#flush();
    this.#socket?.end();
  }

  #flush(): void {
    const frames = this.#out;
    this.#out = [];
    if (frames.length > 0 && this.#socket && !this.#socket.destroyed) this.#socket.write(frames.length === 1 ? frames[0]! : Buffer.concat(frames));
  }

  #connect(path: string): Promise<Socket> {
    return new Promise((resolve, reject) => {
      const socket = connect({ path });
      socket.once('connect', () => {
        socket.removeListener('error', reject);
        resolve(socket);
      });
      socket.once('error', reject);
    });
  }

  #deliver(m: FromDataplane): void {
    try {
      this.#o.onMessage(m);
    } catch (err) {
      this.#o.logger.error({ err: (err as Error).message, message: m.$case }, 'ambit-dataplane message handling failed');
    }
  }

  /** Reads the connection's messages; resolves with its first, which must be hello. */
  #greet(socket: Socket): Promise<Hello> {
    return new Promise((resolve, reject) => {
      let greeted = false;
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new AmbitError('AMBIT_ERR_INTERNAL', `ambit-dataplane at ${this.#o.controlPath} said nothing within ${START_TIMEOUT_MS} ms`));
      }, START_TIMEOUT_MS);
      socket.on('error', () => undefined); // 'close' follows
      const reader = new FrameReader();
      /** Its hello named another protocol: attach() replaces it, and nothing else it says is acted on. */
      let other = false;
      const onMessage = (m: FromDataplane): void => {
        if (!greeted) {
          clearTimeout(timer);
          greeted = true;
          if (m.$case !== 'hello') {
            socket.destroy();
            reject(new AmbitError('AMBIT_ERR_CONFIG_INVALID', `ambit-dataplane at ${this.#o.controlPath} did not say hello (it said ${m.$case}): it speaks another control protocol`));
            return;
          }
          const hello = m.hello;
          this.#legacy = false;
          this.#socket = socket;
          this.#pid = hello.pid;
          other = hello.protocol !== this.#o.protocol;
          resolve(hello);
          return void (other || this.#deliver(m));
        }
        if (!other && this.#socket === socket) this.#deliver(m);
      };
      socket.on('data', (chunk: Buffer) => {
        if (!greeted && chunk[0] === 0x7b) {
          // '{': the JSON lines of protocol 4 or older, whose hello names its pid and protocol.
          clearTimeout(timer);
          greeted = true;
          let old: { pid?: unknown; protocol?: unknown } = {};
          try {
            old = JSON.parse(chunk.toString('utf8').split('\n')[0]!) as typeof old;
          } catch {
            // its pid stays unknown
          }
          this.#legacy = true;
          this.#socket = socket;
          this.#pid = typeof old.pid === 'number' ? old.pid : undefined;
          resolve({ protocol: typeof old.protocol === 'number' ? old.protocol : 0, pid: this.#pid ?? 0, addr: '', listeners: [], live: [], ended: [], refusedAway: {} });
          return;
        }
        if (this.#legacy && this.#socket === socket) return;
        reader.push(chunk, onMessage, (p) => {
          this.#o.logger.error({ socket: this.#o.controlPath, fatal: p.fatal }, p.message);
          if (p.fatal) socket.destroy();
        });
      });
      socket.once('close', () => {
        clearTimeout(timer);
        const cut = reader.end();
        if (cut) this.#o.logger.error({ socket: this.#o.controlPath }, cut);
        if (!greeted) reject(new AmbitError('AMBIT_ERR_INTERNAL', `ambit-dataplane at ${this.#o.controlPath} closed the connection before it said hello`));
        if (this.#socket !== socket) return;
        this.#socket = undefined;
        this.#out = [];
        if (!this.#closing) this.#o.onLost('ambit-dataplane closed its control connection (it exited)');
      });
    });
  }

  /**
   * Starts ambit-dataplane in a session of its own (so that it outlives this
   * process and its terminal's signals); resolves once it says it is ready.
   * Its stderr is the agent's (the journal under systemd, the container's
   * log on Kubernetes), which it keeps when the agent is gone: no log file
   * of its own holds the data directory open for writing.
   */
  async #start(): Promise<void> {
    const child = spawn(this.#o.binary, ['--listen', this.#o.listen, '--control', this.#o.controlPath], { detached: true, stdio: ['ignore', 'pipe', 'inherit'] });
    child.unref();
    if (child.pid !== undefined) {
      const exited = new Promise<void>((r) => child.once('exit', () => r()));
      this.#spawned.set(child.pid, exited);
    }
    const stdout = child.stdout;
    if (!stdout) throw new AmbitError('AMBIT_ERR_INTERNAL', 'ambit-dataplane started without a stdout pipe');
    const first = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new AmbitError('AMBIT_ERR_INTERNAL', `ambit-dataplane (${this.#o.binary}) did not say it was ready within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
      const lines = createInterface({ input: stdout, crlfDelay: Infinity });
      lines.once('line', (line) => {
        clearTimeout(timer);
        resolve(line);
      });
      child.once('error', (err) => {
        clearTimeout(timer);
        reject(new AmbitError('AMBIT_ERR_INTERNAL', `cannot start ambit-dataplane (${this.#o.binary}): ${err.message}`, { cause: err }));
      });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new AmbitError('AMBIT_ERR_INTERNAL', `ambit-dataplane (${this.#o.binary}) exited before it was ready (code ${code}, signal ${signal}); its stderr is in the agent's log`));
      });
    });
    stdout.destroy();
    // The one line the data plane writes on stdout, a JSON object (dataplane/src/main.rs).
    let said: { t?: unknown; protocol?: unknown; message?: unknown };
    try {
      said = JSON.parse(first) as typeof said;
    } catch {
      said = { t: 'unreadable' };
    }
    if (said.t === 'error') throw new AmbitError('AMBIT_ERR_INTERNAL', `ambit-dataplane: ${String(said.message)}`);
    if (said.t !== 'ready' || said.protocol !== this.#o.protocol) {
      child.kill('SIGKILL');
      throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', staleProtocol(this.#o.binary, said.t === 'ready' ? String(said.protocol) : '', this.#o.protocol), { details: { field: 'dataplaneBinary', value: this.#o.binary } });
    }
  }
}

/** Resolves once process `pid` is gone (its exit reaped when it is our child), at most EXIT_WAIT_MS; then SIGKILL. */
async function gone(pid: number, exited: Promise<void> | undefined): Promise<void> {
  const deadline = Date.now() + EXIT_WAIT_MS;
  const alive = (): boolean => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  if (exited) {
    await Promise.race([exited, new Promise((r) => setTimeout(r, EXIT_WAIT_MS))]);
  } else {
    while (alive() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  }
  if (alive() && !exited) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
  }
}

/**
 * Where the data plane's control socket lives: the agent's data
 * directory, or, when that is read-only (an agent restarted on a read-only
 * mount serves from its cache: docs/reliability.md), a directory of this
 * user's own under the temporary directory, named by the data directory so
 * that the next agent finds the same socket. That directory must be this
 * user's alone (0700, not a link): a socket there drives the data plane.
 */
export function controlPaths(dataDir: string): { socket: string; alsoAttachAt: string[] } {
  let dir = dataDir;
  try {
    accessSync(dataDir, constants.W_OK);
  } catch {
    dir = join(tmpdir(), `ambit-dataplane-${createHash('sha256').update(resolve(dataDir)).digest('hex').slice(0, 16)}`);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const st = lstatSync(dir);
    if (!st.isDirectory() || st.uid !== process.getuid?.() || (st.mode & 0o077) !== 0) {
      throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', `the data directory ${dataDir} is read-only and ${dir}, where the data plane's control socket would go instead, is not this user's alone`, { details: { path: dir } });
    }
  }
  // A data plane started while the directory was writable still serves there.
  return { socket: join(dir, 'dataplane.sock'), alsoAttachAt: dir === dataDir ? [] : [join(dataDir, 'dataplane.sock')] };
}

/** What the agent says of an executable that speaks another control protocol (`said`: its own, if any). */
export function staleProtocol(binary: string, said: string, protocol: number): string {
  return `ambit-dataplane at ${binary} speaks control protocol ${said || 'none'}, this agent ${protocol}: it was built from other sources; rebuild it (npm run build:dataplane) and install it again`;
}
