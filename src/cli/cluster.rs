//! `slots` and `status`: the cluster as its slot map and its
//! nodes' own views (GetNodeDigest, on each node's client address)
//! describe it.

use std::time::Duration;

use clap::Args;
use leasehold::client::{bearer, with_token, ClientConfig};
use leasehold::proto::v1;
use leasehold::proto::v1::leasehold_client::LeaseholdClient;
use leasehold::proto::v1::{GetNodeDigestRequest, GroupDigest};
use leasehold::raft::META_GROUP;
use serde_json::{json, Value};
use tonic::Status;

use super::table::Table;
use super::{Connect, Report, EXIT_SERVER};

/// Longest wait for a TCP connection to one node in `status`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Args, Debug)]
pub struct SlotsArgs {
    #[command(flatten)]
    pub connect: Connect,
}

pub async fn slots(args: SlotsArgs) -> Result<Report, Status> {
    let client = args.connect.client().await?;
    Ok(slot_report(&client.slot_map().await?))
}

fn slot_report(map: &v1::SlotMap) -> Report {
    let groups = map.groups.iter().map(|g| {
        json!({
            "group_id": g.group_id,
            "slot_count": g.slot_count,
            "replica_node_ids": g.replica_node_ids,
            "leader_node_id": g.leader_node_id,
            "leader_term": g.leader_term,
        })
    });
    let ranges = map.slot_ranges.iter().map(
        |r| json!({ "first_slot": r.first_slot, "last_slot": r.last_slot, "group_id": r.group_id }),
    );
    let json = json!({
        "epoch": map.epoch,
        "slot_count": map.slot_count,
        "hash_function": map.hash_function,
        "slot_ranges": ranges.collect::<Vec<_>>(),
        "groups": groups.collect::<Vec<_>>(),
        "nodes": nodes_json(&map.nodes),
    });
    let mut table = Table::new(&["group", "slots", "ranges", "replicas", "leader", "term"]);
    for g in &map.groups {
        let replicas: Vec<String> = g.replica_node_ids.iter().map(u64::to_string).collect();
        let ranges: Vec<String> = map
            .slot_ranges
            .iter()
            .filter(|r| r.group_id == g.group_id)
            .map(|r| format!("{}-{}", r.first_slot, r.last_slot))
            .collect();
        let leader = match g.leader_node_id {
            0 => "none (election under way)".to_string(),
            id => id.to_string(),
        };
        table.row(vec![
            g.group_id.to_string(),
            g.slot_count.to_string(),
            ranges.join(","),
            replicas.join(","),
            leader,
            g.leader_term.to_string(),
        ]);
    }
    let mut nodes = Table::new(&["node", "address"]);
    for n in &map.nodes {
        nodes.row(vec![n.node_id.to_string(), n.grpc_address.clone()]);
    }
    let text = format!(
        "epoch {}, {} slots in {} groups, hash {}\n\n{}\n{}",
        map.epoch,
        map.slot_count,
        map.groups.len(),
        map.hash_function,
        table.render(),
        nodes.render()
    );
    Report::ok(json, text)
}

fn nodes_json(nodes: &[v1::Node]) -> Value {
    let nodes = nodes
        .iter()
        .map(|n| json!({ "node_id": n.node_id, "grpc_address": n.grpc_address }));
    Value::Array(nodes.collect())
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub connect: Connect,
}

/// One node's own view of the groups it hosts, or why there is none.
struct NodeView {
    node: v1::Node,
    digest: Result<Vec<GroupDigest>, Status>,
}

pub async fn status(args: StatusArgs) -> Result<Report, Status> {
    let client = args.connect.client().await?;
    let map = client.slot_map().await?;
    let mut probes = tokio::task::JoinSet::new();
    for node in map.nodes.clone() {
        let timeout = args.connect.timeout();
        let config = args.connect.config();
        probes.spawn(async move {
            let digest = digest(&node.grpc_address, &config, timeout).await;
            NodeView { node, digest }
        });
    }
    let mut views = probes.join_all().await;
    views.sort_by_key(|v| v.node.node_id);
    Ok(status_report(map.epoch, &views))
}

