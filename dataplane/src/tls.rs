//! TLS for HBONE, both ends: TLS 1.3 only, ALPN h2, both peers' chains
//! checked against the trust bundle here, at the handshake. Inbound presents
//! the certificate of the identity the client names by SNI; outbound presents
//! the source workload's. The SPIFFE checks of the peer's identity (trust
//! domain, workload kind, expiry, and outbound that it is exactly the
//! destination) are the agent's: it receives the verified chain once per
//! connection.
use std::collections::HashMap;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::control::{pb, Out, Outbox};

fn pem_certs(what: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| format!("{what}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no PEM certificate"));
    }
    Ok(certs)
}

/// The first private key in the PEM (PKCS#8, SEC1 or PKCS#1), as before.
fn pem_key(what: &str, pem: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!("{what}: no PEM private key"),
        e => format!("{what}: {e}"),
    })
}

/// ring, not aws-lc-rs (Cargo.toml says why); the same provider for every
/// configuration, so that keys, suites and verifiers agree: TLS 1.3's AES-GCM
/// and ChaCha20-Poly1305 suites, X25519 and the NIST curves. rustls marks
/// ring's provider deprecated for lacking post-quantum key exchange
/// (X25519MLKEM768), which only aws-lc-rs offers.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Serves each local identity's certificate to the clients that name it.
struct ByServerName {
    keys: HashMap<String, Arc<CertifiedKey>>,
    outbox: Outbox,
}

/// rustls asks resolvers for Debug; the names served say enough.
impl std::fmt::Debug for ByServerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByServerName").field("names", &self.keys.keys().collect::<Vec<_>>()).finish()
    }
}

impl ResolvesServerCert for ByServerName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let found = hello.server_name().and_then(|n| self.keys.get(&n.to_ascii_lowercase())).cloned();
        if found.is_none() {
            self.outbox.send(Out::Refused(pb::Refused { reason: "unknown_server_name".into(), ..Default::default() }));
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
pub fn config(bundle: &str, identities: &[pb::Identity], outbox: &Outbox) -> Result<Tls, String> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    for c in pem_certs("trust bundle", bundle)? {
        roots.add(c).map_err(|e| format!("trust bundle: {e}"))?;
    }
    let roots = Arc::new(roots);
    let verifier = Arc::new(BundleVerifier { roots: roots.clone(), algorithms: provider.signature_verification_algorithms });
    let mut keys = HashMap::new();
    let mut clients = HashMap::new();
    for id in identities {
        let what = format!("identity for {}", if id.uri.is_empty() { &id.sni } else { &id.uri });
        let chain = pem_certs(&what, &id.chain)?;
        let private = pem_key(&what, &id.key)?;
        let key = provider.key_provider.load_private_key(private.clone_key()).map_err(|e| format!("{what}: {e}"))?;
        keys.insert(id.sni.to_ascii_lowercase(), Arc::new(CertifiedKey::new(chain.clone(), key)));
        if !id.uri.is_empty() {
            let config = client_config(provider.clone(), verifier.clone(), chain, private).map_err(|e| format!("{what}: {e}"))?;
            clients.insert(id.uri.clone(), ClientIdentity { config: Arc::new(config), fingerprint: fnv(id.chain.as_bytes()) });
        }
    }
    Ok(Tls { server: Arc::new(server_config(provider, roots, keys, outbox)?), clients })
}

fn server_config(provider: Arc<CryptoProvider>, roots: Arc<RootCertStore>, keys: HashMap<String, Arc<CertifiedKey>>, outbox: &Outbox) -> Result<ServerConfig, String> {
    // Every client must present a chain to the bundle (no anonymous clients);
    // its SPIFFE ID is the agent's to check.
    let clients = WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build().map_err(|e| format!("trust bundle: {e}"))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(clients)
        .with_cert_resolver(Arc::new(ByServerName { keys, outbox: outbox.clone() }));
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No resumption (no session cache, no tickets, stateful or not): every
    // session's peer is verified by the agent, and a resumed session would
    // carry no certificate to verify.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

fn client_config(provider: Arc<CryptoProvider>, verifier: Arc<BundleVerifier>, chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<ClientConfig, rustls::Error> {
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No resumption: the agent verifies every connection's server chain, and a
    // resumed session would carry none.
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// The server's chain must lead to the trust bundle, as a TLS server
/// certificate valid now. HBONE certificates name SPIFFE IDs, not DNS names,
/// so the name the client sent (SNI, which only selects the certificate) is
/// not checked here: the agent checks the SPIFFE ID once the handshake is done.
#[derive(Debug)]
struct BundleVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for BundleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(&cert, &self.roots, intermediates, now, self.algorithms.all)?;
        Ok(ServerCertVerified::assertion())
    }

    /// Never called: the configuration offers TLS 1.3 only.
    fn verify_tls12_signature(&self, _message: &[u8], _cert: &CertificateDer<'_>, _dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// TLS's largest record plaintext.
const ONE_RECORD: usize = 16 * 1024;

/// The TLS stream as h2 writes to it: through a write buffer of one record,
/// which h2 flushes when it has written a DATA frame. h2 hands each DATA
/// frame over as two writes (frame head, payload), and tokio-rustls makes
/// every write its own record and its own `sendmsg`: a 1 KiB echo
/// crossed as two records and two segments per hop, and the peer woke for
/// the head alone (tcpdump: a 31-byte segment before each 1,046-byte one).
/// Buffered, a small frame's head and payload (and any small frames queued
/// before it) leave as one record; a bulk payload of a record or more
/// bypasses the buffer uncopied, its head still a record of its own as before.
pub fn record_writer<T: tokio::io::AsyncWrite>(tls: T) -> tokio::io::BufWriter<T> {
    tokio::io::BufWriter::with_capacity(ONE_RECORD, tls)
}
