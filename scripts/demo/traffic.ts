/**
 * The demo's traffic: the client calls the web service through node-a, both
 * ways an application without iptables capture can (SOCKS5 and the upstream
 * listener), and the intruder tries the same. Each request is paired with
 * the access-log records the agents wrote for it: the source agent's
 * outbound line, and the destination agent's inbound line with the same
 * trace id (the traceparent travels in the HBONE CONNECT).
 */
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
  /** The destination agent's line ("direction":"inbound"), same trace id. */
  readonly inbound: LogLine | undefined;
}

export interface Refusal {
  /** SOCKS reply code the intruder got (2: not allowed by ruleset). */
  readonly reply: number;
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
  const { line } = await inboundFor(d, outbound);
  return { via, url: `http://${layout.service.host}${path}`, status: res.status, answer: parseAnswer(res.body), outbound, inbound: line };
}

/** The intruder's attempt: expected to be refused by the destination agent's policy. */
export async function intruderRequest(d: TrafficDeps): Promise<Refusal> {
  const { layout, source } = d;
  const agent = d.agents.get(source.name)!;
  const from = agent.logs.length;
  let reply = 0;
  try {
    const socket = await socks5Connect({ proxy: { host: source.address, port: AGENT_PORTS.socks }, user: `${layout.intruder.namespace}/${layout.intruder.name}`, localAddress: layout.intruder.address, host: layout.service.host, port: layout.service.port });
    const res = await httpGet(socket, layout.service.host, '/');
    throw new Error(`the intruder was not refused: it got HTTP ${res.status} ${res.body.trim()} — is examples/policy.yaml applied?`);
  } catch (err) {
    if (!(err instanceof SocksRefused)) throw err;
    reply = err.reply;
  }
  const outbound = await agent.waitForLog((l) => isConnection('outbound')(l) && l['src.identity'] === layout.intruder.identity, 'outbound access log line of the refused request', LOG_WAIT_MS, from);
  const { line, node } = await inboundFor(d, outbound);
  return { reply, outbound, inbound: line, refusedBy: node };
}

/** The client asks for a path a DENY names: answered 403 by the destination agent, naming the policy. */
export async function l7DeniedRequest(d: TrafficDeps, path: string): Promise<L7Denial> {
  const { layout, source } = d;
  const socket = await tcpConnect({ host: source.address, port: source.upstream.port, localAddress: layout.client.address });
  const res = await httpGet(socket, layout.service.host, path);
  if (res.status !== 403) throw new Error(`GET http://${layout.service.host}${path} answered HTTP ${res.status}, not 403 — is examples/policy.yaml applied?`);
  return { url: `http://${layout.service.host}${path}`, status: res.status, body: res.body.trim() };
}
