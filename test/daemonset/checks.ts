/**
 * The properties a reviewer of daemonset/ cares about, each a pure function
 * from the loaded manifests to a list of problems ([] = holds). The test runs
 * every check on the real manifests and on copies broken on purpose, so a
 * check that stopped seeing anything would fail too.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { AGENT_OPTIONS, parseAgentConfig, type AgentConfig } from '../../agent/config.ts';
import { CONTROLLER_OPTIONS, parseControllerConfig, type ControllerConfig } from '../../controller/config.ts';
import { envName, type OptionSpecs } from '../../shared/config-parse.ts';
import type { Manifest } from './k8s-models.ts';
import { ROOT, at, find, isObj, list, obj, objs, ofKind, type Obj } from './load.ts';

export const NAMESPACE = 'ambit-system';
export const AGENT = 'ambit-agent';
export const CONTROLLER = 'ambit-controller';
/** Where the agent's projected token must be, and what it must be for. */
export const TOKEN_FILE = '/var/run/secrets/ambit/token';
export const TOKEN_AUDIENCE = 'ambit';
export const CONTROLLER_ADDRESS = 'ambit-controller.ambit-system.svc:15012';
/** The only host paths the agent may mount, with their hostPath type. */
const AGENT_HOST_PATHS: Readonly<Record<string, string>> = { '/var/lib/ambit-agent': 'DirectoryOrCreate', '/run/xtables.lock': 'FileOrCreate' };
/** The controller's ClusterRole, exactly: "group/resource verb". */
export const CONTROLLER_PERMISSIONS = [
  ...['pods', 'services', 'namespaces', 'serviceaccounts', 'nodes'].flatMap((r) => ['get', 'list', 'watch'].map((v) => `core/${r} ${v}`)),
  ...['get', 'list', 'watch'].map((v) => `discovery.k8s.io/endpointslices ${v}`),
  ...['authorizationpolicies', 'faultinjections'].flatMap((r) => ['get', 'list', 'watch'].map((v) => `ambit.dev/${r} ${v}`)),
  ...['httproutes', 'grpcroutes', 'referencegrants'].flatMap((r) => ['get', 'list', 'watch'].map((v) => `gateway.networking.k8s.io/${r} ${v}`)),
  'authentication.k8s.io/tokenreviews create',
].sort();
const CLUSTER_SCOPED = new Set(['Namespace', 'ClusterRole', 'ClusterRoleBinding', 'CustomResourceDefinition']);
const LABELS = { name: 'app.kubernetes.io/name', partOf: 'app.kubernetes.io/part-of', version: 'app.kubernetes.io/version' } as const;

type Expect = (ok: boolean, problem: string) => void;
function collector(): { problems: string[]; expect: Expect } {
  const problems: string[] = [];
  return { problems, expect: (ok, problem) => void (ok || problems.push(problem)) };
}

export function podSpec(workload: Obj | undefined): Obj {
  return obj(at(workload, 'spec.template.spec'));
}

function allContainers(pod: Obj): Obj[] {
  return [...objs(pod.initContainers), ...objs(pod.containers), ...objs(pod.ephemeralContainers)];
}

function envVar(c: Obj, name: string): Obj | undefined {
  return objs(c.env).find((e) => e.name === name);
}

function sameSet(a: readonly unknown[], b: readonly string[]): boolean {
  const x = [...a].map(String).sort();
  return x.length === b.length && [...b].sort().every((v, i) => v === x[i]);
}

// ------------------------------------------------------------ configuration

const SAMPLE_FIELDS: Readonly<Record<string, string>> = {
  'spec.nodeName': 'node-a', 'status.hostIP': '10.0.0.5', 'status.podIP': '10.0.0.5', 'metadata.namespace': NAMESPACE,
};

