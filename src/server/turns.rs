//! Turns for waiting acquires: per first constraint key, one waiter at a
//! time retries; the turn passes round-robin across fairness keys, first
//! come first served within one, so a tenant with many waiters cannot
//! starve one with few.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

#[derive(Default)]
struct Queue {
    /// Someone holds the turn.
    busy: bool,
    /// The fairness key of the turn's holder: it goes last when the turn
    /// passes.
    holder: String,
    /// Fairness keys with waiters, in the order they get the turn next.
    order: VecDeque<String>,
    waiting: HashMap<String, VecDeque<oneshot::Sender<Turn>>>,
}

/// Every queue of a node, by name (scope, kind, key of the first
/// constraint).
#[derive(Clone, Default)]
pub struct Turns {
    queues: Arc<Mutex<HashMap<String, Queue>>>,
}

/// The right to retry. Dropping it passes the turn on.
pub struct Turn {
    turns: Turns,
    name: String,
    /// Disarmed turns pass nothing on (one that never reached a waiter).
    armed: bool,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.armed {
            self.turns.pass(&self.name);
        }
    }
}

/// Either the turn at once, or a place in the queue.
pub enum Place {
    Now(Turn),
    Queued(oneshot::Receiver<Turn>),
}

impl Turns {
    /// Joins queue `name` as fairness key `fairness`.
    pub fn join(&self, name: &str, fairness: &str) -> Place {
        let mut queues = self.queues.lock().expect("turn queues");
        let queue = queues.entry(name.to_string()).or_default();
        if !queue.busy && queue.order.is_empty() {
            queue.busy = true;
            queue.holder = fairness.to_string();
            return Place::Now(self.turn(name));
        }
        let (tx, rx) = oneshot::channel();
        let waiting = queue.waiting.entry(fairness.to_string()).or_default();
        if waiting.is_empty() {
            queue.order.push_back(fairness.to_string());
        }
        waiting.push_back(tx);
        Place::Queued(rx)
    }

    fn turn(&self, name: &str) -> Turn {
        Turn {
            turns: self.clone(),
            name: name.to_string(),
            armed: true,
        }
    }

    /// Hands the turn to the next waiter: the first of the next fairness
    /// key in round-robin order. A waiter that gave up is skipped.
    fn pass(&self, name: &str) {
        let mut queues = self.queues.lock().expect("turn queues");
        let Some(queue) = queues.get_mut(name) else {
            return;
        };
        // The holder's party was just served: the others go first.
        if let Some(i) = queue.order.iter().position(|k| *k == queue.holder) {
            let served = queue.order.remove(i).expect("position is in range");
            queue.order.push_back(served);
        }
        while let Some(fairness) = queue.order.pop_front() {
            let waiting = queue.waiting.get_mut(&fairness).expect("ordered keys wait");
            let next = waiting.pop_front().expect("ordered keys have waiters");
            if waiting.is_empty() {
                queue.waiting.remove(&fairness);
            } else {
                queue.order.push_back(fairness.clone());
            }
            match next.send(self.turn(name)) {
                Ok(()) => {
                    queue.holder = fairness;
                    return;
                }
                // Gave up waiting; its turn must not pass again (we hold
                // the lock) — disarm and try the next.
                Err(mut turn) => turn.armed = false,
            }
        }
        queues.remove(name);
    }

    /// Acquires in queue `name`: the turn's holder and those still
    /// waiting for it.
    pub fn waiters(&self, name: &str) -> usize {
        let queues = self.queues.lock().expect("turn queues");
        queues.get(name).map_or(0, |q| {
            let waiting: usize = q
                .waiting
                .values()
                .flatten()
                .filter(|tx| !tx.is_closed())
                .count();
            usize::from(q.busy) + waiting
        })
    }

    /// Queues with waiters or a turn held.
    pub fn active_queues(&self) -> usize {
        self.queues.lock().expect("turn queues").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(place: Place) -> oneshot::Receiver<Turn> {
        match place {
            Place::Queued(rx) => rx,
            Place::Now(_) => panic!("expected to queue behind the turn holder"),
        }
    }

    /// Tenant a queues three waiters before tenant b's one; b is served
    /// second, not last.
    #[tokio::test]
    async fn turns_rotate_across_fairness_keys() {
        let turns = Turns::default();
        let Place::Now(first) = turns.join("k", "a") else {
            panic!("expected the first waiter to get the turn at once");
        };
        let a2 = queued(turns.join("k", "a"));
        let a3 = queued(turns.join("k", "a"));
        let a4 = queued(turns.join("k", "a"));
        let b1 = queued(turns.join("k", "b"));
        assert_eq!(
            turns.waiters("k"),
            5,
            "expected the holder and four waiting"
        );
        let mut order = Vec::new();
        drop(first);
        let mut pending = vec![("a2", a2), ("a3", a3), ("a4", a4), ("b1", b1)];
        while !pending.is_empty() {
            let i = pending
                .iter_mut()
                .position(|(_, rx)| rx.try_recv().is_ok())
                .expect("exactly one waiter holds the turn");
            // try_recv took the turn out and dropped it: the next one is up.
            order.push(pending.remove(i).0);
        }
        // a1 (a) held the turn, so b goes before a's next.
        assert_eq!(order, ["b1", "a2", "a3", "a4"]);
        assert_eq!(
            turns.active_queues(),
            0,
            "expected the idle queue to be dropped"
        );
    }

    #[tokio::test]
    async fn a_waiter_that_gave_up_is_skipped() {
        let turns = Turns::default();
        let Place::Now(first) = turns.join("k", "") else {
            panic!("expected the turn at once");
        };
        let gone = queued(turns.join("k", ""));
        let mut next = queued(turns.join("k", ""));
        drop(gone);
        drop(first);
        let turn = next.try_recv().expect("the next live waiter gets the turn");
        drop(turn);
        assert_eq!(turns.active_queues(), 0);
    }
}
