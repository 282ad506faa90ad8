import { setFlagsFromString } from 'node:v8';

/**
 * Puts V8 in its size-optimized mode, as the controller runs. The controller
 * holds the whole mesh in memory; a bounded footprint matters more to it than
 * peak throughput. In this mode V8 grows the heap conservatively after a
 * burst of applies instead of keeping what the burst's garbage needed
 * (bench/controller.ts, 110,000 resources: RSS after the load 333 → 227 MiB,
 * applies 17,600 → 12,100/s; bench/ca.ts: CSR signing about 8 % slower).
 * NODE_OPTIONS cannot carry this V8 flag, so the controller's entry sets it
 * before the controller is loaded, and the CA bench does the same.
 */
export function optimizeHeapForSize(): void {
  setFlagsFromString('--optimize-for-size');
}
