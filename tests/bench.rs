//! `gm bench` end to end, small: each mode starts its own cluster of real `gm server`
//! processes, measures, prints its figures and stops it. The figures themselves are not judged
//! (benchmarks, not timed tests); what is asserted is what a run must get right whatever the
//! speed: every join and read answered, every change delivered to every stream, in order.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// `gm bench ARGS` on ports free now (another run may take them first: then it tries others).
fn bench(args: &[&str]) -> String {
    for _ in 0..5 {
        let api = rand::random::<u16>() % 20_000 + 12_000;
        let peer = rand::random::<u16>() % 20_000 + 12_000;
        if api.abs_diff(peer) < 10 {
            continue;
        }
        let Output { status, stdout, stderr } = Command::new(env!("CARGO_BIN_EXE_gm"))
            .arg("bench")
            .args(args)
            .args(["--api-port", &api.to_string(), "--peer-port", &peer.to_string()])
            .output()
            .expect("gm bench runs");
        let (out, err) = (String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&stderr));
        if err.contains("is taken") {
            continue;
        }
        assert!(status.success(), "gm bench {args:?} failed:\n{out}\n{err}");
        return out.into_owned();
    }
    panic!("no free ports for gm bench after 5 tries");
}

fn line<'a>(out: &'a str, start: &str) -> &'a str {
    out.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("no line {start:?} in:\n{out}"))
}

#[test]
fn reads_of_a_whole_view_all_succeed_with_and_without_gzip() {
    for gzip in [false, true] {
        let mut args = vec!["--workload", "reads", "--group-size", "60", "--duration", "1s", "--concurrency", "8"];
        if gzip {
            args.push("--gzip");
        }
        let out = bench(&args);
        assert!(out.contains("the view of bench-view has 60 members"), "{out}");
        let gzip = if gzip { ", gzip" } else { "" };
        for phase in [format!("reads of a 60-member view{gzip}:"), format!("reads (stale) of a 60-member view{gzip}:")]
        {
            assert_served(&out, &phase);
        }
    }
}

/// The joins phase, then reads of the single members it joined: every request served.
#[test]
fn joins_and_member_reads_all_succeed() {
    let out = bench(&["--failovers", "0", "--duration", "1s", "--concurrency", "8", "--groups", "4"]);
    for phase in ["joins:", "reads:", "reads (stale):"] {
        assert_served(&out, phase);
    }
}

/// The `phase` line says it served requests without errors, and its CPU line that the nodes
/// spent CPU on them.
fn assert_served(out: &str, phase: &str) {
    let figures = line(out, phase);
    assert!(!figures.contains(" 0 ops/s"), "{figures}");
    // A loaded machine may see an election: a 503 then is the contract's answer. Any other
    // error is not.
    let errors = figures.split("errors ").nth(1).expect("an error count");
    assert!(errors == "0" || errors.ends_with(&format!("(503: {})", errors.split(' ').next().unwrap())), "{figures}");
    // What the phase cost: the nodes served every request, so they used CPU.
    let cost = line(out, &phase.replace(':', " CPU: GM nodes "));
    let nodes: f64 = cost.split("GM nodes ").nth(1).and_then(|s| s.split(' ').next()?.parse().ok()).expect(cost);
    assert!(nodes > 0.0 && cost.contains("; per 1000 ops: GM nodes "), "{cost}");
}

#[test]
fn every_change_reaches_every_watch_stream_in_order() {
    let out =
        bench(&["watch", "--streams", "60", "--duration", "2s", "--every", "100ms", "--group-size", "3", "--json"]);
    assert!(out.contains("watch: 60 streams open over 3 nodes"), "{out}");
    let figures = out.lines().find(|l| l.contains(" changes to 60 streams:")).unwrap_or_else(|| panic!("{out}"));
    assert!(figures.contains("missed 0, out of order 0, streams ended early 0"), "{figures}");
    let changes: usize = figures["watch: ".len()..].split(' ').next().unwrap().parse().expect("a count of changes");
    assert!(changes >= 5, "{figures}");
    assert!(figures.contains(&format!("({} deliveries", changes * 60)), "every change to every stream: {figures}");
    assert!(line(&out, "watch: memory per idle stream").contains("KiB"), "{out}");
    let report: serde_json::Value = serde_json::from_str(out.lines().last().expect("a JSON line")).expect("JSON");
    assert_eq!(report["changes"], changes, "{report}");
    assert_eq!(report["deliveries"], changes * 60, "{report}");
    assert_eq!((report["missed"].as_u64(), report["streams"].as_u64()), (Some(0), Some(60)), "{report}");
    assert!(report["p99_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{report}");
}

#[test]
fn a_node_that_cannot_start_stops_the_bench_at_once_with_its_error() {
    let started = std::time::Instant::now();
    let Output { status, stderr, .. } = Command::new(env!("CARGO_BIN_EXE_gm"))
        .args(["bench", "--workload", "reads", "--duration", "1s"])
        // Ports no other run takes: the nodes exit before they would bind them.
        .args(["--api-port", "1", "--peer-port", "11"])
        .env("GM_LINEARIZABLE_READS", "bogus")
        .output()
        .expect("gm bench runs");
    let err = String::from_utf8_lossy(&stderr);
    assert!(!status.success(), "{err}");
    assert!(err.contains("invalid value 'bogus'"), "the node's own error is shown: {err}");
    assert!(err.contains("exited with status 2 before it was ready"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "not the 60 s readiness wait: {err}");
}

/// An endpoint that never gets ready is named, with why, long before the bench gives up on it.
#[test]
fn an_endpoint_that_is_not_ready_is_named_while_the_bench_waits() {
    let gone = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gm"))
        .args(["bench", "--workload", "reads", "--endpoints", &format!("http://{gone}")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("gm bench runs");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let notice = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("is not ready yet") => break Some(line),
            Ok(line) => seen.push(line),
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let notice = notice.unwrap_or_else(|| panic!("no notice within 30 s; the bench said:\n{}", seen.join("\n")));
    assert!(notice.contains(&gone.to_string()) && notice.contains("refused"), "{notice}");
}

/// `gm bench ... | head -1`: once the reader has gone the bench finishes quietly, and stops and
/// removes its cluster, instead of panicking on the closed pipe.
#[test]
fn a_closed_stdout_does_not_stop_the_bench() {
    let api = rand::random::<u16>() % 20_000 + 12_000;
    let peer = api.wrapping_add(1_000).max(12_000);
    let mut child = Command::new(env!("CARGO_BIN_EXE_gm"))
        .args(["bench", "--workload", "joins", "--duration", "1s", "--concurrency", "4"])
        .args(["--api-port", &api.to_string(), "--peer-port", &peer.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gm bench runs");
    // Read the first line, as `head -1` would, then close the pipe.
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut first).expect("a first line");
    let Output { status, stderr, .. } = child.wait_with_output().expect("gm bench ends");
    let stderr = String::from_utf8_lossy(&stderr);
    if stderr.contains("is taken") {
        return; // Another run took the ports: nothing to judge.
    }
    assert!(status.success() && !stderr.contains("panicked"), "{first}{stderr}");
    let data_dir = first.rsplit_once("data in ").map(|(_, dir)| dir.trim().to_owned()).expect(&first);
    assert!(!std::path::Path::new(&data_dir).exists(), "{data_dir} was left behind");
}
