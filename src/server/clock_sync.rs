//! Whether this node's wall clock may stamp lease time.
//!
//! A group's leader stamps every entry with its wall clock, and the engine
//! applies each entry at the later of its stamp and the last applied time,
//! so a leader whose clock runs ahead would expire leases early. A node
//! therefore stamps only while its clock is *synchronized*: within
//! `max_clock_offset_ms` of the clocks of a majority of the members
//! (itself included), as measured over the peer plane every
//! [`PROBE_INTERVAL`]. A node that is not synchronized refuses to stamp,
//! stops standing for election and stops sending heartbeats, so its groups
//! elect another leader; `/ready` says why.
//!
//! Between two measurements a clock may be stepped (by hand, by NTP, or on
//! resuming from a pause). Each measurement keeps this node's wall and
//! monotonic readings, and the offset is re-estimated at every stamp from
//! how far the wall clock moved against the monotonic one since, so a step
//! counts at once, not at the next probe.
//!
//! The promise: with a majority of correct clocks, every stamp is within
//! `max_clock_offset_ms` of true time, so a lease is never treated as expired
//! more than `2 × max_clock_offset_ms` before its TTL has passed on a correct
//! clock. A one-node cluster has no one to compare with and trusts its clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::clock;
use crate::raft::NodeId;

/// How often each peer's clock is read.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// A measurement older than this no longer counts: the peer may have been
/// stepped since, or be gone.
const SAMPLE_MAX_AGE: Duration = Duration::from_secs(2);

/// One reading of a peer's clock.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// The peer's wall clock minus ours, at the time of the reading.
    offset_ms: i64,
    /// Half the round trip: the offset is known to within this.
    uncertainty_ms: u64,
    /// Our wall and monotonic clocks at the reading's midpoint.
    wall_ms: u64,
    at: Instant,
}

impl Sample {
    /// The peer's offset now, assuming its clock kept pace with our
    /// monotonic clock: a step of our wall clock since shows in full.
    fn offset_now(&self, wall_ms: u64, now: Instant) -> i64 {
        let wall_moved = i128::from(wall_ms) - i128::from(self.wall_ms);
        let mono_moved = i128::try_from(now.duration_since(self.at).as_millis()).unwrap_or(0);
        let ours_stepped = wall_moved - mono_moved;
        i64::try_from(i128::from(self.offset_ms) - ours_stepped).unwrap_or(i64::MAX)
    }
}

/// Why this node may not stamp lease time now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("this node's clock is not synchronized: {0}")]
pub struct Unsynchronized(pub String);

pub struct ClockSync {
    node: NodeId,
    members: usize,
    max_offset_ms: u64,
    samples: Mutex<HashMap<NodeId, Sample>>,
    /// The verdict of the last [`ClockSync::check`] the watcher made, for
    /// `/ready` and the election switch.
    synchronized: AtomicBool,
}

impl ClockSync {
    /// `members`: how many nodes the cluster has, this one included.
    pub fn new(node: NodeId, members: usize, max_offset_ms: u64) -> ClockSync {
        ClockSync {
            node,
            members,
            max_offset_ms,
            samples: Mutex::new(HashMap::new()),
            synchronized: AtomicBool::new(members <= 1),
        }
    }

    pub fn max_offset_ms(&self) -> u64 {
        self.max_offset_ms
    }

    /// Records a reading of `peer`'s clock: our wall clock read `sent_wall_ms`
    /// at `sent`, the peer answered `peer_wall_ms`, and the answer arrived
    /// at `received`.
    pub fn record(
        &self,
        peer: NodeId,
        sent_wall_ms: u64,
        sent: Instant,
        peer_wall_ms: u64,
        received: Instant,
    ) {
        let half_rtt = received.duration_since(sent) / 2;
        let half_rtt_ms = u64::try_from(half_rtt.as_millis()).unwrap_or(u64::MAX);
        let wall_ms = sent_wall_ms.saturating_add(half_rtt_ms);
        let offset_ms =
            i64::try_from(i128::from(peer_wall_ms) - i128::from(wall_ms)).unwrap_or(i64::MAX);
        let sample = Sample {
            offset_ms,
            // Both clocks are read in whole milliseconds.
            uncertainty_ms: half_rtt_ms + 1,
            wall_ms,
            at: sent + half_rtt,
        };
        metrics::gauge!("leasehold_clock_offset_ms", "peer" => peer.to_string())
            .set(offset_ms as f64);
        self.samples
            .lock()
            .expect("clock samples")
            .insert(peer, sample);
    }

