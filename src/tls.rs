//! TLS for both gRPC ports and for whoever calls them (rustls, with ring).
//!
//! Certificates and keys are PEM files. A node re-reads its files when they
//! change (checked every second) or on SIGHUP, and new connections get the
//! new certificates; connections already open keep theirs. A file that does
//! not parse is logged and the previous certificates stay in use.
//!
//! Who may connect is a listener's choice ([`Callers`]): anyone (clients,
//! who then authenticate with tokens), holders of a certificate signed by a
//! CA (optional client certificates), or the cluster's members alone (the
//! peer port: signed by the peer CA *and* valid for a member's host, as a
//! server certificate would have to be).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a connection may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes finished but not yet taken by the server.
const ACCEPTED_BACKLOG: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path}: {message}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0}")]
    Verifier(String),
}

/// The PEM files of one side of a TLS connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that signs the other side's certificates: clients' (when the
    /// listener asks for them) or servers' (on the calling side).
    pub ca: Option<PathBuf>,
}

/// Who may open a connection to a listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Callers {
    /// Anyone; no client certificate is asked for.
    Anyone,
    /// Holders of a certificate signed by the listener's CA.
    Signed,
    /// Holders of a certificate signed by the listener's CA and valid for
    /// one of these host names or IP addresses: the cluster's members.
    Members(Vec<String>),
}

/// A listener's TLS settings, re-read from its files when they change.
pub struct ServerTls {
    what: &'static str,
    files: TlsFiles,
    callers: Callers,
    config: RwLock<Arc<rustls::ServerConfig>>,
    stamps: Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl ServerTls {
    /// Reads the files; `what` names the listener in logs and errors.
    pub fn load(
        what: &'static str,
        files: TlsFiles,
        callers: Callers,
    ) -> Result<Arc<ServerTls>, TlsError> {
        let stamps = stamps(&files);
        let config = server_config(&files, &callers)?;
        Ok(Arc::new(ServerTls {
            what,
            files,
            callers,
            config: RwLock::new(Arc::new(config)),
            stamps: Mutex::new(stamps),
        }))
    }

    /// Re-reads the files if any changed since they were last read (or if
    /// `force`): Ok(true) when new settings took effect.
    pub fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let now = stamps(&self.files);
        {
            let mut seen = self.stamps.lock().expect("tls stamps");
            if !force && *seen == now {
                return Ok(false);
            }
            // Once per change: a file that does not parse is not retried
            // until it changes again.
            *seen = now;
        }
        let config = server_config(&self.files, &self.callers)?;
        *self.config.write().expect("tls config") = Arc::new(config);
        Ok(true)
    }

    pub fn name(&self) -> &'static str {
        self.what
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.config.read().expect("tls config")))
    }
}

/// Modification time and length of each file, to notice a change.
fn stamps(files: &TlsFiles) -> Vec<Option<(SystemTime, u64)>> {
    [Some(&files.cert), Some(&files.key), files.ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

/// rustls with *ring*, as tonic's own TLS uses: it builds from crates
/// alone, where aws-lc-rs would add a C toolchain step. rustls 0.23.48
/// marks it deprecated because it offers no post-quantum key exchange;
/// SECURITY.md says so.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(files: &TlsFiles, callers: &Callers) -> Result<rustls::ServerConfig, TlsError> {
    let certs = read_certs("certificate", &files.cert)?;
    let key = read_key(&files.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = match callers {
        Callers::Anyone => builder.with_no_client_auth(),
        Callers::Signed | Callers::Members(_) => {
            let ca = files.ca.as_ref().ok_or_else(|| {
                TlsError::Verifier("client certificates need a CA file to verify them".into())
            })?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs("CA certificate", ca)? {
                roots.add(cert)?;
            }
            let signed = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
            let verifier: Arc<dyn ClientCertVerifier> = match callers {
                Callers::Members(hosts) => Arc::new(MembersOnly {
                    signed,
                    names: member_names(hosts)?,
                }),
                _ => signed,
            };
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn member_names(hosts: &[String]) -> Result<Vec<ServerName<'static>>, TlsError> {
    hosts
        .iter()
        .map(|h| {
            ServerName::try_from(h.clone())
                .map_err(|e| TlsError::Verifier(format!("member host {h:?}: {e}")))
        })
        .collect()
}

pub fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            path: path.to_owned(),
            message: "no PEM certificate in it".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read("private key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        what: "private key",
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// A client certificate verifier that takes only members: the chain must
/// verify against the CA, and the certificate must name a member's host.
#[derive(Debug)]
struct MembersOnly {
    signed: Arc<dyn ClientCertVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ClientCertVerifier for MembersOnly {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.signed.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .signed
            .verify_client_cert(end_entity, intermediates, now)?;
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        let member = self
            .names
            .iter()
            .any(|name| rustls::client::verify_server_name(&parsed, name).is_ok());
        if !member {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signed.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signed.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signed.supported_verify_schemes()
    }
}

/// Connections to `listener` that finished a TLS handshake with the
/// settings current when each was accepted. Handshakes run side by side,
/// each bounded in time, so one slow caller holds up no other. The listener
/// closes when the stream is dropped.
pub fn accept(
    listener: TcpListener,
    tls: Arc<ServerTls>,
) -> impl tokio_stream::Stream<Item = std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_BACKLOG);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = tx.closed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: the next accept may work.
                    tracing::warn!(error = %e, port = tls.what, "accept");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            let port = tls.what;
            tokio::spawn(async move {
                let peer = stream.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        metrics::counter!("leasehold_tls_handshake_failures_total", "port" => port)
                            .increment(1);
                        tracing::debug!(?peer, error = %e, port, "TLS handshake refused");
                    }
                    Err(_) => {
                        metrics::counter!("leasehold_tls_handshake_failures_total", "port" => port)
                            .increment(1);
                        tracing::debug!(?peer, port, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// An endpoint for `addr` (host and port): `https` with `tls`, `http`
/// without.
pub fn endpoint(
    addr: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))?;
    match tls {
        Some(tls) => endpoint.tls_config(tls.clone()),
        None => Ok(endpoint),
    }
}

/// The calling side's TLS settings for tonic: trust `ca`, show `identity`
/// (certificate and key) when given, expect the server's certificate to be
/// valid for `domain` (else for the host dialled).
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    domain: Option<&str>,
) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    let mut config = tonic::transport::ClientTlsConfig::new().ca_certificate(
        tonic::transport::Certificate::from_pem(read("CA certificate", ca)?),
    );
    if let Some((cert, key)) = identity {
        config = config.identity(tonic::transport::Identity::from_pem(
            read("certificate", cert)?,
            read("private key", key)?,
        ));
    }
    if let Some(domain) = domain {
        config = config.domain_name(domain);
    }
    Ok(config)
}
