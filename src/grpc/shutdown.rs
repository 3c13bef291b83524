//! Server shutdown in two phases, broadcast to every connection:
//!
//! ```text
//!  Running ──SIGTERM/SIGINT──► Draining ──drain timeout──► Closing
//!            (stop accepting,            (connections still
//!             GOAWAY, streams             open are dropped)
//!             finish)
//! ```

use tokio::sync::watch;

/// Where the server is in its shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    Draining,
    Closing,
}

/// Moves the server through its phases.
#[derive(Debug)]
pub struct ShutdownController {
    tx: watch::Sender<Phase>,
}

/// Observes the phase; cheap to clone, one per connection.
#[derive(Debug, Clone)]
pub struct ShutdownSignal {
    rx: watch::Receiver<Phase>,
}

impl ShutdownController {
    pub fn new() -> (ShutdownController, ShutdownSignal) {
        let (tx, rx) = watch::channel(Phase::Running);
        (ShutdownController { tx }, ShutdownSignal { rx })
    }

    /// Advances to `phase` (never backwards).
    pub fn advance(&self, phase: Phase) {
        self.tx.send_if_modified(|current| {
            if phase > *current {
                *current = phase;
                true
            } else {
                false
            }
        });
    }

    pub fn phase(&self) -> Phase {
        *self.tx.borrow()
    }

    pub fn signal(&self) -> ShutdownSignal {
        ShutdownSignal {
            rx: self.tx.subscribe(),
        }
    }
}

impl ShutdownSignal {
    pub fn phase(&self) -> Phase {
        *self.rx.borrow()
    }

    /// Resolves once the phase is at least `phase` (immediately if it is).
    /// If the controller is gone, it resolves too: nobody can stop us then.
    pub async fn reached(&mut self, phase: Phase) {
        let _ = self.rx.wait_for(|current| *current >= phase).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_only_advance() {
        let (controller, mut signal) = ShutdownController::new();
        assert_eq!(signal.phase(), Phase::Running);
        controller.advance(Phase::Closing);
        controller.advance(Phase::Draining);
        assert_eq!(controller.phase(), Phase::Closing);
        signal.reached(Phase::Draining).await;
    }
}
