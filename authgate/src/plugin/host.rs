//! The wasmtime plugin host: load and validate modules, run one call in a fresh, limited
//! instance, count every outcome, disable a plugin that keeps failing.
//!
//! Sandboxing: no imports at all (no WASI, no host calls); every call gets a new store and
//! instance (nothing survives between calls, CVE-2022-39393 class bugs cannot leak state),
//! with a memory/table limit that traps on growth failure, a wasm stack limit, and an epoch
//! deadline set *before* instantiation (start functions are bounded too). Precompiled artefacts
//! are never deserialized: only `\0asm` binaries and `.wat` text are compiled.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, Linker, Module, PoolingAllocationConfig, Store,
    StoreLimits, StoreLimitsBuilder,
};

use super::abi::{self, MAX_OUTPUT, Verdict};

/// Largest module file accepted.
pub const MAX_MODULE_BYTES: usize = 4 * 1024 * 1024;
/// Epoch tick.
const TICK: Duration = Duration::from_millis(1);
/// Ticks the ticker keeps running after the last call ended before it parks.
const LINGER_TICKS: u32 = 100;

/// Limits of one call.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    pub memory_bytes: usize,
    pub max_failures: u32,
    pub compile_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_millis(20),
            memory_bytes: 16 << 20,
            max_failures: 5,
            compile_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a call did not produce a verdict (the request is then denied with 503).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no plugin named {0:?} is loaded")]
    Unknown(String),
    #[error("plugin disabled after repeated failures")]
    Disabled,
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    #[error("trap or deadline: {0}")]
    Trap(String),
    #[error("bad memory access by the plugin's answer")]
    Bounds,
    #[error("bad answer: {0}")]
    Answer(#[from] abi::BadAnswer),
}

impl CallError {
    pub fn label(&self) -> &'static str {
        match self {
            CallError::Unknown(_) => "unknown",
            CallError::Disabled => "disabled",
            CallError::Instantiate(_) => "instantiate",
            CallError::Trap(m) if m.contains("interrupt") => "timeout",
            CallError::Trap(_) => "trap",
            CallError::Bounds => "bounds",
            CallError::Answer(_) => "bad_answer",
        }
    }
}

struct Plugin {
    module: Module,
    modified: Option<SystemTime>,
    failures: AtomicU32,
    disabled: AtomicBool,
}

/// A module that was refused at load, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rejected {
    pub file: String,
    pub reason: String,
}

struct StoreData {
    limits: StoreLimits,
}

/// The epoch ticker's side of the calls: it advances the engine's epoch every `TICK` while a
/// call is in flight (and `LINGER_TICKS` after), and is parked otherwise, so an authgate whose
/// requests use no plugin takes no thousand wake-ups a second for it.
struct Ticker {
    in_flight: AtomicUsize,
    parked: AtomicBool,
}

/// A call in flight; the ticker may park once none is.
struct Busy<'a>(&'a Ticker);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Ticker {
    /// The ticker's loop: runs until the engine is dropped.
    fn run(&self, engine: wasmtime::EngineWeak) {
        let mut idle = 0u32;
        loop {
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                idle = 0;
            } else {
                idle = idle.saturating_add(1);
            }
            if idle > LINGER_TICKS {
                // `parked` before the re-check, `in_flight` before the check in `enter`
                // (both SeqCst): a call either sees `parked` and unparks, or is seen here.
                self.parked.store(true, Ordering::SeqCst);
                if self.in_flight.load(Ordering::SeqCst) == 0 {
                    std::thread::park_timeout(Duration::from_secs(1));
                }
                self.parked.store(false, Ordering::SeqCst);
                if engine.upgrade().is_none() {
                    return;
                }
                continue;
            }
            std::thread::sleep(TICK);
            match engine.upgrade() {
                Some(e) => e.increment_epoch(),
                None => return,
            }
        }
    }

    fn enter<'a>(&'a self, thread: &std::thread::Thread) -> Busy<'a> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) {
            thread.unpark();
        }
        Busy(self)
    }
}

/// Loaded plugins plus the engine that runs them.
pub struct Host {
    ticker: Arc<Ticker>,
    ticker_thread: std::thread::Thread,
    engine: Engine,
    linker: Linker<StoreData>,
    dir: Option<PathBuf>,
    limits: Limits,
    plugins: RwLock<HashMap<String, Arc<Plugin>>>,
    rejected: RwLock<Vec<Rejected>>,
}

