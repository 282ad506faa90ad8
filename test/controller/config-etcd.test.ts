import t from 'tap';
import { parseControllerConfig, parseEtcdEndpoints } from '../../controller/config.ts';

const base = ['--data-dir', 'd', '--store', 'etcd', '--ca-cert', 'ca.pem', '--ca-key', 'ca-key.pem'];
const parse = (argv: string[], env: Record<string, string> = {}) => parseControllerConfig({ argv, env }, () => 1024);

t.test('--store etcd: endpoints, TLS files and prefix', async (t) => {
  const cfg = parse([...base, '--etcd-endpoints', 'https://10.0.0.1:2379,10.0.0.2:2379', '--etcd-ca', 'e.pem', '--etcd-cert', 'c.pem', '--etcd-key', 'k.pem']);
  t.equal(cfg.etcdPrefix, '/ambit/', 'the prefix defaults to /ambit/');
  t.same(parseEtcdEndpoints(cfg.etcdEndpoints!, true), ['https://10.0.0.1:2379', 'https://10.0.0.2:2379'], 'host:port takes https with --etcd-ca');
  t.same(parseEtcdEndpoints('127.0.0.1:2379, http://[::1]:2379', false), ['http://127.0.0.1:2379', 'http://[::1]:2379'], 'and http without');
  t.equal(parse([...base, '--etcd-endpoints', 'x:2379'], { AMBIT_ETCD_PREFIX: '/mesh-a/' }).etcdPrefix, '/mesh-a/');
});

t.test('--store etcd: what is missing or contradictory is named', async (t) => {
  const cases: [string[], RegExp][] = [
    [[...base], /--store etcd needs --etcd-endpoints/],
    [['--data-dir', 'd', '--store', 'etcd', '--etcd-endpoints', 'x:2379'], /--store etcd needs --ca-cert and --ca-key: every replica signs with the same CA/],
    [[...base, '--etcd-endpoints', 'https://x:2379'], /"https:\/\/x:2379": https needs --etcd-ca/],
    [[...base, '--etcd-endpoints', 'http://x:2379', '--etcd-ca', 'e.pem'], /"http:\/\/x:2379": http while --etcd-ca turns TLS on/],
    [[...base, '--etcd-endpoints', 'x:2379', '--etcd-ca', 'e.pem', '--etcd-cert', 'c.pem'], /--etcd-cert and --etcd-key must be given together/],
    [[...base, '--etcd-endpoints', 'x:2379', '--etcd-cert', 'c.pem', '--etcd-key', 'k.pem'], /--etcd-cert needs --etcd-ca/],
    [[...base, '--etcd-endpoints', 'x:0'], /port must be 1-65535/],
    [[...base, '--etcd-endpoints', 'bad host:2379'], /host must be a DNS name or an IP address/],
    [[...base, '--etcd-endpoints', 'x:2379', '--etcd-prefix', 'no spaces'], /--etcd-prefix/],
  ];
  for (const [argv, message] of cases) t.throws(() => parse(argv), { code: 'AMBIT_ERR_CONFIG_INVALID', message }, argv.slice(6).join(' ') || 'no endpoints');
  t.doesNotThrow(() => parse(['--data-dir', 'd', '--etcd-endpoints', 'x:2379']), 'etcd flags are ignored by the other stores');
});

t.test('--kubernetes-join: TokenReview for a store that is not Kubernetes; --kubeconfig without it is named, not ignored', async (t) => {
  const cfg = parse([...base, '--etcd-endpoints', 'x:2379', '--kubernetes-join', '--kubeconfig', 'kc.yaml']);
  t.equal(cfg.kubernetesJoin, true);
  t.equal(cfg.kubeconfig, 'kc.yaml');
  t.equal(parse([...base, '--etcd-endpoints', 'x:2379'], { AMBIT_KUBERNETES_JOIN: 'true' }).kubernetesJoin, true, 'also from its variable');
  t.equal(parse(['--data-dir', 'd']).kubernetesJoin, false, 'off by default');
  t.throws(() => parse([...base, '--etcd-endpoints', 'x:2379', '--kubeconfig', 'kc.yaml']), { code: 'AMBIT_ERR_CONFIG_INVALID', message: /--kubeconfig is used by --store kubernetes or --kubernetes-join; --store etcd without --kubernetes-join/ });
  t.throws(() => parse(['--data-dir', 'd', '--kubeconfig', 'kc.yaml']), { code: 'AMBIT_ERR_CONFIG_INVALID', message: /--store sqlite without --kubernetes-join/ });
  t.doesNotThrow(() => parse(['--data-dir', 'd', '--store', 'kubernetes', '--kubeconfig', 'kc.yaml']), 'the Kubernetes store uses it');
});
