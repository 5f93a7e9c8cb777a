//! TLS, mutual TLS and tokens on real nodes, with certificates made by
//! `leasehold cert` and tokens by `leasehold token new`:
//!
//! - the client port speaks TLS only, and serves a call only with a known
//!   token holding the call's right on its scope; denied calls change no
//!   state;
//! - the peer port takes members only: a certificate the CA did not sign
//!   for a member's host is refused at the handshake;
//! - certificates and tokens are re-read without a restart (file change,
//!   SIGHUP), the peer certificate for dialling peers as for listening;
//! - a node on an address other than loopback refuses to start open
//!   unless told `--insecure`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use leasehold::proto::peer::peer_client::PeerClient;
use leasehold::proto::peer::ClockRequest;
use leasehold::proto::v1::acquire_response::Result as AcquireResult;
use leasehold::proto::v1::leasehold_client::LeaseholdClient;
use leasehold::proto::v1::{
    self, AdminKeyRequest, ConstraintKind, GetNodeDigestRequest, GetSlotMapRequest, KeyAction,
};
use support::{channel, concurrency_acquire, leasehold_command, Cluster, ClusterConfig};
use tempfile::TempDir;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

const RPC_TIMEOUT: Duration = Duration::from_secs(3);
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `leasehold <args>`, expecting success; its stdout.
fn leasehold(args: &[&str]) -> String {
    let output = leasehold_command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("leasehold runs");
    assert!(
        output.status.success(),
        "expected `leasehold {}` to succeed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// A CA in a directory of its own, with the certificates it issued.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("a temp dir");
        leasehold(&["cert", "ca", "--dir", &dir.path().display().to_string()]);
        Pki { dir }
    }

    /// Issues `name`, valid for `hosts` (none: a client certificate).
    fn issue(&self, name: &str, hosts: &[&str]) -> (PathBuf, PathBuf) {
        let dir = self.dir.path().display().to_string();
        let mut args = vec!["cert", "issue", "--dir", &dir, "--name", name];
        let hosts = hosts.join(",");
        if !hosts.is_empty() {
            args.extend(["--host", &hosts]);
        }
        leasehold(&args);
        (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}-key.pem")),
        )
    }

    fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

const ROLES: &str = r#"
[roles.tenant-a]
grants = [{ prefix = "a/", rights = ["lease", "inspect"] }]

[roles.operator]
grants = [{ prefix = "", rights = ["lease", "inspect", "capacity", "admin", "cluster"] }]
"#;

/// A tokens file with [`ROLES`]; tokens are added with [`new_token`].
fn tokens_file(dir: &Path) -> PathBuf {
    let path = dir.join("tokens.toml");
    std::fs::write(&path, ROLES).expect("write the tokens file");
    path
}

/// `leasehold token new`, appended to `file`; the token.
fn new_token(file: &Path, name: &str, role: &str) -> String {
    let file = file.display().to_string();
    let out = leasehold(&[
        "token", "new", "--name", name, "--role", role, "--append", &file,
    ]);
    out.trim().to_string()
}

/// `serve` flags for TLS on both ports, with `node` as each port's
/// certificate, and tokens from `tokens`.
fn secure_args(pki: &Pki, node: &(PathBuf, PathBuf), tokens: &Path) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    vec![
        "--tls-cert-file".into(),
        path(&node.0),
        "--tls-key-file".into(),
        path(&node.1),
        "--peer-tls-cert-file".into(),
        path(&node.0),
        "--peer-tls-key-file".into(),
        path(&node.1),
        "--peer-tls-ca-file".into(),
        path(&pki.ca()),
        "--auth-tokens-file".into(),
        path(tokens),
    ]
}

/// A TLS channel to `addr` trusting `ca`, showing `identity` if given.
fn tls_channel(
    addr: impl std::fmt::Display,
    ca: &Path,
    identity: Option<&(PathBuf, PathBuf)>,
) -> Channel {
    let identity = identity.map(|(c, k)| (c.as_path(), k.as_path()));
    let tls = leasehold::tls::client_config(ca, identity, None).expect("readable PEM files");
    leasehold::tls::endpoint(&addr.to_string(), Some(&tls))
        .expect("a valid URI and a TLS config tonic takes")
        .connect_timeout(Duration::from_millis(500))
        .timeout(RPC_TIMEOUT)
        .connect_lazy()
}

