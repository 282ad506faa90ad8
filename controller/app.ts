import { Server } from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { AmbitError } from '../shared/errors.ts';
import { ensurePrivateDir, writeFileAtomic } from '../shared/files.ts';
import { formatHostPort, type HostPort } from '../shared/config-parse.ts';
import { HttpEndpoint } from '../shared/http-endpoint.ts';
import { ConnectionAdmission } from '../shared/connection-admission.ts';
import { listenOn } from '../shared/listen.ts';
import type { Logger } from '../shared/logger.ts';
import { createMetricsRegistry } from '../shared/metrics.ts';
import { createTracing } from '../shared/tracing.ts';
import { AdminService, BootstrapService, CertificateAuthorityService, DiscoveryService } from '../shared/proto/gen/ambit.ts';
import { adminId, controllerId } from '../shared/spiffe-id.ts';
import { CertificateAuthority } from './ca/authority.ts';
import type { ControllerConfig } from './config.ts';
import { adminService } from './api/admin-service.ts';
import { Explainer } from './explain/explain.ts';
import { discoveryService } from './api/discovery-service.ts';
import { bootstrapService, certificateService } from './api/identity-services.ts';
import { peerAuthenticator, ServingCertificates } from './api/peer.ts';
import { grpcListener, trackCalls } from './api/grpc-listener.ts';
import { createControllerMetrics } from './metrics.ts';
import { JoinTokens } from './registry/join-tokens.ts';
import { NodeTracker } from './registry/node-tracker.ts';
import { Registry } from './registry/registry.ts';
import { SqliteStore } from './store/sqlite-store.ts';
import { checkStoreBeforeOpen, checkStoreIdentity, storePaths } from './store/store-guard.ts';
import { parseEtcdEndpoints } from './config.ts';
import type { Store } from './store/store.ts';
import { VERSION } from './version.ts';
import type { Workload } from '../shared/resources/types.ts';
import { verifyPeer } from '../shared/tls.ts';
import { TelemetryWindow } from './telemetry/telemetry-window.ts';
import { ConsoleLogins } from './console/console-logins.ts';
import { ConsoleServer } from './console/console-server.ts';
import { loadConsoleAssets } from './console/console-assets.ts';
import { explainWithEngine } from './console/console-views.ts';

export { VERSION };

/** Setting holding the root fingerprints of the CA the replicas of a shared store sign with. */
const CA_ROOTS_SETTING = 'ca.roots';

/** Serving and admin certificates live this long and are re-issued at half-life. */
const LOCAL_CERT_TTL_MS = 30 * 86_400_000;
const LOCAL_RENEW_CHECK_MS = 3_600_000;

export interface ControllerApp {
  readonly grpcAddress: HostPort;
  readonly monitoringAddress: HostPort;
  /** Where the web console listens; undefined with --console none. */
  readonly consoleAddress: HostPort | undefined;
  readonly ca: CertificateAuthority;
  readonly store: Store;
  /** Graceful: stop accepting, end watch streams, finish in-flight calls (up to 5 s), close the store. */
  close(): Promise<void>;
}

export interface ControllerDeps {
  readonly logger: Logger;
  readonly now?: () => number;
  /** The controller cannot go on (an etcd replica that can no longer follow the revision); main.ts exits so a supervisor restarts it. */
  readonly onFatal?: (err: Error) => void;
}

