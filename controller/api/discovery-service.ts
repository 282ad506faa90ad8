import { status, type ServerDuplexStream, type StatusObject } from '@grpc/grpc-js';
import { isIP } from 'node:net';
import type { DiscoveryServer, WatchRequest, WatchResponse } from '../../shared/proto/gen/ambit.ts';
import { AmbitError } from '../../shared/errors.ts';
import { toStatus } from '../../shared/grpc-errors.ts';
import { changeToWire, resourceToWire } from '../../shared/resources/wire.ts';
import { CatchUp } from './catch-up.ts';
import type { Change, ChangeSet, Resource } from '../../shared/resources/types.ts';
import { subscriptionHost } from '../../shared/service-host.ts';
import { ScopeIndex, type HostAnswer, type NodeScope } from './watch-scope.ts';
import type { Logger } from '../../shared/logger.ts';
import type { CertificateAuthority } from '../ca/authority.ts';
import type { NodeTracker } from '../registry/node-tracker.ts';
import type { Registry } from '../registry/registry.ts';
import type { Store } from '../store/store.ts';
import type { ControllerMetrics } from '../metrics.ts';
import type { PeerAuthenticator } from './peer.ts';
import type { TelemetryWindow } from '../telemetry/telemetry-window.ts';

export interface DiscoveryDeps {
  readonly registry: Registry;
  readonly store: Store;
  readonly ca: CertificateAuthority;
  readonly nodes: NodeTracker;
  readonly auth: PeerAuthenticator;
  readonly logger: Logger;
  readonly metrics: ControllerMetrics;
  /** The store's identity (Store.identity), sent on every response so agents can refuse state from another store. */
  readonly storeId: string;
  /** Where agents' traffic reports go (the console's graph and denials); reports are ignored without it. */
  readonly telemetry?: TelemetryWindow;
  /** How long a new stream may take to send its WatchStart. */
  readonly startTimeoutMs?: number;
  /**
   * Node scope: how often a stream that was sent nothing while the mesh moved
   * on is told the revision it is now current at (an empty response), so its
   * acked revision (ambitctl node list) follows the mesh at a cost bounded
   * by streams per interval, not by changes. Default 1 s.
   */
  readonly progressIntervalMs?: number;
}

type Stream = ServerDuplexStream<WatchRequest, WatchResponse>;

/**
 * Discovery.Watch. Per stream: authenticate the node, wait for WatchStart,
 * send what the agent lacks (deltas since its revision when the store still
 * has them, else a full snapshot), then every later change set in revision
 * order. Change sets that arrive while the first response is being prepared
 * are buffered, so nothing falls between the catch-up and the live feed.
 */
/** "ip:port" with a real IP and port, else undefined (ignored rather than trusted). */
function validEndpoint(addr: string): string | undefined {
  const i = addr.lastIndexOf(':');
  if (i <= 0) return undefined;
  const host = addr.slice(0, i).replace(/^\[(.*)\]$/, '$1');
  const port = Number(addr.slice(i + 1));
  return isIP(host) && Number.isInteger(port) && port > 0 && port < 65536 ? addr : undefined;
}

/**
 * Ends a Watch stream with an error status the agent receives. Not
 * call.destroy(err): grpc-js then drops the stream without ever sending the
 * status, and the agent waits on a silent stream instead of reconnecting.
 * Emitting 'error' is grpc-js's way to finish a server stream with a status.
 */
function endWithStatus(call: Stream, message: string, st: Partial<StatusObject>): void {
  call.emit('error', Object.assign(new Error(message), st));
}

/** Subscribed hosts in canonical form, and answers (not found) for those that are not hosts at all. */
function canonicalHosts(hosts: readonly string[]): { hosts: string[]; invalid: HostAnswer[] } {
  const out = new Set<string>();
  const invalid: HostAnswer[] = [];
  for (const h of hosts) {
    const c = subscriptionHost(h);
    if (c === undefined) invalid.push({ host: h, found: false });
    else out.add(c);
  }
  return { hosts: [...out], invalid };
}

