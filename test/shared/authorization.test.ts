import t from 'tap';
import { Authorizer, deniedBy as deniedByLabel, NO_ALLOW_MATCHED } from '../../shared/authorization.ts';
import type { ConnectionFacts, Decision } from '../../shared/authorization.ts';
import { isAmbitError } from '../../shared/errors.ts';
import { MESH_NAMESPACE } from '../../shared/resources/types.ts';
import type {
  AuthorizationPolicy, PolicyAction, PolicyOperation, PolicyRule, PolicySource, Workload,
} from '../../shared/resources/types.ts';
import { nodeId, workloadId } from '../../shared/spiffe-id.ts';

// ------------------------------------------------------------------ fixtures

function workload(name: string, namespace: string, labels: Record<string, string> = {}): Workload {
  return {
    kind: 'Workload',
    metadata: { name, namespace, labels, revision: 1 },
    spec: {
      serviceAccount: name, node: 'node-a', address: '10.1.0.1', ports: [8080],
      weight: 1, locality: '', healthy: true,
    },
  };
}

function src(fields: Partial<PolicySource> = {}): PolicySource {
  return {
    principals: [], notPrincipals: [], namespaces: [], notNamespaces: [],
    serviceAccounts: [], notServiceAccounts: [], ipBlocks: [], notIpBlocks: [],
    ...fields,
  };
}

function op(ports: number[] = [], notPorts: number[] = []): PolicyOperation {
  return { ports, notPorts };
}

function rule(from: PolicySource[] = [], to: PolicyOperation[] = []): PolicyRule {
  return { from, to };
}

interface PolicyOpts {
  readonly namespace?: string;
  readonly name?: string;
  readonly selector?: Record<string, string>;
}

function policy(action: PolicyAction, rules: PolicyRule[], opts: PolicyOpts = {}): AuthorizationPolicy {
  const namespace = opts.namespace ?? 'prod';
  const name = opts.name ?? action.toLowerCase();
  return {
    kind: 'AuthorizationPolicy',
    metadata: { name, namespace, labels: {}, revision: 1 },
    spec: opts.selector === undefined ? { action, rules } : { action, rules, selector: opts.selector },
  };
}
const allow = (rules: PolicyRule[], opts?: PolicyOpts): AuthorizationPolicy => policy('ALLOW', rules, opts);
const deny = (rules: PolicyRule[], opts?: PolicyOpts): AuthorizationPolicy => policy('DENY', rules, opts);

/** The destination every case targets unless it says otherwise. */
const API = workload('api', 'prod', { app: 'api', tier: 'backend' });
const WEB = workloadId('cluster.local', 'default', 'web');
const NODE = nodeId('cluster.local', 'n1');

function conn(overrides: Partial<ConnectionFacts> = {}): ConnectionFacts {
  return { sourceIdentity: WEB, sourceAddress: '10.0.0.5', destination: API, destinationPort: 8080, ...overrides };
}
const plain = (overrides: Partial<ConnectionFacts> = {}): ConnectionFacts => conn({ sourceIdentity: undefined, ...overrides });

const NO_POLICIES: Decision = { allowed: true, policy: undefined, rule: undefined, reason: 'no_policies' };
const NO_MATCH: Decision = { allowed: false, policy: undefined, rule: undefined, reason: 'no_allow_match' };
const allowedBy = (p: string, rule = 0): Decision => ({ allowed: true, policy: p, rule, reason: 'allowed_by_policy' });
const deniedBy = (p: string, rule = 0): Decision => ({ allowed: false, policy: p, rule, reason: 'denied_by_policy' });
const ALLOWED = allowedBy('prod/allow');
const DENIED = deniedBy('prod/deny');

/** An ALLOW policy with one rule of one source: the shape most field cases need. */
const allowFrom = (s: Partial<PolicySource>): AuthorizationPolicy[] => [allow([rule([src(s)])])];
const denyFrom = (s: Partial<PolicySource>): AuthorizationPolicy[] => [deny([rule([src(s)])])];

interface Case {
  readonly name: string;
  readonly policies: AuthorizationPolicy[];
  readonly facts: ConnectionFacts;
  readonly expected: Decision;
}

// --------------------------------------------------------------------- table

