//! TLS for inbound HBONE: TLS 1.3 only, ALPN h2, a client certificate that
//! chains to the trust bundle (checked here, at the handshake), and the
//! certificate of the identity the client names by SNI. The SPIFFE checks of
//! the client's identity (trust domain, workload kind, expiry) are the
//! agent's: it receives the verified chain once per session.
use std::collections::HashMap;
use std::io::BufReader;
use std::sync::Arc;

use rustls::server::{AllowAnyAuthenticatedClient, ClientHello, ResolvesServerCert};
use rustls::sign::{any_supported_type, CertifiedKey};
use rustls::{Certificate, PrivateKey, RootCertStore, ServerConfig};
use serde_json::json;

use crate::control::{IdentityIn, Outbox};

fn pem_certs(what: &str, pem: &str) -> Result<Vec<Certificate>, String> {
    let certs = rustls_pemfile::certs(&mut BufReader::new(pem.as_bytes())).map_err(|e| format!("{what}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no PEM certificate"));
    }
    Ok(certs.into_iter().map(Certificate).collect())
}

fn pem_key(what: &str, pem: &str) -> Result<PrivateKey, String> {
    let mut r = BufReader::new(pem.as_bytes());
    loop {
        match rustls_pemfile::read_one(&mut r).map_err(|e| format!("{what}: {e}"))? {
            Some(rustls_pemfile::Item::PKCS8Key(k)) | Some(rustls_pemfile::Item::ECKey(k)) | Some(rustls_pemfile::Item::RSAKey(k)) => return Ok(PrivateKey(k)),
            Some(_) => continue,
            None => return Err(format!("{what}: no PEM private key")),
        }
    }
}

/// Serves each local identity's certificate to the clients that name it.
struct ByServerName {
    keys: HashMap<String, Arc<CertifiedKey>>,
    outbox: Outbox,
}

impl ResolvesServerCert for ByServerName {
    fn resolve(&self, hello: ClientHello) -> Option<Arc<CertifiedKey>> {
        let found = hello.server_name().and_then(|n| self.keys.get(&n.to_ascii_lowercase())).cloned();
        if found.is_none() {
            self.outbox.send(json!({ "t": "refused", "reason": "unknown_server_name" }));
        }
        found
    }
}

/// The server configuration for one `config` message; an error names the
/// part that was wrong, and the previous configuration stays in force.
pub fn server_config(bundle: &str, identities: &[IdentityIn], outbox: &Outbox) -> Result<ServerConfig, String> {
    let mut roots = RootCertStore::empty();
    for c in pem_certs("trust bundle", bundle)? {
        roots.add(&c).map_err(|e| format!("trust bundle: {e}"))?;
    }
    let mut keys = HashMap::new();
    for id in identities {
        let what = format!("identity for {}", id.sni);
        let chain = pem_certs(&what, &id.chain)?;
        let key = any_supported_type(&pem_key(&what, &id.key)?).map_err(|e| format!("{what}: {e}"))?;
        keys.insert(id.sni.to_ascii_lowercase(), Arc::new(CertifiedKey::new(chain, key)));
    }
    let mut config = ServerConfig::builder()
        .with_safe_default_cipher_suites()
        .with_safe_default_kx_groups()
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(AllowAnyAuthenticatedClient::new(roots))
        .with_cert_resolver(Arc::new(ByServerName { keys, outbox: outbox.clone() }));
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No resumption (no session cache, and the default ticketer issues no
    // tickets): every session's peer is verified by the agent, and a
    // resumed session would carry no certificate to verify.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(config)
}
