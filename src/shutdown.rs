//! One shutdown signal for every part of a serving process.
//!
//! `vigil serve` runs blocking threads (the Kafka pipeline, the model watcher) and async tasks
//! (the HTTP endpoints, and the gRPC server of the API issue). They all hold a clone of one
//! [`Shutdown`]: threads check [`is_triggered`](Shutdown::is_triggered) between units of work,
//! tasks await [`wait`](Shutdown::wait) (e.g. in a `serve_with_shutdown`). Anyone may
//! [`trigger`](Shutdown::trigger) it (a signal handler, a fatal error in one part), and triggering
//! is idempotent. As in mini-redis, shutdown is passed *in*, so tests drive it themselves.

use std::sync::Arc;

use tokio::sync::watch;

/// A cloneable, idempotent shutdown flag that can be polled and awaited.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        Shutdown {
            tx: Arc::new(tx),
            rx,
        }
    }

    /// Asks everything holding a clone to stop. Idempotent.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Whether shutdown has been asked for.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes once shutdown has been asked for (at once if it already was).
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        // An error means every sender is gone, which cannot happen while `self` holds one.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_reaches_every_clone_and_waiters() {
        let a = Shutdown::new();
        let b = a.clone();
        assert!(!b.is_triggered());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let waiter = rt.spawn({
            let b = b.clone();
            async move { b.wait().await }
        });
        a.trigger();
        a.trigger();
        rt.block_on(waiter).expect("waiter finished");
        assert!(b.is_triggered());
        // Waiting after the fact returns at once.
        rt.block_on(b.wait());
    }
}
