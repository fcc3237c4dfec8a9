//! `gm dev`: a local cluster of separate `gm server` processes on 127.0.0.1, stopped together.
//! `gm bench` starts one the same way when it is given no endpoints.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::config::DevConfig;

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("cannot find the gm executable: {0}")]
    Exe(std::io::Error),
    #[error("cannot prepare {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("cannot start node {node}: {source}")]
    Spawn { node: u64, source: std::io::Error },
    #[error("port out of range for node {0}")]
    Port(u64),
}

/// One local node process.
pub struct LocalNode {
    pub id: u64,
    /// `host:port` of its REST API.
    pub api: String,
    child: Option<Child>,
}

/// Local `gm server` processes that stop when this is dropped.
pub struct LocalCluster {
    pub nodes: Vec<LocalNode>,
    peers: String,
    data_dir: PathBuf,
    exe: PathBuf,
    extra_args: Vec<String>,
}

impl LocalCluster {
    /// Starts `config.nodes` nodes; `extra_args` go to every `gm server`.
    pub fn start(config: &DevConfig, extra_args: &[String]) -> Result<LocalCluster, DevError> {
        let exe = std::env::current_exe().map_err(DevError::Exe)?;
        let port = |base: u16, n: u64| u16::try_from(u64::from(base) + n - 1).map_err(|_| DevError::Port(n));
        if config.clean {
            let _ = std::fs::remove_dir_all(&config.data_dir);
        }
        let mut peers = Vec::new();
        let mut nodes = Vec::new();
        for n in 1..=config.nodes {
            peers.push(format!("{n}=127.0.0.1:{}", port(config.peer_port, n)?));
            nodes.push(LocalNode { id: n, api: format!("127.0.0.1:{}", port(config.api_port, n)?), child: None });
        }
        let mut cluster = LocalCluster {
            nodes,
            peers: peers.join(","),
            data_dir: config.data_dir.clone(),
            exe,
            extra_args: extra_args.to_vec(),
        };
        for n in 1..=config.nodes {
            cluster.spawn(n)?;
        }
        Ok(cluster)
    }

    /// Starts node `id` (again) on its data dir.
    pub fn spawn(&mut self, id: u64) -> Result<(), DevError> {
        let dir = self.data_dir.join(format!("node-{id}"));
        std::fs::create_dir_all(&dir)
            .map_err(|source| DevError::DataDir { path: dir.display().to_string(), source })?;
        let node = &mut self.nodes[(id - 1) as usize];
        let peer = self.peers.split(',').find_map(|p| p.strip_prefix(&format!("{id}="))).unwrap_or_default();
        let child = Command::new(&self.exe)
            .arg("server")
            .args(["--node-id", &id.to_string(), "--name", &format!("gm-dev-{id}")])
            .args(["--api-addr", &node.api, "--peer-addr", peer])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--peers", &self.peers])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| DevError::Spawn { node: id, source })?;
        node.child = Some(child);
        Ok(())
    }

    /// kill -9 of node `id`.
    pub async fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes[(id - 1) as usize].child.take() {
            let _ = child.kill().await;
        }
    }

    /// SIGTERM to every node so each stops cleanly; SIGKILL after 10 s for any that does not.
    pub async fn stop(mut self) {
        for child in self.nodes.iter().filter_map(|n| n.child.as_ref()) {
            if let Some(pid) = child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
                // SAFETY: kill(2) with a pid of our own child and a valid signal number.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        for child in self.nodes.iter_mut().filter_map(|n| n.child.as_mut()) {
            if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }
}

/// Starts the nodes, prints their API URLs, and stops them all when `shutdown` completes. A node
/// that is killed meanwhile (to watch a failover) leaves the others running.
pub async fn run(config: DevConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<(), DevError> {
    let cluster = LocalCluster::start(&config, &[])?;
    for node in &cluster.nodes {
        println!("node {}: http://{}", node.id, node.api);
    }
    println!("data in {}; Ctrl-C stops all nodes", config.data_dir.display());
    shutdown.await;
    cluster.stop().await;
    Ok(())
}
