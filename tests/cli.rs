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
}

#[test]
fn a_taken_port_is_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = gm(&["server", "--node-id", "1", "--api-addr", &addr, "--peers", "1=127.0.0.1:7999"], dir.path());
    assert_one_line_error(&out, &addr);
}
