import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import {
  DEFAULT_TOKEN_TTL_MS, hashSecret, JoinTokens, MAX_TOKEN_TTL_MS, parseJoinToken,
} from '../../../controller/registry/join-tokens.ts';
import { SqliteStore } from '../../../controller/store/sqlite-store.ts';

const CA = 'a'.repeat(64);
const OTHER_CA = 'b'.repeat(64);
const T0 = 1_700_000_000_000;

interface Test {
  testdir(): string;
  teardown(fn: () => unknown): void;
}

function setup(t: Test): { store: SqliteStore; tokens: JoinTokens; clock: { now: number }; dbPath: string } {
  const dbPath = path.join(t.testdir(), 'ambit.db');
  const clock = { now: T0 };
  const store = SqliteStore.open({ path: dbPath, now: () => clock.now });
  t.teardown(() => store.close());
  return { store, tokens: new JoinTokens(store, () => clock.now), clock, dbPath };
}

/** The token with its secret replaced by another well-formed one. */
function withSecret(token: string, secret: string): string {
  const [prefix, id, , ca] = token.split('.');
  return `${prefix}.${id}.${secret}.${ca}`;
}

t.test('create: the token format, expiry and a hashed record', async (t) => {
  const { store, tokens } = setup(t);
  const { token, expiresAt } = await tokens.create('node-1', DEFAULT_TOKEN_TTL_MS, CA);
  t.match(token, /^ambit-join\.[0-9a-f]{16}\.[A-Za-z0-9_-]{43}\.[0-9a-f]{64}$/);
  t.equal(expiresAt, T0 + DEFAULT_TOKEN_TTL_MS);
  const parsed = parseJoinToken(token);
  t.equal(parsed.caFingerprint, CA);
  const [record] = await store.listTokens();
  t.same(record, { id: parsed.id, secretHash: hashSecret(parsed.secret), node: 'node-1', createdAt: T0, expiresAt, usedAt: 0 });
  t.equal(hashSecret(parsed.secret), createHash('sha256').update(parsed.secret).digest('hex'));
  t.notMatch(JSON.stringify(await store.listTokens()), parsed.secret, 'the secret is not in the record');
  const second = await tokens.create('node-1', DEFAULT_TOKEN_TTL_MS, CA);
  t.not(parseJoinToken(second.token).id, parsed.id, 'ids are random');
  t.not(parseJoinToken(second.token).secret, parsed.secret, 'secrets are random');
});

t.test('only the hash reaches the database file', async (t) => {
  const { store, tokens, dbPath } = setup(t);
  const { token } = await tokens.create('node-1', DEFAULT_TOKEN_TTL_MS, CA);
  const { id, secret } = parseJoinToken(token);
  await store.close();
  const bytes = Buffer.concat(
    ['', '-wal', '-shm'].filter((s) => fs.existsSync(dbPath + s)).map((s) => fs.readFileSync(dbPath + s)),
  );
  t.ok(bytes.includes(Buffer.from(id)), 'sanity: the token id is in the file');
  t.ok(bytes.includes(Buffer.from(hashSecret(secret))), 'sanity: the hash is in the file');
  t.notOk(bytes.includes(Buffer.from(secret)), 'the secret is not');
});

t.test('consume: once, then "used"', async (t) => {
  const { tokens, store, clock } = setup(t);
  const { token } = await tokens.create('node-1', DEFAULT_TOKEN_TTL_MS, CA);
  clock.now = T0 + 1000;
  const record = await tokens.consume(token, 'node-1', [OTHER_CA, CA]);
  t.equal(record.node, 'node-1');
  t.equal(record.id, parseJoinToken(token).id);
  t.equal((await store.listTokens())[0]!.usedAt, T0 + 1000, 'marked used');
  await t.rejects(tokens.consume(token, 'node-1', [CA]), { code: 'AMBIT_ERR_TOKEN_INVALID', details: { reason: 'used' } });
});

t.test('consume: expired at its expiry time', async (t) => {
  const { tokens, clock } = setup(t);
  const { token, expiresAt } = await tokens.create('node-1', 60_000, CA);
  clock.now = expiresAt;
  await t.rejects(tokens.consume(token, 'node-1', [CA]), { code: 'AMBIT_ERR_TOKEN_INVALID', details: { reason: 'expired' } });
  clock.now = expiresAt - 1;
  t.equal((await tokens.consume(token, 'node-1', [CA])).node, 'node-1', 'still good a millisecond before');
});

