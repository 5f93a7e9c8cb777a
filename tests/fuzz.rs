//! Fuzzing of everything that decodes bytes from outside a node: the
//! public requests (decoded, converted, validated and applied), the peer
//! plane's messages (Raft RPCs, metadata proposals), the Raft log's
//! entries (decoded and applied to an engine or a slot map), and the
//! bearer token a call carries and the tokens file it is checked against.
//! Inputs are arbitrary bytes and valid encodings mutated byte by byte
//! (flipped, inserted, deleted, cut short), which reach far deeper than
//! random bytes alone. The property: nothing panics, and every refusal of
//! a request names the field at fault.
//!
//! `FUZZ_CASES` sets the cases per target (default 2,000, which CI runs);
//! the README gives the figures of a long run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use leasehold::auth;
use leasehold::engine::{
    self, Command, Engine, EngineConfig, EngineError, MemStore, Quotas, ReleaseRequest,
};
use leasehold::limits::DEDUP_WINDOW_MS_MAX;
use leasehold::proto::{peer, v1};
use leasehold::raft::{MetaCommand, Request, SlotMap, TypeConfig};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message;
use tonic::metadata::{MetadataMap, MetadataValue};

const SLOTS: u32 = 64;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

/// Runs `check` on `cases()` inputs drawn from `strategy`; a failing
/// input is shrunk and reported with its seed.
fn fuzz<S: Strategy>(strategy: S, check: impl Fn(S::Value)) {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&strategy, |value| {
            check(value);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

/// One change to an encoding.
#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Set { at: usize, byte: u8 },
    Insert { at: usize, byte: u8 },
    Delete { at: usize },
    Cut { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Delete { at }),
        any::<usize>().prop_map(|at| Mutation::Cut { at }),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        match *m {
            Mutation::Flip { at, bit } if len > 0 => bytes[at % len] ^= 1 << bit,
            Mutation::Set { at, byte } if len > 0 => bytes[at % len] = byte,
            Mutation::Insert { at, byte } => bytes.insert(at % (len + 1), byte),
            Mutation::Delete { at } if len > 0 => {
                bytes.remove(at % len);
            }
            Mutation::Cut { at } => bytes.truncate(at % (len + 1)),
            _ => {}
        }
    }
    bytes
}

/// Arbitrary bytes, or one of `seeds` with a few mutations.
fn inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        proptest::sample::select(seeds),
        proptest::collection::vec(mutation(), 1..6),
    )
        .prop_map(|(seed, ms)| mutate(seed, &ms));
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..512),
        4 => mutated,
    ]
}

fn engine() -> Engine<MemStore> {
    Engine::new(MemStore::new(), EngineConfig { slot_count: SLOTS })
}

/// A request's conversion fails only by naming the field at fault.
fn assert_refused_by_name(error: &EngineError) {
    assert!(
        matches!(error, EngineError::InvalidArgument { .. }),
        "a conversion failing other than as an invalid argument: {error:?}"
    );
    assert_names_its_field(error);
}

/// A refusal names the field at fault; any other error stands on its own.
fn assert_names_its_field(error: &EngineError) {
    if let EngineError::InvalidArgument { field, reason } = error {
        assert!(
            !field.is_empty() && !reason.is_empty(),
            "a refusal without its field or reason: {error:?}"
        );
    }
}

/// What the fuzzed commands came to, so that a target that reached
/// nothing fails rather than passes.
#[derive(Default)]
struct Reached {
    applied: AtomicUsize,
    refused: AtomicUsize,
}

