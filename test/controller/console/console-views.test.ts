import t from 'tap';
import { Explainer } from '../../../controller/explain/explain.ts';
import { Registry } from '../../../controller/registry/registry.ts';
import { explainWithEngine, policiesView, ruleText } from '../../../controller/console/console-views.ts';
import type { DenialView } from '../../../controller/telemetry/telemetry-window.ts';
import { parseSourcedDocuments, validateAll } from '../../../shared/resources/validate.ts';

const MESH = `
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: { name: web, namespace: demo, labels: { app: web } }
spec: { serviceAccount: web, node: node-b, address: 10.0.0.13, ports: [8080] }
---
apiVersion: ambit.dev/v1alpha1
kind: Workload
metadata: { name: spy, namespace: demo, labels: { app: spy } }
spec: { serviceAccount: spy, node: node-a, address: 10.0.0.15 }
---
apiVersion: ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: no-spy, namespace: demo }
spec:
  selector: { matchLabels: { app: web } }
  action: DENY
  rules:
    - from: [{ source: { principals: ["cluster.local/ns/demo/sa/spy"] } }]
---
apiVersion: ambit.dev/v1alpha1
kind: AuthorizationPolicy
metadata: { name: everyone, namespace: ambit-system }
spec:
  action: ALLOW
  rules: [{}]
`;

function setup(yaml = MESH): { registry: Registry; explain: ReturnType<typeof explainWithEngine> } {
  const registry = new Registry();
  registry.load(7, validateAll(parseSourcedDocuments(yaml, 'mesh.yaml')));
  const explainer = new Explainer(() => ({ revision: registry.revision, trustDomain: 'cluster.local', resources: registry.all(), nodeAddress: () => undefined }));
  return { registry, explain: explainWithEngine(explainer, registry) };
}

const denial = (o: Partial<DenialView> = {}): DenialView => ({
  at: 1, node: 'node-b', direction: 'inbound', sourcePrincipal: 'spiffe://cluster.local/ns/demo/sa/spy', sourceWorkload: 'spy', sourceNamespace: 'demo',
  sourceAddress: '10.0.0.15', destinationWorkload: 'web', destinationNamespace: 'demo', destinationPort: 8080, destinationService: '',
  policy: 'demo/no-spy', reason: 'denied_by_policy', ...o,
});

t.test('a DENY: the engine\'s verdict names the policy and rule, and the rule is shown', async (t) => {
  const { explain } = setup();
  const e = explain(denial());
  t.equal(e.summary, 'denied: DENY demo/no-spy rule 0 matches');
  t.match(e.details.join('\n'), /source: demo\/spy on node-a, mTLS/);
  t.match(e.details.join('\n'), /demo\/no-spy \(DENY\) rule 0 matches from principals cluster\.local\/ns\/demo\/sa\/spy to any port/);
});

t.test('the policies changed since: allowed now, said so; a workload gone: said so', async (t) => {
  const { explain } = setup(MESH.replace('principals: ["cluster.local/ns/demo/sa/spy"]', 'principals: ["cluster.local/ns/demo/sa/other"]'));
  t.match(explain(denial()).summary, /^allowed now \(allowed: ALLOW ambit-system\/everyone rule 0 matches\): the policies changed since this denial$/);
  t.match(explain(denial({ destinationWorkload: 'gone' })).summary, /workload demo\/gone no longer exists/);
});

t.test('plaintext denials are asked by source address', async (t) => {
  const { explain } = setup();
  const e = explain(denial({ sourcePrincipal: '', sourceWorkload: 'unknown', sourceAddress: '10.9.9.9:5555', policy: '', reason: 'no_allow_match' }));
  t.match(e.details.join('\n'), /source: 10\.9\.9\.9, plaintext/);
});

t.test('policies: scope, rules in words, the workloads each selects', async (t) => {
  const { registry } = setup();
  const view = policiesView({ registry } as Parameters<typeof policiesView>[0]);
  t.match(view.policies, [
    { namespace: 'ambit-system', name: 'everyone', action: 'ALLOW', scope: 'every namespace, every workload', rules: ['from any source to any port'], selected: ['demo/spy', 'demo/web'] },
    { namespace: 'demo', name: 'no-spy', action: 'DENY', scope: 'namespace demo, workloads with app=web', selected: ['demo/web'] },
  ]);
  t.equal(ruleText({ from: [{ principals: [], notPrincipals: [], namespaces: ['a'], notNamespaces: ['b'], serviceAccounts: [], notServiceAccounts: [], ipBlocks: ['10.0.0.0/8'], notIpBlocks: [] }], to: [{ ports: [], notPorts: [22] }] } as never),
    'from namespaces a, not namespaces b, IP blocks 10.0.0.0/8 to not ports 22');
});
