//! The fault schedule: which fault starts when and for how long, drawn
//! from the seed alone, so a seed prints and replays the same schedule.
//! Targets that depend on the cluster's state ("the leader") stay named as
//! roles here and are resolved when the fault starts; the history records
//! the nodes they resolved to.

use std::fmt;

use super::rng::Rng;

pub type NodeId = u64;

/// The schedule's stream of the seed; workers use others.
const SCHEDULE_STREAM: u64 = 0x5C4E_D01E;

/// Quiet time before the first fault, and between two faults, in ms.
const QUIET_MS: (u64, u64) = (2_000, 4_000);
/// How long one fault lasts, in ms.
const FAULT_MS: (u64, u64) = (4_000, 8_000);
/// A fault shorter than this is not worth starting before the end.
const FAULT_MS_MIN: u64 = 2_000;
/// The main phase ends with this long without faults.
const TAIL_MS: u64 = 2_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum NemesisKind {
    /// Network partitions by iptables DROP rules in the nodes' namespaces.
    Partition,
    /// SIGKILL then restart on the same data.
    Kill,
    /// SIGSTOP / SIGCONT (docker pause).
    Pause,
    /// Clock skew and rate faults through the nodes' test clock files.
    Clock,
    /// Random packet loss.
    Loss,
    /// Storage faults through the nodes' test fault files: a failed fsync,
    /// a full disk. The node must stop (exit 74); it is restarted on its
    /// data once the fault is cleared.
    Storage,
}

impl NemesisKind {
    pub fn name(self) -> &'static str {
        match self {
            NemesisKind::Partition => "partition",
            NemesisKind::Kill => "kill",
            NemesisKind::Pause => "pause",
            NemesisKind::Clock => "clock",
            NemesisKind::Loss => "loss",
            NemesisKind::Storage => "storage",
        }
    }
}

/// Whom a fault hits.
#[derive(Clone, Debug, PartialEq)]
pub enum Who {
    Node(NodeId),
    /// The node leading the most groups when the fault starts.
    Leader,
    Nodes(Vec<NodeId>),
    All,
}

/// The shape of a network partition.
#[derive(Clone, Debug, PartialEq)]
pub enum Cut {
    /// The node(s) cut off from every other node.
    Isolate(Who),
    /// Two sides that cannot talk; `minority` against the rest.
    Halves { minority: Vec<NodeId> },
    /// Every node sees a majority, but no two nodes the same one.
    MajoritiesRing,
    /// Two sides joined only through `bridge`.
    Bridge {
        left: Vec<NodeId>,
        bridge: NodeId,
        right: Vec<NodeId>,
    },
    /// Packets from `from` to `to` are dropped; the other way flows.
    OneWay { from: Who, to: Vec<NodeId> },
}

/// What a storage fault makes fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageFault {
    /// The next WAL sync fails with EIO, once, as a real fsync error is
    /// reported once.
    FsyncError,
    /// Every write fails with ENOSPC while the fault lasts.
    DiskFull,
}

