//! The whole benchmark: every workload on every target, the open-loop and
//! client sweeps, and Leasehold's partitions, failover and footprint
//! figures. Results are written after every step, so a failure keeps
//! what was measured before it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::load::{self, LoadConfig, Mode};
use crate::result::{Results, RunResult, Settings};
use crate::spec::{Workload, WORKLOADS};
use crate::target::leasehold::Cluster;
use crate::target::{Binaries, Server, TargetKind};
use crate::{experiments, semantics};

/// Leasehold's default partition count, used wherever none is swept.
pub const PARTITIONS: u32 = 16;

#[derive(Clone, Debug)]
pub struct SuiteConfig {
    pub bins: Binaries,
    pub out: PathBuf,
    pub targets: Vec<TargetKind>,
    pub seconds: f64,
    pub warmup: f64,
    pub clients: usize,
    /// Tiny: seconds per run and a couple of callers, to prove it works.
    pub smoke: bool,
    /// How often the matrix of targets and workloads is measured; reports
    /// show the median.
    pub rounds: usize,
}

impl SuiteConfig {
    fn client_sweep(&self) -> Vec<usize> {
        if self.smoke {
            vec![1]
        } else {
            vec![1, 10, 50, 200]
        }
    }

    fn partition_sweep(&self) -> Vec<u32> {
        if self.smoke {
            vec![1]
        } else {
            vec![1, 4, 16, 64]
        }
    }

    fn failover_trials(&self) -> usize {
        if self.smoke {
            1
        } else {
            3
        }
    }

    fn footprint_sample(&self) -> u64 {
        if self.smoke {
            200
        } else {
            20_000
        }
    }

    fn load(&self, target: TargetKind, workload: Workload, mode: Mode) -> LoadConfig {
        let what = match mode {
            Mode::Closed { clients } => format!("{clients} clients"),
            Mode::Open { rate_per_s, .. } => format!("{rate_per_s:.0}/s open"),
        };
        LoadConfig {
            workload,
            mode,
            warmup: Duration::from_secs_f64(self.warmup),
            duration: Duration::from_secs_f64(self.seconds),
            label: format!("{target} {workload} {what}"),
            seed: 1,
        }
    }
}

pub struct Suite {
    config: SuiteConfig,
    pub results: Results,
    /// Steps that failed, with why; the rest went on.
    pub failures: Vec<String>,
}

impl Suite {
    pub fn new(config: SuiteConfig) -> Suite {
        let results = Results {
            settings: Settings {
                seconds: config.seconds,
                warmup_seconds: config.warmup,
                clients: config.clients,
                smoke: config.smoke,
                rounds: config.rounds,
            },
            ..Results::default()
        };
        Suite {
            config,
            results,
            failures: Vec::new(),
        }
    }

