import t from 'tap';
import type { Test } from 'tap';
import { join } from 'node:path';
import {
  AGENT, CONTROLLER, agentProblems, controllerProblems, imageProblems, kustomizationProblems, labelProblems, podSpec,
  programConfig, rbacProblems,
} from './checks.ts';
import { schemaProblems, strictTypeProblems, type Manifest } from './k8s-models.ts';
import {
  DAEMONSET_DIR, KUSTOMIZATION, ROOT, at, find, liveArray, loadManifests, manifestFiles, mutate, obj, objs, packageVersion, readYamlFile,
  type Obj,
} from './load.ts';

/*
 * daemonset/ offline: every object validates against the Kubernetes OpenAPI
 * schemas (kubernetes-models), strictly (no unknown fields), and keeps the
 * security properties of DESIGN §8 and issue 5. No API server runs here.
 * Each check also runs on copies of the manifests broken on purpose and must
 * then report a problem: a check that silently stopped finding anything fails.
 */

const docs = loadManifests();
const files = manifestFiles();
const version = packageVersion();
const kustomization = readYamlFile(join(DAEMONSET_DIR, KUSTOMIZATION))[0];

type Check = (d: readonly Manifest[]) => string[];
interface Breakage {
  readonly what: string;
  readonly kind: string;
  readonly name: string;
  readonly change: (doc: Obj) => void;
}

/** Asserts `check` passes on the real manifests and reports something for every breakage. */
function proves(tt: Test, check: Check, breakages: readonly Breakage[]): void {
  tt.same(check(docs), [], 'the manifests pass');
  for (const b of breakages) {
    const found = check(mutate(docs, b.kind, b.name, b.change));
    tt.ok(found.length > 0, `detects: ${b.what}`, { found });
  }
}

function agentContainer(d: Obj): Obj {
  return obj(at(d, 'spec.template.spec.containers.0'));
}
function setEnv(d: Obj, name: string, value: string): void {
  const e = objs(agentContainer(d).env).find((x) => x.name === name);
  if (!e) throw new Error(`no env ${name}`);
  delete e.valueFrom;
  e.value = value;
}
function tokenSource(d: Obj): Obj {
  const v = objs(podSpec(d).volumes).find((x) => x.projected !== undefined);
  return obj(at(v, 'projected.sources.0.serviceAccountToken'));
}

t.test('the manifests are the expected objects', async (tt) => {
  tt.ok(files.length >= 5, `manifest files: ${files.join(', ')}`);
  const kinds = docs.map((m) => `${String(m.doc.kind)}/${String(at(m.doc, 'metadata.name'))}`).sort();
  // Only GA APIs: kubernetes-models also carries removed ones (apps/v1beta2, ...), which no current cluster serves.
  const ga = (d: readonly Manifest[]): string[] => d.filter((m) => !['v1', 'apps/v1', 'rbac.authorization.k8s.io/v1', 'apiextensions.k8s.io/v1'].includes(String(m.doc.apiVersion))).map((m) => m.where);
  tt.same(ga(docs), [], 'every apiVersion is a GA API');
  tt.not(ga(mutate(docs, 'DaemonSet', AGENT, (d) => { d.apiVersion = 'apps/v1beta2'; })).length, 0, 'detects: an apiVersion Kubernetes no longer serves');
  tt.same(kinds, [
    'ClusterRole/ambit-controller', 'ClusterRoleBinding/ambit-controller', 'ConfigMap/ambit-agent',
    'CustomResourceDefinition/authorizationpolicies.ambit.dev', 'CustomResourceDefinition/faultinjections.ambit.dev', 'DaemonSet/ambit-agent', 'Deployment/ambit-controller',
    'Namespace/ambit-system', 'PersistentVolumeClaim/ambit-controller-data', 'Service/ambit-controller',
    'ServiceAccount/ambit-agent', 'ServiceAccount/ambit-controller',
  ]);
});

