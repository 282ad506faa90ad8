import t from 'tap';
import { credentials, makeGenericClientConstructor, Server, ServerCredentials, type ServiceDefinition } from '@grpc/grpc-js';
import { controllerListProblem, controllerTarget, ReplicaRotation, SPREAD_OVER_REPLICAS } from '../../shared/controller-target.ts';

/** random() at its top: Fisher-Yates then swaps nothing, the list keeps its order. */
const KEEP_ORDER = (): number => 0.999_999;

t.test('one grpc-js target for every replica', async (t) => {
  t.equal(controllerTarget({ host: '10.0.0.1', port: 15012 }), '10.0.0.1:15012');
  t.equal(controllerTarget([{ host: 'ctl.example', port: 15012 }]), 'dns:ctl.example:15012', 'a name resolves to all of its addresses');
  t.equal(controllerTarget([{ host: '10.0.0.1', port: 15012 }, { host: '10.0.0.2', port: 15013 }], KEEP_ORDER), 'ipv4:10.0.0.1:15012,10.0.0.2:15013');
  t.equal(controllerTarget([{ host: 'fd00::1', port: 15012 }, { host: 'fd00::2', port: 15012 }], KEEP_ORDER), 'ipv6:[fd00::1]:15012,[fd00::2]:15012');
  t.equal(controllerTarget([{ host: '10.0.0.1', port: 1 }, { host: '10.0.0.2', port: 1 }, { host: '10.0.0.3', port: 1 }], () => 0), 'ipv4:10.0.0.2:1,10.0.0.3:1,10.0.0.1:1', 'the list is shuffled with the random source given');
});

t.test('each replica of a list comes first equally often (two and three replicas)', async (t) => {
  for (const n of [2, 3]) {
    const list = Array.from({ length: n }, (_, i) => ({ host: `10.0.0.${i + 1}`, port: 15012 }));
    const first = new Map<string, number>();
    const draws = 3000;
    for (let k = 0; k < draws; k++) {
      const head = controllerTarget(list).slice('ipv4:'.length).split(',')[0]!;
      first.set(head, (first.get(head) ?? 0) + 1);
    }
    for (const a of list) {
      const share = (first.get(`${a.host}:15012`) ?? 0) / draws;
      t.ok(Math.abs(share - 1 / n) < 0.05, `of ${n}: ${a.host} first in ${(share * 100).toFixed(1)}% of the targets`);
    }
  }
});

