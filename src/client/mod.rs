//! The Rust client: routes every call straight to the leader of its
//! scope's group by the cached slot map, and hides leader changes.
//!
//! - Bootstraps from any seed node, caches the slot map, hashes the scope
//!   to its slot with the documented function ([`crate::slot`]) and sends
//!   the call to the leader of the group that owns the slot.
//! - On `NOT_LEADER`, `WRONG_EPOCH` or a lost connection it learns the new
//!   leader (from the error's hint, or by refreshing the map) and retries
//!   with the *same* idempotency key, with jittered backoff, until the
//!   call's deadline. A leader change shows only as latency.
//! - Generates idempotency keys when the caller gives none. A key names
//!   one attempt: the server records its outcome, a denial as much as a
//!   grant, and replays it to every retry under that key for its dedup
//!   window. So the client retries with the same key only a call whose
//!   outcome it did not learn, and never turns a denial into a retry: each
//!   [`Client::acquire`] call is a new attempt, under a new generated key
//!   (or the one the caller gives: give a new one to try again after a
//!   denial).
//! - One HTTP/2 channel per node, shared by every call; acquire, extend,
//!   release and check travel as messages of one `Session` stream per node
//!   (unless [`ClientConfig::streaming`] is off); at most
//!   [`ClientConfig::max_in_flight`] calls at once.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tonic::Status> {
//! use std::time::Duration;
//! use leasehold::client::{Acquire, Acquired, Client, ClientConfig};
//!
//! let client = Client::connect(ClientConfig::new(["127.0.0.1:7070", "127.0.0.1:7071"])).await?;
//! let request = Acquire::new("account-42")
//!     .concurrency("jobs", 10)
//!     .throttle("api", 100, 1_000, 10)
//!     .ttl(Duration::from_secs(30));
//! match client.acquire(request).await? {
//!     Acquired::Granted(lease) => {
//!         let (lease, mut lost) = lease.keep_alive(0.5);
//!         // ... work, passing lease.fencing_token() to the protected resource ...
//!         # let _ = &mut lost;
//!         lease.release().await?;
//!     }
//!     Acquired::Denied(denial) => {
//!         // Trying again is a new attempt: another `acquire` call, which
//!         // gets a new idempotency key.
//!         println!("retry in {:?} ms", denial.retry_after_ms);
//!     }
//! }
//! # Ok(()) }
//! ```

mod lease;
mod route;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tonic::Status;

pub use lease::{Lease, LeaseLost};
pub use route::{bearer, with_token, SessionChannel, Streamable, Token};
use route::{Conn, Router};

use crate::proto::v1::{self, constraint};

/// How the client talks to the cluster.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `host:port` of any nodes; one reachable seed is enough.
    pub seeds: Vec<String>,
    /// Deadline of one call, retries included.
    pub call_timeout: Duration,
    /// Deadline of one attempt.
    pub attempt_timeout: Duration,
    /// Calls in flight at once; more wait for a slot.
    pub max_in_flight: usize,
    /// How much sooner than `sent_at + ttl` a lease counts as expired on
    /// the client's clock, as a fraction of the ttl, to cover the rate
    /// difference between client and server clocks.
    pub drift_fraction: f64,
    /// Added to the drift margin, for scheduling delays.
    pub drift_floor: Duration,
    /// The cluster's `max_clock_offset_ms`: a lease may be treated as
    /// expired on the servers up to twice this much before its ttl has
    /// passed on a correct clock, so the margin includes twice it.
    pub max_clock_offset: Duration,
    /// Send acquire, extend, release and check over one `Session` stream
    /// per node rather than as a unary RPC each: the same semantics for
    /// less CPU on both ends.
    pub streaming: bool,
    /// TLS to the nodes' client ports; `None`: plaintext.
    pub tls: Option<ClientTls>,
    /// The bearer token every call carries, for nodes that ask for one.
    pub token: Option<String>,
}

/// How the client speaks TLS: whom it trusts, and what it shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA (PEM) that signed the nodes' certificates.
    pub ca_file: std::path::PathBuf,
    /// A client certificate and its key (PEM), for nodes that ask for one.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The name the nodes' certificates must be valid for; by default the
    /// host each node is dialled at.
    pub domain: Option<String>,
}

impl ClientTls {
    pub fn new(ca_file: impl Into<std::path::PathBuf>) -> ClientTls {
        ClientTls {
            ca_file: ca_file.into(),
            identity: None,
            domain: None,
        }
    }

