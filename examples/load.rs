//! A simple closed-loop load run against a running cluster: `clients`
//! concurrent callers each repeat acquire + release of one lease (one
//! cycle) on one of `keys` concurrency keys (limit 1000), spread over the
//! given nodes, for `seconds`. Prints cycles per second and the latency
//! percentiles of each call.
//!
//! ```sh
//! scripts/run.sh &   # a local three-node cluster
//! cargo run --release --example load -- 127.0.0.1:7070,127.0.0.1:7071,127.0.0.1:7072 50 10 100
//! ```
//!
//! Arguments: nodes (comma-separated), clients, seconds, keys. The full
//! side-by-side benchmark is `BENCHMARKS.md`'s business; this is a smoke
//! figure.

use std::time::{Duration, Instant};

use leasehold::proto::v1::leasehold_client::LeaseholdClient;
use leasehold::proto::v1::{
    acquire_response, constraint, AcquireRequest, Concurrency, Constraint, ReleaseRequest,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let nodes: Vec<String> = args
        .first()
        .map_or("127.0.0.1:7070", String::as_str)
        .split(',')
        .map(str::to_string)
        .collect();
    let clients: usize = args.get(1).map_or(Ok(50), |s| s.parse())?;
    let seconds: u64 = args.get(2).map_or(Ok(10), |s| s.parse())?;
    let keys: usize = args.get(3).map_or(Ok(100), |s| s.parse())?;

    let mut channels = Vec::new();
    for node in &nodes {
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("http://{node}"))?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = LeaseholdClient::new(channels[c % channels.len()].clone());
        tasks.push(tokio::spawn(async move {
            let mut acquire_us = Vec::new();
            let mut release_us = Vec::new();
            let mut errors = 0u64;
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                let scope = format!("load-{}", (c * 7919 + n as usize) % keys);
                let t = Instant::now();
                let granted = client
                    .acquire(AcquireRequest {
                        scope: scope.clone(),
                        constraints: vec![Constraint {
                            kind: Some(constraint::Kind::Concurrency(Concurrency {
                                key: "jobs".into(),
                                limit: 1000,
                            })),
                        }],
                        amount: 1,
                        min_amount: None,
                        lease_ttl_ms: 30_000,
                        max_lifetime_ms: None,
                        idempotency_key: format!("a-{c}-{n}"),
                        wait_ms: None,
                        fairness_key: String::new(),
                    })
                    .await;
                acquire_us.push(t.elapsed().as_micros() as u64);
                let lease_id = match granted.map(|r| r.into_inner().result) {
                    Ok(Some(acquire_response::Result::Granted(g))) => g.lease_id,
                    _ => {
                        errors += 1;
                        continue;
                    }
                };
                let t = Instant::now();
                let released = client
                    .release(ReleaseRequest {
                        scope,
                        lease_id,
                        idempotency_key: format!("r-{c}-{n}"),
                    })
                    .await;
                release_us.push(t.elapsed().as_micros() as u64);
                if released.is_err() {
                    errors += 1;
                }
            }
            (acquire_us, release_us, errors)
        }));
    }
    let (mut acquire, mut release, mut errors) = (Vec::new(), Vec::new(), 0);
    for t in tasks {
        let (a, r, e) = t.await?;
        acquire.extend(a);
        release.extend(r);
        errors += e;
    }
    let cycles = release.len();
    println!(
        "nodes={} clients={clients} seconds={seconds} keys={keys}: {cycles} cycles, {:.0} cycles/s, {errors} errors",
        nodes.len(),
        cycles as f64 / seconds as f64
    );
    for (name, mut v) in [("acquire", acquire), ("release", release)] {
        v.sort_unstable();
        let p = |q: f64| v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)));
        println!(
            "{name}: p50 {:?} µs, p99 {:?} µs, p99.9 {:?} µs, max {:?} µs",
            p(0.5).unwrap_or(&0),
            p(0.99).unwrap_or(&0),
            p(0.999).unwrap_or(&0),
            v.last().unwrap_or(&0)
        );
    }
    Ok(())
}
