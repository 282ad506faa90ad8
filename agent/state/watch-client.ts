import { Metadata, type ClientDuplexStream } from '@grpc/grpc-js';
import { DiscoveryClient, type TelemetryReport, type WatchRequest, type WatchResponse } from '../../shared/proto/gen/ambit.ts';
import { Backoff } from '../../shared/backoff.ts';
import { CONTROLLER_CHANNEL_OPTIONS, controllerCredentials } from '../../shared/controller-client.ts';
import { ReplicaRotation, type Controllers, type ResolveName } from '../../shared/controller-target.ts';
import { errorMessage } from '../../shared/errors.ts';
import type { Logger } from '../../shared/logger.ts';
import { changeFromWire, resourceFromWire } from '../../shared/resources/wire.ts';
import { toDocument, validateResource } from '../../shared/resources/validate.ts';
import type { Change, Resource } from '../../shared/resources/types.ts';
import type { NodeCredentials } from '../identity/ca-client.ts';
import type { StateUpdate } from './mesh-state.ts';

export interface WatchClientOptions {
  /** Every controller replica (or a name resolving to each): each attempt goes to one, the next after a failure (ReplicaRotation). */
  readonly controller: Controllers;
  readonly credentials: () => NodeCredentials;
  readonly hboneAddress: string;
  /** Revision to resume from (the cached state's), read at each (re)connect. */
  readonly revision: () => number;
  readonly certExpiresAt: () => number;
  /** Fingerprints of the roots the agent trusts now, reported with every ack and nack. */
  readonly trustedRoots?: () => readonly string[];
  /** Applies an update; throwing makes the client nack it with the error's message. */
  readonly apply: (u: WatchUpdate) => void;
  readonly logger: Logger;
  readonly onStatus?: (connected: boolean) => void;
  readonly backoff?: Backoff;
  /**
   * The controller answers every WatchStart at once (snapshot or deltas). A
   * stream still silent after this long is treated as lost, so a controller
   * that hangs (or a stream dropped without a status) cannot leave the agent
   * waiting forever instead of reconnecting. Default 30 s.
   */
  readonly firstResponseTimeoutMs?: number;
  /** The traffic report since the last one (undefined: nothing to say), sent every reportIntervalMs while the stream is up. */
  readonly report?: () => TelemetryReport | undefined;
  readonly reportIntervalMs?: number;
  /** What the controller sends (WatchStart.scope): the whole mesh, or this node's share and what it subscribes to. Default full. */
  readonly scope?: 'full' | 'node';
  /** Node scope: the hosts followed, carried by every WatchStart so a resumed or failed-over watch restores them. */
  readonly subscriptions?: () => readonly string[];
  /** Resolves a controller DNS name at each (re)connect (default: getaddrinfo). */
  readonly resolve?: ResolveName;
}

/**
 * Reconnect policy (DESIGN §3 "reconnects with jittered backoff"): full
 * jitter, the ceiling doubling from 0.5 s up to 30 s, so a fleet of agents
 * does not reconnect in lock-step after a controller restart, and none waits
 * longer than 30 s once the controller is back.
 */
export const WATCH_BACKOFF = { initialMs: 500, maxMs: 30_000 } as const;

/** A state update plus what is not mesh state: the root that signs new certificates, when the controller says. */
export interface WatchUpdate extends StateUpdate {
  readonly activeRoot?: string;
  /** The identity of the controller's store ('' from a controller that sends none). */
  readonly storeId: string;
  /** Node scope: subscribed hosts this response answers (what they resolve to is among its resources or changes). */
  readonly answers?: readonly { readonly host: string; readonly found: boolean }[];
}

/** Resources from the wire are validated again: a nack is better than serving what the agent cannot understand. */
function checked(r: Resource): Resource {
  const v = validateResource(toDocument(r), `${r.kind} ${r.metadata.namespace}/${r.metadata.name}`);
  return { ...v, metadata: { ...v.metadata, revision: r.metadata.revision } } as Resource;
}

function toUpdate(res: WatchResponse): WatchUpdate {
  const changes: Change[] = res.changes.map(changeFromWire).map((c) => (c.op === 'put' ? { op: 'put', resource: checked(c.resource) } : c));
  return {
    revision: res.revision,
    storeId: res.storeId,
    ...(res.snapshot ? { snapshot: res.resources.map((r) => checked(resourceFromWire(r))) } : {}),
    ...(changes.length > 0 ? { changes } : {}),
    ...(res.trustBundlePem ? { bundlePem: res.trustBundlePem } : {}),
    ...(res.nodesSet ? { nodes: res.nodes.map((n) => ({ name: n.name, hboneAddress: n.hboneAddress })) } : {}),
    ...(res.activeRootSha256 ? { activeRoot: res.activeRootSha256 } : {}),
    ...(res.answers.length > 0 ? { answers: res.answers.map((a) => ({ host: a.host, found: a.found })) } : {}),
  };
}

/**
 * Follows the controller's Watch stream: resume from the held revision, apply
 * and ack each response (nack with the reason when it cannot be applied), and
 * reconnect with jittered exponential backoff whenever the stream breaks —
 * the agent keeps serving its last state meanwhile.
 */
export class WatchClient {
  readonly #o: WatchClientOptions;
  readonly #backoff: Backoff;
  /** Which replica each attempt goes to: the next one after a failure. */
  readonly #replicas: ReplicaRotation;
  #client: DiscoveryClient | undefined;
  #call: ClientDuplexStream<WatchRequest, WatchResponse> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #firstResponseTimer: NodeJS.Timeout | undefined;
  #reportTimer: NodeJS.Timeout | undefined;
  #closed = false;
  #connected = false;
  /** Counts connects: a resolution that finishes after a newer connect (reconnect()) or close() opens nothing. */
  #attempt = 0;
  lastError = '';
  lastUpdateAt = 0;
  /** The replica ("host:port") the current stream is on, once it has answered; '' while none has. */
  peer = '';

