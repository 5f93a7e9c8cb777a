//! The results file: every measured run and experiment, as JSON.

use serde::{Deserialize, Serialize};

use crate::load::Measured;
use crate::spec::Workload;
use crate::stats::Summary;
use crate::target::TargetKind;

/// One load run against one target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    /// Which part of the suite: "matrix", "open", "clients",
    /// "groups-slots".
    pub group: String,
    pub target: TargetKind,
    pub workload: Workload,
    /// "closed" or "open".
    pub mode: String,
    /// Closed loop: concurrent callers. Open loop: connections.
    pub clients: usize,
    /// Open loop: the arrival rate.
    pub rate_per_s: Option<f64>,
    /// Leasehold's Raft groups. Results from before hash slots say
    /// `partitions`: each partition was a Raft group of its own.
    #[serde(default, alias = "partitions")]
    pub groups: Option<u32>,
    /// Leasehold's hash slots.
    #[serde(default)]
    pub slots: Option<u32>,
    /// The measured window.
    pub seconds: f64,
    /// Granted acquires (and their releases, for lease workloads).
    pub cycles: u64,
    pub denied: u64,
    pub errors: u64,
    /// etcd: guarded txns that failed on a concurrent change and were retried.
    pub conflicts: u64,
    /// Open loop: cycles still unanswered when the run was cut off.
    pub unfinished: u64,
    /// Cycles per second; for the throttle workload, decisions (grants and
    /// denials) per second.
    pub throughput_per_s: f64,
    pub acquire: Summary,
    pub release: Option<Summary>,
    /// CPU time (user + system) of every server process, per cycle.
    pub server_cpu_us_per_op: f64,
    /// The same, per server process (Leasehold and etcd: node 1, 2, 3).
    #[serde(default)]
    pub server_cpu_us_per_op_by_process: Vec<f64>,
    /// CPU time of the load generator itself, per cycle.
    pub client_cpu_us_per_op: f64,
    /// Cache flushes the disk completed per second (one per fsync or
    /// fdatasync of any process), where the disk counts them.
    #[serde(default)]
    pub disk_flushes_per_s: Option<f64>,
    /// Leasehold: WAL syncs of all three nodes per second.
    #[serde(default)]
    pub wal_fsyncs_per_s: Option<f64>,
    /// Leasehold: Raft entries proposed per cycle, over every group.
    #[serde(default)]
    pub entries_per_op: Option<f64>,
    /// Leasehold: commands per proposed entry.
    #[serde(default)]
    pub commands_per_entry: Option<f64>,
    /// Cores' worth of CPU that every other process on the machine used
    /// over the window: neither the servers nor the load generator.
    #[serde(default)]
    pub other_cpu_cores: Option<f64>,
    pub first_error: Option<String>,
    /// Which round of the matrix.
    #[serde(default)]
    pub round: Option<usize>,
}

impl RunResult {
    pub fn new(
        group: &str,
        target: TargetKind,
        workload: Workload,
        mode: &str,
        clients: usize,
        m: &Measured,
    ) -> RunResult {
        let ops = if workload == Workload::Throttle {
            m.tally.cycles + m.tally.denied
        } else {
            m.tally.cycles
        };
        let seconds = m.window.as_secs_f64();
        let per_op = |us: u64| {
            if ops == 0 {
                0.0
            } else {
                us as f64 / ops as f64
            }
        };
        RunResult {
            group: group.to_string(),
            target,
            workload,
            mode: mode.to_string(),
            clients,
            rate_per_s: None,
            groups: None,
            slots: None,
            seconds,
            cycles: m.tally.cycles,
            denied: m.tally.denied,
            errors: m.tally.errors,
            conflicts: m.conflicts,
            unfinished: m.unfinished,
            throughput_per_s: if seconds > 0.0 {
                ops as f64 / seconds
            } else {
                0.0
            },
            acquire: m.tally.acquire.summary(),
            release: (m.tally.release.count() > 0).then(|| m.tally.release.summary()),
            server_cpu_us_per_op: per_op(m.server_cpu_us),
            server_cpu_us_per_op_by_process: m
                .server_cpu_us_by_process
                .iter()
                .map(|&us| per_op(us))
                .collect(),
            client_cpu_us_per_op: per_op(m.client_cpu_us),
            disk_flushes_per_s: m
                .disk_flushes
                .filter(|_| seconds > 0.0)
                .map(|f| f as f64 / seconds),
            wal_fsyncs_per_s: m
                .raft
                .filter(|_| seconds > 0.0)
                .map(|r| r.wal_fsyncs / seconds),
            entries_per_op: m.raft.filter(|_| ops > 0).map(|r| r.entries / ops as f64),
            commands_per_entry: m
                .raft
                .filter(|r| r.entries > 0.0)
                .map(|r| r.commands / r.entries),
            other_cpu_cores: (seconds > 0.0).then(|| m.other_cpu_us as f64 / 1e6 / seconds),
            first_error: m.first_error.clone(),
            round: None,
        }
    }
}

