//! `gm join | leave | members | groups | watch | cluster`: the command line client of the public
//! API, for people and scripts, as `etcdctl` or `consul members` are for theirs. A thin user of
//! [`crate::client`]: every command is one request (a watch, one stream, opened again when it is
//! lost), sent to any of `--endpoint`s with the client's fail-over and retries, bounded by
//! `--timeout`.
//!
//! It prints a table for people or, with `-o json`, the API's answer for scripts
//! ([`output`]), and exits with a status that says what happened ([`exit`]): `0` done, `2` bad
//! input, `3` not found, `4` conflict, `5` unavailable, `1` anything else. `docs/cli.md` has the
//! reference.

mod exit;
mod output;
mod watch;

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::client::{Client, RetryPolicy};
use crate::membership::{
    Address, FailureDetection, GroupName, Instance, MemberId, MemberSpec, Metadata, MAX_LEASE_TTL_MS, MIN_LEASE_TTL_MS,
};
use crate::wire::Consistency;

pub use exit::{CliError, ExitStatus};
pub use output::Output;

use output::Printer;

/// Where the commands go without `--endpoint` or `GM_ENDPOINTS`: the three nodes of `gm dev`.
pub const DEFAULT_ENDPOINTS: [&str; 3] = ["http://127.0.0.1:8081", "http://127.0.0.1:8082", "http://127.0.0.1:8083"];
/// The longest a connection to one node may take to open, unless `--timeout` is shorter.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The client commands, as `gm`'s subcommands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Join a member to a group (the group is created by its first join), or re-join it with a
    /// new incarnation if it differs from its record; the same join again changes nothing.
    Join(JoinArgs),
    /// Remove a member from a group (the last one to leave removes the group).
    Leave(LeaveArgs),
    /// The members of a group (its view), or one member's record.
    Members(MembersArgs),
    /// Every group, its size and revision.
    Groups(GroupsArgs),
    /// Print a group's view, then the new view at each change, until Ctrl-C or `--count` views.
    Watch(WatchArgs),
    /// The GM nodes: roles, the leader, the members each probes, health as the leader sees it.
    Cluster(ClusterArgs),
}

/// The flags every client command takes: where to send it, how to print the answer, how long
/// to try.
#[derive(Clone, Debug, Args)]
pub struct Connection {
    /// A GM node's API URL, `http://HOST:PORT` or `HOST:PORT` (any node answers every request).
    /// Repeat it, or give a comma-separated list, to fail over to the next when one does not
    /// answer.
    #[arg(long = "endpoint", visible_alias = "endpoints", env = "GM_ENDPOINTS", value_name = "URL",
        value_delimiter = ',', default_values = DEFAULT_ENDPOINTS)]
    pub endpoints: Vec<String>,
    /// `table` for people, `json` for scripts (the API's answer).
    #[arg(short = 'o', long, env = "GM_OUTPUT", value_enum, default_value = "table")]
    pub output: Output,
    /// How long to keep trying: one attempt may take this long, and no retry (on the next
    /// endpoint) starts after it.
    #[arg(long, env = "GM_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = crate::config::positive_duration)]
    pub timeout: Duration,
}

/// How a read is taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ReadConsistency {
    /// Through the leader: sees every write acknowledged before it.
    #[default]
    Linearizable,
    /// From the answering node's own state, without a quorum: to look at a broken cluster.
    Stale,
}

impl From<ReadConsistency> for Consistency {
    fn from(c: ReadConsistency) -> Self {
        match c {
            ReadConsistency::Linearizable => Consistency::Linearizable,
            ReadConsistency::Stale => Consistency::Stale,
        }
    }
}

#[derive(Clone, Debug, Args)]
pub struct ReadArgs {
    /// `linearizable` (through the leader) or `stale` (the answering node's own state).
    #[arg(long, env = "GM_CONSISTENCY", value_enum, default_value = "linearizable")]
    pub consistency: ReadConsistency,
}

