import t from 'tap';
import type { Test } from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import { endianness } from 'node:os';
import { join } from 'node:path';
import { parseProcNetTcp, socketOwnerUid } from '../../../agent/proxy/socket-owner.ts';
import type { Endpoint } from '../../../agent/proxy/socket-owner.ts';

// ------------------------------------------------------------------ fixtures (little-endian spelling)

const TCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1574 1 0000000028c8dc05 100 0 0 10 0
   1: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 40001 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 40002 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:C351 0100007F:1F90 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
   4: 020200C0:A45C 507100CB:01BB 01 00000000:00000000 02:0000002A 00000000    33        0 39035 2 00000000686c5dff 20 4 30 56 -1
garbage line
`;

const TCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5000 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:D431 00000000000000000000000001000000:1F90 01 00000000:00000000 00:00000000 00000000  2001        0 5001 1 0000000000000000 20 4 30 10 -1
   2: 0000000000000000FFFF00000100007F:C352 0000000000000000FFFF00000100007F:1F90 01 00000000:00000000 00:00000000 00000000  3002        0 5002 1 0000000000000000 20 4 30 10 -1
   3: B80D0120000000000000000001000000:0050 B80D0120000000000000000002000000:D432 01 00000000:00000000 00:00000000 00000000    77        0 5003 1 0000000000000000 20 4 30 10 -1
`;

const LE = endianness() === 'LE';

t.test('parseProcNetTcp: IPv4 table', { skip: !LE && 'fixtures are little-endian' }, async (t) => {
  const rows = parseProcNetTcp(TCP, false);
  t.equal(rows.length, 5, 'header and garbage skipped');
  t.same(rows[0], { local: { address: '0.0.0.0', port: 2024 }, remote: { address: '0.0.0.0', port: 0 }, state: 10, uid: 0, inode: 1574 });
  t.same(rows[1], { local: { address: '127.0.0.1', port: 50000 }, remote: { address: '127.0.0.1', port: 8080 }, state: 1, uid: 1000, inode: 40001 });
  t.same(rows[4], { local: { address: '192.0.2.2', port: 42076 }, remote: { address: '203.0.113.80', port: 443 }, state: 1, uid: 33, inode: 39035 });
  t.same(rows[3]?.state, 6);
});

t.test('parseProcNetTcp: IPv6 table, including IPv4-mapped addresses', { skip: !LE && 'fixtures are little-endian' }, async (t) => {
  const rows = parseProcNetTcp(TCP6, true);
  t.equal(rows.length, 4);
  t.same(rows[0]?.local, { address: '::', port: 8080 });
  t.same(rows[1], { local: { address: '::1', port: 54321 }, remote: { address: '::1', port: 8080 }, state: 1, uid: 2001, inode: 5001 });
  t.same(rows[2]?.local, { address: '::ffff:127.0.0.1', port: 50002 });
  t.same(rows[3], { local: { address: '2001:db8::1', port: 80 }, remote: { address: '2001:db8::2', port: 54322 }, state: 1, uid: 77, inode: 5003 });
  t.same(parseProcNetTcp('', true), []);
  t.same(parseProcNetTcp(TCP, true), [], 'a v4 table read as v6 yields nothing rather than wrong addresses');
});

t.test('socketOwnerUid on a fixture /proc', { skip: !LE && 'fixtures are little-endian' }, async (t) => {
  const root = t.testdir({ net: { tcp: TCP, tcp6: TCP6 } });
  const ep = (address: string, port: number): Endpoint => ({ address, port });
  t.equal(await socketOwnerUid(ep('127.0.0.1', 50000), ep('127.0.0.1', 8080), root), 1000, 'the client end, not our own end');
  t.equal(await socketOwnerUid(ep('::ffff:127.0.0.1', 50000), ep('::ffff:127.0.0.1', 8080), root), 1000, 'mapped spelling of a v4 peer');
  t.equal(await socketOwnerUid(ep('127.0.0.1', 50002), ep('127.0.0.1', 8080), root), 3002, 'v4 peer found as mapped in tcp6');
  t.equal(await socketOwnerUid(ep('::1', 54321), ep('::1', 8080), root), 2001);
  t.equal(await socketOwnerUid(ep('2001:DB8:0::1', 80), ep('2001:db8::2', 54322), root), 77, 'any IPv6 spelling');
  t.equal(await socketOwnerUid(ep('127.0.0.1', 50001), ep('127.0.0.1', 8080), root), undefined, 'TIME_WAIT (uid 0, inode 0) is not attributed to root');
  t.equal(await socketOwnerUid(ep('127.0.0.1', 8080), ep('127.0.0.1', 1), root), undefined, 'unknown');
  t.equal(await socketOwnerUid(ep('not-an-ip', 1), ep('127.0.0.1', 8080), root), undefined, 'bad address');
  t.equal(await socketOwnerUid(ep('127.0.0.1', 0), ep('127.0.0.1', 8080), root), undefined, 'bad port');

  const noV6 = t.testdir({ net: { tcp: TCP } });
  t.equal(await socketOwnerUid(ep('127.0.0.1', 50000), ep('127.0.0.1', 8080), noV6), 1000, 'missing tcp6 is fine');
  await t.rejects(socketOwnerUid(ep('127.0.0.1', 50000), ep('127.0.0.1', 8080), join(noV6, 'net', 'tcp')), 'other read errors surface');
});

