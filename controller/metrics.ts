import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

/** The controller's own metrics (DESIGN §7), registered on the registry the app passes in. */
export function createControllerMetrics(registry: Registry) {
  const registers = [registry];
  return {
    csr: new Counter({
      name: 'ambit_controller_csr_total',
      help: 'Certificate signing requests by result (signed, refused) and reason.',
      labelNames: ['result', 'reason', 'kind'] as const,
      registers,
    }),
    csrSeconds: new Histogram({
      name: 'ambit_controller_csr_duration_seconds',
      help: 'Time to verify, authorize and sign one CSR.',
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1],
      registers,
    }),
    bootstrap: new Counter({
      name: 'ambit_controller_bootstrap_total',
      help: 'Node bootstrap attempts by result and reason.',
      labelNames: ['result', 'reason'] as const,
      registers,
    }),
    watchStreams: new Gauge({
      name: 'ambit_controller_watch_streams',
      help: 'Open Watch streams (connected agents).',
      registers,
    }),
    watchPushes: new Counter({
      name: 'ambit_controller_watch_pushes_total',
      help: 'Watch responses sent, by type (snapshot, delta).',
      labelNames: ['type'] as const,
      registers,
    }),
    watchNacks: new Counter({
      name: 'ambit_controller_watch_nacks_total',
      help: 'Watch responses refused by agents.',
      registers,
    }),
    storeRevision: new Gauge({
      name: 'ambit_controller_store_revision',
      help: 'Current mesh state revision.',
      registers,
    }),
    admin: new Counter({
      name: 'ambit_controller_admin_requests_total',
      help: 'Admin API calls by method and result.',
      labelNames: ['method', 'result'] as const,
      registers,
    }),
    caRootExpiry: new Gauge({
      name: 'ambit_ca_root_expiry_timestamp_seconds',
      help: 'Expiry of each root in the trust bundle (Unix seconds).',
      labelNames: ['fingerprint', 'active'] as const,
      registers,
    }),
    resources: new Gauge({
      name: 'ambit_controller_resources',
      help: 'Resources in the registry, by kind.',
      labelNames: ['kind'] as const,
      registers,
    }),
    telemetry: new Counter({
      name: 'ambit_controller_telemetry_items_total',
      help: 'Edges and denials agents reported for the console, by kind (edge, denial) and result (kept, refused: not about the reporting node\'s workloads).',
      labelNames: ['kind', 'result'] as const,
      registers,
    }),
    grpcConnectionsDropped: new Counter({
      name: 'ambit_controller_grpc_connections_dropped_total',
      help: 'gRPC-port connections the controller closed or refused before they authenticated, by reason (refused-per-source, refused-full, evicted, expired).',
      labelNames: ['reason'] as const,
      registers,
    }),
  };
}

export type ControllerMetrics = ReturnType<typeof createControllerMetrics>;
