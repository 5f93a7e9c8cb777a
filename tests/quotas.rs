//! Per-scope quotas and the idempotency bound on a real three-node
//! cluster: a scope at a quota is refused with RESOURCE_EXHAUSTED
//! (`QUOTA_EXCEEDED`) and a message naming the quota, the scope and the
//! bound; other scopes go on; capacity comes back as leases end, keys go
//! idle, waiters leave and records pass their window; and the replicas,
//! which apply the quotas the leader stamped, end in the same state.
//!
//! Also measures what records cost in memory, the figures the defaults in
//! `limits.rs` are sized by.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use leasehold::client::{Acquire, Acquired, Client, Lease};
use leasehold::engine::{
    AcquireRequest, Attempt, Command, Constraint, Engine, EngineConfig, MemStore, Outcome,
    ReleaseRequest,
};
use leasehold::proto::v1::{self, ConstraintKind, InspectRequest};
use leasehold::slot::{lease_id, slot_of, SLOT_COUNT_DEFAULT};
use leasehold::wire::error_detail;
use support::{assert_same_state, Cluster, ClusterConfig};
use tonic::{Code, Status};

const CALL_TIMEOUT: Duration = Duration::from_secs(20);
const TTL: Duration = Duration::from_secs(60);

fn granted(acquired: Result<Acquired, Status>, what: &str) -> Lease {
    match acquired {
        Ok(Acquired::Granted(lease)) => lease,
        Ok(Acquired::Denied(d)) => panic!("expected {what} to be granted, got denied: {d:?}"),
        Err(e) => panic!("expected {what} to be granted, got {e}"),
    }
}