/** The environment a container would see (fieldRefs filled with sample values, configMapKeyRefs resolved). */
export function containerEnv(docs: readonly Manifest[], c: Obj): { env: Record<string, string>; problems: string[] } {
  const env: Record<string, string> = {};
  const problems: string[] = [];
  for (const e of objs(c.env)) {
    const name = String(e.name);
    const field = at(e, 'valueFrom.fieldRef.fieldPath');
    const cm = obj(at(e, 'valueFrom.configMapKeyRef'));
    if (typeof e.value === 'string') env[name] = e.value;
    else if (typeof field === 'string' && SAMPLE_FIELDS[field] !== undefined) env[name] = SAMPLE_FIELDS[field];
    else if (typeof cm.name === 'string') {
      const value = at(find(docs, 'ConfigMap', cm.name), `data.${String(cm.key)}`);
      if (typeof value === 'string') env[name] = value;
      else problems.push(`env ${name}: ConfigMap ${cm.name} has no key ${String(cm.key)}`);
    } else problems.push(`env ${name}: unsupported value source ${JSON.stringify(e.valueFrom)}`);
  }
  return { env, problems };
}

type Program = { kind: 'agent'; cfg: AgentConfig } | { kind: 'controller'; cfg: ControllerConfig };

/**
 * Parses a container's command, args and env with the real config parser of
 * the program it runs (agent/config.ts, controller/config.ts), after checking
 * that the program exists and that every AMBIT_* variable names an option.
 */
export function programConfig(docs: readonly Manifest[], c: Obj): { program?: Program; problems: string[] } {
  const command = list(c.command).map(String);
  const m = /^\/app\/dist\/((agent|controller)\/main)\.js$/.exec(command[1] ?? '');
  if (command[0] !== 'node' || command.length !== 2 || !m) return { problems: [`command ${JSON.stringify(command)} is not [node, /app/dist/{agent,controller}/main.js]`] };
  const problems: string[] = [];
  if (!existsSync(join(ROOT, `${m[1] ?? ''}.ts`))) problems.push(`${m[1] ?? ''}.ts does not exist, so the image has no ${command[1] ?? ''}`);
  const kind = m[2] === 'agent' ? 'agent' : 'controller';
  const options: OptionSpecs = kind === 'agent' ? AGENT_OPTIONS : CONTROLLER_OPTIONS;
  const known = new Set(Object.keys(options).map(envName));
  const { env, problems: envProblems } = containerEnv(docs, c);
  problems.push(...envProblems);
  for (const name of Object.keys(env)) {
    if (name.startsWith('AMBIT_') && !known.has(name)) problems.push(`env ${name} is no option of the ${kind} (known: ${[...known].join(', ')})`);
  }
  const argv = list(c.args).map(String);
  try {
    const program: Program = kind === 'agent'
      ? { kind, cfg: parseAgentConfig({ argv, env }) }
      : { kind, cfg: parseControllerConfig({ argv, env }) };
    return { program, problems };
  } catch (err) {
    return { problems: [...problems, `the ${kind} would refuse its configuration: ${(err as Error).message}`] };
  }
}

function agentConfig(docs: readonly Manifest[], c: Obj, expect: Expect): AgentConfig | undefined {
  const r = programConfig(docs, c);
  r.problems.forEach((p) => expect(false, p));
  return r.program?.kind === 'agent' ? r.program.cfg : undefined;
}

function controllerConfig(docs: readonly Manifest[], c: Obj, expect: Expect): ControllerConfig | undefined {
  const r = programConfig(docs, c);
  r.problems.forEach((p) => expect(false, p));
  return r.program?.kind === 'controller' ? r.program.cfg : undefined;
}

// ------------------------------------------------------------ shared pieces

