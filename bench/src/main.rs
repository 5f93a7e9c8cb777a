//! `leasehold-bench`: Leasehold against Redis and etcd baselines with the
//! same lease semantics, every server started and stopped by the benchmark.
//!
//! - [`spec`]: the workloads (hot key, 100k keys, three constraints,
//!   throttle decisions, waiting acquires), independent of any target.
//! - [`target`]: the systems under test (a Leasehold cluster, Redis with
//!   our Lua scripts, an etcd cluster) behind one connection type.
//! - [`load`]: the closed- and open-loop load generator.
//! - [`stats`]: HdrHistogram latencies and their summaries.
//! - [`procs`]: ports, processes, CPU time, memory and disk from /proc.
//! - [`semantics`]: checks that every target keeps the lease semantics.
//! - [`suite`]: the whole benchmark; [`experiments`]: Leasehold's failover
//!   and footprint figures.
//! - [`result`]: the JSON results file; [`report`]: BENCHMARKS.md from it.

mod experiments;
mod load;
mod procs;
mod report;
mod result;
mod semantics;
mod spec;
mod stats;
mod suite;
mod target;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use load::{LoadConfig, Mode};
use result::RunResult;
use spec::Workload;
use target::leasehold::Layout;
use target::{Binaries, Server, TargetKind};

#[derive(Parser)]
#[command(
    name = "leasehold-bench",
    about = "Leasehold against Redis and etcd, same lease semantics"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One load run against one target (started and stopped here)
    Run(RunArgs),
    /// The whole benchmark; writes OUT/results.json
    Suite(SuiteArgs),
    /// BENCHMARKS.md from a results file; --check fails on a bad one
    Report(ReportArgs),
}

#[derive(Args, Debug)]
struct SuiteArgs {
    /// Where results.json goes
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Seconds per run and a few callers: proves every target and workload works
    #[arg(long)]
    smoke: bool,
    /// Targets, comma-separated [default: all]
    #[arg(long, value_enum, value_delimiter = ',')]
    targets: Vec<TargetKind>,
    /// Measured seconds per run [default: 8, smoke 1]
    #[arg(long)]
    seconds: Option<f64>,
    /// Warm-up seconds per run [default: 1, smoke 0.3]
    #[arg(long)]
    warmup: Option<f64>,
    /// Closed-loop callers [default: 50, smoke 4]
    #[arg(long)]
    clients: Option<usize>,
    /// Rounds of the matrix of targets and workloads; reports show the median
    /// [default: 3, smoke 1]
    #[arg(long)]
    rounds: Option<usize>,
    #[command(flatten)]
    bins: BinArgs,
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// The results.json of a suite run
    #[arg(long, value_name = "FILE")]
    results: PathBuf,
    /// Text describing the machine (lscpu, kernel, versions), shown as is
    #[arg(long, value_name = "FILE")]
    machine: Option<PathBuf>,
    /// The command that reproduces the results
    #[arg(long, default_value = "scripts/bench.sh")]
    command: String,
    /// Directory of the plots (PNG), as linked from the report
    #[arg(long, value_name = "DIR")]
    plots_dir: Option<PathBuf>,
    /// Markdown placed after the plots: what the figures mean
    #[arg(long, value_name = "FILE")]
    analysis: Option<PathBuf>,
    /// Write the report here instead of stdout
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Fail (exit 1) if a step failed, a run measured nothing or had errors
    #[arg(long)]
    check: bool,
}

#[derive(Args, Clone, Debug)]
struct BinArgs {
    /// The leasehold binary [default: `leasehold` next to this one]
    #[arg(long, value_name = "PATH")]
    leasehold_bin: Option<PathBuf>,
    #[arg(long, value_name = "PATH", default_value = "redis-server")]
    redis_server_bin: PathBuf,
    #[arg(long, value_name = "PATH", default_value = "etcd")]
    etcd_bin: PathBuf,
}

impl BinArgs {
    fn binaries(&self) -> Result<Binaries> {
        let leasehold = match &self.leasehold_bin {
            Some(path) => path.clone(),
            None => std::env::current_exe()?.with_file_name("leasehold"),
        };
        Ok(Binaries {
            leasehold,
            redis_server: self.redis_server_bin.clone(),
            etcd: self.etcd_bin.clone(),
        })
    }
}

#[derive(Args, Debug)]
struct RunArgs {
    #[arg(long, value_enum)]
    target: TargetKind,
    #[arg(long, value_enum)]
    workload: Workload,
    /// Closed loop: concurrent callers. Open loop: connections.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Open loop at this many cycles per second (closed loop when unset)
    #[arg(long, value_name = "PER_S")]
    rate: Option<f64>,
    /// Length of the measured window
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    /// Unmeasured warm-up before it
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Leasehold's Raft groups, 0..=1024, at most --slots; 0 = one per node
    #[arg(long, value_name = "N", default_value_t = Layout::DEFAULT.groups,
          value_parser = clap::value_parser!(u32).range(0..=1024))]
    groups: u32,
    /// Leasehold's hash slots, 1..=65536
    #[arg(long, value_name = "N", default_value_t = Layout::DEFAULT.slots,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    slots: u32,
    /// Leasehold: send each call as a unary RPC instead of over the
    /// client's session streams
    #[arg(long)]
    unary: bool,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    bins: BinArgs,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run(args) => runtime.block_on(run(args)),
        Command::Suite(args) => runtime.block_on(suite(args)),
        Command::Report(args) => report(args),
    }
}

