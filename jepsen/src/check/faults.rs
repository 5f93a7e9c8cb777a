//! When the nemesis had faults active, and how long a fault can hold back
//! an operation's effect.
//!
//! A request can outlive its client's patience: sent to a paused node, it
//! waits in the kernel's socket buffer and is served on resume; forwarded
//! across a partition, TCP retransmits it after the heal. An attempt that
//! was outstanding while a fault was active may therefore take effect after
//! the fault ends, by as much as the fault lasted (TCP's doubling
//! retransmission timer waits up to about as long as the outage so far)
//! plus [`RECOVERY_MS`] for an election and the backlog to drain.

use crate::history::{History, Op};

/// Time after a fault's hold-back for the cluster to elect a leader and
/// serve what queued up.
pub const RECOVERY_MS: u64 = 3_000;

/// The fault windows of a history, `[start, stop]` in harness time.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    windows: Vec<(u64, u64)>,
}

impl Faults {
    /// Pairs each nemesis `start` with the next `stop` of the same name; a
    /// fault never stopped lasts to the end of time.
    pub fn of(history: &History) -> Faults {
        let mut open: Vec<(&str, u64)> = Vec::new();
        let mut windows = Vec::new();
        for e in &history.events {
            let Op::Nemesis(n) = &e.op else { continue };
            match n.action.as_str() {
                "start" => open.push((n.name.as_str(), e.t_ns)),
                "stop" => {
                    if let Some(i) = open.iter().position(|(name, _)| *name == n.name) {
                        windows.push((open.remove(i).1, e.t_ns));
                    }
                }
                _ => {}
            }
        }
        windows.extend(open.into_iter().map(|(_, start_ns)| (start_ns, u64::MAX)));
        Faults { windows }
    }

    /// The latest an attempt outstanding from `from_ns` until `to_ns`
    /// (`None`: never answered) can take effect, given that without faults
    /// it does so by `otherwise_ns`: each fault active meanwhile may hold it
    /// back until its end plus its length plus [`RECOVERY_MS`].
    pub fn held_back_until_ns(&self, from_ns: u64, to_ns: Option<u64>, otherwise_ns: u64) -> u64 {
        let to_ns = to_ns.unwrap_or(u64::MAX);
        self.windows
            .iter()
            .filter(|&&(start_ns, stop_ns)| start_ns <= to_ns && stop_ns >= from_ns)
            .map(|&(start_ns, stop_ns)| {
                stop_ns
                    .saturating_add(stop_ns - start_ns)
                    .saturating_add(RECOVERY_MS * 1_000_000)
            })
            .fold(otherwise_ns, u64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn faults_pair_by_name_and_an_unstopped_one_never_ends() {
        let mut s = Script::new();
        s.nemesis(100, "pause", "start");
        s.nemesis(150, "partition", "start");
        s.nemesis(200, "pause", "stop");
        s.nemesis(300, "partition", "stop");
        s.nemesis(900, "kill", "start");
        let f = Faults::of(&s.history());
        assert_eq!(
            f.windows,
            vec![
                (100 * MS, 200 * MS),
                (150 * MS, 300 * MS),
                (900 * MS, u64::MAX)
            ]
        );
    }

    #[test]
    fn only_faults_overlapping_the_attempt_hold_it_back() {
        let mut s = Script::new();
        s.nemesis(1_000, "pause", "start");
        s.nemesis(3_000, "pause", "stop");
        let f = Faults::of(&s.history());
        // Before, after, and without faults: the plain bound.
        assert_eq!(f.held_back_until_ns(0, Some(900 * MS), 5 * MS), 5 * MS);
        assert_eq!(
            f.held_back_until_ns(3_001 * MS, Some(4_000 * MS), 7 * MS),
            7 * MS
        );
        // Overlapping: end + length + recovery.
        let held = (3_000 + 2_000 + RECOVERY_MS) * MS;
        assert_eq!(f.held_back_until_ns(500 * MS, Some(1_000 * MS), 0), held);
        assert_eq!(f.held_back_until_ns(2_000 * MS, None, 0), held);
        assert_eq!(f.held_back_until_ns(2_000 * MS, None, u64::MAX), u64::MAX);
    }
}
