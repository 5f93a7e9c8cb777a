//! BENCHMARKS.md from a results file: tables, ratios, the machine, and
//! what differs between the targets' semantics.

use std::fmt::Write;

use crate::result::{matrix_median, MatrixCell, Results, RunResult};
use crate::spec::{Workload, WORKLOADS};
use crate::stats::Summary;
use crate::suite::GROUPS_SLOTS;
use crate::target::leasehold::{Layout, NODES};
use crate::target::{TargetKind, TARGETS};

/// What the report is made of besides the results.
pub struct ReportInput<'a> {
    pub results: &'a Results,
    /// lscpu, kernel, versions, load: shown as given.
    pub machine: Option<&'a str>,
    /// The command that reproduces the results.
    pub command: &'a str,
    /// PNG paths relative to the report, with a caption each.
    pub plots: &'a [(String, String)],
    /// Markdown written by hand about what the figures mean (what bounds
    /// each target, how it was profiled), placed after the plots.
    pub analysis: Option<&'a str>,
}

/// Problems that make a results file unfit: a failed step, a run that
/// measured nothing or failed calls, a missing Leasehold figure.
pub fn check(results: &Results) -> Vec<String> {
    let mut problems: Vec<String> = results.failures.clone();
    for r in &results.runs {
        let what = format!(
            "{} {} {} {} clients",
            r.group, r.target, r.workload, r.clients
        );
        if r.cycles + r.denied == 0 {
            problems.push(format!("{what}: measured nothing"));
        }
        if r.errors > 0 {
            problems.push(format!(
                "{what}: {} failed calls ({})",
                r.errors,
                r.first_error.as_deref().unwrap_or("?")
            ));
        }
    }
    let leasehold = results
        .runs
        .iter()
        .any(|r| r.target == TargetKind::Leasehold);
    if leasehold && results.failover.iter().all(|f| f.unavailable_ms.is_none()) {
        problems.push("failover: no trial saw a grant after the kill".into());
    }
    if leasehold && results.footprint.is_none() {
        problems.push("footprint: not measured".into());
    }
    problems
}

