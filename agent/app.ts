import { join } from 'node:path';
import { ensurePrivateDir } from '../shared/files.ts';
import { formatHostPort } from '../shared/config-parse.ts';
import { HttpEndpoint } from '../shared/http-endpoint.ts';
import type { Logger } from '../shared/logger.ts';
import { createMetricsRegistry } from '../shared/metrics.ts';
import { nodeId } from '../shared/spiffe-id.ts';
import { createTracing } from '../shared/tracing.ts';
import { adminEndpoint } from './admin-server.ts';
import { loopbackAddressFor, type AgentConfig } from './config.ts';
import { CaClient } from './identity/ca-client.ts';
import { CertManager, chainsTo } from './identity/cert-manager.ts';
import { establishNodeIdentity, saveNodeInfo } from './identity/node-identity.ts';
import { OutlierDetector } from './connection/outlier.ts';
import { ConnectionTracker } from './proxy/connection-tracker.ts';
import { CaptureRules, spawnCaptureExec } from './proxy/capture.ts';
import { defaultDataplaneBinary, NativeInbound } from './dataplane/inbound.ts';
import { NativeOutbound, type DataplaneListener } from './dataplane/outbound.ts';
import { TelemetryReporter } from './proxy/telemetry-reporter.ts';
import { RequestMetrics } from './proxy/request-metrics.ts';
import { dataplaneSpans } from './dataplane/span-export.ts';
import { createAgentMetrics } from './proxy/metrics.ts';
import type { OutboundDeps } from './connection/routing.ts';
import { MeshState } from './state/mesh-state.ts';
import { loadState, serializeState, statePath } from './state/state-cache.ts';
import { Persister } from './state/persister.ts';
import { checkUpdate, type RefusalReason } from './state/store-guard.ts';
import { AmbitError } from '../shared/errors.ts';
import { WatchClient, type WatchUpdate } from './state/watch-client.ts';
import { destinationWait, followRelated, Subscriptions } from './state/subscriptions.ts';
import { routeBackends } from './state/route-backends.ts';
import { bundleCertificates, certificateFingerprint, parseCertificates } from '../shared/tls.ts';
import type { X509Certificate } from 'node:crypto';

export const AGENT_VERSION = '0.1.0';

/**
 * When the controller activates a new CA root, certificates from the old root
 * are renewed within this spread (random per certificate, so a fleet does not
 * hit the CA at one instant) rather than at half-life: the old root can then be
 * retired minutes after activation, not one certificate lifetime later.
 */
const ROOT_ROTATION_RENEW_SPREAD_MS = 10_000;
/** After a drain, how long HBONE sessions get at least to flush their last bytes (and cut connections' resets) before they are destroyed. */
const FLUSH_GRACE_MS = 1_000;

export interface AgentApp {
  readonly hboneAddress: string;
  /** Graceful (SIGTERM): stop accepting, drain open connections up to --drain-timeout, then close everything. */
  close(): Promise<void>;
}

export interface AgentDeps {
  readonly logger: Logger;
  /** Access log: one JSON line per connection (DESIGN §7). */
  readonly accessLog: Logger;
  readonly now?: () => number;
}

/**
 * Builds and starts the agent. Startup order matters for resilience: the
 * node identity and the cached state are loaded before anything listens, so
 * an agent restarted while the controller is down serves at once from disk.
 */
