import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { AmbitError } from '../../shared/errors.ts';
import type { Logger } from '../../shared/logger.ts';
import type { Message } from '../proxy/dataplane-messages.ts';

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
  /** Where the data plane's own stderr goes (it outlives the agent's). */
  readonly logPath: string;
  /** The control protocol this agent speaks (hello must state the same). */
  readonly protocol: number;
  readonly logger: Logger;
  /** Every message, `hello` first on each attach. */
  readonly onMessage: (m: Message) => void;
  /** The link ended (the data plane exited or closed it): why. */
  readonly onLost: (why: string) => void;
}

/** What the data plane says first on every attach (dataplane/src/core.rs `attach`). */
export interface Hello extends Message {
  readonly t: 'hello';
  readonly protocol: number;
  readonly pid: number;
  readonly addr: string;
}

/**
 * ambit-dataplane as a process of its own lifetime (DESIGN §3: it outlives
 * an agent restart): attach() connects to the one already serving at the
 * control socket, if any, or starts one (detached, so that it survives this
 * process) and connects to it. Messages are newline-delimited JSON both ways
 * (dataplane/src/control.rs); everything sent in one turn of the event loop
 * goes in one write.
 */
export class DataplaneSupervisor {
  readonly #o: SupervisorOptions;
  #socket: Socket | undefined;
  #out: string[] = [];
  #pid: number | undefined;
  #closing = false;

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
    const existing = await this.#connect().catch(() => undefined);
    if (existing) {
      const hello = await this.#greet(existing);
      if (hello.protocol === this.#o.protocol) return hello;
      this.#o.logger.warn({ pid: hello.pid, protocol: hello.protocol, expected: this.#o.protocol }, 'the ambit-dataplane serving speaks another control protocol; replacing it');
      await this.exit();
      this.#closing = false;
    }
    await this.#start();
    return this.#greet(await this.#connect());
  }

  send(m: Message): void {
    if (!this.#socket) return;
    this.#out.push(JSON.stringify(m));
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
    this.send({ t: 'exit' });
    this.#flush();
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
  }

  /** Lets go of the data plane without stopping it (it keeps carrying connections for the next agent). */
  detach(): void {
    this.#closing = true;
    this.#flush();
    this.#socket?.end();
  }

  #flush(): void {
    const lines = this.#out;
    this.#out = [];
    if (lines.length > 0 && this.#socket && !this.#socket.destroyed) this.#socket.write(`${lines.join('\n')}\n`);
  }

  #connect(): Promise<Socket> {
    return new Promise((resolve, reject) => {
      const socket = connect({ path: this.#o.controlPath });
      socket.once('connect', () => {
        socket.removeListener('error', reject);
        resolve(socket);
      });
      socket.once('error', reject);
    });
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
      const lines = createInterface({ input: socket, crlfDelay: Infinity });
      lines.on('line', (line) => {
        if (!line) return;
        let m: Message;
        try {
          m = JSON.parse(line) as Message;
        } catch {
          this.#o.logger.error({ line: line.slice(0, 200) }, 'ambit-dataplane said something unreadable');
          return;
        }
        if (!greeted) {
          clearTimeout(timer);
          greeted = true;
          if (m.t !== 'hello') {
            socket.destroy();
            reject(new AmbitError('AMBIT_ERR_CONFIG_INVALID', `ambit-dataplane at ${this.#o.controlPath} did not say hello (it said ${JSON.stringify(m.t)}): it speaks another control protocol`));
            return;
          }
          const hello = m as Hello;
          if (hello.protocol === this.#o.protocol) {
            this.#socket = socket;
            this.#pid = hello.pid;
          }
          resolve(hello);
          if (hello.protocol !== this.#o.protocol) return;
        }
        if (this.#socket !== socket) return;
        try {
          this.#o.onMessage(m);
        } catch (err) {
          this.#o.logger.error({ err: (err as Error).message, message: m.t }, 'ambit-dataplane message handling failed');
        }
      });
      socket.once('close', () => {
        clearTimeout(timer);
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
   * process and its terminal's signals), its stderr appended to logPath;
   * resolves once it says it is ready.
   */
  async #start(): Promise<void> {
    const log = openSync(this.#o.logPath, 'a', 0o600);
    let child;
    try {
      child = spawn(this.#o.binary, ['--listen', this.#o.listen, '--control', this.#o.controlPath], { detached: true, stdio: ['ignore', 'pipe', log] as const });
    } finally {
      closeSync(log);
    }
    child.unref();
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
        reject(new AmbitError('AMBIT_ERR_INTERNAL', `ambit-dataplane (${this.#o.binary}) exited before it was ready (code ${code}, signal ${signal}); its log: ${this.#o.logPath}`));
      });
    });
    stdout.destroy();
    let said: Message;
    try {
      said = JSON.parse(first) as Message;
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

/** What the agent says of an executable that speaks another control protocol (`said`: its own, if any). */
export function staleProtocol(binary: string, said: string, protocol: number): string {
  return `ambit-dataplane at ${binary} speaks control protocol ${said || 'none'}, this agent ${protocol}: it was built from other sources; rebuild it (npm run build:dataplane) and install it again`;
}