fn ms(us: u64) -> String {
    let ms = us as f64 / 1e3;
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

fn latencies(s: Option<&Summary>) -> String {
    s.map_or("–".into(), |s| {
        format!("{} / {} / {}", ms(s.p50_us), ms(s.p99_us), ms(s.p999_us))
    })
}

fn rate(x: f64) -> String {
    if x >= 100.0 {
        format!("{:.0}", x)
    } else {
        format!("{x:.1}")
    }
}

/// The cores other processes used during a run, or a dash if unknown.
fn other(run: &RunResult) -> String {
    run.other_cpu_cores
        .map_or("–".into(), |c| format!("{c:.2}"))
}

fn median(results: &Results, target: TargetKind, workload: Workload) -> Option<&RunResult> {
    matrix_median(results, target, workload).map(|c| c.run)
}

pub fn markdown(input: &ReportInput) -> String {
    let r = input.results;
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Leasehold against two baselines that implement the same lease semantics: \
         Redis 7 with Lua scripts of ours (AOF fsync every second, and on every write) \
         and a three-member etcd 3.4 cluster with optimistic transactions. Every server \
         runs on this machine, started and stopped by the benchmark; the load generator \
         (`bench/`, `leasehold-bench`) runs on the same machine.\n"
    );
    let _ = writeln!(md, "Reproduce with:\n\n```sh\n{}\n```\n", input.command);
    if let Some(machine) = input.machine {
        let _ = writeln!(md, "## Machine\n\n```\n{}\n```\n", machine.trim_end());
    }
    let s = &r.settings;
    let _ = writeln!(
        md,
        "## How it was measured\n\n\
         - One **cycle** is an acquire of one unit and the release of that lease; for the \
         throttle workload, one **decision** is an acquire (granted or denied) with nothing \
         to release. Every mutating call carries an idempotency key.\n\
         - Closed loop: {} callers, each starting its next cycle when the last ends; {} s \
         measured after {} s of warm-up, each run on a freshly started server. The \
         callers share one connection per server as each client library recommends (one \
         HTTP/2 channel per Leasehold node, one multiplexed Redis connection, one etcd \
         channel; each etcd caller has its own session lease).\n\
         - Open loop: cycles start at a fixed rate (half the closed loop's throughput on \
         the same workload); acquire latency counts from the intended start, so a stalled \
         server cannot hide its queue (no coordinated omission). It includes the \
         generator's own lateness, up to a millisecond of timer granularity.\n\
         - Latency: HdrHistogram, per call, in milliseconds as p50 / p99 / p99.9.\n\
         - Server CPU: user + system time of every server process (from /proc/PID/stat) \
         over the measured window, per cycle; the load generator's likewise. *Other \
         processes*: the machine's busy time (/proc/stat) less the servers' and the load \
         generator's, in cores: what else ran meanwhile, kernel threads included.\n\
         - Leasehold: three `leasehold serve` processes, replication factor 3, with the \
         layout a new cluster gets unless said otherwise: {} hash slots over one Raft \
         group per node ({} groups, each node the preferred leader of one); a call is \
         acknowledged once fsynced on a majority.\n\
         - Workloads: **hot**: one concurrency key, limit 1000. **spread**: one of 100,000 \
         concurrency keys (limit 10), one scope each. **multi**: one acquire over an \
         account's concurrency (limit 1000), one of 100 function concurrency keys (limit \
         10) and an account throttle (100,000/s, burst 1000). **throttle**: one of 1,000 \
         throttle keys (100/s, burst 10). **wait**: a key of limit 5 saturated by all \
         callers, each waiting up to 2 s, then releasing at once.\n",
        s.clients,
        s.seconds,
        s.warmup_seconds,
        Layout::DEFAULT.slots,
        Layout::DEFAULT.resolved(NODES).groups
    );
    machine_share(&mut md, r);
    if s.smoke {
        let _ = writeln!(md, "**Smoke run**: seconds per run, a couple of callers: these figures prove the harness works and mean nothing more.\n");
    }
    matrix_tables(&mut md, r);
    ratio_table(&mut md, r);
    security_table(&mut md, r);
    budget_table(&mut md, r);
    open_table(&mut md, r);
    clients_table(&mut md, r);
    groups_slots_table(&mut md, r);
    failover_section(&mut md, r);
    footprint_section(&mut md, r);
    for (path, caption) in input.plots {
        let _ = writeln!(md, "![{caption}]({path})\n");
    }
    if let Some(analysis) = input.analysis {
        let _ = writeln!(md, "{}\n", analysis.trim_end());
    }
    md.push_str(SEMANTICS);
    if !r.failures.is_empty() {
        let _ = writeln!(md, "\n## Steps that failed\n");
        for f in &r.failures {
            let _ = writeln!(md, "- {f}");
        }
    }
    md
}

/// How much of the machine other processes took while we measured.
fn machine_share(md: &mut String, r: &Results) {
    let shares: Vec<f64> = r.runs.iter().filter_map(|x| x.other_cpu_cores).collect();
    if shares.is_empty() {
        return;
    }
    let mean = shares.iter().sum::<f64>() / shares.len() as f64;
    let max = shares.iter().copied().fold(0.0, f64::max);
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let verdict = if max < 0.1 {
        "the machine was otherwise idle"
    } else {
        "the machine was shared, and every figure here is lower than an idle machine would give"
    };
    let _ = writeln!(
        md,
        "While the runs were measured, processes other than the servers and the load \
         generator used {mean:.2} cores on average (at most {max:.2}) of the {cores} this \
         machine has (*other processes* in the tables; compare runs with that in mind): \
         {verdict}.\n"
    );
}

