//! The own cluster's `gm server` processes as Linux shows them: found in `/proc` (children of
//! this process whose command line names their node id and a data dir of ours), the CPU they and
//! this process use (`utime + stime` of `/proc/<pid>/stat` over wall time), and pausing one
//! with SIGSTOP / SIGCONT.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::bench::BenchError;

/// A process id.
pub(in crate::bench) type Pid = libc::pid_t;

/// The pid of each node `1..=nodes` whose data dir lies in `data_dir`.
pub(in crate::bench) fn node_pids(data_dir: &Path, nodes: u64) -> Result<Vec<Pid>, BenchError> {
    let me = Pid::try_from(std::process::id()).unwrap_or_default();
    let mut found = vec![None; nodes as usize];
    let entries = std::fs::read_dir("/proc").map_err(|_| BenchError::NodeProcess(1))?;
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<Pid>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        if parse_stat(&stat).map(|s| s.ppid) != Some(me) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        if let Some(id) = node_id_in(&cmdline, data_dir) {
            if let Some(slot) = id.checked_sub(1).and_then(|i| found.get_mut(i as usize)) {
                *slot = Some(pid);
            }
        }
    }
    found.iter().enumerate().map(|(i, pid)| pid.ok_or(BenchError::NodeProcess(i as u64 + 1))).collect()
}

/// Measures the CPU the nodes and this process use over a stretch of wall time.
pub(in crate::bench) struct CpuMeter {
    pids: Vec<Pid>,
    start: Instant,
    nodes: Vec<Option<Duration>>,
    own: Option<Duration>,
}

/// CPU cores used: CPU time over wall time.
#[derive(Debug, PartialEq)]
pub(in crate::bench) struct CpuUse {
    pub elapsed: Duration,
    /// Each node's, in node id order.
    pub nodes: Vec<f64>,
    /// This process's: the member servers and the watches, which share the machine.
    pub own: f64,
}

impl CpuMeter {
    pub fn start(pids: &[Pid]) -> CpuMeter {
        let nodes = pids.iter().map(|&pid| cpu_time(&pid.to_string())).collect();
        CpuMeter { pids: pids.to_vec(), start: Instant::now(), nodes, own: cpu_time("self") }
    }

    /// The cores used since the start.
    pub fn read(&self) -> CpuUse {
        let elapsed = self.start.elapsed();
        let nodes =
            self.pids.iter().zip(&self.nodes).map(|(pid, &before)| cores(before, cpu_time(&pid.to_string()), elapsed));
        CpuUse { elapsed, nodes: nodes.collect(), own: cores(self.own, cpu_time("self"), elapsed) }
    }
}

impl CpuUse {
    pub fn nodes_total(&self) -> f64 {
        self.nodes.iter().sum()
    }

    /// `GM nodes 0.41 cores (node 1 0.14, node 2 0.13, node 3 0.14), this bench process 0.12 cores`
    pub fn text(&self) -> String {
        let per_node: Vec<String> =
            self.nodes.iter().enumerate().map(|(i, c)| format!("node {} {c:.2}", i + 1)).collect();
        format!(
            "GM nodes {:.2} cores ({}), this bench process {:.2} cores",
            self.nodes_total(),
            per_node.join(", "),
            self.own
        )
    }

    pub fn json(&self) -> Value {
        json!({"cpu_cores": self.nodes_total(), "cpu_cores_per_node": self.nodes, "bench_cpu_cores": self.own})
    }

    /// CPU time per 1000 operations done over the measured stretch, in milliseconds: the
    /// nodes' together and this process's, a figure that compares builds on any machine (on a
    /// saturated one, throughput is the cores over the sum). `None` without operations.
    pub fn ms_per_thousand(&self, ops: u64) -> Option<(f64, f64)> {
        let per = |cores: f64| cores * self.elapsed.as_secs_f64() * 1e6 / ops as f64;
        (ops > 0).then(|| (per(self.nodes_total()), per(self.own)))
    }
}

/// CPU time over `elapsed`; 0 when either reading is missing (the process is gone).
fn cores(before: Option<Duration>, after: Option<Duration>, elapsed: Duration) -> f64 {
    match (before, after) {
        (Some(b), Some(a)) if !elapsed.is_zero() => a.saturating_sub(b).as_secs_f64() / elapsed.as_secs_f64(),
        _ => 0.0,
    }
}

