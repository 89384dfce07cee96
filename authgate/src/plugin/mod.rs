//! WebAssembly auth plugins: the ABI ([`abi`], pure), the wasmtime host ([`host`]) and the
//! [`Runner`] that bounds concurrency (at most `workers` calls at once and a bounded queue;
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

/// Longest call deadline that may run on a serving thread itself.
pub const INLINE_DEADLINE: Duration = Duration::from_millis(50);

/// Runs plugin calls, at most `workers` at a time, with at most `queue` calls waiting.
pub struct Runner {
    pub host: Arc<Host>,
    permits: Semaphore,
    waiting: AtomicUsize,
    queue: usize,
    /// Time inside the plugin (instantiate + call), every plugin.
    seconds: prometheus::Histogram,
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
    pub fn new(
        host: Arc<Host>,
        workers: usize,
        queue: usize,
        seconds: prometheus::Histogram,
    ) -> Runner {
        Runner {
            host,
            permits: Semaphore::new(workers.max(1)),
            waiting: AtomicUsize::new(0),
            queue,
            seconds,
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
        let call = move || {
            let started = std::time::Instant::now();
            let result = host.call(&plugin, input.as_bytes());
            (result, started.elapsed())
        };
        // No hand-off to a sleeping blocking thread on the request's path where that is safe:
        // on a multi-threaded runtime the call runs right here (the worker's other tasks move
        // to another thread); on a serving thread's single-threaded runtime it runs right here
        // too when its deadline is short, holding that thread's other requests at most that
        // long. Longer deadlines go to a blocking thread. The permit above still bounds how
        // many run at once.
        let (result, took) = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(call),
            _ if self.host.limits().timeout <= INLINE_DEADLINE => call(),
            _ => tokio::task::spawn_blocking(call)
                .await
                .map_err(|e| RunError::Call(CallError::Trap(format!("plugin thread: {e}"))))?,
        };
        self.seconds.observe(took.as_secs_f64());
        result.map_err(RunError::Call)
    }
}

#[cfg(test)]
mod tests;
