//! The command line client's one error type and the exit status each error gives, so that a
//! script can tell "not there" from "try again later" without reading the message.

use std::fmt;

use crate::client::{ClientError, ErrorKind};

/// What a client command's exit status says (`docs/cli.md`, "Exit status"). `2` is also what the
/// flag parser exits with for a usage error, so every "you asked wrongly" is `2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// The command did what it was asked.
    Ok = 0,
    /// Anything not below: an answer that is not the contract's, a server error, output that
    /// cannot be written.
    Error = 1,
    /// A usage error, an invalid name, address or value; or the node refused the request as
    /// malformed (`400`).
    BadInput = 2,
    /// No such group or member (`404`).
    NotFound = 3,
    /// The member is there under another incarnation (`409`).
    Conflict = 4,
    /// No endpoint answered, or none could serve (`503`: no leader, no quorum) within `--timeout`.
    Unavailable = 5,
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<ErrorKind> for ExitStatus {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::NotFound => ExitStatus::NotFound,
            ErrorKind::Conflict => ExitStatus::Conflict,
            ErrorKind::Unavailable => ExitStatus::Unavailable,
            ErrorKind::BadInput => ExitStatus::BadInput,
            ErrorKind::Other => ExitStatus::Error,
        }
    }
}

/// Why a client command failed. Its message is one line (`main` prints it after `gm: error: `).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A request failed; [`ClientError::kind`] decides the exit status.
    #[error("{}", OneLine(.0))]
    Client(#[from] ClientError),
    /// An argument the flag parser let through but the contract refuses: a name, an address,
    /// metadata, a lease.
    #[error("{0}")]
    BadInput(String),
    /// Standard output could not be written (other than a closed pipe, which ends a command
    /// quietly).
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
    /// The answer could not be written as JSON.
    #[error("cannot encode the answer as JSON: {0}")]
    Encode(#[source] serde_json::Error),
    /// A watch stream ended and could not be opened again.
    #[error("the watch of {group} could not be opened again: {}", OneLine(.source))]
    WatchLost {
        group: String,
        #[source]
        source: ClientError,
    },
}

impl CliError {
    pub fn status(&self) -> ExitStatus {
        match self {
            CliError::Client(error) | CliError::WatchLost { source: error, .. } => error.kind().into(),
            CliError::BadInput(_) => ExitStatus::BadInput,
            CliError::Output(_) | CliError::Encode(_) => ExitStatus::Error,
        }
    }

    /// The process's exit status for this error.
    pub fn exit_code(&self) -> u8 {
        self.status().code()
    }
}

/// A message with every run of whitespace, line breaks included, as one space: a proxy's error
/// page quoted in a [`ClientError`] must not break the one-line rule.
struct OneLine<'a, T>(&'a T);

impl<T: fmt::Display> fmt::Display for OneLine<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.to_string();
        f.write_str(&text.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ErrorCode;

    fn api(status: u16, message: &str) -> CliError {
        CliError::Client(ClientError::Api {
            endpoint: "http://a:1".into(),
            status,
            code: ErrorCode::Other(String::new()),
            message: message.into(),
            retry_after: None,
        })
    }

    #[test]
    fn statuses_are_distinct_and_follow_the_answer() {
        assert_eq!(api(404, "m").exit_code(), 3);
        assert_eq!(api(409, "m").exit_code(), 4);
        assert_eq!(api(503, "m").exit_code(), 5);
        assert_eq!(api(400, "m").exit_code(), 2);
        assert_eq!(api(500, "m").exit_code(), 1);
        assert_eq!(CliError::BadInput("x".into()).exit_code(), 2);
        assert_eq!(CliError::Client(ClientError::Endpoint("x".into())).exit_code(), 2);
    }

    #[test]
    fn messages_are_one_line() {
        let text = api(502, "<html>\n  <body>Bad gateway</body>\n</html>").to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(text.ends_with("<html> <body>Bad gateway</body> </html>"), "{text}");
    }
}
