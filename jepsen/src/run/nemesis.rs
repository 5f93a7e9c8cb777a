//! Carries out the fault schedule on the real cluster: iptables rules in
//! the nodes' network namespaces, SIGKILL and restart, SIGSTOP and
//! SIGCONT, clock files. Every start and stop is recorded in the history
//! with the nodes it resolved to.

use std::time::{Duration, Instant};

use anyhow::Result;
use leasehold_jepsen::history::Phase;

use super::client::Clients;
use super::cluster::{write_atomically, Cluster};
use super::recorder::Recorder;
use super::schedule::{set, ClockFault, Cut, Fault, NodeId, Step, Who};

const MAP_TIMEOUT: Duration = Duration::from_millis(500);
/// The least time between one fault's heal and the next fault.
const QUIET_MIN: Duration = Duration::from_secs(1);

/// What a started fault left to undo.
enum Active {
    /// iptables rules, flushed on every node.
    Rules,
    Killed(Vec<NodeId>),
    Paused(Vec<NodeId>),
    Clocks(Vec<NodeId>),
    /// Nodes given a storage fault: each must have stopped with
    /// [`STORAGE_FAULT_EXIT`] by the heal, which clears the fault and
    /// restarts it.
    Storage(Vec<NodeId>),
}

/// The exit status of a node that met a storage fault (sysexits'
/// `EX_IOERR`).
const STORAGE_FAULT_EXIT: i32 = 74;
/// How long past a storage fault's end its node may take to stop.
const STORAGE_STOP_WAIT: Duration = Duration::from_secs(10);