t.test('socketOwnerUid scans a large table quickly', { skip: !LE && 'fixtures are little-endian' }, async (t) => {
  const root = t.testdir({});
  const lines = [TCP.split('\n')[0]];
  for (let i = 0; i < 50_000; i++) {
    const p = (1024 + i).toString(16).toUpperCase().padStart(4, '0');
    lines.push(`${String(i).padStart(5)}: 0100007F:${p} 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  ${i}        0 ${100000 + i} 1 0000000000000000 20 4 30 10 -1`);
  }
  mkdirSync(join(root, 'net'));
  writeFileSync(join(root, 'net', 'tcp'), `${lines.join('\n')}\n`);
  const start = performance.now();
  t.equal(await socketOwnerUid({ address: '127.0.0.1', port: 1024 + 49_999 }, { address: '127.0.0.1', port: 8080 }, root), 49_999);
  t.comment(`50k-line lookup took ${(performance.now() - start).toFixed(1)} ms`);
});

// ------------------------------------------------------------------ live

async function listen(t: Test, host: string): Promise<{ server: Server; port: number; accepted: () => Promise<Socket> }> {
  const queue: Socket[] = [];
  const waiters: ((s: Socket) => void)[] = [];
  const server = createServer((s) => {
    s.on('error', () => {});
    const w = waiters.shift();
    if (w) w(s);
    else queue.push(s);
  });
  server.listen(0, host);
  await once(server, 'listening');
  t.teardown(() => {
    server.close();
  });
  return {
    server,
    port: (server.address() as AddressInfo).port,
    accepted: () => {
      const s = queue.shift();
      return s ? Promise.resolve(s) : new Promise<Socket>((r) => waiters.push(r));
    },
  };
}

function ends(s: Socket): { client: Endpoint; server: Endpoint } {
  return {
    client: { address: s.remoteAddress ?? '', port: s.remotePort ?? 0 },
    server: { address: s.localAddress ?? '', port: s.localPort ?? 0 },
  };
}

const myUid = process.getuid?.() ?? -1;

t.test('live loopback connection over IPv4', async (t) => {
  const { port, accepted } = await listen(t, '127.0.0.1');
  const client = connect(port, '127.0.0.1');
  const s = await accepted();
  const { client: c, server } = ends(s);
  t.equal(await socketOwnerUid(c, server), myUid);
  t.equal(await socketOwnerUid(server, c), myUid, 'our own end is also ours (sanity)');
  client.destroy();
  s.destroy();
});

t.test('live dual-stack listener: IPv4 and mapped-IPv6 clients', async (t) => {
  let l: Awaited<ReturnType<typeof listen>>;
  try {
    l = await listen(t, '::');
  } catch {
    t.pass('skipped: no IPv6');
    return;
  }
  for (const host of ['127.0.0.1', '::ffff:127.0.0.1']) {
    const client = connect(l.port, host);
    const s = await l.accepted();
    const { client: c, server } = ends(s);
    t.match(c.address, /^::ffff:127\.0\.0\.1$/, 'the listener sees a mapped peer');
    t.equal(await socketOwnerUid(c, server), myUid, `client socket via ${host}`);
    client.destroy();
    s.destroy();
  }
});

t.test('live IPv6 loopback connection', async (t) => {
  let l: Awaited<ReturnType<typeof listen>>;
  try {
    l = await listen(t, '::1');
  } catch {
    t.pass('skipped: no IPv6 loopback');
    return;
  }
  const client = connect(l.port, '::1');
  const s = await l.accepted();
  const { client: c, server } = ends(s);
  t.equal(await socketOwnerUid(c, server), myUid);
  client.destroy();
  s.destroy();
});

t.test('a closed connection is not attributed (TIME_WAIT reports uid 0)', async (t) => {
  const { port, accepted } = await listen(t, '127.0.0.1');
  const client = connect(port, '127.0.0.1');
  const s = await accepted();
  const { client: c, server } = ends(s);
  const closed = Promise.all([once(client, 'close'), once(s, 'close')]);
  client.resume();
  s.resume();
  // The client closes first, so its end goes to TIME_WAIT; the server end
  // answers the FIN itself (allowHalfOpen is off).
  client.end();
  await closed;
  t.equal(await socketOwnerUid(c, server), undefined);
});

t.test('an unknown endpoint → undefined', async (t) => {
  t.equal(await socketOwnerUid({ address: '127.0.0.1', port: 1 }, { address: '127.0.0.1', port: 2 }), undefined);
  t.equal(await socketOwnerUid({ address: '2001:db8::1', port: 1 }, { address: '2001:db8::2', port: 2 }), undefined);
});

t.test('a client run as another user is attributed to that uid', { skip: myUid !== 0 && 'needs root to switch user' }, async (t) => {
  const { port, accepted } = await listen(t, '127.0.0.1');
  // Connect, then wait for one byte from the server before exiting (bounded, so a failed test does not leave it running).
  const script = `const s = require('node:net').connect(${port}, '127.0.0.1');
s.on('data', () => process.exit(0)); s.on('error', () => process.exit(3)); setTimeout(() => process.exit(2), 4000);`;
  const child = spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', script], {
    cwd: '/',
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = once(child, 'exit');
  const s = await Promise.race([
    accepted(),
    exited.then(([code]) => {
      throw new Error(`client exited early (${String(code)}): ${stderr}`);
    }),
  ]);
  const { client: c, server } = ends(s);
  t.equal(await socketOwnerUid(c, server), 65534);
  s.write('x');
  const [code] = await exited;
  t.equal(code, 0, 'client exited normally');
  s.destroy();
});
