/** Whether an agent of the demo can start again from the node credentials it saved. */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseCertificates } from '../../shared/tls.ts';

/**
 * Can the agent in `dir` start from its saved node credentials? Only when its
 * node certificate is still valid and was issued by this controller's CA —
 * credentials from an older, deleted .demo/controller would never be trusted.
 */
export function savedNodeCredentials(dir: string, node: string, caDir: string, now: number): 'valid' | 'none' | 'stale' {
  if (!existsSync(join(dir, 'node.json'))) return 'none';
  try {
    const info = JSON.parse(readFileSync(join(dir, 'node.json'), 'utf8')) as { node: string; trustDomain: string };
    const uri = `spiffe://${info.trustDomain}/ambit/node/${node}`;
    if (info.node !== node) return 'stale';
    const issuers = [...parseCertificates(readFileSync(join(caDir, 'bundle.pem'), 'utf8')), ...parseCertificates(readFileSync(join(caDir, 'signer-cert.pem'), 'utf8'))];
    for (const f of readdirSync(join(dir, 'certs'))) {
      const e = JSON.parse(readFileSync(join(dir, 'certs', f), 'utf8')) as { uri: string; chainPem: string };
      if (e.uri !== uri) continue;
      const leaf = parseCertificates(e.chainPem)[0];
      if (!leaf || Date.parse(leaf.validTo) < now + 60_000) return 'stale';
      return issuers.some((c) => leaf.checkIssued(c) && leaf.verify(c.publicKey)) ? 'valid' : 'stale';
    }
  } catch {
    // unreadable: treat as stale
  }
  return 'stale';
}