t.test('consume: unknown id and wrong secret', async (t) => {
  const { tokens } = setup(t);
  const { token } = await tokens.create('node-1', DEFAULT_TOKEN_TTL_MS, CA);
  const unknown = token.replace(/^ambit-join\.[0-9a-f]{16}/, `ambit-join.${'0'.repeat(16)}`);
  await t.rejects(tokens.consume(unknown, 'node-1', [CA]), { code: 'AMBIT_ERR_TOKEN_INVALID', details: { reason: 'unknown' } });
  const wrong = withSecret(token, 'x'.repeat(43));
  await t.rejects(tokens.consume(wrong, 'node-1', [CA]), { code: 'AMBIT_ERR_TOKEN_INVALID', details: { reason: 'mismatch' } });
  t.equal((await tokens.consume(token, 'node-1', [CA])).node, 'node-1', 'a wrong guess does not burn the real token');
});

t.test('consume: a token pinning another CA is refused before the store is asked', async (t) => {
  const { tokens } = setup(t);
  const { token } = await tokens.create('node-1', DEFAULT_TOKEN_TTL_MS, OTHER_CA);
  await t.rejects(tokens.consume(token, 'node-1', [CA]), { code: 'AMBIT_ERR_TOKEN_INVALID', details: { reason: 'ca-mismatch' } });
  await t.rejects(tokens.consume(token, 'node-1', []), { code: 'AMBIT_ERR_TOKEN_INVALID', details: { reason: 'ca-mismatch' } });
  t.equal((await tokens.consume(token, 'node-1', [OTHER_CA])).node, 'node-1', 'not spent by the refusal');
});

t.test('consume: a token presented for another node is refused and spent', async (t) => {
  const { tokens } = setup(t);
  const { token } = await tokens.create('node-1', DEFAULT_TOKEN_TTL_MS, CA);
  await t.rejects(tokens.consume(token, 'node-2', [CA]), {
    code: 'AMBIT_ERR_TOKEN_INVALID', details: { reason: 'node-mismatch', tokenNode: 'node-1', node: 'node-2' },
  });
  await t.rejects(tokens.consume(token, 'node-1', [CA]), { code: 'AMBIT_ERR_TOKEN_INVALID', details: { reason: 'used' } }, 'leaked token is burnt');
});

t.test('malformed token strings', async (t) => {
  const { tokens } = setup(t);
  const { token } = await tokens.create('node-1', DEFAULT_TOKEN_TTL_MS, CA);
  const { id, secret } = parseJoinToken(token);
  t.same(parseJoinToken(`  ${token}\n`), parseJoinToken(token), 'surrounding whitespace is trimmed');
  const bad = [
    '',
    'ambit-join',
    token.replace('ambit-join', 'ambit-jojn'),
    `ambit-join.${id}.${secret}`,
    `ambit-join.${id}.${secret}.${CA}.extra`,
    `ambit-join.${id.toUpperCase()}.${secret}.${CA}`,
    `ambit-join.${id.slice(1)}.${secret}.${CA}`,
    `ambit-join.${id}.${secret.slice(1)}.${CA}`,
    `ambit-join.${id}.${secret}x.${CA}`,
    `ambit-join.${id}.${secret.slice(1)}+.${CA}`,
    `ambit-join.${id}.${secret}.${CA.toUpperCase()}`,
    `ambit-join.${id}.${secret}.${CA.slice(1)}`,
    `ambit-join.${id}.${secret}.${CA}`.replace(/\./g, ':'),
  ];
  for (const s of bad) {
    t.throws(() => parseJoinToken(s), { code: 'AMBIT_ERR_TOKEN_INVALID', details: { reason: 'malformed' } }, JSON.stringify(s));
    await t.rejects(tokens.consume(s, 'node-1', [CA]), { code: 'AMBIT_ERR_TOKEN_INVALID', details: { reason: 'malformed' } });
  }
  t.throws(() => parseJoinToken(undefined as unknown as string), { code: 'AMBIT_ERR_TOKEN_INVALID' });
  t.equal((await tokens.consume(token, 'node-1', [CA])).node, 'node-1', 'none of the malformed attempts touched the token');
});

t.test('create: ttl bounds and node names', async (t) => {
  const { tokens, store } = setup(t);
  for (const ttl of [0, -1, MAX_TOKEN_TTL_MS + 1, Number.NaN, Number.POSITIVE_INFINITY]) {
    await t.rejects(tokens.create('node-1', ttl, CA), { code: 'AMBIT_ERR_RESOURCE_INVALID', details: { field: 'ttl' } }, `ttl ${ttl}`);
  }
  t.equal((await tokens.create('node-1', MAX_TOKEN_TTL_MS, CA)).expiresAt, T0 + MAX_TOKEN_TTL_MS, 'the maximum is allowed');
  t.equal((await tokens.create('node-1', 1, CA)).expiresAt, T0 + 1);
  for (const node of ['', 'Node-1', 'node_1', '-node', 'node/1', 'a'.repeat(254)]) {
    await t.rejects(tokens.create(node, DEFAULT_TOKEN_TTL_MS, CA), { code: 'AMBIT_ERR_RESOURCE_INVALID', details: { field: 'node', value: node } }, JSON.stringify(node));
  }
  t.equal((await store.listTokens()).length, 2, 'refused creations stored nothing');
});
