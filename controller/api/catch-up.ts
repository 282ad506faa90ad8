import type * as pb from '../../shared/proto/gen/ambit.ts';
import { changeToWire, resourceToWire } from '../../shared/resources/wire.ts';
import type { Registry } from '../registry/registry.ts';
import type { Store } from '../store/store.ts';

/**
 * What a full-scope Watch is sent when it starts, encoded once per mesh
 * revision and shared by every stream that starts at it: the deltas since an
 * agent's revision, or the whole mesh. When a replica dies its agents all
 * resume on the others within a second or two, from nearly the same revision;
 * without this each of them would cost its replica a store read and an encoding of
 * the same changes. What is kept is dropped when the mesh moves on, and after
 * `idleMs` without a start (a whole-mesh snapshot is as large as the mesh).
 */
export class CatchUp {
  readonly #registry: Registry;
  readonly #store: Store;
  readonly #idleMs: number;
  #revision = -1;
  #snapshot: pb.Resource[] | undefined;
  readonly #deltas = new Map<number, Promise<pb.Change[] | undefined>>();
  #idle: NodeJS.Timeout | undefined;

  constructor(registry: Registry, store: Store, idleMs = 10_000) {
    this.#registry = registry;
    this.#store = store;
    this.#idleMs = idleMs;
  }

  /** The whole mesh at the registry's current revision. */
  snapshot(): pb.Resource[] {
    this.#at(this.#registry.revision);
    return (this.#snapshot ??= this.#registry.all().map(resourceToWire));
  }

  /**
   * The changes after `resume` up to the registry's current revision (empty
   * when the agent is current), from the registry's recent history or else
   * the store; undefined when neither holds them all (the agent needs a
   * snapshot). `resume` must not be above the current revision.
   */
  deltasSince(resume: number): Promise<pb.Change[] | undefined> {
    const current = this.#registry.revision;
    this.#at(current);
    let deltas = this.#deltas.get(resume);
    if (deltas === undefined) {
      deltas = this.#load(resume, current);
      this.#deltas.set(resume, deltas);
      // A failed store read is not kept: the next start tries again.
      deltas.catch(() => {
        if (this.#revision === current) this.#deltas.delete(resume);
      });
    }
    return deltas;
  }

  async #load(resume: number, current: number): Promise<pb.Change[] | undefined> {
    if (resume === current) return [];
    const sets = this.#registry.changesSince(resume) ?? (await this.#store.changesSince(resume));
    if (sets === undefined) return undefined;
    return sets.filter((cs) => cs.revision <= current).flatMap((cs) => cs.changes.map(changeToWire));
  }

  #at(revision: number): void {
    if (revision !== this.#revision) this.#drop();
    this.#revision = revision;
    clearTimeout(this.#idle);
    this.#idle = setTimeout(() => this.#drop(), this.#idleMs);
    this.#idle.unref();
  }

  #drop(): void {
    this.#snapshot = undefined;
    this.#deltas.clear();
  }

  stop(): void {
    clearTimeout(this.#idle);
    this.#drop();
  }
}