/** Builds and starts every part of the controller; the only place that knows them all. */
export async function startController(cfg: ControllerConfig, deps: ControllerDeps): Promise<ControllerApp> {
  const now = deps.now ?? Date.now;
  const logger = deps.logger;
  ensurePrivateDir(cfg.dataDir);
  const { store, reviewKubernetesToken } = await openStore(cfg, deps, now);
  const cleanups: (() => Promise<void> | void)[] = [() => store.close()];
  try {
    // Changing the trust domain would silently orphan every identity already issued.
    const savedTd = await store.getSetting('trustDomain');
    if (savedTd !== undefined && savedTd !== cfg.trustDomain) {
      throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', `--trust-domain ${cfg.trustDomain} differs from ${savedTd}, the trust domain this data directory was created with`, {
        details: { key: 'trust-domain', value: cfg.trustDomain },
      });
    }
    if (savedTd === undefined) await store.putSetting('trustDomain', cfg.trustDomain);

    const ca = CertificateAuthority.open({
      dir: join(cfg.dataDir, 'ca'),
      trustDomain: cfg.trustDomain,
      now,
      ...(cfg.caCert && cfg.caKey
        ? {
            userCa: {
              certPem: readFileSync(cfg.caCert, 'utf8'),
              keyPem: readFileSync(cfg.caKey, 'utf8'),
              ...(cfg.caRoots ? { rootsPem: readFileSync(cfg.caRoots, 'utf8') } : {}),
            },
          }
        : {}),
    });
    if (store.backend === 'etcd') await checkSharedCa(store, ca);
    const { registry, stop: stopFollowing } = await Registry.follow(store);
    cleanups.unshift(stopFollowing);

    const metricsRegistry = createMetricsRegistry();
    const metrics = createControllerMetrics(metricsRegistry);
    const refreshGauges = (): void => {
      metrics.storeRevision.set(registry.revision);
      const counts = registry.counts();
      for (const [kind, n] of Object.entries(counts)) metrics.resources.set({ kind }, n);
      metrics.caRootExpiry.reset();
      for (const r of ca.roots()) metrics.caRootExpiry.set({ fingerprint: r.fingerprint.slice(0, 16), active: String(r.active) }, r.notAfter / 1000);
    };
    refreshGauges();
    registry.onChange(refreshGauges);

    // --- local credentials: serving certificate and admin client credentials
    const servingSans = (): { dnsNames: string[]; ips: string[] } => {
      const ips = new Set(['127.0.0.1', '::1']);
      const dns = new Set(['localhost', hostname()]);
      // The console presents the same certificate, so its address is named too.
      for (const host of [cfg.listen.host, ...(cfg.console === 'none' ? [] : [cfg.console.host])]) {
        if (isIP(host) && host !== '0.0.0.0' && host !== '::') ips.add(host);
        if (!isIP(host)) dns.add(host);
      }
      return { dnsNames: [...dns].filter((n) => /^[A-Za-z0-9.-]+$/.test(n)), ips: [...ips] };
    };
    const issueServing = () => ca.issueLocal(controllerId(cfg.trustDomain), LOCAL_CERT_TTL_MS, servingSans());
    // The serving chain carries the root too: a joining agent holds only the
    // root's fingerprint (from its token) and must find the root in the
    // handshake to check the pin before it sends the token.
    const servingChain = (): string => serving.chainPem + ca.activeRootPem();
    let serving = issueServing();
    const servingCerts = new ServingCertificates(servingChain(), serving.keyPem, clientCaPem(ca));
    const adminDir = join(cfg.dataDir, 'admin');
    writeAdminCredentials(ca, adminDir, cfg.adminName, now, false);

    const renewLocal = (force: boolean): void => {
      if (force || now() > serving.notBefore + (serving.notAfter - serving.notBefore) / 2) {
        serving = issueServing();
        servingCerts.setIdentity(servingChain(), serving.keyPem);
        logger.info({ expiresAt: new Date(serving.notAfter).toISOString() }, 'controller serving certificate renewed');
      }
      writeAdminCredentials(ca, adminDir, cfg.adminName, now, force);
    };
    const renewTimer = setInterval(() => renewLocal(false), LOCAL_RENEW_CHECK_MS);
    renewTimer.unref();
    cleanups.unshift(() => clearInterval(renewTimer));
    ca.onBundleChange(() => {
      servingCerts.setCa(clientCaPem(ca));
      // A new active root (rotation) must also sign what the controller itself presents.
      renewLocal(true);
      refreshGauges();
    });

    // --- gRPC API
    const auth = peerAuthenticator(ca, now);
    const nodes = new NodeTracker({ store, now, logger });
    // Runs after the gRPC server has ended its calls (cleanups added later run first), before the store closes: what agents reported last is written.
    cleanups.unshift(() => nodes.close());
    // With a shared store, records other replicas write arrive here too (subscribed before the load, so none falls between).
    const stopNodes = store.onNodeChange?.((n) => nodes.recordChanged(n));
    if (stopNodes) cleanups.unshift(stopNodes);
    await nodes.load();
    const tokens = new JoinTokens(store, now);
    // A span per certificate signed or refused (--traces-exporter otlp); the
    // last cleanup sends what is queued.
    const tracing = await createTracing(cfg.tracing, 'ambit-controller', { serviceVersion: VERSION, node: hostname(), trustDomain: cfg.trustDomain, instance: controllerId(cfg.trustDomain).uri }, { logger });
    cleanups.push(() => tracing.shutdown());
    const identityDeps = { ca, registry, tokens, nodes, auth, logger, metrics, tracer: tracing.tracer, certTtlMs: cfg.certTtl, nodeCertTtlMs: cfg.nodeCertTtl, reviewKubernetesToken };
    const storeId = await store.identity();
    logger.info({ storeId, backend: store.backend }, 'store identity');
    const telemetry = new TelemetryWindow({ now, workload: (namespace, name) => registry.get({ kind: 'Workload', namespace, name }) as Workload | undefined });
    const consoleLogins = new ConsoleLogins(now);
    let consoleUrl = '';
    const discovery = discoveryService({ registry, store, ca, nodes, auth, logger, metrics, storeId, telemetry });
    // Admission on the gRPC port (docs/reliability.md, "Connection floods"):
    // the controller owns the listening socket and TLS, and hands grpc-js
    // only the connections it admits, so a flood of idle or unauthenticated clients
    // can neither exhaust descriptors nor keep an agent or the admin out.
    const admission = new ConnectionAdmission(
      { maxConnections: cfg.maxConnections, maxPendingPerSource: cfg.maxConnectionsPerSource, proveWithinMs: cfg.connectDeadline },
      (reason, source) => {
        metrics.grpcConnectionsDropped.inc({ reason });
        logger.debug({ reason, source }, 'gRPC connection dropped before it authenticated');
      },
    );
    const server = new Server({
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      'grpc.keepalive_permit_without_calls': 1,
      'grpc.http2.min_ping_interval_without_data_ms': 10_000,
      'grpc.max_receive_message_length': 4 * 1024 * 1024,
      'grpc.max_concurrent_streams': 1000,
      // An established connection with no call for this long gets a GOAWAY and is closed (grpc-js: max_connection_idle_ms).
      'grpc.max_connection_idle_ms': cfg.idleTimeout,
      interceptors: [trackCalls(admission)],
    });
    server.addService(BootstrapService, bootstrapService(identityDeps));
    server.addService(CertificateAuthorityService, certificateService(identityDeps));
    server.addService(DiscoveryService, discovery.server);
    const explainer = new Explainer(() => ({
      revision: registry.revision,
      trustDomain: cfg.trustDomain,
      resources: registry.all(),
      nodeAddress: (node) => nodes.endpoints().find((e) => e.name === node)?.hboneAddress,
    }));
    const startedAt = now();
    server.addService(AdminService, adminService({ registry, store, ca, tokens, nodes, auth, logger, metrics, explainer, version: VERSION, startedAt, now, consoleLogins, consoleUrl: () => consoleUrl }));
    const listener = grpcListener(server, servingCerts, admission, cfg.connectDeadline);
    const grpcPort = await listenOn(listener.server, cfg.listen.host, cfg.listen.port).then((a) => a.port).catch((cause: unknown) => {
      throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', `cannot listen on --listen ${formatHostPort(cfg.listen)}: ${(cause as Error).message}`, { cause, details: { key: 'listen' } });
    });
    // Shutdown runs these last-added first: stop accepting, let grpc-js end its calls, then drop what is left.
    cleanups.unshift(() => admission.closeAll());
    cleanups.unshift(
      () =>
        new Promise<void>((resolve) => {
          discovery.closeAll();
          discovery.stop();
          const force = setTimeout(() => {
            server.forceShutdown();
            resolve();
          }, 5_000);
          server.tryShutdown(() => {
            clearTimeout(force);
            resolve();
          });
        }),
    );
    cleanups.unshift(() => {
      listener.server.close();
      listener.close();
    });

    // --- monitoring
    let ready = true;
    const monitoring = new HttpEndpoint({
      '/metrics': async (_req, res) => {
        res.writeHead(200, { 'content-type': metricsRegistry.contentType }).end(await metricsRegistry.metrics());
      },
      '/healthz/ready': (_req, res) => {
        res.writeHead(ready ? 200 : 503, { 'content-type': 'text/plain' }).end(ready ? 'ready\n' : 'shutting down\n');
      },
    });
    const mon = await monitoring.listen(cfg.monitoring).catch((cause: unknown) => {
      throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', `cannot listen on --monitoring ${formatHostPort(cfg.monitoring)}: ${(cause as Error).message}`, { cause, details: { key: 'monitoring' } });
    });
    cleanups.unshift(() => monitoring.close());

    // --- web console (docs/console.md)
    let consoleAddress: HostPort | undefined;
    if (cfg.console !== 'none') {
      const at = cfg.console;
      const web = new ConsoleServer({
        views: { registry, nodes, ca, telemetry, storeBackend: store.backend, storeId, version: VERSION, startedAt, now, explain: explainWithEngine(explainer, registry) },
        logins: consoleLogins,
        assets: loadConsoleAssets(),
        serving: servingCerts,
        adminOf: (der) => {
          try {
            const id = verifyPeer(der, ca.intermediates(), ca.bundle(), ca.trustDomain, now());
            return id.kind === 'admin' ? id.uri : undefined;
          } catch {
            return undefined;
          }
        },
        hostNames: [hostname().toLowerCase(), ...(isIP(at.host) ? [] : [at.host.toLowerCase()])],
        logger: logger.child({ component: 'console' }),
      });
      const bound = await web.listen(at).catch((cause: unknown) => {
        throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', `cannot listen on --console ${formatHostPort(at)}: ${(cause as Error).message}`, { cause, details: { key: 'console' } });
      });
      cleanups.unshift(() => web.close());
      consoleAddress = { host: at.host, port: bound.port };
      const shownHost = at.host === '0.0.0.0' || at.host === '::' ? hostname() : at.host;
      consoleUrl = `https://${formatHostPort({ host: shownHost, port: bound.port })}`;
    }

    logger.info(
      { grpc: formatHostPort({ host: cfg.listen.host, port: grpcPort }), monitoring: `${mon.address}:${mon.port}`, console: consoleUrl || 'off', trustDomain: cfg.trustDomain, revision: registry.revision, caRoot: ca.activeRootFingerprint(), admin: adminDir },
      'controller ready',
    );
    let closing: Promise<void> | undefined;
    return {
      grpcAddress: { host: cfg.listen.host, port: grpcPort },
      monitoringAddress: { host: cfg.monitoring.host, port: mon.port },
      consoleAddress,
      ca,
      store,
      close: () => {
        ready = false;
        closing ??= runAll(cleanups, logger);
        return closing;
      },
    };
  } catch (err) {
    await runAll(cleanups, logger);
    throw err;
  }
}