fn engine() -> anyhow::Result<Engine> {
    let mut c = Config::new();
    c.epoch_interruption(true);
    c.max_wasm_stack(256 * 1024);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_core_instances(64)
        .total_memories(64)
        .total_tables(64)
        .max_memory_size(64 << 20)
        .table_elements(100_000);
    c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // Small reservations keep 64 pooled slots cheap in address space.
    c.memory_reservation(64 << 20);
    c.memory_guard_size(64 << 10);
    Engine::new(&c).map_err(|e| anyhow::anyhow!("wasmtime engine: {e}"))
}

/// Validate and compile one module's bytes (pure besides compiling).
fn compile(engine: &Engine, name: &str, bytes: &[u8]) -> Result<Module, String> {
    if bytes.len() > MAX_MODULE_BYTES {
        return Err(format!("larger than {MAX_MODULE_BYTES} bytes"));
    }
    if bytes.starts_with(b"\x7fELF") {
        return Err("precompiled artefacts are never loaded; give a .wasm or .wat".into());
    }
    let is_text = name.ends_with(".wat");
    if !is_text && !bytes.starts_with(b"\0asm") {
        return Err("not a WebAssembly binary (\\0asm)".into());
    }
    let module = Module::new(engine, bytes).map_err(|e| format!("does not compile: {e:#}"))?;
    if let Some(i) = module.imports().next() {
        return Err(format!(
            "imports {}::{} (ABI v1 plugins import nothing: no WASI, no host calls)",
            i.module(),
            i.name()
        ));
    }
    for (export, what) in [
        ("memory", "a memory"),
        ("ap_alloc", "ap_alloc(i32)->i32"),
        ("ap_decide", "ap_decide(i32,i32)->i64"),
    ] {
        if module.get_export(export).is_none() {
            return Err(format!("does not export {what}"));
        }
    }
    Ok(module)
}

