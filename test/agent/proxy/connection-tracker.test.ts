import t from 'tap';
import { ConnectionTracker } from '../../../agent/proxy/connection-tracker.ts';
import { Authorizer, type ConnectionFacts } from '../../../shared/authorization.ts';
import type { AuthorizationPolicy, Workload } from '../../../shared/resources/types.ts';
import { workloadId } from '../../../shared/spiffe-id.ts';

const web: Workload = {
  kind: 'Workload',
  metadata: { name: 'web', namespace: 'shop', labels: { app: 'web' }, revision: 1 },
  spec: { serviceAccount: 'web', node: 'n', address: '10.0.0.2', ports: [], weight: 1, locality: '', healthy: true },
};
const facts: ConnectionFacts = { sourceIdentity: workloadId('cluster.local', 'shop', 'client'), sourceAddress: '10.0.0.1', destination: web, destinationPort: 80 };
const policy = (name: string, action: 'ALLOW' | 'DENY', serviceAccounts: string[]): AuthorizationPolicy => ({
  kind: 'AuthorizationPolicy',
  metadata: { name, namespace: 'shop', labels: {}, revision: 1 },
  spec: { action, rules: [{ from: [{ principals: [], notPrincipals: [], namespaces: [], notNamespaces: [], serviceAccounts, notServiceAccounts: [], ipBlocks: [], notIpBlocks: [] }], to: [] }] },
});

t.test('recheck closes what the new policies deny, naming the policy it is counted under', async (t) => {
  for (const [what, policies, expected] of [
    ['a DENY', [policy('no-client', 'DENY', ['shop/client'])], 'shop/no-client'],
    ['no matching ALLOW', [policy('only-db', 'ALLOW', ['shop/db'])], '(no ALLOW matched)'],
  ] as const) {
    const tracker = new ConnectionTracker();
    const closed: { reason: string; flags: string; policy: string | undefined }[] = [];
    let end: () => void = () => undefined;
    tracker.add({ direction: 'inbound', facts, close: (reason, flags, p) => { closed.push({ reason, flags, policy: p }); end(); }, done: new Promise<void>((r) => (end = r)) });
    tracker.add({ direction: 'outbound', close: () => t.fail('outbound connections are not rechecked'), done: new Promise<void>(() => undefined) });
    const authz = new Authorizer(policies);
    t.equal(tracker.recheck((f) => authz.evaluate(f)), 1, `${what}: one closed`);
    t.same(closed, [{ reason: `denied by policy ${expected} after a policy change`, flags: 'DENY', policy: expected }], `${what}: named ${expected}`);
  }
  const tracker = new ConnectionTracker();
  tracker.add({ direction: 'inbound', facts, close: () => t.fail('allowed: kept'), done: new Promise<void>(() => undefined) });
  t.equal(tracker.recheck((f) => new Authorizer([policy('client', 'ALLOW', ['shop/client'])]).evaluate(f)), 0, 'an allowed connection stays open');
});
