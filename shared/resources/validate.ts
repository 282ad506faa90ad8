import { Buffer } from 'node:buffer';
import { createRequire } from 'node:module';
import type { YAMLError } from 'yaml';
import { AmbitError, errorMessage } from '../errors.ts';
import { APP_PROTOCOLS, KINDS, ROUTE_KINDS, apiVersionOf, resourceKey } from './types.ts';
import type { Kind, ObjectMeta, Resource, ServicePort, ServiceSpec, WorkloadSpec } from './types.ts';
import { Checker, describe, isMapping, join } from './validate-fields.ts';
import type { FieldError } from './validate-fields.ts';
import { checkPolicySpec } from './validate-policy.ts';
import { checkFaultInjectionSpec, checkGRPCRouteSpec, checkHTTPRouteSpec } from './validate-route.ts';
import { checkReferenceGrantSpec } from './validate-reference-grant.ts';

/**
 * Resource documents (YAML/JSON, Kubernetes style) in, validated core types
 * out — the one gate every file, CLI command and API call passes through.
 * Validation is strict like `kubectl --validate=strict`: unknown fields are
 * errors, all problems of a document are reported together, and a batch is
 * refused as a whole if any document is bad, so nothing is half-applied.
 */
export { toDocument } from './document.ts';

/** Input larger than this is refused before parsing: resource files are small, parsers are not free. */
export const MAX_INPUT_BYTES = 1024 * 1024;
export const MAX_DOCUMENTS = 1000;
/** Anchors are fine in hand-written YAML; more alias expansion than this is a "billion laughs" bomb. */
const MAX_ALIAS_COUNT = 100;

export interface SourcedDocument {
  readonly doc: unknown;
  /** "<source>#<n>", n counting documents in the stream from 1 (empty ones included, as a reader counts "---"). */
  readonly where: string;
}

function parseError(message: string, details: Record<string, unknown>, cause?: unknown): AmbitError {
  return new AmbitError('AMBIT_ERR_RESOURCE_PARSE', message, { cause, details });
}

function syntaxProblem(source: string, e: YAMLError): { text: string; line?: number; column?: number } {
  // yaml's "pretty" messages end with " at line L, column C:" and a source excerpt; keep the first part.
  const reason = (e.message.split('\n')[0] ?? e.message).replace(/ at line \d+, column \d+:?$/, '');
  const pos = e.linePos?.[0];
  return pos === undefined
    ? { text: `${source}: ${reason}` }
    : { text: `${source}: line ${pos.line}, column ${pos.col}: ${reason}`, line: pos.line, column: pos.col };
}

/**
 * The YAML parser, loaded at the first document stream parsed: the agent
 * validates resources that arrive as protobuf and never parses YAML, and the
 * parser would cost it about 13 MiB of RSS.
 */
function yaml(): typeof import('yaml') {
  return createRequire(import.meta.url)('yaml') as typeof import('yaml');
}

/** Parses a multi-document YAML (or JSON) stream, keeping where each document came from. */
export function parseSourcedDocuments(text: string, source: string): SourcedDocument[] {
  if (typeof text !== 'string') throw parseError(`${source}: input is not text`, { source });
  const bytes = Buffer.byteLength(text, 'utf8');
  if (bytes > MAX_INPUT_BYTES) {
    throw parseError(`${source}: input is ${bytes} bytes, over the limit of ${MAX_INPUT_BYTES} (1 MiB); split it into several files`,
      { source, bytes, limit: MAX_INPUT_BYTES });
  }
  try {
    const docs = yaml().parseAllDocuments(text, {
      prettyErrors: true, stringKeys: true, uniqueKeys: true, resolveKnownTags: false, logLevel: 'error',
    });
    if (docs.length > MAX_DOCUMENTS) {
      throw parseError(`${source}: holds ${docs.length} documents, over the limit of ${MAX_DOCUMENTS}; split it into several files`,
        { source, documents: docs.length, limit: MAX_DOCUMENTS });
    }
    const problems = docs.flatMap((d) => d.errors.map((e) => syntaxProblem(source, e)));
    const first = problems[0];
    if (first !== undefined) {
      const more = problems.length > 1 ? ` (and ${problems.length - 1} more syntax error${problems.length > 2 ? 's' : ''})` : '';
      throw parseError(`${first.text}${more}`, { source, line: first.line, column: first.column, errors: problems.map((p) => p.text) },
        docs.flatMap((d) => d.errors)[0]);
    }
    const out: SourcedDocument[] = [];
    docs.forEach((d, i) => {
      const where = `${source}#${i + 1}`;
      let doc: unknown;
      try {
        doc = d.toJS({ maxAliasCount: MAX_ALIAS_COUNT });
      } catch (err) {
        throw parseError(`${where}: ${errorMessage(err)}`, { source, where }, err);
      }
      if (doc !== null && doc !== undefined) out.push({ doc, where });
    });
    return out;
  } catch (err) {
    if (err instanceof AmbitError) throw err;
    // The parser is third-party code fed untrusted text: whatever it throws is a parse failure, not a crash.
    throw parseError(`${source}: cannot parse: ${errorMessage(err)}`, { source }, err);
  }
}

