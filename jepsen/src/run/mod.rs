//! One chaos run, start to end:
//!
//! - [`schedule`]: the fault schedule, drawn from the seed ([`rng`]).
//! - [`cluster`]: the nodes, on [`docker`] containers or, where Docker is
//!   missing, [`netns`] network namespaces.
//! - [`client`], [`workload`]: clients calling one chosen node per op,
//!   recorded by [`recorder`] into the history; [`resource`]: the fenced
//!   resources of the `fenced` workload.
//! - [`nemesis`]: carries out the schedule for real.
//! - [`phases`]: after the faults, the `final` and `durability` phases.
//! - [`report`], [`plot`]: verdicts, availability and the latency picture.

pub mod client;
pub mod cluster;
pub mod docker;
pub mod nemesis;
pub mod netns;
pub mod phases;
pub mod plot;
pub mod recorder;
pub mod report;
pub mod resource;
pub mod rng;
pub mod schedule;
pub mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use leasehold::slot::SLOT_COUNT_DEFAULT;
use leasehold_jepsen::check::{self, Params};

use client::Clients;
use cluster::{BackendChoice, Cluster, ClusterSpec};
use recorder::Recorder;
use schedule::{Fault, NemesisKind, Step};
use workload::{Ctx, Workload};

/// The most nodes a run may have.
const NODES_MAX: u64 = 7;
/// The server's default `max_clock_offset_ms`, which the nodes run with.
const SERVER_MAX_CLOCK_OFFSET_MS: u64 = 250;
/// Added to the server's clock bound: timestamps are whole milliseconds,
/// and a node's offset readings are as old as one probe interval.
const CLOCK_SLACK_MARGIN_MS: u64 = 50;

/// Runs Leasehold on real hosts, breaks it, records what clients saw, and
/// checks it. Exit status: 0 valid, 1 a checker found a violation or the
/// cluster did not recover, 2 the run itself could not be carried out.
#[derive(Parser, Debug, Clone)]
#[command(name = "leasehold-jepsen", version)]
pub struct Options {
    /// Nodes in the cluster, each its own host
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=NODES_MAX))]
    pub nodes: u64,
    /// Seconds of the main phase: clients and faults
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(5..=3600))]
    pub time_limit: u64,
    /// Faults to inject, comma-separated; each kind runs at least once when
    /// the time limit allows
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "partition,kill,pause,clock"
    )]
    pub nemesis: Vec<NemesisKind>,
    /// What the clients do
    #[arg(long, value_enum, default_value_t = Workload::Leases)]
    pub workload: Workload,
    /// Seeds the fault schedule and the clients' choices; a seed replays
    /// its schedule
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Where the history, report, plot and node logs go [default: jepsen-out/<workload>-<seed>]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The leasehold binary [default: `leasehold` beside this binary]
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Where the nodes run
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Data groups (Raft groups) the slots are spread over; 0 = one per
    /// node, as `serve` does by default
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub groups: u32,
    /// Hash slots of the cluster: the namespace of lease ids and tokens
    #[arg(long, value_name = "N", default_value_t = SLOT_COUNT_DEFAULT, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub slots: u32,
    /// Client workers [default: 2 per node; rate-limit 4, fenced 3]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub concurrency: Option<u64>,
    /// Print the fault schedule and exit
    #[arg(long)]
    pub dry_run: bool,
    /// Secure the cluster as in production: TLS on the client port, mutual
    /// TLS between nodes, and a token on every call of the harness
    #[arg(long)]
    pub tls: bool,
}

/// How a run ended.
pub enum Ending {
    Valid,
    Invalid,
}

