//! `leasehold-jepsen`: one chaos run of a real Leasehold cluster.
//!
//! ```sh
//! leasehold-jepsen --nodes 5 --time-limit 60 --nemesis partition,kill,pause,clock \
//!     --workload leases --seed 42 --out DIR
//! ```
//!
//! A run prints the fault schedule its seed draws, starts the nodes (Docker
//! containers on a private network, or network namespaces), runs clients
//! against them while the faults happen for real, heals everything, checks
//! that full capacity comes back (`final`) and, with the kill nemesis, that
//! leases survive a SIGKILL of every node (`durability`). It then runs
//! every checker over the recorded history and writes `history.jsonl`,
//! `report.txt`, `report.json`, `latency.svg` and each node's log under
//! the output directory.

mod run;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let options = run::Options::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("leasehold-jepsen: starting the runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run::run(options)) {
        Ok(run::Ending::Valid) => ExitCode::SUCCESS,
        Ok(run::Ending::Invalid) => ExitCode::from(1),
        Err(error) => {
            eprintln!("leasehold-jepsen: {error:#}");
            ExitCode::from(2)
        }
    }
}
