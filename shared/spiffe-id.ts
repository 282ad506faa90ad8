import { AmbitError } from './errors.ts';

/**
 * SPIFFE IDs as a value type. Ambit uses three shapes under one trust domain:
 *   workload  spiffe://<td>/ns/<namespace>/sa/<service-account>
 *   node      spiffe://<td>/ambit/node/<node-name>
 *   admin     spiffe://<td>/ambit/admin/<name>
 *   controller spiffe://<td>/ambit/controller
 * Parsing is strict (SPIFFE spec §2): lower-case trust domain of [a-z0-9.-_],
 * path segments of [A-Za-z0-9.-_], no empty, "." or ".." segments, no query,
 * fragment, port or user info.
 */
export type SpiffeKind = 'workload' | 'node' | 'admin' | 'controller';

export interface SpiffeId {
  readonly trustDomain: string;
  readonly kind: SpiffeKind;
  /** workload: namespace; otherwise undefined */
  readonly namespace?: string;
  /** workload: service account; otherwise undefined */
  readonly serviceAccount?: string;
  /** node: node name; admin: admin name */
  readonly name?: string;
  readonly uri: string;
}

const TRUST_DOMAIN = /^[a-z0-9._-]{1,255}$/;
const SEGMENT = /^[A-Za-z0-9._-]+$/;
/** Kubernetes-style names: what namespaces, service accounts and node names may be. */
const NAME = /^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/;

function invalid(uri: string, why: string): AmbitError {
  return new AmbitError('AMBIT_ERR_SPIFFE_INVALID', `invalid SPIFFE ID ${JSON.stringify(uri)}: ${why}`, { details: { uri } });
}

export function isValidTrustDomain(td: string): boolean {
  return TRUST_DOMAIN.test(td);
}

export function isValidName(name: string): boolean {
  return NAME.test(name);
}

export function parseSpiffeId(uri: string): SpiffeId {
  if (typeof uri !== 'string' || !uri.startsWith('spiffe://')) throw invalid(String(uri), 'must start with spiffe://');
  if (uri.length > 2048) throw invalid(uri.slice(0, 64), 'longer than 2048 bytes');
  const rest = uri.slice('spiffe://'.length);
  const slash = rest.indexOf('/');
  const td = slash === -1 ? rest : rest.slice(0, slash);
  if (!TRUST_DOMAIN.test(td)) throw invalid(uri, 'trust domain must be lower-case letters, digits, ".", "-" or "_"');
  if (slash === -1) throw invalid(uri, 'has no path');
  const segments = rest.slice(slash + 1).split('/');
  for (const s of segments) {
    if (s === '' || s === '.' || s === '..' || !SEGMENT.test(s)) throw invalid(uri, `bad path segment ${JSON.stringify(s)}`);
  }
  const [a, b, c, d] = segments;
  if (segments.length === 4 && a === 'ns' && c === 'sa' && b !== undefined && d !== undefined) {
    return Object.freeze({ trustDomain: td, kind: 'workload', namespace: b, serviceAccount: d, uri });
  }
  if (segments.length === 3 && a === 'ambit' && b === 'node' && c !== undefined) {
    return Object.freeze({ trustDomain: td, kind: 'node', name: c, uri });
  }
  if (segments.length === 3 && a === 'ambit' && b === 'admin' && c !== undefined) {
    return Object.freeze({ trustDomain: td, kind: 'admin', name: c, uri });
  }
  if (segments.length === 2 && a === 'ambit' && b === 'controller') {
    return Object.freeze({ trustDomain: td, kind: 'controller', uri });
  }
  throw invalid(uri, 'path is not /ns/<ns>/sa/<sa>, /ambit/node/<name>, /ambit/admin/<name> or /ambit/controller');
}

function checkTd(td: string): void {
  if (!TRUST_DOMAIN.test(td)) throw invalid(`spiffe://${td}`, 'invalid trust domain');
}

function checkSeg(what: string, v: string): void {
  if (!SEGMENT.test(v) || v === '.' || v === '..') throw invalid(v, `invalid ${what}`);
}

export function workloadId(trustDomain: string, namespace: string, serviceAccount: string): SpiffeId {
  checkTd(trustDomain);
  checkSeg('namespace', namespace);
  checkSeg('service account', serviceAccount);
  return Object.freeze({
    trustDomain, kind: 'workload', namespace, serviceAccount,
    uri: `spiffe://${trustDomain}/ns/${namespace}/sa/${serviceAccount}`,
  });
}

export function nodeId(trustDomain: string, node: string): SpiffeId {
  checkTd(trustDomain);
  checkSeg('node name', node);
  return Object.freeze({ trustDomain, kind: 'node', name: node, uri: `spiffe://${trustDomain}/ambit/node/${node}` });
}

export function adminId(trustDomain: string, name: string): SpiffeId {
  checkTd(trustDomain);
  checkSeg('admin name', name);
  return Object.freeze({ trustDomain, kind: 'admin', name, uri: `spiffe://${trustDomain}/ambit/admin/${name}` });
}

export function controllerId(trustDomain: string): SpiffeId {
  checkTd(trustDomain);
  return Object.freeze({ trustDomain, kind: 'controller', uri: `spiffe://${trustDomain}/ambit/controller` });
}
