//! Appends events to the history file as they happen, stamped with the
//! harness's one monotonic clock, and keeps them for the checkers.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use leasehold_jepsen::history::{Event, EventKind, History, Nemesis, Op, Phase, Writer, NEMESIS};

use super::schedule::NodeId;

pub struct Recorder {
    start: Instant,
    inner: Mutex<Inner>,
}

struct Inner {
    writer: Writer<BufWriter<File>>,
    events: Vec<Event>,
    /// The first write error; later events are still kept in memory.
    error: Option<std::io::Error>,
}

impl Recorder {
    pub fn create(path: &Path, start: Instant) -> Result<Recorder> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Recorder {
            start,
            inner: Mutex::new(Inner {
                writer: Writer::new(BufWriter::new(file)),
                events: Vec::new(),
                error: None,
            }),
        })
    }

    /// Records one event now. The clock is read under the lock, so the
    /// file is in time order.
    pub fn record(
        &self,
        process: u64,
        kind: EventKind,
        op: Op,
        node: Option<NodeId>,
        phase: Phase,
    ) {
        let mut inner = self.inner.lock().expect("recorder");
        let event = Event {
            t_ns: u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX),
            process,
            kind,
            op,
            node: node.map(|id| format!("n{id}")),
            phase,
        };
        if let Err(error) = inner.writer.write(&event) {
            inner.error.get_or_insert(error);
        }
        inner.events.push(event);
    }

    pub fn nemesis(&self, name: &str, action: &str, detail: String, phase: Phase) {
        let op = Op::Nemesis(Nemesis {
            name: name.to_string(),
            action: action.to_string(),
            detail,
        });
        self.record(NEMESIS, EventKind::Info, op, None, phase);
    }

    /// Everything recorded, or the first error writing the file.
    pub fn finish(&self) -> Result<History> {
        let mut inner = self.inner.lock().expect("recorder");
        if let Some(error) = inner.error.take() {
            return Err(error).context("writing the history");
        }
        Ok(History {
            events: inner.events.clone(),
        })
    }
}
