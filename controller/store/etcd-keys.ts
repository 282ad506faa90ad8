import type { Kind } from '../../shared/resources/types.ts';

/**
 * Where the etcd store keeps each record, under the operator's --etcd-prefix
 * (one prefix per mesh; several meshes can share a cluster):
 *
 *   <prefix>revision            the mesh revision (decimal); every commit's
 *                               transaction compares its modification revision
 *   <prefix>id                  the store identity (Store.identity), made once
 *   <prefix>r/<kind>/<ns>/<name> a resource (JSON, metadata.revision set)
 *   <prefix>c/<revision>        a commit's change set (JSON, revision as 16
 *                               zero-padded digits so keys sort by revision)
 *   <prefix>t/<id>              a join token record (secret hashed)
 *   <prefix>n/<name>            a node record
 *   <prefix>s/<key>             a setting
 *   <prefix>w/<node>/<replica>  the node watches from that replica (held by
 *                               the replica's lease: gone when it dies)
 */
export class EtcdKeys {
  readonly prefix: string;

  constructor(prefix: string) {
    this.prefix = prefix;
  }

  #b(s: string): Buffer {
    return Buffer.from(this.prefix + s);
  }

  get revision(): Buffer {
    return this.#b('revision');
  }

  get id(): Buffer {
    return this.#b('id');
  }

  resource(kind: Kind, namespace: string, name: string): Buffer {
    return this.#b(`r/${kind}/${namespace}/${name}`);
  }

  get resources(): Buffer {
    return this.#b('r/');
  }

  changeSet(revision: number): Buffer {
    return this.#b(`c/${String(revision).padStart(16, '0')}`);
  }

  get changeSets(): Buffer {
    return this.#b('c/');
  }

  /** The revision a change-set key names, or undefined for another key. */
  revisionOfChangeSetKey(key: Buffer): number | undefined {
    const s = key.toString();
    const head = `${this.prefix}c/`;
    if (!s.startsWith(head)) return undefined;
    const n = Number(s.slice(head.length));
    return Number.isSafeInteger(n) ? n : undefined;
  }

  token(id: string): Buffer {
    return this.#b(`t/${id}`);
  }

  get tokens(): Buffer {
    return this.#b('t/');
  }

  node(name: string): Buffer {
    return this.#b(`n/${name}`);
  }

  get nodes(): Buffer {
    return this.#b('n/');
  }

  watching(node: string, replica: string): Buffer {
    return this.#b(`w/${node}/${replica}`);
  }

  get watchingAll(): Buffer {
    return this.#b('w/');
  }

  /** The node a watching key names. */
  nodeOfWatchingKey(key: Buffer): string {
    return key.toString().slice(this.prefix.length + 2).split('/')[0] ?? '';
  }

  setting(key: string): Buffer {
    return this.#b(`s/${key}`);
  }
}

/** The end of the key range holding every key that starts with `prefix` (etcd's range_end). */
export function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i] = end[i]! + 1;
      return end.subarray(0, i + 1);
    }
  }
  // All 0xff: every key from prefix on (etcd's "\0" range_end).
  return Buffer.from([0]);
}