t.test('every object validates against the Kubernetes OpenAPI schema of its kind', async (tt) => {
  for (const m of docs) tt.same(await schemaProblems(m), [], m.where);
  const daemonSet = docs.find((m) => m.doc.kind === 'DaemonSet');
  if (!daemonSet) throw new Error('no DaemonSet');
  const broken = (change: (d: Obj) => void): Manifest => {
    const doc = structuredClone(daemonSet.doc) as Obj;
    change(doc);
    return { doc, where: 'broken DaemonSet' };
  };
  const bad: [string, Manifest][] = [
    ['a port that is not a number', broken((d) => { agentContainer(d).ports = [{ containerPort: 'fifteen' }]; })],
    ['capabilities.add not a list', broken((d) => { obj(agentContainer(d).securityContext).capabilities = { add: 'NET_ADMIN' }; })],
    ['hostNetwork not a boolean', broken((d) => { podSpec(d).hostNetwork = 'yes'; })],
    ['a container without a name', broken((d) => { delete agentContainer(d).name; })],
    ['a grace period that is not a number', broken((d) => { podSpec(d).terminationGracePeriodSeconds = 'thirty'; })],
    ['an unknown kind', broken((d) => { d.kind = 'NodeAgent'; })],
  ];
  for (const [what, m] of bad) tt.not((await schemaProblems(m)).length, 0, `detects: ${what}`);
});

t.test('no object has a field unknown to Kubernetes (strict field validation)', async (tt) => {
  const daemonSet = docs.find((m) => m.doc.kind === 'DaemonSet');
  const deployment = docs.find((m) => m.doc.kind === 'Deployment');
  if (!daemonSet || !deployment) throw new Error('no workloads');
  const typo = structuredClone(daemonSet.doc) as Obj;
  obj(agentContainer(typo).securityContext).readOnlyRootFilesytem = true;
  const misplaced = structuredClone(deployment.doc) as Obj;
  obj(at(misplaced, 'spec.template.spec')).runAsNonRoot = true;
  const extras: Manifest[] = [{ doc: typo, where: 'typo' }, { doc: misplaced, where: 'misplaced' }];
  const result = strictTypeProblems([...docs, ...extras], ROOT);
  docs.forEach((m, i) => tt.same(result[i], [], m.where));
  tt.match(result[docs.length]?.join('\n'), /readOnlyRootFilesytem/, 'detects a misspelt field');
  tt.match(result[docs.length + 1]?.join('\n'), /runAsNonRoot/, 'detects a field at the wrong level');
});

