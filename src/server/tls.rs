//! TLS with rustls: one server configuration per `listen ... ssl` socket, built from the plan
//! when it is loaded (a certificate that does not load fails the start or the reload, as in
//! nginx). The certificate is chosen by SNI the way nginx chooses the server: the socket's
//! server-name table, else its default server.
//!
//! What maps and what cannot: `ssl_protocols` (rustls speaks TLSv1.2 and TLSv1.3 only; TLSv1
//! and TLSv1.1 are never offered), `ssl_ciphers` (TLSv1.2 suites named or selected by OpenSSL
//! keywords; TLSv1.3 suites are not governed by it, as in OpenSSL), `ssl_prefer_server_ciphers`,
//! `ssl_ecdh_curve`, `ssl_session_cache`, `ssl_session_tickets`, `ssl_reject_handshake`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, ServerSessionMemoryCache,
};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedCipherSuite};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::plan::settings::SessionCache;
use crate::plan::{ListenAddr, Plan, Settings};

/// The TLS configuration of every `ssl` socket of a plan.
#[derive(Default)]
pub struct TlsSet {
    sockets: Vec<(ListenAddr, Arc<ServerConfig>)>,
}

impl TlsSet {
    /// The configuration for the socket configured as `addr`, if it speaks TLS.
    pub fn get(&self, addr: &ListenAddr) -> Option<Arc<ServerConfig>> {
        self.sockets
            .iter()
            .find(|(a, _)| a == addr)
            .map(|(_, c)| c.clone())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads every certificate the plan names and builds each `ssl` socket's configuration.
/// `Err` holds nginx-worded messages (`cannot load certificate "..."`).
pub fn build(plan: &Arc<Plan>) -> Result<TlsSet, Vec<String>> {
    let provider = provider();
    let mut loaded: HashMap<(String, String), Arc<CertifiedKey>> = HashMap::new();
    let mut errors = Vec::new();
    let mut set = TlsSet::default();
    for (index, socket) in plan.sockets.iter().enumerate() {
        if !socket.opts.ssl {
            continue;
        }
        let mut certs = HashMap::new();
        for &i in &socket.servers {
            let s = &plan.servers[i].conf.settings;
            let mut keys = Vec::new();
            for pair in s
                .ssl_certificate()
                .iter()
                .cloned()
                .zip(s.ssl_certificate_key().iter().cloned())
            {
                if let Some(k) = loaded.get(&pair) {
                    keys.push(k.clone());
                    continue;
                }
                match load_pair(&pair.0, &pair.1, &provider) {
                    Ok(k) => {
                        let k = Arc::new(k);
                        loaded.insert(pair, k.clone());
                        keys.push(k);
                    }
                    Err(e) if is_mismatch(&e) => tracing::error!("{e}"),
                    Err(e) => errors.push(e),
                }
            }
            certs.insert(i, keys);
        }
        let defaults = &plan.servers[socket.default].conf.settings;
        let resolver = Resolver {
            plan: plan.clone(),
            socket: index,
            certs,
        };
        match server_config(defaults, resolver, &provider) {
            Ok(c) => set.sockets.push((socket.addr.clone(), Arc::new(c))),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(errors)
    }
}

/// What `portico -t` adds: every certificate and key loads.
pub fn check(plan: &Plan) -> Vec<String> {
    let provider = provider();
    let mut seen = std::collections::HashSet::new();
    let mut errors = Vec::new();
    for socket in plan.sockets.iter().filter(|s| s.opts.ssl) {
        for &i in &socket.servers {
            let s = &plan.servers[i].conf.settings;
            for pair in s.ssl_certificate().into_iter().zip(s.ssl_certificate_key()) {
                if seen.insert(pair.clone())
                    && let Err(e) = load_pair(&pair.0, &pair.1, &provider)
                {
                    errors.push(e);
                }
            }
        }
    }
    errors
}

/// How a certificate whose key does not match is reported: nginx loads such a pair without a
/// word (OpenSSL keeps the key in another slot) and its handshakes fail; Portico warns in
/// `-t` and leaves the pair out when serving.
const MISMATCH: &str = "key values mismatch";

/// Whether a load error is the mismatch nginx does not report.
pub fn is_mismatch(message: &str) -> bool {
    message.starts_with(MISMATCH)
}

/// The message nginx (OpenSSL 3) gives when a file cannot be opened.
fn open_error(what: &str, path: &str, e: &std::io::Error) -> String {
    let reason = match e.kind() {
        std::io::ErrorKind::NotFound => "error:80000002:system library::No such file or directory",
        std::io::ErrorKind::PermissionDenied => "error:8000000D:system library::Permission denied",
        _ => "error:80000005:system library::Input/output error",
    };
    let bio = match e.kind() {
        std::io::ErrorKind::NotFound => "error:10000080:BIO routines::no such file",
        _ => "error:10080002:BIO routines::system lib",
    };
    format!(
        "cannot load {what} \"{path}\": BIO_new_file() failed (SSL: {reason}:calling fopen({path}, r) {bio})"
    )
}

fn load_pair(cert: &str, key: &str, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let cert_pem = std::fs::read(cert).map_err(|e| open_error("certificate", cert, &e))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot load certificate \"{cert}\": {e}"))?;
    if chain.is_empty() {
        return Err(format!(
            "cannot load certificate \"{cert}\": PEM_read_bio_X509_AUX() failed (no certificate found)"
        ));
    }
    let key_pem = std::fs::read(key).map_err(|e| open_error("certificate key", key, &e))?;
    let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        format!(
            "cannot load certificate key \"{key}\": PEM_read_bio_PrivateKey() failed (no supported private key found)"
        )
    })?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("cannot load certificate key \"{key}\": {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|_| {
        format!(
            "{MISMATCH}: certificate \"{cert}\" and key \"{key}\" do not match; handshakes with this certificate will fail"
        )
    })?;
    Ok(certified)
}

