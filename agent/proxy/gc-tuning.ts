import { setFlagsFromString } from 'node:v8';

/** The V8 flag set by tuneGcForRelaying (also what a test or bench checks for). */
export const EXTERNAL_MEMORY_FLAG = '--external-memory-accounted-in-global-limit';

/**
 * Every chunk the agent relays lives in a Buffer outside the JavaScript heap.
 * With V8's defaults, external memory has a limit of its own, and a data path
 * moving hundreds of MiB/s crosses it several times a second, each time
 * starting a full mark-compact of the whole heap — whose cost grows with
 * everything else the agent keeps there (mesh state, gRPC, metrics). Counting
 * external memory within the heap's global limit instead lets those Buffers
 * die in ordinary collections. Measured with bench/dataplane.ts on the
 * node-h2 path with about 30 MiB of extra live heap standing in for an
 * agent's (AMBIT_BENCH_EXTRA_HEAP_MIB=30), two runs of 3 each way: 1.84–2.62
 * CPU s/GiB per side → 0.74–1.68, throughput 310–425 → 445–790 MiB/s; the
 * agents' own figures are in bench/README.md. V8 reads the flag when it
 * sizes its limits, so setting it at start (before any traffic) is enough
 * (measured the same whether set at start or on the command line).
 */
export function tuneGcForRelaying(): void {
  setFlagsFromString(EXTERNAL_MEMORY_FLAG);
}