export async function startAgent(cfg: AgentConfig, deps: AgentDeps): Promise<AgentApp> {
  const now = deps.now ?? Date.now;
  const log = deps.logger;
  ensurePrivateDir(cfg.dataDir);
  const cleanups: (() => Promise<void> | void)[] = [];
  const runCleanups = async (): Promise<void> => {
    for (const c of cleanups.splice(0).reverse()) {
      try {
        await c();
      } catch (err) {
        log.warn({ err }, 'shutdown step failed');
      }
    }
  };
  try {
    // --- persistence: every data-directory write goes through here (a full disk must not stop the agent)
    const persistState = { failures: (_path: string, _code: string): void => undefined, health: (_healthy: boolean): void => undefined };
    const persister = new Persister({
      dataDir: cfg.dataDir,
      logger: log,
      now,
      onFailure: (path, code) => persistState.failures(path, code),
      onHealth: (healthy) => persistState.health(healthy),
    });
    cleanups.push(() => persister.close());
    const persistWrite = (path: string, data: string): void => void persister.write(path, data);

    // --- identity
    let caClient: CaClient | undefined;
    const certs = new CertManager({
      dir: join(cfg.dataDir, 'certs'),
      logger: log,
      now,
      write: persistWrite,
      remove: (path) => void persister.remove(path),
      issuer: () => (identity, keys) => {
        if (!caClient) throw new Error('no controller client yet');
        return caClient.createCertificate(identity, keys);
      },
    });
    cleanups.push(() => certs.close());
    certs.load();
    const info = await establishNodeIdentity({ dataDir: cfg.dataDir, node: cfg.node, controller: cfg.controller, joinToken: cfg.join, kubernetesTokenFile: cfg.kubernetesTokenFile, caBundle: cfg.caBundle, certs, logger: log, now, write: persistWrite });
    const nodeIdentity = nodeId(info.trustDomain, cfg.node);

    // --- state: last good state from disk first
    const state = new MeshState(cfg.node, info.trustDomain, { clusterDomain: cfg.clusterDomain, clusterId: cfg.clusterId });
    const cached = loadState(cfg.dataDir, log, { maxSubscriptions: cfg.watchSubscriptions });
    // Ready needs *some* state (cached or from the controller), not a
    // non-zero revision: an empty mesh's first snapshot is revision 0.
    let haveState = cached !== undefined;
    // The store identity of the state served (agent/state/store-guard.ts); persisted with it.
    let storeId = cached?.storeId ?? '';
    if (cached) {
      state.apply({ revision: cached.revision, snapshot: cached.resources, bundlePem: cached.bundlePem, nodes: cached.nodes });
      log.info({ revision: cached.revision, resources: cached.resources.length, storeId }, 'serving cached mesh state until the controller answers');
    }
    const bundlePem = (): string => state.bundlePem || info.bundlePem;
    const rebuildCaClient = (): void => {
      const node = certs.get(nodeIdentity.uri);
      if (!node) return;
      caClient?.close();
      caClient = new CaClient(cfg.controller, { keyPem: node.keyPem, certChainPem: node.chainPem, bundlePem: bundlePem(), trustDomain: info.trustDomain, node: cfg.node, expiresAt: node.notAfter }, { now });
    };
    rebuildCaClient();
    cleanups.push(() => caClient?.close());

    // --- telemetry
    const registry = createMetricsRegistry();
    // Passive health of service endpoints (connection/routing.ts skips the ejected ones).
    const outlier = new OutlierDetector({
      consecutiveFailures: cfg.outlierConsecutiveFailures, baseEjectionMs: cfg.outlierBaseEjection,
      maxEjectionMs: cfg.outlierMaxEjection, maxEjectionPercent: cfg.outlierMaxEjectionPercent, now,
    });
    // The data plane's HTTP ejections join the connection-level ones once it is started.
    let httpEjected: () => readonly { service: string; endpoint: string; workload: string }[] = () => [];
    const metrics = createAgentMetrics(registry, { ejected: () => [...outlier.ejected(), ...httpEjected()] });
    metrics.persistHealthy.set(persister.healthy ? 1 : 0);
    persistState.failures = (path, code) => metrics.persistFailures.inc({ path, errno: code || 'unknown' });
    persistState.health = (healthy) => metrics.persistHealthy.set(healthy ? 1 : 0);
    // Failures during start-up (before the registry existed) are counted too.
    for (const f of persister.failures()) metrics.persistFailures.inc({ path: f.path, errno: f.code || 'unknown' }, f.attempts);
    // Spans export through the SDK when --traces-exporter otlp; a graceful
    // stop sends what is queued (this cleanup runs after the drain's, which
    // end the last connections' spans).
    const tracing = await createTracing(cfg.tracing, 'ambit-agent', { serviceVersion: AGENT_VERSION, node: cfg.node, trustDomain: info.trustDomain, instance: nodeIdentity.uri }, { logger: log });
    cleanups.push(() => tracing.shutdown());
    const tracer = tracing.tracer;
    const refreshCertGauges = (): void => {
      metrics.certExpiry.reset();
      for (const e of certs.entries()) metrics.certExpiry.set({ identity: e.identity.uri }, e.notAfter / 1000);
      const earliest = certs.earliestExpiry();
      metrics.survival.set(earliest > 0 ? Math.max(0, (earliest - now()) / 1000) : 0);
    };

    // --- data plane
    const tracker = new ConnectionTracker();
    const telemetry = new TelemetryReporter(metrics.tcp);
    // Node scope (docs/scale.md): destinations are subscribed on first use; `watch` is made below, once the state it feeds is wired.
    let watchRef: WatchClient | undefined;
    // A change of the followed set is saved with the state (only once there is state: a cache must never stand for a mesh not yet received).
    const subscriptions = cfg.watchScope === 'node' ? new Subscriptions({ max: cfg.watchSubscriptions, send: (hosts, drop) => watchRef?.subscribe(hosts, drop), changed: () => { if (haveState) persist(); } }) : undefined;
    // What the workloads used before a restart: the first WatchStart asks for it again, so its snapshot keeps what they call.
    if (subscriptions && cached && cached.subscriptions.length > 0) {
      subscriptions.restore(cached.subscriptions, (host) => state.holdsHost(host));
      log.info({ subscriptions: subscriptions.size }, 'following the destinations cached before the restart');
    }
    let saveTimer: NodeJS.Timeout | undefined;
    // Serialized at each attempt, so a retry after a full disk writes the state held then, not a stale one.
    const stateNow = (): string => serializeState({ revision: state.revision, storeId, resources: state.resources(), nodes: state.nodes(), bundlePem: state.bundlePem, subscriptions: subscriptions?.hosts() ?? [] });
    // One writer of state.json, batched: the state and the followed set are written together, 100 ms after the last change of either.
    const persist = (): void => {
      clearTimeout(saveTimer);
      saveTimer = setTimeout(() => void persister.write(statePath(cfg.dataDir), stateNow), 100);
    };
    const related = (host: string): readonly string[] => {
      const key = state.serviceKeyOf(host);
      return key === undefined ? [] : routeBackends([...state.httpRoutes(), ...state.grpcRoutes()], key);
    };
    const awaitDestination = subscriptions ? destinationWait(subscriptions, { timeoutMs: cfg.connectTimeout, connected: () => watchRef?.connected ?? false, holds: (host) => state.holdsHost(host), related }) : undefined;
    const inboundDeps = { state, metrics, accessLog: deps.accessLog, tracer, tracker, connectTimeoutMs: cfg.connectTimeout, denials: telemetry, ...(awaitDestination ? { awaitDestination } : {}) };
    const outboundDeps: OutboundDeps = { state, metrics, accessLog: deps.accessLog, tracer, tracker, passthrough: cfg.passthrough, connectTimeoutMs: cfg.connectTimeout, outlier, ...(awaitDestination ? { awaitDestination } : {}) };
    const loopback = loopbackAddressFor(cfg.address);
    const dataplaneBinary = cfg.dataplaneBinary ?? defaultDataplaneBinary();
    // Every data-path listener is ambit-dataplane's: SOCKS5 and the upstream
    // listeners on loopback, and with transparent capture :15001 and :15006 on
    // all addresses (redirected connections arrive on the address iptables
    // picked: loopback for OUTPUT, the pod-facing interface for PREROUTING).
    const any = cfg.address.includes(':') ? '::' : '0.0.0.0';
    const listeners: DataplaneListener[] = [
      { entry: { kind: 'socks5' }, addr: formatHostPort({ host: loopback, port: cfg.socksPort }), label: 'SOCKS5' },
      ...cfg.upstreams.map((u): DataplaneListener => ({ entry: { kind: 'upstream', upstream: u }, addr: formatHostPort({ host: loopback, port: u.localPort }), label: `upstream (${u.namespace}/${u.workload})` })),
      ...(cfg.capture === 'transparent'
        ? [
          { entry: { kind: 'capture', captureMode: cfg.captureMode }, addr: formatHostPort({ host: any, port: cfg.outboundPort }), label: 'outbound capture' } as const,
          { entry: { kind: 'plaintext' }, addr: formatHostPort({ host: any, port: cfg.inboundPlaintextPort }), label: 'inbound plaintext capture' } as const,
        ]
        : []),
    ];
    const outbound = new NativeOutbound({
      listeners, outbound: outboundDeps, agentAddress: cfg.address, trustDomain: info.trustDomain, bundle: bundleCertificates(bundlePem), logger: log, now,
      http: {
        consecutiveFailures: cfg.outlierConsecutiveFailures, baseEjectionMs: cfg.outlierBaseEjection, maxEjectionMs: cfg.outlierMaxEjection,
        maxEjectionPercent: cfg.outlierMaxEjectionPercent, maxPendingRequests: cfg.httpMaxPendingRequests, maxConnections: cfg.httpMaxConnections,
        retryBudgetPercent: cfg.retryBudgetPercent, minRetryConcurrency: cfg.retryBudgetMinConcurrency, maxBufferedBodyBytes: cfg.httpMaxBufferedBody,
      },
      routes: () => ({
        routes: [...state.httpRoutes(), ...state.grpcRoutes()], fault: (namespace, name) => state.faultInjection(namespace, name), grants: (namespace) => state.referenceGrants(namespace),
      }),
    });
    httpEjected = () => outbound.httpEjections();
    const hbone = new NativeInbound({
      binary: dataplaneBinary,
      dataDir: cfg.dataDir,
      host: cfg.address,
      port: cfg.hbonePort,
      trustDomain: info.trustDomain,
      certs,
      bundlePem,
      logger: log,
      now,
      inbound: inboundDeps,
      mode: cfg.mode,
      upstreams: outbound,
      requests: { metrics: new RequestMetrics(registry, state, (labels, count) => telemetry.requests(labels, count)), accessLog: () => deps.accessLog.isLevelEnabled('info') },
      spans: dataplaneSpans(cfg.tracing, tracing, log),
    });
    // Before listen(): a start that fails after spawning the data plane must still end it.
    cleanups.push(() => hbone.destroy());
    // The data plane writes the per-request access log lines: at the access log's level (admin /logging changes it).
    const levelChanged = (): void => hbone.sendRequestTelemetry();
    deps.accessLog.on('level-change', levelChanged);
    cleanups.push(() => void deps.accessLog.off('level-change', levelChanged));
    const localIdentities = (): string[] => [...new Set(state.localWorkloads().map((w) => state.identityOf(w).uri))];
    // The identities it holds certificates for (from disk) go with the first
    // configuration: a data plane already serving (this agent restarted)
    // must not be left without them, even for a moment.
    hbone.refresh(localIdentities());
    const hboneAddr = await hbone.listen();
    const hboneAddress = formatHostPort({ host: cfg.address, port: hboneAddr.port });

    const syncCertificates = async (): Promise<void> => {
      const ids = [nodeIdentity, ...new Map(state.localWorkloads().map((w) => [state.identityOf(w).uri, state.identityOf(w)])).values()];
      hbone.refresh(localIdentities());
      await certs.want(ids);
    };
    certs.onChange((id) => {
      metrics.certRenewals.inc({ identity: id.uri });
      refreshCertGauges();
      if (id.uri === nodeIdentity.uri) rebuildCaClient();
    });

    const bound = await hbone.listenAll();
    const socksAddress = bound[0] ?? '';

    // --- transparent capture (iptables + SO_ORIGINAL_DST); needs CAP_NET_ADMIN
    let capture: CaptureRules | undefined;
    const captureTargets = (): { uids: number[]; workloads: { address: string; ports: number[] }[] } => ({
      uids: [...new Set(state.localWorkloads().flatMap((w) => (w.spec.uid === undefined ? [] : [w.spec.uid])))],
      workloads: state.localWorkloads().map((w) => ({ address: w.spec.address, ports: [...w.spec.ports] })),
    });
    if (cfg.capture === 'transparent') {
      const targets = captureTargets();
      capture = new CaptureRules({
        mode: cfg.captureMode,
        outboundPort: cfg.outboundPort,
        inboundPlaintextPort: cfg.inboundPlaintextPort,
        hbonePort: cfg.hbonePort,
        agentUid: process.getuid?.() ?? 0,
        workloadUids: targets.uids,
        localWorkloads: targets.workloads,
        podCidrs: (cfg.podCidrs ?? '').split(',').map((c) => c.trim()).filter(Boolean),
        exec: spawnCaptureExec,
      });
      await capture.install();
      cleanups.push(() => capture?.remove());
      log.info({ rules: capture.rules() }, 'capture rules installed');
    }

    // --- controller watch
    cleanups.push(() => {
      clearTimeout(saveTimer);
      if (haveState) persister.write(statePath(cfg.dataDir), stateNow);
      // Whatever still fails is lost with this process; the next start says what it found.
      persister.flush();
    });
    // The root the controller signs with, as it last said (empty until it does).
    let activeRoot = '';
    // The bundle's roots with their fingerprints, parsed once per bundle (asked on every ack).
    let roots: { pem: string; certs: { cert: X509Certificate; fingerprint: string }[] } = { pem: '', certs: [] };
    const bundleRoots = (): { cert: X509Certificate; fingerprint: string }[] => {
      const pem = bundlePem();
      if (pem !== roots.pem) roots = { pem, certs: parseCertificates(pem).map((cert) => ({ cert, fingerprint: certificateFingerprint(cert) })) };
      return roots.certs;
    };
    const trustedRoots = (): string[] => bundleRoots().map((r) => r.fingerprint);
    const renewFromOldRoots = (): void => {
      const root = bundleRoots().find((r) => r.fingerprint === activeRoot)?.cert;
      if (!root) {
        if (activeRoot) log.warn({ activeRoot }, 'the controller signs with a root that is not in the trust bundle; not renewing');
        return;
      }
      const n = certs.renewWhere((e) => !chainsTo(e.chainPem, root), ROOT_ROTATION_RENEW_SPREAD_MS);
      if (n > 0) log.info({ activeRoot, certificates: n, withinMs: ROOT_ROTATION_RENEW_SPREAD_MS }, 'renewing certificates that do not chain to the active CA root');
    };
    const applyUpdate = (u: WatchUpdate): void => {
      try {
        checkUpdate({ storeId: haveState ? storeId : '', revision: state.revision }, { storeId: u.storeId, revision: u.revision, snapshot: u.snapshot !== undefined }, cfg.acceptStore);
      } catch (err) {
        const reason = (err instanceof AmbitError ? err.details.reason : undefined) as RefusalReason | undefined;
        metrics.watchRejected.inc({ reason: reason ?? 'unknown' });
        log.error({ err, storeId: u.storeId, revision: u.revision, heldStoreId: storeId, heldRevision: state.revision, reason }, 'refusing controller state from another store or from behind the held revision; serving the state held');
        throw err;
      }
      const effect = state.apply(u);
      if (u.storeId !== '' && u.storeId !== storeId) {
        if (storeId !== '') log.warn({ storeId: u.storeId, was: storeId }, 'took state from a new store identity (--accept-store)');
        storeId = u.storeId;
      }
      haveState = true;
      metrics.watchUpdates.inc({ result: 'ack' });
      metrics.watchRevision.set(state.revision);
      if (effect.bundleChanged) {
        saveNodeInfo(cfg.dataDir, { ...info, bundlePem: state.bundlePem }, persistWrite);
        rebuildCaClient();
      }
      if (effect.policiesChanged) {
        const closed = tracker.recheck((facts) => state.authorizer.evaluate(facts), (facts) => state.authorizer.requestPolicy(facts));
        if (closed > 0) log.warn({ closed, revision: state.revision }, 'closed live connections a policy change now denies');
      }
      if (effect.localWorkloadsChanged || effect.bundleChanged) void syncCertificates().catch((err: unknown) => log.error({ err }, 'certificate sync failed'));
      if (u.activeRoot !== undefined && (u.activeRoot !== activeRoot || effect.bundleChanged)) {
        activeRoot = u.activeRoot;
        renewFromOldRoots();
      }
      // HTTP services' endpoint tables and route tables follow every change (endpoints, nodes, services, routes).
      outbound.refreshHttpServices();
      if (effect.localWorkloadsChanged && capture) {
        const t = captureTargets();
        void capture.updateWorkloads(t.uids, t.workloads).catch((err: unknown) => log.error({ err }, 'updating capture rules failed'));
      }
      persist();
      // After the state holds what they resolve to: connections waiting on them go on now.
      if (u.answers) subscriptions?.answered(u.answers);
      if (subscriptions && (u.answers || effect.routesChanged)) followRelated(subscriptions, related, cfg.connectTimeout);
    };
    const watch = new WatchClient({
      scope: cfg.watchScope,
      subscriptions: () => subscriptions?.hosts() ?? [],
      controller: cfg.controller,
      credentials: () => {
        const node = certs.get(nodeIdentity.uri);
        return { keyPem: node?.keyPem ?? '', certChainPem: node?.chainPem ?? '', bundlePem: bundlePem(), trustDomain: info.trustDomain, node: cfg.node, expiresAt: node?.notAfter ?? 0 };
      },
      hboneAddress,
      revision: () => state.revision,
      certExpiresAt: () => certs.earliestExpiry(),
      trustedRoots,
      report: () => telemetry.take(),
      reportIntervalMs: cfg.telemetryInterval,
      apply: (u) => {
        try {
          applyUpdate(u);
        } catch (err) {
          metrics.watchUpdates.inc({ result: 'nack' });
          throw err;
        }
      },
      logger: log,
      onStatus: (c) => {
        metrics.watchConnected.set(c ? 1 : 0);
        // The controller answers again: renewals waiting out a backoff go now.
        if (c) certs.retryFailed();
      },
    });
    watchRef = watch;
    watch.start();
    cleanups.push(() => watch.close());
    // Certificates for cached workloads are requested (or reloaded) now, not only after the controller answers.
    void syncCertificates().catch((err: unknown) => log.error({ err }, 'certificate sync failed'));

    // --- operational endpoints
    let draining = false;
    const isReady = (): { ready: boolean; why: string } => {
      if (draining) return { ready: false, why: 'draining' };
      if (hbone instanceof NativeInbound && hbone.failure) return { ready: false, why: hbone.failure };
      if (!haveState) return { ready: false, why: 'no mesh state yet (controller not reached, no cache)' };
      const missing = localIdentities().filter((u) => !certs.get(u));
      if (missing.length > 0) return { ready: false, why: `waiting for certificates: ${missing.join(', ')}` };
      // Persistence failing does not make the agent unready: it serves from
      // memory. It only loses the ability to restart without the controller,
      // which the body, /config_dump and ambit_agent_persist_healthy say.
      if (!persister.healthy) return { ready: true, why: `ready; persistence failing (serving from memory, retrying): ${persister.summary()}` };
      return { ready: true, why: 'ready' };
    };
    const metricsEndpoint = new HttpEndpoint({
      '/metrics': async (_req, res) => {
        refreshCertGauges();
        res.writeHead(200, { 'content-type': registry.contentType }).end(await registry.metrics());
      },
    });
    const readyEndpoint = new HttpEndpoint({
      '/healthz/ready': (_req, res) => {
        const r = isReady();
        res.writeHead(r.ready ? 200 : 503, { 'content-type': 'text/plain' }).end(`${r.why}\n`);
      },
    });
    const admin = adminEndpoint({
      state,
      certs,
      loggers: [log, deps.accessLog],
      now,
      extra: () => ({
        config: { ...cfg, join: cfg.join ? '(set)' : undefined },
        hboneAddress,
        dataplane: { binary: dataplaneBinary, listeners: listeners.map((l, i) => ({ what: l.label, addr: bound[i] ?? l.addr })) },
        watch: { connected: watch.connected, lastError: watch.lastError, lastUpdate: watch.lastUpdateAt ? new Date(watch.lastUpdateAt).toISOString() : '' },
        tunnelPool: { connections: outbound.sessions },
        // Endpoints out of balancing now: which, why, since and until when.
        ejectedEndpoints: outlier.ejected().map((e) => ({ ...e, since: new Date(e.since).toISOString(), until: new Date(e.until).toISOString() })),
        // HTTP endpoints the data plane ejected per request (5xx answers, failed connects).
        ejectedHttpEndpoints: outbound.httpEjections().map((e) => ({ ...e, since: new Date(e.since).toISOString(), until: new Date(e.until).toISOString() })),
        // The route tables the data plane decides HTTP requests by, as sent (key: service port, locality, client namespace).
        httpRouteTables: outbound.httpRouteTables(),
        connections: tracker.size,
        captureRules: capture?.rules() ?? [],
        ready: isReady(),
        store: { id: storeId, acceptStore: cfg.acceptStore ?? '' },
        persistence: { healthy: persister.healthy, dataDir: cfg.dataDir, failing: persister.failures() },
      }),
    });
    const metricsAddr = await metricsEndpoint.listen({ host: cfg.address, port: cfg.metricsPort });
    cleanups.push(() => metricsEndpoint.close());
    const readyAddr = await readyEndpoint.listen({ host: cfg.address, port: cfg.readyPort });
    cleanups.push(() => readyEndpoint.close());
    const adminAddr = await admin.listen({ host: loopback, port: cfg.adminPort });
    cleanups.push(() => admin.close());

    log.info({
      node: cfg.node, identity: nodeIdentity.uri, hbone: hboneAddress,
      socks: socksAddress,
      metrics: formatHostPort({ host: cfg.address, port: metricsAddr.port }),
      ready: formatHostPort({ host: cfg.address, port: readyAddr.port }),
      admin: formatHostPort({ host: loopback, port: adminAddr.port }),
      upstreams: cfg.upstreams.map((u) => `${loopback}:${u.localPort} -> ${formatHostPort(u.destination)} as ${u.namespace}/${u.workload}`),
      capture: cfg.capture, mode: cfg.mode,
    }, 'agent started');

    let closing: Promise<void> | undefined;
    return {
      hboneAddress,
      close: () => {
        closing ??= (async () => {
          draining = true;
          const deadline = Date.now() + cfg.drainTimeout;
          hbone.stopAccepting();
          const cut = await tracker.drain(cfg.drainTimeout);
          // Every relay is over, but a connection's last bytes can still be
          // queued in its HBONE session while the peer host reads slowly:
          // exiting would drop them. Whatever time the deadline left (at
          // least FLUSH_GRACE_MS, for the resets of cut connections) goes to
          // having peers confirm they read it all.
          const flushMs = Math.max(FLUSH_GRACE_MS, deadline - Date.now());
          const unflushed = await hbone.flush(flushMs);
          if (cut > 0) log.warn({ cut, unflushed }, 'drain deadline reached; closed remaining connections');
          if (unflushed > 0) log.warn({ unflushed }, 'peer agents did not confirm they read everything; closing their connections anyway');
          if (cut === 0 && unflushed === 0) log.info({ cut }, 'drained');
          await runCleanups();
        })();
        return closing;
      },
    };
  } catch (err) {
    await runCleanups();
    throw err;
  }
}