const cases: Case[] = [
  // Overall evaluation order.
  { name: 'no policies allows', policies: [], facts: conn(), expected: NO_POLICIES },
  { name: 'ALLOW with no rules denies all', policies: [allow([])], facts: conn(), expected: NO_MATCH },
  { name: 'DENY with no rules denies nothing', policies: [deny([])], facts: conn(), expected: NO_POLICIES },
  { name: 'ALLOW with an empty rule allows all', policies: [allow([rule()])], facts: conn(), expected: ALLOWED },
  { name: 'DENY with an empty rule denies all', policies: [deny([rule()])], facts: conn(), expected: DENIED },
  { name: 'DENY beats a matching ALLOW', policies: [allow([rule()]), deny([rule()])], facts: conn(), expected: DENIED },
  { name: 'unmatched DENY then matching ALLOW allows', policies: [allow([rule()]), ...denyFrom({ namespaces: ['evil'] })], facts: conn(), expected: ALLOWED },
  { name: 'unmatched DENY and no ALLOW allows', policies: denyFrom({ namespaces: ['evil'] }), facts: conn(), expected: NO_POLICIES },
  { name: 'unmatched DENY and unmatched ALLOW denies', policies: [...denyFrom({ namespaces: ['evil'] }), ...allowFrom({ namespaces: ['other'] })], facts: conn(), expected: NO_MATCH },
  {
    name: 'second ALLOW policy matching allows, naming it',
    policies: [allow([rule([src({ namespaces: ['other'] })])], { name: 'a' }), allow([rule([src({ namespaces: ['default'] })])], { name: 'b' })],
    facts: conn(), expected: allowedBy('prod/b'),
  },
  {
    name: 'several matching DENYs name the first by namespace/name whatever the input order',
    policies: [deny([rule()], { name: 'z' }), deny([rule()], { namespace: MESH_NAMESPACE, name: 'mesh-z' }), deny([rule()], { name: 'a' })],
    facts: conn(), expected: deniedBy(`${MESH_NAMESPACE}/mesh-z`),
  },

  // Which rule decided: the first of the deciding policy's rules that matches.
  {
    name: 'the ALLOW names its second rule when only that one matches',
    policies: [allow([rule([src({ namespaces: ['other'] })]), rule([src({ namespaces: ['default'] })]), rule()])],
    facts: conn(), expected: allowedBy('prod/allow', 1),
  },
  {
    name: 'the DENY names its third rule when only that one matches (a port rule)',
    policies: [deny([rule([src({ namespaces: ['evil'] })]), rule([], [op([9090])]), rule([], [op([8080])])])],
    facts: conn(), expected: deniedBy('prod/deny', 2),
  },
  {
    name: 'a DENY decides with its rule even when an ALLOW rule matches too',
    policies: [allow([rule()]), deny([rule([src({ namespaces: ['evil'] })]), rule([src({ principals: ['*/sa/web'] })])])],
    facts: conn(), expected: deniedBy('prod/deny', 1),
  },

  // principals / notPrincipals
  { name: 'principals exact match', policies: allowFrom({ principals: ['cluster.local/ns/default/sa/web'] }), facts: conn(), expected: ALLOWED },
  { name: 'principals exact mismatch', policies: allowFrom({ principals: ['cluster.local/ns/default/sa/db'] }), facts: conn(), expected: NO_MATCH },
  { name: 'principals of another trust domain do not match', policies: allowFrom({ principals: ['other.td/ns/default/sa/web'] }), facts: conn(), expected: NO_MATCH },
  { name: 'principals: any one of the list matches', policies: allowFrom({ principals: ['cluster.local/ns/x/sa/y', 'cluster.local/ns/default/sa/web'] }), facts: conn(), expected: ALLOWED },
  { name: 'principals given with the spiffe:// scheme still match', policies: allowFrom({ principals: ['spiffe://cluster.local/ns/default/sa/web'] }), facts: conn(), expected: ALLOWED },
  { name: 'principals prefix wildcard match', policies: allowFrom({ principals: ['cluster.local/ns/default/*'] }), facts: conn(), expected: ALLOWED },
  { name: 'principals prefix wildcard mismatch', policies: allowFrom({ principals: ['cluster.local/ns/other/*'] }), facts: conn(), expected: NO_MATCH },
  { name: 'principals suffix wildcard match', policies: allowFrom({ principals: ['*/sa/web'] }), facts: conn(), expected: ALLOWED },
  { name: 'principals suffix wildcard mismatch', policies: allowFrom({ principals: ['*/sa/db'] }), facts: conn(), expected: NO_MATCH },
  { name: 'principals "*" matches any authenticated peer', policies: allowFrom({ principals: ['*'] }), facts: conn(), expected: ALLOWED },
  { name: 'a "*" in the middle is literal', policies: allowFrom({ principals: ['cluster.local/ns/*/sa/web'] }), facts: conn(), expected: NO_MATCH },
  { name: 'notPrincipals naming the peer denies', policies: allowFrom({ notPrincipals: ['cluster.local/ns/default/sa/web'] }), facts: conn(), expected: NO_MATCH },
  { name: 'notPrincipals naming others allows', policies: allowFrom({ notPrincipals: ['cluster.local/ns/default/sa/db'] }), facts: conn(), expected: ALLOWED },
  { name: 'notPrincipals wildcard covering the peer denies', policies: allowFrom({ notPrincipals: ['cluster.local/ns/default/*'] }), facts: conn(), expected: NO_MATCH },

  // namespaces / notNamespaces
  { name: 'namespaces match', policies: allowFrom({ namespaces: ['default'] }), facts: conn(), expected: ALLOWED },
  { name: 'namespaces mismatch', policies: allowFrom({ namespaces: ['other'] }), facts: conn(), expected: NO_MATCH },
  { name: 'namespaces prefix wildcard', policies: allowFrom({ namespaces: ['def*'] }), facts: conn(), expected: ALLOWED },
  { name: 'namespaces suffix wildcard', policies: allowFrom({ namespaces: ['*ult'] }), facts: conn(), expected: ALLOWED },
  { name: 'namespaces wildcard mismatch', policies: allowFrom({ namespaces: ['prod*'] }), facts: conn(), expected: NO_MATCH },
  { name: 'notNamespaces naming the peer denies', policies: allowFrom({ notNamespaces: ['default'] }), facts: conn(), expected: NO_MATCH },
  { name: 'notNamespaces naming others allows', policies: allowFrom({ notNamespaces: ['other'] }), facts: conn(), expected: ALLOWED },

  // serviceAccounts / notServiceAccounts
  { name: 'serviceAccounts match', policies: allowFrom({ serviceAccounts: ['default/web'] }), facts: conn(), expected: ALLOWED },
  { name: 'serviceAccounts other account', policies: allowFrom({ serviceAccounts: ['default/db'] }), facts: conn(), expected: NO_MATCH },
  { name: 'serviceAccounts same name, other namespace', policies: allowFrom({ serviceAccounts: ['other/web'] }), facts: conn(), expected: NO_MATCH },
  { name: 'notServiceAccounts naming the peer denies', policies: allowFrom({ notServiceAccounts: ['default/web'] }), facts: conn(), expected: NO_MATCH },
  { name: 'notServiceAccounts naming others allows', policies: allowFrom({ notServiceAccounts: ['other/web'] }), facts: conn(), expected: ALLOWED },

  // ipBlocks / notIpBlocks
  { name: 'ipBlocks IPv4 CIDR match', policies: allowFrom({ ipBlocks: ['10.0.0.0/8'] }), facts: conn(), expected: ALLOWED },
  { name: 'ipBlocks IPv4 CIDR mismatch', policies: allowFrom({ ipBlocks: ['192.168.0.0/16'] }), facts: conn(), expected: NO_MATCH },
  { name: 'ipBlocks any one of the list', policies: allowFrom({ ipBlocks: ['192.168.0.0/16', '10.0.0.0/24'] }), facts: conn(), expected: ALLOWED },
  { name: 'ipBlocks single IP match', policies: allowFrom({ ipBlocks: ['10.0.0.5'] }), facts: conn(), expected: ALLOWED },
  { name: 'ipBlocks single IP mismatch', policies: allowFrom({ ipBlocks: ['10.0.0.6'] }), facts: conn(), expected: NO_MATCH },
  { name: 'ipBlocks CIDR boundary', policies: allowFrom({ ipBlocks: ['10.0.0.4/31'] }), facts: conn({ sourceAddress: '10.0.0.6' }), expected: NO_MATCH },
  { name: 'notIpBlocks covering the source denies', policies: allowFrom({ notIpBlocks: ['10.0.0.0/8'] }), facts: conn(), expected: NO_MATCH },
  { name: 'notIpBlocks not covering the source allows', policies: allowFrom({ notIpBlocks: ['192.168.0.0/16'] }), facts: conn(), expected: ALLOWED },
  { name: 'ipBlocks IPv6 CIDR match', policies: allowFrom({ ipBlocks: ['2001:db8::/32'] }), facts: conn({ sourceAddress: '2001:db8::5' }), expected: ALLOWED },
  { name: 'ipBlocks IPv6 CIDR mismatch', policies: allowFrom({ ipBlocks: ['2001:db8::/32'] }), facts: conn({ sourceAddress: '2001:db9::5' }), expected: NO_MATCH },
  { name: 'ipBlocks IPv6 single address', policies: allowFrom({ ipBlocks: ['2001:db8::5'] }), facts: conn({ sourceAddress: '2001:db8::5' }), expected: ALLOWED },
  { name: 'IPv6 source does not match an IPv4 block', policies: allowFrom({ ipBlocks: ['0.0.0.0/0'] }), facts: conn({ sourceAddress: '2001:db8::5' }), expected: NO_MATCH },
  { name: 'IPv4 source does not match an IPv6 block', policies: allowFrom({ ipBlocks: ['2001:db8::/32'] }), facts: conn(), expected: NO_MATCH },
  { name: 'mapped IPv6 (dotted) source matches an IPv4 block', policies: allowFrom({ ipBlocks: ['10.0.0.0/8'] }), facts: conn({ sourceAddress: '::ffff:10.0.0.5' }), expected: ALLOWED },
  { name: 'mapped IPv6 (upper case) source matches an IPv4 block', policies: allowFrom({ ipBlocks: ['10.0.0.5'] }), facts: conn({ sourceAddress: '::FFFF:10.0.0.5' }), expected: ALLOWED },
  { name: 'mapped IPv6 (hex) source matches an IPv4 block', policies: allowFrom({ ipBlocks: ['10.0.0.0/8'] }), facts: conn({ sourceAddress: '::ffff:a00:5' }), expected: ALLOWED },
  { name: 'mapped IPv6 source outside an IPv4 block', policies: allowFrom({ ipBlocks: ['192.168.0.0/16'] }), facts: conn({ sourceAddress: '::ffff:10.0.0.5' }), expected: NO_MATCH },
  { name: 'mapped IPv6 source caught by IPv4 notIpBlocks', policies: allowFrom({ notIpBlocks: ['10.0.0.0/8'] }), facts: conn({ sourceAddress: '::ffff:10.0.0.5' }), expected: NO_MATCH },
  { name: 'mapped IPv6 source caught by an IPv4 DENY', policies: denyFrom({ ipBlocks: ['10.0.0.5'] }), facts: conn({ sourceAddress: '::ffff:10.0.0.5' }), expected: DENIED },
  { name: 'unparseable source address fails an ALLOW notIpBlocks', policies: allowFrom({ notIpBlocks: ['10.0.0.0/8'] }), facts: conn({ sourceAddress: 'garbage' }), expected: NO_MATCH },
  { name: 'unparseable source address is caught by a DENY ipBlocks', policies: denyFrom({ ipBlocks: ['10.0.0.0/8'] }), facts: conn({ sourceAddress: 'garbage' }), expected: DENIED },

  // ports / notPorts
  { name: 'ports match', policies: [allow([rule([], [op([8080])])])], facts: conn(), expected: ALLOWED },
  { name: 'ports mismatch', policies: [allow([rule([], [op([9090])])])], facts: conn(), expected: NO_MATCH },
  { name: 'ports any one of the list', policies: [allow([rule([], [op([9090, 8080])])])], facts: conn(), expected: ALLOWED },
  { name: 'notPorts naming the port denies', policies: [allow([rule([], [op([], [8080])])])], facts: conn(), expected: NO_MATCH },
  { name: 'notPorts naming others allows', policies: [allow([rule([], [op([], [9090])])])], facts: conn(), expected: ALLOWED },
  { name: 'ports AND notPorts in one operation', policies: [allow([rule([], [op([8080, 9090], [8080])])])], facts: conn(), expected: NO_MATCH },
  { name: 'operations are ORed', policies: [allow([rule([], [op([9090]), op([8080])])])], facts: conn(), expected: ALLOWED },
  { name: 'DENY on a port denies that port', policies: [deny([rule([], [op([8080])])])], facts: conn(), expected: DENIED },
  { name: 'DENY on a port spares other ports', policies: [deny([rule([], [op([8080])])])], facts: conn({ destinationPort: 9090 }), expected: NO_POLICIES },

  // AND / OR structure
  { name: 'fields of one source are ANDed (one fails)', policies: allowFrom({ principals: ['*'], namespaces: ['other'] }), facts: conn(), expected: NO_MATCH },
  { name: 'fields of one source are ANDed (all match)', policies: allowFrom({ principals: ['*'], namespaces: ['default'], ipBlocks: ['10.0.0.0/8'] }), facts: conn(), expected: ALLOWED },
  { name: 'identity matches but ipBlocks do not', policies: allowFrom({ principals: ['*'], ipBlocks: ['192.168.0.0/16'] }), facts: conn(), expected: NO_MATCH },
  { name: 'sources of one rule are ORed', policies: [allow([rule([src({ namespaces: ['other'] }), src({ ipBlocks: ['10.0.0.0/8'] })])])], facts: conn(), expected: ALLOWED },
  { name: 'rule needs from AND to (to fails)', policies: [allow([rule([src({ namespaces: ['default'] })], [op([9090])])])], facts: conn(), expected: NO_MATCH },
  { name: 'rule needs from AND to (from fails)', policies: [allow([rule([src({ namespaces: ['other'] })], [op([8080])])])], facts: conn(), expected: NO_MATCH },
  { name: 'rule with from AND to both matching', policies: [allow([rule([src({ namespaces: ['default'] })], [op([8080])])])], facts: conn(), expected: ALLOWED },
  { name: 'rules are ORed', policies: [allow([rule([src({ namespaces: ['other'] })]), rule([], [op([8080])])])], facts: conn(), expected: allowedBy('prod/allow', 1) },
  { name: 'DENY fields are ANDed too', policies: denyFrom({ namespaces: ['default'], ipBlocks: ['192.168.0.0/16'] }), facts: conn(), expected: NO_POLICIES },

  // Scope: which policies apply to the destination.
  { name: 'namespace policy without selector applies', policies: [allow([], { namespace: 'prod' })], facts: conn(), expected: NO_MATCH },
  { name: 'policy of another namespace does not apply', policies: [allow([], { namespace: 'staging' })], facts: conn(), expected: NO_POLICIES },
  { name: 'DENY of another namespace does not apply', policies: [deny([rule()], { namespace: 'staging' })], facts: conn(), expected: NO_POLICIES },
  { name: 'matching selector applies', policies: [allow([], { selector: { app: 'api' } })], facts: conn(), expected: NO_MATCH },
  { name: 'selector needs every label', policies: [allow([], { selector: { app: 'api', tier: 'frontend' } })], facts: conn(), expected: NO_POLICIES },
  { name: 'selector with every label matching applies', policies: [allow([], { selector: { app: 'api', tier: 'backend' } })], facts: conn(), expected: NO_MATCH },
  { name: 'non-matching selector does not apply', policies: [allow([], { selector: { app: 'web' } })], facts: conn(), expected: NO_POLICIES },
  { name: 'selector on a label the workload lacks does not apply', policies: [allow([], { selector: { version: 'v1' } })], facts: conn(), expected: NO_POLICIES },
  { name: 'empty selector matches every workload in scope', policies: [allow([], { selector: {} })], facts: conn(), expected: NO_MATCH },
  { name: 'selector in another namespace does not apply', policies: [allow([], { namespace: 'staging', selector: { app: 'api' } })], facts: conn(), expected: NO_POLICIES },
  { name: 'mesh-wide policy applies in every namespace', policies: [allow([], { namespace: MESH_NAMESPACE })], facts: conn(), expected: NO_MATCH },
  { name: 'mesh-wide selector applies across namespaces', policies: [deny([rule()], { namespace: MESH_NAMESPACE, name: 'd', selector: { app: 'api' } })], facts: conn(), expected: deniedBy(`${MESH_NAMESPACE}/d`) },
  { name: 'mesh-wide non-matching selector does not apply', policies: [deny([rule()], { namespace: MESH_NAMESPACE, selector: { app: 'web' } })], facts: conn(), expected: NO_POLICIES },
  {
    name: 'mesh-wide DENY beats a namespace ALLOW',
    policies: [allow([rule()]), deny([rule([src({ namespaces: ['default'] })])], { namespace: MESH_NAMESPACE, name: 'block-default' })],
    facts: conn(), expected: deniedBy(`${MESH_NAMESPACE}/block-default`),
  },
  {
    name: 'mesh-wide ALLOW satisfies the ALLOW requirement of a namespace',
    policies: [allow([], { name: 'nothing' }), allow([rule()], { namespace: MESH_NAMESPACE, name: 'everything' })],
    facts: conn(), expected: allowedBy(`${MESH_NAMESPACE}/everything`),
  },
  {
    name: 'mesh namespace workload gets the mesh namespace policies',
    policies: [allow([], { namespace: MESH_NAMESPACE })],
    facts: conn({ destination: workload('gw', MESH_NAMESPACE) }), expected: NO_MATCH,
  },
  {
    name: 'a namespace policy does not reach workloads of other namespaces',
    policies: [deny([rule()])],
    facts: conn({ destination: workload('api', 'staging', { app: 'api', tier: 'backend' }) }), expected: NO_POLICIES,
  },

  // Plaintext (permissive mode): identity fields fail closed.
  { name: 'plaintext, empty ALLOW rule allows', policies: [allow([rule()])], facts: plain(), expected: ALLOWED },
  { name: 'plaintext, ALLOW ipBlocks still matches', policies: allowFrom({ ipBlocks: ['10.0.0.0/8'] }), facts: plain(), expected: ALLOWED },
  { name: 'plaintext, ALLOW principals "*" does not match', policies: allowFrom({ principals: ['*'] }), facts: plain(), expected: NO_MATCH },
  { name: 'plaintext, ALLOW notPrincipals does not match', policies: allowFrom({ notPrincipals: ['cluster.local/ns/evil/sa/x'] }), facts: plain(), expected: NO_MATCH },
  { name: 'plaintext, ALLOW namespaces does not match', policies: allowFrom({ namespaces: ['*'] }), facts: plain(), expected: NO_MATCH },
  { name: 'plaintext, ALLOW notNamespaces does not match', policies: allowFrom({ notNamespaces: ['evil'] }), facts: plain(), expected: NO_MATCH },
  { name: 'plaintext, ALLOW serviceAccounts does not match', policies: allowFrom({ serviceAccounts: ['default/web'] }), facts: plain(), expected: NO_MATCH },
  { name: 'plaintext, ALLOW notServiceAccounts does not match', policies: allowFrom({ notServiceAccounts: ['evil/x'] }), facts: plain(), expected: NO_MATCH },
  { name: 'plaintext, ALLOW ipBlocks with notPrincipals does not match', policies: allowFrom({ ipBlocks: ['10.0.0.0/8'], notPrincipals: ['x/ns/y/sa/z'] }), facts: plain(), expected: NO_MATCH },
  { name: 'plaintext, DENY principals "*" denies', policies: denyFrom({ principals: ['*'] }), facts: plain(), expected: DENIED },
  { name: 'plaintext, DENY principals naming someone denies', policies: denyFrom({ principals: ['cluster.local/ns/evil/sa/x'] }), facts: plain(), expected: DENIED },
  { name: 'plaintext, DENY notPrincipals denies', policies: denyFrom({ notPrincipals: ['cluster.local/ns/default/sa/web'] }), facts: plain(), expected: DENIED },
  { name: 'plaintext, DENY namespaces denies', policies: denyFrom({ namespaces: ['evil'] }), facts: plain(), expected: DENIED },
  { name: 'plaintext, DENY notNamespaces denies', policies: denyFrom({ notNamespaces: ['default'] }), facts: plain(), expected: DENIED },
  { name: 'plaintext, DENY serviceAccounts denies', policies: denyFrom({ serviceAccounts: ['evil/x'] }), facts: plain(), expected: DENIED },
  { name: 'plaintext, DENY notServiceAccounts denies', policies: denyFrom({ notServiceAccounts: ['default/web'] }), facts: plain(), expected: DENIED },
  { name: 'plaintext, DENY identity field still needs its ipBlocks', policies: denyFrom({ principals: ['*'], ipBlocks: ['192.168.0.0/16'] }), facts: plain(), expected: NO_POLICIES },
  { name: 'plaintext, DENY identity field with matching ipBlocks denies', policies: denyFrom({ principals: ['*'], ipBlocks: ['10.0.0.0/8'] }), facts: plain(), expected: DENIED },
  { name: 'plaintext, DENY on port still needs the port', policies: [deny([rule([src({ principals: ['*'] })], [op([9090])])])], facts: plain(), expected: NO_POLICIES },
  { name: 'mTLS, DENY principals "*" denies', policies: denyFrom({ principals: ['*'] }), facts: conn(), expected: DENIED },
  { name: 'mTLS, DENY notPrincipals naming the peer spares it', policies: denyFrom({ notPrincipals: ['cluster.local/ns/default/sa/web'] }), facts: conn(), expected: NO_POLICIES },
  { name: 'mTLS, DENY namespaces of others spares the peer', policies: denyFrom({ namespaces: ['evil'] }), facts: conn(), expected: NO_POLICIES },

  // Non-workload identities: a principal, but no namespace or service account.
  { name: 'node identity matches its principal', policies: allowFrom({ principals: ['cluster.local/ambit/node/n1'] }), facts: conn({ sourceIdentity: NODE }), expected: ALLOWED },
  { name: 'node identity matches principals "*"', policies: allowFrom({ principals: ['*'] }), facts: conn({ sourceIdentity: NODE }), expected: ALLOWED },
  { name: 'node identity does not match workload principals', policies: allowFrom({ principals: ['cluster.local/ns/*'] }), facts: conn({ sourceIdentity: NODE }), expected: NO_MATCH },
  { name: 'node identity fails ALLOW namespaces "*"', policies: allowFrom({ namespaces: ['*'] }), facts: conn({ sourceIdentity: NODE }), expected: NO_MATCH },
  { name: 'node identity fails ALLOW notServiceAccounts', policies: allowFrom({ notServiceAccounts: ['evil/x'] }), facts: conn({ sourceIdentity: NODE }), expected: NO_MATCH },
  { name: 'node identity is caught by DENY notNamespaces', policies: denyFrom({ notNamespaces: ['default'] }), facts: conn({ sourceIdentity: NODE }), expected: DENIED },
];