/// `message` with `token` as its bearer token.
fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ASCII"),
    );
    request
}

fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, what: &str) -> Status {
    match result {
        Err(status) if status.code() == code => status,
        other => panic!("expected {what} to fail with {code:?}, got {other:?}"),
    }
}

fn reset(scope: &str, key: &str, idem: &str) -> AdminKeyRequest {
    AdminKeyRequest {
        scope: scope.into(),
        kind: ConstraintKind::Concurrency as i32,
        key: key.into(),
        action: KeyAction::Reset as i32,
        pin: None,
        idempotency_key: idem.into(),
    }
}

/// The last applied index of every group node `id` hosts, as read with
/// the operator's token.
async fn applied(client: &mut LeaseholdClient<Channel>, ops: &str) -> Vec<(u32, u64)> {
    let digest = client
        .get_node_digest(with_token(GetNodeDigestRequest {}, ops))
        .await
        .expect("the operator reads a node digest");
    let mut groups: Vec<_> = digest
        .into_inner()
        .groups
        .iter()
        .map(|g| (g.group_id, g.last_applied_index))
        .collect();
    groups.sort_unstable();
    groups
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_tokens_guard_every_client_call() {
    let pki = Pki::new();
    let node_cert = pki.issue("node", &["127.0.0.1", "localhost"]);
    let tokens = tokens_file(pki.dir.path());
    let worker = new_token(&tokens, "worker-a", "tenant-a");
    let ops = new_token(&tokens, "ops", "operator");
    let cluster = Cluster::start(ClusterConfig {
        extra_args: secure_args(&pki, &node_cert, &tokens),
        ..ClusterConfig::default()
    })
    .await;
    let ca = pki.ca();
    let tls = |id| LeaseholdClient::new(tls_channel(cluster.grpc_addr(id), &ca, None));

    // Plaintext is not served at all.
    let plain = LeaseholdClient::new(channel(cluster.grpc_addr(1), RPC_TIMEOUT))
        .get_slot_map(GetSlotMapRequest {})
        .await;
    assert!(
        plain.is_err(),
        "expected plaintext to be refused, got {plain:?}"
    );

    // TLS without a token, or with one the node does not know.
    let status = expect_code(
        tls(1).get_slot_map(GetSlotMapRequest {}).await,
        Code::Unauthenticated,
        "GetSlotMap without a token",
    );
    assert!(status.message().contains("Bearer"), "{status}");
    let request = concurrency_acquire("a/jobs", "k", 5, "no-token", 30_000, None);
    expect_code(
        tls(1).acquire(request.clone()).await,
        Code::Unauthenticated,
        "Acquire without a token",
    );
    let stranger = leasehold::auth::new_token();
    expect_code(
        tls(1).acquire(with_token(request, &stranger)).await,
        Code::Unauthenticated,
        "Acquire with an unknown token",
    );

    // The worker acquires under its prefix on every node: followers
    // forward to the leader over the peer port's mutual TLS.
    let mut leaders = Vec::new();
    for id in cluster.ids() {
        let request = concurrency_acquire("a/jobs", "k", 5, &format!("w-{id}"), 30_000, None);
        let reply = tls(id).acquire(with_token(request, &worker)).await;
        let reply = reply
            .unwrap_or_else(|s| panic!("expected the worker's acquire on node {id}: {s}"))
            .into_inner();
        assert!(
            matches!(reply.result, Some(AcquireResult::Granted(_))),
            "expected a grant through node {id}, got {reply:?}"
        );
        leaders.push(reply.served_by.expect("served_by").leader_node_id);
    }
    assert!(
        leaders.windows(2).all(|w| w[0] == w[1]),
        "expected one leader to serve every acquire, got {leaders:?}"
    );

    // Outside its prefix, and past its rights, it is refused by name, and
    // nothing it asked for is applied.
    let leader = leaders[0];
    let mut ops_client = tls(leader);
    let before = applied(&mut ops_client, &ops).await;
    for id in cluster.ids() {
        let request = concurrency_acquire("b/jobs", "k", 5, &format!("b-{id}"), 30_000, None);
        let status = expect_code(
            tls(id).acquire(with_token(request, &worker)).await,
            Code::PermissionDenied,
            "the worker's acquire on scope b/jobs",
        );
        assert!(
            status.message().contains("\"worker-a\"")
                && status.message().contains("`lease`")
                && status.message().contains("\"b/jobs\""),
            "expected the refusal to name the token, the right and the scope: {status}"
        );
        let status = expect_code(
            tls(id)
                .admin_key(with_token(reset("a/jobs", "k", "w-reset"), &worker))
                .await,
            Code::PermissionDenied,
            "the worker's reset",
        );
        assert!(status.message().contains("`admin`"), "{status}");
        let status = expect_code(
            tls(id)
                .get_node_digest(with_token(GetNodeDigestRequest {}, &worker))
                .await,
            Code::PermissionDenied,
            "the worker's GetNodeDigest",
        );
        assert!(status.message().contains("`cluster`"), "{status}");
    }
    assert_eq!(
        applied(&mut ops_client, &ops).await,
        before,
        "expected refused calls to leave every group's log as it was"
    );

    // The worker may inspect its own keys; the operator may reset them.
    let inspect = v1::InspectRequest {
        scope: "a/jobs".into(),
        kind: ConstraintKind::Concurrency as i32,
        key: "k".into(),
    };
    let seen = tls(1)
        .inspect(with_token(inspect, &worker))
        .await
        .expect("the worker inspects a/jobs")
        .into_inner();
    assert_eq!(seen.used, 3);
    tls(2)
        .admin_key(with_token(reset("a/jobs", "k", "ops-reset"), &ops))
        .await
        .expect("the operator resets a/jobs");

    // The Rust client and the CLI speak TLS with a token too.
    let seeds = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.grpc_addr(id).to_string());
    let mut config = leasehold::client::ClientConfig::new(seeds);
    config.tls = Some(leasehold::client::ClientTls::new(&ca));
    config.token = Some(worker.clone());
    let client = leasehold::client::Client::connect(config)
        .await
        .expect("the Rust client connects over TLS with a token");
    let map = client.slot_map().await.expect("a slot map over TLS");
    assert_eq!(map.slot_count, 1024);

    let nodes = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.grpc_addr(id).to_string())
        .collect::<Vec<_>>()
        .join(",");
    let ca_arg = ca.display().to_string();
    let status = leasehold(&[
        "status", "--json", "--nodes", &nodes, "--tls-ca", &ca_arg, "--token", &ops,
    ]);
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    assert_eq!(
        status["nodes"].as_array().map(Vec::len),
        Some(3),
        "expected `leasehold status` to reach every node over TLS: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_takes_members_only() {
    let pki = Pki::new();
    let node_cert = pki.issue("node", &["127.0.0.1"]);
    let outsider = pki.issue("outsider", &["outsider.invalid"]);
    let client_only = pki.issue("client", &[]);
    let other_pki = Pki::new();
    let impostor = other_pki.issue("impostor", &["127.0.0.1"]);
    let tokens = tokens_file(pki.dir.path());
    let cluster = Cluster::start(ClusterConfig {
        nodes: 3,
        extra_args: secure_args(&pki, &node_cert, &tokens),
        ..ClusterConfig::default()
    })
    .await;
    let peer = cluster.peer_addr(1);
    let clock = |channel| async move { PeerClient::new(channel).clock(ClockRequest {}).await };

    let refused = [
        ("plaintext", channel(peer, RPC_TIMEOUT)),
        (
            "TLS without a certificate",
            tls_channel(peer, &pki.ca(), None),
        ),
        (
            "a certificate the CA signed for a host that is no member's",
            tls_channel(peer, &pki.ca(), Some(&outsider)),
        ),
        (
            "a client certificate naming no host",
            tls_channel(peer, &pki.ca(), Some(&client_only)),
        ),
        (
            "a certificate for a member's host from another CA",
            tls_channel(peer, &pki.ca(), Some(&impostor)),
        ),
    ];
    for (what, channel) in refused {
        let result = clock(channel).await;
        assert!(
            result.is_err(),
            "expected the peer port to refuse {what}, got {result:?}"
        );
    }
    let failures = support::metric_sum(
        &cluster.metrics(1).await,
        "leasehold_tls_handshake_failures_total",
    );
    assert!(
        failures >= 4.0,
        "expected the refusals to happen at the TLS handshake, counted {failures}"
    );

    let member = clock(tls_channel(peer, &pki.ca(), Some(&node_cert))).await;
    let member = member.expect("a member's certificate reaches the peer port");
    assert!(member.into_inner().wall_ms > 0);
}

