/**
 * Connection floods on the operational HTTP endpoints (the agent's admin
 * 15000, metrics 15020 and readiness 15021, the controller's monitoring
 * 15014 — all one HttpEndpoint): 150 idle connections from five loopback
 * sources, raw TCP that never sends a request and half-sent requests. The
 * per-source cap refuses the excess at once, /healthz/ready still answers at
 * once from another address, and every flood connection is closed within
 * the 10 s connection deadline (not Node's 30 s timeout check).
 */
import t from 'tap';
import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { HttpEndpoint, HTTP_ENDPOINT_LIMITS } from '../../shared/http-endpoint.ts';

const HOST = '127.0.104.50';
const SOURCES = ['127.0.104.51', '127.0.104.52', '127.0.104.53', '127.0.104.54', '127.0.104.55'];
const PROBE_SOURCE = '127.0.104.56';
const PER_SOURCE = 30;

function ready(port: number): Promise<{ status: number; ms: number }> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const req = request({ host: HOST, port, path: '/healthz/ready', localAddress: PROBE_SOURCE, agent: false, timeout: 5_000 }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, ms: Date.now() - started }));
    });
    req.on('timeout', () => req.destroy(new Error('no answer in 5 s')));
    req.on('error', reject);
    req.end();
  });
}

t.test('an idle flood is capped per source and closed within 10 s; /healthz/ready answers throughout', async (t) => {
  const endpoint = new HttpEndpoint({ '/healthz/ready': (_req, res) => void res.writeHead(200).end('ready\n') });
  const { port } = await endpoint.listen({ host: HOST, port: 0 });
  t.teardown(() => endpoint.close());

  const flood: { socket: Socket; opened: number; closedAt?: number; closed: Promise<void> }[] = [];
  for (const source of SOURCES) {
    for (let i = 0; i < PER_SOURCE; i++) {
      const socket = connect({ host: HOST, port, localAddress: source });
      socket.on('error', () => undefined);
      socket.resume();
      // Half of them start a request and never finish its headers.
      if (i % 2) socket.once('connect', () => socket.write('GET /healthz/ready HTTP/1.1\r\nHost: x\r\n'));
      const held = { socket, opened: Date.now(), closedAt: undefined as number | undefined, closed: Promise.resolve() };
      held.closed = new Promise((resolve) => socket.once('close', () => {
        held.closedAt = Date.now();
        resolve();
      }));
      flood.push(held);
    }
  }
  await Promise.all(flood.map((h) => new Promise<void>((resolve) => (h.socket.readyState === 'open' ? resolve() : h.socket.once('connect', () => resolve()).once('close', () => resolve())))));
  const probe = await ready(port);
  t.equal(probe.status, 200, `/healthz/ready answers during the flood in ${probe.ms} ms`);
  t.ok(probe.ms < 1_000, 'at once');
  const closedEarly = flood.filter((h) => h.closedAt !== undefined).length;
  const excess = SOURCES.length * (PER_SOURCE - HTTP_ENDPOINT_LIMITS.maxPendingPerSource);
  t.ok(closedEarly >= excess, `${closedEarly} flood connections closed at once (${excess} past the per-source cap of ${HTTP_ENDPOINT_LIMITS.maxPendingPerSource}, the rest evicted past ${HTTP_ENDPOINT_LIMITS.maxConnections})`);

  await Promise.race([Promise.all(flood.map((h) => h.closed)), new Promise((r) => setTimeout(r, 15_000))]);
  const lifetimes = flood.map((h) => (h.closedAt ?? Infinity) - h.opened);
  t.ok(lifetimes.every((ms) => ms <= 11_500), `all ${flood.length} flood connections closed, the last after ${Math.max(...lifetimes)} ms`);
  for (const h of flood) h.socket.destroy();
  t.equal((await ready(port)).status, 200, '/healthz/ready answers afterwards');
});

t.test('a request in flight is not cut by the connection deadline', async (t) => {
  const endpoint = new HttpEndpoint({
    '/slow': (_req, res) => void setTimeout(() => res.writeHead(200).end('done\n'), 400),
  }, { ...HTTP_ENDPOINT_LIMITS, proveWithinMs: 100 });
  const { port } = await endpoint.listen({ host: HOST, port: 0 });
  t.teardown(() => endpoint.close());
  const body = await new Promise<string>((resolve, reject) => {
    request({ host: HOST, port, path: '/slow', agent: false }, (res) => {
      let b = '';
      res.setEncoding('utf8').on('data', (d: string) => (b += d)).on('end', () => resolve(b));
    }).on('error', reject).end();
  });
  t.equal(body, 'done\n', 'the answer arrives after the 100 ms deadline');
});
