//! A granted lease as the caller holds it: judged on the client's own
//! monotonic clock, optionally kept alive, released on drop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tonic::Status;

use super::Client;
use crate::proto::v1;

/// Why a kept-alive lease ended without being released.
#[derive(Clone, Debug)]
pub struct LeaseLost {
    pub lease_id: u64,
    /// The server's error (LEASE_LOST, MAX_LIFETIME_EXCEEDED, ...), or the
    /// last transport error when no extension got through in time.
    pub status: Status,
}

struct Shared {
    client: Client,
    scope: String,
    grant: v1::Grant,
    /// Client-clock instant until which the lease is certainly held.
    valid_until: Mutex<Instant>,
    /// Released (or handed to a release) already: no release on drop.
    done: AtomicBool,
    replayed: bool,
}

/// A held lease. Dropping it releases it in the background (best effort);
/// call [`Lease::release`] to know the outcome.
#[derive(Debug)]
pub struct Lease {
    shared: Arc<Shared>,
    keep_alive: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("scope", &self.scope)
            .field("grant", &self.grant)
            .finish_non_exhaustive()
    }
}

impl Lease {
    pub(super) fn new(
        client: Client,
        scope: String,
        grant: v1::Grant,
        replayed: bool,
        sent_at: Instant,
        ttl: Duration,
    ) -> Lease {
        let valid_until = sent_at + ttl.saturating_sub(margin(&client, ttl));
        Lease {
            shared: Arc::new(Shared {
                client,
                scope,
                grant,
                valid_until: Mutex::new(valid_until),
                done: AtomicBool::new(false),
                replayed,
            }),
            keep_alive: None,
        }
    }

    pub fn lease_id(&self) -> u64 {
        self.shared.grant.lease_id
    }

    /// Pass this to the resource the lease protects; it should refuse
    /// tokens smaller than one it has seen.
    pub fn fencing_token(&self) -> u64 {
        self.shared.grant.fencing_token
    }

    pub fn granted_amount(&self) -> u32 {
        self.shared.grant.granted_amount
    }

    pub fn scope(&self) -> &str {
        &self.shared.scope
    }

    /// The grant as the server sent it (server timestamps: for display).
    pub fn grant(&self) -> &v1::Grant {
        &self.shared.grant
    }

    /// Whether the lease is certainly still held, on the client's clock:
    /// before `sent_at + ttl − drift margin` of the latest acquire or
    /// extend. Never judged by server timestamps.
    pub fn is_valid(&self) -> bool {
        Instant::now() < self.valid_until()
    }

    pub fn valid_until(&self) -> Instant {
        *self.shared.valid_until.lock().expect("lease clock")
    }

    /// Whether the acquire replayed an earlier one with the same
    /// idempotency key (the lease may then be older than this call).
    pub fn replayed(&self) -> bool {
        self.shared.replayed
    }

    /// Gives up the handle without releasing the lease (no release on
    /// drop, no keep-alive): for leases released by id elsewhere.
    pub fn detach(mut self) -> v1::Grant {
        if let Some(task) = self.keep_alive.take() {
            task.abort();
        }
        self.shared.done.store(true, Ordering::Release);
        self.shared.grant.clone()
    }

    /// Extends the lease to `ttl` from now.
    pub async fn extend(&self, ttl: Duration) -> Result<v1::ExtendResponse, Status> {
        extend(&self.shared, ttl).await
    }

    /// Releases the lease and says whether it was still held.
    pub async fn release(mut self) -> Result<v1::ReleaseResponse, Status> {
        if let Some(task) = self.keep_alive.take() {
            task.abort();
        }
        self.shared.done.store(true, Ordering::Release);
        release(&self.shared).await
    }

    /// Extends the lease every `fraction` of its ttl (0.5: at half time)
    /// until it is released or dropped. The receiver gets a [`LeaseLost`]
    /// if the lease ends otherwise: the server refused an extension, or
    /// none got through before the lease stopped being valid.
    pub fn keep_alive(mut self, fraction: f64) -> (Lease, oneshot::Receiver<LeaseLost>) {
        let (tx, rx) = oneshot::channel();
        let ttl = Duration::from_millis(
            self.shared
                .grant
                .expires_at_ms
                .saturating_sub(self.shared.grant.granted_at_ms),
        );
        let period = ttl.mul_f64(fraction.clamp(0.05, 0.95));
        let shared = Arc::clone(&self.shared);
        self.keep_alive = Some(tokio::spawn(async move {
            let lost = |status| LeaseLost {
                lease_id: shared.grant.lease_id,
                status,
            };
            loop {
                tokio::time::sleep(period).await;
                let mut last = None;
                // Retry transport failures while the lease is still valid.
                while Instant::now() < *shared.valid_until.lock().expect("lease clock") {
                    match extend(&shared, ttl).await {
                        Ok(_) => {
                            last = None;
                            break;
                        }
                        Err(status) if crate::wire::error_detail(&status).is_some() => {
                            let _ = tx.send(lost(status));
                            return;
                        }
                        Err(status) => last = Some(status),
                    }
                }
                if let Some(status) = last {
                    let _ = tx.send(lost(status));
                    return;
                }
                if Instant::now() >= *shared.valid_until.lock().expect("lease clock") {
                    let _ = tx.send(lost(Status::deadline_exceeded(
                        "the lease expired on the client's clock before an extension got through",
                    )));
                    return;
                }
            }
        }));
        (self, rx)
    }
}

fn margin(client: &Client, ttl: Duration) -> Duration {
    let c = client.config();
    ttl.mul_f64(c.drift_fraction.clamp(0.0, 1.0)) + c.drift_floor + 2 * c.max_clock_offset
}

async fn extend(shared: &Shared, ttl: Duration) -> Result<v1::ExtendResponse, Status> {
    let sent_at = Instant::now();
    let reply = shared
        .client
        .extend(v1::ExtendRequest {
            scope: shared.scope.clone(),
            lease_id: shared.grant.lease_id,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            idempotency_key: String::new(),
        })
        .await?;
    let until = sent_at + ttl.saturating_sub(margin(&shared.client, ttl));
    let mut valid_until = shared.valid_until.lock().expect("lease clock");
    if until > *valid_until {
        *valid_until = until;
    }
    Ok(reply)
}

async fn release(shared: &Shared) -> Result<v1::ReleaseResponse, Status> {
    shared
        .client
        .release(v1::ReleaseRequest {
            scope: shared.scope.clone(),
            lease_id: shared.grant.lease_id,
            idempotency_key: format!("release-{}", shared.grant.lease_id),
        })
        .await
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(task) = self.keep_alive.take() {
            task.abort();
        }
        if self.shared.done.swap(true, Ordering::AcqRel) {
            return;
        }
        // Best effort: without a runtime (or if it is shutting down) the
        // lease simply expires at its ttl.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let shared = Arc::clone(&self.shared);
            runtime.spawn(async move {
                if let Err(e) = release(&shared).await {
                    tracing::debug!(lease_id = shared.grant.lease_id, error = %e, "release on drop");
                }
            });
        }
    }
}
