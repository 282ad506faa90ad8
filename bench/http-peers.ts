// The HTTP comparison peers of bench/http.ts: an nginx pair and an haproxy
// pair of HTTP reverse proxies, each a client-side proxy (plain HTTP in,
// HTTP over TLS 1.3 with a client certificate out, upstream connections
// kept alive) and a server-side proxy (TLS in, verifies the client
// certificate, HTTP to the server over kept-alive connections). One
// process and one worker or thread per side, as each agent is one.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, startPair, type Children, type PairAddresses, type PeerCerts, type ProxyPair } from './dataplane-peers.ts';

export async function startNginxHttp(children: Children, nginx: string, dir: string, certs: PeerCerts, a: PairAddresses): Promise<ProxyPair> {
  const entry = { host: a.clientSide, port: await freePort(a.clientSide) };
  const tls = { host: a.serverSide, port: await freePort(a.serverSide) };
  const conf = (side: 'client' | 'server', upstream: string, server: string[]): string => [
    'daemon off;',
    'master_process off;',
    'worker_processes 1;',
    `pid ${join(dir, `nginx-http-${side}.pid`)};`,
    'error_log stderr error;',
    'events { worker_connections 8192; }',
    'http {',
    '  access_log off;',
    `  client_body_temp_path ${join(dir, `nginx-http-${side}-body`)};`,
    `  proxy_temp_path ${join(dir, `nginx-http-${side}-proxy`)};`,
    '  keepalive_requests 100000;',
    `  upstream up { server ${upstream}; keepalive 64; keepalive_requests 100000; }`,
    '  server {',
    ...server.map((l) => `    ${l}`),
    '    location / {',
    '      proxy_http_version 1.1;',
    '      proxy_set_header Connection "";',
    '      proxy_set_header Host $host;',
    ...(side === 'client' ? [
      '      proxy_pass https://up;',
      '      proxy_ssl_protocols TLSv1.3;',
      `      proxy_ssl_certificate ${certs.clientCert};`,
      `      proxy_ssl_certificate_key ${certs.clientKey};`,
      `      proxy_ssl_trusted_certificate ${certs.ca};`,
      '      proxy_ssl_verify on;',
      `      proxy_ssl_name ${certs.serverName};`,
      '      proxy_ssl_server_name on;',
      '      proxy_ssl_session_reuse on;',
    ] : ['      proxy_pass http://up;']),
    '    }',
    '  }',
    '}',
    '',
  ].join('\n');
  writeFileSync(join(dir, 'nginx-http-server.conf'), conf('server', `${a.upstream.host}:${a.upstream.port}`, [
    `listen ${tls.host}:${tls.port} ssl backlog=1024;`,
    'ssl_protocols TLSv1.3;',
    `ssl_certificate ${certs.serverCert};`,
    `ssl_certificate_key ${certs.serverKey};`,
    `ssl_client_certificate ${certs.ca};`,
    'ssl_verify_client on;',
  ]));
  writeFileSync(join(dir, 'nginx-http-client.conf'), conf('client', `${tls.host}:${tls.port}`, [`listen ${entry.host}:${entry.port} backlog=1024;`]));
  return startPair('nginx', (side) => children.spawn(nginx, ['-p', dir, '-e', 'stderr', '-c', join(dir, `nginx-http-${side}.conf`)], { cwd: dir }), entry, tls);
}

export async function startHaproxyHttp(children: Children, haproxy: string, dir: string, certs: PeerCerts, a: PairAddresses): Promise<ProxyPair> {
  const entry = { host: a.clientSide, port: await freePort(a.clientSide) };
  const tls = { host: a.serverSide, port: await freePort(a.serverSide) };
  const combined = (cert: string, key: string, name: string): string => {
    const path = join(dir, `haproxy-http-${name}.pem`);
    writeFileSync(path, readFileSync(cert, 'utf8') + readFileSync(key, 'utf8'), { mode: 0o600 });
    return path;
  };
  const conf = (frontend: string[], backend: string[]): string => [
    'global',
    '  nbthread 1',
    '  maxconn 8192',
    '  log stderr format raw local0 err',
    'defaults',
    '  mode http',
    '  log global',
    '  option http-keep-alive',
    '  http-reuse always',
    '  timeout connect 5s',
    '  timeout client 120s',
    '  timeout server 120s',
    '  timeout http-keep-alive 60s',
    'frontend in',
    ...frontend.map((l) => `  ${l}`),
    '  default_backend out',
    'backend out',
    ...backend.map((l) => `  ${l}`),
    '',
  ].join('\n');
  writeFileSync(join(dir, 'haproxy-http-server.cfg'), conf(
    [`bind ${tls.host}:${tls.port} ssl crt ${combined(certs.serverCert, certs.serverKey, 'server')} ca-file ${certs.ca} verify required ssl-min-ver TLSv1.3`],
    [`server up ${a.upstream.host}:${a.upstream.port}`],
  ));
  writeFileSync(join(dir, 'haproxy-http-client.cfg'), conf(
    [`bind ${entry.host}:${entry.port}`],
    [`server tls ${tls.host}:${tls.port} ssl crt ${combined(certs.clientCert, certs.clientKey, 'client')} ca-file ${certs.ca} verify required verifyhost ${certs.serverName} sni str(${certs.serverName}) ssl-min-ver TLSv1.3`],
  ));
  return startPair('haproxy', (side) => children.spawn(haproxy, ['-db', '-f', join(dir, `haproxy-http-${side}.cfg`)], { cwd: dir }), entry, tls);
}
