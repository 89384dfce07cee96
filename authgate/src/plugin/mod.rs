//! WebAssembly auth plugins: the ABI ([`abi`], pure), the wasmtime host ([`host`]) and the
//! [`Runner`] that bounds concurrency (a small pool of blocking workers and a bounded queue;
//! beyond it, 503 at once rather than an unbounded wait).

pub mod abi;
pub mod host;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::Semaphore;

pub use abi::Verdict;
pub use host::{CallError, Host, Limits};

/// Runs plugin calls on blocking threads, at most `workers` at a time, with at most `queue`
/// calls waiting.
pub struct Runner {
    pub host: Arc<Host>,
    permits: Semaphore,
    waiting: AtomicUsize,
    queue: usize,
}

/// Why a call was not run or did not answer.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("plugin queue full")]
    Busy,
    #[error(transparent)]
    Call(#[from] CallError),
}

impl Runner {
    pub fn new(host: Arc<Host>, workers: usize, queue: usize) -> Runner {
        Runner {
            host,
            permits: Semaphore::new(workers.max(1)),
            waiting: AtomicUsize::new(0),
            queue,
        }
    }

    /// Run `plugin` on `input`.
    pub async fn run(self: &Arc<Self>, plugin: String, input: String) -> Result<Verdict, RunError> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(RunError::Busy);
        }
        let permit = tokio::time::timeout(Duration::from_secs(1), self.permits.acquire()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let Ok(Ok(_permit)) = permit else {
            return Err(RunError::Busy);
        };
        let host = self.host.clone();
        tokio::task::spawn_blocking(move || host.call(&plugin, input.as_bytes()))
            .await
            .map_err(|e| RunError::Call(CallError::Trap(format!("plugin thread: {e}"))))?
            .map_err(RunError::Call)
    }
}

#[cfg(test)]
mod tests;