/// Leasehold: kill -9 of a group's leader until the first grant in that
/// group of an acquire sent after the kill.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Failover {
    /// Results from before hash slots say `partition`, then a Raft group.
    #[serde(alias = "partition")]
    pub group: u32,
    pub killed_node: u64,
    /// None when no grant came within the timeout.
    pub unavailable_ms: Option<f64>,
}

/// Leasehold: memory and disk for keys and leases, per replica.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Footprint {
    /// How many keys (and leases) were made; the per-million figures scale
    /// linearly from these.
    pub sample: u64,
    pub idle_keys_rss_bytes_per_million: f64,
    pub idle_keys_disk_bytes_per_million: f64,
    pub live_leases_rss_bytes_per_million: f64,
    pub live_leases_disk_bytes_per_million: f64,
    /// Per replica at start, after the idle keys, after the live leases.
    pub rss_bytes: [u64; 3],
    pub disk_bytes: [u64; 3],
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Results {
    /// Load-generator settings: seconds, warm-up, clients.
    pub settings: Settings,
    pub runs: Vec<RunResult>,
    pub failover: Vec<Failover>,
    pub footprint: Option<Footprint>,
    /// Steps that failed, with why.
    pub failures: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Settings {
    pub seconds: f64,
    pub warmup_seconds: f64,
    pub clients: usize,
    pub smoke: bool,
    #[serde(default)]
    pub rounds: usize,
}

/// The matrix run of a target and workload with the median throughput over
/// the rounds, and the range of them all.
pub struct MatrixCell<'a> {
    pub run: &'a RunResult,
    pub lowest: f64,
    pub highest: f64,
    pub rounds: usize,
}

pub fn matrix_median(
    results: &Results,
    target: TargetKind,
    workload: Workload,
) -> Option<MatrixCell<'_>> {
    let mut runs: Vec<&RunResult> = results
        .runs
        .iter()
        .filter(|r| r.group == "matrix" && r.target == target && r.workload == workload)
        .collect();
    runs.sort_by(|a, b| a.throughput_per_s.total_cmp(&b.throughput_per_s));
    Some(MatrixCell {
        run: runs.get(runs.len().saturating_sub(1) / 2)?,
        lowest: runs.first()?.throughput_per_s,
        highest: runs.last()?.throughput_per_s,
        rounds: runs.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_from_before_slots_load_their_partitions_as_groups() {
        let summary = r#"{"count": 1, "mean_us": 1.0, "p50_us": 1, "p99_us": 1,
            "p999_us": 1, "max_us": 1, "percentiles": []}"#;
        let text = format!(
            r#"{{"runs": [{{"group": "partitions", "target": "leasehold",
                "workload": "spread", "mode": "closed", "clients": 50,
                "rate_per_s": null, "partitions": 64, "seconds": 8.0, "cycles": 1,
                "denied": 0, "errors": 0, "conflicts": 0, "unfinished": 0,
                "throughput_per_s": 1.0, "acquire": {summary}, "release": null,
                "server_cpu_us_per_op": 1.0, "client_cpu_us_per_op": 1.0,
                "first_error": null}}],
              "failover": [{{"partition": 0, "killed_node": 1, "unavailable_ms": 975.3}}]}}"#
        );
        let results: Results = serde_json::from_str(&text).expect("an old results file");
        assert_eq!(results.runs[0].groups, Some(64));
        assert_eq!(results.runs[0].slots, None);
        assert_eq!(results.failover[0].group, 0);
        assert_eq!(results.failover[0].killed_node, 1);
    }
}