t.test('agent DaemonSet: host network, two capabilities, projected token, no API access', async (tt) => {
  proves(tt, agentProblems, [
    { what: 'hostNetwork off', kind: 'DaemonSet', name: AGENT, change: (d) => { podSpec(d).hostNetwork = false; } },
    { what: 'privileged: true', kind: 'DaemonSet', name: AGENT, change: (d) => { obj(agentContainer(d).securityContext).privileged = true; } },
    { what: 'an extra capability', kind: 'DaemonSet', name: AGENT, change: (d) => { obj(at(agentContainer(d), 'securityContext.capabilities')).add = ['NET_ADMIN', 'NET_RAW', 'SYS_ADMIN']; } },
    { what: 'NET_RAW missing', kind: 'DaemonSet', name: AGENT, change: (d) => { obj(at(agentContainer(d), 'securityContext.capabilities')).add = ['NET_ADMIN']; } },
    { what: 'capabilities not dropped', kind: 'DaemonSet', name: AGENT, change: (d) => { obj(at(agentContainer(d), 'securityContext.capabilities')).drop = []; } },
    { what: 'privilege escalation allowed', kind: 'DaemonSet', name: AGENT, change: (d) => { obj(agentContainer(d).securityContext).allowPrivilegeEscalation = true; } },
    { what: 'writable root filesystem', kind: 'DaemonSet', name: AGENT, change: (d) => { obj(agentContainer(d).securityContext).readOnlyRootFilesystem = false; } },
    { what: 'token audience changed', kind: 'DaemonSet', name: AGENT, change: (d) => { tokenSource(d).audience = 'https://kubernetes.default.svc'; } },
    { what: 'long-lived token', kind: 'DaemonSet', name: AGENT, change: (d) => { tokenSource(d).expirationSeconds = 86400; } },
    { what: 'token mounted writable', kind: 'DaemonSet', name: AGENT, change: (d) => { objs(agentContainer(d).volumeMounts).forEach((m) => { if (m.name === 'kubernetes-token') m.readOnly = false; }); } },
    { what: 'token file elsewhere', kind: 'DaemonSet', name: AGENT, change: (d) => setEnv(d, 'AMBIT_KUBERNETES_TOKEN_FILE', '/tmp/token') },
    { what: 'API token mounted on the pod', kind: 'DaemonSet', name: AGENT, change: (d) => { podSpec(d).automountServiceAccountToken = true; } },
    { what: 'API token mounted by the ServiceAccount', kind: 'ServiceAccount', name: AGENT, change: (d) => { d.automountServiceAccountToken = true; } },
    { what: 'the host root mounted', kind: 'DaemonSet', name: AGENT, change: (d) => { liveArray(podSpec(d), 'volumes').push({ name: 'root', hostPath: { path: '/' } }); } },
    { what: 'default DNS policy on the host network', kind: 'DaemonSet', name: AGENT, change: (d) => { delete podSpec(d).dnsPolicy; } },
    { what: 'another service account', kind: 'DaemonSet', name: AGENT, change: (d) => { podSpec(d).serviceAccountName = 'default'; } },
    { what: 'the admin port exposed', kind: 'DaemonSet', name: AGENT, change: (d) => { liveArray(agentContainer(d), 'ports').push({ name: 'admin', containerPort: 15000 }); } },
    { what: 'hostPID', kind: 'DaemonSet', name: AGENT, change: (d) => { podSpec(d).hostPID = true; } },
    { what: 'wrong readiness port', kind: 'DaemonSet', name: AGENT, change: (d) => { obj(at(agentContainer(d), 'readinessProbe.httpGet')).port = 15020; } },
    { what: 'liveness on readiness', kind: 'DaemonSet', name: AGENT, change: (d) => { agentContainer(d).livenessProbe = { httpGet: { path: '/healthz/ready', port: 15021 } }; } },
    { what: 'no memory limit', kind: 'DaemonSet', name: AGENT, change: (d) => { delete obj(agentContainer(d).resources).limits; } },
    { what: 'grace period shorter than the drain', kind: 'DaemonSet', name: AGENT, change: (d) => { podSpec(d).terminationGracePeriodSeconds = 10; } },
    { what: 'taints not tolerated', kind: 'DaemonSet', name: AGENT, change: (d) => { podSpec(d).tolerations = [{ key: 'x', operator: 'Exists' }]; } },
    { what: 'maxUnavailable 3', kind: 'DaemonSet', name: AGENT, change: (d) => { obj(at(d, 'spec.updateStrategy.rollingUpdate')).maxUnavailable = 3; } },
    { what: 'not node-critical', kind: 'DaemonSet', name: AGENT, change: (d) => { delete podSpec(d).priorityClassName; } },
    { what: 'wrong controller address', kind: 'DaemonSet', name: AGENT, change: (d) => setEnv(d, 'AMBIT_CONTROLLER', 'ambit-controller:15012') },
    { what: 'node name not from the Downward API', kind: 'DaemonSet', name: AGENT, change: (d) => setEnv(d, 'AMBIT_NODE', 'node-a') },
    { what: 'capture mode vm', kind: 'DaemonSet', name: AGENT, change: (d) => setEnv(d, 'AMBIT_CAPTURE_MODE', 'vm') },
    { what: 'data dir not on the host', kind: 'DaemonSet', name: AGENT, change: (d) => setEnv(d, 'AMBIT_DATA_DIR', '/tmp/ambit') },
    { what: 'CA bundle path not the mounted ConfigMap', kind: 'DaemonSet', name: AGENT, change: (d) => setEnv(d, 'AMBIT_CA_BUNDLE', '/etc/ca.pem') },
  ]);
});