#[derive(Clone, Debug, Args)]
pub struct JoinArgs {
    /// The group: 1 to 63 characters of a-z, 0-9, '.', '_', '-'.
    pub group: String,
    /// The member's id: 1 to 128 characters of A-Z, a-z, 0-9, '.', '_', ':', '-'.
    pub member: String,
    /// Where the member answers GM's probes: `host:port`.
    #[arg(long, env = "GM_ADDRESS", value_name = "HOST:PORT")]
    pub address: String,
    /// A metadata entry; repeat it, or give a comma-separated list (at most 16 keys).
    #[arg(long, env = "GM_METADATA", value_name = "KEY=VALUE", value_delimiter = ',')]
    pub metadata: Vec<String>,
    /// Lease mode: the member keeps itself alive with heartbeats and is removed if none comes
    /// within TTL (500ms to 24h). Without it the member is probed.
    #[arg(long, env = "GM_LEASE", value_name = "TTL", value_parser = crate::config::positive_duration,
        conflicts_with = "probe_path")]
    pub lease: Option<Duration>,
    /// Probe mode (the default): the path GM probes at the address.
    #[arg(long, env = "GM_PROBE_PATH", value_name = "PATH", default_value = crate::membership::DEFAULT_PROBE_PATH)]
    pub probe_path: String,
    /// A token the member picks at each start-up, so that a restart is a re-join.
    #[arg(long, env = "GM_INSTANCE", value_name = "ID")]
    pub instance: Option<String>,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Clone, Debug, Args)]
pub struct LeaveArgs {
    pub group: String,
    pub member: String,
    /// Leave only if the member is still this incarnation; else exit status 4 (conflict).
    #[arg(long, env = "GM_INCARNATION", value_name = "N")]
    pub incarnation: Option<u64>,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Clone, Debug, Args)]
pub struct MembersArgs {
    pub group: String,
    /// One member's record instead of the whole view.
    pub member: Option<String>,
    #[command(flatten)]
    pub read: ReadArgs,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Clone, Debug, Args)]
pub struct GroupsArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Clone, Debug, Args)]
pub struct WatchArgs {
    pub group: String,
    /// Stop after printing this many views, the first (current) one included.
    #[arg(long, env = "GM_COUNT", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    #[command(flatten)]
    pub read: ReadArgs,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Clone, Debug, Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    #[command(flatten)]
    pub connection: Connection,
}

/// Runs one client command; its error says the exit status ([`CliError::exit_code`]).
pub async fn run(command: ClientCommand) -> Result<(), CliError> {
    match command {
        ClientCommand::Join(args) => join(args).await,
        ClientCommand::Leave(args) => leave(args).await,
        ClientCommand::Members(args) => members(args).await,
        ClientCommand::Groups(args) => groups(args).await,
        ClientCommand::Watch(args) => {
            let group = group_name(&args.group)?;
            let client = args.connection.client()?;
            watch::run(&client, &group, args.read.consistency.into(), args.count, args.connection.output).await
        }
        ClientCommand::Cluster(args) => cluster(args).await,
    }
}

async fn join(args: JoinArgs) -> Result<(), CliError> {
    let (group, id) = (group_name(&args.group)?, member_id(&args.member)?);
    let spec = member_spec(&args)?;
    let joined = args.connection.client()?.join(&group, &id, &spec).await?;
    let answer = &joined.answer;
    print(args.connection.output, answer, || {
        let (incarnation, revision) = (answer.member.incarnation, answer.revision);
        match joined.created {
            true => format!("{id} joined {group}: incarnation {incarnation}, revision {revision}\n"),
            false => format!("{id} is a member of {group}: incarnation {incarnation}, revision {revision}\n"),
        }
    })
}

async fn leave(args: LeaveArgs) -> Result<(), CliError> {
    let (group, id) = (group_name(&args.group)?, member_id(&args.member)?);
    let answer = args.connection.client()?.leave(&group, &id, args.incarnation).await?;
    print(args.connection.output, &answer, || format!("{id} left {group}: revision {}\n", answer.revision))
}

async fn members(args: MembersArgs) -> Result<(), CliError> {
    let group = group_name(&args.group)?;
    let member = args.member.as_deref().map(member_id).transpose()?;
    let client = args.connection.client()?;
    let consistency = args.read.consistency.into();
    match member {
        Some(id) => {
            let record = client.member(&group, &id, consistency).await?;
            print(args.connection.output, &record, || output::members_table(std::slice::from_ref(&record)))
        }
        None => {
            let view = client.group(&group, consistency).await?;
            print(args.connection.output, &view, || output::members_table(&view.members))
        }
    }
}