/// Writes `text` to `path` through a rename, as certificate tools do.
fn replace(path: &Path, text: &[u8]) {
    let staged = path.with_extension("new");
    std::fs::write(&staged, text).expect("write");
    std::fs::rename(&staged, path).expect("rename");
}

/// Polls `ok` until it holds, for [`RELOAD_TIMEOUT`].
async fn eventually<F, Fut>(what: &str, mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    loop {
        match ok().await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => {
                panic!("expected {what} within {RELOAD_TIMEOUT:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_tokens_are_reread_without_a_restart() {
    let old_pki = Pki::new();
    let new_pki = Pki::new();
    let old_cert = old_pki.issue("node", &["127.0.0.1"]);
    let new_cert = new_pki.issue("node", &["127.0.0.1"]);
    // The node reads its certificate from files of its own.
    let files = tempfile::tempdir().expect("a temp dir");
    let (cert, key) = (
        files.path().join("node.pem"),
        files.path().join("node-key.pem"),
    );
    std::fs::copy(&old_cert.0, &cert).unwrap();
    std::fs::copy(&old_cert.1, &key).unwrap();
    let tokens = tokens_file(files.path());
    let first = new_token(&tokens, "first", "operator");
    let cluster = Cluster::start(ClusterConfig {
        nodes: 1,
        groups: 1,
        extra_args: secure_args(&old_pki, &(cert.clone(), key.clone()), &tokens),
        ..ClusterConfig::default()
    })
    .await;
    let addr = cluster.grpc_addr(1);
    let map = |ca: PathBuf, token: String| async move {
        LeaseholdClient::new(tls_channel(addr, &ca, None))
            .get_slot_map(with_token(GetSlotMapRequest {}, &token))
            .await
            .map(|_| ())
            .map_err(|s| s.to_string())
    };
    map(old_pki.ca(), first.clone())
        .await
        .expect("a client trusting the first CA connects");

    // Rotation: new certificate and key, from another CA.
    replace(&key, &std::fs::read(&new_cert.1).unwrap());
    replace(&cert, &std::fs::read(&new_cert.0).unwrap());
    eventually("the new certificate to be served", || {
        map(new_pki.ca(), first.clone())
    })
    .await;
    let stale = map(old_pki.ca(), first.clone()).await;
    assert!(
        stale.is_err(),
        "expected a new connection trusting only the old CA to fail"
    );

    // A token added to the file is taken once the file changes.
    let second = new_token(&tokens, "second", "operator");
    eventually("the added token to be accepted", || {
        map(new_pki.ca(), second.clone())
    })
    .await;

    // A change the file watch cannot see (same length, same mtime) is
    // taken on SIGHUP.
    let text = std::fs::read_to_string(&tokens).unwrap();
    let modified = std::fs::metadata(&tokens).unwrap().modified().unwrap();
    let third = leasehold::auth::new_token();
    let old_digest = leasehold::auth::hex(&leasehold::auth::digest(&second));
    let new_digest = leasehold::auth::hex(&leasehold::auth::digest(&third));
    std::fs::write(&tokens, text.replace(&old_digest, &new_digest)).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&tokens)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        map(new_pki.ca(), third.clone()).await.is_err(),
        "expected an unseen change to take no effect before SIGHUP"
    );
    cluster.hangup(1);
    eventually("SIGHUP to make the node re-read its tokens", || {
        map(new_pki.ca(), third.clone())
    })
    .await;
    let revoked = map(new_pki.ca(), second.clone()).await;
    assert!(
        revoked
            .is_err_and(|e| e.contains("Unauthenticated") || e.contains("not one this node knows")),
        "expected the replaced token to be refused"
    );
}

/// The peer certificates of every node rotated to another CA's, without a
/// restart: the nodes then dial each other with the new certificate and
/// trust the new CA, so a node restarted afterwards (which reads only the
/// new files) is reached by the others and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_certificates_are_rotated_without_a_restart() {
    let old_pki = Pki::new();
    let new_pki = Pki::new();
    let old_cert = old_pki.issue("node", &["127.0.0.1"]);
    let new_cert = new_pki.issue("node", &["127.0.0.1"]);
    // The nodes read their peer certificate and CA from files of their own.
    let files = tempfile::tempdir().expect("a temp dir");
    let (cert, key, ca) = (
        files.path().join("node.pem"),
        files.path().join("node-key.pem"),
        files.path().join("ca.pem"),
    );
    std::fs::copy(&old_cert.0, &cert).unwrap();
    std::fs::copy(&old_cert.1, &key).unwrap();
    std::fs::copy(old_pki.ca(), &ca).unwrap();
    let path = |p: &Path| p.display().to_string();
    let mut cluster = Cluster::start(ClusterConfig {
        nodes: 3,
        extra_args: vec![
            "--peer-tls-cert-file".into(),
            path(&cert),
            "--peer-tls-key-file".into(),
            path(&key),
            "--peer-tls-ca-file".into(),
            path(&ca),
        ],
        ..ClusterConfig::default()
    })
    .await;
    let reloads = |text: &str| support::metric_sum(text, "leasehold_reloads_total");
    let mut before = Vec::new();
    for id in cluster.ids() {
        before.push(reloads(&cluster.metrics(id).await));
    }

    replace(&ca, &std::fs::read(new_pki.ca()).unwrap());
    replace(&key, &std::fs::read(&new_cert.1).unwrap());
    replace(&cert, &std::fs::read(&new_cert.0).unwrap());
    for (id, before) in cluster.ids().into_iter().zip(before) {
        let cluster = &cluster;
        eventually(
            &format!("node {id} to re-read its peer certificate"),
            || async move {
                let now = reloads(&cluster.metrics(id).await);
                (now > before)
                    .then_some(())
                    .ok_or_else(|| format!("{now} reloads counted, {before} before"))
            },
        )
        .await;
    }

    // Node 3 goes down; every group takes writes without it; it comes back
    // with the new files only, and the leaders must dial it anew.
    cluster.kill(3);
    let client = cluster.client(1);
    for i in 0..24 {
        let name = format!("rotated-{i}");
        let request = concurrency_acquire(&name, "k", 10, &name, 60_000, None);
        support::retry_transient("an acquire while node 3 is down", RELOAD_TIMEOUT, || {
            let (mut client, request) = (client.clone(), request.clone());
            async move { client.acquire(request).await }
        })
        .await
        .expect("an acquire with two of three nodes up");
    }
    cluster.restart(3);
    cluster.wait_ready(3, RELOAD_TIMEOUT).await;
    let all = cluster.wait_digests_converge(RELOAD_TIMEOUT).await;
    support::assert_same_state(&all, cluster.groups());
}

