import { Counter, Gauge, type Registry } from 'prom-client';

/** Istio's standard TCP labels (DESIGN §7), so existing dashboards work unchanged. */
export const TCP_LABELS = [
  'reporter', 'source_workload', 'source_workload_namespace', 'source_principal',
  'destination_workload', 'destination_workload_namespace', 'destination_principal',
  'destination_service', 'connection_security_policy', 'response_flags',
] as const;
export type TcpLabels = Record<(typeof TCP_LABELS)[number], string>;

export function createAgentMetrics(registry: Registry) {
  const registers = [registry];
  return {
    opened: new Counter({ name: 'istio_tcp_connections_opened_total', help: 'TCP connections opened.', labelNames: TCP_LABELS, registers }),
    closed: new Counter({ name: 'istio_tcp_connections_closed_total', help: 'TCP connections closed.', labelNames: TCP_LABELS, registers }),
    sent: new Counter({ name: 'istio_tcp_sent_bytes_total', help: 'Bytes sent toward the source (response direction).', labelNames: TCP_LABELS, registers }),
    received: new Counter({ name: 'istio_tcp_received_bytes_total', help: 'Bytes received from the source (request direction).', labelNames: TCP_LABELS, registers }),
    denials: new Counter({ name: 'ambit_policy_denials_total', help: 'Connections refused or closed by authorization policy.', labelNames: ['direction', 'policy', 'reason'] as const, registers }),
    refused: new Counter({ name: 'ambit_connections_refused_total', help: 'Connections refused before a tunnel opened, by reason.', labelNames: ['direction', 'reason'] as const, registers }),
    active: new Gauge({ name: 'ambit_connections_active', help: 'Connections currently open, by direction.', labelNames: ['direction'] as const, registers }),
    poolConnections: new Gauge({ name: 'ambit_tunnel_pool_connections', help: 'Pooled HBONE HTTP/2 connections to peer agents.', registers }),
    poolStreams: new Gauge({ name: 'ambit_tunnel_pool_streams', help: 'CONNECT streams open on pooled connections.', registers }),
    poolDials: new Counter({ name: 'ambit_tunnel_pool_dials_total', help: 'New HBONE connections dialled, by result.', labelNames: ['result'] as const, registers }),
    certExpiry: new Gauge({ name: 'ambit_certificate_expiry_timestamp_seconds', help: 'Expiry of each certificate the agent holds (Unix seconds).', labelNames: ['identity'] as const, registers }),
    certRenewals: new Counter({ name: 'ambit_certificate_renewals_total', help: 'Certificates obtained from the controller.', labelNames: ['identity'] as const, registers }),
    survival: new Gauge({ name: 'ambit_agent_controller_independence_seconds', help: 'How long the agent can keep serving without the controller: until its earliest certificate expires.', registers }),
    watchConnected: new Gauge({ name: 'ambit_watch_connected', help: '1 while the controller watch stream is up.', registers }),
    watchRevision: new Gauge({ name: 'ambit_watch_revision', help: 'Mesh state revision the agent serves.', registers }),
    watchUpdates: new Counter({ name: 'ambit_watch_updates_total', help: 'Controller updates by result (ack, nack).', labelNames: ['result'] as const, registers }),
  };
}

export type AgentMetrics = ReturnType<typeof createAgentMetrics>;