/**
 * --kubernetes-join on a store that is not Kubernetes: the API server is
 * used for TokenReview and for the token's pod (a GET: there is no informer
 * to ask first), nothing else, so agents on a Kubernetes cluster join a
 * controller whose mesh lives in etcd or SQLite as they join one on the
 * Kubernetes store.
 */
async function kubernetesJoinReviewer(cfg: ControllerConfig, logger: Logger): Promise<(token: string, node: string) => Promise<void>> {
  const [{ loadKubeConfig }, { kubernetesTokenReviewer }] = await Promise.all([import('./store/kubernetes/kube-config.ts'), import('./api/token-review.ts')]);
  const reviewer = kubernetesTokenReviewer({ kubeConfig: loadKubeConfig(cfg.kubeconfig), cache: { pod: () => undefined }, agentServiceAccount: cfg.agentServiceAccount, logger });
  logger.info({ agentServiceAccount: cfg.agentServiceAccount }, 'agents may join with Kubernetes service-account tokens (TokenReview)');
  return reviewer;
}

/**
 * Opens the configured store. SQLite: the file in the data directory, guarded
 * against a lost store under a surviving CA (store-guard.ts). Kubernetes:
 * mesh resources from the API, tokens, nodes and settings in the embedded
 * SQLite store. etcd: everything in the cluster, shared by every replica.
 */
