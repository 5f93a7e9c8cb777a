//! Turns for waiting acquires: per first constraint key, one waiter at a
//! time decides to propose; the turn passes round-robin across fairness
//! keys, first come first served within one, so a tenant with many waiters
//! cannot starve one with few.
//!
//! A waiter passes the turn as soon as its proposal is queued, not when it
//! is answered, so several waiters' acquires can share one Raft entry (in
//! turn order). The amounts proposed and not yet answered are *reserved*:
//! the next holder proposes only if capacity covers them and its own.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, Notify};

#[derive(Default)]
struct Queue {
    /// Someone holds the turn.
    busy: bool,
    /// The fairness key of the turn's holder: it goes last when the turn
    /// passes.
    holder: String,
    /// Fairness keys with waiters, in the order they get the turn next.
    order: VecDeque<String>,
    /// Per fairness key, by ticket: the order of arrival.
    waiting: HashMap<String, VecDeque<(Ticket, oneshot::Sender<Turn>)>>,
}

/// Every queue of a node, by name (scope, kind, key of the first
/// constraint).
/// A waiter's place in the order of arrival, kept if it has to queue again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

#[derive(Clone, Default)]
pub struct Turns {
    queues: Arc<Mutex<HashMap<String, Queue>>>,
    next_ticket: Arc<std::sync::atomic::AtomicU64>,
    /// Units proposed and not yet answered, per queue.
    reserved: Arc<Mutex<HashMap<String, u64>>>,
}