function containerHardening(c: Obj, pod: Obj, expect: Expect, who: string): void {
  const sc = obj(c.securityContext);
  expect(sc.privileged !== true, `${who}: privileged must not be true`);
  expect(sc.allowPrivilegeEscalation === false, `${who}: allowPrivilegeEscalation must be false`);
  expect(sc.readOnlyRootFilesystem === true, `${who}: readOnlyRootFilesystem must be true`);
  expect(list(at(sc, 'capabilities.drop')).includes('ALL'), `${who}: capabilities must drop ALL`);
  const seccomp = at(sc, 'seccompProfile.type') ?? at(pod, 'securityContext.seccompProfile.type');
  expect(seccomp === 'RuntimeDefault', `${who}: seccompProfile must be RuntimeDefault`);
  const res = obj(c.resources);
  expect(at(res, 'requests.cpu') !== undefined && at(res, 'requests.memory') !== undefined, `${who}: needs cpu and memory requests`);
  expect(at(res, 'limits.memory') !== undefined, `${who}: needs a memory limit`);
  expect(isObj(c.livenessProbe), `${who}: needs a liveness probe`);
}

function httpProbe(probe: unknown): { path: unknown; port: unknown } {
  return { path: at(probe, 'httpGet.path'), port: at(probe, 'httpGet.port') };
}

// ------------------------------------------------------------ agent