    fn save(&self) -> Result<()> {
        std::fs::create_dir_all(&self.config.out)?;
        let path = self.config.out.join("results.json");
        std::fs::write(&path, serde_json::to_string_pretty(&self.results)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    fn note<T>(&mut self, step: &str, outcome: Result<T>) -> Option<T> {
        match outcome {
            Ok(value) => Some(value),
            Err(error) => {
                let line = format!("{step}: {error:#}");
                eprintln!("leasehold-bench: FAILED {line}");
                self.failures.push(line);
                None
            }
        }
    }

    pub async fn run(&mut self) -> Result<()> {
        let targets = self.config.targets.clone();
        if self.config.smoke {
            for &target in &targets {
                self.matrix_on_one_server(target).await;
            }
        } else {
            for &target in &targets {
                self.semantics_alone(target).await;
            }
            for round in 0..self.config.rounds {
                self.matrix_round(round).await;
                self.save()?;
            }
        }
        for &target in &targets {
            self.sweeps(target).await;
            self.save()?;
        }
        if self.config.targets.contains(&TargetKind::Leasehold) {
            self.partitions().await;
            self.save()?;
            self.failover().await;
            self.save()?;
            self.footprint().await;
            self.save()?;
        }
        self.results.failures = self.failures.clone();
        self.save()
    }

    /// One load run on a running server; recorded (or its failure noted).
    async fn measure(
        &mut self,
        server: &mut Server,
        group: &str,
        target: TargetKind,
        workload: Workload,
        mode: Mode,
    ) -> Option<RunResult> {
        let config = self.config.load(target, workload, mode);
        let measured = load::run(server, &config).await;
        let step = format!("{group} {}", config.label);
        let measured = self.note(&step, measured)?;
        let (mode_name, clients, rate) = match mode {
            Mode::Closed { clients } => ("closed", clients, None),
            Mode::Open {
                rate_per_s,
                connections,
            } => ("open", connections, Some(rate_per_s)),
        };
        let mut result = RunResult::new(group, target, workload, mode_name, clients, &measured);
        result.rate_per_s = rate;
        if target == TargetKind::Leasehold {
            result.partitions = Some(PARTITIONS);
        }
        crate::print_run(&result);
        self.results.runs.push(result.clone());
        Some(result)
    }

    fn start(&mut self, target: TargetKind, partitions: u32) -> Option<Server> {
        let started = Server::start(target, &self.config.bins, partitions);
        self.note(&format!("starting {target}"), started)
    }

    /// The semantics checks, on the first server of a target, before it is
    /// measured.
    async fn semantics(&mut self, target: TargetKind, server: &mut Server) {
        let outcome = async {
            let conn = server.connect().await?;
            semantics::check(&conn, &format!("{}", std::process::id())).await
        }
        .await;
        if self.note(&format!("semantics {target}"), outcome).is_some() {
            println!("{target}: semantics checks passed");
        }
    }

    async fn semantics_alone(&mut self, target: TargetKind) {
        if let Some(mut server) = self.start(target, PARTITIONS) {
            self.semantics(target, &mut server).await;
            server.stop();
        }
    }

    /// Every workload on every target, closed loop, each run on a freshly
    /// started server. Targets take turns within a workload, so that
    /// whatever else runs on the machine meanwhile falls on all of them
    /// alike.
    async fn matrix_round(&mut self, round: usize) {
        let mode = Mode::Closed {
            clients: self.config.clients,
        };
        for workload in WORKLOADS {
            for target in self.config.targets.clone() {
                let Some(mut server) = self.start(target, PARTITIONS) else {
                    continue;
                };
                if self
                    .measure(&mut server, "matrix", target, workload, mode)
                    .await
                    .is_some()
                {
                    let last = self.results.runs.last_mut().expect("just pushed");
                    last.round = Some(round);
                }
                server.stop();
            }
        }
    }

    /// The semantics checks, then every workload, on one server: the
    /// smoke run's quick matrix.
    async fn matrix_on_one_server(&mut self, target: TargetKind) {
        let mode = Mode::Closed {
            clients: self.config.clients,
        };
        let Some(mut server) = self.start(target, PARTITIONS) else {
            return;
        };
        self.semantics(target, &mut server).await;
        for workload in WORKLOADS {
            self.measure(&mut server, "matrix", target, workload, mode)
                .await;
        }
        server.stop();
    }

    /// On one server: the spread workload in an open loop at half the
    /// closed loop's throughput, then closed loops of 1 to 200 callers.
    async fn sweeps(&mut self, target: TargetKind) {
        let Some(mut server) = self.start(target, PARTITIONS) else {
            return;
        };
        let closed = crate::result::matrix_median(&self.results, target, Workload::Spread);
        if let Some(rate) = closed.map(|c| (c.run.throughput_per_s / 2.0).max(1.0)) {
            let mode = Mode::Open {
                rate_per_s: rate.round(),
                connections: self.config.clients,
            };
            self.measure(&mut server, "open", target, Workload::Spread, mode)
                .await;
        }
        for clients in self.config.client_sweep() {
            let mode = Mode::Closed { clients };
            self.measure(&mut server, "clients", target, Workload::Spread, mode)
                .await;
        }
        server.stop();
    }

    /// Leasehold's spread workload with 1 to 64 partitions.
    async fn partitions(&mut self) {
        for partitions in self.config.partition_sweep() {
            let Some(mut server) = self.start(TargetKind::Leasehold, partitions) else {
                continue;
            };
            let mode = Mode::Closed {
                clients: self.config.clients,
            };
            let run = self
                .measure(
                    &mut server,
                    "partitions",
                    TargetKind::Leasehold,
                    Workload::Spread,
                    mode,
                )
                .await;
            if run.is_some() {
                let last = self.results.runs.last_mut().expect("just pushed");
                last.partitions = Some(partitions);
            }
            server.stop();
        }
    }

    async fn failover(&mut self) {
        let trials = self.config.failover_trials();
        let outcome = async {
            let mut cluster = Cluster::start(&self.config.bins.leasehold, 3, PARTITIONS)?;
            let result = experiments::failover(&mut cluster, PARTITIONS, trials).await;
            cluster.stop();
            result
        }
        .await;
        if let Some(trials) = self.note("failover", outcome) {
            for t in &trials {
                println!(
                    "failover: partition {} leader node {} killed: {}",
                    t.partition,
                    t.killed_node,
                    t.unavailable_ms
                        .map_or("no grant in time".to_string(), |ms| format!(
                            "{ms:.0} ms until the first grant"
                        ))
                );
            }
            self.results.failover = trials;
        }
    }

    async fn footprint(&mut self) {
        let sample = self.config.footprint_sample();
        let outcome = async {
            let mut cluster = Cluster::start(&self.config.bins.leasehold, 3, PARTITIONS)?;
            let settle = Duration::from_secs(if self.config.smoke { 1 } else { 3 });
            let result = experiments::footprint(&cluster, sample, settle).await;
            cluster.stop();
            result
        }
        .await;
        if let Some(f) = self.note("footprint", outcome) {
            println!(
                "footprint per replica, per million: idle keys {:.0} MB RSS {:.0} MB disk; live leases {:.0} MB RSS {:.0} MB disk",
                f.idle_keys_rss_bytes_per_million / 1e6,
                f.idle_keys_disk_bytes_per_million / 1e6,
                f.live_leases_rss_bytes_per_million / 1e6,
                f.live_leases_disk_bytes_per_million / 1e6
            );
            self.results.footprint = Some(f);
        }
    }
}