    /// The settings as tonic takes them, read from the files.
    pub fn tonic_config(&self) -> Result<tonic::transport::ClientTlsConfig, Status> {
        let identity = self
            .identity
            .as_ref()
            .map(|(cert, key)| (cert.as_path(), key.as_path()));
        crate::tls::client_config(&self.ca_file, identity, self.domain.as_deref())
            .map_err(|e| Status::invalid_argument(format!("tls: {e}")))
    }
}

impl ClientConfig {
    pub fn new<S: Into<String>>(seeds: impl IntoIterator<Item = S>) -> ClientConfig {
        ClientConfig {
            seeds: seeds.into_iter().map(Into::into).collect(),
            call_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
            max_in_flight: 1024,
            drift_fraction: 0.01,
            drift_floor: Duration::from_millis(5),
            max_clock_offset: Duration::from_millis(250),
            streaming: true,
            tls: None,
            token: None,
        }
    }
}

/// A cloneable handle; clones share connections and the slot map.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    router: Router,
    in_flight: Semaphore,
    /// For idempotency keys and backoff jitter.
    seq: AtomicU64,
    instance: u64,
}

/// The outcome of an acquire: a lease, or the denial with every blocking
/// constraint and when to come back.
#[derive(Debug)]
pub enum Acquired {
    Granted(Lease),
    Denied(v1::Denial),
}

/// An acquire request, built up constraint by constraint.
#[derive(Clone, Debug)]
pub struct Acquire {
    request: v1::AcquireRequest,
}

impl Acquire {
    /// Amount 1, ttl 30 s, a generated idempotency key, no constraints yet.
    pub fn new(scope: impl Into<String>) -> Acquire {
        Acquire {
            request: v1::AcquireRequest {
                scope: scope.into(),
                constraints: Vec::new(),
                amount: 1,
                min_amount: None,
                lease_ttl_ms: 30_000,
                max_lifetime_ms: None,
                idempotency_key: String::new(),
                wait_ms: None,
                fairness_key: String::new(),
            },
        }
    }

    fn with(mut self, kind: constraint::Kind) -> Acquire {
        self.request
            .constraints
            .push(v1::Constraint { kind: Some(kind) });
        self
    }

    pub fn concurrency(self, key: impl Into<String>, limit: u32) -> Acquire {
        self.with(constraint::Kind::Concurrency(v1::Concurrency {
            key: key.into(),
            limit,
        }))
    }

    pub fn throttle(
        self,
        key: impl Into<String>,
        limit: u32,
        period_ms: u64,
        burst: u32,
    ) -> Acquire {
        self.with(constraint::Kind::Throttle(v1::Throttle {
            key: key.into(),
            limit,
            period_ms,
            burst,
        }))
    }

    pub fn rate_limit(self, key: impl Into<String>, limit: u32, period_ms: u64) -> Acquire {
        self.with(constraint::Kind::RateLimit(v1::RateLimit {
            key: key.into(),
            limit,
            period_ms,
        }))
    }

    pub fn semaphore(self, key: impl Into<String>, weight: u32) -> Acquire {
        self.with(constraint::Kind::Semaphore(v1::Semaphore {
            key: key.into(),
            weight,
        }))
    }

    pub fn amount(mut self, amount: u32) -> Acquire {
        self.request.amount = amount;
        self
    }

    /// Accept any amount from `min_amount` up to `amount`.
    pub fn min_amount(mut self, min_amount: u32) -> Acquire {
        self.request.min_amount = Some(min_amount);
        self
    }

    /// Wait up to `wait` on the leader for capacity instead of being
    /// denied at once (served first come first served per first
    /// constraint key). Across a leader change the client re-parks the
    /// request with the same idempotency key.
    pub fn wait(mut self, wait: Duration) -> Acquire {
        self.request.wait_ms = Some(duration_ms(wait));
        self
    }

    /// With [`Acquire::wait`]: the party this request waits for; waiters
    /// of one key take turns across fairness keys.
    pub fn fairness_key(mut self, key: impl Into<String>) -> Acquire {
        self.request.fairness_key = key.into();
        self
    }

    pub fn ttl(mut self, ttl: Duration) -> Acquire {
        self.request.lease_ttl_ms = duration_ms(ttl);
        self
    }

    pub fn max_lifetime(mut self, max_lifetime: Duration) -> Acquire {
        self.request.max_lifetime_ms = Some(duration_ms(max_lifetime));
        self
    }

