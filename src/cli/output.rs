//! What the client commands print: aligned tables for people, the contract's answers as JSON
//! for scripts. The JSON is the `gm::wire` type the node answered, written back as it came
//! (`docs/api.md` describes every field), so a script reads the same shape from `gm` as from
//! `curl`. No colours: the output is the same on a terminal and in a pipe.

use std::io::{self, Write};

use clap::ValueEnum;
use serde::Serialize;

use super::exit::CliError;
use crate::membership::{FailureDetection, GroupView, Member};
use crate::wire::{ClusterAnswer, GroupsAnswer};

/// `-o/--output`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns, for people.
    #[default]
    Table,
    /// The API's answer as JSON (`gm watch`: one view a line), for scripts.
    Json,
}

/// Writes to standard output. A reader that went away (`gm watch | head -1`) ends the command
/// quietly: [`Printer::print`] then answers `Ok(false)`.
pub struct Printer {
    out: io::Stdout,
}

impl Printer {
    pub fn stdout() -> Printer {
        Printer { out: io::stdout() }
    }

    /// Writes `text` and flushes it, so each view of a watch reaches a pipe as it comes.
    /// `Ok(false)` when the reader closed the pipe.
    pub fn print(&mut self, text: &str) -> Result<bool, CliError> {
        let mut out = self.out.lock();
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(CliError::Output(e)),
        }
    }
}

/// `answer` as indented JSON, ended by a line break.
pub fn json_pretty<T: Serialize>(answer: &T) -> Result<String, CliError> {
    serde_json::to_string_pretty(answer).map(|s| s + "\n").map_err(CliError::Encode)
}

/// `answer` as JSON on one line, ended by a line break (a watch's view).
pub fn json_line<T: Serialize>(answer: &T) -> Result<String, CliError> {
    serde_json::to_string(answer).map(|s| s + "\n").map_err(CliError::Encode)
}

/// Columns under a header, each as wide as its widest cell, two spaces apart; the last column is
/// not padded, so no line ends in spaces.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Table {
        Table { header: header.to_vec(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let header = self.header.iter().map(|h| h.to_string());
        let mut text = String::new();
        for cells in std::iter::once(header.collect::<Vec<_>>()).chain(self.rows.iter().cloned()) {
            let last = cells.len().saturating_sub(1);
            for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
                text.push_str(cell);
                if i < last {
                    let pad = width - cell.chars().count() + 2;
                    text.extend(std::iter::repeat_n(' ', pad));
                }
            }
            text.push('\n');
        }
        text
    }
}

/// A cell for something absent.
const NONE: &str = "-";

/// The members of a view, one a row, sorted by id as the view is.
pub fn members_table(members: &[Member]) -> String {
    let mut table = Table::new(&["MEMBER", "ADDRESS", "INCARNATION", "DETECTION", "NODE", "JOINED", "METADATA"]);
    for m in members {
        table.row(vec![
            m.id.to_string(),
            m.address.to_string(),
            m.incarnation.to_string(),
            detection(&m.failure_detection),
            m.responsible_node.map_or_else(|| NONE.to_owned(), |n| n.to_string()),
            String::from(m.joined_at),
            metadata(m),
        ]);
    }
    table.render()
}

/// A view as `gm watch` shows it to people: a line naming the group and revision, then its
/// members.
pub fn view_block(view: &GroupView) -> String {
    match view.members.len() {
        0 => format!("{} at revision {}: no members\n", view.group, view.revision),
        n => {
            let noun = if n == 1 { "member" } else { "members" };
            format!("{} at revision {}: {n} {noun}\n{}", view.group, view.revision, members_table(&view.members))
        }
    }
}

pub fn groups_table(answer: &GroupsAnswer) -> String {
    let mut table = Table::new(&["GROUP", "MEMBERS", "REVISION"]);
    for g in &answer.groups {
        table.row(vec![g.group.to_string(), g.size.to_string(), g.revision.to_string()]);
    }
    table.render()
}

/// A line with the cluster's id, leader, term and revision, then one row per node.
pub fn cluster_table(answer: &ClusterAnswer) -> String {
    let leader = answer.leader_id.map_or_else(|| "none".to_owned(), |l| l.to_string());
    let id = answer.cluster_id.as_deref().unwrap_or(NONE);
    let mut text = format!("cluster {id}  leader {leader}  term {}  revision {}\n", answer.term, answer.revision);
    let mut table = Table::new(&["ID", "NAME", "API", "PEER", "ROLE", "PROBES", "HEALTH", "LAG", "LAST-CONTACT"]);
    for node in &answer.nodes {
        let role = serde_json::to_value(node.role).ok().and_then(|v| v.as_str().map(str::to_owned));
        let health = node.health.as_ref();
        table.row(vec![
            node.id.to_string(),
            node.name.clone(),
            node.api_address.clone(),
            node.peer_address.clone(),
            role.unwrap_or_default(),
            node.responsible_for.to_string(),
            health.map_or(NONE, |h| if h.reachable { "ok" } else { "unreachable" }).to_owned(),
            figure(health.and_then(|h| h.lag_entries), ""),
            figure(health.and_then(|h| h.last_contact_ms), "ms"),
        ]);
    }
    text.push_str(&table.render());
    text
}

