//! Fail-stop storage: after the first error in the log or the state
//! (a RocksDB read or write, a WAL sync, a Raft group stopped by one), the
//! node never serves from that state again.
//!
//! A failed fsync is the reason (PostgreSQL's "fsyncgate"): the kernel may
//! drop the dirty pages it could not write and report the error once, so a
//! later fsync can succeed over data that never reached the disk. Nothing
//! written before the failure can be trusted to be durable, and retrying
//! cannot make it so. The only honest course is to stop, and let a restart
//! recover whatever the disk really holds.
//!
//! [`FailStop`] latches the first fault: from then on every storage
//! operation of the node is refused, and the handler the node installed
//! runs once (the server's exits the process).

use std::sync::OnceLock;

/// What failed, and how. The first one of a node is kept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {error}")]
pub struct StorageFault {
    /// The operation, e.g. "WAL sync (fsync)".
    pub what: String,
    pub error: String,
}

impl StorageFault {
    pub fn new(what: impl Into<String>, error: impl std::fmt::Display) -> Self {
        StorageFault {
            what: what.into(),
            error: error.to_string(),
        }
    }
}

/// Runs once, on the thread that met the first fault, after it is
/// latched and logged, before that thread answers anyone.
pub type FaultHandler = Box<dyn Fn(&StorageFault) + Send + Sync>;

/// The node's storage health: fine until the first fault, failed forever
/// after.
pub struct FailStop {
    fault: OnceLock<StorageFault>,
    on_fault: Option<FaultHandler>,
}

impl FailStop {
    pub fn new(on_fault: Option<FaultHandler>) -> Self {
        FailStop {
            fault: OnceLock::new(),
            on_fault,
        }
    }

    /// Latches `fault` unless another came first, logs it and runs the
    /// handler; returns the fault that stands (the first).
    pub fn fail(&self, fault: StorageFault) -> StorageFault {
        let mut first = false;
        let latched = self.fault.get_or_init(|| {
            first = true;
            fault.clone()
        });
        if !first {
            tracing::error!(%fault, first = %latched, "storage fault after the first one");
            return latched.clone();
        }
        tracing::error!(
            what = %latched.what,
            error = %latched.error,
            "storage fault: this node stops serving and never uses this state again"
        );
        if let Some(handler) = &self.on_fault {
            handler(latched);
        }
        latched.clone()
    }

    /// The first fault, if storage has failed.
    pub fn fault(&self) -> Option<&StorageFault> {
        self.fault.get()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn the_first_fault_stands_and_the_handler_runs_once() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let fail_stop = FailStop::new(Some(Box::new(move |fault| {
            assert_eq!(fault.what, "WAL sync");
            counted.fetch_add(1, Ordering::SeqCst);
        })));
        assert_eq!(fail_stop.fault(), None);
        let first = StorageFault::new("WAL sync", "Input/output error");
        assert_eq!(fail_stop.fail(first.clone()), first);
        let second = StorageFault::new("write", "No space left on device");
        assert_eq!(fail_stop.fail(second), first);
        assert_eq!(fail_stop.fault(), Some(&first));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(first.to_string(), "WAL sync: Input/output error");
    }
}
