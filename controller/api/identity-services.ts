import type { BootstrapServer, CertificateAuthorityServer, JoinResponse, CreateCertificateResponse, JoinRequest, CreateCertificateRequest } from '../../shared/proto/gen/ambit.ts';
import type { ServerUnaryCall } from '@grpc/grpc-js';
import { AmbitError, isAmbitError } from '../../shared/errors.ts';
import { isValidName, nodeId, parseSpiffeId } from '../../shared/spiffe-id.ts';
import { parseCsr } from '../../shared/x509.ts';
import type { Logger } from '../../shared/logger.ts';
import type { CertificateAuthority } from '../ca/authority.ts';
import type { JoinTokens } from '../registry/join-tokens.ts';
import type { NodeTracker } from '../registry/node-tracker.ts';
import type { Registry } from '../registry/registry.ts';
import type { ControllerMetrics } from '../metrics.ts';
import { SpanKind, type Span, type Tracer } from '../../shared/tracing.ts';
import { unary, type PeerAuthenticator } from './peer.ts';

export interface IdentityDeps {
  readonly ca: CertificateAuthority;
  readonly registry: Registry;
  readonly tokens: JoinTokens;
  readonly nodes: NodeTracker;
  readonly auth: PeerAuthenticator;
  readonly logger: Logger;
  readonly metrics: ControllerMetrics;
  readonly tracer: Tracer;
  readonly certTtlMs: number;
  readonly nodeCertTtlMs: number;
  /** Verifies a Kubernetes service-account token for `node` (kubernetes store only). */
  readonly reviewKubernetesToken?: (token: string, node: string) => Promise<void>;
}

/** Ends a call's span: refused calls carry the refusal reason as an error status. */
function endSpan(span: Span, refused: string): void {
  if (refused) span.setStatus({ code: 2, message: refused });
  span.end();
}

function reasonOf(err: unknown): string {
  if (isAmbitError(err)) {
    const r = err.details.reason;
    return typeof r === 'string' ? r : err.code.replace('AMBIT_ERR_', '').toLowerCase();
  }
  return 'internal';
}

/**
 * Bootstrap.Join: the one RPC open to callers without a certificate. The CSR
 * is checked before the token is spent, so a malformed request costs the
 * operator nothing; the token is spent before signing, so a token can never
 * yield two certificates.
 */
export function bootstrapService(d: IdentityDeps): BootstrapServer {
  return {
    join: unary(d.logger, 'Join', async (call: ServerUnaryCall<JoinRequest, JoinResponse>): Promise<JoinResponse> => {
      const req = call.request;
      const peer = call.getPeer();
      const span = d.tracer.startSpan('ambit.controller.Join', { kind: SpanKind.SERVER, attributes: { 'ambit.node': req.node } });
      try {
        if (!isValidName(req.node)) {
          throw new AmbitError('AMBIT_ERR_RESOURCE_INVALID', `invalid node name ${JSON.stringify(req.node)}`, { details: { field: 'node', reason: 'bad-node-name' } });
        }
        const identity = nodeId(d.ca.trustDomain, req.node);
        const csr = parseCsr(req.csrPem);
        // What signCsr would refuse about the names asked for, refused before the token is spent (see above).
        if (csr.uris.length !== 1 || csr.uris[0] !== identity.uri || csr.otherSans.length > 0 || csr.otherExtensions.length > 0) {
          throw new AmbitError('AMBIT_ERR_CSR_INVALID', `a Join CSR must ask for exactly ${identity.uri} and nothing else; it asks for ${JSON.stringify([...csr.uris, ...csr.otherSans, ...csr.otherExtensions])}`, {
            details: { requested: csr.uris, otherSans: csr.otherSans, extensions: csr.otherExtensions, identity: identity.uri },
          });
        }
        const cred = req.credential;
        if (cred?.$case === 'joinToken') {
          await d.tokens.consume(cred.joinToken, req.node, d.ca.roots().map((r) => r.fingerprint));
        } else if (cred?.$case === 'kubernetesToken') {
          if (!d.reviewKubernetesToken) {
            throw new AmbitError('AMBIT_ERR_TOKEN_INVALID', 'Kubernetes token bootstrap needs the controller to run with --store kubernetes or --kubernetes-join', { details: { reason: 'k8s-disabled' } });
          }
          await d.reviewKubernetesToken(cred.kubernetesToken, req.node);
        } else {
          throw new AmbitError('AMBIT_ERR_TOKEN_INVALID', 'Join needs a join token or a Kubernetes service-account token', { details: { reason: 'missing' } });
        }
        const issued = d.ca.signCsr(csr, identity, d.nodeCertTtlMs);
        await d.nodes.seen(req.node, { certExpiresAt: issued.notAfter });
        await d.nodes.issued(req.node, { identity: identity.uri, root: issued.root, notAfter: issued.notAfter });
        d.metrics.bootstrap.inc({ result: 'ok', reason: '' });
        endSpan(span, '');
        d.logger.info({ node: req.node, identity: identity.uri, peer, expiresAt: new Date(issued.notAfter).toISOString() }, 'node bootstrapped');
        return { certificateChainPem: issued.chainPem, trustBundlePem: d.ca.bundlePem(), trustDomain: d.ca.trustDomain, expiresAtMs: issued.notAfter };
      } catch (err) {
        const reason = reasonOf(err);
        d.metrics.bootstrap.inc({ result: 'refused', reason });
        endSpan(span, reason);
        d.logger.warn({ node: req.node, peer, reason, err: (err as Error).message }, 'node bootstrap refused');
        throw err;
      }
    }),
  };
}