fn figure(value: Option<u64>, unit: &str) -> String {
    value.map_or_else(|| NONE.to_owned(), |v| format!("{v}{unit}"))
}

/// `probe /gm/heartbeat`, `lease 10s`, `lease 5m`, `lease 1500ms`.
fn detection(fd: &FailureDetection) -> String {
    match fd {
        FailureDetection::Probe { path } => format!("probe {path}"),
        FailureDetection::Lease { ttl_ms } => {
            let units = [(3_600_000, "h"), (60_000, "m"), (1000, "s"), (1, "ms")];
            let (size, unit) = units.into_iter().find(|(size, _)| ttl_ms % size == 0).unwrap_or((1, "ms"));
            format!("lease {}{unit}", ttl_ms / size)
        }
    }
}

/// `k=v,k=v` in key order, or `-`.
fn metadata(member: &Member) -> String {
    let pairs: Vec<String> = match serde_json::to_value(&member.metadata) {
        Ok(serde_json::Value::Object(map)) => {
            map.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect()
        }
        _ => Vec::new(),
    };
    if pairs.is_empty() {
        NONE.to_owned()
    } else {
        pairs.join(",")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn view() -> GroupView {
        serde_json::from_value(json!({
            "group": "orders", "revision": 7, "members": [
                {"id": "worker-7", "group": "orders", "address": "10.1.2.3:9021", "metadata": {"zone": "a", "rack": "3"},
                 "instance": null, "incarnation": 2, "joined_at": "2026-11-24T10:00:00.123Z", "responsible_node": 1,
                 "failure_detection": {"mode": "probe", "path": "/gm/heartbeat"}},
                {"id": "w8", "group": "orders", "address": "db:1", "metadata": {},
                 "instance": "i1", "incarnation": 1, "joined_at": "2026-11-24T10:00:01.000Z", "responsible_node": null,
                 "failure_detection": {"mode": "lease", "ttl_ms": 1500}},
                {"id": "w9", "group": "orders", "address": "db:2", "metadata": {},
                 "instance": null, "incarnation": 3, "joined_at": "2026-11-24T10:00:02.000Z", "responsible_node": null,
                 "failure_detection": {"mode": "lease", "ttl_ms": 300000}},
            ]
        }))
        .expect("a view")
    }

    #[test]
    fn members_are_aligned_columns() {
        let text = members_table(&view().members);
        let expected = "\
MEMBER    ADDRESS        INCARNATION  DETECTION            NODE  JOINED                    METADATA
worker-7  10.1.2.3:9021  2            probe /gm/heartbeat  1     2026-11-24T10:00:00.123Z  rack=3,zone=a
w8        db:1           1            lease 1500ms         -     2026-11-24T10:00:01.000Z  -
w9        db:2           3            lease 5m             -     2026-11-24T10:00:02.000Z  -
";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_view_block_names_group_and_revision() {
        let mut v = view();
        assert!(view_block(&v).starts_with("orders at revision 7: 3 members\nMEMBER "));
        v.members.clear();
        assert_eq!(view_block(&v), "orders at revision 7: no members\n");
    }

    #[test]
    fn the_cluster_shows_leader_roles_and_health() {
        let answer: ClusterAnswer = serde_json::from_value(json!({
            "cluster_id": "c1", "leader_id": 1, "term": 3, "revision": 9,
            "nodes": [
                {"id": 1, "name": "gm-0", "api_address": "a:8080", "peer_address": "a:7000", "role": "leader",
                 "responsible_for": 4, "health": {"reachable": true, "last_contact_ms": 0, "lag_entries": 0}},
                {"id": 2, "name": "gm-1", "api_address": "b:8080", "peer_address": "b:7000", "role": "follower",
                 "responsible_for": 0, "health": null},
            ]
        }))
        .expect("an answer");
        let text = cluster_table(&answer);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "cluster c1  leader 1  term 3  revision 9");
        assert_eq!(lines[1], "ID  NAME  API     PEER    ROLE      PROBES  HEALTH  LAG  LAST-CONTACT");
        assert_eq!(lines[2], "1   gm-0  a:8080  a:7000  leader    4       ok      0    0ms");
        assert_eq!(lines[3], "2   gm-1  b:8080  b:7000  follower  0       -       -    -");
    }

    #[test]
    fn json_is_the_answer_as_served() {
        let v = view();
        let line = json_line(&v).expect("encodes");
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let back: GroupView = serde_json::from_str(&line).expect("decodes");
        assert_eq!(back, v);
    }
}
