//! The stop a person or Kubernetes asks for: Ctrl-C (SIGINT) or SIGTERM (what the kubelet sends
//! a pod's containers). `gm server`, `gm dev` and `gm agent` stop cleanly on it, `gm watch` ends
//! on it with exit status 0.

/// Completes on SIGTERM or Ctrl-C.
pub async fn stop_requested() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
