import t from 'tap';
import { canonicalIp, cidrContains, parseCidr, parseIp } from '../../shared/net-address.ts';

t.test('canonicalIp writes one spelling per address', async (t) => {
  const cases: [string, string | undefined][] = [
    ['10.0.0.1', '10.0.0.1'],
    ['0.0.0.0', '0.0.0.0'],
    ['255.255.255.255', '255.255.255.255'],
    ['010.0.0.1', undefined],
    ['10.0.0.01', undefined],
    ['10.0.0.256', undefined],
    ['10.0.0', undefined],
    [' 10.0.0.1', undefined],
    ['::', '::'],
    ['::1', '::1'],
    ['0:0:0:0:0:0:0:1', '::1'],
    ['2001:DB8:0000:0000:0001:0000:0000:0001', '2001:db8::1:0:0:1'],
    ['2001:db8:0:0:1:0:0:0', '2001:db8:0:0:1::'],
    ['2001:0db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'],
    ['1:0:0:2:0:0:0:3', '1:0:0:2::3'],
    ['1::', '1::'],
    ['::FFFF:10.0.0.1', '::ffff:10.0.0.1'],
    ['::ffff:a00:1', '::ffff:10.0.0.1'],
    ['::10.0.0.1', '::a00:1'],
    ['64:ff9b::192.0.2.33', '64:ff9b::c000:221'],
    ['fe80::1%eth0', undefined],
    ['1::2::3', undefined],
    ['1:2:3:4:5:6:7:8:9', undefined],
    ['::ffff:010.0.0.1', undefined],
    ['', undefined],
    ['localhost', undefined],
  ];
  for (const [input, want] of cases) t.equal(canonicalIp(input), want, JSON.stringify(input));
});

t.test('parseCidr', async (t) => {
  const good: [string, string][] = [
    ['10.0.0.0/8', '10.0.0.0/8'],
    ['0.0.0.0/0', '0.0.0.0/0'],
    ['10.1.2.3/32', '10.1.2.3/32'],
    ['2001:DB8::/32', '2001:db8::/32'],
    ['::/0', '::/0'],
    ['fd00::1/128', 'fd00::1/128'],
    ['10.1.2.0/23', '10.1.2.0/23'],
  ];
  for (const [input, want] of good) {
    const r = parseCidr(input);
    t.same(r.ok ? r.text : r.reason, want, input);
  }
  const bad: [string, RegExp][] = [
    ['10.0.0.1/8', /host bits set; did you mean 10\.0\.0\.0\/8\?/],
    ['10.1.3.0/23', /did you mean 10\.1\.2\.0\/23\?/],
    ['2001:db8::1/64', /did you mean 2001:db8::\/64\?/],
    ['10.0.0.0/33', /0-32/],
    ['::/129', /0-128/],
    ['10.0.0.0/08', /0-32/],
    ['10.0.0.0/', /0-32/],
    ['10.0.0.0/-1', /0-32/],
    ['10.0.0/8', /invalid IP/],
    ['10.0.0.0', /not a CIDR/],
  ];
  for (const [input, pattern] of bad) {
    const r = parseCidr(input);
    t.notOk(r.ok, input);
    if (!r.ok) t.match(r.reason, pattern, input);
  }
});

t.test('cidrContains', async (t) => {
  const block = (s: string) => {
    const r = parseCidr(s);
    if (!r.ok) throw new Error(r.reason);
    return r.cidr;
  };
  const ip = (s: string) => {
    const r = parseIp(s);
    if (r === undefined) throw new Error(s);
    return r;
  };
  t.ok(cidrContains(block('10.0.0.0/8'), ip('10.255.1.2')));
  t.notOk(cidrContains(block('10.0.0.0/8'), ip('11.0.0.0')));
  t.ok(cidrContains(block('10.1.2.0/23'), ip('10.1.3.255')));
  t.notOk(cidrContains(block('10.1.2.0/23'), ip('10.1.4.0')));
  t.ok(cidrContains(block('0.0.0.0/0'), ip('192.0.2.1')));
  t.notOk(cidrContains(block('0.0.0.0/0'), ip('2001:db8::1')), 'families do not mix');
  t.ok(cidrContains(block('10.0.0.0/8'), ip('::ffff:10.0.0.1')), 'an IPv4-mapped peer matches an IPv4 block');
  t.notOk(cidrContains(block('10.0.0.0/8'), ip('::a00:1')), 'an IPv4-compatible address does not');
  t.ok(cidrContains(block('2001:db8::/32'), ip('2001:db8:ffff::1')));
  t.notOk(cidrContains(block('2001:db8::/32'), ip('2001:db9::1')));
  t.ok(cidrContains(block('fd00::1/128'), ip('FD00:0::1')));
});
