//! `gm watch GROUP`: the group's view, then each new view, until Ctrl-C, SIGTERM or `--count`.
//!
//! A [`Watch`](crate::client::Watch) stream is not opened again by itself: when it breaks, ends,
//! or goes silent (not even a keep-alive, which a node sends every 15 s, for [`SILENT_FOR`]), the
//! command opens a new one, starting at the endpoint after the one that failed. The new stream's first view is the
//! whole current view, so no change is lost; a view no newer than the last one printed, or with
//! the same members (an empty group, read again at a later revision), is not printed twice.

use std::time::Duration;

use super::exit::CliError;
use super::output::{self, Output, Printer};
use crate::client::Client;
use crate::membership::{GroupName, GroupView};
use crate::wire::Consistency;

/// How long a stream may send nothing before it is given up for a new one: two keep-alives.
const SILENT_FOR: Duration = Duration::from_secs(35);

pub async fn run(
    client: &Client,
    group: &GroupName,
    consistency: Consistency,
    count: Option<u64>,
    output: Output,
) -> Result<(), CliError> {
    // Ctrl-C or SIGTERM: the normal end of a watch, exit status 0.
    let stop = crate::signal::stop_requested();
    tokio::pin!(stop);
    // The first opening's error is the command's, as for any request.
    let mut watch = tokio::select! {
        opened = client.watch(group, consistency) => opened?,
        () = &mut stop => return Ok(()),
    };
    let mut printer = Printer::stdout();
    let mut last: Option<GroupView> = None;
    let mut printed = 0;
    loop {
        let next = tokio::select! {
            next = watch.next_within(SILENT_FOR) => next,
            () = &mut stop => return Ok(()),
        };
        match next {
            Ok(view) => {
                if last.as_ref().is_some_and(|l| view.revision <= l.revision || view.members == l.members) {
                    continue;
                }
                let text = match output {
                    Output::Json => output::json_line(&view)?,
                    Output::Table if printed == 0 => output::view_block(&view),
                    Output::Table => format!("\n{}", output::view_block(&view)),
                };
                if !printer.print(&text)? {
                    return Ok(());
                }
                printed += 1;
                if count == Some(printed) {
                    return Ok(());
                }
                last = Some(view);
            }
            Err(lost) => {
                tracing::warn!(group = %group, endpoint = watch.endpoint(), reason = %lost, "watch stream lost; opening a new one");
                let after = client.endpoints().iter().position(|e| e == watch.endpoint()).map_or(0, |i| i + 1);
                let next_first = client.starting_at(after);
                watch = tokio::select! {
                    opened = next_first.watch(group, consistency) => {
                        opened.map_err(|source| CliError::WatchLost { group: group.to_string(), source })?
                    }
                    () = &mut stop => return Ok(()),
                };
                tracing::info!(group = %group, endpoint = watch.endpoint(), "watch stream open again");
            }
        }
    }
}