export function agentProblems(docs: readonly Manifest[]): string[] {
  const { problems, expect } = collector();
  const ds = find(docs, 'DaemonSet', AGENT);
  if (!ds) return [`no DaemonSet ${AGENT}`];
  const pod = podSpec(ds);
  expect(pod.hostNetwork === true, 'agent: hostNetwork must be true (capture rules live in the node network namespace)');
  expect(pod.dnsPolicy === 'ClusterFirstWithHostNet', 'agent: dnsPolicy must be ClusterFirstWithHostNet to resolve the controller Service');
  expect(pod.hostPID !== true && pod.hostIPC !== true, 'agent: no hostPID/hostIPC');
  expect(pod.serviceAccountName === AGENT, `agent: serviceAccountName must be ${AGENT}`);
  expect(pod.automountServiceAccountToken === false, 'agent: automountServiceAccountToken must be false on the pod');
  expect(at(find(docs, 'ServiceAccount', AGENT), 'automountServiceAccountToken') === false, `agent: ServiceAccount ${AGENT} must set automountServiceAccountToken: false`);
  expect(pod.priorityClassName === 'system-node-critical', 'agent: priorityClassName must be system-node-critical');
  expect(objs(pod.tolerations).some((t) => t.operator === 'Exists' && t.key === undefined && t.effect === undefined), 'agent: must tolerate every taint (operator: Exists)');
  expect(at(ds, 'spec.updateStrategy.type') === 'RollingUpdate' && at(ds, 'spec.updateStrategy.rollingUpdate.maxUnavailable') === 1, 'agent: updateStrategy must be RollingUpdate with maxUnavailable 1');
  const containers = allContainers(pod);
  expect(containers.length === 1, 'agent: exactly one container');
  const volumes = objs(pod.volumes);
  for (const v of volumes) {
    const hp = obj(v.hostPath);
    if (v.hostPath === undefined) continue;
    expect(typeof hp.path === 'string' && Object.hasOwn(AGENT_HOST_PATHS, hp.path) && AGENT_HOST_PATHS[hp.path] === hp.type, `agent: hostPath ${String(hp.path)} (${String(hp.type)}) is not one of ${JSON.stringify(AGENT_HOST_PATHS)}`);
  }
  const tokenVolume = volumes.find((v) => objs(at(v, 'projected.sources')).some((s) => isObj(s.serviceAccountToken)));
  const token = obj(objs(at(tokenVolume, 'projected.sources')).map((s) => s.serviceAccountToken).find(isObj));
  expect(token.audience === TOKEN_AUDIENCE, `agent: projected token audience must be "${TOKEN_AUDIENCE}", got ${JSON.stringify(token.audience)}`);
  expect(token.expirationSeconds === 3600, 'agent: projected token expirationSeconds must be 3600');
  for (const c of containers) {
    const who = `agent container ${String(c.name)}`;
    const sc = obj(c.securityContext);
    containerHardening(c, pod, expect, who);
    const add = list(at(sc, 'capabilities.add'));
    expect(sameSet(add, ['NET_ADMIN', 'NET_RAW']), `${who}: capabilities.add must be exactly NET_ADMIN and NET_RAW, got ${JSON.stringify(add)}`);
    const cfg = agentConfig(docs, c, expect);
    const value = (name: string): unknown => envVar(c, name)?.value;
    expect(at(envVar(c, 'AMBIT_NODE'), 'valueFrom.fieldRef.fieldPath') === 'spec.nodeName', `${who}: AMBIT_NODE must come from spec.nodeName`);
    expect(at(envVar(c, 'AMBIT_ADDRESS'), 'valueFrom.fieldRef.fieldPath') === 'status.hostIP', `${who}: AMBIT_ADDRESS must come from status.hostIP`);
    expect(value('AMBIT_CONTROLLER') === CONTROLLER_ADDRESS, `${who}: AMBIT_CONTROLLER must be ${CONTROLLER_ADDRESS}`);
    expect(value('AMBIT_CAPTURE') === 'transparent' && value('AMBIT_CAPTURE_MODE') === 'pod', `${who}: capture must be transparent, mode pod`);
    expect(value('AMBIT_KUBERNETES_TOKEN_FILE') === TOKEN_FILE, `${who}: AMBIT_KUBERNETES_TOKEN_FILE must be ${TOKEN_FILE}`);
    const mounts = objs(c.volumeMounts);
    const mountOf = (volume: Obj | undefined): Obj | undefined => mounts.find((m) => volume !== undefined && m.name === volume.name);
    const tokenMount = mountOf(tokenVolume);
    expect(tokenMount?.readOnly === true, `${who}: the token volume must be mounted read-only`);
    expect(`${String(tokenMount?.mountPath)}/${String(token.path)}` === TOKEN_FILE, `${who}: the projected token must appear at ${TOKEN_FILE}`);
    const caVolume = volumes.find((v) => isObj(v.configMap));
    const caMount = mountOf(caVolume);
    const caItem = objs(at(caVolume, 'configMap.items'))[0];
    expect(caMount?.readOnly === true && cfg?.caBundle === `${String(caMount.mountPath)}/${String(caItem?.path)}`, `${who}: AMBIT_CA_BUNDLE must be the file of the mounted CA ConfigMap`);
    const dataVolume = volumes.find((v) => at(v, 'hostPath.path') === '/var/lib/ambit-agent');
    expect(cfg?.dataDir === '/var/lib/ambit-agent' && mountOf(dataVolume)?.mountPath === cfg.dataDir, `${who}: the data dir must be the /var/lib/ambit-agent host directory`);
    expect(mounts.every((m) => volumes.some((v) => v.name === m.name)), `${who}: every volume mount needs its volume`);
    const ready = httpProbe(c.readinessProbe);
    expect(ready.path === '/healthz/ready' && cfg !== undefined && ready.port === cfg.readyPort, `${who}: readiness must be httpGet /healthz/ready on the ready port`);
    expect(JSON.stringify(c.livenessProbe).includes('/healthz/ready') === false, `${who}: liveness must not use readiness (the agent serves without the controller)`);
    if (cfg !== undefined) {
      const grace = pod.terminationGracePeriodSeconds;
      expect(typeof grace === 'number' && grace * 1000 > cfg.drainTimeout, `agent: terminationGracePeriodSeconds must exceed the drain timeout (${cfg.drainTimeout} ms)`);
      const ports = objs(c.ports).map((p) => p.containerPort);
      expect(sameSet(ports, [cfg.hbonePort, cfg.metricsPort, cfg.readyPort].map(String)), `${who}: ports must be HBONE, metrics and readiness (${cfg.hbonePort}, ${cfg.metricsPort}, ${cfg.readyPort})`);
    }
  }
  return problems;
}

