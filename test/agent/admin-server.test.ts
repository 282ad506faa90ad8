/**
 * The admin port's /logging: GET reads the level and never changes it; POST
 * changes it, only for root or the agent's own user (the uid owning the
 * client socket, injected here; test/e2e/isolation/admin-logging.test.ts
 * reads it from /proc/net/tcp with real users).
 */
import t from 'tap';
import type { AddressInfo } from 'node:net';
import { adminEndpoint, mayChangeSettings } from '../../agent/admin-server.ts';
import type { CertManager } from '../../agent/identity/cert-manager.ts';
import { MeshState } from '../../agent/state/mesh-state.ts';
import { createLogger } from '../../shared/logger.ts';

const AGENT_UID = 4242;

t.test('mayChangeSettings: root and the agent\'s user only', async (t) => {
  t.equal(mayChangeSettings(0, AGENT_UID), true, 'root');
  t.equal(mayChangeSettings(AGENT_UID, AGENT_UID), true, 'the agent\'s own uid');
  t.equal(mayChangeSettings(65534, AGENT_UID), false, 'another user');
  t.equal(mayChangeSettings(undefined, AGENT_UID), false, 'an owner that could not be found');
  t.equal(mayChangeSettings(65534, undefined), false, 'agent uid unknown: still only root');
});

t.test('/logging over HTTP', async (t) => {
  const sink = { write: () => undefined };
  const log = createLogger({ name: 'agent', level: 'info', destination: sink });
  const access = createLogger({ name: 'access', level: 'info', destination: sink });
  let peer: number | undefined = 65534;
  const certs = { status: () => [], get: () => undefined } as unknown as CertManager;
  const admin = adminEndpoint({ state: new MeshState('node-a', 'cluster.local'), certs, loggers: [log, access], extra: () => ({}), now: Date.now, agentUid: AGENT_UID, peerUid: async () => peer });
  const at: AddressInfo = await admin.listen({ host: '127.0.102.31', port: 0 });
  t.teardown(() => admin.close());
  const call = async (method: string, query = ''): Promise<{ status: number; body: string; allow: string | null }> => {
    const r = await fetch(`http://127.0.102.31:${at.port}/logging${query}`, { method });
    return { status: r.status, body: await r.text(), allow: r.headers.get('allow') };
  };

  t.same(JSON.parse((await call('GET')).body), { level: 'info' }, 'GET reads the level');
  const get = await call('GET', '?level=fatal');
  t.equal(get.status, 405, 'GET with ?level=: 405');
  t.equal(get.allow, 'POST', 'Allow: POST');
  t.match(get.body, /change it with POST \/logging\?level=LEVEL/, 'says how to change it');
  t.equal(log.level, 'info', 'the level did not change');

  peer = 65534;
  const other = await call('POST', '?level=fatal');
  t.equal(other.status, 403, 'POST from another user: 403');
  t.match(other.body, /only root or the agent's user \(uid 4242\).*uid: 65534/, 'says who may, and who asked');
  t.equal(log.level, 'info', 'unchanged');
  peer = undefined;
  t.equal((await call('POST', '?level=fatal')).status, 403, 'POST whose socket owner is unknown: 403');
  t.equal((await call('PUT', '?level=fatal')).status, 405, 'PUT: 405');
  t.equal(log.level, 'info', 'unchanged');

  peer = AGENT_UID;
  t.equal((await call('POST', '?level=debug')).status, 200, 'POST as the agent\'s user: 200');
  t.equal(log.level, 'debug', 'changed');
  t.equal(access.level, 'debug', 'every logger together');
  peer = 0;
  t.same(JSON.parse((await call('POST', '?level=warn')).body), { level: 'warn' }, 'POST as root: 200 with the new level');
  t.equal((await call('POST', '?level=loud')).status, 400, 'an unknown level: 400');
  t.equal((await call('POST')).status, 400, 'no level: 400');
  t.equal(log.level, 'warn', 'left as it was');
});
