//! What protects a node's ports, from its configuration: TLS on the
//! client port, mutual TLS on the peer port, tokens for client calls; and
//! the task that re-reads their files when they change or on SIGHUP.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tonic::metadata::MetadataMap;
use tonic::transport::ClientTlsConfig;
use tonic::Status;

use crate::auth::{Principal, Tokens, TokensError};
use crate::config::Config;
use crate::tls::{self, Callers, ServerTls, TlsError, TlsFiles};

/// How often the files are checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The tokens a node accepts, re-read from their file when it changes.
pub struct Auth {
    path: PathBuf,
    tokens: RwLock<Arc<Tokens>>,
    stamp: Mutex<Option<(SystemTime, u64)>>,
}

impl Auth {
    pub fn load(path: PathBuf) -> Result<Arc<Auth>, TokensError> {
        let stamp = stamp(&path);
        let tokens = Tokens::load(&path)?;
        Ok(Arc::new(Auth {
            path,
            tokens: RwLock::new(Arc::new(tokens)),
            stamp: Mutex::new(stamp),
        }))
    }

    /// Whom the call's token stands for.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Arc<Principal>, Status> {
        let tokens = Arc::clone(&self.tokens.read().expect("tokens"));
        tokens.authenticate(metadata).inspect_err(|_| {
            metrics::counter!("leasehold_auth_refusals_total", "reason" => "unauthenticated")
                .increment(1);
        })
    }

    /// Re-reads the file if it changed (or if `force`): Ok(Some(count of
    /// tokens)) when the new tokens took effect.
    fn reload(&self, force: bool) -> Result<Option<usize>, TokensError> {
        let now = stamp(&self.path);
        {
            let mut seen = self.stamp.lock().expect("tokens stamp");
            if !force && *seen == now {
                return Ok(None);
            }
            *seen = now;
        }
        let tokens = Tokens::load(&self.path)?;
        let count = tokens.len();
        *self.tokens.write().expect("tokens") = Arc::new(tokens);
        Ok(Some(count))
    }
}

fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// A node's TLS and token settings, loaded at start and re-read as their
/// files change.
pub struct Security {
    /// The client port's TLS; `None`: plaintext.
    pub client_tls: Option<Arc<ServerTls>>,
    /// The peer port's mutual TLS; `None`: plaintext.
    pub peer_tls: Option<Arc<ServerTls>>,
    /// How this node dials its peers' ports: with its peer certificate,
    /// trusting the peer CA (`None`: plaintext); renewed whenever the peer
    /// port's files are re-read.
    pub peer_dial: watch::Sender<Option<ClientTlsConfig>>,
    /// The peer port's files, which [`Security::peer_dial`] is made from.
    peer_files: Option<TlsFiles>,
    /// Tokens for client calls; `None`: every call is allowed.
    pub auth: Option<Arc<Auth>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("{field}: {source}")]
    Tls {
        field: &'static str,
        source: TlsError,
    },
    #[error("auth_tokens_file: {0}")]
    Tokens(#[from] TokensError),
}

impl Security {
    /// Reads every file the configuration names; any that cannot be used
    /// stops the node from starting.
    pub fn load(config: &Config) -> Result<Security, SecurityError> {
        let tls_err = |field| move |source| SecurityError::Tls { field, source };
        let client_tls = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => {
                let callers = match config.tls_client_ca_file {
                    Some(_) => Callers::Signed,
                    None => Callers::Anyone,
                };
                let files = TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    ca: config.tls_client_ca_file.clone(),
                };
                Some(
                    ServerTls::load("client port", files, callers)
                        .map_err(tls_err("tls_cert_file"))?,
                )
            }
            _ => None,
        };
        let (peer_tls, peer_dial, peer_files) = match (
            &config.peer_tls_cert_file,
            &config.peer_tls_key_file,
            &config.peer_tls_ca_file,
        ) {
            (Some(cert), Some(key), Some(ca)) => {
                let hosts = config
                    .members
                    .iter()
                    .filter_map(|m| m.peer_addr.rsplit_once(':').map(|(h, _)| h))
                    .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
                    .collect();
                let files = TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    ca: Some(ca.clone()),
                };
                let listen = ServerTls::load("peer port", files.clone(), Callers::Members(hosts))
                    .map_err(tls_err("peer_tls_cert_file"))?;
                let dial = dial_config(&files).map_err(tls_err("peer_tls_cert_file"))?;
                (Some(listen), Some(dial), Some(files))
            }
            _ => (None, None, None),
        };
        let auth = match &config.auth_tokens_file {
            Some(path) => Some(Auth::load(path.clone())?),
            None => None,
        };
        Ok(Security {
            client_tls,
            peer_tls,
            peer_dial: watch::Sender::new(peer_dial),
            peer_files,
            auth,
        })
    }

    /// Re-reads changed files every second, and every file on SIGHUP, for
    /// as long as the node runs. A file that cannot be used is logged and
    /// the settings in force stay.
    pub async fn reload_forever(self: Arc<Self>) {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(hup) => Some(hup),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler: files are re-read when they change only");
                None
            }
        };
        let mut tick = tokio::time::interval(RELOAD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let force = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { hup.as_mut()?.recv().await } => {
                    tracing::info!("SIGHUP: re-reading certificates and tokens");
                    true
                }
            };
            self.reload(force);
        }
    }

    fn reload(&self, force: bool) {
        if let Some(tls) = &self.client_tls {
            reload_tls(tls, force);
        }
        if let (Some(tls), Some(files)) = (&self.peer_tls, &self.peer_files) {
            if reload_tls(tls, force) {
                // Read again, not shared with the listener: the same files,
                // checked a moment ago.
                match dial_config(files) {
                    Ok(dial) => {
                        self.peer_dial.send_replace(Some(dial));
                        tracing::info!(
                            "connections to peers made from now on show the new peer certificate"
                        );
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "peer certificate not re-read for dialling: connections to peers keep the previous one");
                    }
                }
            }
        }
        if let Some(auth) = &self.auth {
            match auth.reload(force) {
                Ok(Some(count)) => {
                    metrics::counter!("leasehold_reloads_total", "what" => "tokens", "result" => "ok")
                        .increment(1);
                    tracing::info!(tokens = count, "tokens file re-read");
                }
                Ok(None) => {}
                Err(e) => {
                    metrics::counter!("leasehold_reloads_total", "what" => "tokens", "result" => "error")
                        .increment(1);
                    tracing::error!(error = %e, "tokens file not re-read: the previous tokens stay in use");
                }
            }
        }
    }
}

/// Re-reads `tls`'s files if they changed (or if `force`); whether new
/// certificates took effect.
fn reload_tls(tls: &ServerTls, force: bool) -> bool {
    match tls.reload(force) {
        Ok(true) => {
            metrics::counter!("leasehold_reloads_total", "what" => tls.name(), "result" => "ok")
                .increment(1);
            tracing::info!(port = tls.name(), "TLS certificates re-read");
            true
        }
        Ok(false) => false,
        Err(e) => {
            metrics::counter!("leasehold_reloads_total", "what" => tls.name(), "result" => "error")
                .increment(1);
            tracing::error!(port = tls.name(), error = %e, "TLS certificates not re-read: the previous ones stay in use");
            false
        }
    }
}

/// How a node dials its peers: showing its peer certificate, trusting the
/// peer CA.
fn dial_config(files: &TlsFiles) -> Result<ClientTlsConfig, TlsError> {
    let ca = files
        .ca
        .as_deref()
        .expect("the peer port's files name a CA");
    tls::client_config(ca, Some((&files.cert, &files.key)), None)
}
