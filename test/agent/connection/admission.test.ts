import t from 'tap';
import { forwardedFor, parseAuthority } from '../../../agent/connection/admission.ts';

t.test('parseAuthority accepts ip:port and [v6]:port', async (t) => {
  t.same(parseAuthority('10.0.0.1:8080'), { ip: '10.0.0.1', port: 8080 });
  t.same(parseAuthority('[2001:db8::1]:443'), { ip: '2001:db8::1', port: 443 });
  t.same(parseAuthority('[::1]:1'), { ip: '::1', port: 1 }, 'lowest port');
  t.same(parseAuthority('255.255.255.255:65535'), { ip: '255.255.255.255', port: 65535 }, 'highest port');
  t.same(parseAuthority('[::ffff:10.0.0.1]:80'), { ip: '::ffff:10.0.0.1', port: 80 }, 'IPv4-mapped IPv6');
  t.same(parseAuthority('[FD00::A]:80'), { ip: 'FD00::A', port: 80 }, 'upper-case hex');
  t.same(parseAuthority('10.0.0.1:08080'), { ip: '10.0.0.1', port: 8080 }, 'five digits with a leading zero');
});

t.test('parseAuthority refuses anything else', async (t) => {
  const bad = [
    undefined, '',
    '10.0.0.1', '10.0.0.1:', ':80', '[::1]', '[::1]:',
    '2001:db8::1:80', '::1:80', // IPv6 must be bracketed
    'web.shop:80', 'localhost:80', // names: the authority is a workload address
    '10.0.0.256:80', '10.0.0:80', '[2001:db8::g]:80', '[1:2:3:4:5:6:7:8:9]:80',
    '10.0.0.1:0', '10.0.0.1:65536', '10.0.0.1:99999', '10.0.0.1:123456', '10.0.0.1:-1', '10.0.0.1:8o',
    ' 10.0.0.1:80', '10.0.0.1:80 ', '10.0.0.1:80\n', '10.0.0.1:80/path', 'http://10.0.0.1:80',
    '[fe80::1%eth0]:80',
    `[${'0:'.repeat(31)}0]:80`, // over 64 characters
    '1'.repeat(65), `10.0.0.1:${'0'.repeat(60)}80`,
  ];
  for (const a of bad) t.equal(parseAuthority(a), undefined, JSON.stringify(a));
});

t.test('forwardedFor reads the for= parameter (RFC 7239)', async (t) => {
  t.equal(forwardedFor('for=1.2.3.4'), '1.2.3.4');
  t.equal(forwardedFor('for="[::1]:80"'), '::1', 'quoted, bracketed IPv6 with a port');
  t.equal(forwardedFor('for="[2001:db8::17]"'), '2001:db8::17', 'quoted, bracketed IPv6');
  t.equal(forwardedFor('for="1.2.3.4"'), '1.2.3.4', 'quoted IPv4');
  t.equal(forwardedFor('For=1.2.3.4'), '1.2.3.4', 'the parameter name is case-insensitive');
  t.equal(forwardedFor('proto=https;for=10.1.2.3;by=10.0.0.1'), '10.1.2.3', 'among other parameters');
  t.equal(forwardedFor('for=1.2.3.4, for=5.6.7.8'), '1.2.3.4', 'the first element (the original client)');
  t.equal(forwardedFor(['for=9.9.9.9', 'for=1.1.1.1']), '9.9.9.9', 'a repeated header: the first');
});

t.test('forwardedFor: missing or garbage → undefined', async (t) => {
  const bad: (string | string[] | undefined)[] = [
    undefined, '', [], 'proto=https', 'by=1.2.3.4',
    'for=unknown', 'for=_hidden', 'for=', 'for=""', 'for="[garbage]"', 'for=999.1.1.1', 'for=1.2.3',
    'xfor=1.2.3.4', 'before=1.2.3.4', // only a whole "for" parameter counts
  ];
  for (const h of bad) t.equal(forwardedFor(h), undefined, JSON.stringify(h));
});
