import t from 'tap';
import { controllerListProblem, controllerTarget } from '../../shared/controller-target.ts';

t.test('one grpc-js target for every replica', async (t) => {
  t.equal(controllerTarget({ host: '10.0.0.1', port: 15012 }), '10.0.0.1:15012');
  t.equal(controllerTarget([{ host: 'ctl.example', port: 15012 }]), 'dns:ctl.example:15012', 'a name resolves to all of its addresses');
  t.equal(controllerTarget([{ host: '10.0.0.1', port: 15012 }, { host: '10.0.0.2', port: 15013 }]), 'ipv4:10.0.0.1:15012,10.0.0.2:15013');
  t.equal(controllerTarget([{ host: 'fd00::1', port: 15012 }, { host: 'fd00::2', port: 15012 }]), 'ipv6:[fd00::1]:15012,[fd00::2]:15012');
});

t.test('lists grpc-js cannot resolve as one target are named', async (t) => {
  t.equal(controllerListProblem([{ host: 'a.example', port: 1 }]), undefined);
  t.equal(controllerListProblem([{ host: '10.0.0.1', port: 1 }, { host: '10.0.0.2', port: 1 }]), undefined);
  t.match(controllerListProblem([{ host: 'a.example', port: 1 }, { host: '10.0.0.2', port: 1 }]), /IP addresses/);
  t.match(controllerListProblem([{ host: '10.0.0.1', port: 1 }, { host: 'fd00::2', port: 1 }]), /IPv4 or all IPv6/);
});