async fn groups(args: GroupsArgs) -> Result<(), CliError> {
    let answer = args.connection.client()?.groups(args.read.consistency.into()).await?;
    print(args.connection.output, &answer, || output::groups_table(&answer))
}

async fn cluster(args: ClusterArgs) -> Result<(), CliError> {
    let answer = args.connection.client()?.cluster(args.read.consistency.into()).await?;
    print(args.connection.output, &answer, || output::cluster_table(&answer))
}

/// Prints `answer` as JSON, or `table()` for people.
fn print<T: serde::Serialize>(output: Output, answer: &T, table: impl FnOnce() -> String) -> Result<(), CliError> {
    let text = match output {
        Output::Json => output::json_pretty(answer)?,
        Output::Table => table(),
    };
    Printer::stdout().print(&text).map(drop)
}

impl Connection {
    /// A client of the endpoints that retries, on the next endpoint, until `--timeout`.
    fn client(&self) -> Result<Client, CliError> {
        // A third of the timeout an attempt (at least 1 s): a node that hangs leaves time to try
        // the others.
        let attempt_timeout = (self.timeout / 3).max(Duration::from_secs(1)).min(self.timeout);
        let policy = RetryPolicy { attempt_timeout, deadline: self.timeout, ..RetryPolicy::default() };
        Ok(Client::builder(&self.endpoints)
            .policy(policy)
            .connect_timeout(self.timeout.min(CONNECT_TIMEOUT))
            .build()?)
    }
}

fn group_name(s: &str) -> Result<GroupName, CliError> {
    GroupName::parse(s).map_err(|e| CliError::BadInput(e.message))
}

fn member_id(s: &str) -> Result<MemberId, CliError> {
    MemberId::parse(s).map_err(|e| CliError::BadInput(e.message))
}

