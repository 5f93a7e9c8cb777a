//! The operator's subcommands (`leasehold acquire`, `inspect`, `status`,
//! ...) run as a person would run them, against a real three-node cluster:
//! what they print, in tables and as JSON, and how they exit.

mod support;

use std::process::Output;

use serde_json::Value;
use support::{leasehold_command, Cluster, ClusterConfig};

/// Runs `leasehold ARGS` against `nodes` and returns what it printed.
fn run(nodes: &str, args: &[&str]) -> Output {
    leasehold_command()
        .args(args)
        .args(["--nodes", nodes])
        .output()
        .expect("the leasehold binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs a command that must succeed (exit 0) and returns its stdout.
fn ok(nodes: &str, args: &[&str]) -> String {
    let output = run(nodes, args);
    assert_eq!(
        output.status.code(),
        Some(0),
        "leasehold {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

fn ok_json(nodes: &str, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let text = ok(nodes, &args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_acquires_inspects_releases_and_surveys() {
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let nodes = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.grpc_addr(id).to_string())
        .collect::<Vec<_>>();
    let seeds = nodes.join(",");
    let acquire = [
        "acquire",
        "cli-acct",
        "--concurrency",
        "jobs=1",
        "--ttl-ms",
        "60000",
    ];

    // A CLI-acquired lease outlives the command that acquired it.
    let grant = ok_json(&seeds, &acquire);
    assert_eq!(grant["result"], "granted", "{grant}");
    let lease_id = grant["lease_id"].as_u64().expect("a numeric lease id");
    assert!(lease_id > 0);
    assert_eq!(grant["usage"][0]["used"], 1);

    let second = run(&seeds, &acquire);
    assert_eq!(second.status.code(), Some(0), "a denial is not an error");
    let text = stdout(&second);
    assert!(text.contains("denied"), "{text}");
    assert!(text.contains("concurrency  jobs"), "{text}");
    // An attempt under the operator's own key: its denial stands for that
    // key, also once capacity frees (below).
    let keyed = [&acquire[..], &["--idempotency-key", "cli-attempt"]].concat();
    let text = ok(&seeds, &keyed);
    assert!(
        text.contains("denied") && text.contains("new --idempotency-key"),
        "{text}"
    );

    let text = ok(&seeds, &["inspect", "cli-acct", "concurrency", "jobs"]);
    assert!(text.contains("used 1 of 1"), "{text}");
    assert!(text.contains(&lease_id.to_string()), "{text}");
    assert!(text.contains(" UTC"), "{text}");
    let inspected = ok_json(&seeds, &["inspect", "cli-acct", "concurrency", "jobs"]);
    assert_eq!(inspected["holders"][0]["lease_id"], lease_id, "{inspected}");

    let check = ok_json(&seeds, &["check", "cli-acct", "--concurrency", "jobs=2"]);
    assert_eq!(check["grantable_amount"], 1, "{check}");

    let id = lease_id.to_string();
    let text = ok(&seeds, &["extend", "cli-acct", &id, "--ttl-ms", "30000"]);
    assert!(text.contains("extended"), "{text}");
    let text = ok(&seeds, &["release", "cli-acct", &id]);
    assert!(text.contains("was held"), "{text}");
    let text = ok(&seeds, &["release", "cli-acct", &id]);
    assert!(text.contains("was not held"), "{text}");
    let text = ok(&seeds, &keyed);
    assert!(text.contains("denied"), "the key's denial stands: {text}");
    assert!(stdout(&run(&seeds, &acquire)).contains("granted"));

    // An operator pauses the key: acquires are denied as paused, Inspect
    // shows it; resume and pin a limit; bad input names its field.
    let text = ok(&seeds, &["pause", "cli-acct", "concurrency", "jobs"]);
    assert!(text.contains("pause applied"), "{text}");
    assert!(text.contains("paused: no new grants"), "{text}");
    let denied = ok(&seeds, &["acquire", "cli-acct", "--concurrency", "jobs=5"]);
    assert!(
        denied.contains("denied") && denied.contains("0 (paused)"),
        "{denied}"
    );
    let inspected = ok_json(&seeds, &["inspect", "cli-acct", "concurrency", "jobs"]);
    assert_eq!(inspected["admin"]["paused"], true, "{inspected}");
    let resumed = ok_json(&seeds, &["resume", "cli-acct", "concurrency", "jobs"]);
    assert_eq!(resumed["admin"]["paused"], false, "{resumed}");
    let pinned = ok_json(&seeds, &["pin", "cli-acct", "--concurrency", "jobs=1"]);
    assert_eq!(pinned["admin"]["pinned"], "concurrency jobs=1", "{pinned}");
    let text = ok(&seeds, &["inspect", "cli-acct", "concurrency", "jobs"]);
    assert!(
        text.contains("used 1 of 1") && text.contains("pinned: concurrency jobs=1"),
        "{text}"
    );
    let denied = ok_json(&seeds, &["acquire", "cli-acct", "--concurrency", "jobs=5"]);
    assert_eq!(denied["result"], "denied", "the pin of 1 rules: {denied}");
    let text = ok(&seeds, &["unpin", "cli-acct", "concurrency", "jobs"]);
    assert!(text.contains("not paused, no limit pinned"), "{text}");
    let text = ok(&seeds, &["reset", "cli-acct", "concurrency", "jobs"]);
    assert!(text.contains("reset applied"), "{text}");
    let text = ok(&seeds, &["inspect", "cli-acct", "concurrency", "jobs"]);
    assert!(
        text.contains("no state"),
        "reset forgets the holder: {text}"
    );
    let bad = run(&seeds, &["pin", "cli-acct", "--concurrency", "jobs=0"]);
    assert_eq!(bad.status.code(), Some(1), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("INVALID_ARGUMENT") && stderr(&bad).contains("pin.concurrency.limit"),
        "{}",
        stderr(&bad)
    );

    let capacity = ok_json(&seeds, &["set-capacity", "cli-acct", "gpu", "4"]);
    assert_eq!(capacity["capacity"], 4);
    let capacity = ok_json(&seeds, &["adjust-capacity", "cli-acct", "gpu", "-1"]);
    assert_eq!(capacity["capacity"], 3);

    let text = ok(&seeds, &["slots"]);
    assert!(
        text.contains("1024 slots in 4 groups, hash xxh64-seed0-mod"),
        "{text}"
    );
    // A row per group: its id, its share of the 1024 slots, its range.
    for (group, range) in ["0-255", "256-511", "512-767", "768-1023"]
        .iter()
        .enumerate()
    {
        let row = format!("{group} 256 {range}");
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().take(3).eq(row.split_whitespace())),
            "expected a row starting {row:?}: {text}"
        );
    }
    for address in &nodes {
        assert!(text.contains(address.as_str()), "{text}");
    }
    let map = ok_json(&seeds, &["slots"]);
    assert_eq!(map["groups"].as_array().map(Vec::len), Some(4));
    assert_eq!(map["slot_ranges"].as_array().map(Vec::len), Some(4));
    assert_eq!(map["slot_count"], 1024);
    assert_eq!(map["nodes"].as_array().map(Vec::len), Some(3));

    // One seed is enough to find every node.
    let text = ok(&nodes[0], &["status"]);
    let reachable_rows = text.lines().filter(|l| l.contains(" reachable ")).count();
    assert_eq!(reachable_rows, 3, "{text}");
    assert!(!text.contains("UNREACHABLE"), "{text}");
    let status = ok_json(&nodes[0], &["status"]);
    let reachable = status["nodes"].as_array().expect("a node list");
    assert_eq!(reachable.len(), 3, "{status}");
    assert!(reachable.iter().all(|n| n["reachable"] == true), "{status}");
    assert!(
        reachable.iter().all(|n| n["all_leaders_known"] == true),
        "{status}"
    );
}

#[test]
fn a_malformed_constraint_is_a_usage_error_naming_its_flag() {
    let output = run("127.0.0.1:1", &["acquire", "acct", "--concurrency", "jobs"]);
    assert_eq!(output.status.code(), Some(2));
    let text = stderr(&output);
    assert!(text.contains("--concurrency"), "{text}");
    assert!(text.contains("KEY=LIMIT"), "{text}");

    let output = run("127.0.0.1:1", &["acquire", "acct"]);
    assert_eq!(output.status.code(), Some(2), "a constraint is required");
}

#[test]
fn an_unreachable_cluster_exits_3() {
    for args in [&["slots"][..], &["release", "acct", "1"]] {
        let output = run("127.0.0.1:1", args);
        assert_eq!(
            output.status.code(),
            Some(3),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(stderr(&output).starts_with("leasehold: UNAVAILABLE: "));
    }
}

#[test]
fn help_documents_exit_codes() {
    let text = stdout(&leasehold_command().arg("--help").output().expect("runs"));
    assert!(text.contains("Exit codes:"), "{text}");
    assert!(text.contains("acquire"), "{text}");
}