#[test]
fn off_loopback_a_node_refuses_to_start_open() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let ports = support::free_ports(3);
    let args = |insecure: bool| {
        let mut args = vec![
            "serve".to_string(),
            format!("--grpc-addr=0.0.0.0:{}", ports[0].port()),
            format!("--peer-addr=127.0.0.1:{}", ports[1].port()),
            format!("--http-addr=127.0.0.1:{}", ports[2].port()),
            format!("--advertise-addr=127.0.0.1:{}", ports[0].port()),
            format!("--data-dir={}", dir.path().join("data").display()),
        ];
        if insecure {
            args.push("--insecure".into());
        }
        args
    };
    let refused = leasehold_command()
        .args(args(false))
        .stdin(Stdio::null())
        .output()
        .expect("leasehold runs");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("grpc_addr: `0.0.0.0:")
            && stderr.contains("tls_cert_file and tls_key_file and auth_tokens_file")
            && stderr.contains("--insecure"),
        "expected the refusal to name what is missing and the way out: {stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "expected nothing written by a node that refused to start"
    );

    let mut open = leasehold_command()
        .args(args(true))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("leasehold runs");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.path().join("data").exists() {
        assert!(
            open.try_wait().unwrap().is_none(),
            "expected an --insecure node to keep running"
        );
        assert!(
            Instant::now() < deadline,
            "expected the node to open its data dir"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    open.kill().unwrap();
    open.wait().unwrap();
}
