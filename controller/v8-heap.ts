import { setFlagsFromString } from 'node:v8';

/**
 * Puts V8 in its size-optimized mode, as the controller runs. The controller
 * holds the whole mesh in memory; a bounded footprint matters more to it than
 * peak throughput. In this mode V8 grows the heap conservatively after a
 * burst of applies instead of keeping what the burst's garbage needed; it
 * costs applies and CSR signing some speed (docs/scale.md, bench/README.md).
 * NODE_OPTIONS cannot carry this V8 flag, so the controller's entry sets it
 * before the controller is loaded, and the CA bench does the same.
 */
export function optimizeHeapForSize(): void {
  setFlagsFromString('--optimize-for-size');
}