/// The join's body from the flags, validated as the node would: a bad value is exit status 2
/// before any request.
fn member_spec(args: &JoinArgs) -> Result<MemberSpec, CliError> {
    let bad = |flag: &str, message: String| CliError::BadInput(format!("{flag}: {message}"));
    let address = Address::parse(&args.address).map_err(|e| bad("--address", e.message))?;
    let mut entries = BTreeMap::new();
    for entry in &args.metadata {
        let (key, value) =
            entry.split_once('=').ok_or_else(|| bad("--metadata", format!("{entry:?} is not KEY=VALUE")))?;
        entries.insert(key.to_owned(), value.to_owned());
    }
    let metadata = Metadata::try_from(entries).map_err(|e| bad("--metadata", e.message))?;
    let instance =
        args.instance.as_deref().map(Instance::parse).transpose().map_err(|e| bad("--instance", e.message))?;
    let (flag, detection) = match args.lease {
        Some(ttl) if ttl.subsec_nanos() % 1_000_000 != 0 => {
            return Err(bad("--lease", format!("{ttl:?} is not a whole number of milliseconds")))
        }
        // Said here in the flag's own units; the API's check would name `ttl_ms`.
        Some(ttl)
            if !(MIN_LEASE_TTL_MS..=MAX_LEASE_TTL_MS).contains(&u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)) =>
        {
            let (min_ms, max_h) = (MIN_LEASE_TTL_MS, MAX_LEASE_TTL_MS / 3_600_000);
            let ttl = humantime::format_duration(ttl);
            return Err(bad("--lease", format!("{ttl} is out of range: a lease lasts from {min_ms}ms to {max_h}h")));
        }
        Some(ttl) => {
            ("--lease", json!({"mode": "lease", "ttl_ms": u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)}))
        }
        None => ("--probe-path", json!({"mode": "probe", "path": args.probe_path})),
    };
    let failure_detection: FailureDetection =
        serde_json::from_value(detection).map_err(|e| bad(flag, e.to_string()))?;
    Ok(MemberSpec { address, metadata, instance, failure_detection })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// The client commands as the binary declares them.
    #[derive(Debug, Parser)]
    struct Gm {
        #[command(subcommand)]
        command: ClientCommand,
    }

    fn parse(args: &[&str]) -> Result<ClientCommand, clap::Error> {
        Ok(Gm::try_parse_from(["gm"].iter().chain(args))?.command)
    }

    fn join_args(args: &[&str]) -> JoinArgs {
        match parse(&[&["join", "orders", "w-1"], args].concat()).expect("parses") {
            ClientCommand::Join(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn endpoints_default_to_gm_dev_and_take_lists_and_repeats() {
        let ClientCommand::Groups(a) = parse(&["groups"]).expect("parses") else { panic!() };
        assert_eq!(a.connection.endpoints, DEFAULT_ENDPOINTS);
        assert_eq!(a.connection.output, Output::Table);
        assert_eq!(a.connection.timeout, Duration::from_secs(10));
        let ClientCommand::Groups(a) =
            parse(&["groups", "--endpoint", "a:1", "--endpoint", "b:2,c:3"]).expect("parses")
        else {
            panic!()
        };
        assert_eq!(a.connection.endpoints, ["a:1", "b:2", "c:3"]);
        let ClientCommand::Groups(a) = parse(&["groups", "--endpoints", "a:1,b:2", "-o", "json"]).expect("parses")
        else {
            panic!()
        };
        assert_eq!(a.connection.endpoints, ["a:1", "b:2"]);
        assert_eq!(a.connection.output, Output::Json);
    }

    #[test]
    fn usage_errors_are_the_parsers() {
        for args in [
            &["join", "orders", "w-1"][..],
            &["join", "orders", "w-1", "--address", "a:1", "--lease", "5s", "--probe-path", "/x"],
            &["groups", "--timeout", "0s"],
            &["watch", "orders", "--count", "0"],
            &["members", "orders", "-o", "yaml"],
            &["leave", "orders", "w-1", "--incarnation", "two"],
        ] {
            let error = parse(args).expect_err("a usage error");
            assert_eq!(error.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn a_join_is_the_contracts_body() {
        let spec = member_spec(&join_args(&["--address", "10.1.2.3:9021"])).expect("valid");
        let body = serde_json::to_value(&spec).expect("encodes");
        assert_eq!(
            body,
            json!({"address": "10.1.2.3:9021", "metadata": {}, "instance": null,
                   "failure_detection": {"mode": "probe", "path": "/gm/heartbeat"}})
        );
        let args = join_args(&[
            "--address",
            "db:1",
            "--metadata",
            "zone=a,rack=3",
            "--metadata",
            "k=v=w",
            "--lease",
            "1m30s",
            "--instance",
            "7f3c",
        ]);
        let body = serde_json::to_value(member_spec(&args).expect("valid")).expect("encodes");
        assert_eq!(
            body,
            json!({"address": "db:1", "metadata": {"zone": "a", "rack": "3", "k": "v=w"}, "instance": "7f3c",
                   "failure_detection": {"mode": "lease", "ttl_ms": 90000}})
        );
    }

    #[test]
    fn invalid_values_are_bad_input_naming_the_flag() {
        for (args, says) in [
            (&["--address", "nowhere"][..], "--address: \"nowhere\" is not a valid address"),
            (&["--address", "a:1", "--metadata", "zone"], "--metadata: \"zone\" is not KEY=VALUE"),
            (
                &["--address", "a:1", "--lease", "100ms"],
                "--lease: 100ms is out of range: a lease lasts from 500ms to 24h",
            ),
            (&["--address", "a:1", "--lease", "2d"], "--lease: 2days is out of range"),
            (&["--address", "a:1", "--lease", "1500us"], "--lease: 1.5ms is not a whole number"),
            (&["--address", "a:1", "--probe-path", "x"], "--probe-path: \"x\" is not a valid probe path"),
            (&["--address", "a:1", "--instance", "a b"], "--instance: \"a b\" is not a valid instance"),
        ] {
            let error = member_spec(&join_args(args)).expect_err("invalid");
            assert_eq!(error.exit_code(), 2);
            assert!(error.to_string().starts_with(says), "{args:?}: {error}");
        }
        assert_eq!(group_name("Orders").expect_err("invalid").exit_code(), 2);
        assert_eq!(member_id("-x").expect_err("invalid").exit_code(), 2);
    }
}
