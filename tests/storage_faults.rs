//! Fail-stop storage on real `leasehold serve` processes: a node whose
//! fsync or write fails exits with status 74 instead of serving on, the
//! others keep every acknowledged grant and serve, and once the fault is
//! cleared the node restarts and catches up. A power cut (every node
//! killed, its WAL cut back to what its syncs made durable, torn or not)
//! loses nothing acknowledged.
//!
//! Faults come through each node's `--unsafe-test-storage-faults` file; a
//! fault that is not injected shows as a node that never exits, which
//! fails the test.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use leasehold::proto::v1::acquire_response::Result as AcquireResult;
use leasehold::proto::v1::constraint::Kind;
use leasehold::proto::v1::{
    AcquireRequest, Concurrency, Constraint, ConstraintKind, Grant, InspectRequest,
};
use leasehold::raft::test_seam::{
    parse_wal_sync_record, torn_record, wal_records, WAL_HEADER_BYTES, WAL_SYNC_RECORD,
};
use leasehold::server::EXIT_STORAGE_FAULT;
use support::{
    assert_same_state, retry_transient, Cluster, ClusterConfig, CONVERGE_TIMEOUT, READY_TIMEOUT,
};

/// Deadline of one call from a test client.
const RPC_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a call is retried across a node's exit and a new election.
const RETRY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a node may keep running once its fault is armed and writes
/// reach it.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Leases outlive every test.
const LEASE_TTL_MS: u64 = 600_000;

/// Every grant of a test goes to this concurrency key of its scope, with
/// room for all of them.
const KEY: &str = "jobs";
const KEY_LIMIT: u32 = 100_000;

/// An acknowledged acquire: the request (to replay) and its grant.
struct Granted {
    request: AcquireRequest,
    grant: Grant,
}

fn acquire_request(scope: &str, idempotency_key: &str) -> AcquireRequest {
    AcquireRequest {
        scope: scope.into(),
        constraints: vec![Constraint {
            kind: Some(Kind::Concurrency(Concurrency {
                key: KEY.into(),
                limit: KEY_LIMIT,
            })),
        }],
        amount: 1,
        min_amount: None,
        lease_ttl_ms: LEASE_TTL_MS,
        max_lifetime_ms: None,
        idempotency_key: idempotency_key.into(),
        wait_ms: None,
        fairness_key: String::new(),
    }
}

/// Acquires through node `via`, retrying transient errors with the same
/// idempotency key; the grant it must get, and whether it was a replay.
async fn acquire(cluster: &Cluster, via: u64, request: AcquireRequest) -> (Granted, bool) {
    let what = format!("acquire {} through node {via}", request.idempotency_key);
    let client = cluster.client_with_timeout(via, RPC_TIMEOUT);
    let reply = retry_transient(&what, RETRY_TIMEOUT, || {
        let mut client = client.clone();
        let request = request.clone();
        async move { client.acquire(request).await }
    })
    .await
    .unwrap_or_else(|s| panic!("expected {what} to succeed, got {s}"));
    match reply.result {
        Some(AcquireResult::Granted(grant)) => (Granted { request, grant }, reply.replayed),
        other => panic!("expected {what} to be granted, got {other:?}"),
    }
}

/// One grant in each scope, through the nodes of `via` in turn.
async fn acquire_in_each(
    cluster: &Cluster,
    via: &[u64],
    scopes: &[String],
    tag: &str,
) -> Vec<Granted> {
    let mut granted = Vec::new();
    for (i, scope) in scopes.iter().enumerate() {
        let request = acquire_request(scope, &format!("{tag}-{i}"));
        granted.push(acquire(cluster, via[i % via.len()], request).await.0);
    }
    granted
}