/** The documents of a YAML/JSON stream; empty documents are skipped. */
export function parseDocuments(text: string, source: string): unknown[] {
  return parseSourcedDocuments(text, source).map((d) => d.doc);
}

interface Identity {
  kind?: Kind;
  namespace?: string;
  name?: string;
}

function label(where: string, id: Identity): string {
  const who = id.name === undefined ? '' : id.namespace === undefined ? ` ${id.name}` : ` ${id.namespace}/${id.name}`;
  return `${where}${id.kind === undefined ? '' : ` ${id.kind}`}${who}`;
}

/** One AmbitError for all problems of a document: the first in the message, every one in details.errors. */
function invalidDocument(where: string, id: Identity, errors: readonly FieldError[]): AmbitError {
  const prefix = label(where, id);
  const lines = errors.map((e) => `${prefix}: ${e.field}: ${e.message}`);
  const first = errors[0];
  const more = errors.length > 1 ? ` (and ${errors.length - 1} more error${errors.length > 2 ? 's' : ''})` : '';
  return new AmbitError('AMBIT_ERR_RESOURCE_INVALID', `${lines[0] ?? prefix}${more}`, {
    details: { field: first?.field, where, kind: id.kind, name: id.name, namespace: id.namespace, value: first?.value, errors: lines },
  });
}

const METADATA_HINTS = {
  annotations: 'not supported; use labels',
  generateName: 'not supported; set name',
  uid: 'set by Kubernetes; remove it',
  resourceVersion: 'Ambit keeps a revision instead; remove it',
  creationTimestamp: 'set by the store; remove it',
};

function checkMetadata(c: Checker, v: unknown, id: Identity): Omit<ObjectMeta, 'revision'> | undefined {
  const before = c.errors.length;
  const m = c.mapping(v, 'metadata', ['name', 'namespace', 'labels', 'revision'], METADATA_HINTS);
  if (m === undefined) return undefined;
  const name = c.req(m, 'name', 'metadata', c.subdomain);
  const namespace = c.opt(m, 'namespace', 'metadata', c.label, 'default');
  const labels = c.opt(m, 'labels', 'metadata', c.labels, {});
  // The revision a `get -o yaml` printed is accepted so the output can be re-applied: it is the revision the
  // update is based on (ambitctl apply sends it; a stale one is refused as a conflict), never stored as given.
  c.opt(m, 'revision', 'metadata', (x, f) => c.int(x, f, 0, Number.MAX_SAFE_INTEGER), 0);
  id.name = name;
  id.namespace = namespace;
  if (c.errors.length !== before || name === undefined || namespace === undefined || labels === undefined) return undefined;
  return { name, namespace, labels };
}

const LOCALITY_SEGMENT = /^[A-Za-z0-9._-]{1,63}$/;

function locality(c: Checker, v: unknown, field: string): string | undefined {
  return c.matching(v, field, (s) => s === '' || (s.split('/').length <= 3 && s.split('/').every((x) => LOCALITY_SEGMENT.test(x))),
    '"region", "region/zone" or "region/zone/subzone" (each of letters, digits, "-", "_", ".") or ""');
}