/// Runs every step at its time after `start`, healing each before the
/// next begins and every one by `deadline`. What failed to start or to
/// heal, each a problem that fails the run: a fault that did not happen
/// tested nothing, and a storage fault its node did not stop for is a
/// broken promise.
pub async fn run(
    cluster: &mut Cluster,
    clients: &Clients,
    recorder: &Recorder,
    steps: &[Step],
    (start, deadline): (Instant, Instant),
) -> Vec<String> {
    let mut failures = Vec::new();
    let mut healed = start;
    for step in steps {
        // A heal that ran late (restarting every node, say) still leaves
        // the cluster some quiet time before the next fault.
        let at = (start + Duration::from_millis(step.at_ms)).max(healed + QUIET_MIN);
        if at + QUIET_MIN >= deadline {
            println!("nemesis: no time left for: {step}");
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let name = step.fault.kind().name();
        let active = match begin(cluster, clients, &step.fault).await {
            Ok((active, detail)) => {
                recorder.nemesis(name, "start", detail, Phase::Main);
                Some(active)
            }
            Err(error) => {
                let detail = format!("{} FAILED TO START: {error:#}", step.fault);
                println!("nemesis: {detail}");
                failures.push(format!("nemesis: {detail}"));
                recorder.nemesis(name, "start", detail, Phase::Main);
                None
            }
        };
        let end = (at + Duration::from_millis(step.duration_ms)).min(deadline);
        tokio::time::sleep_until(end.into()).await;
        let detail = match heal(cluster, active).await {
            Ok(detail) => detail,
            Err(error) => {
                let detail = format!("healing FAILED: {error:#}");
                println!("nemesis: {}: {detail}", step.fault);
                failures.push(format!("nemesis: {}: {detail}", step.fault));
                detail
            }
        };
        recorder.nemesis(name, "stop", detail, Phase::Main);
        healed = Instant::now();
    }
    failures
}

/// Undoes every fault that leaves state behind: rules and clock files.
/// Killed and paused nodes are restored by the step that stopped them.
pub async fn heal_network_and_clocks(cluster: &mut Cluster) -> Result<()> {
    heal(cluster, Some(Active::Rules)).await?;
    heal(cluster, Some(Active::Clocks(cluster.ids()))).await?;
    Ok(())
}

async fn begin(
    cluster: &mut Cluster,
    clients: &Clients,
    fault: &Fault,
) -> Result<(Active, String)> {
    match fault {
        Fault::Partition(cut) => {
            let (drops, note) = resolve_cut(cluster, clients, cut).await;
            for &(dst, src) in &drops {
                let ip = cluster.node(src).ip.to_string();
                cluster
                    .iptables(dst, &["-A", "INPUT", "-s", &ip, "-j", "DROP"])
                    .await?;
            }
            let pairs: Vec<String> = drops.iter().map(|(d, s)| format!("n{s}->n{d}")).collect();
            let detail = format!("{fault}{note}; dropped {}", pairs.join(" "));
            Ok((Active::Rules, detail))
        }
        Fault::Loss { who, percent } => {
            let (nodes, note) = resolve(cluster, clients, who).await;
            let probability = format!("{:.2}", f64::from(*percent) / 100.0);
            for &id in &nodes {
                let rule = [
                    "-A",
                    "INPUT",
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &probability,
                    "-j",
                    "DROP",
                ];
                cluster.iptables(id, &rule).await?;
            }
            Ok((Active::Rules, format!("{fault}{note}: {}", set(&nodes))))
        }
        Fault::Kill(who) => {
            let (nodes, note) = resolve(cluster, clients, who).await;
            for &id in &nodes {
                cluster.kill(id).await?;
            }
            Ok((
                Active::Killed(nodes.clone()),
                format!("{fault}{note}: {}", set(&nodes)),
            ))
        }
        Fault::Pause(who) => {
            let (nodes, note) = resolve(cluster, clients, who).await;
            for &id in &nodes {
                cluster.pause(id).await?;
            }
            Ok((
                Active::Paused(nodes.clone()),
                format!("{fault}{note}: {}", set(&nodes)),
            ))
        }
        Fault::Clock(clock) => {
            let (settings, note) = clock_settings(cluster, clients, clock).await;
            for (id, text) in &settings {
                write_atomically(&cluster.node(*id).clock_file(), text)?;
            }
            let nodes: Vec<NodeId> = settings.iter().map(|(id, _)| *id).collect();
            let each: Vec<String> = settings
                .iter()
                .map(|(id, text)| format!("n{id} {}", text.trim()))
                .collect();
            let detail = format!("{fault}{note}: {}", each.join(", "));
            Ok((Active::Clocks(nodes), detail))
        }
        Fault::Storage { who, fault: kind } => {
            let (nodes, note) = resolve(cluster, clients, who).await;
            for &id in &nodes {
                let file = cluster.node(id).storage_fault_file();
                write_atomically(&file, kind.fault_file_text())?;
            }
            Ok((
                Active::Storage(nodes.clone()),
                format!("{fault}{note}: {}", set(&nodes)),
            ))
        }
    }
}

async fn heal(cluster: &mut Cluster, active: Option<Active>) -> Result<String> {
    let Some(active) = active else {
        return Ok("nothing to heal".into());
    };
    match active {
        Active::Rules => {
            for id in cluster.ids() {
                cluster.iptables(id, &["-F", "INPUT"]).await?;
            }
            Ok("flushed every node's INPUT rules".into())
        }
        Active::Killed(nodes) => {
            for &id in &nodes {
                cluster.restart(id).await?;
            }
            Ok(format!("restarted {}", set(&nodes)))
        }
        Active::Paused(nodes) => {
            for &id in &nodes {
                cluster.resume(id).await?;
            }
            Ok(format!("resumed {}", set(&nodes)))
        }
        Active::Clocks(nodes) => {
            for &id in &nodes {
                match std::fs::remove_file(cluster.node(id).clock_file()) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
            }
            Ok(format!("real time again on {}", set(&nodes)))
        }
        Active::Storage(nodes) => heal_storage(cluster, &nodes).await,
    }
}

/// Checks that every node given a storage fault stopped with
/// [`STORAGE_FAULT_EXIT`], clears its fault and restarts it on its data.
/// A node that kept running, or stopped otherwise, fails the heal: storage
/// is fail-stop.
async fn heal_storage(cluster: &mut Cluster, nodes: &[NodeId]) -> Result<String> {
    let mut stopped = Vec::new();
    let mut broken = Vec::new();
    for &id in nodes {
        let status = cluster.wait_exit(id, STORAGE_STOP_WAIT).await?;
        match std::fs::remove_file(cluster.node(id).storage_fault_file()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        match status {
            Some(STORAGE_FAULT_EXIT) => stopped.push(id),
            Some(code) => broken.push(format!("n{id} exited {code}, not {STORAGE_FAULT_EXIT}")),
            None => broken.push(format!(
                "n{id} still runs {STORAGE_STOP_WAIT:?} after the fault's end"
            )),
        }
        if status.is_some() {
            cluster.restart(id).await?;
        }
    }
    if !broken.is_empty() {
        anyhow::bail!("storage is not fail-stop: {}", broken.join("; "));
    }
    Ok(format!(
        "{} exited {STORAGE_FAULT_EXIT}; fault cleared, restarted",
        set(&stopped)
    ))
}

/// The nodes `who` names now, and a note on how a role was resolved.
async fn resolve(cluster: &Cluster, clients: &Clients, who: &Who) -> (Vec<NodeId>, String) {
    match who {
        Who::Node(id) => (vec![*id], String::new()),
        Who::Nodes(ids) => (ids.clone(), String::new()),
        Who::All => (cluster.ids(), String::new()),
        Who::Leader => match leader(clients).await {
            Some(id) => (vec![id], format!(" (leader: n{id})")),
            None => (vec![1], " (no leader known: n1)".into()),
        },
    }
}

/// The node leading the most groups, the lowest id among equals.
async fn leader(clients: &Clients) -> Option<NodeId> {
    let map = clients.slot_map(MAP_TIMEOUT).await?;
    let mut counts: std::collections::BTreeMap<NodeId, usize> = Default::default();
    for g in map.groups.iter().filter(|g| g.leader_node_id != 0) {
        *counts.entry(g.leader_node_id).or_default() += 1;
    }
    let most = counts.values().copied().max()?;
    counts
        .into_iter()
        .find(|&(_, n)| n == most)
        .map(|(id, _)| id)
}

/// The (receiver, sender) pairs whose packets a cut drops.
async fn resolve_cut(
    cluster: &Cluster,
    clients: &Clients,
    cut: &Cut,
) -> (Vec<(NodeId, NodeId)>, String) {
    let all = cluster.ids();
    match cut {
        Cut::Isolate(who) => {
            let (side, note) = resolve(cluster, clients, who).await;
            let rest: Vec<NodeId> = all
                .iter()
                .copied()
                .filter(|id| !side.contains(id))
                .collect();
            (both_ways(&side, &rest), note)
        }
        Cut::Halves { minority } => {
            let rest: Vec<NodeId> = all
                .iter()
                .copied()
                .filter(|id| !minority.contains(id))
                .collect();
            (both_ways(minority, &rest), String::new())
        }
        Cut::MajoritiesRing => (majorities_ring(&all), String::new()),
        Cut::Bridge { left, right, .. } => (both_ways(left, right), String::new()),
        Cut::OneWay { from, to } => {
            let (senders, note) = resolve(cluster, clients, from).await;
            let drops = to
                .iter()
                .filter(|id| !senders.contains(id))
                .flat_map(|&dst| senders.iter().map(move |&src| (dst, src)))
                .collect();
            (drops, note)
        }
    }
}

fn both_ways(a: &[NodeId], b: &[NodeId]) -> Vec<(NodeId, NodeId)> {
    let mut drops = Vec::new();
    for &x in a {
        for &y in b {
            drops.push((x, y));
            drops.push((y, x));
        }
    }
    drops
}

/// Nodes in a ring, each still talking to the nearest neighbours that make
/// it a majority. Three nodes make no ring that cuts anything, so there
/// the first and last lose each other and the middle one bridges them.
fn majorities_ring(ids: &[NodeId]) -> Vec<(NodeId, NodeId)> {
    let n = ids.len();
    let reach = (n / 2).div_ceil(2);
    let mut drops = Vec::new();
    for (i, &a) in ids.iter().enumerate() {
        for (j, &b) in ids.iter().enumerate() {
            let distance = i.abs_diff(j).min(n - i.abs_diff(j));
            if i != j && distance > reach {
                drops.push((a, b));
            }
        }
    }
    if drops.is_empty() && n >= 3 {
        drops = both_ways(&ids[..1], &ids[n - 1..]);
    }
    drops
}

/// What each node's clock file says for `fault`.
async fn clock_settings(
    cluster: &Cluster,
    clients: &Clients,
    fault: &ClockFault,
) -> (Vec<(NodeId, String)>, String) {
    match fault {
        ClockFault::Skew { who, offset_ms } => {
            let (nodes, note) = resolve(cluster, clients, who).await;
            let text = format!("offset_ms={offset_ms}\n");
            (
                nodes.into_iter().map(|id| (id, text.clone())).collect(),
                note,
            )
        }
        ClockFault::Rate { who, rate } => {
            let (nodes, note) = resolve(cluster, clients, who).await;
            let text = format!("rate={rate}\n");
            (
                nodes.into_iter().map(|id| (id, text.clone())).collect(),
                note,
            )
        }
        ClockFault::Scramble { offsets_ms } => {
            let settings = offsets_ms
                .iter()
                .map(|(id, ms)| (*id, format!("offset_ms={ms}\n")))
                .collect();
            (settings, String::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sees(drops: &[(NodeId, NodeId)], ids: &[NodeId], a: NodeId) -> usize {
        ids.iter()
            .filter(|&&b| b == a || !drops.contains(&(a, b)))
            .count()
    }

    #[test]
    fn in_a_ring_every_node_sees_a_majority_but_not_all() {
        for n in [3u64, 5, 7] {
            let ids: Vec<NodeId> = (1..=n).collect();
            let drops = majorities_ring(&ids);
            assert!(!drops.is_empty(), "n={n}");
            for &a in &ids {
                assert!(
                    sees(&drops, &ids, a) > ids.len() / 2,
                    "n={n} a={a}: {drops:?}"
                );
            }
            for &(a, b) in &drops {
                assert!(drops.contains(&(b, a)), "symmetric");
            }
        }
    }

    #[test]
    fn both_ways_cuts_each_pair_in_each_direction() {
        assert_eq!(both_ways(&[1], &[2, 3]), [(1, 2), (2, 1), (1, 3), (3, 1)]);
    }
}