/// Every grant is still held, with its expiry, and replaying its request
/// returns the same lease and fencing token: asked through each node of
/// `via`.
async fn assert_every_grant_kept(cluster: &Cluster, via: &[u64], granted: &[Granted]) {
    let mut by_scope: BTreeMap<&str, Vec<&Grant>> = BTreeMap::new();
    for g in granted {
        by_scope.entry(&g.request.scope).or_default().push(&g.grant);
    }
    for (i, (scope, grants)) in by_scope.iter().enumerate() {
        let node = via[i % via.len()];
        let what = format!("Inspect of {scope}/{KEY} through node {node}");
        let client = cluster.client_with_timeout(node, RPC_TIMEOUT);
        let inspect = retry_transient(&what, RETRY_TIMEOUT, || {
            let mut client = client.clone();
            let request = InspectRequest {
                scope: (*scope).into(),
                kind: ConstraintKind::Concurrency as i32,
                key: KEY.into(),
            };
            async move { client.inspect(request).await }
        })
        .await
        .unwrap_or_else(|s| panic!("expected {what} to succeed, got {s}"));
        let held: BTreeMap<u64, u64> = inspect
            .holders
            .iter()
            .map(|h| (h.lease_id, h.expires_at_ms))
            .collect();
        for grant in grants {
            assert_eq!(
                held.get(&grant.lease_id),
                Some(&grant.expires_at_ms),
                "expected acknowledged lease {} in {scope} to be held until {} ({what}); \
                 holders: {held:?}",
                grant.lease_id,
                grant.expires_at_ms
            );
        }
    }
    for (i, g) in granted.iter().enumerate() {
        let node = via[i % via.len()];
        let (replay, replayed) = acquire(cluster, node, g.request.clone()).await;
        assert!(
            replayed,
            "expected acquire {} replayed through node {node} to say replayed",
            g.request.idempotency_key
        );
        assert_eq!(
            (replay.grant.lease_id, replay.grant.fencing_token),
            (g.grant.lease_id, g.grant.fencing_token),
            "expected acquire {} replayed to return its lease and fencing token",
            g.request.idempotency_key
        );
    }
}

/// A new grant in each scope, through `via`, carries a fencing token above
/// every acknowledged one in that scope: no grant counter went back.
async fn assert_fencing_moves_on(cluster: &Cluster, via: &[u64], granted: &mut Vec<Granted>) {
    let mut highest: BTreeMap<String, u64> = BTreeMap::new();
    for g in granted.iter() {
        let top = highest.entry(g.request.scope.clone()).or_default();
        *top = (*top).max(g.grant.fencing_token);
    }
    for (i, (scope, top)) in highest.iter().enumerate() {
        let key = format!("next-{}-{}", granted.len(), i);
        let (next, _) = acquire(cluster, via[i % via.len()], acquire_request(scope, &key)).await;
        assert!(
            next.grant.fencing_token > *top,
            "expected a new grant in {scope} to have a fencing token above {top}, got {}",
            next.grant.fencing_token
        );
        granted.push(next);
    }
}

/// Acquires in `scope` through node `via`, one new idempotency key after
/// another, until node `victim` exits; keeps every grant. Its exit status.
async fn write_until_exit(
    cluster: &mut Cluster,
    victim: u64,
    via: u64,
    scope: &str,
    granted: &mut Vec<Granted>,
) -> ExitStatus {
    let deadline = Instant::now() + EXIT_TIMEOUT;
    for n in 0.. {
        if let Some(status) = cluster.exited(victim) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "expected node {victim} to exit on its storage fault within {EXIT_TIMEOUT:?} of \
             writes reaching it; it did {n} writes and runs on"
        );
        let request = acquire_request(scope, &format!("during-{n}"));
        granted.push(acquire(cluster, via, request).await.0);
    }
    unreachable!("the loop returns or panics")
}

/// Asserts the node exited with the storage fault status and logged the
/// fault, naming `cause`.
fn assert_fail_stopped(cluster: &Cluster, id: u64, status: ExitStatus, cause: &str) {
    assert_eq!(
        status.code(),
        Some(i32::from(EXIT_STORAGE_FAULT)),
        "expected node {id} to exit with status {EXIT_STORAGE_FAULT} on its storage fault, got {status}"
    );
    let log = cluster.log_text(id);
    let line = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("storage fault"))
        .unwrap_or_else(|| panic!("expected node {id} to log its storage fault at error level"));
    assert!(
        line.contains(cause),
        "expected node {id}'s storage fault to name `{cause}`: {line}"
    );
}

#[derive(Clone, Copy, Debug)]
enum Role {
    Leader,
    Follower,
}