// ------------------------------------------------------------ controller

export function controllerProblems(docs: readonly Manifest[]): string[] {
  const { problems, expect } = collector();
  const dep = find(docs, 'Deployment', CONTROLLER);
  if (!dep) return [`no Deployment ${CONTROLLER}`];
  const pod = podSpec(dep);
  expect(at(dep, 'spec.replicas') === 1, 'controller: exactly 1 replica (HA needs the etcd store)');
  expect(at(dep, 'spec.strategy.type') === 'Recreate', 'controller: Recreate strategy, never two controllers on one data volume');
  expect(pod.serviceAccountName === CONTROLLER, `controller: serviceAccountName must be ${CONTROLLER}`);
  expect(at(pod, 'securityContext.runAsNonRoot') === true, 'controller: pod must set runAsNonRoot');
  const podUser = at(pod, 'securityContext.runAsUser');
  expect(typeof podUser === 'number' && podUser !== 0, 'controller: pod runAsUser must be a non-root uid');
  const containers = allContainers(pod);
  expect(containers.length === 1, 'controller: exactly one container');
  const claim = find(docs, 'PersistentVolumeClaim', 'ambit-controller-data');
  expect(list(at(claim, 'spec.accessModes')).join() === 'ReadWriteOnce' && at(claim, 'spec.resources.requests.storage') === '1Gi', 'controller: PVC ambit-controller-data must be ReadWriteOnce, 1Gi');
  const dataVolume = objs(pod.volumes).find((v) => at(v, 'persistentVolumeClaim.claimName') === 'ambit-controller-data');
  for (const c of containers) {
    const who = `controller container ${String(c.name)}`;
    const sc = obj(c.securityContext);
    containerHardening(c, pod, expect, who);
    expect(sc.runAsNonRoot !== false && sc.runAsUser !== 0, `${who}: must not run as root`);
    expect(list(at(sc, 'capabilities.add')).length === 0, `${who}: must add no capabilities`);
    expect(at(c, 'resources.limits.cpu') !== undefined, `${who}: needs a cpu limit`);
    const cfg = controllerConfig(docs, c, expect);
    if (cfg === undefined) continue;
    expect(cfg.store === 'kubernetes', `${who}: must run with --store kubernetes`);
    expect(envVar(c, 'AMBIT_TRUST_DOMAIN') !== undefined, `${who}: must set the trust domain (AMBIT_TRUST_DOMAIN)`);
    const dataMount = objs(c.volumeMounts).find((m) => dataVolume !== undefined && m.name === dataVolume.name);
    expect(dataMount?.mountPath === cfg.dataDir, `${who}: the data dir ${cfg.dataDir} must be the mounted PVC`);
    const ports = objs(c.ports);
    const portNamed = (name: string): unknown => ports.find((p) => p.name === name)?.containerPort;
    expect(portNamed('grpc') === cfg.listen.port && portNamed('http-monitoring') === cfg.monitoring.port, `${who}: ports grpc ${cfg.listen.port} and http-monitoring ${cfg.monitoring.port}`);
    const ready = httpProbe(c.readinessProbe);
    expect(ready.path === '/healthz/ready' && ready.port === cfg.monitoring.port, `${who}: readiness must be httpGet /healthz/ready on ${cfg.monitoring.port}`);
    const svc = find(docs, 'Service', CONTROLLER);
    expect((at(svc, 'spec.type') ?? 'ClusterIP') === 'ClusterIP', 'controller Service must be ClusterIP');
    const labels = obj(at(dep, 'spec.template.metadata.labels'));
    const selector = obj(at(svc, 'spec.selector'));
    expect(Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels[k] === v), 'controller Service must select the controller pods');
    const svcPorts = objs(at(svc, 'spec.ports'));
    for (const want of [cfg.listen.port, cfg.monitoring.port]) {
      const p = svcPorts.find((x) => x.port === want);
      const target = p?.targetPort ?? p?.port;
      expect(p !== undefined && ports.some((cp) => cp.name === target || cp.containerPort === target), `controller Service must expose ${want} to the container's port`);
    }
  }
  return problems;
}