export function discoveryService(d: DiscoveryDeps): { server: DiscoveryServer; closeAll: () => void; stop: () => void } {
  const open = new Set<Stream>();
  // Node-scoped streams: one registry listener hands each change set only to the streams it concerns (watch-scope.ts).
  const scopes = new ScopeIndex(d.registry);
  const scoped = new Map<NodeScope, (cs: ChangeSet, before: ReadonlyMap<string, Resource | undefined>) => void>();
  const stopScoped = d.registry.onChange((cs, before) => {
    if (scoped.size === 0) return;
    for (const s of scopes.concerned(cs, before)) scoped.get(s)?.(cs, before);
  });
  const catchUps = new CatchUp(d.registry, d.store);
  // The node → HBONE address map every start sends, sorted once per change (this listener runs before the streams').
  let endpoints: ReturnType<NodeTracker['endpoints']> | undefined;
  const stopEndpoints = d.nodes.onEndpointsChange(() => {
    endpoints = undefined;
  });
  const nodeEndpoints = (): ReturnType<NodeTracker['endpoints']> => (endpoints ??= d.nodes.endpoints());
  const progress = new Set<() => void>();
  const progressTimer = setInterval(() => {
    for (const p of progress) p();
  }, d.progressIntervalMs ?? 1_000);
  progressTimer.unref();
  const watch = (call: Stream): void => {
    let node: string;
    try {
      const caller = d.auth.require(call);
      if (caller.kind !== 'node' || !caller.name) throw new AmbitError('AMBIT_ERR_AUTH_DENIED', `only node identities may watch; caller is ${caller.uri}`);
      node = caller.name;
    } catch (err) {
      endWithStatus(call, (err as Error).message, toStatus(err));
      return;
    }
    open.add(call);
    const log = d.logger.child({ node, peer: call.getPeer() });
    let started = false;
    let live = false;
    let sentRevision = 0;
    const pending: ChangeSet[] = [];
    let closed = false;
    /** Set once a node-scoped stream has sent its snapshot. */
    let scope: NodeScope | undefined;
    let nodeScoped = false;
    /** Hosts to subscribe asked for before the snapshot: it answers them. */
    const early: { hosts: string[]; drop: string[] } = { hosts: [], drop: [] };

    const send = (partial: Partial<WatchResponse> & { revision: number }, type: 'snapshot' | 'delta'): void => {
      if (closed) return;
      const res: WatchResponse = { snapshot: false, resources: [], changes: [], trustBundlePem: '', nodesSet: false, nodes: [], activeRootSha256: '', answers: [], ...partial, storeId: d.storeId };
      call.write(res);
      sentRevision = res.revision;
      d.metrics.watchPushes.inc({ type });
    };
    const sendChangeSet = (cs: ChangeSet): void => {
      if (cs.revision <= sentRevision) return;
      send({ revision: cs.revision, changes: cs.changes.map(changeToWire) }, 'delta');
    };
    // A full watch follows every change set (from its WatchStart on); a node-scoped one is handed its share through `scopes`.
    let unsubscribe = (): void => undefined;
    const sendScoped = (changes: readonly Change[], answers: readonly HostAnswer[]): void => {
      // The registry's revision: this stream has been given every change set up to it, and skipped those that did not concern it.
      if (changes.length > 0 || answers.length > 0) send({ revision: d.registry.revision, changes: changes.map(changeToWire), answers: [...answers] }, 'delta');
    };
    const markProgress = (): void => {
      if (sentRevision < d.registry.revision) send({ revision: d.registry.revision }, 'delta');
    };
    const subscribe = (hosts: readonly string[], drop: readonly string[]): void => {
      if (!scope) {
        early.hosts.push(...hosts);
        early.drop.push(...drop);
        return;
      }
      const want = canonicalHosts(hosts);
      const out = new Map<string, Change>();
      scope.drop(canonicalHosts(drop).hosts, out);
      const answers = [...scope.subscribe(want.hosts, out), ...want.invalid];
      sendScoped([...out.values()], answers);
    };
    // Also fired when a rotation activates a new root (same bundle, new signer): the agent renews what the old root signed.
    const unsubscribeBundle = d.ca.onBundleChange((pem) => {
      if (live) send({ revision: sentRevision, trustBundlePem: pem, activeRootSha256: d.ca.activeRootFingerprint() }, 'delta');
    });
    const unsubscribeNodes = d.nodes.onEndpointsChange(() => {
      if (live) send({ revision: sentRevision, nodesSet: true, nodes: nodeEndpoints() }, 'delta');
    });
    const startTimer = setTimeout(() => {
      if (!started) endWithStatus(call, 'no WatchStart within the deadline', { code: status.DEADLINE_EXCEEDED, details: 'no WatchStart within the deadline' });
    }, d.startTimeoutMs ?? 15_000);

    const cleanup = (why: string): void => {
      if (closed) return;
      closed = true;
      clearTimeout(startTimer);
      unsubscribe();
      if (scope) {
        scoped.delete(scope);
        progress.delete(markProgress);
        scope.close();
      }
      unsubscribeBundle();
      unsubscribeNodes();
      open.delete(call);
      d.metrics.watchStreams.dec();
      d.nodes.streamClosed(node);
      log.info({ why, revision: sentRevision }, 'watch stream closed');
    };
    d.metrics.watchStreams.inc();
    d.nodes.streamOpened(node);
    call.on('end', () => {
      cleanup('agent ended the stream');
      call.end();
    });
    call.on('error', (err: Error) => cleanup(`stream error: ${err.message}`));
    call.on('cancelled', () => cleanup('cancelled'));
    call.on('close', () => cleanup('closed'));

    const catchUp = async (resume: number, nodeScope: { subscriptions: readonly string[] } | undefined): Promise<void> => {
      // An agent coming from another replica may hold a revision this replica has not delivered yet: catch up first, never answer from behind it.
      if (resume > d.registry.revision && d.store.sync) await d.store.sync();
      const current = d.registry.revision;
      const bundle = d.ca.bundlePem();
      const activeRootSha256 = d.ca.activeRootFingerprint();
      if (nodeScope) {
        if (closed) return;
        // Always a snapshot: it is small (the node's share), and it replaces whatever the agent held, so nothing it no longer needs stays.
        // From here on (same tick) every change set reaches this stream through `scopes`.
        const s = scopes.open(node);
        scope = s;
        scoped.set(s, (cs, before) => sendScoped(s.filter(cs, before), []));
        progress.add(markProgress);
        const want = canonicalHosts([...nodeScope.subscriptions, ...early.hosts]);
        const dropped = new Set(canonicalHosts(early.drop).hosts);
        const snap = s.snapshot(want.hosts.filter((h) => !dropped.has(h)));
        send({ revision: current, snapshot: true, resources: snap.resources.map(resourceToWire), answers: [...snap.answers, ...want.invalid], trustBundlePem: bundle, activeRootSha256, nodesSet: true, nodes: nodeEndpoints() }, 'snapshot');
        log.info({ resume, revision: current, scope: 'node', resources: snap.resources.length, subscriptions: s.hosts.size }, 'watch started with a node-scoped snapshot');
        return;
      }
      if (resume > 0 && resume <= current) {
        const changes = await catchUps.deltasSince(resume);
        if (closed) return;
        // Sets that arrived during the store read reach the stream through `pending`.
        if (changes !== undefined) {
          send({ revision: current, changes, trustBundlePem: bundle, activeRootSha256, nodesSet: true, nodes: nodeEndpoints() }, 'delta');
          log.info({ resume, revision: current, changes: changes.length }, 'watch resumed with deltas');
          return;
        }
      }
      // The registry may have moved on during a store read: the snapshot is of now, and the pending sets it already holds are skipped by revision.
      send({ revision: d.registry.revision, snapshot: true, resources: catchUps.snapshot(), trustBundlePem: bundle, activeRootSha256, nodesSet: true, nodes: nodeEndpoints() }, 'snapshot');
      log.info({ resume, revision: sentRevision }, 'watch started with snapshot');
    };

    call.on('data', (req: WatchRequest) => {
      const r = req.request;
      if (!r) return;
      if (r.$case === 'start') {
        if (started) return;
        started = true;
        clearTimeout(startTimer);
        const scopeName = r.start.scope || 'full';
        if (scopeName !== 'full' && scopeName !== 'node') {
          const msg = `WatchStart.scope must be "full" or "node", not ${JSON.stringify(r.start.scope)}`;
          endWithStatus(call, msg, { code: status.INVALID_ARGUMENT, details: msg });
          return;
        }
        nodeScoped = scopeName === 'node';
        const nodeScope = nodeScoped ? { subscriptions: r.start.subscriptions } : undefined;
        if (!nodeScope) unsubscribe = d.registry.onChange((cs) => (live ? sendChangeSet(cs) : pending.push(cs)));
        void d.nodes.seen(node, r.start.certExpiresAtMs > 0 ? { certExpiresAt: r.start.certExpiresAtMs } : {}).catch(() => undefined);
        const endpoint = validEndpoint(r.start.hboneAddress);
        (endpoint ? d.nodes.setEndpoint(node, endpoint) : Promise.resolve())
          .catch((err: unknown) => log.warn({ err }, 'recording the node HBONE address failed'))
          .then(() => catchUp(r.start.resumeRevision, nodeScope))
          .then(
          () => {
            live = true;
            for (const cs of pending.splice(0)) sendChangeSet(cs);
          },
          (err: unknown) => {
            log.error({ err }, 'watch catch-up failed');
            endWithStatus(call, 'catch-up failed', toStatus(err));
          },
        );
        return;
      }
      if (r.$case === 'subscribe') {
        // A full watch already sends everything.
        if (nodeScoped) subscribe(r.subscribe.hosts, r.subscribe.drop);
        return;
      }
      if (r.$case === 'report') {
        if (!d.telemetry) return;
        const out = d.telemetry.record(node, r.report);
        d.metrics.telemetry.inc({ kind: 'edge', result: 'kept' }, out.edges);
        d.metrics.telemetry.inc({ kind: 'denial', result: 'kept' }, out.denials);
        const refused = [...out.refusedEdges, ...out.refusedDenials];
        if (refused.length > 0) {
          d.metrics.telemetry.inc({ kind: 'edge', result: 'refused' }, out.refusedEdges.length);
          d.metrics.telemetry.inc({ kind: 'denial', result: 'refused' }, out.refusedDenials.length);
          // Node authorization, as for certificates: a node speaks only for its own workloads.
          log.warn({ code: 'AMBIT_ERR_NODE_UNAUTHORIZED', refused: refused.slice(0, 10), count: refused.length }, 'telemetry about workloads of other nodes refused');
        }
        return;
      }
      const ack = r.ack;
      if (ack.ok) {
        void d.nodes.ack(node, ack.revision, ack.certExpiresAtMs, ack.trustedRoots).catch((err: unknown) => log.warn({ err }, 'recording ack failed'));
      } else {
        d.metrics.watchNacks.inc();
        log.warn({ revision: ack.revision, reason: ack.reason }, 'agent refused (nacked) a watch response');
        void d.nodes.nack(node, ack.revision, ack.reason, ack.trustedRoots).catch((err: unknown) => log.warn({ err }, 'recording nack failed'));
      }
    });
  };
  return {
    server: { watch },
    closeAll: () => {
      for (const s of open) s.end();
    },
    stop: () => {
      stopScoped();
      stopEndpoints();
      catchUps.stop();
      clearInterval(progressTimer);
    },
  };
}