async fn digest(
    address: &str,
    config: &ClientConfig,
    timeout: Duration,
) -> Result<Vec<GroupDigest>, Status> {
    let tls = config.tls.as_ref().map(|t| t.tonic_config()).transpose()?;
    let channel = leasehold::tls::endpoint(address, tls.as_ref())
        .map_err(|e| Status::invalid_argument(format!("node address {address}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT.min(timeout))
        .connect_lazy();
    let mut request = tonic::Request::new(GetNodeDigestRequest {});
    request.set_timeout(timeout);
    let token = config.token.as_deref().map(bearer).transpose()?;
    with_token(&mut request, token.as_ref());
    let reply = LeaseholdClient::new(channel)
        .get_node_digest(request)
        .await?;
    Ok(reply.into_inner().groups)
}

/// What `status` shows of one node's groups: data groups hosted and led
/// (the metadata group aside), the highest data group term, and whether
/// every group it hosts, the metadata group included, knows a leader.
struct Summary {
    hosted: usize,
    leading: usize,
    max_term: u64,
    leaders_known: bool,
}

fn summarise(node_id: u64, groups: &[GroupDigest]) -> Summary {
    let data = groups.iter().filter(|g| g.group_id != META_GROUP);
    Summary {
        hosted: data.clone().count(),
        leading: data.clone().filter(|g| g.leader_node_id == node_id).count(),
        max_term: data.map(|g| g.term).max().unwrap_or(0),
        leaders_known: groups.iter().all(|g| g.leader_node_id != 0),
    }
}

fn status_report(epoch: u64, views: &[NodeView]) -> Report {
    let mut table = Table::new(&[
        "node",
        "address",
        "state",
        "groups",
        "leading",
        "max term",
        "leaders known",
    ]);
    let mut nodes = Vec::new();
    for view in views {
        let (id, address) = (view.node.node_id, &view.node.grpc_address);
        let mut row = vec![id.to_string(), address.clone()];
        match &view.digest {
            Ok(groups) => {
                let s = summarise(id, groups);
                row.extend([
                    "reachable".into(),
                    s.hosted.to_string(),
                    s.leading.to_string(),
                    s.max_term.to_string(),
                    if s.leaders_known { "yes" } else { "NO" }.into(),
                ]);
                nodes.push(json!({
                    "node_id": id, "grpc_address": address, "reachable": true,
                    "groups_hosted": s.hosted, "groups_led": s.leading,
                    "max_term": s.max_term, "all_leaders_known": s.leaders_known,
                }));
            }
            Err(status) => {
                row.push(format!("UNREACHABLE: {}", status.message()));
                nodes.push(json!({
                    "node_id": id, "grpc_address": address, "reachable": false,
                    "error": status.message(),
                }));
            }
        }
        table.row(row);
    }
    let unreachable = views.iter().filter(|v| v.digest.is_err()).count();
    let json = json!({ "epoch": epoch, "unreachable": unreachable, "nodes": nodes });
    let text = format!(
        "epoch {epoch}, {} nodes, {unreachable} unreachable\n\n{}",
        views.len(),
        table.render()
    );
    let mut report = Report::ok(json, text);
    if unreachable > 0 {
        report.exit = EXIT_SERVER;
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(group_id: u32, leader_node_id: u64, term: u64) -> GroupDigest {
        GroupDigest {
            group_id,
            leader_node_id,
            term,
            ..GroupDigest::default()
        }
    }

    #[test]
    fn summary_leaves_the_metadata_group_out_of_group_counts() {
        let groups = [group(0, 1, 3), group(1, 2, 5), group(META_GROUP, 1, 9)];
        let s = summarise(1, &groups);
        assert_eq!((s.hosted, s.leading, s.max_term), (2, 1, 5));
        assert!(s.leaders_known);
        assert!(!summarise(1, &[group(0, 0, 1)]).leaders_known);
    }

    #[test]
    fn an_unreachable_node_fails_status() {
        let node = |node_id| v1::Node {
            node_id,
            grpc_address: format!("127.0.0.1:{node_id}"),
        };
        let views = [
            NodeView {
                node: node(1),
                digest: Ok(vec![group(0, 1, 2)]),
            },
            NodeView {
                node: node(2),
                digest: Err(Status::unavailable("connection refused")),
            },
        ];
        let report = status_report(4, &views);
        assert_eq!(report.exit, EXIT_SERVER);
        assert!(report.text.contains("UNREACHABLE: connection refused"));
        assert_eq!(report.json["unreachable"], 1);
    }
}