/// The refusal of a call past quota `setting`, whose message must name it,
/// with its bound, and the scope.
fn refused<T: std::fmt::Debug>(result: Result<T, Status>, setting: &str, bound: u64) -> Status {
    let status = match result {
        Err(status) => status,
        Ok(answer) => panic!("expected a refusal by {setting}, got {answer:?}"),
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
    let detail = error_detail(&status).expect("an error detail");
    assert_eq!(detail.code, "QUOTA_EXCEEDED", "{status}");
    assert!(
        status.message().contains(&format!("({setting} = {bound})")),
        "expected the message to name {setting} and its bound {bound}: {}",
        status.message()
    );
    status
}

async fn used(client: &Client, scope: &str, key: &str) -> u64 {
    client
        .inspect(InspectRequest {
            scope: scope.into(),
            kind: ConstraintKind::Concurrency as i32,
            key: key.into(),
        })
        .await
        .expect("inspect succeeds")
        .used
}

/// Every replica of every group holds the same state.
async fn replicas_agree(cluster: &Cluster) {
    let all = cluster.wait_digests_converge(Duration::from_secs(20)).await;
    assert_same_state(&all, cluster.groups());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_at_its_lease_quota_is_refused_by_name_and_others_go_on() {
    let cluster = Cluster::start(ClusterConfig {
        max_leases_per_scope: Some(3),
        ..ClusterConfig::default()
    })
    .await;
    let client = cluster.rust_client(CALL_TIMEOUT).await;
    let pool = |scope: &str, idem: &str| {
        Acquire::new(scope)
            .concurrency("pool", 100)
            .ttl(TTL)
            .idempotency_key(idem)
    };
    let mut held = Vec::new();
    for i in 0..3 {
        let lease = client.acquire(pool("tenant/a", &format!("a{i}"))).await;
        held.push(granted(lease, "a lease under the quota"));
    }

    let status = refused(
        client.acquire(pool("tenant/a", "a3")).await,
        "max_leases_per_scope",
        3,
    );
    assert!(
        status
            .message()
            .starts_with("scope \"tenant/a\" holds 3 live leases"),
        "{}",
        status.message()
    );
    assert_eq!(error_detail(&status).unwrap().field, "scope");
    assert_eq!(used(&client, "tenant/a", "pool").await, 3, "nothing spent");

    let other = granted(
        client.acquire(pool("tenant/b", "b0")).await,
        "another scope's lease",
    );

    // The refusal was not recorded: once a lease ends, the same call (same
    // idempotency key) is a fresh attempt, and is granted.
    held.pop().unwrap().release().await.expect("a release");
    let retried = granted(
        client.acquire(pool("tenant/a", "a3")).await,
        "the refused call, retried after a release",
    );
    assert!(!retried.replayed(), "a fresh grant, not a replay");
    held.push(retried);
    refused(
        client.acquire(pool("tenant/a", "a4")).await,
        "max_leases_per_scope",
        3,
    );

    for lease in held {
        lease.release().await.expect("a release");
    }
    other.release().await.expect("a release");
    replicas_agree(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_waiters_past_their_quotas_are_refused_until_room_returns() {
    let cluster = Cluster::start(ClusterConfig {
        max_keys_per_scope: Some(2),
        max_waiters_per_scope: Some(2),
        ..ClusterConfig::default()
    })
    .await;
    let client = cluster.rust_client(CALL_TIMEOUT).await;
    let scope = "tenant/keys";
    let on = |keys: &[&str]| {
        keys.iter().fold(Acquire::new(scope).ttl(TTL), |a, key| {
            a.concurrency(*key, 1)
        })
    };

    // Keys: two exist; a third may not be made, but the two may be used.
    let ab = granted(client.acquire(on(&["a", "b"])).await, "two keys");
    let status = refused(client.acquire(on(&["c"])).await, "max_keys_per_scope", 2);
    assert!(
        status.message().contains("holds 2 constraint keys"),
        "{}",
        status.message()
    );
    refused(
        client
            .set_capacity(v1::SetCapacityRequest {
                scope: scope.into(),
                key: "sem".into(),
                capacity: 5,
                idempotency_key: String::new(),
            })
            .await,
        "max_keys_per_scope",
        2,
    );
    granted(
        client
            .acquire(Acquire::new("tenant/other").concurrency("c", 1))
            .await,
        "a key of another scope",
    )
    .release()
    .await
    .expect("a release");

    // Waiters: two park on "a" (held); a third is refused at once.
    let waiting = || on(&["a"]).wait(Duration::from_secs(15));
    let mut waiters = Vec::new();
    for n in 1..=2 {
        // One at a time, so they park in this order.
        let waiter = client.clone();
        let request = waiting();
        waiters.push(tokio::spawn(async move { waiter.acquire(request).await }));
        until_parked(&client, scope, "a", n).await;
    }
    let started = Instant::now();
    let status = refused(client.acquire(waiting()).await, "max_waiters_per_scope", 2);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once, not after waiting"
    );
    assert_eq!(error_detail(&status).unwrap().field, "wait_ms");

    // Releasing "a" and "b" lets the first waiter in (it holds "a"), and
    // "b", idle, leaves room for a new key.
    ab.release().await.expect("a release");
    let first = waiters.remove(0);
    let mut leases = vec![granted(first.await.unwrap(), "the first waiter")];
    leases.push(granted(
        client.acquire(on(&["c"])).await,
        "a new key once another went idle",
    ));
    until_parked(&client, scope, "a", 1).await;
    for lease in leases {
        lease.release().await.expect("a release");
    }
    replicas_agree(&cluster).await;
}

/// Waits until the leader reports `n` acquires parked on `key`.
async fn until_parked(client: &Client, scope: &str, key: &str, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiters = client
            .inspect(InspectRequest {
                scope: scope.into(),
                kind: ConstraintKind::Concurrency as i32,
                key: key.into(),
            })
            .await
            .expect("inspect succeeds")
            .waiters;
        if waiters == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} waiters parked on {key}, Inspect says {waiters}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_at_its_idempotency_bound_refuses_new_calls_but_replays_and_releases() {
    const RECORDS: u64 = 8;
    const WINDOW: Duration = Duration::from_secs(1);
    let cluster = Cluster::start(ClusterConfig {
        groups: 1,
        max_idempotency_records_per_group: Some(RECORDS),
        dedup_window_ms: Some(WINDOW.as_millis() as u64),
        ..ClusterConfig::default()
    })
    .await;
    let client = cluster.rust_client(CALL_TIMEOUT).await;
    // Long enough that every lease outlives the calls up to the release.
    let call = |scope: &str, idem: &str| {
        Acquire::new(scope)
            .concurrency("k", 100)
            .ttl(Duration::from_secs(5))
            .idempotency_key(idem)
    };
    let mut held = Vec::new();
    for i in 0..RECORDS {
        let scope = format!("s{}", i % 3);
        held.push(granted(
            client.acquire(call(&scope, &format!("k{i}"))).await,
            "a call under the bound",
        ));
    }
    let status = refused(
        client.acquire(call("s9", "k-new")).await,
        "max_idempotency_records_per_group",
        RECORDS,
    );
    assert_eq!(error_detail(&status).unwrap().field, "idempotency_key");

    // What was recorded stays replayable.
    let replay = granted(client.acquire(call("s0", "k0")).await, "a replay");
    assert!(replay.replayed());
    assert_eq!(replay.lease_id(), held[0].lease_id());
    replay.detach();

    // A live lease can always be released.
    held.pop()
        .unwrap()
        .release()
        .await
        .expect("a release past the bound");

    // The released lease's records (its grant's and its release's) leave
    // the window after 1 s: new calls go through again.
    let deadline = Instant::now() + Duration::from_secs(30);
    let lease = loop {
        match client.acquire(call("s9", "k-new")).await {
            Ok(acquired) => break granted(Ok(acquired), "a call once records left"),
            Err(status) => {
                refused::<()>(Err(status), "max_idempotency_records_per_group", RECORDS);
                assert!(Instant::now() < deadline, "records never left the window");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(!lease.replayed());
    for lease in held {
        lease.detach();
    }
    lease.detach();
    replicas_agree(&cluster).await;
}

// ---------------------------------------------------------------------------
// What records cost in memory.
// ---------------------------------------------------------------------------

/// Counts the bytes the current thread holds, so a measurement on one
/// thread is not disturbed by the tests running beside it.
struct Counting;

thread_local! {
    static HELD_BYTES: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = HELD_BYTES.try_with(|held| held.set(held.get() + delta));
}

// SAFETY: every call is passed to the system allocator unchanged; the
// counting touches only a thread-local integer.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn held_bytes() -> isize {
    HELD_BYTES.with(Cell::get)
}

fn acquire(key: &str, limit: u32, idem: String) -> Command {
    Command::Acquire(AcquireRequest {
        scope: "acct".into(),
        constraints: vec![Constraint::Concurrency {
            key: key.into(),
            limit,
        }],
        amount: 1,
        min_amount: None,
        lease_ttl_ms: 60_000,
        max_lifetime_ms: None,
        idempotency_key: idem,
        attempt: Attempt::Final,
    })
}

/// Bytes per command that `commands` leave held in a fresh engine, at
/// `n` and at 1.5 `n` commands (hash tables hold between half and all of
/// their room used): the smaller and the larger.
fn bytes_per(n: usize, commands: impl Fn(&mut Engine<MemStore>, usize)) -> (usize, usize) {
    let at = |n: usize| {
        let mut engine = Engine::new(MemStore::new(), EngineConfig::default());
        commands(&mut engine, 0);
        let before = held_bytes();
        for i in 1..=n {
            commands(&mut engine, i);
        }
        let bytes = (held_bytes() - before) as usize / n;
        drop(engine);
        bytes
    };
    let (a, b) = (at(n), at(n + n / 2));
    (a.min(b), a.max(b))
}

/// Measures the memory an idempotency record, a lease and a key cost, and
/// holds them to the budgets the defaults in `limits.rs` assume.
#[test]
fn records_cost_what_the_quotas_assume() {
    const N: usize = 100_000;
    let applied =
        |e: &mut Engine<MemStore>, cmd: &Command| e.apply(1_000, cmd).expect("applies").outcome;
    // A denial's record: the key is full, every later acquire denied.
    let denial = bytes_per(N, |e, i| {
        let outcome = applied(e, &acquire("full", 1, format!("d{i}")));
        assert_eq!(matches!(outcome, Outcome::Denied(_)), i > 0);
    });
    // A release's record: lease 1 never existed after the first release.
    let release = bytes_per(N, |e, i| {
        if i == 0 {
            applied(e, &acquire("k", 1, "a".into()));
        }
        let cmd = Command::Release(ReleaseRequest {
            scope: "acct".into(),
            lease_id: lease_id(slot_of("acct", SLOT_COUNT_DEFAULT), 1),
            idempotency_key: format!("r{i}"),
        });
        applied(e, &cmd);
    });
    // A lease on a shared key, with its grant's record.
    let lease = bytes_per(N, |e, i| {
        applied(e, &acquire("shared", 1_000_000_000, format!("g{i}")));
    });
    // A lease on a key of its own, with its grant's record.
    let lease_and_key = bytes_per(N, |e, i| {
        applied(e, &acquire(&format!("key{i}"), 1, format!("g{i}")));
    });
    eprintln!(
        "bytes held per: denial record {denial:?}, release record {release:?}, \
         lease with its grant record {lease:?}, the same on a key of its own {lease_and_key:?}"
    );
    assert!(
        denial.1 <= 300 && release.1 <= 300,
        "a record costs more than limits.rs assumes"
    );
    assert!(lease.1 <= 700, "a lease costs more than limits.rs assumes");
    assert!(
        lease_and_key.1 - lease.1 <= 500,
        "a key costs more than limits.rs assumes"
    );
}
