/**
 * Before the demo starts anything: is every address:port it needs free? A
 * port in use is reported with the process holding it (from /proc), so a
 * demo left running in another terminal is recognisable at a glance.
 */
import { createServer } from 'node:net';
import { readdir, readFile, readlink } from 'node:fs/promises';
import { parseProcNetTcp, type ProcNetTcpEntry } from '../../agent/proxy/socket-owner.ts';

export interface Endpoint {
  readonly host: string;
  readonly port: number;
  /** What the demo runs there, e.g. "node-a HBONE". */
  readonly what: string;
}

export interface Busy extends Endpoint {
  /** EADDRINUSE, EADDRNOTAVAIL, EACCES, ... */
  readonly code: string;
  /** Who holds it, when it can be found. */
  readonly holder?: Holder;
}

export interface Holder {
  readonly pid?: number;
  readonly uid: number;
  readonly command?: string;
  /** The holder's parent's command line, when readable. */
  readonly parentCommand?: string;
}

const TCP_LISTEN = 10;

function tryBind(host: string, port: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    s.listen({ host, port, exclusive: true }, () => s.close(() => resolve(undefined)));
  });
}

async function readOptional(path: string): Promise<string> {
  try {
    return await readFile(path, 'latin1');
  } catch {
    return '';
  }
}

/** Listening sockets bound to host:port or to the wildcard address on that port. */
async function listeners(host: string, port: number): Promise<ProcNetTcpEntry[]> {
  const [v4, v6] = await Promise.all([readOptional('/proc/net/tcp'), readOptional('/proc/net/tcp6')]);
  const matches = new Set([host, '0.0.0.0', '::', `::ffff:${host}`]);
  return [...parseProcNetTcp(v4, false), ...parseProcNetTcp(v6, true)]
    .filter((e) => e.state === TCP_LISTEN && e.local.port === port && matches.has(e.local.address));
}

/** The process holding socket `inode` open, among those this user may inspect. */
async function pidOfInode(inode: number): Promise<number | undefined> {
  const want = `socket:[${inode}]`;
  let pids: string[];
  try {
    pids = (await readdir('/proc')).filter((p) => /^\d+$/.test(p));
  } catch {
    return undefined;
  }
  for (const pid of pids) {
    let fds: string[];
    try {
      fds = await readdir(`/proc/${pid}/fd`);
    } catch {
      continue; // another user's process, or gone
    }
    for (const fd of fds) {
      try {
        if ((await readlink(`/proc/${pid}/fd/${fd}`)) === want) return Number(pid);
      } catch {
        // closed meanwhile
      }
    }
  }
  return undefined;
}

async function commandOf(pid: number): Promise<string | undefined> {
  const raw = await readOptional(`/proc/${pid}/cmdline`);
  const cmd = raw.split('\0').filter(Boolean).join(' ');
  return cmd || undefined;
}

async function holderOf(host: string, port: number): Promise<Holder | undefined> {
  const entry = (await listeners(host, port))[0];
  if (!entry) return undefined;
  const pid = entry.inode > 0 ? await pidOfInode(entry.inode) : undefined;
  const command = pid === undefined ? undefined : await commandOf(pid);
  // /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces, so read after the last ")".
  const stat = pid === undefined ? '' : await readOptional(`/proc/${pid}/stat`);
  const ppid = Number(stat.slice(stat.lastIndexOf(')') + 1).trim().split(/\s+/)[1]);
  const parentCommand = ppid > 0 ? await commandOf(ppid) : undefined;
  return {
    uid: entry.uid,
    ...(pid === undefined ? {} : { pid }),
    ...(command === undefined ? {} : { command }),
    ...(parentCommand === undefined ? {} : { parentCommand }),
  };
}

/** Every endpoint that cannot be bound now, with the holder where /proc tells. */
export async function busyEndpoints(endpoints: readonly Endpoint[]): Promise<Busy[]> {
  const out: Busy[] = [];
  for (const e of endpoints) {
    const code = await tryBind(e.host, e.port);
    if (code === undefined) continue;
    const holder = code === 'EADDRINUSE' ? await holderOf(e.host, e.port) : undefined;
    out.push({ ...e, code, ...(holder ? { holder } : {}) });
  }
  return out;
}

function holderText(h: Holder): string {
  if (h.pid === undefined) return `a process of uid ${h.uid} (not visible to this user)`;
  const cmd = (h.command ?? '?').replace(/^\S*\/node /, 'node ');
  return `pid ${h.pid}: ${cmd.length > 140 ? `${cmd.slice(0, 137)}...` : cmd}`;
}

/** One line per busy endpoint, for a person. */
export function describeBusy(b: Busy): string {
  const at = `${b.host}:${b.port} (${b.what})`;
  if (b.code === 'EADDRNOTAVAIL') return `${at}: ${b.host} is not an address of this machine`;
  if (b.code !== 'EADDRINUSE') return `${at}: cannot listen there (${b.code})`;
  return b.holder ? `${at} is in use by ${holderText(b.holder)}` : `${at} is in use (the holder is not visible from here)`;
}

/** The busy endpoints grouped by the process holding them: one line per holder. */
export function describeBusyByHolder(busy: readonly Busy[]): string[] {
  const groups = new Map<string, Busy[]>();
  for (const b of busy) {
    const key = b.code === 'EADDRINUSE' && b.holder ? holderText(b.holder) : `${b.host}:${b.port}`;
    groups.set(key, [...(groups.get(key) ?? []), b]);
  }
  return [...groups].map(([key, bs]) => {
    const first = bs[0]!;
    if (bs.length === 1 || first.code !== 'EADDRINUSE' || !first.holder) return bs.map(describeBusy).join('\n');
    return `${bs.map((b) => `${b.host}:${b.port} (${b.what})`).join(', ')} are in use by ${key}`;
  });
}

const DEMO = /scripts\/demo\.ts/;
const DAEMON = /(agent|controller)\/main\.ts/;

/** Is the holder a running demo (scripts/demo.ts), or a controller/agent whose demo still runs? */
export function isRunningDemo(h: Holder | undefined): boolean {
  return DEMO.test(h?.command ?? '') || (DAEMON.test(h?.command ?? '') && DEMO.test(h?.parentCommand ?? ''));
}

/**
 * Is the holder a controller/agent of a demo with data in `dataDir` whose demo
 * is gone (killed with SIGKILL, so it could not stop its children)?
 */
export function isOrphanedDaemon(h: Holder | undefined, dataDir: string): boolean {
  const cmd = h?.command ?? '';
  return DAEMON.test(cmd) && cmd.includes(` ${dataDir}/`) && !DEMO.test(h?.parentCommand ?? '');
}