/**
 * CertificateAuthority.CreateCertificate: node authorization is the mesh's key
 * security property — a node gets certificates only for identities of
 * workloads scheduled on it (and its own node identity, for renewal).
 */
export function certificateService(d: IdentityDeps): CertificateAuthorityServer {
  return {
    createCertificate: unary(d.logger, 'CreateCertificate', async (call: ServerUnaryCall<CreateCertificateRequest, CreateCertificateResponse>): Promise<CreateCertificateResponse> => {
      const started = performance.now();
      let kind = 'unknown';
      const span = d.tracer.startSpan('ambit.controller.CreateCertificate', { kind: SpanKind.SERVER, attributes: { 'ambit.identity': call.request.identity } });
      try {
        const caller = d.auth.require(call);
        if (caller.kind !== 'node' || caller.name === undefined) {
          throw new AmbitError('AMBIT_ERR_AUTH_DENIED', `only node identities may request certificates; caller is ${caller.uri}`, { details: { reason: 'not-a-node' } });
        }
        const identity = parseSpiffeId(call.request.identity);
        kind = identity.kind;
        if (identity.trustDomain !== d.ca.trustDomain) {
          throw new AmbitError('AMBIT_ERR_NODE_UNAUTHORIZED', `identity ${identity.uri} is outside trust domain ${d.ca.trustDomain}`, { details: { reason: 'trust-domain' } });
        }
        const csr = parseCsr(call.request.csrPem);
        if (!d.registry.mayIssue(caller.name, identity)) {
          d.logger.warn({ node: caller.name, caller: caller.uri, requested: identity.uri, peer: call.getPeer() }, 'refused certificate: identity is not scheduled on the calling node');
          throw new AmbitError('AMBIT_ERR_NODE_UNAUTHORIZED', `node ${caller.name} may not obtain ${identity.uri}: no workload with that identity is registered on it`, {
            details: { reason: 'node-unauthorized', node: caller.name, identity: identity.uri },
          });
        }
        const issued = d.ca.signCsr(csr, identity, identity.kind === 'node' ? d.nodeCertTtlMs : d.certTtlMs);
        // Which root each live certificate chains to is what makes retiring a root safe or not (rotation-readiness.ts).
        void d.nodes.issued(caller.name, { identity: identity.uri, root: issued.root, notAfter: issued.notAfter })
          .catch((err: unknown) => d.logger.warn({ err }, 'recording the issued certificate failed'));
        d.metrics.csr.inc({ result: 'signed', reason: '', kind });
        d.metrics.csrSeconds.observe((performance.now() - started) / 1000);
        span.setAttribute('ambit.node', caller.name);
        endSpan(span, '');
        d.logger.debug({ node: caller.name, identity: identity.uri, serial: issued.serial }, 'certificate issued');
        return { certificateChainPem: issued.chainPem, trustBundlePem: d.ca.bundlePem(), expiresAtMs: issued.notAfter };
      } catch (err) {
        d.metrics.csr.inc({ result: 'refused', reason: reasonOf(err), kind });
        endSpan(span, reasonOf(err));
        throw err;
      }
    }),
  };
}
