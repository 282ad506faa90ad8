import { Registry, collectDefaultMetrics } from 'prom-client';

export type { Registry };

/**
 * A fresh metrics registry with the process metrics (CPU, RSS, fds, event-loop
 * lag) every operator expects. One per process, passed down; never prom-client's
 * global register, so two components in one test process do not collide.
 */
export function createMetricsRegistry(prefix = ''): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix });
  return registry;
}