for (const c of cases) {
  t.test(c.name, async (t) => {
    t.strictSame(new Authorizer(c.policies).evaluate(c.facts), c.expected);
  });
}

// ------------------------------------------------------------ other behaviour

t.test('applicable lists mesh-wide policies first, then the namespace, each by name', async (t) => {
  const policies = [
    allow([], { name: 'b' }),
    deny([], { name: 'a' }),
    allow([], { namespace: MESH_NAMESPACE, name: 'z' }),
    allow([], { namespace: MESH_NAMESPACE, name: 'other-app', selector: { app: 'web' } }),
    allow([], { namespace: 'staging', name: 'c' }),
    allow([], { name: 'not-me', selector: { app: 'db' } }),
  ];
  const names = new Authorizer(policies).applicable(API).map((p) => `${p.metadata.namespace}/${p.metadata.name}`);
  t.strictSame(names, [`${MESH_NAMESPACE}/z`, 'prod/a', 'prod/b']);
});

t.test('a workload in the mesh namespace sees each policy once', async (t) => {
  const a = new Authorizer([allow([], { namespace: MESH_NAMESPACE, name: 'x' })]);
  t.equal(a.applicable(workload('gw', MESH_NAMESPACE)).length, 1);
});

t.test('a relabelled workload (a new object) is re-scoped', async (t) => {
  const a = new Authorizer([deny([rule()], { selector: { app: 'api' } })]);
  t.equal(a.evaluate(conn()).allowed, false);
  t.equal(a.applicable(API).length, 1);
  const relabelled = workload('api', 'prod', { app: 'api-v2' });
  t.strictSame(a.evaluate(conn({ destination: relabelled })), NO_POLICIES);
  t.equal(a.applicable(relabelled).length, 0);
  // The earlier object still gets its own (cached) answer.
  t.equal(a.evaluate(conn()).allowed, false);
});

