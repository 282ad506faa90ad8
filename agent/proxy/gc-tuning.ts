import { PerformanceObserver, constants, type PerformanceEntry } from 'node:perf_hooks';
import { getHeapSpaceStatistics, setFlagsFromString } from 'node:v8';

/** Set once at start by tuneGcForRelaying (also what a test or bench checks for). */
export const EXTERNAL_MEMORY_FLAG = '--external-memory-accounted-in-global-limit';
const MiB = 1024 * 1024;
/** Room over the live heap that lets a full data path's in-flight Buffers die young (see tuneGcForRelaying); --gc-headroom-mib. */
export const RELAY_HEADROOM_BYTES = 128 * MiB;
/** Never let the heap grow to more than 7× what survived the last full collection. */
export const MAX_HEAP_GROWING_PERCENT = 600;

/**
 * The `--heap-growing-percent` that leaves `headroom` bytes above an old
 * generation of `live` bytes before V8's next full collection, at most
 * MAX_HEAP_GROWING_PERCENT; or 0 once `live` reaches `headroom`. 0 clears
 * the flag: V8's own factor (1.1–4×, lower when memory is short) decides
 * again, so a large heap keeps V8's memory-saving modes, at the price of more
 * full collections while relaying. Rounded up to a multiple of 25 so that
 * small changes of the live heap do not reset the flag after every
 * collection.
 */
export function heapGrowingPercentFor(live: number, headroom = RELAY_HEADROOM_BYTES): number {
  if (live <= 0) return MAX_HEAP_GROWING_PERCENT;
  if (live >= headroom) return 0;
  return Math.min(Math.ceil((100 * headroom) / live / 25) * 25, MAX_HEAP_GROWING_PERCENT);
}

/** Bytes in V8's old generation: every heap space but the young generation's (what the growing factor applies to). */
export function oldGenerationBytes(): number {
  let bytes = 0;
  for (const s of getHeapSpaceStatistics()) {
    if (s.space_name !== 'new_space' && s.space_name !== 'new_large_object_space') bytes += s.space_used_size;
  }
  return bytes;
}

/** Whether a `gc` performance entry is a full (mark-compact) collection. */
export function isFullCollection(entry: PerformanceEntry): boolean {
  return (entry as PerformanceEntry & { detail?: { kind?: number } }).detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR;
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
  /** The headroom, in bytes (0: V8's own heap growing throughout). */
  readonly headroom: number;
  /**
   * The growing percent last set (0: V8's own). V8 computes a limit at the
   * end of each full collection, before JavaScript sees it; so this is the
   * percent for the limit V8 will compute after the next one.
   */
  readonly heapGrowingPercent: number;
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
 *   factor (about 2× in the bench) the Buffers in flight filled the room
 *   within milliseconds. The agents were marking almost without pause: 29–38 full
 *   collections each in a bench run relaying 2 GiB, where a process with an
 *   8 MiB old generation (bench/dataplane-nodeh2.ts) did 8–10, and V8's
 *   marking threads took 1.1–1.5 CPU seconds per agent besides.
 *
 * So after each full collection the agent sets `--heap-growing-percent` to
 * leave a headroom (RELAY_HEADROOM_BYTES, `--gc-headroom-mib`) over the old
 * generation, and clears it once the old generation is that large itself
 * (heapGrowingPercentFor); under a memory limit the headroom is at most an
 * eighth of it (effectiveHeadroom), and 0 leaves V8's own factor throughout.
 * A fixed 600 % did as well for relaying, but in the soak test (test/soak,
 * tens of thousands of connections) it let an agent's heap in use reach
 * 547 MiB, against 166 MiB without the setting and 164–199 MiB with this one.
 * Measured effects are in bench/README.md; test/agent/proxy/gc-tuning.test.ts
 * checks that relaying takes few full collections with this and many without.
 *
 * V8 reads both flags each time it computes its limits, at the end of every
 * full collection; setting them from JavaScript at run time is how Node.js
 * exposes them (node:v8 setFlagsFromString). The percent set after one full
 * collection is therefore used at the next: if the old generation grows fast
 * in between (a burst of new connections), that limit is up to 7× the old
 * size rather than old size + headroom, until the next collection corrects
 * it. The observer holds no handle: it never keeps the process alive.
 */
export function tuneGcForRelaying(headroom = RELAY_HEADROOM_BYTES): GcTuning {
  setFlagsFromString(EXTERNAL_MEMORY_FLAG);
  let percent = -1;
  const apply = (): void => {
    const next = headroom > 0 ? heapGrowingPercentFor(oldGenerationBytes(), headroom) : 0;
    if (next === percent) return;
    percent = next;
    setFlagsFromString(`--heap-growing-percent=${next}`);
  };
  apply();
  if (headroom <= 0) return { headroom: 0, heapGrowingPercent: 0 };
  new PerformanceObserver((list) => {
    if (list.getEntries().some(isFullCollection)) apply();
  }).observe({ entryTypes: ['gc'] });
  return {
    headroom,
    get heapGrowingPercent() {
      return percent;
    },
  };
}
