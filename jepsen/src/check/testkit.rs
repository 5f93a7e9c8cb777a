//! Builders for test histories: each op gets its own process, times are in
//! milliseconds.

use crate::history::{
    Access, Acquire, Completed, Event, EventKind, Extend, Fenced, History, Inspect, Nemesis, Op,
    Phase, Release, Throttle, ThrottleKind, LEASE_LOST, NEMESIS, STALE_TOKEN,
};

const NS_PER_MS: u64 = 1_000_000;

/// Records operations as invoke/completion event pairs.
#[derive(Default)]
pub struct Script {
    events: Vec<Event>,
    next_process: u64,
    phase: Phase,
}

impl Script {
    pub fn new() -> Self {
        Script::default()
    }

    /// The phase of the ops recorded from now on.
    pub fn phase(&mut self, phase: Phase) -> &mut Self {
        self.phase = phase;
        self
    }

    pub fn ok(&mut self, invoke_ms: u64, complete_ms: u64, op: impl Into<Op>) -> &mut Self {
        self.op(invoke_ms, Some((complete_ms, EventKind::Ok)), op.into())
    }

    pub fn fail(&mut self, invoke_ms: u64, complete_ms: u64, op: impl Into<Op>) -> &mut Self {
        self.op(invoke_ms, Some((complete_ms, EventKind::Fail)), op.into())
    }

    pub fn info(&mut self, invoke_ms: u64, complete_ms: u64, op: impl Into<Op>) -> &mut Self {
        self.op(invoke_ms, Some((complete_ms, EventKind::Info)), op.into())
    }

    /// An op the run ended before completing.
    pub fn pending(&mut self, invoke_ms: u64, op: impl Into<Op>) -> &mut Self {
        self.op(invoke_ms, None, op.into())
    }

    pub fn nemesis(&mut self, at_ms: u64, name: &str, action: &str) -> &mut Self {
        self.events.push(Event {
            t_ns: at_ms * NS_PER_MS,
            process: NEMESIS,
            kind: EventKind::Info,
            op: Op::Nemesis(Nemesis {
                name: name.to_string(),
                action: action.to_string(),
                detail: String::new(),
            }),
            node: None,
            phase: self.phase,
        });
        self
    }

    fn op(&mut self, invoke_ms: u64, end: Option<(u64, EventKind)>, op: Op) -> &mut Self {
        let process = self.next_process;
        self.next_process += 1;
        let event = |t_ms: u64, kind: EventKind| Event {
            t_ns: t_ms * NS_PER_MS,
            process,
            kind,
            op: op.clone(),
            node: Some("n1".to_string()),
            phase: self.phase,
        };
        let mut recorded = vec![event(invoke_ms, EventKind::Invoke)];
        if let Some((complete_ms, kind)) = end {
            recorded.push(event(complete_ms, kind));
        }
        self.events.extend(recorded);
        self
    }

    /// The events in time order, as a run would log them.
    pub fn history(&self) -> History {
        let mut events = self.events.clone();
        events.sort_by_key(|e| e.t_ns);
        History { events }
    }

    pub fn ops(&self) -> Vec<Completed> {
        self.history().pairs().expect("test histories pair")
    }
}

/// An acquire of one unit of `key` with limit 1, ttl 1s, slot 0.
pub fn acq(key: &str, idem: &str) -> Acquire {
    Acquire {
        key: key.to_string(),
        limit: 1,
        slot: 0,
        idem: idem.to_string(),
        ttl_ms: 1000,
        lease: None,
        token: None,
        retry_after_ms: None,
        wait_ms: None,
        error: None,
    }
}

impl Acquire {
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }

    pub fn ttl(mut self, ttl_ms: u64) -> Self {
        self.ttl_ms = ttl_ms;
        self
    }

    pub fn slot(mut self, slot: u32) -> Self {
        self.slot = slot;
        self
    }

    /// Granted `lease`, with the lease id as fencing token as the server
    /// does.
    pub fn lease(mut self, lease: u64) -> Self {
        self.lease = Some(lease);
        self.token = Some(lease);
        self
    }

    pub fn token(mut self, token: u64) -> Self {
        self.token = Some(token);
        self
    }

    pub fn error(mut self, code: &str) -> Self {
        self.error = Some(code.to_string());
        self
    }
}

/// An extend of `lease` on `key` by 1s.
pub fn ext(key: &str, idem: &str, lease: u64) -> Extend {
    Extend {
        key: key.to_string(),
        limit: 1,
        slot: 0,
        idem: idem.to_string(),
        lease,
        ttl_ms: 1000,
        error: None,
    }
}

impl Extend {
    pub fn ttl(mut self, ttl_ms: u64) -> Self {
        self.ttl_ms = ttl_ms;
        self
    }

    pub fn lost(self) -> Self {
        self.error(LEASE_LOST)
    }

    pub fn error(mut self, code: &str) -> Self {
        self.error = Some(code.to_string());
        self
    }
}

/// A release of `lease` on `key`.
pub fn rel(key: &str, idem: &str, lease: u64) -> Release {
    Release {
        key: key.to_string(),
        limit: 1,
        slot: 0,
        idem: idem.to_string(),
        lease,
        was_held: None,
        error: None,
    }
}

impl Release {
    pub fn held(mut self, was_held: bool) -> Self {
        self.was_held = Some(was_held);
        self
    }
}

/// A throttle admission on `key`: 10 per second, no burst.
pub fn thr(key: &str, idem: &str) -> Throttle {
    Throttle {
        key: key.to_string(),
        slot: 0,
        idem: idem.to_string(),
        kind: ThrottleKind::Gcra,
        limit: 10,
        period_ms: 1000,
        burst: 0,
        token: None,
        error: None,
    }
}

impl Throttle {
    pub fn rate(mut self, limit: u32, period_ms: u64, burst: u32) -> Self {
        (self.limit, self.period_ms, self.burst) = (limit, period_ms, burst);
        self
    }

    pub fn token(mut self, token: u64) -> Self {
        self.token = Some(token);
        self
    }
}

/// An admission through a rate limit on `key`: 2 per second.
pub fn rl(key: &str, idem: &str) -> Throttle {
    Throttle {
        kind: ThrottleKind::RateLimit,
        limit: 2,
        ..thr(key, idem)
    }
}

/// A read of `key`'s fenced resource with `token`, answering `value`.
pub fn fread(key: &str, token: u64, seq: u64, value: u64) -> Fenced {
    Fenced {
        key: key.to_string(),
        slot: 0,
        access: Access::Read,
        token,
        read: None,
        value: Some(value),
        seq: Some(seq),
        error: None,
    }
}

/// A write of `read + 1` to `key`'s fenced resource with `token`.
pub fn fwrite(key: &str, token: u64, seq: u64, read: u64) -> Fenced {
    Fenced {
        access: Access::Write,
        read: Some(read),
        value: Some(read + 1),
        ..fread(key, token, seq, 0)
    }
}

impl Fenced {
    /// Refused by the resource: no value.
    pub fn stale(mut self) -> Self {
        self.value = None;
        self.error = Some(STALE_TOKEN.to_string());
        self
    }

    /// What the resource answered, whatever the client sent.
    pub fn value(mut self, value: u64) -> Self {
        self.value = Some(value);
        self
    }
}

/// An inspect of `key` answering `holders`.
pub fn inspect(key: &str, holders: &[u64]) -> Inspect {
    Inspect {
        key: key.to_string(),
        slot: 0,
        holders: Some(holders.to_vec()),
    }
}
