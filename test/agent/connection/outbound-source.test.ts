/**
 * resolveOutboundSource (agent/connection/outbound-source.ts): which local
 * workload an outbound connection proves to be, per entry point, with the
 * socket owner's uid as ambit-dataplane reports it (asked of the kernel),
 * so that /proc is not read then. procRoot points at an empty directory:
 * a lookup there finds nothing, so a proof can only come from the reported uid.
 */
import t from 'tap';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveOutboundSource, type OutboundArrival } from '../../../agent/connection/outbound-source.ts';
import { MeshState } from '../../../agent/state/mesh-state.ts';
import type { Workload } from '../../../shared/resources/types.ts';

const HOST = '10.0.0.21';

function wl(name: string, address: string, uid?: number): Workload {
  return {
    kind: 'Workload',
    metadata: { name, namespace: 'shop', labels: { app: name }, revision: 1 },
    spec: { serviceAccount: name, node: 'vm-1', address, ports: [], weight: 1, locality: '', healthy: true, ...(uid === undefined ? {} : { uid }) },
  };
}

const state = new MeshState('vm-1', 'cluster.local');
state.apply({ revision: 1, snapshot: [wl('billing', HOST, 1001), wl('report', HOST, 1002)], nodes: [] });
const d = { state, agentAddress: HOST, procRoot: mkdtempSync(join(tmpdir(), 'ambit-noproc-')) };
const from = (ownerUid?: number, extra: Partial<OutboundArrival> = {}): OutboundArrival => ({
  remote: { address: HOST, port: 40000 }, local: { address: '127.0.0.1', port: 15080 }, ...(ownerUid === undefined ? {} : { ownerUid }), ...extra,
});

t.test('SOCKS5: the user names the workload; the reported owner uid proves it or not', async (t) => {
  const to = { destination: { address: 'web.shop', port: 80 } };
  t.match(await resolveOutboundSource(d, { kind: 'socks5' }, from(1001, { user: 'shop/billing', ...to })), { ok: true, source: { metadata: { name: 'billing' } }, destination: { address: 'web.shop', port: 80 } }, 'uid 1001 is billing');
  t.match(await resolveOutboundSource(d, { kind: 'socks5' }, from(1002, { user: 'shop/billing', ...to })), { ok: false, reason: 'source_not_verified' }, 'uid 1002 is not billing, though it shares the host address');
  t.match(await resolveOutboundSource(d, { kind: 'socks5' }, from(undefined, { user: 'shop/billing', ...to })), { ok: false, reason: 'source_not_verified' }, 'no uid reported and none in /proc: not proven');
  t.match(await resolveOutboundSource(d, { kind: 'socks5' }, from(1001, { user: 'shop/billing/x', ...to })), { ok: false, reason: 'source_not_verified' }, 'a malformed user names no workload');
});

t.test('capture (VM mode): the workload is the one whose uid owns the socket', async (t) => {
  const entry = { kind: 'capture', captureMode: 'vm' } as const;
  const dst = { destination: { address: '10.0.9.9', port: 443 } };
  t.match(await resolveOutboundSource(d, entry, from(1002, dst)), { ok: true, source: { metadata: { name: 'report' } } }, 'uid 1002 is report');
  t.match(await resolveOutboundSource(d, entry, from(4242, dst)), { ok: false, reason: 'unknown_source' }, 'a uid of no workload');
  t.match(await resolveOutboundSource(d, entry, from(1002, { destinationError: 'ENOENT' })), { ok: false, reason: 'no_original_destination' }, 'not redirected');
  t.match(await resolveOutboundSource(d, entry, from(1002, { destination: { address: '127.0.0.1', port: 15080 } })), { ok: false, reason: 'loop' }, 'the capture port itself');
});