pub async fn run(options: Options) -> Result<Ending> {
    if options.effective_groups() > options.slots {
        bail!(
            "{} groups need at least as many slots, got --slots {}: every group owns a slot",
            options.effective_groups(),
            options.slots
        );
    }
    let mut kinds = options.nemesis.clone();
    kinds.sort_unstable();
    kinds.dedup();
    let steps = schedule::generate(
        options.seed,
        options.nodes,
        &kinds,
        options.time_limit * 1000,
    );
    println!("{}", header(&options));
    println!("fault schedule (seed {}):", options.seed);
    for step in &steps {
        println!("  {step}");
    }
    if options.dry_run {
        return Ok(Ending::Valid);
    }
    let out = prepare_out(&options)?;
    let binary = match &options.binary {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this binary has no directory")?
            .join("leasehold"),
    };
    if !binary.is_file() {
        bail!(
            "no leasehold binary at {}: build it with `cargo build --release` or pass --binary",
            binary.display()
        );
    }
    let spec = ClusterSpec {
        nodes: options.nodes,
        groups: options.groups,
        slots: options.slots,
        binary,
        dir: out.join("nodes"),
        tls: options.tls,
    };
    let mut cluster = Cluster::start(&spec, options.backend).await?;
    println!(
        "cluster: {} nodes on {}",
        cluster.nodes.len(),
        cluster.backend_name()
    );
    // Ctrl-C still tears the cluster down rather than leave it running.
    let result = tokio::select! {
        result = drive(&options, &mut cluster, &steps, &out) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Err(error) = cluster.teardown().await {
        println!("teardown: {error:#}");
    }
    result
}

impl Options {
    /// Data groups the cluster gets: `--groups`, or one per node.
    fn effective_groups(&self) -> u32 {
        match self.groups {
            0 => u32::try_from(self.nodes).expect("at most NODES_MAX nodes"),
            groups => groups,
        }
    }
}

fn header(options: &Options) -> String {
    let kinds: Vec<&str> = options.nemesis.iter().map(|k| k.name()).collect();
    format!(
        "leasehold-jepsen: {} nodes, {} groups, {} slots, {} s, nemesis {}, workload {}, seed {}",
        options.nodes,
        options.effective_groups(),
        options.slots,
        options.time_limit,
        if kinds.is_empty() {
            "none".into()
        } else {
            kinds.join(",")
        },
        options.workload.name(),
        options.seed
    )
}

/// The output directory, emptied of an earlier run's nodes and files.
fn prepare_out(options: &Options) -> Result<PathBuf> {
    let out = options.out.clone().unwrap_or_else(|| {
        PathBuf::from("jepsen-out").join(format!("{}-{}", options.workload.name(), options.seed))
    });
    for stale in [
        "nodes",
        "history.jsonl",
        "report.txt",
        "report.json",
        "latency.svg",
    ] {
        let path = out.join(stale);
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else if path.exists() {
            std::fs::remove_file(&path)?;
        }
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    Ok(std::fs::canonicalize(&out)?)
}

/// Everything between a started cluster and its teardown.
async fn drive(
    options: &Options,
    cluster: &mut Cluster,
    steps: &[Step],
    out: &Path,
) -> Result<Ending> {
    let clients = Clients::new(&cluster.nodes, cluster.creds.as_ref());
    let map = phases::wait_ready(cluster, &clients)
        .await
        .context("the fresh cluster never became ready")?;
    // The history names each key's slot by the count asked for; a cluster
    // hashing by another would make the checkers compare unrelated tokens.
    let groups = u32::try_from(map.groups.len()).unwrap_or(u32::MAX);
    if (map.slot_count, groups) != (options.slots, options.effective_groups()) {
        bail!(
            "asked for {} slots in {} groups, the cluster has {} in {groups}",
            options.slots,
            options.effective_groups(),
            map.slot_count
        );
    }
    let start = Instant::now();
    let history_path = out.join("history.jsonl");
    let recorder = Arc::new(Recorder::create(&history_path, start)?);
    let ctx = Arc::new(Ctx {
        clients: clients.clone(),
        recorder: Arc::clone(&recorder),
        keys: options.workload.keys(options.slots),
        workload: options.workload,
        resources: resource::Resources::default(),
    });

    println!("main phase: {} s", options.time_limit);
    let deadline = start + Duration::from_secs(options.time_limit);
    let concurrency = options
        .concurrency
        .unwrap_or(options.workload.workers_per_node() * options.nodes);
    let workers: Vec<_> = (0..concurrency)
        .map(|i| {
            tokio::spawn(workload::worker(
                Arc::clone(&ctx),
                i,
                options.seed,
                deadline,
            ))
        })
        .collect();
    let mut problems = nemesis::run(cluster, &clients, &recorder, steps, (start, deadline)).await;
    let mut unknown = Vec::new();
    for worker in workers {
        unknown.push(worker.await.context("a client worker panicked")?);
    }

    nemesis::heal_network_and_clocks(cluster).await?;
    println!(
        "healed; waiting for the cluster, then {} ms for leases to end",
        options.workload.settle_ms()
    );
    match phases::wait_ready(cluster, &clients).await {
        Ok(_) => {
            if let Err(error) = phases::wait_stable(&clients).await {
                problems.push(format!("after healing: {error:#}"));
            }
            if options.workload == Workload::Linear {
                println!("resolving the outcomes clients never learned");
                let resolving: Vec<_> = (0u64..)
                    .zip(unknown)
                    .map(|(i, calls)| tokio::spawn(workload::resolve(Arc::clone(&ctx), i, calls)))
                    .collect();
                for task in resolving {
                    task.await.context("a resolving worker panicked")?;
                }
            }
            tokio::time::sleep(Duration::from_millis(options.workload.settle_ms())).await;
            println!("final phase");
            phases::final_phase(&ctx).await;
            let restarts = [NemesisKind::Kill, NemesisKind::Storage];
            if restarts.iter().any(|k| options.nemesis.contains(k)) {
                println!("durability phase: kill -9 every node, restart, inspect");
                if let Err(error) = phases::durability_phase(cluster, &ctx).await {
                    problems.push(format!("durability phase: {error:#}"));
                }
            }
        }
        Err(error) => problems.push(format!(
            "the cluster did not recover after healing: {error:#}"
        )),
    }
    conclude(options, cluster, steps, out, &recorder, problems)
}

fn conclude(
    options: &Options,
    cluster: &Cluster,
    steps: &[Step],
    out: &Path,
    recorder: &Recorder,
    problems: Vec<String>,
) -> Result<Ending> {
    let history = recorder.finish()?;
    let params = check_params(steps);
    let verdicts = check::all(&history, &params);
    let ops = history.pairs().unwrap_or_default();
    let windows = report::windows(&history);
    let plot_path = out.join("latency.svg");
    let title = format!("{} — latency by outcome, faults shaded", header(options));
    std::fs::write(&plot_path, plot::svg(&title, &ops, &windows)).context("writing the plot")?;
    let inputs = report::Inputs {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        backend: cluster.backend_name(),
        seed: options.seed,
        schedule: steps.iter().map(ToString::to_string).collect(),
        history_path: &out.join("history.jsonl"),
        plot_path: &plot_path,
        params,
        problems,
    };
    let report = report::build(inputs, &ops, windows, verdicts);
    report.write(out)?;
    print!("\n{}", report.text());
    Ok(if report.valid {
        Ending::Valid
    } else {
        Ending::Invalid
    })
}

/// The checkers' time bounds. Clock faults do not widen them by what the
/// faults do to a node's clock: the server promises that, with a majority
/// of correct clocks, a lease is never treated as expired more than
/// `2 × max_clock_offset_ms` early (a node out of bounds stops stamping), so
/// a schedule with clock faults is judged against that bound, the same
/// whatever the skew or rate.
pub fn check_params(steps: &[Step]) -> Params {
    let mut params = Params::default();
    if steps.iter().any(|s| matches!(s.fault, Fault::Clock(_))) {
        let bound_ms = 2 * SERVER_MAX_CLOCK_OFFSET_MS + CLOCK_SLACK_MARGIN_MS;
        params.slack_ms = params.slack_ms.max(bound_ms);
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;
    use schedule::{ClockFault, Who};

    fn step(duration_ms: u64, fault: Fault) -> Step {
        Step {
            at_ms: 0,
            duration_ms,
            fault,
        }
    }

    #[test]
    fn clock_faults_are_judged_against_the_servers_bound_not_their_size() {
        assert_eq!(check_params(&[]), Params::default());
        let kill = step(5_000, Fault::Kill(Who::All));
        assert_eq!(check_params(&[kill]), Params::default());
        let skew = |offset_ms| {
            step(
                5_000,
                Fault::Clock(ClockFault::Skew {
                    who: Who::Leader,
                    offset_ms,
                }),
            )
        };
        let slow = step(
            4_000,
            Fault::Clock(ClockFault::Rate {
                who: Who::Node(2),
                rate: 0.5,
            }),
        );
        let bound = Params {
            slack_ms: 2 * SERVER_MAX_CLOCK_OFFSET_MS + CLOCK_SLACK_MARGIN_MS,
            ..Params::default()
        };
        assert_eq!(check_params(&[skew(-1_200)]), bound);
        assert_eq!(check_params(&[skew(30_000), slow]), bound);
    }
}
