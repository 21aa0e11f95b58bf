//! A handle on the control thread for other threads (the built-in IKE, tools): typed calls of
//! the control API run on the control thread, in order with the socket's requests, and their
//! results come back. No JSON on this path.

use std::sync::mpsc;

use super::Control;
use super::socket::ApiMsg;

/// Cloneable; every clone reaches the same control thread.
#[derive(Clone)]
pub struct ControlHandle {
    tx: mpsc::Sender<ApiMsg>,
}

/// The control thread has stopped (the daemon is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("control: the control thread has stopped")]
pub struct Stopped;

impl ControlHandle {
    pub fn new(tx: mpsc::Sender<ApiMsg>) -> ControlHandle {
        ControlHandle { tx }
    }

    /// Runs `f` on the control thread and waits for its result.
    pub fn call<R, F>(&self, f: F) -> Result<R, Stopped>
    where
        R: Send + 'static,
        F: FnOnce(&mut Control, u64) -> R + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        self.post(move |c, now| {
            let _ = tx.send(f(c, now));
        })?;
        rx.recv().map_err(|_| Stopped)
    }

    /// Runs `f` on the control thread without waiting.
    pub fn post<F>(&self, f: F) -> Result<(), Stopped>
    where
        F: FnOnce(&mut Control, u64) + Send + 'static,
    {
        self.tx.send(ApiMsg::Call(Box::new(f))).map_err(|_| Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::sync::Arc;

    #[test]
    fn calls_run_on_the_control_thread_in_order() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/gw-a.toml"))
                .unwrap();
        let cfg = Config::parse(std::path::Path::new("gw-a.toml"), &text).unwrap();
        let dp = Arc::new(cfg.build_dataplane(1).unwrap());
        let mut ctl = Control::new(&cfg, dp);
        let (tx, rx) = mpsc::channel();
        let h = ControlHandle::new(tx);
        let t = std::thread::spawn(move || {
            let a = h.call(|c, _| c.allocate_spi()).unwrap().unwrap();
            let b = h.call(|c, _| c.allocate_spi()).unwrap().unwrap();
            let n = h.call(|c, _| c.stats().sas).unwrap();
            (a, b, n)
        });
        let mut now = 1;
        while !t.is_finished() {
            if let Ok(m) = rx.recv_timeout(std::time::Duration::from_millis(10)) {
                now += 1;
                crate::control::api::deliver(&mut ctl, m, now);
            }
        }
        let (a, b, n) = t.join().unwrap();
        assert_ne!(a, b, "two allocations gave the same SPI");
        assert_eq!(n, ctl.stats().sas);
        // The control thread gone: a call fails instead of hanging.
        drop(rx);
        let (tx, rx) = mpsc::channel::<ApiMsg>();
        drop(rx);
        assert_eq!(
            ControlHandle::new(tx).call(|c, _| c.stats().sas),
            Err(Stopped)
        );
    }
}
