import type { ServerUnaryCall } from '@grpc/grpc-js';
import type * as pb from '../../shared/proto/gen/ambit.ts';
import { AmbitError } from '../../shared/errors.ts';
import { keyFromWire, keyToWire, resourceFromWire, resourceToWire, routeStatusToWire } from '../../shared/resources/wire.ts';
import { routeStatus } from '../../shared/routes/status.ts';
import type { RouteResource } from '../../shared/resources/route-types.ts';
import { toDocument, validateAll } from '../../shared/resources/validate.ts';
import { KINDS, type Kind, type ResourceKey } from '../../shared/resources/types.ts';
import { parsePhase } from '../ca/rotation-phase.ts';
import { assertRotationSafe, rotationStatus, type RotationInput, type RotationStatus } from '../ca/rotation-readiness.ts';
import { parseSpiffeId } from '../../shared/spiffe-id.ts';
import type { Logger } from '../../shared/logger.ts';
import type { CertificateAuthority } from '../ca/authority.ts';
import type { JoinTokens } from '../registry/join-tokens.ts';
import { DEFAULT_TOKEN_TTL_MS } from '../registry/join-tokens.ts';
import type { NodeTracker, NodeView } from '../registry/node-tracker.ts';
import type { Registry } from '../registry/registry.ts';
import type { Store } from '../store/store.ts';
import type { ControllerMetrics } from '../metrics.ts';
import type { Explainer } from '../explain/explain.ts';
import { explainRequestFromWire, explanationToWire } from './explain-wire.ts';
import { unary, type PeerAuthenticator } from './peer.ts';
import { DEFAULT_LOGIN_TTL_MS, type ConsoleLogins } from '../console/console-logins.ts';

export interface AdminDeps {
  readonly registry: Registry;
  readonly store: Store;
  readonly ca: CertificateAuthority;
  readonly tokens: JoinTokens;
  readonly nodes: NodeTracker;
  readonly auth: PeerAuthenticator;
  readonly logger: Logger;
  readonly metrics: ControllerMetrics;
  readonly explainer: Explainer;
  readonly version: string;
  readonly startedAt: number;
  readonly now: () => number;
  /** The console's login tokens, and where it serves ("" while it is off). */
  readonly consoleLogins: ConsoleLogins;
  readonly consoleUrl: () => string;
}

/** Optimistic-concurrency retries when another writer commits between plan and commit. */
const COMMIT_ATTEMPTS = 5;

/**
 * Admin: everything ambitctl does. Only the admin identity
 * (spiffe://<td>/ambit/admin/<name>) is admitted. Writes are validated whole
 * on the controller (never trusting the client's validation) and committed as
 * one revision, or not at all.
 */
