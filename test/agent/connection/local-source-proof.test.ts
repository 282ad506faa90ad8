/**
 * How a local connection proves which workload it is (SOCKS5, upstream
 * listeners), without sockets: requiredProof over a table of workloads and
 * addresses, and proveLocalSource with the socket owner's uid given.
 */
import t from 'tap';
import { proveLocalSource, requiredProof, type AddressSharing, type RequiredProof } from '../../../agent/connection/source-proof.ts';
import type { Workload } from '../../../shared/resources/types.ts';

function wl(name: string, address: string, uid?: number): Workload {
  return {
    kind: 'Workload',
    metadata: { name, namespace: 'shop', labels: {}, revision: 1 },
    spec: { serviceAccount: name, node: 'vm-1', address, ports: [], weight: 1, locality: '', healthy: true, ...(uid === undefined ? {} : { uid }) },
  };
}

const HOST = '10.0.0.5';
const POD = wl('pod', '10.244.0.7');
const POD_UID = wl('pod-uid', '10.244.0.9', 1002);
const VM_HOST = wl('vm-host', HOST);
const VM_HOST_UID = wl('vm-host-uid', HOST, 1001);
const LOOP = wl('loop', '127.0.0.1');
const LOOP_OTHER = wl('loop-other', '127.0.0.9');
const V6_LOOP = wl('v6-loop', '::1');
const DUP_1 = wl('dup-1', '10.244.0.8');
const DUP_2 = wl('dup-2', '10.244.0.8');
const ALL = [POD, POD_UID, VM_HOST, VM_HOST_UID, LOOP, LOOP_OTHER, V6_LOOP, DUP_1, DUP_2];

const sharing = (agentAddress: string, workloads: readonly Workload[] = ALL): AddressSharing => ({
  agentAddress,
  workloadsAt: (ip) => workloads.filter((w) => w.spec.address === ip),
});

t.test('requiredProof: an address proves a workload only where it is the workload\'s alone', async (t) => {
  const onHost = sharing(HOST);
  const cases: [Workload, AddressSharing, RequiredProof['by'], string][] = [
    [POD, onHost, 'address', 'a pod address no other workload has'],
    [POD_UID, onHost, 'uid', 'a uid is registered: the uid, even on a pod address'],
    [VM_HOST_UID, onHost, 'uid', 'the host\'s address, with a uid'],
    [VM_HOST, onHost, 'none', 'the host\'s address, no uid: nothing proves it'],
    [LOOP, onHost, 'none', '127.0.0.1, no uid'],
    [LOOP_OTHER, onHost, 'none', 'another loopback address, on a host agent'],
    [V6_LOOP, onHost, 'none', '::1, no uid'],
    [DUP_1, onHost, 'none', 'an address two workloads registered'],
    [wl('mapped', `::ffff:${HOST}`), onHost, 'none', 'the host\'s address, IPv4-mapped'],
    // Several simulated hosts on one machine: the agent runs on a loopback address.
    [wl('sim-pod', '127.0.9.5'), sharing('127.0.9.2', []), 'address', 'agent on loopback: another loopback address stands for a pod'],
    [wl('sim-host', '127.0.9.2'), sharing('127.0.9.2', []), 'none', 'agent on loopback: its own address is still the host\'s'],
    [wl('sim-lo', '127.0.0.1'), sharing('127.0.9.2', []), 'none', 'agent on loopback: 127.0.0.1 is everyone\'s'],
  ];
  for (const [w, s, by, name] of cases) {
    const p = requiredProof(w, s);
    t.equal(p.by, by, name);
    if (p.by === 'uid') t.equal(p.uid, w.spec.uid, `${name}: the registered uid`);
    if (p.by === 'none') t.match(p.why, /has no uid$/, `${name}: says why (${p.why})`);
  }
});

t.test('proveLocalSource: the proof requiredProof names, and no other', async (t) => {
  const from = (address: string, ownerUid: number) => ({ ends: { remoteAddress: address, remotePort: 40000, localAddress: '127.0.0.1', localPort: 15080 }, ownerUid });
  const onHost = sharing(HOST);
  const cases: [Workload, ReturnType<typeof from>, boolean, string][] = [
    [VM_HOST_UID, from(HOST, 1001), true, 'the host\'s address, a process of the registered uid'],
    [VM_HOST_UID, from(HOST, 1002), false, 'the host\'s address, a process of another uid'],
    [VM_HOST_UID, from('127.0.0.1', 1001), true, 'the registered uid, from any local address'],
    [VM_HOST, from(HOST, 0), false, 'the host\'s address, no uid registered: any process could bind it'],
    [POD_UID, from('10.244.0.9', 1002), true, 'uid registered: its uid'],
    [POD_UID, from('10.244.0.9', 1001), false, 'uid registered: its own address with another uid is not enough'],
    [POD, from('10.244.0.7', 65534), true, 'a pod address that is its alone'],
    [POD, from('::ffff:10.244.0.7', 65534), true, 'the same, IPv4-mapped'],
    [POD, from('10.244.0.8', 65534), false, 'another address'],
    [DUP_1, from('10.244.0.8', 65534), false, 'an address two workloads share'],
    [LOOP, from('127.0.0.1', 0), false, '127.0.0.1 without a uid, even as root'],
  ];
  for (const [w, c, ok, name] of cases) {
    let looked = 0;
    const got = await proveLocalSource(c.ends, w, onHost, async () => (looked++, c.ownerUid));
    t.equal(got, ok, name);
    if (w.spec.uid === undefined) t.equal(looked, 0, `${name}: no socket owner lookup without a uid`);
  }
});