fn matrix_tables(md: &mut String, r: &Results) {
    let _ = writeln!(
        md,
        "## Throughput, latency and CPU ({} closed-loop callers)\n",
        r.settings.clients
    );
    if r.settings.rounds > 1 {
        let _ = writeln!(
            md,
            "Each target and workload was measured in {} rounds, targets taking turns; each row is the round with the median throughput (all rounds' range in brackets), and every other figure of the row is from that round.\n",
            r.settings.rounds
        );
    }
    for workload in WORKLOADS {
        let rows: Vec<MatrixCell> = TARGETS
            .iter()
            .filter_map(|&t| matrix_median(r, t, workload))
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(md, "### {workload}\n");
        let _ = writeln!(
            md,
            "| target | {}/s | acquire ms p50 / p99 / p99.9 | release ms p50 / p99 / p99.9 | server CPU µs per {one} | load generator CPU µs per {one} | denied | errors | etcd conflicts | other processes, cores |",
            workload.unit(),
            one = workload.unit().trim_end_matches('s')
        );
        let _ = writeln!(
            md,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for cell in rows {
            let run = cell.run;
            let throughput = if cell.rounds > 1 {
                format!(
                    "{} ({}–{})",
                    rate(run.throughput_per_s),
                    rate(cell.lowest),
                    rate(cell.highest)
                )
            } else {
                rate(run.throughput_per_s)
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {} |",
                run.target,
                throughput,
                latencies(Some(&run.acquire)),
                latencies(run.release.as_ref()),
                run.server_cpu_us_per_op,
                run.client_cpu_us_per_op,
                run.denied,
                run.errors,
                run.conflicts,
                other(run)
            );
        }
        let _ = writeln!(md);
    }
}

fn ratio_table(md: &mut String, r: &Results) {
    let baselines = [
        TargetKind::RedisEverysec,
        TargetKind::RedisAlways,
        TargetKind::Etcd,
    ];
    let _ = writeln!(
        md,
        "## Leasehold / baseline\n\nThroughput ratio (above 1: Leasehold is faster), then server CPU per cycle ratio (above 1: Leasehold spends more).\n"
    );
    let _ = writeln!(
        md,
        "| workload | vs redis-everysec | vs redis-always | vs etcd |"
    );
    let _ = writeln!(md, "| --- | ---: | ---: | ---: |");
    for workload in WORKLOADS {
        let Some(lh) = median(r, TargetKind::Leasehold, workload) else {
            continue;
        };
        let cells: Vec<String> = baselines
            .iter()
            .map(|&b| match median(r, b, workload) {
                Some(base) if base.throughput_per_s > 0.0 && base.server_cpu_us_per_op > 0.0 => {
                    format!(
                        "{:.3}× / {:.2}×",
                        lh.throughput_per_s / base.throughput_per_s,
                        lh.server_cpu_us_per_op / base.server_cpu_us_per_op
                    )
                }
                _ => "–".into(),
            })
            .collect();
        let _ = writeln!(md, "| {workload} | {} |", cells.join(" | "));
    }
    let _ = writeln!(md);
}

/// What TLS on both ports and a token on every call cost: the secured
/// cluster's median against the open one's, per workload.
fn security_table(md: &mut String, r: &Results) {
    let rows: Vec<(Workload, &RunResult, &RunResult)> = WORKLOADS
        .into_iter()
        .filter_map(|w| {
            Some((
                w,
                median(r, TargetKind::LeaseholdTls, w)?,
                median(r, TargetKind::Leasehold, w)?,
            ))
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## Security's cost: leasehold-tls / leasehold\n\n\
         The same three-node cluster with TLS on the client port (rustls, ring), mutual \
         TLS between nodes, and a bearer token checked on every call, against it open. \
         Throughput ratio (below 1: the secured cluster is slower), server CPU per cycle \
         ratio (above 1: it spends more), and p99 latency of each.\n"
    );
    let _ = writeln!(
        md,
        "| workload | throughput | server CPU per cycle | acquire p99 ms, open → secured |"
    );
    let _ = writeln!(md, "| --- | ---: | ---: | ---: |");
    for (workload, secured, open) in rows {
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.3}×", a / b)
            } else {
                "–".into()
            }
        };
        let _ = writeln!(
            md,
            "| {workload} | {} | {} | {:.2} → {:.2} |",
            ratio(secured.throughput_per_s, open.throughput_per_s),
            ratio(secured.server_cpu_us_per_op, open.server_cpu_us_per_op),
            open.acquire.p99_us as f64 / 1000.0,
            secured.acquire.p99_us as f64 / 1000.0,
        );
    }
    let _ = writeln!(md);
}

/// `x` with `digits` decimals, or a dash.
fn opt(x: Option<f64>, digits: usize) -> String {
    x.map_or("–".into(), |x| format!("{x:.digits$}"))
}

