//! TLS for HBONE, both ends: TLS 1.3 only, ALPN h2, both peers' chains
//! checked against the trust bundle here, at the handshake. Inbound presents
//! the certificate of the identity the client names by SNI; outbound presents
//! the source workload's. The SPIFFE checks of the peer's identity (trust
//! domain, workload kind, expiry, and outbound that it is exactly the
//! destination) are the agent's: it receives the verified chain once per
//! connection.
use std::collections::HashMap;
use std::io::BufReader;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::{ServerCertVerified, ServerCertVerifier};
use rustls::server::{AllowAnyAuthenticatedClient, ClientHello, ResolvesServerCert};
use rustls::sign::{any_supported_type, CertifiedKey};
use rustls::{Certificate, ClientConfig, PrivateKey, RootCertStore, ServerConfig, ServerName};
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

/// The TLS state of one `config` message: the server side, and a client
/// configuration per local identity (keyed by its SPIFFE URI) for the
/// outbound pool.
pub struct Tls {
    pub server: Arc<ServerConfig>,
    pub clients: HashMap<String, ClientIdentity>,
}

pub struct ClientIdentity {
    pub config: Arc<ClientConfig>,
    /// A fingerprint of the certificate chain's text, computed once per
    /// configuration: pooled connections opened with an older certificate
    /// finish on it, new ones use the new.
    pub fingerprint: u64,
}

/// FNV-1a: a cheap fingerprint of a certificate chain's text for pool keys.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}

/// The TLS state for one `config` message; an error names the part that was
/// wrong, and the previous configuration stays in force.
pub fn config(bundle: &str, identities: &[IdentityIn], outbox: &Outbox) -> Result<Tls, String> {
    let bundle_certs = pem_certs("trust bundle", bundle)?;
    let mut roots = RootCertStore::empty();
    for c in &bundle_certs {
        roots.add(c).map_err(|e| format!("trust bundle: {e}"))?;
    }
    let verifier = Arc::new(BundleVerifier { roots: bundle_certs.iter().map(|c| c.0.clone()).collect() });
    let mut keys = HashMap::new();
    let mut clients = HashMap::new();
    for id in identities {
        let what = format!("identity for {}", if id.uri.is_empty() { &id.sni } else { &id.uri });
        let chain = pem_certs(&what, &id.chain)?;
        let private = pem_key(&what, &id.key)?;
        let key = any_supported_type(&private).map_err(|e| format!("{what}: {e}"))?;
        keys.insert(id.sni.to_ascii_lowercase(), Arc::new(CertifiedKey::new(chain.clone(), key)));
        if !id.uri.is_empty() {
            let config = client_config(verifier.clone(), chain, private).map_err(|e| format!("{what}: {e}"))?;
            clients.insert(id.uri.clone(), ClientIdentity { config: Arc::new(config), fingerprint: fnv(id.chain.as_bytes()) });
        }
    }
    Ok(Tls { server: Arc::new(server_config(roots, keys, outbox)?), clients })
}

fn server_config(roots: RootCertStore, keys: HashMap<String, Arc<CertifiedKey>>, outbox: &Outbox) -> Result<ServerConfig, String> {
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

fn client_config(verifier: Arc<BundleVerifier>, chain: Vec<Certificate>, key: PrivateKey) -> Result<ClientConfig, rustls::Error> {
    let mut config = ClientConfig::builder()
        .with_safe_default_cipher_suites()
        .with_safe_default_kx_groups()
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_custom_certificate_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No resumption: the agent verifies every connection's server chain, and a
    // resumed session would carry none.
    config.session_storage = Arc::new(rustls::client::NoClientSessionStorage {});
    config.enable_tickets = false;
    Ok(config)
}

/// The server's chain must lead to the trust bundle, as a TLS server
/// certificate valid now. HBONE certificates name SPIFFE IDs, not DNS names,
/// so the name the client sent (SNI, which only selects the certificate) is
/// not checked here: the agent checks the SPIFFE ID once the handshake is done.
struct BundleVerifier {
    roots: Vec<Vec<u8>>,
}

static SIGNATURE_ALGORITHMS: &[&webpki::SignatureAlgorithm] = &[
    &webpki::ECDSA_P256_SHA256,
    &webpki::ECDSA_P256_SHA384,
    &webpki::ECDSA_P384_SHA256,
    &webpki::ECDSA_P384_SHA384,
    &webpki::ED25519,
    &webpki::RSA_PKCS1_2048_8192_SHA256,
    &webpki::RSA_PKCS1_2048_8192_SHA384,
    &webpki::RSA_PKCS1_2048_8192_SHA512,
    &webpki::RSA_PKCS1_3072_8192_SHA384,
    &webpki::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    &webpki::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    &webpki::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
];

impl ServerCertVerifier for BundleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &Certificate,
        intermediates: &[Certificate],
        _server_name: &ServerName,
        _scts: &mut dyn Iterator<Item = &[u8]>,
        _ocsp_response: &[u8],
        now: SystemTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let anchors: Vec<webpki::TrustAnchor> = self.roots.iter().filter_map(|der| webpki::TrustAnchor::try_from_cert_der(der).ok()).collect();
        let cert = webpki::EndEntityCert::try_from(end_entity.0.as_slice()).map_err(|_| rustls::Error::InvalidCertificateEncoding)?;
        let chain: Vec<&[u8]> = intermediates.iter().map(|c| c.0.as_slice()).collect();
        let time = webpki::Time::try_from(now).map_err(|_| rustls::Error::FailedToGetCurrentTime)?;
        cert.verify_is_valid_tls_server_cert(SIGNATURE_ALGORITHMS, &webpki::TlsServerTrustAnchors(&anchors), &chain, time)
            .map_err(|e| rustls::Error::InvalidCertificateData(format!("server certificate: {e}")))?;
        Ok(ServerCertVerified::assertion())
    }
}

/// TLS's largest record plaintext.
const ONE_RECORD: usize = 16 * 1024;

/// The TLS stream as h2 writes to it: through a write buffer of one record,
/// which h2 flushes when it has written a DATA frame. h2 hands each DATA
/// frame over as two writes (frame head, payload), and tokio-rustls 0.23
/// makes every write its own record and its own `sendmsg`: a 1 KiB echo
/// crossed as two records and two segments per hop, and the peer woke for
/// the head alone (tcpdump: a 31-byte segment before each 1,046-byte one).
/// Buffered, a small frame's head and payload (and any small frames queued
/// before it) leave as one record; a bulk payload of a record or more
/// bypasses the buffer uncopied, its head still a record of its own as before.
pub fn record_writer<T: tokio::io::AsyncWrite>(tls: T) -> tokio::io::BufWriter<T> {
    tokio::io::BufWriter::with_capacity(ONE_RECORD, tls)
}