t.test('controller Deployment: non-root, read-only, persistent CA, Kubernetes store', async (tt) => {
  const c = (d: Obj): Obj => obj(at(d, 'spec.template.spec.containers.0'));
  proves(tt, controllerProblems, [
    { what: 'pod may run as root', kind: 'Deployment', name: CONTROLLER, change: (d) => { obj(podSpec(d).securityContext).runAsNonRoot = false; } },
    { what: 'uid 0', kind: 'Deployment', name: CONTROLLER, change: (d) => { obj(c(d).securityContext).runAsUser = 0; } },
    { what: 'writable root filesystem', kind: 'Deployment', name: CONTROLLER, change: (d) => { obj(c(d).securityContext).readOnlyRootFilesystem = false; } },
    { what: 'an added capability', kind: 'Deployment', name: CONTROLLER, change: (d) => { obj(at(c(d), 'securityContext.capabilities')).add = ['NET_ADMIN']; } },
    { what: 'privilege escalation', kind: 'Deployment', name: CONTROLLER, change: (d) => { obj(c(d).securityContext).allowPrivilegeEscalation = true; } },
    { what: 'no seccomp profile', kind: 'Deployment', name: CONTROLLER, change: (d) => { delete obj(c(d).securityContext).seccompProfile; delete obj(podSpec(d).securityContext).seccompProfile; } },
    { what: 'two replicas on one PVC', kind: 'Deployment', name: CONTROLLER, change: (d) => { obj(d.spec).replicas = 2; } },
    { what: 'rolling update on a RWO volume', kind: 'Deployment', name: CONTROLLER, change: (d) => { obj(d.spec).strategy = { type: 'RollingUpdate' }; } },
    { what: 'sqlite store', kind: 'Deployment', name: CONTROLLER, change: (d) => { c(d).args = ['--store=sqlite']; } },
    { what: 'a misspelt flag', kind: 'Deployment', name: CONTROLLER, change: (d) => { c(d).args = ['--stor=kubernetes']; } },
    { what: 'an unknown AMBIT_ variable', kind: 'Deployment', name: CONTROLLER, change: (d) => { liveArray(c(d), 'env').push({ name: 'AMBIT_TRUSTDOMAIN', value: 'x' }); } },
    { what: 'data dir not on the PVC', kind: 'Deployment', name: CONTROLLER, change: (d) => { objs(c(d).env).forEach((e) => { if (e.name === 'AMBIT_DATA_DIR') e.value = '/tmp/ambit'; }); } },
    { what: 'wrong readiness path', kind: 'Deployment', name: CONTROLLER, change: (d) => { obj(at(c(d), 'readinessProbe.httpGet')).path = '/ready'; } },
    { what: 'no liveness probe', kind: 'Deployment', name: CONTROLLER, change: (d) => { delete c(d).livenessProbe; } },
    { what: 'no cpu limit', kind: 'Deployment', name: CONTROLLER, change: (d) => { delete obj(at(c(d), 'resources.limits')).cpu; } },
    { what: 'a program that does not exist', kind: 'Deployment', name: CONTROLLER, change: (d) => { c(d).command = ['node', '/app/dist/controller/server.js']; } },
    { what: 'Service without 15014', kind: 'Service', name: CONTROLLER, change: (d) => { obj(d.spec).ports = objs(at(d, 'spec.ports')).filter((p) => p.port !== 15014); } },
    { what: 'Service selecting nothing', kind: 'Service', name: CONTROLLER, change: (d) => { obj(d.spec).selector = { app: 'other' }; } },
    { what: 'PVC ReadWriteMany', kind: 'PersistentVolumeClaim', name: 'ambit-controller-data', change: (d) => { obj(d.spec).accessModes = ['ReadWriteMany']; } },
    { what: 'no trust domain', kind: 'Deployment', name: CONTROLLER, change: (d) => { c(d).env = objs(c(d).env).filter((e) => e.name !== 'AMBIT_TRUST_DOMAIN'); } },
    { what: 'another service account', kind: 'Deployment', name: CONTROLLER, change: (d) => { podSpec(d).serviceAccountName = 'default'; } },
    { what: 'a NodePort Service', kind: 'Service', name: CONTROLLER, change: (d) => { obj(d.spec).type = 'NodePort'; } },
  ]);
});

t.test('containers run the real programs with configurations they accept', async (tt) => {
  for (const m of docs.filter((x) => x.doc.kind === 'Deployment' || x.doc.kind === 'DaemonSet')) {
    for (const c of objs(at(m.doc, 'spec.template.spec.containers'))) {
      const r = programConfig(docs, c);
      tt.same(r.problems, [], `${m.where}: ${String(c.name)}`);
      tt.ok(r.program, 'parsed');
    }
  }
  const bad = mutate(docs, 'ConfigMap', AGENT, (d) => { obj(d.data)['pod-cidrs'] = ''; });
  const agent = objs(at(find(bad, 'DaemonSet', AGENT), 'spec.template.spec.containers'))[0] ?? {};
  tt.match(programConfig(bad, agent).problems.join('\n'), /pod-cidrs/, 'detects: an empty pod-cidrs, through the agent\'s own parser');
  const missing = mutate(docs, 'ConfigMap', AGENT, (d) => { d.data = {}; });
  tt.match(programConfig(missing, agent).problems.join('\n'), /no key pod-cidrs/, 'detects: a ConfigMap key that does not exist');
});