/// Where each target's time went in the median rounds: CPU by process,
/// how busy the machine was, the disk's flushes, and Leasehold's batching.
fn budget_table(md: &mut String, r: &Results) {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let _ = writeln!(
        md,
        "## Where the time goes (the median rounds above)\n\n\
         *Server CPU by process*: µs per cycle of each server process (Leasehold and etcd: \
         node 1, 2, 3). *Cores busy*: the servers, the load generator and everything else, \
         over the window, out of the {cores} this machine has. *Disk flushes*: cache flushes \
         the disk under the servers' data completed (/sys/block/DEV/stat), one per fsync or \
         fdatasync of any process. *Entries per cycle* and *commands per entry*: Raft \
         entries Leasehold's leaders proposed (client batches and scavenger expiries) and the \
         commands each carried, from the nodes' /metrics.\n"
    );
    let _ = writeln!(
        md,
        "| workload | target | cycles/s | server CPU µs per cycle by process | cores busy: servers + load generator + other | disk flushes/s | flushes per cycle | Raft entries per cycle | commands per entry |"
    );
    let _ = writeln!(
        md,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for workload in WORKLOADS {
        for target in TARGETS {
            let Some(run) = median(r, target, workload) else {
                continue;
            };
            let by_process: Vec<String> = run
                .server_cpu_us_per_op_by_process
                .iter()
                .map(|us| format!("{us:.0}"))
                .collect();
            let busy = |us_per_op: f64| us_per_op * run.throughput_per_s / 1e6;
            let servers = busy(run.server_cpu_us_per_op);
            let generator = busy(run.client_cpu_us_per_op);
            let other_cores = run.other_cpu_cores.unwrap_or(0.0);
            let flushes_per_op = run
                .disk_flushes_per_s
                .filter(|_| run.throughput_per_s > 0.0)
                .map(|f| f / run.throughput_per_s);
            let _ = writeln!(
                md,
                "| {workload} | {target} | {} | {} | {:.2} = {servers:.2} + {generator:.2} + {other_cores:.2} | {} | {} | {} | {} |",
                rate(run.throughput_per_s),
                if by_process.is_empty() { "–".into() } else { by_process.join(" + ") },
                servers + generator + other_cores,
                run.disk_flushes_per_s.map_or("–".into(), rate),
                opt(flushes_per_op, 2),
                opt(run.entries_per_op, 2),
                opt(run.commands_per_entry, 1),
            );
        }
    }
    let _ = writeln!(md);
}

fn open_table(md: &mut String, r: &Results) {
    let runs: Vec<&RunResult> = r.runs.iter().filter(|x| x.group == "open").collect();
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(md, "## Open loop (spread workload, fixed arrival rate)\n");
    let _ = writeln!(md, "| target | offered/s | cycles/s | acquire ms p50 / p99 / p99.9 (from intended start) | release ms p50 / p99 / p99.9 | unfinished | other processes, cores |");
    let _ = writeln!(md, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for run in runs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            run.target,
            rate(run.rate_per_s.unwrap_or(0.0)),
            rate(run.throughput_per_s),
            latencies(Some(&run.acquire)),
            latencies(run.release.as_ref()),
            run.unfinished,
            other(run)
        );
    }
    let _ = writeln!(md);
}

fn clients_table(md: &mut String, r: &Results) {
    let mut counts: Vec<usize> = r
        .runs
        .iter()
        .filter(|x| x.group == "clients")
        .map(|x| x.clients)
        .collect();
    counts.sort_unstable();
    counts.dedup();
    if counts.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## Cycles/s as callers grow (spread workload, closed loop)\n\n\
         In brackets: the cores other processes used meanwhile.\n"
    );
    let header: Vec<String> = counts
        .iter()
        .map(|&c| match c {
            1 => "1 caller".to_string(),
            c => format!("{c} callers"),
        })
        .collect();
    let _ = writeln!(md, "| target | {} |", header.join(" | "));
    let _ = writeln!(md, "| --- |{}", " ---: |".repeat(counts.len()));
    for target in TARGETS {
        let cells: Vec<String> = counts
            .iter()
            .map(|&c| {
                r.runs
                    .iter()
                    .find(|x| x.group == "clients" && x.target == target && x.clients == c)
                    .map_or("–".into(), |x| {
                        format!("{} ({})", rate(x.throughput_per_s), other(x))
                    })
            })
            .collect();
        if cells.iter().all(|c| c == "–") {
            continue;
        }
        let _ = writeln!(md, "| {target} | {} |", cells.join(" | "));
    }
    let _ = writeln!(md);
}

/// A count, or a dash if unknown.
fn count(x: Option<u32>) -> String {
    x.map_or("–".into(), |x| x.to_string())
}

