//! The whole benchmark: every workload on every target, the open-loop and
//! client sweeps, and Leasehold's groups-and-slots sweep, failover and
//! footprint figures. Results are written after every step, so a failure keeps
//! what was measured before it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::load::{self, LoadConfig, Mode};
use crate::result::{Results, RunResult, Settings};
use crate::spec::{Workload, WORKLOADS};
use crate::target::leasehold::{Cluster, Layout, NODES};
use crate::target::{Binaries, Server, TargetKind};
use crate::{experiments, semantics};

/// The name of the groups-and-slots sweep's runs in the results.
pub const GROUPS_SLOTS: &str = "groups-slots";

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

    /// Leasehold's layouts for the spread workload: each group count at
    /// the default slots, then each slot count at the default groups; a
    /// layout both lists name is measured once.
    fn layout_sweep(&self) -> Vec<Layout> {
        let (groups, slots): (&[u32], &[u32]) = if self.smoke {
            (&[1], &[256])
        } else {
            (&[1, 3, 6], &[256, 1024, 4096])
        };
        let by_groups = groups.iter().map(|&groups| Layout {
            groups,
            ..Layout::DEFAULT
        });
        let by_slots = slots.iter().map(|&slots| Layout {
            slots,
            ..Layout::DEFAULT
        });
        let mut layouts: Vec<Layout> = Vec::new();
        for layout in by_groups.chain(by_slots).map(|l| l.resolved(NODES)) {
            if !layouts.contains(&layout) {
                layouts.push(layout);
            }
        }
        layouts
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
            self.groups_and_slots().await;
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
        if let Some(layout) = server.layout() {
            result.groups = Some(layout.groups);
            result.slots = Some(layout.slots);
        }
        crate::print_run(&result);
        self.results.runs.push(result.clone());
        Some(result)
    }

    fn start(&mut self, target: TargetKind, layout: Layout) -> Option<Server> {
        let started = Server::start(target, &self.config.bins, layout);
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
        if let Some(mut server) = self.start(target, Layout::DEFAULT) {
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
                let Some(mut server) = self.start(target, Layout::DEFAULT) else {
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
        let Some(mut server) = self.start(target, Layout::DEFAULT) else {
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
        // Security's cost is measured by the matrix alone.
        if target == TargetKind::LeaseholdTls {
            return;
        }
        let Some(mut server) = self.start(target, Layout::DEFAULT) else {
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

    /// Leasehold's spread workload over 1 to 6 groups and 256 to 4096
    /// slots, each layout on a freshly created cluster.
    async fn groups_and_slots(&mut self) {
        for layout in self.config.layout_sweep() {
            let Some(mut server) = self.start(TargetKind::Leasehold, layout) else {
                continue;
            };
            let mode = Mode::Closed {
                clients: self.config.clients,
            };
            self.measure(
                &mut server,
                GROUPS_SLOTS,
                TargetKind::Leasehold,
                Workload::Spread,
                mode,
            )
            .await;
            server.stop();
        }
    }

    async fn failover(&mut self) {
        let trials = self.config.failover_trials();
        let outcome = async {
            let mut cluster = Cluster::start(&self.config.bins.leasehold, NODES, Layout::DEFAULT)?;
            let result = experiments::failover(&mut cluster, trials).await;
            cluster.stop();
            result
        }
        .await;
        if let Some(trials) = self.note("failover", outcome) {
            for t in &trials {
                println!(
                    "failover: group {} leader node {} killed: {}",
                    t.group,
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
            let mut cluster = Cluster::start(&self.config.bins.leasehold, NODES, Layout::DEFAULT)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(smoke: bool) -> SuiteConfig {
        SuiteConfig {
            bins: Binaries {
                leasehold: PathBuf::from("leasehold"),
                redis_server: PathBuf::from("redis-server"),
                etcd: PathBuf::from("etcd"),
            },
            out: PathBuf::from("out"),
            targets: vec![TargetKind::Leasehold],
            seconds: 1.0,
            warmup: 0.0,
            clients: 1,
            smoke,
            rounds: 1,
        }
    }

    fn pairs(layouts: &[Layout]) -> Vec<(u32, u32)> {
        layouts.iter().map(|l| (l.groups, l.slots)).collect()
    }

    #[test]
    fn the_layout_sweep_varies_groups_then_slots_and_measures_the_default_once() {
        assert_eq!(
            pairs(&config(false).layout_sweep()),
            [(1, 1024), (3, 1024), (6, 1024), (3, 256), (3, 4096)]
        );
    }

    #[test]
    fn the_smoke_layout_sweep_moves_each_knob_once() {
        assert_eq!(pairs(&config(true).layout_sweep()), [(1, 1024), (3, 256)]);
    }
}