impl Reached {
    fn counts(&self) -> (usize, usize) {
        (
            self.applied.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }

    fn assert_both(&self, target: &str) {
        let (applied, refused) = self.counts();
        eprintln!("{target}: {applied} commands applied, {refused} refused");
        assert!(
            applied > 0 && refused > 0,
            "{target}: {applied} commands applied, {refused} refused: the inputs reach too little"
        );
    }
}

fn apply(engine: &mut Engine<MemStore>, stamp_ms: u64, cmd: &Command, reached: &Reached) {
    // Records outlive every input, as a window could be set to.
    let quotas = Quotas {
        dedup_window_ms: DEDUP_WINDOW_MS_MAX,
        ..Quotas::NONE
    };
    apply_within(engine, stamp_ms, &quotas, cmd, reached);
}

fn apply_within(
    engine: &mut Engine<MemStore>,
    stamp_ms: u64,
    quotas: &Quotas,
    cmd: &Command,
    reached: &Reached,
) {
    match engine.apply_within(stamp_ms, quotas, cmd) {
        Ok(_) => reached.applied.fetch_add(1, Ordering::Relaxed),
        Err(e) => {
            assert_names_its_field(&e);
            reached.refused.fetch_add(1, Ordering::Relaxed)
        }
    };
}

fn concurrency(key: &str, limit: u32) -> v1::Constraint {
    v1::Constraint {
        kind: Some(v1::constraint::Kind::Concurrency(v1::Concurrency {
            key: key.into(),
            limit,
        })),
    }
}

fn valid_acquire() -> v1::AcquireRequest {
    v1::AcquireRequest {
        scope: "tenant-1".into(),
        constraints: vec![
            concurrency("jobs", 10),
            v1::Constraint {
                kind: Some(v1::constraint::Kind::Throttle(v1::Throttle {
                    key: "api".into(),
                    limit: 100,
                    period_ms: 1_000,
                    burst: 10,
                })),
            },
            v1::Constraint {
                kind: Some(v1::constraint::Kind::RateLimit(v1::RateLimit {
                    key: "hard".into(),
                    limit: 5,
                    period_ms: 60_000,
                })),
            },
        ],
        amount: 1,
        min_amount: Some(1),
        lease_ttl_ms: 30_000,
        max_lifetime_ms: Some(600_000),
        idempotency_key: "idem-1".into(),
        wait_ms: Some(100),
        fairness_key: "f".into(),
    }
}

/// One decoded public request, as the server would turn it into a
/// command; conversion errors are checked here.
fn command_of(kind: u8, bytes: &[u8]) -> Option<Command> {
    let converted = match kind % 4 {
        0 => {
            let r = v1::AcquireRequest::decode(bytes).ok()?;
            engine::AcquireRequest::try_from(r).map(Command::Acquire)
        }
        1 => {
            let r = v1::ExtendRequest::decode(bytes).ok()?;
            Ok(Command::Extend(r.into()))
        }
        2 => {
            let r = v1::ReleaseRequest::decode(bytes).ok()?;
            Ok(Command::Release(ReleaseRequest::from(r)))
        }
        _ => {
            let r = v1::AdminKeyRequest::decode(bytes).ok()?;
            engine::AdminRequest::try_from(r).map(Command::Admin)
        }
    };
    match converted {
        Ok(cmd) => Some(cmd),
        Err(error) => {
            assert_refused_by_name(&error);
            None
        }
    }
}

/// A valid encoding of each request `command_of` converts, with its kind.
fn request_seeds() -> Vec<(u8, Vec<u8>)> {
    let extend = v1::ExtendRequest {
        scope: "tenant-1".into(),
        lease_id: 7,
        ttl_ms: 30_000,
        idempotency_key: "idem-2".into(),
    };
    let release = v1::ReleaseRequest {
        scope: "tenant-1".into(),
        lease_id: 7,
        idempotency_key: "idem-3".into(),
    };
    let pin = v1::AdminKeyRequest {
        scope: "tenant-1".into(),
        kind: v1::ConstraintKind::Concurrency as i32,
        key: "jobs".into(),
        action: v1::KeyAction::Pin as i32,
        pin: Some(concurrency("jobs", 3)),
        idempotency_key: "idem-4".into(),
    };
    vec![
        (0, valid_acquire().encode_to_vec()),
        (1, extend.encode_to_vec()),
        (2, release.encode_to_vec()),
        (3, pin.encode_to_vec()),
    ]
}

/// Arbitrary bytes of an arbitrary kind, or a seed of `request_seeds`
/// as it is or mutated a little, keeping its kind.
fn request_inputs() -> impl Strategy<Value = (u8, Vec<u8>)> {
    let mutated = (
        proptest::sample::select(request_seeds()),
        proptest::collection::vec(mutation(), 0..4),
    )
        .prop_map(|((kind, seed), ms)| (kind, mutate(seed, &ms)));
    prop_oneof![
        1 => (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..512)),
        6 => mutated,
    ]
}

#[test]
fn public_requests_decode_validate_and_apply_without_panicking() {
    // A sequence of requests on one engine, so that later ones meet the
    // state earlier ones left.
    let sequence = proptest::collection::vec((request_inputs(), 0u64..10_000), 1..8);
    let reached = Reached::default();
    fuzz(sequence, |requests| {
        let mut engine = engine();
        let mut stamp_ms = 1_000_000;
        for ((kind, bytes), step_ms) in requests {
            // Every message type decodes the same bytes; none may panic.
            let _ = v1::SessionCall::decode(bytes.as_slice());
            let _ = v1::CheckRequest::decode(bytes.as_slice());
            let _ = v1::SetCapacityRequest::decode(bytes.as_slice());
            if let Some(cmd) = command_of(kind, &bytes) {
                stamp_ms += step_ms;
                apply(&mut engine, stamp_ms, &cmd, &reached);
            }
        }
    });
    reached.assert_both("public requests");
}

