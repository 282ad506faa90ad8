import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadState, saveState, type CachedState } from '../../../agent/state/state-cache.ts';
import { createLogger, type Logger } from '../../../shared/logger.ts';
import type { AuthorizationPolicy, Service, Workload } from '../../../shared/resources/types.ts';

const mode = (p: string): number => fs.statSync(p).mode & 0o777;

/** A warn-level logger whose JSON lines land in `lines`. */
function capture(): { logger: Logger; lines: () => Record<string, unknown>[] } {
  const raw: string[] = [];
  const logger = createLogger({ name: 'test', level: 'warn', destination: { write: (s: string) => void raw.push(s) } });
  return { logger, lines: () => raw.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

const web: Workload = {
  kind: 'Workload',
  metadata: { name: 'web', namespace: 'shop', labels: { app: 'web', tier: 'front' }, revision: 7 },
  spec: { serviceAccount: 'web', node: 'node-a', address: '2001:db8::7', ports: [8080, 9090], uid: 1001, weight: 3, locality: 'eu/a', healthy: false },
};
const db: Workload = {
  kind: 'Workload',
  metadata: { name: 'db', namespace: 'shop', labels: {}, revision: 3 },
  spec: { serviceAccount: 'db', node: 'node-b', address: '10.0.0.2', ports: [], weight: 1, locality: '', healthy: true },
};
const svc: Service = {
  kind: 'Service',
  metadata: { name: 'web', namespace: 'shop', labels: {}, revision: 9 },
  spec: { addresses: ['10.96.0.10'], ports: [{ name: 'http', port: 80, targetPort: 8080, appProtocol: 'tcp' }], selector: { app: 'web' } },
};
const pol: AuthorizationPolicy = {
  kind: 'AuthorizationPolicy',
  metadata: { name: 'allow-shop', namespace: 'shop', labels: {}, revision: 11 },
  spec: {
    selector: { app: 'web' },
    action: 'ALLOW',
    rules: [{
      from: [{ principals: ['cluster.local/ns/shop/sa/client'], notPrincipals: [], namespaces: [], notNamespaces: [], serviceAccounts: [], notServiceAccounts: [], ipBlocks: ['10.0.0.0/8'], notIpBlocks: [] }],
      to: [{ ports: [8080], notPorts: [] }],
    }],
  },
};
const state: CachedState = {
  revision: 42,
  storeId: '9f1c2d4e-0000-4000-8000-000000000001',
  resources: [web, db, svc, pol],
  nodes: [{ name: 'node-b', hboneAddress: '192.0.2.2:15008' }],
  bundlePem: '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n',
  subscriptions: ['db.data', '10.96.0.10', '2001:db8::7', 'web.shop'],
};

t.test('save then load gives back the same state, revisions included', async (t) => {
  const dir = t.testdir();
  const { logger, lines } = capture();
  saveState(dir, state);
  const file = path.join(dir, 'state.json');
  t.equal(mode(file), 0o600, 'state file is 0600');
  const loaded = loadState(dir, logger);
  t.same(loaded, state, 'deep equal');
  t.strictSame(loaded?.resources.map((r) => r.metadata.revision), [7, 3, 9, 11], 'each resource keeps its own revision');
  t.same(lines(), [], 'nothing logged');

  // Overwriting keeps the mode and replaces the content.
  saveState(dir, { ...state, revision: 43, resources: [db] });
  t.equal(mode(file), 0o600);
  t.same(loadState(dir, logger), { ...state, revision: 43, resources: [db] });
  t.same(fs.readdirSync(dir), ['state.json'], 'no temporary files left behind');
});

t.test('a cache written before store identities loads with an empty identity (not judged)', async (t) => {
  const dir = t.testdir();
  saveState(dir, state);
  const file = path.join(dir, 'state.json');
  const raw = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  t.equal(raw.storeId, state.storeId, 'the store identity is written with the state');
  delete raw.storeId;
  fs.writeFileSync(file, JSON.stringify(raw));
  t.equal(loadState(dir, capture().logger)?.storeId, '');
});

t.test('the followed hosts round-trip in their order; a cache written before them loads with none', async (t) => {
  const dir = t.testdir();
  const { logger, lines } = capture();
  saveState(dir, state);
  const file = path.join(dir, 'state.json');
  const raw = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  t.same(raw.subscriptions, state.subscriptions, 'written with the state, least recently used first');
  t.strictSame(loadState(dir, logger)?.subscriptions, state.subscriptions);
  delete raw.subscriptions;
  fs.writeFileSync(file, JSON.stringify(raw));
  const old = loadState(dir, logger);
  t.strictSame(old?.subscriptions, [], 'none');
  t.equal(old?.revision, 42, 'the rest of the state still loads');
  t.same(lines(), [], 'nothing logged');
});

t.test('invalid cached subscriptions are dropped with a warning naming them; the state and the good ones load', async (t) => {
  const dir = t.testdir();
  saveState(dir, state);
  const file = path.join(dir, 'state.json');
  const raw = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  fs.writeFileSync(file, JSON.stringify({ ...raw, subscriptions: ['web.shop', 'api.github.com', 42, '2001:DB8:0::7', 'localhost', '10.0.0.1', '2001:db8::7', 'db.data.svc.cluster.local', null] }));
  const { logger, lines } = capture();
  const loaded = loadState(dir, logger);
  t.equal(loaded?.revision, 42, 'the state loads');
  t.strictSame(loaded?.subscriptions, ['web.shop', '10.0.0.1', '2001:db8::7', 'db.data'], 'valid ones, canonical as the live path makes them, in order; a host written twice counts at its later place');
  const warned = lines();
  t.equal(warned.length, 1, 'one warning');
  t.equal(warned[0]?.level, 'warn');
  t.match(warned[0]?.msg, /cached subscriptions that are neither an IP address nor a service name/);
  t.same(warned[0]?.invalid, ['api.github.com', 42, 'localhost', null], 'naming each dropped entry');

  fs.writeFileSync(file, JSON.stringify({ ...raw, subscriptions: 'web.shop' }));
  const { logger: l2, lines: lines2 } = capture();
  t.strictSame(loadState(dir, l2)?.subscriptions, [], 'not a list: none');
  t.match(lines2()[0]?.msg, /cached subscriptions are not a list/);
});

t.test('never more cached subscriptions than the bound: the most recently used are kept', async (t) => {
  const dir = t.testdir();
  saveState(dir, state);
  const { logger, lines } = capture();
  t.strictSame(loadState(dir, logger, { maxSubscriptions: 2 })?.subscriptions, ['2001:db8::7', 'web.shop'], 'the last two (most recently used)');
  t.match(lines()[0], { level: 'warn', cached: 4, max: 2 });
  t.strictSame(loadState(dir, capture().logger, { maxSubscriptions: 4 })?.subscriptions, state.subscriptions, 'at the bound: all');
});

t.test('no cache: undefined, silently', async (t) => {
  const { logger, lines } = capture();
  t.equal(loadState(t.testdir(), logger), undefined);
  t.same(lines(), []);
});

t.test('an unreadable cache is ignored with a warning', async (t) => {
  const good = (() => {
    const dir = t.testdir();
    saveState(dir, state);
    return JSON.parse(fs.readFileSync(path.join(dir, 'state.json'), 'utf8')) as { version: number; resources: { revision: number; doc: Record<string, unknown> }[] };
  })();
  const variants: Record<string, string> = {
    'not JSON': '{"version": 1, "revision": ',
    'unknown version': JSON.stringify({ ...good, version: 2 }),
    'an invalid resource': JSON.stringify({ ...good, resources: [{ revision: 1, doc: { ...good.resources[0]!.doc, kind: 'Gadget' } }] }),
    'resources not a list': JSON.stringify({ ...good, resources: 'oops' }),
    'null': 'null',
  };
  for (const [what, text] of Object.entries(variants)) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ambit-state-cache-'));
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    fs.writeFileSync(path.join(dir, 'state.json'), text, { mode: 0o600 });
    const { logger, lines } = capture();
    t.equal(loadState(dir, logger), undefined, `${what}: undefined`);
    const warned = lines();
    t.equal(warned.length, 1, `${what}: one warning`);
    t.equal(warned[0]?.level, 'warn');
    t.match(warned[0]?.msg, /cached mesh state is unreadable/);
    if (what === 'unknown version') t.match(JSON.stringify(warned[0]?.err), /unknown cache version 2/, 'the reason names the version');
  }
});

t.test('routes and fault injections survive the cache as validated', async (t) => {
  const { validateResource } = await import('../../../shared/resources/validate.ts');
  const route = { ...validateResource({
    apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', metadata: { name: 'canary', namespace: 'shop' },
    spec: { parentRefs: [{ group: '', kind: 'Service', name: 'web', port: 80 }], rules: [{ backendRefs: [{ name: 'web', port: 80, weight: 9 }], timeouts: { request: '1m30s' }, retry: { codes: [503] } }] },
  }, 'x'), metadata: { name: 'canary', namespace: 'shop', labels: {}, revision: 12 } };
  const grpc = { ...validateResource({
    apiVersion: 'gateway.networking.k8s.io/v1', kind: 'GRPCRoute', metadata: { name: 'rpc', namespace: 'shop' },
    spec: { parentRefs: [{ group: '', kind: 'Service', name: 'web' }], rules: [{ retry: { codes: ['UNAVAILABLE'] } }] },
  }, 'x'), metadata: { name: 'rpc', namespace: 'shop', labels: {}, revision: 13 } };
  const fault = { ...validateResource({ apiVersion: 'ambit.dev/v1alpha1', kind: 'FaultInjection', metadata: { name: 'slow', namespace: 'shop' }, spec: { abort: { httpStatus: 503, grpcStatus: 14, percentage: 2.5 } } }, 'x'), metadata: { name: 'slow', namespace: 'shop', labels: {}, revision: 14 } };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ambit-cache-routes-'));
  const state: CachedState = { revision: 14, storeId: 's', resources: [route, grpc, fault], nodes: [], bundlePem: '', subscriptions: [] };
  saveState(dir, state);
  t.same(loadState(dir, capture().logger), state);
});