t.test('grpc-js channels on the target spread over three replicas', async (t) => {
  // Three plain gRPC servers on this test's loopback block, each counting the calls it answers.
  const service: ServiceDefinition = {
    ping: { path: '/test.Ping/Ping', requestStream: false, responseStream: false, requestSerialize: (b: Buffer) => b, requestDeserialize: (b: Buffer) => b, responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b },
  };
  const hosts = ['127.0.137.1', '127.0.137.2', '127.0.137.3'];
  const answered = new Map<string, number>();
  const replicas = await Promise.all(hosts.map(async (host) => {
    const server = new Server();
    server.addService(service, { ping: (_call: unknown, cb: (err: null, b: Buffer) => void) => { answered.set(host, (answered.get(host) ?? 0) + 1); cb(null, Buffer.alloc(0)); } });
    const port = await new Promise<number>((resolve, reject) => server.bindAsync(`${host}:0`, ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
    t.teardown(() => server.forceShutdown());
    return { host, port };
  }));
  const Client = makeGenericClientConstructor(service, 'Ping');
  const clients = 90;
  for (let k = 0; k < clients; k++) {
    // One channel a client, as each agent has its own.
    const client = new Client(controllerTarget(replicas), credentials.createInsecure(), SPREAD_OVER_REPLICAS);
    await new Promise<void>((resolve, reject) => client.makeUnaryRequest('/test.Ping/Ping', (b: Buffer) => b, (b: Buffer) => b, Buffer.alloc(0), (err) => (err ? reject(err) : resolve())));
    client.close();
  }
  for (const host of hosts) t.ok((answered.get(host) ?? 0) >= 15, `${host} answered ${answered.get(host) ?? 0} of ${clients} clients`);
});

t.test('lists grpc-js cannot resolve as one target are named', async (t) => {
  t.equal(controllerListProblem([{ host: 'a.example', port: 1 }]), undefined);
  t.equal(controllerListProblem([{ host: '10.0.0.1', port: 1 }, { host: '10.0.0.2', port: 1 }]), undefined);
  t.match(controllerListProblem([{ host: 'a.example', port: 1 }, { host: '10.0.0.2', port: 1 }]), /IP addresses/);
  t.match(controllerListProblem([{ host: '10.0.0.1', port: 1 }, { host: 'fd00::2', port: 1 }]), /IPv4 or all IPv6/);
});

t.test('a watch tries one replica per attempt, the next after a failure; a DNS name is resolved at each attempt', async (t) => {
  const asked: string[] = [];
  let answer: readonly string[] = ['10.0.0.1', '10.0.0.2', '10.0.0.3'];
  const resolve = async (host: string): Promise<readonly string[]> => {
    asked.push(host);
    if (host === 'ctl.example') return answer;
    if (host === 'mixed.example') return ['fd00::1', '10.0.0.9', 'fd00::2'];
    if (host === 'empty.example') return [];
    throw new Error('ENOTFOUND');
  };
  const name = (host: string) => ({ host, port: 15012 });
  const r = new ReplicaRotation(name('ctl.example'), resolve, KEEP_ORDER);
  t.equal(await r.target(), '10.0.0.1:15012', 'one address, not a list grpc-js would race');
  t.equal(await r.target(), '10.0.0.1:15012', 'the same replica until an attempt fails');
  r.advance();
  t.equal(await r.target(), '10.0.0.2:15012', 'the next one');
  r.advance();
  r.advance();
  t.equal(await r.target(), '10.0.0.1:15012', 'round the list');
  answer = ['10.0.0.4', '10.0.0.1'];
  t.equal(await r.target(), '10.0.0.4:15012', 'the name now resolves to other replicas: a new order, from its start');
  t.equal(asked.length, 5, 'resolved at each attempt');
  t.equal(await new ReplicaRotation(name('mixed.example'), resolve, KEEP_ORDER).target(), '[fd00::1]:15012', 'the first address\'s family only');
  const mixed = new ReplicaRotation(name('mixed.example'), resolve, KEEP_ORDER);
  await mixed.target();
  mixed.advance();
  t.equal(await mixed.target(), '[fd00::2]:15012');
  t.equal(await new ReplicaRotation(name('empty.example'), resolve).target(), 'dns:empty.example:15012', 'nothing resolved: grpc-js resolves and reports');
  t.equal(await new ReplicaRotation(name('missing.example'), resolve).target(), 'dns:missing.example:15012', 'a failed resolution too');
  const list = new ReplicaRotation([{ host: '10.0.0.1', port: 1 }, { host: '10.0.0.2', port: 1 }], async () => {
    t.fail('addresses are not resolved');
    return [];
  }, KEEP_ORDER);
  t.equal(await list.target(), '10.0.0.1:1');
  list.advance();
  t.equal(await list.target(), '10.0.0.2:1');
  const first = new Map<string, number>();
  for (let k = 0; k < 3000; k++) {
    const head = await new ReplicaRotation(name('ctl.example'), async () => ['10.0.0.1', '10.0.0.2', '10.0.0.3']).target();
    first.set(head, (first.get(head) ?? 0) + 1);
  }
  for (const a of ['10.0.0.1', '10.0.0.2', '10.0.0.3']) {
    const share = (first.get(`${a}:15012`) ?? 0) / 3000;
    t.ok(Math.abs(share - 1 / 3) < 0.05, `${a} first for ${(share * 100).toFixed(1)}% of the agents`);
  }
});