function checkWorkloadSpec(c: Checker, v: unknown, field: string): WorkloadSpec | undefined {
  const before = c.errors.length;
  const m = c.mapping(v, field, ['serviceAccount', 'node', 'address', 'ports', 'uid', 'weight', 'locality', 'healthy'],
    { serviceAccountName: 'use serviceAccount', nodeName: 'use node' });
  if (m === undefined) return undefined;
  const serviceAccount = c.req(m, 'serviceAccount', field, c.subdomain);
  const node = c.req(m, 'node', field, c.subdomain);
  const address = c.req(m, 'address', field, c.ip);
  const ports = c.opt(m, 'ports', field, (x, f) => c.set(x, f, (p, at) => c.int(p, at, 1, 65535), 'port'), []);
  const rawUid = c.optional(m, 'uid');
  // 4294967295 is (uid_t)-1, "no user" to the kernel.
  const uid = rawUid === undefined ? undefined : c.int(rawUid, join(field, 'uid'), 0, 4294967294);
  const weight = c.opt(m, 'weight', field, (x, f) => c.int(x, f, 1, 1000), 1);
  const loc = c.opt(m, 'locality', field, (x, f) => locality(c, x, f), '');
  const healthy = c.opt(m, 'healthy', field, c.bool, true);
  if (c.errors.length !== before || serviceAccount === undefined || node === undefined || address === undefined
    || ports === undefined || weight === undefined || loc === undefined || healthy === undefined) return undefined;
  const spec = { serviceAccount, node, address, ports, weight, locality: loc, healthy };
  return uid === undefined ? spec : { ...spec, uid };
}

const PORT_HINTS = {
  protocol: 'Ambit carries TCP only; remove it (appProtocol declares HTTP, HTTP/2 or gRPC)',
  nodePort: 'not supported; remove it',
};

function checkServicePort(c: Checker, v: unknown, field: string): ServicePort | undefined {
  const before = c.errors.length;
  const m = c.mapping(v, field, ['name', 'port', 'targetPort', 'appProtocol'], PORT_HINTS);
  if (m === undefined) return undefined;
  const port = c.req(m, 'port', field, (x, f) => c.int(x, f, 1, 65535));
  const targetPort = c.opt(m, 'targetPort', field, (x, f) => c.int(x, f, 1, 65535), port);
  const name = c.opt(m, 'name', field, c.label, port === undefined ? undefined : `port-${port}`);
  const appProtocol = c.opt(m, 'appProtocol', field, (x, f) => c.oneOf(x, f, APP_PROTOCOLS), 'tcp');
  if (c.errors.length !== before || port === undefined || targetPort === undefined || name === undefined || appProtocol === undefined) {
    return undefined;
  }
  return { name, port, targetPort, appProtocol };
}

/** Service selector: a label map; an empty one selects no workloads (as a Kubernetes Service without selector). */
function checkServiceSpec(c: Checker, v: unknown, field: string): ServiceSpec | undefined {
  const before = c.errors.length;
  const m = c.mapping(v, field, ['addresses', 'ports', 'selector'],
    { clusterIP: 'use addresses', clusterIPs: 'use addresses', type: 'not supported; remove it' });
  if (m === undefined) return undefined;
  const addrField = join(field, 'addresses');
  const addrList = c.opt(m, 'addresses', field, c.list, []) ?? [];
  // Address order is kept: as with Kubernetes clusterIPs the first is the primary one.
  const addresses = addrList.map((a, i) => ({ key: c.ip(a, join(addrField, i)), field: join(addrField, i), shown: a }));
  c.unique(addresses.filter((a) => a.key !== undefined), 'address');
  const portsField = join(field, 'ports');
  const rawPorts = c.req(m, 'ports', field, c.list);
  if (rawPorts !== undefined && rawPorts.length === 0) c.fail(portsField, 'must list at least one port', rawPorts);
  const ports = (rawPorts ?? []).map((p, i) => checkServicePort(c, p, join(portsField, i)));
  const checked = ports.filter((p) => p !== undefined);
  c.unique(checked.map((p) => ({ key: p.port, field: join(portsField, ports.indexOf(p)), shown: p.port })), 'port');
  c.unique(checked.map((p) => ({ key: p.name, field: join(portsField, ports.indexOf(p)), shown: p.name })), 'port name');
  const selector = c.opt(m, 'selector', field, c.labels, {});
  if (c.errors.length !== before || selector === undefined) return undefined;
  return {
    addresses: addresses.map((a) => a.key ?? ''),
    ports: checked.sort((a, b) => a.port - b.port),
    selector,
  };
}