/// The rustls configuration of one socket, from its default server's settings.
fn server_config(
    s: &Settings,
    resolver: Resolver,
    provider: &Arc<CryptoProvider>,
) -> Result<ServerConfig, String> {
    let protocols = s.ssl_protocols();
    let tls12 = protocols.iter().any(|p| p == "TLSv1.2");
    let tls13 = protocols.iter().any(|p| p == "TLSv1.3");
    let mut provider = (**provider).clone();
    let mut suites: Vec<SupportedCipherSuite> = Vec::new();
    if tls13 {
        suites.extend(
            provider
                .cipher_suites
                .iter()
                .filter(|c| c.tls13().is_some())
                .copied(),
        );
    }
    if tls12 {
        suites.extend(tls12_suites(&s.ssl_ciphers(), &provider.cipher_suites));
    }
    provider.cipher_suites = suites;
    let curves = s.ssl_ecdh_curve();
    if curves != "auto" {
        let wanted: Vec<_> = curves
            .split(':')
            .filter_map(|c| {
                let name = match c.to_ascii_lowercase().as_str() {
                    "x25519" => "X25519",
                    "prime256v1" | "secp256r1" | "p-256" => "secp256r1",
                    "secp384r1" | "p-384" => "secp384r1",
                    _ => return None,
                };
                provider
                    .kx_groups
                    .iter()
                    .find(|g| format!("{:?}", g.name()) == name)
                    .copied()
            })
            .collect();
        if wanted.is_empty() {
            return Err(format!("SSL_CTX_set1_curves_list(\"{curves}\") failed"));
        }
        provider.kx_groups = wanted;
    }
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if tls13 {
        versions.push(&rustls::version::TLS13);
    }
    if tls12 && provider.cipher_suites.iter().any(|c| c.tls13().is_none()) {
        versions.push(&rustls::version::TLS12);
    }
    if versions.is_empty() {
        return Err(format!(
            "no TLS protocol Portico speaks is enabled by \"ssl_protocols {}\" (only TLSv1.2 and TLSv1.3 are supported)",
            protocols.join(" ")
        ));
    }
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&versions)
        .map_err(|e| format!("TLS configuration failed: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ignore_client_order = s.ssl_prefer_server_ciphers();
    config.session_storage = match s.ssl_session_cache() {
        SessionCache::Off | SessionCache::None => Arc::new(NoServerSessionStorage {}),
        SessionCache::Sessions(n) => ServerSessionMemoryCache::new((*n).max(1)),
    };
    if s.ssl_session_tickets() {
        config.ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| format!("TLS session tickets: {e}"))?;
    }
    Ok(config)
}