t.test('repeated evaluation gives the same answer', async (t) => {
  const a = new Authorizer(allowFrom({ namespaces: ['default'] }));
  for (let i = 0; i < 3; i++) {
    t.strictSame(a.evaluate(conn()), ALLOWED);
    t.strictSame(a.evaluate(conn({ sourceIdentity: workloadId('cluster.local', 'other', 'web') })), NO_MATCH);
  }
});

t.test('decisions are frozen', async (t) => {
  t.ok(Object.isFrozen(new Authorizer([]).evaluate(conn())));
  t.ok(Object.isFrozen(new Authorizer([deny([rule()])]).evaluate(conn())));
});

t.test('a denial is counted and logged under the deciding policy, or NO_ALLOW_MATCHED when no ALLOW matched', async (t) => {
  t.equal(deniedByLabel(new Authorizer([deny([rule()], { name: 'no-web' })]).evaluate(conn())), 'prod/no-web');
  t.equal(deniedByLabel(new Authorizer([allow([rule([src({ namespaces: ['other'] })])])]).evaluate(conn())), NO_ALLOW_MATCHED);
  t.equal(NO_ALLOW_MATCHED, '(no ALLOW matched)');
  t.notOk(NO_ALLOW_MATCHED.includes('/'), 'never a "<namespace>/<name>"');
});

