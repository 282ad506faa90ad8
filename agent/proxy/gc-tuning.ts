import { PerformanceObserver, constants, type PerformanceEntry } from 'node:perf_hooks';
import { getHeapStatistics, setFlagsFromString } from 'node:v8';

/** Set once at start by tuneGcForRelaying (also what a test or bench checks for). */
export const EXTERNAL_MEMORY_FLAG = '--external-memory-accounted-in-global-limit';
const MiB = 1024 * 1024;
/** Room over the live heap that lets a full data path's in-flight Buffers die young (see tuneGcForRelaying); --gc-headroom-mib. */
export const RELAY_HEADROOM_BYTES = 128 * MiB;
/** Never let the heap grow to more than 7× what survived the last full collection. */
export const MAX_HEAP_GROWING_PERCENT = 600;

/**
 * The `--heap-growing-percent` that leaves `headroom` bytes above a live heap
 * of `live` bytes before V8's next full collection, or 0 (V8's own dynamic
 * factor) once the heap is large enough for V8 to leave that room itself.
 * Rounded up to a multiple of 25 so that small changes of the live heap do
 * not reset the flag after every collection.
 */
export function heapGrowingPercentFor(live: number, headroom = RELAY_HEADROOM_BYTES): number {
  if (live <= 0) return MAX_HEAP_GROWING_PERCENT;
  // V8's dynamic factor is at least about 2× for a heap this agent has; at or
  // above `headroom` of live heap that already leaves the room.
  if (live >= headroom) return 0;
  const percent = Math.ceil((100 * headroom) / live / 25) * 25;
  return Math.min(Math.max(percent, 100), MAX_HEAP_GROWING_PERCENT);
}

/**
 * The headroom to use: `requested`, but at most an eighth of the process's
 * memory limit when it has one (`process.constrainedMemory()`: a cgroup's
 * memory.max, e.g. the DaemonSet's limit; 0 or 2^64 when there is none), so
 * that the room left for relaying never takes a contained agent near the
 * point where it is killed.
 */
export function effectiveHeadroom(requested: number, memoryLimit: number): number {
  const bounded = memoryLimit > 0 && memoryLimit < Number.MAX_SAFE_INTEGER;
  return bounded ? Math.min(requested, Math.floor(memoryLimit / 8)) : requested;
}

export interface GcTuning {
  /** The headroom in force, in bytes (0: V8's own heap growing). */
  readonly headroom: number;
  /** The growing percent in force (0: V8's own). */
  readonly heapGrowingPercent: number;
  stop(): void;
}

/**
 * Every chunk the agent relays lives in a Buffer outside the JavaScript heap
 * for one hop. Two V8 behaviours decide whether those Buffers are reclaimed by
 * cheap young-generation collections or by full mark-compacts of the whole
 * heap, many times a second:
 *
 * - External memory: with V8's defaults it has a limit of its own, and a
 *   data path moving hundreds of MiB/s crosses it several times a second,
 *   each time starting a full mark-compact. EXTERNAL_MEMORY_FLAG counts it in
 *   the heap's global limit instead (second session; bench/README.md).
 * - Room under that limit: V8 starts incremental marking once the room left
 *   is less than the young generation's size (16 MiB), but only in a heap
 *   whose old generation is above 8 MiB. An agent's is 14–30 MiB at rest
 *   (its modules' code, mesh state, metrics), and with V8's own growing
 *   factor (about 2×) the Buffers in flight filled the room within
 *   milliseconds. The agents were marking almost without pause: 29–38 full
 *   collections each in a bench run relaying 2 GiB, where a process with an
 *   8 MiB old generation (bench/dataplane-nodeh2.ts) did 8–10, and V8's
 *   marking threads took 1.1–1.5 CPU seconds per agent besides.
 *
 * So after each full collection the agent sets `--heap-growing-percent` to
 * leave a headroom (RELAY_HEADROOM_BYTES, `--gc-headroom-mib`) over the live
 * heap (heapGrowingPercentFor), and hands the factor back to V8 once the live
 * heap is that large itself; under a memory limit the headroom is at most an
 * eighth of it (effectiveHeadroom), and 0 leaves V8's own factor throughout.
 * A fixed 600 % did as well for relaying, but in the soak test (test/soak,
 * tens of thousands of connections) it let an agent's heap in use reach
 * 547 MiB, against 166 MiB without the setting and 199 MiB with this one.
 * Measured effects are in bench/README.md; test/agent/proxy/gc-tuning.test.ts
 * checks that relaying takes few full collections with this and many without.
 *
 * V8 reads both flags each time it computes its limits, which it does after
 * every full collection; setting them from JavaScript at run time is how
 * Node.js exposes them (node:v8 setFlagsFromString).
 */
export function tuneGcForRelaying(headroom = RELAY_HEADROOM_BYTES): GcTuning {
  setFlagsFromString(EXTERNAL_MEMORY_FLAG);
  let percent = -1;
  const apply = (): void => {
    const next = headroom > 0 ? heapGrowingPercentFor(getHeapStatistics().used_heap_size, headroom) : 0;
    if (next === percent) return;
    percent = next;
    setFlagsFromString(`--heap-growing-percent=${next}`);
  };
  apply();
  if (headroom <= 0) return { headroom: 0, heapGrowingPercent: 0, stop: () => undefined };
  const observer = new PerformanceObserver((list) => {
    if (list.getEntries().some((e) => (e as PerformanceEntry & { detail?: { kind?: number } }).detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR)) apply();
  });
  observer.observe({ entryTypes: ['gc'] });
  return {
    headroom,
    get heapGrowingPercent() {
      return percent;
    },
    stop: () => observer.disconnect(),
  };
}
