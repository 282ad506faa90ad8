import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { AmbitError } from '../../shared/errors.ts';
import { writeFileAtomic } from '../../shared/files.ts';
import type { Controllers } from '../../shared/controller-target.ts';
import type { Logger } from '../../shared/logger.ts';
import { nodeId } from '../../shared/spiffe-id.ts';
import { parseJoinToken } from '../../shared/join-token.ts';
import { joinWithKubernetesToken, joinWithToken, type NodeCredentials } from './ca-client.ts';
import type { CertManager } from './cert-manager.ts';

/** What an agent remembers about its node identity besides the certificate (<data-dir>/node.json, 0600). */
export interface NodeInfo {
  readonly node: string;
  readonly trustDomain: string;
  readonly bundlePem: string;
}

const FILE = 'node.json';

export function loadNodeInfo(dataDir: string): NodeInfo | undefined {
  try {
    return JSON.parse(readFileSync(join(dataDir, FILE), 'utf8')) as NodeInfo;
  } catch {
    return undefined;
  }
}

export function nodeInfoPath(dataDir: string): string {
  return join(dataDir, FILE);
}

export function saveNodeInfo(dataDir: string, info: NodeInfo, write: (path: string, data: string) => void = writeFileAtomic): void {
  write(nodeInfoPath(dataDir), JSON.stringify(info));
}

/**
 * The node's identity at start: saved credentials when still valid, else a
 * bootstrap with the join token, else with the Kubernetes projected token
 * (re-read from its file, which the kubelet rotates). A saved identity for
 * another node name, or neither credentials nor a way to join, is a
 * configuration error the operator must see at once.
 */
export async function establishNodeIdentity(o: {
  readonly dataDir: string;
  readonly node: string;
  readonly controller: Controllers;
  readonly joinToken: string | undefined;
  /** --kubernetes-token-file: a projected service-account token (audience ambit). */
  readonly kubernetesTokenFile?: string | undefined;
  /** --ca-bundle: PEM file the controller must chain to when joining with a Kubernetes token. */
  readonly caBundle?: string | undefined;
  readonly certs: CertManager;
  readonly logger: Logger;
  readonly now: () => number;
  /** How node.json is written (the agent's Persister: a full disk must not fail a join that succeeded). */
  readonly write?: (path: string, data: string) => void;
}): Promise<NodeInfo> {
  const saved = loadNodeInfo(o.dataDir);
  if (saved && saved.node !== o.node) {
    throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', `data dir ${o.dataDir} belongs to node ${saved.node}, not --node ${o.node}`, { details: { key: 'node', value: o.node } });
  }
  if (saved && o.certs.get(nodeId(saved.trustDomain, o.node).uri)) {
    o.logger.info({ node: o.node, identity: nodeId(saved.trustDomain, o.node).uri }, 'using saved node credentials');
    return saved;
  }
  let creds: NodeCredentials;
  let how: string;
  if (o.joinToken) {
    const pin = parseJoinToken(o.joinToken).caFingerprint;
    creds = await joinWithToken({ controller: o.controller, node: o.node, token: o.joinToken, caFingerprint: pin, now: o.now });
    how = 'join token';
  } else if (o.kubernetesTokenFile) {
    const token = readSecretFile(o.kubernetesTokenFile, 'kubernetes-token-file');
    if (!o.caBundle) throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', '--kubernetes-token-file needs --ca-bundle', { details: { key: 'ca-bundle' } });
    const bundlePem = readSecretFile(o.caBundle, 'ca-bundle');
    creds = await joinWithKubernetesToken({ controller: o.controller, node: o.node, token, bundlePem, now: o.now });
    how = 'Kubernetes service-account token';
  } else {
    throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', saved
      ? `the saved node certificate in ${o.dataDir} has expired; create a new join token (ambitctl node token create --node ${o.node}) and pass --join`
      : `no node credentials in ${o.dataDir}: pass --join TOKEN (from "ambitctl node token create --node ${o.node}") or, on Kubernetes, --kubernetes-token-file and --ca-bundle`, { details: { key: 'join' } });
  }
  const info: NodeInfo = { node: o.node, trustDomain: creds.trustDomain, bundlePem: creds.bundlePem };
  o.certs.put(nodeId(creds.trustDomain, o.node), creds.keyPem, creds.certChainPem);
  saveNodeInfo(o.dataDir, info, o.write);
  o.logger.info({ node: o.node, identity: nodeId(creds.trustDomain, o.node).uri, with: how, expiresAt: new Date(creds.expiresAt).toISOString() }, 'node joined the mesh');
  return info;
}

/** A small file given by flag (token, bundle), trimmed; unreadable or empty is a configuration error naming the flag. */
function readSecretFile(path: string, key: string): string {
  let text: string;
  try {
    text = readFileSync(path, 'utf8').trim();
  } catch (err) {
    throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', `cannot read --${key} ${path}: ${(err as Error).message}`, { cause: err, details: { key, value: path } });
  }
  if (text === '') throw new AmbitError('AMBIT_ERR_CONFIG_INVALID', `--${key} ${path} is empty`, { details: { key, value: path } });
  return text;
}
