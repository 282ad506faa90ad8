/**
 * The demo's traffic: the client calls the web service through node-a, both
 * ways an application without iptables capture can (SOCKS5 and the upstream
 * listener), and the intruder tries the same. Each request is paired with
 * the access-log records the agents wrote for it: the source agent's
 * outbound line, and the destination agent's inbound line with the same
 * trace id (the traceparent travels in the HBONE CONNECT).
 */
import { Agent, get } from 'node:http';
import { AGENT_PORTS, type Layout, type NodeSpec } from './layout.ts';
import { httpGet, socks5Connect, SocksRefused, tcpConnect } from './http-client.ts';
import { parseAnswer, type WebAnswer } from './apps.ts';
import type { DemoProcess, LogLine } from './processes.ts';

const LOG_WAIT_MS = 5_000;

export type Via = 'socks' | 'upstream';

export interface Exchange {
  readonly via: Via;
  readonly url: string;
  readonly status: number;
  readonly answer: WebAnswer | undefined;
  /** The source agent's access-log line ("direction":"outbound"). */
  readonly outbound: LogLine;
  /**
   * The destination agent's line: on an HTTP port its request line (the
   * request's trace, which the source agent's request line shares), else
   * its connection line with the outbound line's trace id.
   */
  readonly inbound: LogLine | undefined;
  /** The trace id both agents' lines of this request carry. */
  readonly traceId: string;
}

export interface Refusal {
  /** On a TCP port: the SOCKS reply code the intruder got (2: not allowed by ruleset). */
  readonly reply: number | undefined;
  /** On an HTTP port: the source agent's own answer to the request (403, flag DENY), naming why. */
  readonly http: { readonly status: number; readonly flags: string; readonly body: string } | undefined;
  readonly outbound: LogLine;
  readonly inbound: LogLine | undefined;
  /** Node of the destination agent that refused. */
  readonly refusedBy: string;
}

/** A request the destination agent denied by method and path (examples/policy.yaml, web-deny-admin). */
export interface L7Denial {
  readonly url: string;
  readonly status: number;
  /** The answer's body: it names the deciding policy. */
  readonly body: string;
}

export interface TrafficDeps {
  readonly layout: Layout;
  readonly source: NodeSpec & { readonly upstream: NonNullable<NodeSpec['upstream']> };
  readonly agents: ReadonlyMap<string, DemoProcess>;
}

const isConnection = (direction: string) => (l: LogLine): boolean => l.msg === 'connection' && l.direction === direction;

async function inboundFor(d: TrafficDeps, outbound: LogLine): Promise<{ line: LogLine | undefined; node: string }> {
  const dstWorkload = String(outbound['dst.workload'] ?? '');
  const node = d.layout.web.find((w) => w.workload === dstWorkload)?.node ?? '';
  const agent = d.agents.get(node);
  if (!agent || !outbound.trace_id) return { line: undefined, node };
  const line = await agent.waitForLog((l) => isConnection('inbound')(l) && l.trace_id === outbound.trace_id, 'inbound access log line', LOG_WAIT_MS).catch(() => undefined);
  return { line, node };
}

/**
 * The destination agent's line for a tunnel a source agent opened per
 * request on an HTTP port: its trace is the request's, not the app
 * connection's, so it is found by the source identity instead.
 */
async function inboundRefusalOf(d: TrafficDeps, identity: string): Promise<{ line: LogLine | undefined; node: string }> {
  // The source agent's 403 can reach the client before the destination agent
  // has written its line: wait on every web node's agent, first line wins.
  const waits = d.layout.web.map(async (w) => {
    const agent = d.agents.get(w.node);
    if (!agent) throw new Error(`no agent for ${w.node}`);
    return { line: await agent.waitForLog((l) => isConnection('inbound')(l) && l['src.identity'] === identity, 'the destination agent\'s refusal line', LOG_WAIT_MS), node: w.node };
  });
  return Promise.any(waits).catch(() => ({ line: undefined, node: '' }));
}

/** One GET from the client to the service, through SOCKS5 or the upstream listener. */
export async function clientRequest(d: TrafficDeps, via: Via, path: string): Promise<Exchange> {
  const { layout, source } = d;
  const agent = d.agents.get(source.name)!;
  const from = agent.logs.length;
  const socket = via === 'socks'
    ? await socks5Connect({ proxy: { host: source.address, port: AGENT_PORTS.socks }, user: `${layout.client.namespace}/${layout.client.name}`, localAddress: layout.client.address, host: layout.service.host, port: layout.service.port })
    : await tcpConnect({ host: source.address, port: source.upstream.port, localAddress: layout.client.address });
  const res = await httpGet(socket, layout.service.host, path);
  const outbound = await agent.waitForLog((l) => isConnection('outbound')(l) && l['src.identity'] === layout.client.identity, 'outbound access log line', LOG_WAIT_MS, from);
  // An HTTP port: each agent's data plane logs the request itself, and both
  // lines carry the request's trace (the tunnel a request rides may be a
  // pooled one, opened under another request's trace).
  const request = await agent.waitForLog((l) => l.msg === 'request' && l.direction === 'outbound' && l.path === path, 'the source agent\'s request line', LOG_WAIT_MS, from).catch(() => undefined);
  if (request?.trace_id) {
    const node = layout.web.find((w) => w.workload === String(request['dst.workload'] ?? ''))?.node ?? '';
    const inbound = await d.agents.get(node)?.waitForLog((l) => l.msg === 'request' && l.direction === 'inbound' && l.trace_id === request.trace_id, 'the destination agent\'s request line', LOG_WAIT_MS).catch(() => undefined);
    return { via, url: `http://${layout.service.host}${path}`, status: res.status, answer: parseAnswer(res.body), outbound, inbound, traceId: String(request.trace_id) };
  }
  const { line } = await inboundFor(d, outbound);
  return { via, url: `http://${layout.service.host}${path}`, status: res.status, answer: parseAnswer(res.body), outbound, inbound: line, traceId: String(outbound.trace_id ?? '') };
}