fn groups_slots_table(md: &mut String, r: &Results) {
    let runs: Vec<&RunResult> = r.runs.iter().filter(|x| x.group == GROUPS_SLOTS).collect();
    if runs.is_empty() {
        return;
    }
    let default = Layout::DEFAULT.resolved(NODES);
    let _ = writeln!(
        md,
        "## Leasehold: groups and slots (spread workload, {} callers)\n\n\
         Scopes hash to slots; each Raft group owns an equal range of them, its replicas \
         on three nodes and its preferred leader spread over the nodes. The group count \
         varies at {} slots, then the slot count at {} groups; each row is a freshly \
         created cluster.\n",
        r.settings.clients, default.slots, default.groups
    );
    let _ = writeln!(
        md,
        "| groups | slots | cycles/s | acquire ms p50 / p99 / p99.9 | server CPU µs per cycle | Raft entries per cycle | commands per entry | other processes, cores |"
    );
    let _ = writeln!(
        md,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for run in runs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.0} | {} | {} | {} |",
            count(run.groups),
            count(run.slots),
            rate(run.throughput_per_s),
            latencies(Some(&run.acquire)),
            run.server_cpu_us_per_op,
            opt(run.entries_per_op, 2),
            opt(run.commands_per_entry, 1),
            other(run)
        );
    }
    let _ = writeln!(md);
}

fn failover_section(md: &mut String, r: &Results) {
    if r.failover.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "## Leasehold: unavailability after kill -9 of a group leader\n\n\
         A new acquire on a scope of the group that owns slot 0 starts every 5 ms through \
         the Rust client; that group's leader is killed with SIGKILL; the figure is the \
         time from the kill to the first grant answering an acquire sent after it (election timeout \
         300–600 ms, plus the client noticing and finding the new leader). The node is \
         restarted between trials.\n"
    );
    let _ = writeln!(md, "| trial | node killed | ms until the first grant |");
    let _ = writeln!(md, "| ---: | ---: | ---: |");
    for (i, f) in r.failover.iter().enumerate() {
        let shown = f
            .unavailable_ms
            .map_or("none within 20 s".into(), |ms| format!("{ms:.0}"));
        let _ = writeln!(md, "| {} | {} | {shown} |", i + 1, f.killed_node);
    }
    let _ = writeln!(md);
}

fn footprint_section(md: &mut String, r: &Results) {
    let Some(f) = &r.footprint else {
        return;
    };
    let mb = |b: f64| format!("{:.0} MB", b / 1e6);
    let _ = writeln!(
        md,
        "## Leasehold: memory and disk\n\n\
         Per replica (the average of the three nodes), scaled linearly from {} keys and {} \
         leases to a million. **Idle keys**: distinct keys each acquired and released once; \
         a concurrency key with no holder is dropped, so what stays is the two idempotency \
         records per key until the dedup window (10 minutes) passes. **Live leases**: \
         distinct keys each holding one lease (ttl one hour). Disk is the bytes of the data \
         directory, Raft log and RocksDB WAL included (the log is purged after each \
         snapshot, every 10,000 entries); RSS includes what the allocator keeps and any \
         Raft log held in memory.\n",
        f.sample, f.sample
    );
    let _ = writeln!(md, "| per 1,000,000 | RSS | disk |");
    let _ = writeln!(md, "| --- | ---: | ---: |");
    let _ = writeln!(
        md,
        "| idle keys | {} | {} |",
        mb(f.idle_keys_rss_bytes_per_million),
        mb(f.idle_keys_disk_bytes_per_million)
    );
    let _ = writeln!(
        md,
        "| live leases | {} | {} |\n",
        mb(f.live_leases_rss_bytes_per_million),
        mb(f.live_leases_disk_bytes_per_million)
    );
    let _ = writeln!(
        md,
        "Per replica at start, after the keys, after the leases: RSS {} / {} / {}, disk {} / {} / {}.\n",
        mb(f.rss_bytes[0] as f64),
        mb(f.rss_bytes[1] as f64),
        mb(f.rss_bytes[2] as f64),
        mb(f.disk_bytes[0] as f64),
        mb(f.disk_bytes[1] as f64),
        mb(f.disk_bytes[2] as f64)
    );
}

const SEMANTICS: &str = "\
## Where the baselines' semantics differ

The baselines implement Leasehold's Acquire and Release for one unit: all
constraints checked and spent atomically, holders that stop counting at their
expiry, GCRA throttles with the same bucket (burst + 1 at one instant),
denials with `retry_after_ms`, idempotency records replayed on a retry with the
same key (and refused with other parameters), denials never recorded. Where
they differ:

- **Amount**: the baselines lease exactly one unit (no `amount`,
  `min_amount`, rate limits or semaphores); every workload here uses one unit.
- **Redis** (`bench/lua/acquire.lua`, `release.lua`): one script call per
  acquire or release, so atomic; time from `TIME` inside the script. Holders
  are a ZSET per key scored by expiry, a throttle is a TAT in µs, a grant
  writes a lease record and an idempotency record (ttl + the 10-minute dedup
  window). Lease ids come from a counter per scope and double as fencing
  tokens. One process: no replication and no failover. `appendfsync
  everysec` acknowledges before the fsync and may lose the last second of
  grants on a crash; `appendfsync always` fsyncs before replying, like
  Leasehold, but on one machine rather than a majority of three.
- **etcd**: acquire reads the holders of every concurrency key (a key
  prefix), the throttle TATs and the idempotency record at revision R, decides
  on the client, and commits one txn guarded by `mod_revision < R + 1` over
  each holder prefix (nobody added a holder since), the TATs' mod revisions
  and the idempotency record's absence; a failed guard is a conflict, retried
  at once (counted as *etcd conflicts*) until a 10 s deadline. Holder keys,
  TATs and idempotency records are attached to the caller's session lease
  (ttl 60 s, kept alive): a crashed caller's holders vanish 60 s later, and
  idempotency records live as long as the session instead of ttl + dedup
  window. Expiry is judged by the reading client's clock against the expiry
  stored in each holder, since etcd has no time inside a txn. The lease id and
  fencing token is the granting txn's revision. Release deletes the holder
  keys the caller remembers (by name, not by lease id) and records its
  idempotency key in the same txn.
- **Waiting**: Leasehold parks the acquire on the leader of the scope's group
  (`wait_ms`) and grants it when a release frees a unit, first come first served. Redis
  and etcd have no equivalent in these designs; their callers poll: retry the
  denied acquire with the same idempotency key after 1, 2, 4 … 32 ms (with
  jitter, never past the wait), which is what a client of theirs would do.
  (etcd could watch the holder prefix instead; not measured.)
- **Durability and availability**: Leasehold acknowledges once a majority of
  three replicas has fsynced; etcd likewise; Redis is a single node.
";

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::load::{Measured, Tally};

    fn run(group: &str, groups: u32, slots: u32, cycles: u64) -> RunResult {
        let mut tally = Tally {
            cycles,
            ..Tally::default()
        };
        tally.acquire.record(Duration::from_millis(2));
        let measured = Measured {
            tally,
            window: Duration::from_secs(1),
            server_cpu_us: cycles * 300,
            server_cpu_us_by_process: Vec::new(),
            client_cpu_us: 0,
            disk_flushes: None,
            raft: None,
            other_cpu_us: 0,
            conflicts: 0,
            unfinished: 0,
            first_error: None,
        };
        let mut run = RunResult::new(
            group,
            TargetKind::Leasehold,
            Workload::Spread,
            "closed",
            4,
            &measured,
        );
        run.groups = Some(groups);
        run.slots = Some(slots);
        run
    }

    #[test]
    fn the_groups_and_slots_table_has_a_row_per_swept_layout() {
        let results = Results {
            runs: vec![
                run("matrix", 3, 1024, 900),
                run(GROUPS_SLOTS, 1, 1024, 500),
                run(GROUPS_SLOTS, 3, 256, 1500),
            ],
            ..Results::default()
        };
        let mut md = String::new();
        groups_slots_table(&mut md, &results);
        assert!(md.contains("## Leasehold: groups and slots"), "{md}");
        assert!(md.contains("| groups | slots | cycles/s |"), "{md}");
        let rows: Vec<&str> = md
            .lines()
            .filter(|l| {
                l.strip_prefix("| ")
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            })
            .collect();
        assert_eq!(
            rows,
            [
                "| 1 | 1024 | 500 | 2.00 / 2.00 / 2.00 | 300 | – | – | 0.00 |",
                "| 3 | 256 | 1500 | 2.00 / 2.00 / 2.00 | 300 | – | – | 0.00 |",
            ]
        );
    }

    #[test]
    fn no_groups_and_slots_runs_no_table() {
        let results = Results {
            runs: vec![run("matrix", 3, 1024, 900)],
            ..Results::default()
        };
        let mut md = String::new();
        groups_slots_table(&mut md, &results);
        assert_eq!(md, "");
    }
}
