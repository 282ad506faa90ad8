/**
 * The summary printed once the demo mesh is up: what a person should see at
 * a glance (identities, one request across the mesh with what both agents
 * saw, one refused request, load balancing) and where to look next.
 */
import { relative } from 'node:path';
import { AGENT_PORTS, CONTROLLER, type Layout, type NodeSpec } from './layout.ts';
import { SOCKS_REPLIES } from './http-client.ts';
import type { Style } from './progress.ts';
import type { LogLine } from './processes.ts';
import type { Exchange, L7Denial, OneConnection, Refusal } from './traffic.ts';

export interface IdentityRow {
  readonly identity: string;
  /** Who holds a certificate for it: agent node names, or a path for the admin. */
  readonly holders: readonly string[];
  readonly notAfter: number;
}

export interface SummaryInput {
  readonly style: Style;
  readonly now: number;
  readonly startupMs: number;
  readonly layout: Layout;
  readonly nodes: readonly NodeSpec[];
  readonly caRoot: string;
  readonly identities: readonly IdentityRow[];
  readonly exchanges: readonly Exchange[];
  readonly showcase: Exchange;
  readonly refusal: Refusal;
  readonly l7Denial: L7Denial;
  readonly oneConnection: OneConnection;
  readonly policy: { readonly name: string; readonly file: string; readonly l7Name: string };
  readonly paths: { readonly root: string; readonly dir: string; readonly logs: readonly string[]; readonly credentials: string; readonly node: string; readonly ambitctl: string };
  readonly pids: readonly { readonly name: string; readonly pid: number | undefined }[];
  readonly exitAfterSummary: boolean;
}