async fn suite(args: SuiteArgs) -> Result<()> {
    let smoke = args.smoke;
    let config = suite::SuiteConfig {
        bins: args.bins.binaries()?,
        out: args.out,
        targets: if args.targets.is_empty() {
            target::TARGETS.to_vec()
        } else {
            args.targets
        },
        seconds: args.seconds.unwrap_or(if smoke { 1.0 } else { 8.0 }),
        warmup: args.warmup.unwrap_or(if smoke { 0.3 } else { 1.0 }),
        clients: args.clients.unwrap_or(if smoke { 4 } else { 50 }),
        rounds: args.rounds.unwrap_or(if smoke { 1 } else { 3 }).max(1),
        smoke,
    };
    let mut suite = suite::Suite::new(config);
    suite.run().await?;
    if !suite.failures.is_empty() {
        anyhow::bail!(
            "{} steps failed:\n{}",
            suite.failures.len(),
            suite.failures.join("\n")
        );
    }
    Ok(())
}

/// The plots the report shows, where they exist, with their captions.
fn plots(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut plots = vec![(
        "throughput_vs_clients.png".to_string(),
        "Cycles/s against closed-loop callers, spread workload".to_string(),
    )];
    for w in spec::WORKLOADS {
        plots.push((
            format!("latency_{w}.png"),
            format!("Acquire latency by percentile, {w} workload, closed loop"),
        ));
    }
    plots.push((
        "latency_open.png".to_string(),
        "Acquire latency by percentile, open loop, spread workload".to_string(),
    ));
    plots
        .into_iter()
        .filter(|(name, _)| dir.join(name).exists())
        .map(|(name, caption)| (dir.join(name).display().to_string(), caption))
        .collect()
}

fn report(args: ReportArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.results)
        .with_context(|| format!("reading {}", args.results.display()))?;
    let results: result::Results = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", args.results.display()))?;
    if args.check {
        let problems = report::check(&results);
        if !problems.is_empty() {
            anyhow::bail!(
                "{} problems in {}:\n{}",
                problems.len(),
                args.results.display(),
                problems.join("\n")
            );
        }
    }
    let read = |path: &Option<PathBuf>| -> Result<Option<String>> {
        path.as_ref()
            .map(|path| {
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
            })
            .transpose()
    };
    let machine = read(&args.machine)?;
    let analysis = read(&args.analysis)?;
    let plots = args.plots_dir.as_deref().map(plots).unwrap_or_default();
    let md = report::markdown(&report::ReportInput {
        results: &results,
        machine: machine.as_deref(),
        command: &args.command,
        plots: &plots,
        analysis: analysis.as_deref(),
    });
    match &args.out {
        Some(path) => {
            std::fs::write(path, md).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{md}"),
    }
    Ok(())
}

async fn run(args: RunArgs) -> Result<()> {
    let layout = Layout {
        groups: args.groups,
        slots: args.slots,
    };
    let mut server = Server::start(args.target, &args.bins.binaries()?, layout)?;
    if let Server::Leasehold(cluster, _) = &mut server {
        cluster.streaming = !args.unary;
    }
    let mode = match args.rate {
        Some(rate_per_s) => Mode::Open {
            rate_per_s,
            connections: args.clients,
        },
        None => Mode::Closed {
            clients: args.clients,
        },
    };
    let config = LoadConfig {
        workload: args.workload,
        mode,
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.seconds),
        label: format!("{} {}", args.target, args.workload),
        seed: 1,
    };
    let measured = load::run(&mut server, &config).await;
    server.stop();
    let measured = measured?;
    let mode_name = if args.rate.is_some() {
        "open"
    } else {
        "closed"
    };
    let mut result = RunResult::new(
        "run",
        args.target,
        args.workload,
        mode_name,
        args.clients,
        &measured,
    );
    result.rate_per_s = args.rate;
    if let Some(layout) = server.layout() {
        result.groups = Some(layout.groups);
        result.slots = Some(layout.slots);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_run(&result);
    }
    Ok(())
}

pub(crate) fn print_run(r: &RunResult) {
    let layout = match (r.groups, r.slots) {
        (Some(groups), Some(slots)) => format!(" groups={groups} slots={slots}"),
        _ => String::new(),
    };
    println!(
        "{} {} {} clients={}{layout}: {:.0} {}/s ({} granted, {} denied, {} errors, {} conflicts) over {:.1} s",
        r.target,
        r.workload,
        r.mode,
        r.clients,
        r.throughput_per_s,
        r.workload.unit(),
        r.cycles,
        r.denied,
        r.errors,
        r.conflicts,
        r.seconds
    );
    let a = &r.acquire;
    println!(
        "  acquire p50 {} µs  p99 {} µs  p99.9 {} µs  max {} µs",
        a.p50_us, a.p99_us, a.p999_us, a.max_us
    );
    if let Some(rel) = &r.release {
        println!(
            "  release p50 {} µs  p99 {} µs  p99.9 {} µs  max {} µs",
            rel.p50_us, rel.p99_us, rel.p999_us, rel.max_us
        );
    }
    println!(
        "  server CPU {:.0} µs/op, load generator CPU {:.0} µs/op",
        r.server_cpu_us_per_op, r.client_cpu_us_per_op
    );
    if !r.server_cpu_us_per_op_by_process.is_empty() {
        let by: Vec<String> = r
            .server_cpu_us_per_op_by_process
            .iter()
            .map(|us| format!("{us:.0}"))
            .collect();
        println!("  server CPU by process {} µs/op", by.join(" + "));
    }
    if let Some(f) = r.disk_flushes_per_s {
        println!("  disk flushes {f:.0}/s");
    }
    if let (Some(wal), Some(entries), Some(commands)) =
        (r.wal_fsyncs_per_s, r.entries_per_op, r.commands_per_entry)
    {
        println!(
            "  WAL syncs {wal:.0}/s, Raft entries {entries:.2} per op, {commands:.1} commands per entry"
        );
    }
    if let Some(e) = &r.first_error {
        println!("  first error: {e}");
    }
}