  constructor(o: WatchClientOptions) {
    this.#o = o;
    this.#backoff = o.backoff ?? new Backoff(WATCH_BACKOFF);
    this.#replicas = new ReplicaRotation(o.controller, o.resolve);
  }

  get connected(): boolean {
    return this.#connected;
  }

  start(): void {
    this.#connect();
  }

  #setConnected(v: boolean): void {
    if (this.#connected === v) return;
    this.#connected = v;
    clearInterval(this.#reportTimer);
    this.#reportTimer = undefined;
    // Reports are taken only while a stream is up to carry them: what happened meanwhile goes in the first one after.
    const report = this.#o.report;
    if (v && report) {
      this.#reportTimer = setInterval(() => {
        const r = report();
        if (r) this.#call?.write({ request: { $case: 'report', report: r } });
      }, this.#o.reportIntervalMs ?? 5_000);
      this.#reportTimer.unref();
    }
    this.#o.onStatus?.(v);
  }

  #connect(): void {
    if (this.#closed) return;
    const attempt = ++this.#attempt;
    void this.#replicas.target().then((target) => {
      if (!this.#closed && attempt === this.#attempt) this.#open(target);
    });
  }

  #open(target: string): void {
    const creds = this.#o.credentials();
    this.#client?.close();
    // A fresh client per attempt picks up renewed node credentials and bundle.
    const client = new DiscoveryClient(
      target,
      controllerCredentials({ caPem: creds.bundlePem, trustDomain: creds.trustDomain, keyPem: creds.keyPem, certChainPem: creds.certChainPem }),
      CONTROLLER_CHANNEL_OPTIONS,
    );
    this.#client = client;
    const call = client.watch(new Metadata());
    this.#call = call;
    this.peer = '';
    let failed = false;
    const fail = (why: string): void => {
      if (failed || this.#call !== call) return;
      failed = true;
      // Nothing more is written on it (subscriptions wait for the next WatchStart).
      this.#call = undefined;
      clearTimeout(this.#firstResponseTimer);
      this.peer = '';
      this.#setConnected(false);
      this.lastError = why;
      call.cancel();
      if (this.#closed) return;
      this.#replicas.advance();
      const delay = this.#backoff.next();
      this.#o.logger.warn({ err: why, retryInMs: delay }, 'controller watch lost; serving cached state');
      this.#timer = setTimeout(() => this.#connect(), delay);
    };
    const firstResponseMs = this.#o.firstResponseTimeoutMs ?? 30_000;
    clearTimeout(this.#firstResponseTimer);
    this.#firstResponseTimer = setTimeout(() => fail(`no answer from the controller within ${firstResponseMs} ms of WatchStart`), firstResponseMs);
    call.on('data', (res: WatchResponse) => {
      if (this.#call === call) clearTimeout(this.#firstResponseTimer);
      if (this.peer === '') {
        // Which replica grpc-js picked: with several, the one to look at when this agent's updates lag.
        this.peer = call.getPeer();
        this.#o.logger.info({ controller: this.peer, revision: res.revision }, 'controller watch established');
      }
      this.#setConnected(true);
      this.#backoff.reset();
      const answer = (ok: boolean, reason: string): void => {
        call.write({ request: { $case: 'ack', ack: { revision: res.revision, ok, reason, certExpiresAtMs: this.#o.certExpiresAt(), trustedRoots: [...(this.#o.trustedRoots?.() ?? [])] } } });
      };
      try {
        this.#o.apply(toUpdate(res));
        this.lastUpdateAt = Date.now();
        answer(true, '');
      } catch (err) {
        const reason = errorMessage(err);
        this.#o.logger.error({ err, revision: res.revision }, 'refusing (nack) a controller update; keeping the last good state');
        answer(false, reason);
      }
    });
    call.on('error', (err: Error) => fail(err.message));
    call.on('end', () => fail('controller ended the stream'));
    const scope = this.#o.scope ?? 'full';
    const subscriptions = scope === 'node' ? [...(this.#o.subscriptions?.() ?? [])] : [];
    call.write({ request: { $case: 'start', start: { resumeRevision: this.#o.revision(), certExpiresAtMs: this.#o.certExpiresAt(), hboneAddress: this.#o.hboneAddress, scope, subscriptions } } });
  }

  /**
   * Node scope: asks the controller to follow `hosts` and to stop following
   * `drop`, on the stream open now. Without one nothing is sent: the next
   * WatchStart carries the hosts followed then.
   */
  subscribe(hosts: readonly string[], drop: readonly string[]): void {
    if (this.#closed || (hosts.length === 0 && drop.length === 0)) return;
    this.#call?.write({ request: { $case: 'subscribe', subscribe: { hosts: [...hosts], drop: [...drop] } } });
  }

  /** Reconnects now (e.g. after node certificate renewal). */
  reconnect(): void {
    clearTimeout(this.#timer);
    clearTimeout(this.#firstResponseTimer);
    this.#call?.cancel();
    this.#call = undefined;
    this.#connect();
  }

  close(): void {
    this.#closed = true;
    clearInterval(this.#reportTimer);
    clearTimeout(this.#timer);
    clearTimeout(this.#firstResponseTimer);
    this.#call?.cancel();
    this.#client?.close();
    this.#setConnected(false);
  }
}