function until(ms: number, now: number): string {
  const s = Math.max(0, Math.round((ms - now) / 1000));
  const d = Math.floor(s / 86_400);
  const h = Math.floor((s % 86_400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  return d > 0 ? `${d}d ${h}h` : h > 0 ? `${h}h ${m}m` : `${m}m`;
}

function utc(ms: number): string {
  return `${new Date(ms).toISOString().slice(0, 16).replace('T', ' ')} UTC`;
}

function bytes(n: unknown): string {
  return `${Number(n ?? 0)} B`;
}

/** A path relative to the repository when it is inside it, else absolute. */
function shown(root: string, p: string): string {
  const r = relative(root, p);
  return r === '' || r.startsWith('..') ? p : r;
}

function pad(s: string, n: number): string {
  return s.length >= n ? s : s + ' '.repeat(n - s.length);
}

/** One access-log line as "src → dst [security, bytes from / to the source, duration, flags, error]". */
function logLine(l: LogLine): string {
  if (l.msg === 'request') {
    return `${String(l['src.identity'])} → ${String(l['dst.identity'])}  [${String(l.method)} ${String(l.path)} → ${String(l.status)}, bytes_recv ${bytes(l.bytes_recv)}, bytes_sent ${bytes(l.bytes_sent)}, ${String(l.duration_ms)} ms]`;
  }
  const flags = l.response_flags && l.response_flags !== '-' ? `, response_flags ${String(l.response_flags)}` : '';
  const err = l.error ? `, error "${String(l.error)}"` : '';
  return `${String(l['src.identity'])} → ${String(l['dst.identity'])}  [${String(l.security)}, bytes_recv ${bytes(l.bytes_recv)}, bytes_sent ${bytes(l.bytes_sent)}, ${String(l.duration_ms)} ms${flags}${err}]`;
}

export function formatSummary(i: SummaryInput): string {
  const s = i.style;
  const out: string[] = [];
  const h = (t: string): void => {
    out.push('', s.bold(t));
  };
  const a = i.nodes[0]!;
  const rule = '─'.repeat(78);
  out.push('', rule, s.bold(` Ambit demo mesh is up: a controller and ${i.nodes.length} agents, ready in ${(i.startupMs / 1000).toFixed(1)} s`), rule);

  h(`Identities issued by the mesh CA (root ${i.caRoot.slice(0, 16)}…); workload and node keys are made on their agent and never leave it`);
  const w = Math.max(...i.identities.map((r) => r.identity.length));
  for (const r of i.identities) out.push(`  ${pad(r.identity, w)}  ${pad(r.holders.join(', '), 16)}  expires ${utc(r.notAfter)} (in ${until(r.notAfter, i.now)})`);

  const x = i.showcase;
  const ans = x.answer;
  const dstNode = ans?.node ?? '?';
  h(`A request across the mesh: ${i.layout.client.name} on ${a.name} → ${i.layout.service.host}:${i.layout.service.port} → ${ans?.workload ?? '?'} on ${dstNode}`);
  out.push(`  GET ${x.url} via ${x.via === 'socks' ? `SOCKS5 ${a.address}:${AGENT_PORTS.socks} (user ${i.layout.client.namespace}/${i.layout.client.name})` : `the upstream listener ${a.address}:${a.upstream?.port}`}`);
  out.push(`  → HTTP ${x.status} from ${ans?.workload ?? '?'} (${ans?.listen ?? '?'} on ${dstNode}), which saw the connection come from ${ans?.peer ?? '?'} (its local agent)`);
  out.push(`  ${pad(`${a.name} (source agent)`, 28)} ${logLine(x.outbound)}`);
  if (x.inbound) out.push(`  ${pad(`${dstNode} (destination agent)`, 28)} ${logLine(x.inbound)}`);
  out.push(s.dim(`  mutual TLS 1.3: ${a.name} presented the client's certificate, ${dstNode} the web certificate; both agents' lines of this request carry trace_id ${x.traceId}`));

  const r = i.refusal;
  h(`A request refused by ${i.policy.file} (AuthorizationPolicy ${i.policy.name}: ALLOW only ${i.layout.client.identity})`);
  out.push(`  ${i.layout.intruder.name} (${i.layout.intruder.identity}) → ${i.layout.service.host}:${i.layout.service.port} via SOCKS5`);
  if (r.http) out.push(`  → HTTP ${r.http.status} (${r.http.flags}) "${r.http.body}": the destination agent refused the tunnel before any byte reached ${String(r.outbound['dst.workload'])}`);
  else out.push(`  → SOCKS reply ${r.reply} "${SOCKS_REPLIES[r.reply ?? 0] ?? '?'}": the connection was refused before any byte reached ${String(r.outbound['dst.workload'])}`);
  if (r.inbound) out.push(`  ${pad(`${r.refusedBy} (destination agent)`, 28)} ${logLine(r.inbound)}`);
  out.push(`  ${pad(`${a.name} (source agent)`, 28)} ${logLine(r.outbound)}`);

  const d = i.l7Denial;
  h(`A request denied by method and path (AuthorizationPolicy ${i.policy.l7Name}: DENY paths /admin/*, on the HTTP port)`);
  out.push(`  ${i.layout.client.name} → GET ${d.url} via the upstream listener ${a.address}:${a.upstream?.port}`);
  out.push(`  → HTTP ${d.status} "${d.body}": answered by the destination agent; the app never saw it, and the client's other requests went through`);

  const counts = new Map<string, number>(i.layout.web.map((wa) => [wa.workload, 0]));
  for (const e of i.exchanges) if (e.answer) counts.set(e.answer.workload, (counts.get(e.answer.workload) ?? 0) + 1);
  const bySocks = i.exchanges.filter((e) => e.via === 'socks').length;
  h(`Load balancing: ${i.exchanges.length} requests to ${i.layout.service.host}:${i.layout.service.port} (${bySocks} via SOCKS5, ${i.exchanges.length - bySocks} via the upstream listener ${a.address}:${a.upstream?.port})`);
  for (const wa of i.layout.web) {
    const n = counts.get(wa.workload) ?? 0;
    out.push(`  ${pad(wa.workload, 8)} on ${pad(wa.node, 7)} ${pad(`${wa.address}:${wa.port}`, 18)} ${String(n).padStart(3)} answered  ${s.cyan('█'.repeat(n))}`);
  }

  const oc = i.oneConnection;
  h(`Per-request balancing: ${oc.requests} requests on ${oc.connections === 1 ? `ONE keep-alive connection (client port ${oc.clientPort})` : `${oc.connections} connections`} via the upstream listener (the port declares appProtocol http)`);
  for (const wa of i.layout.web) {
    const n = oc.answeredBy.get(wa.workload) ?? 0;
    out.push(`  ${pad(wa.workload, 8)} on ${pad(wa.node, 7)} ${String(n).padStart(3)} of that connection's requests  ${s.cyan('█'.repeat(n))}`);
  }

  h('Endpoints');
  const ctl = CONTROLLER;
  out.push(`  controller  gRPC ${ctl.host}:${ctl.grpcPort} (mTLS)  metrics http://${ctl.host}:${ctl.monitoringPort}/metrics  ready http://${ctl.host}:${ctl.monitoringPort}/healthz/ready`);
  for (const n of i.nodes) {
    out.push(`  ${pad(n.name, 10)}  metrics http://${n.address}:${AGENT_PORTS.metrics}/metrics  ready http://${n.address}:${AGENT_PORTS.ready}/healthz/ready`);
    out.push(`  ${' '.repeat(10)}  admin   http://${n.address}:${AGENT_PORTS.admin}/config_dump  /certs  /workloads  /logging`);
    const up = n.upstream ? `  upstream ${n.address}:${n.upstream.port} → ${n.upstream.destination} (as ${n.upstream.workload})` : '';
    out.push(`  ${' '.repeat(10)}  HBONE   ${n.address}:${AGENT_PORTS.hbone}  SOCKS5 ${n.address}:${AGENT_PORTS.socks}${up}`);
  }

  h(`Web console: https://${ctl.host}:${ctl.consolePort}/ (admin only; docs/console.md)`);
  out.push(`  log in with the single-use link this prints (the browser warns about the mesh CA's certificate unless it trusts ${shown(i.paths.root, i.paths.credentials)}/ca.pem):`);
  out.push(`  ${i.paths.node} ${i.paths.ambitctl} --controller ${ctl.host}:${ctl.grpcPort} --credentials ${i.paths.credentials} console`);

  h(`Explore (another terminal, in ${i.paths.root})`);
  const c = i.layout.client;
  const web = i.layout.web[0]!;
  out.push(`  export AMBIT_CONTROLLER=${ctl.host}:${ctl.grpcPort} AMBIT_CREDENTIALS=${i.paths.credentials}`);
  out.push(`  alias ambitctl="${i.paths.node} ${i.paths.ambitctl}"`);
  for (const cmd of [
    'ambitctl status',
    'ambitctl console   # the web console\'s address and a login link',
    'ambitctl node list',
    `ambitctl workload list -n ${c.namespace}`,
    `ambitctl service get ${i.layout.service.host.split('.')[0]} -n ${c.namespace} -o yaml`,
    `ambitctl policy list`,
    'ambitctl ca show',
    `ambitctl delete -f ${i.policy.file}   # now the intruder gets through; apply -f puts it back`,
    `curl --socks5-hostname ${a.address}:${AGENT_PORTS.socks} --proxy-user ${c.namespace}/${c.name}:x --interface ${c.address} http://${i.layout.service.host}/`,
    `curl --interface ${c.address} http://${a.address}:${a.upstream?.port}/`,
    `curl http://${a.address}:${AGENT_PORTS.admin}/certs`,
    `curl -s http://${(i.nodes.find((n) => n.name === web.node) ?? a).address}:${AGENT_PORTS.metrics}/metrics | grep istio_tcp_connections_opened`,
  ]) out.push(`  ${cmd}`);

  h('Logs and processes');
  out.push(`  logs (JSON lines, one "msg":"connection" line per connection): ${i.paths.logs.map((p) => shown(i.paths.root, p)).join(', ')}`);
  out.push(`  processes: ${i.pids.map((p) => `${p.name} pid ${p.pid ?? '?'}`).join(', ')}; data in ${shown(i.paths.root, i.paths.dir)}/`);
  out.push('');
  out.push(i.exitAfterSummary ? 'AMBIT_DEMO_EXIT_AFTER_SUMMARY=1: shutting down now.' : s.bold('The mesh keeps running. Press Ctrl-C to stop it.'));
  return `${out.join('\n')}\n`;
}
