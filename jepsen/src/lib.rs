//! Chaos testing of Leasehold: histories of real client operations under
//! real faults, and the checkers that judge them.
//!
//! - [`history`] — the JSONL event format a run records, a writer for it,
//!   and the pairing of invokes with completions.
//! - [`check`] — one checker per property (lease safety, zombie extends,
//!   leaks, fencing, idempotency, linearizability, GCRA, rate limits, a
//!   fenced resource's updates, durability); [`check::all`] runs them all.

pub mod check;
pub mod history;