async function openStore(cfg: ControllerConfig, deps: ControllerDeps, now: () => number): Promise<{ store: Store; reviewKubernetesToken?: (token: string, node: string) => Promise<void> }> {
  const logger = deps.logger;
  // Each backend's client is loaded when it is the one configured: the
  // Kubernetes client alone adds about 78 MiB of RSS to a controller.
  if (cfg.store === 'etcd') {
    const [{ EtcdStore }, { etcdClientOptions }] = await Promise.all([import('./store/etcd-store.ts'), import('./store/etcd-connection.ts')]);
    const store = await EtcdStore.open({
      client: etcdClientOptions({ endpoints: parseEtcdEndpoints(cfg.etcdEndpoints ?? '', cfg.etcdCa !== undefined), caFile: cfg.etcdCa, certFile: cfg.etcdCert, keyFile: cfg.etcdKey }),
      prefix: cfg.etcdPrefix,
      logger,
      now,
      onFatal: (err) => deps.onFatal?.(err),
    });
    logger.info({ endpoints: cfg.etcdEndpoints, prefix: cfg.etcdPrefix, revision: await store.revision() }, 'etcd store opened');
    try {
      return { store, ...(cfg.kubernetesJoin ? { reviewKubernetesToken: await kubernetesJoinReviewer(cfg, logger) } : {}) };
    } catch (err) {
      await store.close();
      throw err;
    }
  }
  // A CA without its store must not become an empty mesh served to every agent (store-guard.ts).
  const paths = storePaths(cfg.dataDir);
  checkStoreBeforeOpen(paths, cfg.reinitializeStore === true, logger);
  const local = SqliteStore.open({ path: paths.db, now });
  try {
    checkStoreIdentity(paths, await local.identity(), cfg.reinitializeStore === true, logger);
  } catch (err) {
    await local.close();
    throw err;
  }
  try {
    if (cfg.store !== 'kubernetes') return { store: local, ...(cfg.kubernetesJoin ? { reviewKubernetesToken: await kubernetesJoinReviewer(cfg, logger) } : {}) };
    const [{ KubernetesStore }, { loadKubeConfig }, { kubernetesTokenReviewer }] = await Promise.all([
      import('./store/kubernetes-store.ts'), import('./store/kubernetes/kube-config.ts'), import('./api/token-review.ts'),
    ]);
    const kubeConfig = loadKubeConfig(cfg.kubeconfig);
    const k8s = await KubernetesStore.open({ kubeConfig, local, logger });
    return { store: k8s, reviewKubernetesToken: kubernetesTokenReviewer({ kubeConfig, cache: k8s, agentServiceAccount: cfg.agentServiceAccount, logger }) };
  } catch (err) {
    await local.close();
    throw err;
  }
}