/// A three-node cluster with grants in several scopes; `faults` armed on
/// the leader or a follower of the first scope's group, and writes sent to
/// that group through another node until the faulty one exits. Then the
/// other two serve and keep every grant; once the fault is cleared the
/// node restarts and catches up to the same state.
async fn a_fault_stops_one_node(faults: &str, role: Role, cause: &str) {
    let config = ClusterConfig {
        storage_faults: true,
        ..ClusterConfig::default()
    };
    let mut cluster = Cluster::start(config).await;
    let ids = cluster.ids();
    let scopes: Vec<String> = (0..6).map(|i| format!("faults-{i}")).collect();
    let mut granted = acquire_in_each(&cluster, &ids, &scopes, "before").await;

    let leader = cluster.leader_of(&scopes[0]).await;
    let victim = match role {
        Role::Leader => leader,
        Role::Follower => *ids.iter().find(|&&id| id != leader).expect("a follower"),
    };
    let survivors: Vec<u64> = ids.iter().copied().filter(|&id| id != victim).collect();
    cluster.set_storage_faults(victim, faults);
    let status =
        write_until_exit(&mut cluster, victim, survivors[0], &scopes[0], &mut granted).await;
    assert_fail_stopped(&cluster, victim, status, cause);

    assert_every_grant_kept(&cluster, &survivors, &granted).await;
    assert_fencing_moves_on(&cluster, &survivors, &mut granted).await;

    cluster.set_storage_faults(victim, "");
    cluster.restart(victim);
    cluster.wait_ready(victim, READY_TIMEOUT).await;
    let digests = cluster.wait_digests_converge(CONVERGE_TIMEOUT).await;
    assert_same_state(&digests, cluster.groups());
    assert_every_grant_kept(&cluster, &[victim], &granted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_fsync_error_on_a_follower_stops_it_and_the_others_keep_every_grant() {
    a_fault_stops_one_node("fsync=eio", Role::Follower, "WAL sync (fsync)").await;
}

/// Reported once, as a real fsync error is: the node must not carry on
/// though the next sync would succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_fsync_error_on_a_leader_stops_it_and_the_others_keep_every_grant() {
    a_fault_stops_one_node("fsync=eio once", Role::Leader, "WAL sync (fsync)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_on_a_follower_stops_it_and_the_others_keep_every_grant() {
    a_fault_stops_one_node("write=enospc", Role::Follower, "No space left on device").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_on_a_leader_stops_it_and_the_others_keep_every_grant() {
    a_fault_stops_one_node("write=enospc", Role::Leader, "No space left on device").await;
}

/// A lone node whose disk fills up does not stay ready while every
/// acquire times out: it exits, and once the disk has room a restart
/// serves again with everything it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_node_whose_disk_fills_exits_and_serves_again_once_freed() {
    let config = ClusterConfig {
        nodes: 1,
        groups: 1,
        storage_faults: true,
        ..ClusterConfig::default()
    };
    let mut cluster = Cluster::start(config).await;
    let scopes: Vec<String> = (0..4).map(|i| format!("lone-{i}")).collect();
    let mut granted = acquire_in_each(&cluster, &[1], &scopes, "before").await;

    cluster.set_storage_faults(1, "write=enospc");
    let mut unknown = Vec::new();
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let status = loop {
        if let Some(status) = cluster.exited(1) {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "expected the lone node to exit within {EXIT_TIMEOUT:?} of its disk filling up"
        );
        let request = acquire_request(&scopes[0], &format!("while-full-{}", unknown.len()));
        let mut client = cluster.client_with_timeout(1, RPC_TIMEOUT);
        match client
            .acquire(request.clone())
            .await
            .map(|r| r.into_inner())
        {
            // Before the fault was armed.
            Ok(reply) => match reply.result {
                Some(AcquireResult::Granted(grant)) => granted.push(Granted { request, grant }),
                other => panic!(
                    "expected {} granted, got {other:?}",
                    request.idempotency_key
                ),
            },
            // Cannot be made durable: its outcome is unknown to the caller.
            Err(_) => unknown.push(request),
        }
    };
    assert_fail_stopped(&cluster, 1, status, "No space left on device");
    assert!(
        !unknown.is_empty(),
        "expected an acquire to meet the full disk"
    );

    cluster.set_storage_faults(1, "");
    cluster.restart(1);
    cluster.wait_ready(1, READY_TIMEOUT).await;
    assert_every_grant_kept(&cluster, &[1], &granted).await;
    // A call whose outcome was unknown, retried with its key, is granted
    // once.
    for request in unknown {
        let (first, _) = acquire(&cluster, 1, request.clone()).await;
        let (again, replayed) = acquire(&cluster, 1, request).await;
        assert!(
            replayed && again.grant.lease_id == first.grant.lease_id,
            "expected the retried acquire to be granted once"
        );
        granted.push(first);
    }
    assert_fencing_moves_on(&cluster, &[1], &mut granted).await;
}

/// Each WAL file of a node's data directory, its length, and the length
/// its last sync made durable (0 for a file created since).
fn wal_files(dir: &Path) -> Vec<(std::path::PathBuf, u64, u64)> {
    let record = dir.join(WAL_SYNC_RECORD);
    let text = std::fs::read_to_string(&record).unwrap_or_else(|e| {
        panic!(
            "expected the node to have recorded its WAL syncs in {}: {e}",
            record.display()
        )
    });
    let synced: BTreeMap<String, u64> = parse_wal_sync_record(&text)
        .unwrap_or_else(|e| panic!("expected a readable {}: {e}", record.display()))
        .into_iter()
        .collect();
    assert!(!synced.is_empty(), "expected a WAL sync recorded: {text:?}");
    let mut wals = Vec::new();
    for entry in std::fs::read_dir(dir).expect("the data dir reads") {
        let entry = entry.expect("a directory entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".log") && name.starts_with(|c: char| c.is_ascii_digit()) {
            let len = entry.metadata().expect("a WAL's length").len();
            let keep = synced.get(&name).copied().unwrap_or(0);
            assert!(
                keep <= len,
                "expected WAL {name} to hold the {keep} bytes synced, it has {len}"
            );
            wals.push((entry.path(), len, keep));
        }
    }
    wals
}

/// WAL bytes a node has written past its last sync.
fn unsynced_bytes(dir: &Path) -> u64 {
    wal_files(dir).iter().map(|(_, len, keep)| len - keep).sum()
}

/// What a power cut leaves of a killed node's WAL at the least: every WAL
/// file cut back to the length its last sync made durable; `torn`, a
/// record cut off mid-way with a garbage body after that. Returns the
/// bytes cut.
fn power_cut(dir: &Path, torn: bool) -> u64 {
    let mut cut = 0;
    for (path, len, keep) in wal_files(dir) {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("the WAL opens");
        file.set_len(keep).expect("the WAL is cut");
        cut += len - keep;
        if torn {
            use std::io::{Seek, Write};
            file.seek(std::io::SeekFrom::End(0)).expect("seek");
            file.write_all(&torn_record(keep))
                .expect("the torn record is written");
        }
    }
    cut
}

/// Grants in many scopes; then, every node's WAL sync hanging, more
/// acquires until every node holds WAL bytes past its last sync; then
/// every node loses power at once: killed, its WAL cut back to what its
/// syncs made durable. Restarted, the cluster holds every acknowledged
/// grant with its fencing token, its replicas agree, and each acquire
/// whose outcome the cut left unknown is granted once when retried.
async fn power_cut_keeps_every_acknowledged_grant(torn: bool) {
    let config = ClusterConfig {
        storage_faults: true,
        ..ClusterConfig::default()
    };
    let mut cluster = Cluster::start(config).await;
    let ids = cluster.ids();
    let scopes: Vec<String> = (0..12).map(|i| format!("power-{i}")).collect();
    let mut granted = acquire_in_each(&cluster, &ids, &scopes, "acked").await;
    granted.extend(acquire_in_each(&cluster, &ids, &scopes, "acked-again").await);

    for &id in &ids {
        cluster.set_storage_faults(id, "fsync=hang");
    }
    for &id in &ids {
        cluster.wait_storage_faults_armed(id, READY_TIMEOUT).await;
    }
    let mut in_flight = Vec::new();
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while !ids
        .iter()
        .all(|&id| unsynced_bytes(&cluster.data_dir(id)) > 0)
    {
        assert!(
            Instant::now() < deadline,
            "expected every node to hold unsynced WAL bytes within {EXIT_TIMEOUT:?} of its \
             syncs hanging"
        );
        let n = in_flight.len();
        let request = acquire_request(&scopes[n % scopes.len()], &format!("in-flight-{n}"));
        let mut client = cluster.client_with_timeout(ids[n % ids.len()], RETRY_TIMEOUT);
        let sent = request.clone();
        let call = tokio::spawn(async move { client.acquire(sent).await });
        in_flight.push((request, call));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for &id in &ids {
        cluster.kill(id);
    }
    // A call answered before the cut was acknowledged; the others were
    // cut off with their node.
    let mut unknown = Vec::new();
    for (request, call) in in_flight {
        match call
            .await
            .expect("an in-flight call ends")
            .map(|r| r.into_inner())
        {
            Ok(reply) => match reply.result {
                Some(AcquireResult::Granted(grant)) => granted.push(Granted { request, grant }),
                other => panic!(
                    "expected {} granted, got {other:?}",
                    request.idempotency_key
                ),
            },
            Err(_) => unknown.push(request),
        }
    }
    for &id in &ids {
        let cut = power_cut(&cluster.data_dir(id), torn);
        assert!(
            cut > 0,
            "expected unsynced WAL bytes of node {id} to be cut"
        );
    }
    for &id in &ids {
        cluster.set_storage_faults(id, "");
        cluster.restart(id);
    }
    for &id in &ids {
        cluster.wait_ready(id, READY_TIMEOUT).await;
    }

    assert_every_grant_kept(&cluster, &ids, &granted).await;
    assert!(
        !unknown.is_empty(),
        "expected acquires in flight at the power cut"
    );
    for (i, request) in unknown.into_iter().enumerate() {
        let (first, _) = acquire(&cluster, ids[i % ids.len()], request.clone()).await;
        let (again, replayed) = acquire(&cluster, ids[(i + 1) % ids.len()], request).await;
        assert!(
            replayed && again.grant.lease_id == first.grant.lease_id,
            "expected an acquire in flight at the power cut, retried, to be granted once"
        );
        granted.push(first);
    }
    assert_fencing_moves_on(&cluster, &ids, &mut granted).await;
    let digests = cluster.wait_digests_converge(CONVERGE_TIMEOUT).await;
    assert_same_state(&digests, cluster.groups());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_of_every_node_keeps_every_acknowledged_grant() {
    power_cut_keeps_every_acknowledged_grant(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_tearing_every_wal_tail_keeps_every_acknowledged_grant() {
    power_cut_keeps_every_acknowledged_grant(true).await;
}

/// Flips a byte in the body of a record in the middle of what a killed
/// node's last WAL sync made durable: damage to synced writes.
fn corrupt_a_synced_record(dir: &Path) {
    let (path, _, synced) = wal_files(dir)
        .into_iter()
        .filter(|(_, _, synced)| *synced > 0)
        .max()
        .expect("a WAL with synced bytes");
    let mut bytes = std::fs::read(&path).expect("the WAL reads");
    let records = wal_records(&bytes[..synced as usize]);
    assert!(
        records.len() >= 4,
        "expected synced records to corrupt in {}: {records:?}",
        path.display()
    );
    let (at, length) = records[records.len() / 2];
    bytes[(at + WAL_HEADER_BYTES + length / 2) as usize] ^= 0x40;
    std::fs::write(&path, bytes).expect("the WAL is written");
}

/// A node whose synced WAL was damaged while it was down refuses to start
/// on it, with status 74, instead of opening without what followed the
/// damage; the others serve on. Started on an empty data directory (the
/// damaged one moved aside), it rejoins and catches up from its peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_synced_wal_is_damaged_refuses_to_start_and_rejoins_empty() {
    let config = ClusterConfig {
        storage_faults: true,
        ..ClusterConfig::default()
    };
    let mut cluster = Cluster::start(config).await;
    let ids = cluster.ids();
    let scopes: Vec<String> = (0..6).map(|i| format!("damaged-{i}")).collect();
    let mut granted = acquire_in_each(&cluster, &ids, &scopes, "before").await;
    let (victim, survivors) = (3, [1, 2]);

    cluster.kill(victim);
    corrupt_a_synced_record(&cluster.data_dir(victim));
    cluster.restart(victim);
    let status = cluster.wait_exit(victim, READY_TIMEOUT).await;
    assert_eq!(
        status.code(),
        Some(i32::from(EXIT_STORAGE_FAULT)),
        "expected node {victim} to refuse its damaged WAL with status {EXIT_STORAGE_FAULT}, got {status}"
    );
    let log = cluster.log_text(victim);
    assert!(
        log.lines()
            .any(|l| l.contains("is damaged; refusing to start") && l.contains("Corruption")),
        "expected node {victim} to say its data directory is damaged"
    );
    assert_every_grant_kept(&cluster, &survivors, &granted).await;
    assert_fencing_moves_on(&cluster, &survivors, &mut granted).await;

    let data_dir = cluster.data_dir(victim);
    std::fs::rename(&data_dir, data_dir.with_extension("damaged"))
        .expect("the damaged data dir moves aside");
    cluster.restart(victim);
    cluster.wait_ready(victim, READY_TIMEOUT).await;
    let digests = cluster.wait_digests_converge(CONVERGE_TIMEOUT).await;
    assert_same_state(&digests, cluster.groups());
    assert_every_grant_kept(&cluster, &[victim], &granted).await;
}