/// The TLSv1.2 suites an OpenSSL cipher string selects, in its order: names
/// (`ECDHE-RSA-AES128-GCM-SHA256`) and keywords (`HIGH`, `ECDHE+AESGCM`, `!CHACHA20`, ...)
/// matched against what each suite is.
fn tls12_suites(spec: &str, all: &[SupportedCipherSuite]) -> Vec<SupportedCipherSuite> {
    let tags = |c: &SupportedCipherSuite| -> (String, Vec<&'static str>) {
        let name = format!("{:?}", c.suite());
        let ecdsa = name.contains("ECDSA");
        let openssl = {
            let auth = if ecdsa { "ECDSA" } else { "RSA" };
            let body = if name.contains("CHACHA20") {
                "CHACHA20-POLY1305".to_string()
            } else if name.contains("AES_128_GCM") {
                "AES128-GCM-SHA256".to_string()
            } else {
                "AES256-GCM-SHA384".to_string()
            };
            format!("ECDHE-{auth}-{body}")
        };
        let mut t = vec![
            "ALL", "DEFAULT", "HIGH", "ECDHE", "EECDH", "kECDHE", "kEECDH", "AEAD", "TLSv1.2",
            "SSLv3",
        ];
        t.push(if ecdsa { "ECDSA" } else { "RSA" });
        t.push(if ecdsa { "aECDSA" } else { "aRSA" });
        if name.contains("CHACHA20") {
            t.extend(["CHACHA20", "CHACHA20POLY1305", "SHA256"]);
        } else if name.contains("AES_128") {
            t.extend(["AES", "AESGCM", "AES128", "SHA256"]);
        } else {
            t.extend(["AES", "AESGCM", "AES256", "SHA384"]);
        }
        (openssl, t)
    };
    let matches = |c: &SupportedCipherSuite, item: &str| {
        let (name, t) = tags(c);
        name.eq_ignore_ascii_case(item) || item.split('+').all(|part| t.contains(&part))
    };
    let mut chosen: Vec<SupportedCipherSuite> = Vec::new();
    let mut banned: Vec<SupportedCipherSuite> = Vec::new();
    let twelve: Vec<_> = all
        .iter()
        .filter(|c| c.tls13().is_none())
        .copied()
        .collect();
    for item in spec.split([':', ' ', ',', ';']).filter(|i| !i.is_empty()) {
        if let Some(rest) = item.strip_prefix('!') {
            banned.extend(twelve.iter().filter(|c| matches(c, rest)).copied());
        } else if let Some(rest) = item.strip_prefix('-') {
            chosen.retain(|c| !matches(c, rest));
        } else if let Some(rest) = item.strip_prefix('+') {
            // Moves the matching ones to the end.
            let (moved, kept): (Vec<_>, Vec<_>) = chosen.iter().partition(|c| matches(c, rest));
            chosen = kept.into_iter().chain(moved).collect();
        } else if !item.starts_with('@') {
            for c in &twelve {
                if matches(c, item) && !chosen.iter().any(|x| x.suite() == c.suite()) {
                    chosen.push(*c);
                }
            }
        }
    }
    chosen.retain(|c| !banned.iter().any(|b| b.suite() == c.suite()));
    chosen
}

