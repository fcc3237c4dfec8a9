//! A node's promise to refuse votes outlives its process. With each AppendEntries answer a node
//! promises a leader to vote for no one for its `leader_lease` (openraft 0.9's, its longest
//! election timeout; the leader's read lease counts on it, see [`super::read_lease`]). openraft
//! keeps that promise across a restart only for the new process's own `leader_lease`, so a node
//! restarted with a shorter `--election-timeout` would break the promises its last process made.
//! The data dir therefore keeps the longest lease its processes promised (the file
//! `leader-lease`, whole milliseconds); a node that starts with a shorter one refuses every vote,
//! its own included, for the longer one first ([`begin`]), and only then writes its own
//! ([`end`]).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

const FILE: &str = "leader-lease";

/// Reads what the data dir's earlier processes promised. If it is longer than `leader_lease`,
/// returns it: the node must refuse votes that long from now, then call [`end`]. Otherwise
/// records `leader_lease` at once and returns `None`. Errors: the file cannot be read or
/// written, or does not hold a whole number.
pub fn begin(data_dir: &Path, leader_lease: Duration) -> io::Result<Option<Duration>> {
    let path = data_dir.join(FILE);
    let promised = match std::fs::read_to_string(&path) {
        Ok(text) => Some(Duration::from_millis(text.trim().parse().map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: not a whole number of ms: {e}", path.display()))
        })?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    match promised {
        Some(promised) if promised > leader_lease => Ok(Some(promised)),
        _ => end(data_dir, leader_lease).map(|()| None),
    }
}

/// Records `leader_lease` as what this data dir's process promises, durably.
pub fn end(data_dir: &Path, leader_lease: Duration) -> io::Result<()> {
    let path = data_dir.join(FILE);
    let tmp: PathBuf = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(leader_lease.as_millis().to_string().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(data_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_millis(500);
    const LONG: Duration = Duration::from_millis(6000);

    #[test]
    fn a_shorter_lease_than_the_last_one_promised_waits_out_the_longer_one_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(begin(dir.path(), LONG).expect("begin"), None, "a new data dir promised nothing");
        assert_eq!(begin(dir.path(), SHORT).expect("begin"), Some(LONG));
        assert_eq!(begin(dir.path(), SHORT).expect("begin"), Some(LONG), "a crash before the end keeps it");
        end(dir.path(), SHORT).expect("end");
        assert_eq!(begin(dir.path(), SHORT).expect("begin"), None);
        assert_eq!(begin(dir.path(), LONG).expect("begin"), None, "a longer lease needs no wait");
        assert_eq!(begin(dir.path(), SHORT).expect("begin"), Some(LONG));
    }

    #[test]
    fn a_garbled_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE), "soon").expect("write");
        assert!(begin(dir.path(), SHORT).is_err());
    }
}