/// CPU time (user + system) that `/proc/{pid}` has used so far; `None` if it is gone.
fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(ticks(parse_stat(&stat)?.cpu_ticks))
}

fn ticks(n: u64) -> Duration {
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second).ok().filter(|&t| t > 0).unwrap_or(100);
    Duration::from_secs_f64(n as f64 / per_second as f64)
}

/// What the bench reads from `/proc/<pid>/stat`.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    ppid: Pid,
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
}

/// Fields 4 (ppid), 14 (utime) and 15 (stime) of a stat line. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses itself, so fields are counted after the last `)`.
fn parse_stat(stat: &str) -> Option<Stat> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts with field 3, the state.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3);
    let ppid = field(4)?.parse().ok()?;
    let utime: u64 = field(14)?.parse().ok()?;
    let stime: u64 = field(15)?.parse().ok()?;
    Some(Stat { ppid, cpu_ticks: utime + stime })
}

/// The `--node-id` of a `gm server` command line (NUL-separated, as in `/proc/<pid>/cmdline`)
/// whose `--data-dir` lies in `data_dir`.
fn node_id_in(cmdline: &[u8], data_dir: &Path) -> Option<u64> {
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let value = |flag: &str| args.windows(2).find(|w| w[0] == flag.as_bytes()).map(|w| w[1]);
    if !args.iter().any(|a| *a == b"server") {
        return None;
    }
    let dir = Path::new(std::str::from_utf8(value("--data-dir")?).ok()?);
    if !dir.starts_with(data_dir) {
        return None;
    }
    std::str::from_utf8(value("--node-id")?).ok()?.parse().ok()
}

/// A process stopped with SIGSTOP; SIGCONT when resumed or dropped, so an interrupted bench
/// leaves no node frozen.
pub(in crate::bench) struct Paused(Pid);

impl Paused {
    pub fn stop(pid: Pid) -> Result<Paused, std::io::Error> {
        signal(pid, libc::SIGSTOP)?;
        Ok(Paused(pid))
    }

    pub fn resume(self) {}
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = signal(self.0, libc::SIGCONT);
    }
}

fn signal(pid: Pid, signal: libc::c_int) -> Result<(), std::io::Error> {
    // SAFETY: kill(2) with the pid of one of our own children and a valid signal number.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (gm (x) y) S 4100 4242 4100 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 9 0 123 456 789";
        assert_eq!(parse_stat(stat), Some(Stat { ppid: 4100, cpu_ticks: 325 }));
        assert_eq!(parse_stat("4242 (gm) S"), None);
    }

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(cpu_time("self").is_some());
    }

    #[test]
    fn cores_are_cpu_time_over_wall_time() {
        let s = Duration::from_secs;
        assert_eq!(cores(Some(s(2)), Some(s(5)), s(10)), 0.3);
        assert_eq!(cores(Some(s(2)), None, s(10)), 0.0);
        assert_eq!(cores(Some(s(2)), Some(s(5)), Duration::ZERO), 0.0);
        let used = CpuUse { elapsed: s(10), nodes: vec![0.14, 0.13, 0.14], own: 0.12 };
        assert_eq!(
            used.text(),
            "GM nodes 0.41 cores (node 1 0.14, node 2 0.13, node 3 0.14), this bench process 0.12 cores"
        );
    }

    #[test]
    fn node_ids_come_from_our_servers_only() {
        let ours = Path::new("/tmp/gm-bench-1-2");
        let cmdline = |dir: &str| {
            ["/bin/gm", "server", "--node-id", "2", "--api-addr", "127.0.0.1:18082", "--data-dir", dir, "--log", "x"]
                .join("\0")
                .into_bytes()
        };
        assert_eq!(node_id_in(&cmdline("/tmp/gm-bench-1-2/node-2"), ours), Some(2));
        assert_eq!(node_id_in(&cmdline("/tmp/gm-bench-1-23/node-2"), ours), None);
        assert_eq!(node_id_in(b"/bin/gm\0bench\0fd\0", ours), None);
    }
}