/// Mostly plausible text, sometimes empty, odd or long.
fn arbitrary_text() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => "[a-z]{1,8}",
        1 => Just(String::new()),
        1 => ".{0,40}",
        1 => proptest::collection::vec(any::<char>(), 200..300)
            .prop_map(|cs| cs.into_iter().collect()),
    ]
}

/// Mostly plausible numbers, sometimes at or past the edges.
fn arbitrary_number() -> impl Strategy<Value = u64> {
    prop_oneof![
        12 => 1u64..100_000,
        1 => Just(0),
        1 => Just(u64::from(u32::MAX)),
        1 => Just(u64::MAX),
        1 => any::<u64>(),
    ]
}

fn arbitrary_constraint() -> impl Strategy<Value = v1::Constraint> {
    let n32 = || arbitrary_number().prop_map(|n| n as u32);
    prop_oneof![
        4 => (arbitrary_text(), n32()).prop_map(|(key, limit)| concurrency(&key, limit)),
        4 => (arbitrary_text(), n32(), arbitrary_number(), n32()).prop_map(
            |(key, limit, period_ms, burst)| v1::Constraint {
                kind: Some(v1::constraint::Kind::Throttle(v1::Throttle {
                    key,
                    limit,
                    period_ms,
                    burst,
                })),
            }
        ),
        4 => (arbitrary_text(), n32(), arbitrary_number()).prop_map(|(key, limit, period_ms)| {
            v1::Constraint {
                kind: Some(v1::constraint::Kind::RateLimit(v1::RateLimit {
                    key,
                    limit,
                    period_ms,
                })),
            }
        }),
        1 => Just(v1::Constraint { kind: None }),
    ]
}