function compileError(policies: AuthorizationPolicy[]): unknown {
  try {
    new Authorizer(policies);
  } catch (err) {
    return err;
  }
  return undefined;
}

t.test('an uncompilable policy is rejected with the field named', async (t) => {
  const bad: [string, Partial<PolicySource>, string][] = [
    ['not an IP', { ipBlocks: ['nope'] }, 'ipBlocks[0]'],
    ['IPv4 prefix too long', { ipBlocks: ['10.0.0.0/8', '10.0.0.0/33'] }, 'ipBlocks[1]'],
    ['IPv6 prefix too long', { notIpBlocks: ['2001:db8::/129'] }, 'notIpBlocks[0]'],
    ['prefix not a number', { ipBlocks: ['10.0.0.0/x'] }, 'ipBlocks[0]'],
    ['empty prefix', { ipBlocks: ['10.0.0.0/'] }, 'ipBlocks[0]'],
  ];
  for (const [what, fields, field] of bad) {
    const err = compileError([allow([rule([src({ namespaces: ['x'] }), src(fields)])], { name: 'p' })]);
    t.ok(isAmbitError(err, 'AMBIT_ERR_RESOURCE_INVALID'), `${what}: error code`);
    if (isAmbitError(err)) {
      t.strictSame(err.details, { policy: 'prod/p', field: `spec.rules[0].from[1].${field}`, value: fields.ipBlocks?.at(-1) ?? fields.notIpBlocks?.[0] }, what);
    }
  }
  const err = compileError([{ ...allow([]), spec: { action: 'AUDIT' as 'ALLOW', rules: [] } }]);
  t.ok(isAmbitError(err, 'AMBIT_ERR_RESOURCE_INVALID') && err.details['field'] === 'spec.action', 'unknown action');
});

