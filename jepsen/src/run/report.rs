//! The end of a run: operations by outcome, availability inside and
//! outside fault windows, every checker's verdict, written as report.txt
//! and report.json beside the history and the latency plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use leasehold_jepsen::check::{Params, Verdict};
use leasehold_jepsen::history::{Completed, History, Op, Outcome, Phase};
use serde::Serialize;

/// A fault's time span on the history's clock, in ns.
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    pub name: String,
    pub phase: Phase,
    pub detail: String,
    pub start_ns: u64,
    pub stop_ns: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Counts {
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
}

impl Counts {
    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Fail => self.fail += 1,
            Outcome::Info => self.info += 1,
        }
    }

    fn total(&self) -> usize {
        self.ok + self.fail + self.info
    }
}

/// How available the cluster was to the operations of one span.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Availability {
    pub counts: Counts,
    /// Calls that got a definite answer (ok or fail) among all calls.
    pub answered: f64,
    /// Ok among the definite answers (denials count against it).
    pub ok_of_definite: f64,
}

impl Availability {
    fn of(counts: Counts) -> Availability {
        let ratio = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
        Availability {
            counts,
            answered: ratio(counts.ok + counts.fail, counts.total()),
            ok_of_definite: ratio(counts.ok, counts.ok + counts.fail),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub command: String,
    pub backend: String,
    pub seed: u64,
    pub schedule: Vec<String>,
    pub history: PathBuf,
    pub plot: PathBuf,
    /// Per phase, per op kind.
    pub ops: BTreeMap<String, BTreeMap<String, Counts>>,
    pub during_faults: Availability,
    pub outside_faults: Availability,
    pub after_last_fault: Availability,
    pub windows: Vec<Window>,
    /// The checkers' clock-rate bound.
    pub rho: f64,
    /// The checkers' absolute time slack, in ms.
    pub slack_ms: u64,
    pub verdicts: Vec<Verdict>,
    /// What kept the run from completing its phases (no recovery, say).
    pub problems: Vec<String>,
    pub valid: bool,
}

/// Fault windows: each `start` paired with the next `stop`.
pub fn windows(history: &History) -> Vec<Window> {
    let mut open: Option<Window> = None;
    let mut windows = Vec::new();
    for event in &history.events {
        let Op::Nemesis(n) = &event.op else { continue };
        match n.action.as_str() {
            "start" => {
                open = Some(Window {
                    name: n.name.clone(),
                    phase: event.phase,
                    detail: n.detail.clone(),
                    start_ns: event.t_ns,
                    stop_ns: event.t_ns,
                });
            }
            _ => {
                if let Some(mut w) = open.take() {
                    w.stop_ns = event.t_ns;
                    windows.push(w);
                }
            }
        }
    }
    windows
}

pub struct Inputs<'a> {
    pub command: String,
    pub backend: &'a str,
    pub seed: u64,
    pub schedule: Vec<String>,
    pub history_path: &'a Path,
    pub plot_path: &'a Path,
    pub params: Params,
    pub problems: Vec<String>,
}

pub fn build(
    inputs: Inputs<'_>,
    ops: &[Completed],
    windows: Vec<Window>,
    verdicts: Vec<Verdict>,
) -> Report {
    let mut by_phase: BTreeMap<String, BTreeMap<String, Counts>> = BTreeMap::new();
    let (mut during, mut outside, mut after) =
        (Counts::default(), Counts::default(), Counts::default());
    let last_stop = windows
        .iter()
        .filter(|w| w.phase == Phase::Main)
        .map(|w| w.stop_ns)
        .max();
    for op in ops {
        by_phase
            .entry(phase_name(op.phase).into())
            .or_default()
            .entry(op.op.name().into())
            .or_default()
            .add(op.outcome);
        // Fenced ops are answered by the harness, not by the cluster.
        if op.phase != Phase::Main || matches!(op.op, Op::Fenced(_)) {
            continue;
        }
        let t = op.invoke_ns;
        if windows
            .iter()
            .any(|w| (w.start_ns..=w.stop_ns).contains(&t))
        {
            during.add(op.outcome);
        } else {
            outside.add(op.outcome);
            if last_stop.is_some_and(|stop| t > stop) {
                after.add(op.outcome);
            }
        }
    }
    let valid = verdicts.iter().all(|v| v.ok) && inputs.problems.is_empty();
    Report {
        command: inputs.command,
        backend: inputs.backend.into(),
        seed: inputs.seed,
        schedule: inputs.schedule,
        history: inputs.history_path.into(),
        plot: inputs.plot_path.into(),
        ops: by_phase,
        during_faults: Availability::of(during),
        outside_faults: Availability::of(outside),
        after_last_fault: Availability::of(after),
        windows,
        rho: inputs.params.rho,
        slack_ms: inputs.params.slack_ms,
        verdicts,
        problems: inputs.problems,
        valid,
    }
}

pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Main => "main",
        Phase::Final => "final",
        Phase::Durability => "durability",
    }
}

