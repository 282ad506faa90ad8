// The console's single page: preact components written with htm tagged
// templates (no build step). Read-only: every view polls a GET under /api/.
import { h, render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import htm from 'htm';

const html = htm.bind(h);
const POLL_MS = 2000;

const VIEWS = [
  ['status', 'Mesh'],
  ['nodes', 'Nodes'],
  ['workloads', 'Workloads & services'],
  ['policies', 'Policies'],
  ['graph', 'Service graph'],
  ['denials', 'Denials'],
];

function useApi(path) {
  const [state, setState] = useState({ data: undefined, error: '' });
  useEffect(() => {
    let stop = false;
    let timer;
    const load = async () => {
      try {
        const res = await fetch(path, { credentials: 'same-origin', headers: { accept: 'application/json' } });
        // The session expired or was logged out: back to the login page.
        if (res.status === 401) return void location.assign('/login');
        if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
        const data = await res.json();
        if (!stop) setState({ data, error: '' });
      } catch (err) {
        if (!stop) setState((s) => ({ data: s.data, error: String(err.message ?? err) }));
      }
      if (!stop) timer = setTimeout(load, POLL_MS);
    };
    load();
    return () => {
      stop = true;
      clearTimeout(timer);
    };
  }, [path]);
  return state;
}

function when(ms) {
  return ms > 0 ? new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC') : '—';
}

function span(ms) {
  if (!(ms > 0)) return 'expired';
  const s = Math.floor(ms / 1000);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  if (s < 172800) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

function rate(n) {
  return n >= 10 ? n.toFixed(0) : n >= 1 ? n.toFixed(1) : n.toFixed(2);
}

function Table({ id, head, rows, empty }) {
  if (rows.length === 0) return html`<p class="empty" data-testid=${`${id}-empty`}>${empty}</p>`;
  return html`<table data-testid=${id}>
    <thead><tr>${head.map((c) => html`<th>${c}</th>`)}</tr></thead>
    <tbody>${rows}</tbody>
  </table>`;
}

function Loading({ error }) {
  return html`<p class=${error ? 'error' : 'empty'}>${error || 'Loading…'}</p>`;
}

function Status() {
  const { data, error } = useApi('/api/status');
  if (!data) return html`<${Loading} error=${error} />`;
  const now = data.now;
  return html`<section data-testid="status">
    <dl class="facts">
      <dt>Trust domain</dt><dd>${data.trustDomain}</dd>
      <dt>Store</dt><dd>${data.store} · id ${data.storeId}</dd>
      <dt>Revision</dt><dd data-testid="revision">${data.revision}</dd>
      <dt>Resources</dt><dd>${data.counts.workloads} workloads · ${data.counts.services} services · ${data.counts.policies} policies</dd>
      <dt>Nodes</dt><dd>${data.nodes.connected} of ${data.nodes.total} connected</dd>
      <dt>CA rotation</dt><dd>${data.ca.rotation}</dd>
      <dt>Controller</dt><dd>${data.version}, up ${span(data.uptimeMs)}</dd>
    </dl>
    <h2>CA roots</h2>
    <${Table} id="ca-roots" head=${['Fingerprint (SHA-256)', 'Subject', 'Expires', 'Runway', 'Signs']} empty="No roots."
      rows=${data.ca.roots.map((r) => html`<tr>
        <td class="mono">${r.fingerprint.slice(0, 16)}…</td><td>${r.subject}</td><td>${when(r.notAfter)}</td>
        <td>${span(r.notAfter - now)}</td><td>${r.active ? 'yes' : 'no'}</td></tr>`)} />
  </section>`;
}

function Nodes() {
  const { data, error } = useApi('/api/nodes');
  if (!data) return html`<${Loading} error=${error} />`;
  return html`<section>
    <p>Mesh revision ${data.revision}. Runway: how long the node keeps serving without the controller (until its earliest certificate expires).</p>
    <${Table} id="nodes" head=${['Node', 'Connected', 'Acked revision', 'Certificate expires', 'Runway', 'Workloads', 'Last seen', 'HBONE']} empty="No node has joined yet."
      rows=${data.nodes.map((n) => html`<tr data-node=${n.name}>
        <td>${n.name}</td>
        <td class=${n.connected ? 'ok' : 'bad'}>${n.connected ? 'connected' : 'disconnected'}</td>
        <td>${n.ackedRevision}${n.lag > 0 ? html` <span class="warn">(${n.lag} behind)</span>` : ''}${n.nackReason ? html` <span class="bad" title=${n.nackReason}>nack</span>` : ''}</td>
        <td>${when(n.certExpiresAt)}</td>
        <td class=${n.runwayMs < 3600000 ? 'bad' : ''}>${n.certExpiresAt > 0 ? span(n.runwayMs) : '—'}</td>
        <td>${n.workloads}</td><td>${when(n.lastSeen)}</td><td class="mono">${n.hboneAddress || '—'}</td>
      </tr>`)} />
  </section>`;
}

function labels(map) {
  const e = Object.entries(map ?? {});
  return e.length === 0 ? '—' : e.map(([k, v]) => `${k}=${v}`).join(', ');
}

function Workloads() {
  const { data, error } = useApi('/api/workloads');
  if (!data) return html`<${Loading} error=${error} />`;
  return html`<section>
    <h2>Workloads</h2>
    <${Table} id="workloads" head=${['Workload', 'Node', 'Address', 'Ports', 'Identity', 'Labels']} empty="No workloads."
      rows=${data.workloads.map((w) => html`<tr data-workload=${`${w.namespace}/${w.name}`}>
        <td>${w.namespace}/${w.name}</td><td>${w.node}</td><td class="mono">${w.address}</td><td>${w.ports.join(', ') || '—'}</td>
        <td class="mono">${w.identity}</td><td>${labels(w.labels)}</td></tr>`)} />
    <h2>Services</h2>
    <${Table} id="services" head=${['Service', 'Addresses', 'Ports', 'Selector', 'Endpoints']} empty="No services."
      rows=${data.services.map((s) => html`<tr data-service=${`${s.namespace}/${s.name}`}>
        <td>${s.host}</td><td class="mono">${s.addresses.join(', ') || '—'}</td>
        <td>${s.ports.map((p) => `${p.port}→${p.targetPort}${p.name ? ` (${p.name})` : ''}`).join(', ')}</td>
        <td>${labels(s.selector)}</td><td>${s.endpoints.join(', ') || 'none'}</td></tr>`)} />
  </section>`;
}

function Policies() {
  const { data, error } = useApi('/api/policies');
  if (!data) return html`<${Loading} error=${error} />`;
  return html`<section>
    <${Table} id="policies" head=${['Policy', 'Action', 'Applies to', 'Rules', 'Selected workloads']} empty="No authorization policies: every connection is allowed."
      rows=${data.policies.map((p) => html`<tr data-policy=${`${p.namespace}/${p.name}`}>
        <td>${p.namespace}/${p.name}</td><td class=${p.action === 'DENY' ? 'bad' : 'ok'}>${p.action}</td><td>${p.scope}</td>
        <td><ul>${p.rules.map((r) => html`<li>${r}</li>`)}</ul></td>
        <td>${p.selected.join(', ') || 'none'}</td></tr>`)} />
  </section>`;
}

function Graph() {
  const { data, error } = useApi('/api/graph');
  if (!data) return html`<${Loading} error=${error} />`;
  const edges = data.edges;
  const sources = [...new Set(edges.map((e) => e.sourceLabel))];
  const targets = [...new Set(edges.map((e) => e.destinationLabel))];
  const rowH = 56;
  const height = Math.max(sources.length, targets.length, 1) * rowH + 20;
  const y = (list, label) => 30 + list.indexOf(label) * rowH;
  return html`<section>
    <p>Edges seen in the last ${data.windowMs / 1000} s, from the agents' reports (rates per second over that window).</p>
    ${edges.length === 0 ? html`<p class="empty" data-testid="graph-empty">No traffic reported in the last minute.</p>` : html`
    <svg class="graph" data-testid="graph" viewBox=${`0 0 900 ${height}`} width="900" height=${height} role="img" aria-label="service graph">
      ${edges.map((e) => {
        const y1 = y(sources, e.sourceLabel);
        const y2 = y(targets, e.destinationLabel);
        const cls = e.errorRate > 0 ? 'edge err' : e.security === 'mutual_tls' ? 'edge mtls' : 'edge plain';
        return html`<g class=${cls} data-edge=${`${e.sourceLabel} → ${e.destinationLabel}`}>
          <line x1="200" y1=${y1} x2="700" y2=${y2} />
          <text x="450" y=${(y1 + y2) / 2 - 6} text-anchor="middle">${rate(e.connectionsPerSecond)} conn/s${e.requestsPerSecond > 0 ? ` · ${rate(e.requestsPerSecond)} req/s` : ''} · ${(e.errorRate * 100).toFixed(0)}% err · ${e.security === 'mutual_tls' ? 'mTLS' : e.security}</text>
        </g>`;
      })}
      ${sources.map((s) => html`<g class="vertex"><circle cx="200" cy=${y(sources, s)} r="6" /><text x="190" y=${y(sources, s) + 4} text-anchor="end">${s}</text></g>`)}
      ${targets.map((t) => html`<g class="vertex"><circle cx="700" cy=${y(targets, t)} r="6" /><text x="710" y=${y(targets, t) + 4}>${t}</text></g>`)}
    </svg>`}
    <${Table} id="edges" head=${['Source', 'Destination', 'Connections/s', 'Requests/s', 'Error rate', 'mTLS', 'Bytes/s', 'Reported by']} empty="No edges."
      rows=${edges.map((e) => html`<tr data-edge=${`${e.sourceLabel} → ${e.destinationLabel}`}>
        <td>${e.sourceLabel}</td><td>${e.destinationLabel}</td>
        <td data-testid="conn-rate">${rate(e.connectionsPerSecond)} <span class="dim">(${e.connections} in window)</span></td>
        <td>${e.requests > 0 ? rate(e.requestsPerSecond) : '—'}</td>
        <td class=${e.errorRate > 0 ? 'bad' : ''}>${(e.errorRate * 100).toFixed(1)}%</td>
        <td class=${e.security === 'mutual_tls' ? 'ok' : 'bad'}>${e.security === 'mutual_tls' ? 'mTLS' : e.security}</td>
        <td>${rate(e.bytesPerSecond)}</td><td>${e.reporter} (${e.nodes.join(', ')})</td></tr>`)} />
  </section>`;
}

function Denials() {
  const { data, error } = useApi('/api/denials');
  if (!data) return html`<${Loading} error=${error} />`;
  return html`<section>
    <${Table} id="denials" head=${['When', 'Source', 'Destination', 'Decided by', 'Explanation']} empty="No denials reported."
      rows=${data.denials.map((d) => html`<tr data-denial=${`${d.sourceLabel} → ${d.destinationLabel}`}>
        <td>${when(d.at)}<br /><span class="dim">${d.node}, ${d.direction}</span></td>
        <td>${d.sourceLabel}<br /><span class="mono dim">${d.sourcePrincipal}</span></td>
        <td>${d.destinationLabel}:${d.destinationPort}</td>
        <td>${d.policy || html`<span class="dim">no ALLOW matched</span>`}</td>
        <td class="explanation"><strong>${d.explanation.summary}</strong>
          <ul>${d.explanation.details.map((l) => html`<li>${l}</li>`)}</ul></td>
      </tr>`)} />
  </section>`;
}

const PAGES = { status: Status, nodes: Nodes, workloads: Workloads, policies: Policies, graph: Graph, denials: Denials };

function App() {
  const current = () => (location.hash.replace(/^#\/?/, '') || 'status');
  const [view, setView] = useState(current());
  useEffect(() => {
    const on = () => setView(current());
    addEventListener('hashchange', on);
    return () => removeEventListener('hashchange', on);
  }, []);
  const Page = PAGES[view] ?? Status;
  return html`<header>
      <h1>Ambit console</h1>
      <nav>${VIEWS.map(([id, title]) => html`<a href=${`#/${id}`} class=${id === view ? 'current' : ''}>${title}</a>`)}</nav>
      <form method="post" action="/logout"><button type="submit">Log out</button></form>
    </header>
    <main><h2 class="title">${(VIEWS.find(([id]) => id === view) ?? VIEWS[0])[1]}</h2><${Page} /></main>`;
}

render(html`<${App} />`, document.getElementById('app'));