// ------------------------------------------------------------------ HTTP operation fields

t.test('HTTP conditions narrow what a connection may do on HTTP ports and fail closed elsewhere', async (t) => {
  const post = (extra: Partial<PolicyOperation> = {}): PolicyOperation => ({ ports: [], notPorts: [], methods: ['POST'], paths: ['/admin/*'], ...extra });
  const fromWeb = [src({ principals: ['cluster.local/ns/default/sa/web'] })];
  const http = conn({ httpPort: true });
  const tcp = conn({ httpPort: false });

  t.test('DENY with HTTP conditions: an HTTP connection opens and its matching requests are denied; a TCP one is denied', async (t) => {
    const a = new Authorizer([deny([rule(fromWeb, [post()])])]);
    t.same(a.evaluate(http), NO_POLICIES, 'the connection is not denied: only some requests are');
    t.same(a.requestPolicy(http), {
      deny: [{ name: 'prod/deny', operations: [{ methods: [{ kind: 'exact', value: 'POST' }], notMethods: [], paths: [{ kind: 'prefix', value: '/admin/' }], notPaths: [], hosts: [], notHosts: [] }] }],
      allow: [], allowRequired: false,
    });
    t.same(a.evaluate(tcp), DENIED, 'on a TCP port the DENY cannot be checked per request, so it denies the connection');
    t.same(a.requestPolicy(conn({ httpPort: true, sourceIdentity: workloadId('cluster.local', 'default', 'other') })).deny, [], 'a peer the rule does not name leaves nothing to check');
  });

  t.test('ALLOW with HTTP conditions: the connection opens, each request must match', async (t) => {
    const a = new Authorizer([allow([rule(fromWeb, [post()])])]);
    t.same(a.evaluate(http), ALLOWED);
    const rp = a.requestPolicy(http);
    t.equal(rp.allowRequired, true);
    t.equal(rp.allow.length, 1);
    t.same(a.evaluate(tcp), NO_MATCH, 'on a TCP port the ALLOW never matches');
    t.same(a.evaluate(conn({ httpPort: true, sourceIdentity: workloadId('cluster.local', 'default', 'other') })), NO_MATCH, 'L7 rules never widen: another peer is still denied the connection');
  });

  t.test('an ALLOW matching the whole connection leaves no request requirement; DENYs still apply', async (t) => {
    const a = new Authorizer([allow([rule(fromWeb)], { name: 'a-all' }), allow([rule([], [post()])], { name: 'b-some' }), deny([rule([], [post({ methods: ['DELETE'] })])])]);
    const rp = a.requestPolicy(http);
    t.equal(rp.allowRequired, false);
    t.same(rp.allow, []);
    t.same(rp.deny.map((p) => p.name), ['prod/deny']);
  });

  t.test('ports still narrow an HTTP operation', async (t) => {
    const a = new Authorizer([deny([rule([], [post({ ports: [9090] })])])]);
    t.same(a.requestPolicy(http).deny, [], 'port 8080 is not 9090: nothing to deny');
    t.same(a.requestPolicy(conn({ httpPort: true, destinationPort: 9090 })).deny.map((p) => p.name), ['prod/deny']);
  });

  t.test('no policies: nothing to check per request', async (t) => {
    t.same(new Authorizer([]).requestPolicy(http), { deny: [], allow: [], allowRequired: false });
  });
});