impl Report {
    pub fn text(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "command:  {}", self.command);
        let _ = writeln!(t, "backend:  {}   seed: {}", self.backend, self.seed);
        let _ = writeln!(t, "\nfaults ({}):", self.windows.len());
        for w in &self.windows {
            let _ = writeln!(
                t,
                "  {:>7.1}s - {:>7.1}s  {:<10} {}",
                w.start_ns as f64 / 1e9,
                w.stop_ns as f64 / 1e9,
                phase_name(w.phase),
                w.detail
            );
        }
        let _ = writeln!(t, "\nops by outcome:");
        let _ = writeln!(
            t,
            "  {:<11} {:<9} {:>7} {:>7} {:>7}",
            "phase", "op", "ok", "fail", "info"
        );
        for (phase, ops) in &self.ops {
            for (f, c) in ops {
                let _ = writeln!(
                    t,
                    "  {phase:<11} {f:<9} {:>7} {:>7} {:>7}",
                    c.ok, c.fail, c.info
                );
            }
        }
        let _ = writeln!(
            t,
            "\navailability (main phase; answered = ok+fail of all, ok = ok of ok+fail):"
        );
        for (name, a) in [
            ("during faults", &self.during_faults),
            ("outside faults", &self.outside_faults),
            ("after last fault", &self.after_last_fault),
        ] {
            let _ = writeln!(
                t,
                "  {name:<17} {:>6} ops  answered {:>6.1}%  ok {:>6.1}%",
                a.counts.total(),
                a.answered * 100.0,
                a.ok_of_definite * 100.0
            );
        }
        let _ = writeln!(
            t,
            "\ncheckers (server clock rate within 1/{0} to {0} of real time, slack {1} ms):",
            1.0 + self.rho,
            self.slack_ms
        );
        for v in &self.verdicts {
            let verdict = if v.ok { "ok" } else { "VIOLATED" };
            let _ = writeln!(t, "  {:<15} {verdict:<8} {}", v.checker, v.stats);
            for violation in &v.violations {
                let _ = writeln!(t, "      {violation}");
            }
            if v.violations_total > v.violations.len() {
                let _ = writeln!(t, "      ... {} in all", v.violations_total);
            }
        }
        for problem in &self.problems {
            let _ = writeln!(t, "\nPROBLEM: {problem}");
        }
        let _ = writeln!(t, "\nhistory:  {}", self.history.display());
        let _ = writeln!(t, "plot:     {}", self.plot.display());
        let _ = writeln!(
            t,
            "result:   {}",
            if self.valid { "VALID" } else { "INVALID" }
        );
        t
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(dir.join("report.json"), json).context("writing report.json")?;
        std::fs::write(dir.join("report.txt"), self.text()).context("writing report.txt")?;
        Ok(())
    }
}
