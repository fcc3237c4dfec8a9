//! One-sided network faults between one GM node and some member addresses, on one machine.
//!
//! Every GM node of a local cluster sends its probes from 127.0.0.1, so an address cannot tell
//! the nodes apart. Their processes can be told apart: each node is moved into its own cgroup
//! (v2), and an `iptables` rule in `OUTPUT` with the `cgroup` match drops the TCP packets that
//! node's sockets send to a member's port. That node's connects time out exactly as across a real
//! partition, while the other nodes (and the member's answers) pass. A socket belongs to the
//! cgroup its process was in when it was created, so a node must be enclosed before it opens
//! connections to the members (before they join).
//!
//! Needs root, the `iptables` command (package `iptables`, nft or legacy backend) with the
//! `cgroup` match, and a writable cgroup v2 hierarchy (pure v2 at `/sys/fs/cgroup` or the
//! hybrid `/sys/fs/cgroup/unified`). Rules and cgroups are removed on drop, also when a test fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::NodeProc;

/// A GM node process in a cgroup of its own, and the drop rules in force for it.
pub struct Isolation {
    pub node: u64,
    pid: u32,
    mount: PathBuf,
    /// The cgroup's path below the mount, as `iptables -m cgroup --path` takes it.
    cgroup: String,
    rules: Vec<Vec<String>>,
}

impl Isolation {
    /// Moves `node`'s process into a fresh cgroup. Panics (with what is missing) if this machine
    /// cannot do it.
    pub fn enclose(node: &NodeProc) -> Isolation {
        let pid = pid_of(node).unwrap_or_else(|| panic!("no process found for node {} ({})", node.id, node.api));
        let mount = cgroup2_mount().expect("a cgroup v2 hierarchy (see /proc/self/mounts); these tests need one");
        let cgroup = format!("gm-test-{}-node-{}", std::process::id(), node.id);
        let dir = mount.join(&cgroup);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("creating cgroup {} (needs root and a writable cgroup2): {e}", dir.display()));
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving node {} (pid {pid}) into {}: {e}", node.id, dir.display()));
        Isolation { node: node.id, pid, mount, cgroup, rules: Vec::new() }
    }

    /// Drops every TCP packet this node sends to `address` (`127.0.0.1:PORT`) from now on.
    pub fn cut_off(&mut self, address: &str) {
        let (ip, port) = address.rsplit_once(':').expect("address is host:port");
        let rule: Vec<String> =
            ["OUTPUT", "-p", "tcp", "-d", ip, "--dport", port, "-m", "cgroup", "--path", &self.cgroup, "-j", "DROP"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        iptables("-I", &rule).unwrap_or_else(|e| panic!("adding the drop rule (needs root and iptables): {e}"));
        self.rules.push(rule);
    }

    /// Removes every drop rule: the node reaches the members again.
    pub fn heal(&mut self) {
        for rule in self.rules.drain(..) {
            if let Err(e) = iptables("-D", &rule) {
                eprintln!("removing iptables rule {rule:?}: {e}");
            }
        }
    }
}

impl Drop for Isolation {
    fn drop(&mut self) {
        self.heal();
        // Back to the root cgroup (a dead process cannot be moved, and need not be), then remove ours.
        let _ = std::fs::write(self.mount.join("cgroup.procs"), self.pid.to_string());
        let _ = std::fs::remove_dir(self.mount.join(&self.cgroup));
    }
}

fn iptables(op: &str, rule: &[String]) -> Result<(), String> {
    // `-w`: wait for the xtables lock, which tests running in parallel share.
    let out = Command::new("iptables").arg("-w").arg(op).args(rule).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Where the cgroup v2 hierarchy is mounted.
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, path, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(path))
    })
}

/// The pid of the `gm server` process serving `node`'s API: the harness keeps its child private,
/// and the API address (a free port) names one process.
fn pid_of(node: &NodeProc) -> Option<u32> {
    let wanted = ["--api-addr", node.api.as_str()];
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        args.windows(2).any(|w| w[0] == wanted[0].as_bytes() && w[1] == wanted[1].as_bytes()).then_some(pid)
    })
}