// ------------------------------------------------------------ RBAC

function strings(v: unknown): string[] {
  if (typeof v === 'string') return [v];
  if (Array.isArray(v)) return v.flatMap(strings);
  if (isObj(v)) return Object.entries(v).flatMap(([k, x]) => [k, ...strings(x)]);
  return [];
}

export function rbacProblems(docs: readonly Manifest[]): string[] {
  const { problems, expect } = collector();
  const rbac = ofKind(docs, 'Role', 'ClusterRole', 'RoleBinding', 'ClusterRoleBinding');
  for (const d of rbac) {
    const { metadata: _meta, ...rest } = d;
    expect(!strings(rest).some((s) => s.includes('*')), `${String(d.kind)} ${String(at(d, 'metadata.name'))}: no "*" anywhere in RBAC`);
  }
  const roles = ofKind(docs, 'Role', 'ClusterRole');
  expect(roles.length === 1 && roles[0]?.kind === 'ClusterRole' && at(roles[0], 'metadata.name') === CONTROLLER, `the only role must be ClusterRole ${CONTROLLER} (the agent gets none)`);
  for (const role of roles) {
    const granted: string[] = [];
    for (const rule of objs(role.rules)) {
      expect(rule.resourceNames === undefined && rule.nonResourceURLs === undefined, 'ClusterRole rules use only apiGroups, resources and verbs');
      for (const g of list(rule.apiGroups)) for (const r of list(rule.resources)) for (const v of list(rule.verbs)) granted.push(`${g === '' ? 'core' : String(g)}/${String(r)} ${String(v)}`);
    }
    for (const g of granted) {
      const verb = g.split(' ')[1] ?? '';
      const writes = !['get', 'list', 'watch'].includes(verb);
      expect(!writes || g === 'authentication.k8s.io/tokenreviews create', `${String(role.kind)} grants ${g}: only create on tokenreviews may write`);
      expect(!/\/(secrets|configmaps) /.test(g), `${String(role.kind)} grants ${g}: no access to secrets or configmaps`);
    }
    const sorted = [...new Set(granted)].sort();
    expect(JSON.stringify(sorted) === JSON.stringify(CONTROLLER_PERMISSIONS), `ClusterRole ${CONTROLLER} must grant exactly ${CONTROLLER_PERMISSIONS.join(', ')}; grants ${sorted.join(', ')}`);
  }
  const bindings = ofKind(docs, 'RoleBinding', 'ClusterRoleBinding');
  expect(bindings.length === 1, 'exactly one binding (the controller\'s)');
  for (const b of bindings) {
    expect(at(b, 'roleRef.kind') === 'ClusterRole' && at(b, 'roleRef.name') === CONTROLLER, `binding ${String(at(b, 'metadata.name'))} must bind ClusterRole ${CONTROLLER}`);
    const subjects = objs(b.subjects);
    expect(subjects.length === 1 && subjects[0]?.kind === 'ServiceAccount' && subjects[0].name === CONTROLLER && subjects[0].namespace === NAMESPACE,
      `binding ${String(at(b, 'metadata.name'))} must bind only ServiceAccount ${NAMESPACE}/${CONTROLLER}`);
  }
  return problems;
}

// ------------------------------------------------------------ labels, namespace, images