impl Host {
    /// A host for the modules in `dir` (none when `None`). Starts the epoch ticker.
    pub fn new(dir: Option<PathBuf>, limits: Limits) -> anyhow::Result<Arc<Host>> {
        let engine = engine()?;
        let weak = engine.weak();
        let ticker = Arc::new(Ticker {
            in_flight: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
        });
        let runs = ticker.clone();
        let ticker_thread = std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || runs.run(weak))?
            .thread()
            .clone();
        let host = Arc::new(Host {
            ticker,
            ticker_thread,
            linker: Linker::new(&engine),
            engine,
            dir,
            limits,
            plugins: RwLock::default(),
            rejected: RwLock::default(),
        });
        host.reload();
        Ok(host)
    }

    /// (Re)load every changed `*.wasm` / `*.wat` of the directory; drop removed ones.
    /// Returns whether anything changed.
    pub fn reload(&self) -> bool {
        let Some(dir) = &self.dir else { return false };
        let mut found: HashMap<String, (PathBuf, Option<SystemTime>)> = HashMap::new();
        let mut rejected = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let file = path
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or("")
                .to_string();
            let Some((stem, ext)) = file.rsplit_once('.') else {
                continue;
            };
            if !matches!(ext, "wasm" | "wat" | "cwasm") {
                continue;
            }
            if ext == "cwasm" || !abi::valid_name(stem) {
                rejected.push(Rejected {
                    file,
                    reason:
                        "name must be [a-z0-9_-]{1,64}.wasm|.wat (precompiled .cwasm never loads)"
                            .into(),
                });
                continue;
            }
            let modified = entry.metadata().ok().and_then(|m| m.modified().ok());
            found.insert(stem.to_string(), (path, modified));
        }
        let mut changed = false;
        let current = self.plugins.read().expect("plugins lock").clone();
        let mut next = HashMap::new();
        for (name, (path, modified)) in found {
            if let Some(p) = current.get(&name)
                && p.modified == modified
            {
                next.insert(name, p.clone());
                continue;
            }
            changed = true;
            let file = path.display().to_string();
            match self.load_file(&path) {
                Ok(module) => {
                    tracing::info!(plugin = %name, file, "Plugin loaded");
                    next.insert(
                        name,
                        Arc::new(Plugin {
                            module,
                            modified,
                            failures: AtomicU32::new(0),
                            disabled: AtomicBool::new(false),
                        }),
                    );
                }
                Err(reason) => {
                    tracing::error!(plugin = %name, file, reason, "Plugin refused");
                    rejected.push(Rejected { file, reason });
                }
            }
        }
        changed |= next.len() != current.len();
        *self.plugins.write().expect("plugins lock") = next;
        *self.rejected.write().expect("plugins lock") = rejected;
        changed
    }

    fn load_file(&self, path: &Path) -> Result<Module, String> {
        let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
        if meta.len() as usize > MAX_MODULE_BYTES {
            return Err(format!("larger than {MAX_MODULE_BYTES} bytes"));
        }
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        let name = path.display().to_string();
        // Compile on a helper thread so a compile bomb cannot hold the loader forever.
        let (tx, rx) = std::sync::mpsc::channel();
        let engine = self.engine.clone();
        std::thread::spawn(move || {
            let _ = tx.send(compile(&engine, &name, &bytes));
        });
        rx.recv_timeout(self.limits.compile_timeout)
            .map_err(|_| format!("compile took longer than {:?}", self.limits.compile_timeout))?
    }

    /// Names of loaded plugins (and whether each is disabled), and refused files.
    pub fn status(&self) -> (Vec<(String, bool)>, Vec<Rejected>) {
        let mut loaded: Vec<(String, bool)> = self
            .plugins
            .read()
            .expect("plugins lock")
            .iter()
            .map(|(n, p)| (n.clone(), p.disabled.load(Ordering::Acquire)))
            .collect();
        loaded.sort();
        (loaded, self.rejected.read().expect("plugins lock").clone())
    }

    /// The limits every call runs under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether the epoch ticker is parked (no call in flight for a while).
    #[cfg(test)]
    pub fn ticker_parked(&self) -> bool {
        self.ticker.parked.load(Ordering::SeqCst)
    }

    /// Run `plugin` on `input` (the request JSON). Blocks the calling thread for at most the
    /// deadline (see `Runner::run` for where that thread is).
    pub fn call(&self, plugin: &str, input: &[u8]) -> Result<Verdict, CallError> {
        let p = self
            .plugins
            .read()
            .expect("plugins lock")
            .get(plugin)
            .cloned()
            .ok_or_else(|| CallError::Unknown(plugin.into()))?;
        if p.disabled.load(Ordering::Acquire) {
            return Err(CallError::Disabled);
        }
        let busy = self.ticker.enter(&self.ticker_thread);
        let result = self.run(&p.module, input);
        drop(busy);
        match &result {
            Ok(_) => p.failures.store(0, Ordering::Release),
            Err(e) => {
                let n = p.failures.fetch_add(1, Ordering::AcqRel) + 1;
                if n >= self.limits.max_failures && !p.disabled.swap(true, Ordering::AcqRel) {
                    tracing::error!(plugin, failures = n, error = %e,
                        "Plugin disabled after repeated failures; every request using it is denied until it is reloaded");
                }
            }
        }
        result
    }

    fn run(&self, module: &Module, input: &[u8]) -> Result<Verdict, CallError> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .table_elements(10_000)
            .instances(1)
            .memories(1)
            .tables(1)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(&self.engine, StoreData { limits });
        store.limiter(|d| &mut d.limits);
        let ticks = (self.limits.timeout.as_micros() / TICK.as_micros()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        let trap = |e: wasmtime::Error| CallError::Trap(format!("{e:#}"));
        let instance = self
            .linker
            .instantiate(&mut store, module)
            .map_err(|e| CallError::Instantiate(format!("{e:#}")))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| CallError::Instantiate("no memory".into()))?;
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "ap_alloc")
            .map_err(|e| CallError::Instantiate(format!("{e:#}")))?;
        let decide = instance
            .get_typed_func::<(i32, i32), i64>(&mut store, "ap_decide")
            .map_err(|e| CallError::Instantiate(format!("{e:#}")))?;
        let len = i32::try_from(input.len()).map_err(|_| CallError::Bounds)?;
        let ptr = alloc.call(&mut store, len).map_err(trap)?;
        memory
            .write(&mut store, ptr as u32 as usize, input)
            .map_err(|_| CallError::Bounds)?;
        let packed = decide.call(&mut store, (ptr, len)).map_err(trap)? as u64;
        let (out_ptr, out_len) = ((packed >> 32) as usize, (packed & 0xffff_ffff) as usize);
        if out_len > MAX_OUTPUT {
            return Err(CallError::Bounds);
        }
        let data = memory.data(&store);
        let out = data
            .get(out_ptr..out_ptr.checked_add(out_len).ok_or(CallError::Bounds)?)
            .ok_or(CallError::Bounds)?;
        Ok(abi::verdict(out)?)
    }
}