/**
 * Replicas on one etcd store must sign with one CA: a replica given another
 * CA's files would issue certificates the other replicas' agents reject. The
 * first replica records its trust bundle's root fingerprints; a replica whose
 * bundle shares none of them is refused. One that shares a root (the files
 * were replaced to rotate the CA) records its own bundle.
 */
async function checkSharedCa(store: Store, ca: CertificateAuthority): Promise<void> {
  const mine = ca.roots().map((r) => r.fingerprint);
  const recorded = (await store.getSetting(CA_ROOTS_SETTING))?.split(',').filter(Boolean) ?? [];
  if (recorded.length > 0 && !recorded.some((fp) => mine.includes(fp))) {
    throw new AmbitError('AMBIT_ERR_CA_LOAD', `this replica's CA (roots ${mine.map((f) => f.slice(0, 16)).join(', ')}) shares no root with the CA the other replicas of this etcd store use (${recorded.map((f) => f.slice(0, 16)).join(', ')}); give every replica the same --ca-cert, --ca-key and --ca-roots files`, {
      details: { roots: mine, storeRoots: recorded },
    });
  }
  if (recorded.join(',') !== mine.join(',')) await store.putSetting(CA_ROOTS_SETTING, mine.join(','));
}

async function runAll(steps: readonly (() => Promise<void> | void)[], logger: Logger): Promise<void> {
  for (const step of steps) {
    try {
      await step();
    } catch (err) {
      logger.warn({ err }, 'shutdown step failed');
    }
  }
}

/** Client certificates are verified against roots plus the signer (covers a user-supplied intermediate). */
function clientCaPem(ca: CertificateAuthority): string {
  return [...ca.bundle(), ...ca.intermediates()].map((c) => c.toString()).join('');
}

/**
 * Writes <data-dir>/admin/{cert.pem,key.pem,ca.pem} (0600, directory 0700)
 * at first start, and again when past half-life or forced (root rotation).
 */
function writeAdminCredentials(ca: CertificateAuthority, dir: string, name: string, now: () => number, force: boolean): void {
  ensurePrivateDir(dir);
  const certPath = join(dir, 'cert.pem');
  if (!force) {
    try {
      const cert = new X509Certificate(readFileSync(certPath));
      const from = Date.parse(cert.validFrom);
      const to = Date.parse(cert.validTo);
      const trusted = ca.bundle().some((r) => cert.checkIssued(r) && cert.verify(r.publicKey)) ||
        ca.intermediates().some((c) => cert.checkIssued(c) && cert.verify(c.publicKey));
      if (trusted && now() < from + (to - from) / 2 && cert.subjectAltName?.includes(adminId(ca.trustDomain, name).uri)) {
        writeFileAtomic(join(dir, 'ca.pem'), ca.bundlePem());
        return;
      }
    } catch {
      // missing or unreadable: issue below
    }
  }
  const creds = ca.issueLocal(adminId(ca.trustDomain, name), LOCAL_CERT_TTL_MS);
  writeFileAtomic(join(dir, 'key.pem'), creds.keyPem);
  writeFileAtomic(certPath, creds.chainPem);
  writeFileAtomic(join(dir, 'ca.pem'), ca.bundlePem());
}
