import t from 'tap';
import { ConsoleLogins, DEFAULT_LOGIN_TTL_MS, SESSION_TTL_MS } from '../../../controller/console/console-logins.ts';

const ADMIN = 'spiffe://cluster.local/ambit/admin/admin';

function clock(start = 1_000_000): { now: () => number; advance: (ms: number) => void } {
  let t0 = start;
  return { now: () => t0, advance: (ms) => void (t0 += ms) };
}

t.test('a login token is single use and becomes a session of the admin who asked', async (t) => {
  const c = clock();
  const logins = new ConsoleLogins(c.now);
  const { token, expiresAt } = logins.createLogin(ADMIN, DEFAULT_LOGIN_TTL_MS);
  t.match(token, /^ambit-console-[A-Za-z0-9_-]{43}$/);
  t.equal(expiresAt, c.now() + DEFAULT_LOGIN_TTL_MS);
  const s = logins.login(token);
  t.equal(s.who, ADMIN);
  t.equal(logins.session(s.session), ADMIN, 'the session names the admin');
  t.throws(() => logins.login(token), { code: 'AMBIT_ERR_CONSOLE_LOGIN' }, 'a used token is refused');
});

t.test('tokens and sessions expire', async (t) => {
  const c = clock();
  const logins = new ConsoleLogins(c.now);
  const { token } = logins.createLogin(ADMIN, 60_000);
  c.advance(60_000);
  t.throws(() => logins.login(token), { code: 'AMBIT_ERR_CONSOLE_LOGIN' }, 'an expired token is refused');
  const s = logins.login(logins.createLogin(ADMIN, 60_000).token);
  c.advance(SESSION_TTL_MS - 1);
  t.equal(logins.session(s.session), ADMIN, 'alive until its lifetime ends');
  c.advance(1);
  t.equal(logins.session(s.session), undefined, 'then gone');
});

t.test('logout ends a session; unknown and malformed secrets are refused; TTL bounds', async (t) => {
  const logins = new ConsoleLogins(Date.now);
  const s = logins.login(logins.createLogin(ADMIN, 60_000).token);
  logins.logout(s.session);
  t.equal(logins.session(s.session), undefined);
  t.equal(logins.session(undefined), undefined);
  t.equal(logins.session('nope'), undefined);
  for (const bad of ['', 'ambit-console-', 'x'.repeat(5000)]) t.throws(() => logins.login(bad), { code: 'AMBIT_ERR_CONSOLE_LOGIN' });
  for (const ttl of [0, -1, 3_600_001, 1.5]) t.throws(() => logins.createLogin(ADMIN, ttl), { code: 'AMBIT_ERR_CONSOLE_LOGIN' }, `ttl ${ttl} refused`);
});

t.test('only digests are held: neither the token nor the session is in the object', async (t) => {
  const logins = new ConsoleLogins(Date.now);
  const { token } = logins.createLogin(ADMIN, 60_000);
  const pending = logins.createLogin(ADMIN, 60_000).token;
  const s = logins.login(token);
  const { inspect } = await import('node:util');
  const dump = inspect(logins, { showHidden: true, depth: 10 });
  for (const secret of [token, pending, s.session]) t.notOk(dump.includes(secret), 'secret not held in clear');
});

t.test('bounded: a flood of logins keeps at most 256 sessions', async (t) => {
  const logins = new ConsoleLogins(Date.now);
  const first = logins.login(logins.createLogin(ADMIN, 60_000).token);
  for (let i = 0; i < 300; i++) logins.login(logins.createLogin(ADMIN, 60_000).token);
  t.equal(logins.sessions, 256);
  t.equal(logins.session(first.session), undefined, 'the oldest made way');
});