/// Units of a proposed acquire, counted against its queue until dropped
/// (once the proposal is answered: applied, or not).
pub struct Reservation {
    turns: Turns,
    name: String,
    amount: u64,
    /// Woken on drop: the turn's holder may be waiting for these units.
    freed: Arc<Notify>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        {
            let mut reserved = self.turns.reserved.lock().expect("reservations");
            if let Some(units) = reserved.get_mut(&self.name) {
                *units = units.saturating_sub(self.amount);
                if *units == 0 {
                    reserved.remove(&self.name);
                }
            }
        }
        self.freed.notify_waiters();
    }
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
    /// Joins queue `name` as fairness key `fairness`, last; the ticket
    /// keeps this place for [`Turns::rejoin`].
    pub fn join(&self, name: &str, fairness: &str) -> (Ticket, Place) {
        let ticket = Ticket(
            self.next_ticket
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        );
        (ticket, self.enter(name, fairness, ticket, false))
    }

    /// Joins queue `name` again at `ticket`'s place, ahead of everyone who
    /// arrived later, and with its fairness key next: for a waiter that
    /// had its turn, proposed, and was denied after all (the capacity went
    /// to an acquire that does not wait).
    pub fn rejoin(&self, name: &str, fairness: &str, ticket: Ticket) -> Place {
        self.enter(name, fairness, ticket, true)
    }

    fn enter(&self, name: &str, fairness: &str, ticket: Ticket, again: bool) -> Place {
        let mut queues = self.queues.lock().expect("turn queues");
        let queue = queues.entry(name.to_string()).or_default();
        if !queue.busy && queue.order.is_empty() {
            queue.busy = true;
            queue.holder = fairness.to_string();
            return Place::Now(self.turn(name));
        }
        let (tx, rx) = oneshot::channel();
        let waiting = queue.waiting.entry(fairness.to_string()).or_default();
        let listed = !waiting.is_empty();
        let at = waiting.partition_point(|(t, _)| *t < ticket);
        waiting.insert(at, (ticket, tx));
        if again {
            if let Some(i) = queue.order.iter().position(|k| k == fairness) {
                queue.order.remove(i);
            }
            queue.order.push_front(fairness.to_string());
        } else if !listed {
            queue.order.push_back(fairness.to_string());
        }
        Place::Queued(rx)
    }

    /// Counts `amount` units against queue `name` until the reservation
    /// drops; the drop wakes `freed`.
    pub fn reserve(&self, name: &str, amount: u32, freed: Arc<Notify>) -> Reservation {
        let mut reserved = self.reserved.lock().expect("reservations");
        *reserved.entry(name.to_string()).or_default() += u64::from(amount);
        Reservation {
            turns: self.clone(),
            name: name.to_string(),
            amount: u64::from(amount),
            freed,
        }
    }

    /// Units proposed in queue `name` and not yet answered.
    pub fn reserved(&self, name: &str) -> u64 {
        let reserved = self.reserved.lock().expect("reservations");
        reserved.get(name).copied().unwrap_or(0)
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
            let (_, next) = waiting.pop_front().expect("ordered keys have waiters");
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
                .filter(|(_, tx)| !tx.is_closed())
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
        let Place::Now(first) = turns.join("k", "a").1 else {
            panic!("expected the first waiter to get the turn at once");
        };
        let a2 = queued(turns.join("k", "a").1);
        let a3 = queued(turns.join("k", "a").1);
        let a4 = queued(turns.join("k", "a").1);
        let b1 = queued(turns.join("k", "b").1);
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
        let Place::Now(first) = turns.join("k", "").1 else {
            panic!("expected the turn at once");
        };
        let gone = queued(turns.join("k", "").1);
        let mut next = queued(turns.join("k", "").1);
        drop(gone);
        drop(first);
        let turn = next.try_recv().expect("the next live waiter gets the turn");
        drop(turn);
        assert_eq!(turns.active_queues(), 0);
    }

    /// Waiters 1 and 2 took their turns, proposed, and were denied after
    /// all (in the reverse order) while waiter 3 held the turn: they come
    /// back in arrival order, 1 then 2.
    #[tokio::test]
    async fn waiters_that_rejoin_keep_their_arrival_order() {
        let turns = Turns::default();
        let Place::Now(holder) = turns.join("k", "").1 else {
            panic!("expected the turn at once");
        };
        let (t1, q1) = turns.join("k", "");
        let (t2, q2) = turns.join("k", "");
        let mut q3 = queued(turns.join("k", "").1);
        let (mut q1, mut q2) = (queued(q1), queued(q2));
        drop(holder);
        drop(q1.try_recv().expect("waiter 1 holds the turn"));
        drop(q2.try_recv().expect("then waiter 2"));
        let third = q3.try_recv().expect("then waiter 3");
        let mut again2 = queued(turns.rejoin("k", "", t2));
        let mut again1 = queued(turns.rejoin("k", "", t1));
        drop(third);
        assert!(again2.try_recv().is_err(), "expected waiter 1 before 2");
        drop(again1.try_recv().expect("waiter 1 holds the turn again"));
        drop(again2.try_recv().expect("then waiter 2"));
        assert_eq!(turns.active_queues(), 0);
    }

    /// A waiter that comes back goes before those that arrived after it.
    #[tokio::test]
    async fn a_waiter_that_rejoins_goes_before_later_arrivals() {
        let turns = Turns::default();
        let (early, place) = turns.join("k", "");
        let Place::Now(first) = place else {
            panic!("expected the turn at once");
        };
        drop(first);
        let Place::Now(other) = turns.join("k", "").1 else {
            panic!("expected the idle queue's turn at once");
        };
        let mut later = queued(turns.join("k", "").1);
        let mut back = queued(turns.rejoin("k", "", early));
        drop(other);
        assert!(later.try_recv().is_err(), "expected the early waiter first");
        drop(back.try_recv().expect("the early waiter holds the turn"));
        drop(later.try_recv().expect("then the later one"));
        assert_eq!(turns.active_queues(), 0);
    }

    #[tokio::test]
    async fn reservations_add_up_per_queue_and_wake_on_release() {
        let turns = Turns::default();
        let freed = Arc::new(Notify::new());
        let a = turns.reserve("k", 2, Arc::clone(&freed));
        let b = turns.reserve("k", 3, Arc::clone(&freed));
        let other = turns.reserve("j", 1, Arc::clone(&freed));
        assert_eq!(turns.reserved("k"), 5);
        assert_eq!(turns.reserved("j"), 1);
        let woken = freed.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        drop(a);
        tokio::time::timeout(std::time::Duration::from_secs(1), woken)
            .await
            .expect("dropping a reservation wakes the waiting holder");
        assert_eq!(turns.reserved("k"), 3);
        drop(b);
        drop(other);
        assert_eq!(turns.reserved("k"), 0);
        assert!(turns.reserved.lock().unwrap().is_empty());
    }
}
