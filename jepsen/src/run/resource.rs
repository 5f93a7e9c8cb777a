//! The resources of the `fenced` workload: one counter per key, inside the
//! harness, guarded by the fencing tokens of leases on that key. Each
//! resource handles one op at a time under a mutex, so it is linearizable
//! at the instant it holds the lock; it numbers the ops it handles so that
//! the checker knows its order.

use std::collections::HashMap;
use std::sync::Mutex;

/// Every key's resource.
#[derive(Default)]
pub struct Resources {
    keys: Mutex<HashMap<String, Resource>>,
}

#[derive(Default)]
struct Resource {
    value: u64,
    /// The largest token accepted so far.
    highest: Option<u64>,
    /// Ops handled so far, accepted or not: the next op's number.
    handled: u64,
}

/// What the resource answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The op's number among the key's ops.
    pub seq: u64,
    /// Accepted: the value read, or written. `None`: refused as stale.
    pub value: Option<u64>,
}

impl Resources {
    /// A read of `key` (`write: None`), or a write of `read + 1`
    /// (`write: Some(read)`), carrying `token`. Refused if the resource
    /// accepted a larger token before; accepted, the token becomes the
    /// largest seen.
    pub fn access(&self, key: &str, token: u64, write: Option<u64>) -> Answer {
        let mut keys = self.keys.lock().expect("resources");
        let r = keys.entry(key.to_string()).or_default();
        let seq = r.handled;
        r.handled += 1;
        if r.highest.is_some_and(|h| token < h) {
            return Answer { seq, value: None };
        }
        r.highest = Some(token);
        if let Some(read) = write {
            r.value = read + 1;
        }
        Answer {
            seq,
            value: Some(r.value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_smaller_token_is_refused_once_a_larger_one_was_seen() {
        let r = Resources::default();
        let answer = |seq, value| Answer { seq, value };
        assert_eq!(r.access("k", 3, None), answer(0, Some(0)));
        assert_eq!(r.access("k", 5, None), answer(1, Some(0)));
        assert_eq!(r.access("k", 3, Some(0)), answer(2, None), "the zombie");
        assert_eq!(r.access("k", 5, Some(0)), answer(3, Some(1)));
        assert_eq!(r.access("k", 5, None), answer(4, Some(1)), "equal passes");
        // The value is what the writer read plus one, whatever it holds.
        assert_eq!(r.access("k", 6, Some(7)), answer(5, Some(8)));
        assert_eq!(r.access("other", 1, None), answer(0, Some(0)));
    }
}