export function adminService(d: AdminDeps): pb.AdminServer {
  const admin = <Req, Res>(method: string, fn: (req: Req, who: string) => Promise<Res>) =>
    unary(d.logger, method, async (call: ServerUnaryCall<Req, Res>) => {
      try {
        const caller = d.auth.require(call);
        if (caller.kind !== 'admin') {
          d.logger.warn({ caller: caller.uri, method, peer: call.getPeer() }, 'admin API refused a non-admin identity');
          throw new AmbitError('AMBIT_ERR_AUTH_DENIED', `the admin API admits only admin identities; caller is ${caller.uri}`);
        }
        const res = await fn(call.request, caller.uri);
        d.metrics.admin.inc({ method, result: 'ok' });
        return res;
      } catch (err) {
        d.metrics.admin.inc({ method, result: 'error' });
        throw err;
      }
    });

  /** Where a root rotation stands, judged from every node's acknowledged bundle and issued certificates. */
  const rotation = async (): Promise<{ status: RotationStatus; input: RotationInput; nodes: NodeView[] }> => {
    const nodes = await d.nodes.list();
    const input: RotationInput = {
      state: d.ca.rotationState(),
      bundle: d.ca.roots().map((r) => r.fingerprint),
      active: d.ca.activeRootFingerprint(),
      nodes,
      holds: (node, identity) => {
        try {
          return d.registry.mayIssue(node, parseSpiffeId(identity));
        } catch {
          return false;
        }
      },
      now: d.now(),
    };
    return { status: rotationStatus(input), input, nodes };
  };

  const nodeStatus = (n: NodeView, r: RotationStatus): pb.NodeStatus => ({
    name: n.name,
    connected: n.connected,
    ackedRevision: n.ackedRevision,
    nackedRevision: n.nackedRevision,
    nackReason: n.nackReason,
    lastSeenMs: n.lastSeen,
    registeredAtMs: n.registeredAt,
    certExpiresAtMs: n.certExpiresAt,
    workloads: d.registry.workloadsOnNode(n.name).length,
    hboneAddress: n.hboneAddress,
    trustedRoots: [...n.trustedRoots],
    bundleCurrent: r.byNode.get(n.name)?.bundleCurrent ?? false,
    oldRootCertificates: r.byNode.get(n.name)?.oldCertificates ?? 0,
    oldRootCertificatesUntilMs: r.byNode.get(n.name)?.oldUntil ?? 0,
  });

  const caResponse = (r: RotationStatus): pb.GetCaResponse => ({
    trustDomain: d.ca.trustDomain,
    trustBundlePem: d.ca.bundlePem(),
    roots: d.ca.roots().map((r) => ({
      pem: r.pem, subject: r.subject, fingerprintSha256: r.fingerprint, notBeforeMs: r.notBefore, notAfterMs: r.notAfter, active: r.active,
    })),
    rotation: {
      phase: r.state,
      nodesWithoutBundle: [...r.nodesWithoutBundle],
      oldRootCertificates: r.oldCertificates,
      nodesWithOldCertificates: [...r.nodesWithOldCertificates],
      oldRootCertificatesUntilMs: r.oldUntil,
      safeToActivate: r.safeToActivate,
      safeToRetire: r.safeToRetire,
      blocking: r.blocking,
    },
  });

  const parseKind = (kind: string): Kind | undefined => {
    if (kind === '') return undefined;
    if (!(KINDS as readonly string[]).includes(kind)) {
      throw new AmbitError('AMBIT_ERR_RESOURCE_INVALID', `unknown kind ${JSON.stringify(kind)}; expected one of ${KINDS.join(', ')}`, { details: { field: 'kind', value: kind } });
    }
    return kind as Kind;
  };

  return {
    createJoinToken: admin('CreateJoinToken', async (req: pb.CreateJoinTokenRequest, who) => {
      const ttl = req.ttlMs > 0 ? req.ttlMs : DEFAULT_TOKEN_TTL_MS;
      const t = await d.tokens.create(req.node, ttl, d.ca.activeRootFingerprint());
      d.logger.info({ node: req.node, by: who, expiresAt: new Date(t.expiresAt).toISOString() }, 'join token created');
      return { token: t.token, expiresAtMs: t.expiresAt };
    }),

    listNodes: admin('ListNodes', async () => {
      const { status, nodes } = await rotation();
      return { nodes: nodes.map((n) => nodeStatus(n, status)), revision: d.registry.revision };
    }),

    apply: admin('Apply', async (req: pb.ApplyRequest, who) => {
      // Validate every document first: a batch with one bad resource writes nothing.
      const wire = req.resources.map(resourceFromWire);
      const resources = validateAll(wire.map((r, i) => ({ doc: toDocument(r), where: `resource #${i + 1}` })));
      // metadata.revision as sent: the revision each update is based on (0: none), checked against the current one.
      const bases = wire.map((r) => r.metadata.revision);
      for (let attempt = 1; ; attempt++) {
        const expected = d.registry.revision;
        const plan = d.registry.planApply(resources, req.createOnly, bases);
        if (req.dryRun || plan.changes.length === 0) {
          return { revision: expected, results: plan.results.map((r) => ({ key: keyToWire(r.key), outcome: r.outcome })) };
        }
        try {
          const cs = await d.store.commit(plan.changes, expected);
          d.logger.info({ by: who, revision: cs.revision, changes: plan.results.filter((r) => r.outcome !== 'unchanged').map((r) => `${r.key.kind}/${r.key.namespace}/${r.key.name} ${r.outcome}`) }, 'resources applied');
          return { revision: cs.revision, results: plan.results.map((r) => ({ key: keyToWire(r.key), outcome: r.outcome })) };
        } catch (err) {
          if (err instanceof AmbitError && err.code === 'AMBIT_ERR_RESOURCE_CONFLICT' && d.registry.revision !== expected && attempt < COMMIT_ATTEMPTS) continue;
          throw err;
        }
      }
    }),

    delete: admin('Delete', async (req: pb.DeleteRequest, who) => {
      const keys: ResourceKey[] = req.keys.map(keyFromWire);
      for (let attempt = 1; ; attempt++) {
        const expected = d.registry.revision;
        const plan = d.registry.planDelete(keys, req.ignoreNotFound);
        if (plan.changes.length === 0) return { revision: expected, deleted: [] };
        try {
          const cs = await d.store.commit(plan.changes, expected);
          d.logger.info({ by: who, revision: cs.revision, deleted: plan.deleted.map((k) => `${k.kind}/${k.namespace}/${k.name}`) }, 'resources deleted');
          return { revision: cs.revision, deleted: plan.deleted.map(keyToWire) };
        } catch (err) {
          if (err instanceof AmbitError && err.code === 'AMBIT_ERR_RESOURCE_CONFLICT' && d.registry.revision !== expected && attempt < COMMIT_ATTEMPTS) continue;
          throw err;
        }
      }
    }),

    get: admin('Get', async (req: pb.GetRequest) => {
      const key = keyFromWire(req.key);
      const r = d.registry.get(key);
      if (!r) throw new AmbitError('AMBIT_ERR_RESOURCE_NOT_FOUND', `${key.kind} ${key.namespace}/${key.name} not found`, { details: { ...key } });
      return resourceToWire(r);
    }),

    list: admin('List', async (req: pb.ListRequest) => ({
      resources: d.registry.list(parseKind(req.kind), req.namespace || undefined).map(resourceToWire),
      revision: d.registry.revision,
    })),

    listRoutes: admin('ListRoutes', async (req: pb.ListRoutesRequest) => {
      if (req.kind !== 'HTTPRoute' && req.kind !== 'GRPCRoute') {
        throw new AmbitError('AMBIT_ERR_RESOURCE_INVALID', `kind ${JSON.stringify(req.kind)} has no route status; expected HTTPRoute or GRPCRoute`, { details: { field: 'kind', value: req.kind } });
      }
      let routes: RouteResource[];
      if (req.name !== '') {
        const key = { kind: req.kind, namespace: req.namespace || 'default', name: req.name } as const;
        const r = d.registry.get(key);
        if (!r) throw new AmbitError('AMBIT_ERR_RESOURCE_NOT_FOUND', `${key.kind} ${key.namespace}/${key.name} not found`, { details: { ...key } });
        routes = [r as RouteResource];
      } else routes = d.registry.list(req.kind, req.namespace || undefined) as RouteResource[];
      // Status is read from the registry as it is now: one view for every route of the answer.
      const mesh = {
        service: (namespace: string, name: string) => {
          const s = d.registry.get({ kind: 'Service', namespace, name });
          return s?.kind === 'Service' ? s : undefined;
        },
        faultInjection: (namespace: string, name: string) => {
          const f = d.registry.get({ kind: 'FaultInjection', namespace, name });
          return f?.kind === 'FaultInjection' ? f : undefined;
        },
        referenceGrants: (namespace: string) => d.registry.list('ReferenceGrant', namespace).flatMap((g) => (g.kind === 'ReferenceGrant' ? [g] : [])),
      };
      return {
        routes: routes.map((r) => ({ route: resourceToWire(r), parents: routeStatusToWire(routeStatus(r, mesh)) })),
        revision: d.registry.revision,
      };
    }),

    getCa: admin('GetCa', async () => caResponse((await rotation()).status)),

    rotateCa: admin('RotateCa', async (req: pb.RotateCaRequest, who) => {
      const phase = parsePhase(req.phase);
      if (phase !== 'prepare') {
        const { status, input } = await rotation();
        try {
          assertRotationSafe(phase, status, input);
        } catch (err) {
          if (!req.force) {
            d.logger.warn({ by: who, phase, blocking: status.blocking }, 'CA root rotation phase refused: not safe yet');
            throw err;
          }
          d.logger.warn({ by: who, phase, overridden: status.blocking }, 'CA root rotation phase forced although not safe');
        }
      }
      d.ca.rotate(phase);
      d.logger.warn({ by: who, phase, forced: req.force }, 'CA root rotation phase applied');
      return { ca: caResponse((await rotation()).status), phase };
    }),

    explain: admin('Explain', async (req: pb.ExplainRequest) => explanationToWire(d.explainer.explain(explainRequestFromWire(req)))),
    createConsoleLogin: admin('CreateConsoleLogin', async (req: pb.CreateConsoleLoginRequest, who) => {
      const url = d.consoleUrl();
      if (!url) throw new AmbitError('AMBIT_ERR_CONSOLE_LOGIN', 'the web console is off (ambit-controller --console none)');
      const t = d.consoleLogins.createLogin(who, req.ttlMs > 0 ? req.ttlMs : DEFAULT_LOGIN_TTL_MS);
      d.logger.info({ by: who, expiresAt: new Date(t.expiresAt).toISOString() }, 'console login token created');
      return { token: t.token, expiresAtMs: t.expiresAt, consoleUrl: url };
    }),

    status: admin('Status', async () => {
      const counts = d.registry.counts();
      const rot = await rotation();
      return {
        version: d.version,
        trustDomain: d.ca.trustDomain,
        store: d.store.backend,
        revision: d.registry.revision,
        workloads: counts.Workload,
        services: counts.Service,
        policies: counts.AuthorizationPolicy,
        nodes: rot.nodes.map((n) => nodeStatus(n, rot.status)),
        ca: caResponse(rot.status),
        uptimeMs: d.now() - d.startedAt,
      };
    }),
  };
}
