//! Review (h-review): a second daemon must not take over a live control socket. With the
//! socket on by default at /run/espd/espd.sock, two daemons on one host (two namespaces,
//! `espd run` next to the service) would otherwise silently steal each other's socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[test]
fn a_live_control_socket_is_not_replaced() {
    let dir = std::env::temp_dir().join(format!("espd-review-sock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("espd.sock");
    let stop = Arc::new(AtomicBool::new(false));
    let (tx1, _rx1) = std::sync::mpsc::channel();
    let first = espd::control::api::serve(&path, tx1, stop.clone()).unwrap();
    let (tx2, _rx2) = std::sync::mpsc::channel();
    let second = espd::control::api::serve(&path, tx2, stop.clone());
    let took_over = second.is_ok();
    stop.store(true, Ordering::Release);
    let _ = first.join();
    if let Ok(h) = second {
        let _ = h.join();
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !took_over,
        "a second serve() unlinked and re-bound a socket a live daemon serves"
    );
}