    /// The caller's own key for this attempt (1 to 128 bytes, unique per
    /// scope), to make a retry across processes idempotent: an acquire
    /// with the same key and parameters returns this attempt's outcome,
    /// its grant or its denial, for the server's dedup window. After a
    /// denial, try again under a new key. Without one, each
    /// [`Client::acquire`] call generates its own.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Acquire {
        self.request.idempotency_key = key.into();
        self
    }

    /// The request as it will be sent (idempotency key still empty if
    /// the client is to generate it).
    pub fn request(&self) -> &v1::AcquireRequest {
        &self.request
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Client {
    /// Connects to the cluster: fetches the slot map from the first
    /// seed that answers.
    pub async fn connect(config: ClientConfig) -> Result<Client, Status> {
        if config.seeds.is_empty() {
            return Err(Status::invalid_argument(
                "seeds: at least one node address is needed",
            ));
        }
        let tls = config
            .tls
            .as_ref()
            .map(ClientTls::tonic_config)
            .transpose()?;
        let token = config.token.as_deref().map(route::bearer).transpose()?;
        let instance = instance_id();
        let client = Client {
            inner: Arc::new(Inner {
                router: Router::new(
                    config.seeds.clone(),
                    config.attempt_timeout,
                    config.streaming,
                    tls,
                    token,
                ),
                in_flight: Semaphore::new(config.max_in_flight.max(1)),
                seq: AtomicU64::new(0),
                instance,
                config,
            }),
        };
        let timeout = client.inner.config.call_timeout;
        match tokio::time::timeout(timeout, client.inner.router.refresh()).await {
            Ok(map) => map?,
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no seed answered with a slot map within {timeout:?}"
                )))
            }
        };
        Ok(client)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// A fresh idempotency key, unique to this client instance.
    pub fn new_idempotency_key(&self) -> String {
        let n = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}-{n:x}", self.inner.instance)
    }

    fn key_or_new(&self, key: &mut String) {
        if key.is_empty() {
            *key = self.new_idempotency_key();
        }
    }

    /// Leases the request's constraints, or says why not: one attempt,
    /// retried under its idempotency key only while its outcome is unknown
    /// (a lost connection, a leader change), never after a denial.
    pub async fn acquire(&self, acquire: Acquire) -> Result<Acquired, Status> {
        let mut request = acquire.request;
        self.key_or_new(&mut request.idempotency_key);
        let ttl = Duration::from_millis(request.lease_ttl_ms);
        let sent_at = Instant::now();
        // A waiting acquire is parked on the leader: each attempt, and the
        // call, may take that much longer.
        let wait = Duration::from_millis(request.wait_ms.unwrap_or(0));
        let wait_until = sent_at + wait;
        // A retry after a leader change carries on at the new leader with
        // what is left of the wait.
        let send = move |conn: Conn, mut request: v1::AcquireRequest| {
            if request.wait_ms.is_some() {
                request.wait_ms = Some(duration_ms(
                    wait_until.saturating_duration_since(Instant::now()),
                ));
            }
            conn.call(request)
        };
        let reply = self
            .call_waiting(&request.scope.clone(), request.clone(), send, wait)
            .await?;
        match reply.result {
            Some(v1::acquire_response::Result::Granted(grant)) => {
                Ok(Acquired::Granted(Lease::new(
                    self.clone(),
                    request.scope,
                    grant,
                    reply.replayed,
                    sent_at,
                    ttl,
                )))
            }
            Some(v1::acquire_response::Result::Denied(denial)) => Ok(Acquired::Denied(denial)),
            None => Err(Status::internal(
                "the server answered Acquire with no result",
            )),
        }
    }

    /// Extends a lease by its id; [`Lease::extend`] is the usual way.
    pub async fn extend(
        &self,
        mut request: v1::ExtendRequest,
    ) -> Result<v1::ExtendResponse, Status> {
        self.key_or_new(&mut request.idempotency_key);
        self.call(&request.scope.clone(), request, Conn::call).await
    }

    /// Releases a lease by its id; [`Lease::release`] is the usual way.
    pub async fn release(
        &self,
        mut request: v1::ReleaseRequest,
    ) -> Result<v1::ReleaseResponse, Status> {
        self.key_or_new(&mut request.idempotency_key);
        self.call(&request.scope.clone(), request, Conn::call).await
    }

    pub async fn check(&self, request: v1::CheckRequest) -> Result<v1::CheckResponse, Status> {
        self.call(&request.scope.clone(), request, Conn::call).await
    }

    pub async fn inspect(
        &self,
        request: v1::InspectRequest,
    ) -> Result<v1::InspectResponse, Status> {
        self.call(&request.scope.clone(), request, |c, r| async move {
            let (mut client, request) = c.unary(r);
            Ok(client.inspect(request).await?.into_inner())
        })
        .await
    }

    pub async fn set_capacity(
        &self,
        mut request: v1::SetCapacityRequest,
    ) -> Result<v1::CapacityResponse, Status> {
        self.key_or_new(&mut request.idempotency_key);
        self.call(&request.scope.clone(), request, |c, r| async move {
            let (mut client, request) = c.unary(r);
            Ok(client.set_capacity(request).await?.into_inner())
        })
        .await
    }

    pub async fn adjust_capacity(
        &self,
        mut request: v1::AdjustCapacityRequest,
    ) -> Result<v1::CapacityResponse, Status> {
        self.key_or_new(&mut request.idempotency_key);
        self.call(&request.scope.clone(), request, |c, r| async move {
            let (mut client, request) = c.unary(r);
            Ok(client.adjust_capacity(request).await?.into_inner())
        })
        .await
    }

    /// An operator's action on one key: pause, resume, pin, unpin, reset.
    pub async fn admin_key(
        &self,
        mut request: v1::AdminKeyRequest,
    ) -> Result<v1::AdminKeyResponse, Status> {
        self.key_or_new(&mut request.idempotency_key);
        self.call(&request.scope.clone(), request, |c, r| async move {
            let (mut client, request) = c.unary(r);
            Ok(client.admin_key(request).await?.into_inner())
        })
        .await
    }

    /// The slot map, fetched afresh.
    pub async fn slot_map(&self) -> Result<v1::SlotMap, Status> {
        self.inner.router.refresh().await
    }

    /// Sends `request` to the leader of `scope`'s group, retrying
    /// routing failures with the same request until the call's deadline.
    async fn call<Req, Resp, F, Fut>(
        &self,
        scope: &str,
        request: Req,
        send: F,
    ) -> Result<Resp, Status>
    where
        Req: Clone,
        Resp: route::Served,
        F: Fn(Conn, Req) -> Fut,
        Fut: std::future::Future<Output = Result<Resp, Status>>,
    {
        self.call_waiting(scope, request, send, Duration::ZERO)
            .await
    }

    /// [`Client::call`] for a request that may wait `wait` on the leader:
    /// each attempt and the whole call get that much longer.
    async fn call_waiting<Req, Resp, F, Fut>(
        &self,
        scope: &str,
        request: Req,
        send: F,
        wait: Duration,
    ) -> Result<Resp, Status>
    where
        Req: Clone,
        Resp: route::Served,
        F: Fn(Conn, Req) -> Fut,
        Fut: std::future::Future<Output = Result<Resp, Status>>,
    {
        let _slot = self
            .inner
            .in_flight
            .acquire()
            .await
            .map_err(|_| Status::cancelled("the client is closed"))?;
        let deadline = Instant::now() + self.inner.config.call_timeout + wait;
        let mut attempt = 0u32;
        loop {
            let jitter = self.inner.seq.fetch_add(1, Ordering::Relaxed);
            match self
                .inner
                .router
                .attempt(scope, request.clone(), &send, deadline, wait)
                .await
            {
                Ok(reply) => return Ok(reply),
                Err(route::Failure::Final(status)) => return Err(status),
                Err(route::Failure::Retry(status)) => {
                    let now = Instant::now();
                    if now >= deadline {
                        // The last failure's ErrorDetail (a NOT_LEADER hint,
                        // say) travels on, for callers that log it.
                        return Err(Status::with_details(
                            tonic::Code::DeadlineExceeded,
                            format!(
                                "no leader answered within {:?}; last error: {}",
                                self.inner.config.call_timeout + wait,
                                status.message()
                            ),
                            status.details().to_vec().into(),
                        ));
                    }
                    attempt += 1;
                    let hint = crate::wire::overload_retry_after(&status).unwrap_or_default();
                    let pause = backoff(attempt, jitter).max(hint).min(deadline - now);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// Exponential from 5 ms to 200 ms, with up to 50% jitter; the first
/// retry after a leader hint goes at once.
fn backoff(attempt: u32, noise: u64) -> Duration {
    if attempt <= 1 {
        return Duration::ZERO;
    }
    let base = 5u64 << (attempt - 2).min(5);
    let base = base.min(200);
    let mixed = xxhash_rust::xxh3::xxh3_64(&noise.to_le_bytes());
    Duration::from_millis(base / 2 + mixed % (base / 2 + 1))
}

/// Distinguishes this client instance's generated keys from every other's.
fn instance_id() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(&now.to_le_bytes());
    bytes.extend_from_slice(&std::process::id().to_le_bytes());
    let local = 0u8;
    bytes.extend_from_slice(&(std::ptr::addr_of!(local) as usize).to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&bytes)
}