#[test]
fn arbitrary_request_fields_are_refused_by_name_or_applied() {
    let n32 = || arbitrary_number().prop_map(|n| n as u32);
    let acquire = (
        arbitrary_text(),
        prop_oneof![
            12 => proptest::collection::vec(arbitrary_constraint(), 1..4),
            1 => proptest::collection::vec(arbitrary_constraint(), 0..20),
        ],
        (n32(), proptest::option::of(n32())),
        (arbitrary_number(), proptest::option::of(arbitrary_number())),
        arbitrary_text(),
        (proptest::option::of(arbitrary_number()), arbitrary_text()),
    )
        .prop_map(
            |(scope, constraints, (amount, min_amount), (ttl, life), idem, (wait, fair))| {
                v1::AcquireRequest {
                    scope,
                    constraints,
                    amount,
                    min_amount,
                    lease_ttl_ms: ttl,
                    max_lifetime_ms: life,
                    idempotency_key: idem,
                    wait_ms: wait,
                    fairness_key: fair,
                }
            },
        );
    let reached = Reached::default();
    fuzz((acquire, arbitrary_number()), |(request, stamp_ms)| {
        let mut engine = engine();
        match engine::AcquireRequest::try_from(request) {
            Ok(r) => {
                let cmd = Command::Acquire(r);
                // Stamps as a leader's clock gives them: below 2^53 ms.
                apply(&mut engine, stamp_ms % (1 << 53), &cmd, &reached);
                apply(&mut engine, stamp_ms % (1 << 53) + 1, &cmd, &reached);
            }
            Err(error) => {
                assert_refused_by_name(&error);
                reached.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    reached.assert_both("arbitrary request fields");
}

fn engine_entry() -> Request {
    let acquire = engine::AcquireRequest::try_from(valid_acquire()).expect("a valid acquire");
    Request::Engine {
        stamp_ms: 1_000_000,
        quotas: Quotas {
            max_leases_per_scope: 1,
            max_keys_per_scope: 1,
            max_idempotency_records_per_group: 1,
            dedup_window_ms: 1,
        },
        commands: Arc::from(vec![
            Command::Acquire(acquire),
            Command::Expire { until_ms: 999 },
        ]),
    }
}

fn slot_map() -> SlotMap {
    let mut map = SlotMap::default();
    let nodes = (1..=3)
        .map(|id| (id, format!("10.0.0.{id}:7070")))
        .collect();
    map.apply(&MetaCommand::Init(SlotMap::initial(nodes, SLOTS, 3, 3)));
    map
}

#[test]
fn raft_log_entries_decode_and_apply_without_panicking() {
    let seeds = vec![
        postcard::to_stdvec(&engine_entry()).expect("encodes"),
        postcard::to_stdvec(&Request::Meta(MetaCommand::LeaderHint {
            group: 1,
            node: 2,
            term: 3,
        }))
        .expect("encodes"),
        postcard::to_stdvec(&Request::Meta(MetaCommand::Init(slot_map()))).expect("encodes"),
    ];
    let reached = Reached::default();
    fuzz(inputs(seeds), |bytes| {
        match postcard::from_bytes::<Request>(&bytes) {
            Ok(Request::Engine {
                stamp_ms,
                quotas,
                commands,
            }) => {
                let mut engine = engine();
                for cmd in commands.iter() {
                    apply_within(&mut engine, stamp_ms % (1 << 53), &quotas, cmd, &reached);
                }
            }
            Ok(Request::Meta(cmd)) => {
                let mut map = slot_map();
                map.apply(&cmd);
                let mut empty = SlotMap::default();
                empty.apply(&cmd);
            }
            Err(_) => {}
        }
    });
    reached.assert_both("Raft log entries");
}

#[test]
fn peer_messages_decode_without_panicking() {
    let entry = openraft::Entry::<TypeConfig> {
        log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), 42),
        payload: openraft::EntryPayload::Normal(engine_entry()),
    };
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: openraft::Vote::new_committed(3, 1),
        prev_log_id: Some(openraft::LogId::new(
            openraft::CommittedLeaderId::new(3, 1),
            41,
        )),
        entries: vec![entry],
        leader_commit: None,
    };
    let vote = VoteRequest::<u64>::new(openraft::Vote::new(4, 2), None);
    let append_bytes = postcard::to_stdvec(&append).expect("encodes");
    let seeds = vec![
        append_bytes.clone(),
        postcard::to_stdvec(&vote).expect("encodes"),
        peer::RaftRequest {
            group: 1,
            kind: peer::RaftKind::AppendEntries as i32,
            payload: append_bytes,
        }
        .encode_to_vec(),
    ];
    fuzz(inputs(seeds), |bytes| {
        let _ = postcard::from_bytes::<AppendEntriesRequest<TypeConfig>>(&bytes);
        let _ = postcard::from_bytes::<VoteRequest<u64>>(&bytes);
        let _ = postcard::from_bytes::<InstallSnapshotRequest<TypeConfig>>(&bytes);
        let _ = postcard::from_bytes::<MetaCommand>(&bytes);
        let _ = peer::RaftRequest::decode(bytes.as_slice());
        let _ = peer::RaftCall::decode(bytes.as_slice());
        let _ = peer::MetaProposal::decode(bytes.as_slice());
        let _ = peer::ElectRequest::decode(bytes.as_slice());
    });
}

/// The `authorization` metadata of a call, which anyone who can connect
/// sends, and the tokens file: arbitrary and mutated values never panic
/// the check; a refusal is UNAUTHENTICATED; only `Bearer ` and the known
/// token (spaces around it aside) authenticate.
#[test]
fn bearer_tokens_and_tokens_files_are_checked_without_panicking() {
    let token = auth::new_token();
    let file = format!(
        "{}{}",
        auth::role_entry("all", "", &[auth::Right::Lease, auth::Right::Cluster]),
        auth::token_entry("t", &token, &["all".to_string()])
    );
    let tokens = auth::Tokens::parse(&file).expect("a valid tokens file");
    let header = |value: &[u8]| {
        let mut metadata = MetadataMap::new();
        let value = MetadataValue::try_from(value).ok()?;
        metadata.insert("authorization", value);
        Some(metadata)
    };
    let accepted = [format!("Bearer {token}"), format!("Bearer  {token} ")];
    for value in &accepted {
        let metadata = header(value.as_bytes()).expect("a header value");
        let principal = tokens.authenticate(&metadata).expect("the known token");
        assert_eq!(principal.name, "t");
    }

    let seeds: Vec<Vec<u8>> = accepted
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .chain([b"Bearer ".to_vec(), b"Basic dXNlcjpwYXNz".to_vec()])
        .collect();
    let headers = Reached::default();
    fuzz(inputs(seeds), |bytes| {
        let Some(metadata) = header(&bytes) else {
            return;
        };
        let known = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| t.trim() == token);
        match tokens.authenticate(&metadata) {
            Ok(_) => {
                assert!(known, "{bytes:?} authenticated");
                headers.applied.fetch_add(1, Ordering::Relaxed);
            }
            Err(status) => {
                assert!(!known, "the known token refused: {status:?}");
                assert_eq!(status.code(), tonic::Code::Unauthenticated);
                headers.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let (authenticated, refused) = headers.counts();
    eprintln!("bearer tokens: {authenticated} authenticated, {refused} refused");
    assert!(refused > 0, "no value was refused");

    let files = Reached::default();
    fuzz(inputs(vec![file.into_bytes()]), |bytes| {
        let Ok(text) = std::str::from_utf8(&bytes) else {
            return;
        };
        match auth::Tokens::parse(text) {
            Ok(_) => files.applied.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                assert!(!e.to_string().is_empty(), "an error that says nothing");
                files.refused.fetch_add(1, Ordering::Relaxed)
            }
        };
    });
    let (parsed, refused) = files.counts();
    eprintln!("tokens files: {parsed} taken, {refused} refused");
    assert!(parsed + refused > 0, "no tokens file was parsed");
}
