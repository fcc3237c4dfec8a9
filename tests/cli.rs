//! The command line's errors: a configuration a node cannot run with, or a port it cannot bind,
//! is one line on stderr and a non-zero exit, never a backtrace, even with `RUST_BACKTRACE` set.

use std::net::TcpListener;
use std::process::{Command, Output};

fn gm(args: &[&str], data_dir: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gm"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run gm")
}

/// Asserts a failed run whose stderr is one line `gm: error: ...` containing `says`.
fn assert_one_line_error(out: &Output, says: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit status; stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got:\n{stderr}");
    assert!(lines[0].starts_with("gm: error: ") && lines[0].contains(says), "{stderr}");
}

#[test]
fn configuration_errors_are_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = ["server", "--node-id", "1", "--api-addr", "127.0.0.1:0", "--peer-addr", "127.0.0.1:0"];
    let run = |extra: &[&str]| gm(&[&base[..], extra].concat(), dir.path());

    assert_one_line_error(&run(&["--discovery", "kubernetes"]), "needs --pod-name");
    assert_one_line_error(&run(&["--peers", "1=nowhere"]), "--peers");
    assert_one_line_error(&run(&[]), "--peers is required");
    assert_one_line_error(&run(&["--peers", "2=127.0.0.1:7999"]), "does not name this node");
    assert_one_line_error(&run(&["--peers", "1=127.0.0.1:7101;2=127.0.0.1:7102"]), "--peers");
    let other_port =
        ["server", "--node-id", "1", "--peer-addr", "127.0.0.1:7199", "--peers", "1=127.0.0.1:7101,2=b:7102"];
    assert_one_line_error(&gm(&other_port, dir.path()), "another port than this node's entry in --peers");

    // Raft timings that do not fit are refused before the data dir is touched.
    let fresh = tempfile::tempdir().expect("tempdir");
    let timings = ["--peers", "1=127.0.0.1:7101", "--election-timeout", "50ms", "--heartbeat-interval", "100ms"];
    let out = gm(&[&base[..], &timings[..]].concat(), fresh.path());
    assert_one_line_error(&out, "--election-timeout (50 ms) must be longer than --heartbeat-interval (100 ms)");
    assert_eq!(std::fs::read_dir(fresh.path()).expect("read dir").count(), 0, "the data dir stays empty");
}

/// A period or timeout of zero (a timer that would fire without end, or panic) is refused by
/// the flag parser, with exit status 2, from a flag or its variable.
#[test]
fn zero_periods_and_timeouts_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ["server", "--node-id", "1", "--peers", "1=127.0.0.1:7101"];
    for flag in ["--probe-interval", "--probe-timeout", "--heartbeat-interval", "--election-timeout"] {
        let out = gm(&[&server[..], &[flag, "0s"]].concat(), dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} 0s: {stderr}");
        assert!(stderr.contains(flag) && stderr.contains("must be more than 0"), "{stderr}");
    }
    let out = gm(&[&server[..], &["--worker-threads", "0"]].concat(), dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "--worker-threads 0: {stderr}");
    assert!(stderr.contains("--worker-threads"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_gm"))
        .args(["bench", "watch"])
        .env("GM_BENCH_EVERY", "0s")
        .output()
        .expect("run gm bench watch");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--every") && stderr.contains("must be more than 0"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).expect("read dir").count(), 0, "nothing was started");
}

/// A port free now, below the ephemeral range so no outgoing connection takes it meanwhile.
fn free_port() -> u16 {
    loop {
        let port = rand::random::<u16>() % 20_000 + 12_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One process per data dir, and a data dir resumes only the cluster it holds: a second process
/// on it, or the same data started with other peer addresses (a copy, or ports that moved), is
/// one line and changes nothing.
#[tokio::test]
async fn a_data_dir_serves_one_process_and_its_own_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (api, peer, other) = (free_port(), free_port(), free_port());
    let (api_addr, peer_addr, other_addr) =
        (format!("127.0.0.1:{api}"), format!("127.0.0.1:{peer}"), format!("127.0.0.1:{other}"));
    let mut node = Command::new(env!("CARGO_BIN_EXE_gm"))
        .args(["server", "--node-id", "1", "--api-addr", &api_addr, "--peer-addr", &peer_addr])
        .args(["--peers", &format!("1={peer_addr}")])
        .arg("--data-dir")
        .arg(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start gm server");
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !matches!(http.get(format!("http://{api_addr}/readyz")).send().await, Ok(r) if r.status() == 200) {
        assert!(std::time::Instant::now() < deadline, "the node never got ready");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let second = ["server", "--node-id", "1", "--api-addr", "127.0.0.1:0", "--peer-addr", &other_addr];
    let out = gm(&[&second[..], &["--peers", &format!("1={other_addr}")]].concat(), dir.path());
    assert_one_line_error(&out, "is in use by another gm process");

    node.kill().expect("kill");
    node.wait().expect("wait");
    let moved = ["server", "--node-id", "1", "--api-addr", "127.0.0.1:0", "--peer-addr", &other_addr];
    let out = gm(&[&moved[..], &["--peers", &format!("1={other_addr}")]].concat(), dir.path());
    // The log was opened (and says so) before its voters could be read: the error is the last line.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("gm: error: ") && last.contains("a copy of another cluster's data, or the ports moved"),
        "{stderr}"
    );
    assert!(!stderr.contains("gm server started") && !stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn a_taken_port_is_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let args = [
        "server",
        "--node-id",
        "1",
        "--api-addr",
        &addr,
        "--peer-addr",
        "127.0.0.1:7999",
        "--peers",
        "1=127.0.0.1:7999",
    ];
    let out = gm(&args, dir.path());
    assert_one_line_error(&out, &addr);
}