t.test('RBAC: least privilege, nothing for the agent, no wildcards', async (tt) => {
  const rules = (d: Obj): Obj[] => objs(d.rules);
  proves(tt, rbacProblems, [
    { what: 'update on pods', kind: 'ClusterRole', name: CONTROLLER, change: (d) => { obj(rules(d)[0]).verbs = ['get', 'list', 'watch', 'update']; } },
    { what: 'read secrets', kind: 'ClusterRole', name: CONTROLLER, change: (d) => { liveArray(d, 'rules').push({ apiGroups: [''], resources: ['secrets'], verbs: ['get'] }); } },
    { what: 'a wildcard verb', kind: 'ClusterRole', name: CONTROLLER, change: (d) => { obj(rules(d)[1]).verbs = ['*']; } },
    { what: 'a wildcard resource', kind: 'ClusterRole', name: CONTROLLER, change: (d) => { obj(rules(d)[2]).resources = ['*']; } },
    { what: 'create on pods', kind: 'ClusterRole', name: CONTROLLER, change: (d) => { liveArray(d, 'rules').push({ apiGroups: [''], resources: ['pods'], verbs: ['create'] }); } },
    { what: 'tokenreviews lost', kind: 'ClusterRole', name: CONTROLLER, change: (d) => { d.rules = rules(d).slice(0, 3); } },
    { what: 'bound to the agent', kind: 'ClusterRoleBinding', name: CONTROLLER, change: (d) => { liveArray(d, 'subjects').push({ kind: 'ServiceAccount', name: AGENT, namespace: 'ambit-system' }); } },
    { what: 'bound to another role', kind: 'ClusterRoleBinding', name: CONTROLLER, change: (d) => { obj(d.roleRef).name = 'cluster-admin'; } },
  ]);
  const withAgentRole = [...docs, { doc: { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'Role', metadata: { name: AGENT, namespace: 'ambit-system' }, rules: [] }, where: 'extra' }];
  tt.not(rbacProblems(withAgentRole).length, 0, 'detects: a Role for the agent');
});

t.test('labels, namespace and images', async (tt) => {
  proves(tt, (d) => labelProblems(d, version), [
    { what: 'part-of missing on the Service', kind: 'Service', name: CONTROLLER, change: (d) => { delete obj(at(d, 'metadata.labels'))['app.kubernetes.io/part-of']; } },
    { what: 'stale version on a pod template', kind: 'DaemonSet', name: AGENT, change: (d) => { obj(at(d, 'spec.template.metadata.labels'))['app.kubernetes.io/version'] = '0.0.1'; } },
    { what: 'version in an immutable selector', kind: 'Deployment', name: CONTROLLER, change: (d) => { obj(at(d, 'spec.selector.matchLabels'))['app.kubernetes.io/version'] = version; } },
    { what: 'object in another namespace', kind: 'ConfigMap', name: AGENT, change: (d) => { obj(d.metadata).namespace = 'default'; } },
    { what: 'namespace not privileged', kind: 'Namespace', name: 'ambit-system', change: (d) => { obj(at(d, 'metadata.labels'))['pod-security.kubernetes.io/enforce'] = 'baseline'; } },
  ]);
  tt.same(imageProblems(docs, kustomization, version), [], 'images pass');
  const latest = mutate(docs, 'DaemonSet', AGENT, (d) => { agentContainer(d).image = 'ambit:latest'; });
  tt.not(imageProblems(latest, kustomization, version).length, 0, 'detects: latest tag');
  const foreign = mutate(docs, 'Deployment', CONTROLLER, (d) => { obj(at(d, 'spec.template.spec.containers.0')).image = `other:${version}`; });
  tt.not(imageProblems(foreign, kustomization, version).length, 0, 'detects: an image kustomize would not retarget');
});

t.test('the kustomization lists every manifest file', async (tt) => {
  tt.same(kustomizationProblems(kustomization, files), []);
  const k = obj(kustomization);
  const resources = (k.resources as unknown[]).map(String);
  tt.not(kustomizationProblems({ ...k, resources: resources.slice(1) }, files).length, 0, 'detects: a file left out');
  tt.not(kustomizationProblems({ ...k, resources: [...resources, 'missing.yaml'] }, files).length, 0, 'detects: a file that does not exist');
  tt.not(kustomizationProblems(k, [...files, 'new.yaml']).length, 0, 'detects: a new manifest not listed');
});
