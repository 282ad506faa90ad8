import type { IncomingMessage } from 'node:http';
import { HttpEndpoint } from '../shared/http-endpoint.ts';
import { LOG_LEVELS, type Logger, type LogLevel } from '../shared/logger.ts';
import { toDocument } from '../shared/resources/validate.ts';
import { parseCertificates } from '../shared/tls.ts';
import type { CertManager } from './identity/cert-manager.ts';
import type { MeshState } from './state/mesh-state.ts';
import { socketOwnerUid } from './proxy/socket-owner.ts';

export interface AdminDeps {
  readonly state: MeshState;
  readonly certs: CertManager;
  /** Loggers whose level /logging changes together. */
  readonly loggers: readonly Logger[];
  /** Everything else worth dumping: config, watch status, pool, capture rules. */
  readonly extra: () => Record<string, unknown>;
  readonly now: () => number;
  /** The agent's own uid, which may change settings besides root; default: this process's. */
  readonly agentUid?: number;
  /** The uid of the process behind an admin request's connection; default: read from /proc/net/tcp. */
  readonly peerUid?: (req: IncomingMessage) => Promise<number | undefined>;
}

/** The uid owning the client end of an admin connection (a local TCP client on loopback). */
function connectionOwnerUid(req: IncomingMessage): Promise<number | undefined> {
  const s = req.socket;
  return socketOwnerUid({ address: s.remoteAddress ?? '', port: s.remotePort ?? 0 }, { address: s.localAddress ?? '', port: s.localPort ?? 0 });
}

/**
 * Who may change the agent's settings through the admin port: root and the
 * agent's own user. The port is on loopback, where every local user can
 * connect; an unknown owner (the socket already gone) is refused.
 */
export function mayChangeSettings(peerUid: number | undefined, agentUid: number | undefined): boolean {
  return peerUid !== undefined && (peerUid === 0 || peerUid === agentUid);
}

const json = (body: unknown): string => `${JSON.stringify(body, null, 2)}\n`;

/**
 * The agent's admin endpoint (loopback only, DESIGN §3): /config_dump,
 * /certs, /workloads, /logging. It never shows private keys. Every local
 * user can read it; only root and the agent's user may change anything
 * (POST /logging?level=…), checked by the connection's socket owner.
 */
export function adminEndpoint(d: AdminDeps): HttpEndpoint {
  return new HttpEndpoint({
    '/config_dump': (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' }).end(json({
        node: d.state.node,
        trustDomain: d.state.trustDomain,
        revision: d.state.revision,
        nodes: d.state.nodes(),
        resources: d.state.resources().map(toDocument),
        ...d.extra(),
      }));
    },
    '/certs': (_req, res) => {
      const now = d.now();
      res.writeHead(200, { 'content-type': 'application/json' }).end(json(d.certs.status().map((s) => {
        const entry = d.certs.get(s.identity);
        const leaf = entry ? parseCertificates(entry.chainPem)[0] : undefined;
        return {
          identity: s.identity,
          state: entry ? 'valid' : s.notAfter > 0 && s.notAfter <= now ? 'expired' : 'pending',
          serial: leaf?.serialNumber ?? '',
          notBefore: s.notBefore ? new Date(s.notBefore).toISOString() : '',
          notAfter: s.notAfter ? new Date(s.notAfter).toISOString() : '',
          secondsLeft: s.notAfter ? Math.max(0, Math.round((s.notAfter - now) / 1000)) : 0,
          renewsAt: s.renewsAt ? new Date(s.renewsAt).toISOString() : '',
          lastError: s.lastError,
          chainPem: entry?.chainPem ?? '',
        };
      })));
    },
    '/workloads': (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' }).end(json({
        local: d.state.localWorkloads().map((w) => ({ ...toDocument(w), identity: d.state.identityOf(w).uri, certificate: d.certs.get(d.state.identityOf(w).uri) ? 'valid' : 'pending' })),
        all: d.state.resources().filter((r) => r.kind === 'Workload').map(toDocument),
      }));
    },
    '/logging': {
      methods: ['GET', 'HEAD', 'POST'],
      handler: async (req, res) => {
        const level = new URL(req.url ?? '/', 'http://admin').searchParams.get('level');
        if (req.method !== 'POST') {
          // A GET must never change anything: a link or a probe could otherwise silence the agent.
          if (level !== null) {
            res.writeHead(405, { 'content-type': 'text/plain', allow: 'POST' }).end('GET /logging only reads the level; change it with POST /logging?level=LEVEL\n');
            return;
          }
          res.writeHead(200, { 'content-type': 'application/json' }).end(json({ level: d.loggers[0]?.level ?? 'info' }));
          return;
        }
        const uid = await (d.peerUid ?? connectionOwnerUid)(req);
        const agentUid = d.agentUid ?? process.getuid?.();
        if (!mayChangeSettings(uid, agentUid)) {
          res.writeHead(403, { 'content-type': 'text/plain' }).end(`only root or the agent's user (uid ${agentUid ?? 'unknown'}) may change the log level; this connection's uid: ${uid ?? 'unknown'}\n`);
          return;
        }
        if (!level || !(LOG_LEVELS as readonly string[]).includes(level)) {
          res.writeHead(400, { 'content-type': 'text/plain' }).end(`level must be one of ${LOG_LEVELS.join(', ')}\n`);
          return;
        }
        for (const l of d.loggers) l.level = level as LogLevel;
        res.writeHead(200, { 'content-type': 'application/json' }).end(json({ level: d.loggers[0]?.level ?? 'info' }));
      },
    },
  });
}