/// Picks the certificate by SNI: the server the name selects on this socket, else the
/// default server; a server with `ssl_reject_handshake on` refuses the handshake.
struct Resolver {
    plan: Arc<Plan>,
    socket: usize,
    /// Certificates by server index.
    certs: HashMap<usize, Vec<Arc<CertifiedKey>>>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Resolver(socket {})", self.socket)
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let socket = self.plan.sockets.get(self.socket)?;
        let server = hello
            .server_name()
            .and_then(|n| socket.names.find(&n.to_ascii_lowercase()))
            .map_or(socket.default, |f| f.server);
        let settings = &self.plan.servers.get(server)?.conf.settings;
        if settings.ssl_reject_handshake() {
            return None;
        }
        let mut keys = self.certs.get(&server).filter(|k| !k.is_empty());
        if keys.is_none() {
            let default = &self.plan.servers.get(socket.default)?.conf.settings;
            if default.ssl_reject_handshake() {
                return None;
            }
            keys = self.certs.get(&socket.default);
        }
        let keys = keys?;
        // An RSA and an ECDSA certificate: the one the client can verify.
        keys.iter()
            .find(|k| k.key.choose_scheme(hello.signature_schemes()).is_some())
            .or(keys.first())
            .cloned()
    }
}

/// The `$ssl_*` variables of an established connection.
pub fn info(conn: &rustls::ServerConnection) -> crate::plan::route::TlsInfo {
    let protocol = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        _ => "TLSv1.2",
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|c| openssl_name(&format!("{:?}", c.suite())))
        .unwrap_or_default();
    crate::plan::route::TlsInfo {
        server_name: conn.server_name().map(str::to_string),
        protocol: protocol.to_string(),
        cipher,
    }
}

/// OpenSSL's name of a suite, as `$ssl_cipher` gives it: `TLS_AES_128_GCM_SHA256` for
/// TLSv1.3, `ECDHE-RSA-AES128-GCM-SHA256` for TLSv1.2.
fn openssl_name(iana: &str) -> String {
    if let Some(rest) = iana.strip_prefix("TLS13_") {
        return format!("TLS_{rest}");
    }
    let Some(rest) = iana.strip_prefix("TLS_ECDHE_") else {
        return iana.to_string();
    };
    let (auth, body) = rest.split_once("_WITH_").unwrap_or((rest, ""));
    let body = match body {
        "AES_128_GCM_SHA256" => "AES128-GCM-SHA256",
        "AES_256_GCM_SHA384" => "AES256-GCM-SHA384",
        "CHACHA20_POLY1305_SHA256" => "CHACHA20-POLY1305",
        other => other,
    };
    format!("ECDHE-{auth}-{body}")
}

/// The client side, for `proxy_pass https://`: as nginx does by default
/// (`proxy_ssl_verify off`, `proxy_ssl_server_name off`), the upstream's certificate is not
/// checked and no SNI is sent. Built once.
pub fn upstream_connector() -> tokio_rustls::TlsConnector {
    static CONNECTOR: std::sync::OnceLock<tokio_rustls::TlsConnector> = std::sync::OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let provider = provider();
            let verifier = Arc::new(NoVerification(provider.clone()));
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports the default versions")
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            config.enable_sni = false;
            tokio_rustls::TlsConnector::from(Arc::new(config))
        })
        .clone()
}

/// nginx's `proxy_ssl_verify off`: any certificate is accepted (signatures are still checked,
/// so the handshake itself is sound).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(spec: &str) -> Vec<String> {
        let all = rustls::crypto::ring::default_provider().cipher_suites;
        tls12_suites(spec, &all)
            .iter()
            .map(|c| format!("{:?}", c.suite()))
            .collect()
    }

    #[test]
    fn openssl_cipher_strings_select_tls12_suites() {
        assert_eq!(names("HIGH:!aNULL:!MD5").len(), 6);
        assert_eq!(
            names("ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256"),
            [
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
            ]
        );
        assert!(
            names("HIGH:!CHACHA20")
                .iter()
                .all(|n| !n.contains("CHACHA"))
        );
        assert_eq!(names("ECDHE+AESGCM:!ECDSA").len(), 2);
        assert!(names("DHE-RSA-AES128-SHA:kEDH").is_empty());
    }
}