impl StorageFault {
    /// The fault file's text for this fault (see the server's
    /// `--unsafe-test-storage-faults`).
    pub fn fault_file_text(self) -> &'static str {
        match self {
            StorageFault::FsyncError => "fsync=eio once\n",
            StorageFault::DiskFull => "write=enospc\n",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ClockFault {
    /// Steps the clocks of `who` by `offset_ms`.
    Skew { who: Who, offset_ms: i64 },
    /// Runs the clocks of `who` at `rate` times real time.
    Rate { who: Who, rate: f64 },
    /// Steps every node by its own offset.
    Scramble { offsets_ms: Vec<(NodeId, i64)> },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    Partition(Cut),
    Loss { who: Who, percent: u32 },
    Kill(Who),
    Pause(Who),
    Clock(ClockFault),
    Storage { who: Who, fault: StorageFault },
}

impl Fault {
    pub fn kind(&self) -> NemesisKind {
        match self {
            Fault::Partition(_) => NemesisKind::Partition,
            Fault::Loss { .. } => NemesisKind::Loss,
            Fault::Kill(_) => NemesisKind::Kill,
            Fault::Pause(_) => NemesisKind::Pause,
            Fault::Clock(_) => NemesisKind::Clock,
            Fault::Storage { .. } => NemesisKind::Storage,
        }
    }
}

/// One fault: it starts `at_ms` after the main phase starts and is healed
/// `duration_ms` later.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub at_ms: u64,
    pub duration_ms: u64,
    pub fault: Fault,
}

/// Draws the schedule for `nodes` (ids 1..=nodes) over `time_limit_ms`.
/// Kinds take turns in an order shuffled anew each round, so every kind
/// asked for runs once before any runs twice.
pub fn generate(seed: u64, nodes: u64, kinds: &[NemesisKind], time_limit_ms: u64) -> Vec<Step> {
    let mut rng = Rng::fork(seed, SCHEDULE_STREAM);
    let ids: Vec<NodeId> = (1..=nodes).collect();
    let end = time_limit_ms.saturating_sub(TAIL_MS);
    let mut steps = Vec::new();
    let mut round: Vec<NemesisKind> = Vec::new();
    let mut at_ms = rng.range(QUIET_MS.0, QUIET_MS.1);
    while !kinds.is_empty() && at_ms + FAULT_MS_MIN <= end {
        if round.is_empty() {
            round = kinds.to_vec();
            rng.shuffle(&mut round);
        }
        let kind = round.pop().expect("refilled above");
        let duration_ms = rng.range(FAULT_MS.0, FAULT_MS.1).min(end - at_ms);
        let fault = draw(kind, &mut rng, &ids);
        steps.push(Step {
            at_ms,
            duration_ms,
            fault,
        });
        at_ms += duration_ms + rng.range(QUIET_MS.0, QUIET_MS.1);
    }
    steps
}

fn draw(kind: NemesisKind, rng: &mut Rng, ids: &[NodeId]) -> Fault {
    match kind {
        NemesisKind::Partition => Fault::Partition(draw_cut(rng, ids)),
        NemesisKind::Loss => Fault::Loss {
            who: if rng.chance(50) {
                Who::All
            } else {
                Who::Node(*rng.pick(ids))
            },
            percent: rng.range(10, 30) as u32,
        },
        NemesisKind::Kill => Fault::Kill(match rng.range(0, 3) {
            0 => Who::Node(*rng.pick(ids)),
            1 => Who::Leader,
            2 => Who::Nodes(majority(rng, ids)),
            _ => Who::All,
        }),
        NemesisKind::Pause => Fault::Pause(match rng.range(0, 2) {
            0 => Who::Node(*rng.pick(ids)),
            1 => Who::Leader,
            _ => Who::All,
        }),
        NemesisKind::Clock => Fault::Clock(draw_clock(rng, ids)),
        NemesisKind::Storage => Fault::Storage {
            who: if rng.chance(50) {
                Who::Leader
            } else {
                Who::Node(*rng.pick(ids))
            },
            fault: if rng.chance(50) {
                StorageFault::FsyncError
            } else {
                StorageFault::DiskFull
            },
        },
    }
}

fn draw_cut(rng: &mut Rng, ids: &[NodeId]) -> Cut {
    let mut shuffled = ids.to_vec();
    rng.shuffle(&mut shuffled);
    match rng.range(0, 5) {
        0 => Cut::Isolate(Who::Node(shuffled[0])),
        1 => Cut::Isolate(Who::Leader),
        2 => {
            let mut minority = shuffled[..ids.len() / 2].to_vec();
            minority.sort_unstable();
            Cut::Halves { minority }
        }
        3 => Cut::MajoritiesRing,
        4 => {
            let bridge = shuffled[0];
            let rest = &shuffled[1..];
            let (left, right) = rest.split_at(rest.len() / 2);
            let (mut left, mut right) = (left.to_vec(), right.to_vec());
            left.sort_unstable();
            right.sort_unstable();
            Cut::Bridge {
                left,
                bridge,
                right,
            }
        }
        _ => {
            let from = if rng.chance(50) {
                Who::Leader
            } else {
                Who::Node(shuffled[0])
            };
            Cut::OneWay {
                from,
                to: ids.to_vec(),
            }
        }
    }
}

fn draw_clock(rng: &mut Rng, ids: &[NodeId]) -> ClockFault {
    let who = if rng.chance(50) {
        Who::Leader
    } else {
        Who::Node(*rng.pick(ids))
    };
    match rng.range(0, 2) {
        0 => {
            let magnitude = rng.range(200, 3_000) as i64;
            let offset_ms = if rng.chance(50) {
                magnitude
            } else {
                -magnitude
            };
            ClockFault::Skew { who, offset_ms }
        }
        1 => ClockFault::Rate {
            who,
            rate: *rng.pick(&[0.5, 0.8, 1.25, 2.0]),
        },
        _ => ClockFault::Scramble {
            offsets_ms: ids
                .iter()
                .map(|&id| (id, rng.range(0, 3_000) as i64 - 1_500))
                .collect(),
        },
    }
}

/// A random majority of `ids`, sorted.
fn majority(rng: &mut Rng, ids: &[NodeId]) -> Vec<NodeId> {
    let mut shuffled = ids.to_vec();
    rng.shuffle(&mut shuffled);
    let mut picked = shuffled[..ids.len() / 2 + 1].to_vec();
    picked.sort_unstable();
    picked
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Who::Node(id) => write!(f, "n{id}"),
            Who::Leader => f.write_str("the leader"),
            Who::Nodes(ids) => write!(f, "{}", set(ids)),
            Who::All => f.write_str("all nodes"),
        }
    }
}