/** The intruder's attempt: expected to be refused by the destination agent's policy. */
export async function intruderRequest(d: TrafficDeps): Promise<Refusal> {
  const { layout, source } = d;
  const agent = d.agents.get(source.name)!;
  const from = agent.logs.length;
  let reply: number | undefined;
  let http: Refusal['http'];
  try {
    const socket = await socks5Connect({ proxy: { host: source.address, port: AGENT_PORTS.socks }, user: `${layout.intruder.namespace}/${layout.intruder.name}`, localAddress: layout.intruder.address, host: layout.service.host, port: layout.service.port });
    // An HTTP port: the source agent accepts the connection and answers each
    // request itself once the destination agent's policy refuses the source.
    const res = await httpGet(socket, layout.service.host, '/');
    if (res.status !== 403 || res.headers['x-ambit-response-flags'] !== 'DENY') {
      throw new Error(`the intruder was not refused: it got HTTP ${res.status} ${res.body.trim()} — is examples/policy.yaml applied?`);
    }
    http = { status: res.status, flags: res.headers['x-ambit-response-flags'], body: res.body.trim() };
  } catch (err) {
    if (!(err instanceof SocksRefused)) throw err;
    reply = err.reply;
  }
  const outbound = await agent.waitForLog((l) => isConnection('outbound')(l) && l['src.identity'] === layout.intruder.identity, 'outbound access log line of the refused request', LOG_WAIT_MS, from);
  const { line, node } = http ? await inboundRefusalOf(d, layout.intruder.identity) : await inboundFor(d, outbound);
  return { reply, http, outbound, inbound: line, refusedBy: node };
}

/** The client asks for a path a DENY names: answered 403 by the destination agent, naming the policy. */
export async function l7DeniedRequest(d: TrafficDeps, path: string): Promise<L7Denial> {
  const { layout, source } = d;
  const socket = await tcpConnect({ host: source.address, port: source.upstream.port, localAddress: layout.client.address });
  const res = await httpGet(socket, layout.service.host, path);
  if (res.status !== 403) throw new Error(`GET http://${layout.service.host}${path} answered HTTP ${res.status}, not 403 — is examples/policy.yaml applied?`);
  return { url: `http://${layout.service.host}${path}`, status: res.status, body: res.body.trim() };
}

/** Requests the client sent on one keep-alive connection, and which instance answered each. */
export interface OneConnection {
  readonly requests: number;
  /** How many TCP connections carried them (1: the agent balanced each request, not the connection). */
  readonly connections: number;
  /** The client's local port of that connection. */
  readonly clientPort: number;
  readonly answeredBy: ReadonlyMap<string, number>;
}

/**
 * `n` GETs on ONE keep-alive connection through the upstream listener: the
 * service's port declares HTTP, so the source agent picks an endpoint per
 * request, and one connection's requests spread over the instances.
 */
export async function oneConnectionRequests(d: TrafficDeps, n: number): Promise<OneConnection> {
  const { layout, source } = d;
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const ports = new Set<number>();
  const answeredBy = new Map<string, number>(layout.web.map((w) => [w.workload, 0]));
  try {
    for (let k = 0; k < n; k++) {
      const path = `/one-connection?n=${k + 1}`;
      const { status, body, port } = await new Promise<{ status: number; body: string; port: number }>((resolve, reject) => {
        const req = get({ agent, host: source.address, port: source.upstream.port, localAddress: layout.client.address, path, headers: { host: layout.service.host, accept: 'application/json' }, timeout: 10_000 }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), port: res.socket?.localPort ?? 0 }));
          res.on('error', reject);
        });
        req.on('timeout', () => req.destroy(new Error(`GET http://${layout.service.host}${path}: no answer within 10 s`)));
        req.on('error', reject);
      });
      const answer = parseAnswer(body);
      if (status !== 200 || !answer) throw new Error(`GET http://${layout.service.host}${path} on one connection answered HTTP ${status}`);
      ports.add(port);
      answeredBy.set(answer.workload, (answeredBy.get(answer.workload) ?? 0) + 1);
    }
  } finally {
    agent.destroy();
  }
  return { requests: n, connections: ports.size, clientPort: [...ports][0] ?? 0, answeredBy };
}