function check(doc: unknown, where: string): { resource: Resource } | { error: AmbitError } {
  const c = new Checker();
  const id: Identity = {};
  const routeKind = isMapping(doc) && (ROUTE_KINDS as readonly unknown[]).includes(doc['kind']);
  // A route's status is computed when read (shared/routes/status.ts), so as Kubernetes does the status `get -o yaml`
  // printed is ignored and the output re-applies; other kinds have none to print.
  const top = c.mapping(doc, '', ['apiVersion', 'kind', 'metadata', 'spec', ...(routeKind ? ['status'] : [])],
    { status: 'status is not part of a resource; remove it' });
  if (top === undefined) return { error: invalidDocument(where, id, c.errors) };
  const apiVersion = c.required(top, 'apiVersion', '');
  const rawKind = c.required(top, 'kind', '');
  id.kind = KINDS.find((k) => k === rawKind);
  if (rawKind !== undefined && id.kind === undefined) c.bad('kind', `must be one of ${KINDS.join(', ')}`, rawKind);
  // Each kind has its one apiVersion: the Gateway API's routes keep theirs so upstream files apply unchanged.
  const wanted = id.kind === undefined ? undefined : apiVersionOf(id.kind);
  if (apiVersion !== undefined && wanted !== undefined && apiVersion !== wanted) c.bad('apiVersion', `must be "${wanted}"`, apiVersion);
  const rawMeta = c.required(top, 'metadata', '');
  const metadata = rawMeta === undefined ? undefined : checkMetadata(c, rawMeta, id);
  const spec = c.required(top, 'spec', '');
  // The spec is checked even when metadata is bad, so one round reports both.
  const meta = metadata === undefined ? undefined : { ...metadata, revision: 0 };
  let resource: Resource | undefined;
  if (spec !== undefined && id.kind === 'Workload') {
    const s = checkWorkloadSpec(c, spec, 'spec');
    if (s !== undefined && meta !== undefined) resource = { kind: id.kind, metadata: meta, spec: s };
  } else if (spec !== undefined && id.kind === 'Service') {
    const s = checkServiceSpec(c, spec, 'spec');
    if (s !== undefined && meta !== undefined) resource = { kind: id.kind, metadata: meta, spec: s };
  } else if (spec !== undefined && id.kind === 'AuthorizationPolicy') {
    const s = checkPolicySpec(c, spec, 'spec');
    if (s !== undefined && meta !== undefined) resource = { kind: id.kind, metadata: meta, spec: s };
  } else if (spec !== undefined && id.kind === 'HTTPRoute') {
    const s = checkHTTPRouteSpec(c, spec, 'spec', meta?.namespace ?? 'default');
    if (s !== undefined && meta !== undefined) resource = { kind: id.kind, metadata: meta, spec: s };
  } else if (spec !== undefined && id.kind === 'GRPCRoute') {
    const s = checkGRPCRouteSpec(c, spec, 'spec', meta?.namespace ?? 'default');
    if (s !== undefined && meta !== undefined) resource = { kind: id.kind, metadata: meta, spec: s };
  } else if (spec !== undefined && id.kind === 'FaultInjection') {
    const s = checkFaultInjectionSpec(c, spec, 'spec');
    if (s !== undefined && meta !== undefined) resource = { kind: id.kind, metadata: meta, spec: s };
  } else if (spec !== undefined && id.kind === 'ReferenceGrant') {
    const s = checkReferenceGrantSpec(c, spec, 'spec');
    if (s !== undefined && meta !== undefined) resource = { kind: id.kind, metadata: meta, spec: s };
  }
  if (c.errors.length > 0 || resource === undefined) return { error: invalidDocument(where, id, c.errors) };
  return { resource };
}

/**
 * Validates one document into a core resource with defaults filled in and
 * revision 0. `where` names the document in messages (e.g. "web.yaml#2").
 * Throws AMBIT_ERR_RESOURCE_INVALID listing every problem found.
 */
export function validateResource(doc: unknown, where: string): Resource {
  const r = check(doc, where);
  if ('error' in r) throw r.error;
  return r.resource;
}