export function labelProblems(docs: readonly Manifest[], version: string): string[] {
  const { problems, expect } = collector();
  const check = (labels: unknown, who: string): void => {
    const l = obj(labels);
    expect(typeof l[LABELS.name] === 'string' && String(l[LABELS.name]).startsWith('ambit'), `${who}: label ${LABELS.name} missing`);
    expect(l[LABELS.partOf] === 'ambit', `${who}: label ${LABELS.partOf}=ambit missing`);
    expect(l[LABELS.version] === version, `${who}: label ${LABELS.version} must be ${version}`);
  };
  for (const m of docs) {
    check(at(m.doc, 'metadata.labels'), m.where);
    const kind = String(m.doc.kind);
    if (CLUSTER_SCOPED.has(kind)) expect(at(m.doc, 'metadata.namespace') === undefined, `${m.where}: cluster-scoped, no namespace`);
    else expect(at(m.doc, 'metadata.namespace') === NAMESPACE, `${m.where}: must be in namespace ${NAMESPACE}`);
    if (kind === 'Deployment' || kind === 'DaemonSet') {
      check(at(m.doc, 'spec.template.metadata.labels'), `${m.where} pod template`);
      const selector = obj(at(m.doc, 'spec.selector.matchLabels'));
      const labels = obj(at(m.doc, 'spec.template.metadata.labels'));
      expect(selector[LABELS.version] === undefined, `${m.where}: the selector must not hold the version (selectors are immutable)`);
      expect(Object.entries(selector).every(([k, v]) => labels[k] === v), `${m.where}: the selector must match the pod template`);
    }
    if (kind === 'Service') expect(obj(at(m.doc, 'spec.selector'))[LABELS.version] === undefined, `${m.where}: the selector must not hold the version`);
  }
  const ns = find(docs, 'Namespace', NAMESPACE);
  expect(ns !== undefined, `no Namespace ${NAMESPACE}`);
  expect(obj(at(ns, 'metadata.labels'))['pod-security.kubernetes.io/enforce'] === 'privileged',
    `Namespace ${NAMESPACE}: the agent (hostNetwork, NET_ADMIN) needs pod-security.kubernetes.io/enforce=privileged`);
  return problems;
}

/** Container images: "<name>:<tag>", never latest, and named in the kustomization's images so `kustomize edit set image` retargets them. */
export function imageProblems(docs: readonly Manifest[], kustomization: unknown, version: string): string[] {
  const { problems, expect } = collector();
  const images = objs(at(kustomization, 'images'));
  for (const img of images) expect(img.newTag === version, `kustomization image ${String(img.name)}: newTag must be ${version} (never latest)`);
  for (const w of ofKind(docs, 'Deployment', 'DaemonSet')) {
    for (const c of allContainers(podSpec(w))) {
      const image = String(c.image);
      const [name, tag] = image.split(':');
      expect(tag !== undefined && tag !== 'latest' && tag === version, `${String(w.kind)} ${String(at(w, 'metadata.name'))}: image ${image} must be tagged ${version}`);
      expect(images.some((i) => i.name === name), `${String(w.kind)} ${String(at(w, 'metadata.name'))}: image ${image} is not in the kustomization's images`);
      expect(c.imagePullPolicy === 'IfNotPresent', `${String(w.kind)} ${String(at(w, 'metadata.name'))}: imagePullPolicy IfNotPresent`);
    }
  }
  return problems;
}

/** The kustomization lists every manifest file of daemonset/ once, and nothing else. */
export function kustomizationProblems(kustomization: unknown, files: readonly string[]): string[] {
  const { problems, expect } = collector();
  expect(at(kustomization, 'apiVersion') === 'kustomize.config.k8s.io/v1beta1' && at(kustomization, 'kind') === 'Kustomization', 'kustomization: apiVersion/kind');
  const resources = list(at(kustomization, 'resources')).map(String);
  expect(new Set(resources).size === resources.length, 'kustomization: a resource is listed twice');
  for (const f of files) expect(resources.includes(f), `kustomization does not list ${f}`);
  for (const r of resources) expect(files.includes(r), `kustomization lists ${r}, which is not a manifest in daemonset/`);
  return problems;
}