    /// Ok when this node may stamp lease time now: it agrees within the
    /// bound with enough peers to make a majority with itself.
    pub fn check(&self) -> Result<(), Unsynchronized> {
        let needed = self.members / 2; // peers, besides this node
        if needed == 0 {
            return Ok(());
        }
        let (wall_ms, now) = (clock::now_ms(), Instant::now());
        let samples = self.samples.lock().expect("clock samples");
        let mut agreeing = 0;
        let mut worst: Option<(NodeId, i64)> = None;
        for (peer, sample) in samples.iter() {
            if now.duration_since(sample.at) > SAMPLE_MAX_AGE {
                continue;
            }
            let offset = sample.offset_now(wall_ms, now);
            if offset.unsigned_abs() + sample.uncertainty_ms <= self.max_offset_ms {
                agreeing += 1;
            } else if worst.is_none_or(|(_, w)| offset.abs() > w.abs()) {
                worst = Some((*peer, offset));
            }
        }
        if agreeing >= needed {
            return Ok(());
        }
        let why = match worst {
            Some((peer, offset)) => format!(
                "node {peer}'s clock is {offset} ms from this node's; \
                 max_clock_offset_ms is {}",
                self.max_offset_ms
            ),
            None => format!(
                "no recent reading of enough peers' clocks (node {} agrees with {agreeing} \
                 of the {needed} it needs)",
                self.node
            ),
        };
        Err(Unsynchronized(why))
    }

    /// The time to stamp an entry with: this node's wall clock, if it is
    /// synchronized.
    pub fn stamp_ms(&self) -> Result<u64, Unsynchronized> {
        self.check()?;
        Ok(clock::now_ms())
    }

    /// Records the watcher's verdict; true when it changed.
    pub fn set_synchronized(&self, synchronized: bool) -> bool {
        metrics::gauge!("leasehold_clock_synchronized").set(if synchronized { 1.0 } else { 0.0 });
        self.synchronized.swap(synchronized, Ordering::AcqRel) != synchronized
    }

    pub fn is_synchronized(&self) -> bool {
        self.synchronized.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(sync: &ClockSync, peer: NodeId, offset_ms: i64) {
        let sent = Instant::now();
        let wall = clock::now_ms();
        let peer_wall = u64::try_from(i128::from(wall) + i128::from(offset_ms)).unwrap();
        sync.record(peer, wall, sent, peer_wall, sent);
    }

    #[test]
    fn one_node_trusts_itself() {
        let sync = ClockSync::new(1, 1, 100);
        assert_eq!(sync.check(), Ok(()));
        assert!(sync.is_synchronized());
    }

    #[test]
    fn a_majority_must_agree_within_the_bound() {
        let sync = ClockSync::new(1, 3, 100);
        assert!(sync.check().is_err(), "no readings yet");
        reading(&sync, 2, 5_000);
        let err = sync.check().unwrap_err();
        assert!(err.0.contains("node 2's clock is"), "{err}");
        reading(&sync, 3, -40);
        assert_eq!(sync.check(), Ok(()), "node 3 agrees: two of three");
        let five = ClockSync::new(1, 5, 100);
        reading(&five, 2, 10);
        assert!(five.check().is_err(), "two of five is no majority");
        reading(&five, 3, -10);
        assert_eq!(five.check(), Ok(()));
    }

    #[test]
    fn a_step_of_our_clock_counts_before_the_next_reading() {
        let at = Instant::now();
        let sample = Sample {
            offset_ms: 3,
            uncertainty_ms: 1,
            wall_ms: 50_000,
            at,
        };
        let later = at + Duration::from_millis(100);
        assert_eq!(sample.offset_now(50_100, later), 3, "in step");
        assert_eq!(
            sample.offset_now(60_100, later),
            -9_997,
            "stepped 10 s ahead"
        );
        assert_eq!(sample.offset_now(49_100, later), 1_003, "stepped 1 s back");
    }
}