function identityOf(r: Resource): string {
  return `${r.kind} ${r.metadata.namespace}/${r.metadata.name}`;
}

/**
 * Validates a batch all-or-nothing: every invalid document is reported in one
 * error, and so are names or workload addresses the batch defines twice.
 */
export function validateAll(docs: readonly { readonly doc: unknown; readonly where: string }[]): Resource[] {
  const results = docs.map((d) => ({ where: d.where, result: check(d.doc, d.where) }));
  const failures = results.flatMap((r) => ('error' in r.result ? [r.result.error] : []));
  const first = failures[0];
  if (first !== undefined) {
    const errors = failures.flatMap((f) => {
      const e = f.details['errors'];
      return Array.isArray(e) ? e.map(String) : [f.message];
    });
    const more = failures.length > 1 ? ` (${failures.length} of ${docs.length} documents are invalid; nothing was applied)` : '';
    throw new AmbitError('AMBIT_ERR_RESOURCE_INVALID', `${first.message}${more}`, {
      cause: failures.length === 1 ? first : new AggregateError(failures, `${failures.length} invalid documents`),
      details: { ...first.details, errors, documents: failures.map((f) => f.details['where']) },
    });
  }
  const resources = results.flatMap((r) => ('resource' in r.result ? [{ where: r.where, resource: r.result.resource }] : []));
  const conflicts: string[] = [];
  const names = new Map<string, string>();
  const addresses = new Map<string, { where: string; who: string }>();
  for (const { where, resource } of resources) {
    const key = resourceKey(resource);
    const seen = names.get(key);
    if (seen !== undefined) conflicts.push(`${where} ${identityOf(resource)}: also defined at ${seen}`);
    else names.set(key, where);
    if (resource.kind !== 'Workload' || seen !== undefined) continue;
    const other = addresses.get(resource.spec.address);
    if (other !== undefined) {
      conflicts.push(`${where} ${identityOf(resource)}: spec.address ${resource.spec.address} is also used by ${other.who} at ${other.where}`);
    } else addresses.set(resource.spec.address, { where, who: identityOf(resource) });
  }
  const firstConflict = conflicts[0];
  if (firstConflict !== undefined) {
    const more = conflicts.length > 1 ? ` (and ${conflicts.length - 1} more conflict${conflicts.length > 2 ? 's' : ''})` : '';
    throw new AmbitError('AMBIT_ERR_RESOURCE_CONFLICT', `${firstConflict}${more}`, { details: { errors: conflicts } });
  }
  return resources.map((r) => r.resource);
}

const PORT_MAPPING = /^(?:([^=]*)=)?([0-9]{1,6})(?::([0-9]{1,6}))?(?:\/([^/]*))?$/;

/**
 * A service port in the CLI's form: "80", "80:8080", "http=80:8080"
 * (name=port:targetPort), with an optional "/APP_PROTOCOL" ("web=80:8080/http").
 */
export function parsePortMapping(text: string): ServicePort {
  const match = typeof text === 'string' ? PORT_MAPPING.exec(text) : null;
  const usage = 'expected [NAME=]PORT[:TARGET_PORT][/APP_PROTOCOL], e.g. 80, 80:8080, web=80:8080 or web=80:8080/http';
  if (match === null) {
    throw new AmbitError('AMBIT_ERR_RESOURCE_INVALID', `invalid port mapping ${describe(text)}: ${usage}`, { details: { field: 'port', value: text } });
  }
  const [, name, port, targetPort, appProtocol] = match;
  const c = new Checker();
  const doc: Record<string, unknown> = { port: Number(port) };
  if (name !== undefined) doc['name'] = name;
  if (targetPort !== undefined) doc['targetPort'] = Number(targetPort);
  if (appProtocol !== undefined) doc['appProtocol'] = appProtocol;
  const checked = checkServicePort(c, doc, '');
  const problem = c.errors[0];
  if (checked === undefined || problem !== undefined) {
    const what = problem === undefined ? usage : `${problem.field} ${problem.message}`;
    throw new AmbitError('AMBIT_ERR_RESOURCE_INVALID', `invalid port mapping ${describe(text)}: ${what}`, {
      details: { field: 'port', value: text, errors: c.errors.map((e) => `${e.field}: ${e.message}`) },
    });
  }
  return checked;
}