/// `{n1,n3}`.
pub fn set(ids: &[NodeId]) -> String {
    let names: Vec<String> = ids.iter().map(|id| format!("n{id}")).collect();
    format!("{{{}}}", names.join(","))
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cut::Isolate(who) => write!(f, "isolate {who}"),
            Cut::Halves { minority } => write!(f, "halves: {} | the rest", set(minority)),
            Cut::MajoritiesRing => f.write_str("majorities ring"),
            Cut::Bridge {
                left,
                bridge,
                right,
            } => write!(f, "bridge: {} - n{bridge} - {}", set(left), set(right)),
            Cut::OneWay { from, .. } => write!(f, "one-way: nothing from {from} arrives"),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Partition(cut) => write!(f, "partition {cut}"),
            Fault::Loss { who, percent } => write!(f, "loss {percent}% of packets to {who}"),
            Fault::Kill(who) => write!(f, "kill -9 {who}, then restart"),
            Fault::Pause(who) => write!(f, "pause {who}, then resume"),
            Fault::Clock(ClockFault::Skew { who, offset_ms }) => {
                write!(f, "clock: step {who} by {offset_ms:+} ms")
            }
            Fault::Clock(ClockFault::Rate { who, rate }) => {
                write!(f, "clock: run {who} at {rate}x")
            }
            Fault::Clock(ClockFault::Scramble { offsets_ms }) => {
                let each: Vec<String> = offsets_ms
                    .iter()
                    .map(|(id, ms)| format!("n{id} {ms:+}"))
                    .collect();
                write!(f, "clock: scramble ({} ms)", each.join(", "))
            }
            Fault::Storage { who, fault } => match fault {
                StorageFault::FsyncError => write!(f, "storage: fsync fails (EIO) on {who}"),
                StorageFault::DiskFull => write!(f, "storage: disk full (ENOSPC) on {who}"),
            },
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "+{:>6.1}s  for {:>4.1}s  {}",
            self.at_ms as f64 / 1000.0,
            self.duration_ms as f64 / 1000.0,
            self.fault
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [NemesisKind; 6] = [
        NemesisKind::Partition,
        NemesisKind::Kill,
        NemesisKind::Pause,
        NemesisKind::Clock,
        NemesisKind::Loss,
        NemesisKind::Storage,
    ];

    #[test]
    fn a_seed_replays_its_schedule() {
        assert_eq!(generate(42, 5, &ALL, 60_000), generate(42, 5, &ALL, 60_000));
        assert_ne!(generate(42, 5, &ALL, 60_000), generate(43, 5, &ALL, 60_000));
    }

    #[test]
    fn every_kind_runs_once_before_any_twice_and_faults_do_not_overlap() {
        let steps = generate(7, 3, &ALL, 60_000);
        let first: std::collections::BTreeSet<_> = steps
            .iter()
            .take(ALL.len())
            .map(|s| s.fault.kind())
            .collect();
        assert_eq!(first.len(), ALL.len(), "{steps:#?}");
        for pair in steps.windows(2) {
            assert!(pair[0].at_ms + pair[0].duration_ms < pair[1].at_ms);
        }
        let last = steps.last().unwrap();
        assert!(last.at_ms + last.duration_ms <= 60_000 - TAIL_MS);
    }

    #[test]
    fn majorities_and_halves_are_sized_right() {
        let mut rng = Rng::new(1);
        let ids = [1, 2, 3, 4, 5];
        for _ in 0..50 {
            assert_eq!(majority(&mut rng, &ids).len(), 3);
            if let Cut::Halves { minority } = draw_cut(&mut rng, &ids) {
                assert_eq!(minority.len(), 2);
            }
        }
    }
}
