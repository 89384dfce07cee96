//! Child processes owned by a test, temporary directories and free ports.

use std::{
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A temporary directory, removed on drop unless the test is panicking (logs stay for
/// debugging; the path is printed).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "appproxy-e2e-{tag}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed; logs kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A process this test started. Dropping it kills exactly that PID and reaps it.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Spawn `cmd` with stdout and stderr appended to `<dir>/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc {
            name: name.into(),
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(_)) = c.try_wait() {
                self.child = None;
                return;
            }
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .stderr(std::process::Stdio::null())
                .status();
            let start = Instant::now();
            while start.elapsed() < grace {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill();
    }

    /// The last `n` bytes of the log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut start = text.len().saturating_sub(n);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].to_string()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// Test ports come from below the kernel's ephemeral range (32768+ by default), handed out by
/// a process-wide counter: a port freed by one test cannot be taken meanwhile by an outgoing
/// connection or by a parallel test, as ports from `bind(0)` could.
const PORT_LO: u32 = 20_000;
const PORT_HI: u32 = 32_000;

static NEXT_PORT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Reserve `n` consecutive candidate ports; the first one. A reservation never straddles
/// the end of the range: it starts over at the bottom, and the counter moves past it (a
/// reservation is only bound later, when its Traefik starts, so `bindable` cannot tell two
/// overlapping reservations apart — the cause of rare "address already in use").
fn take_ports(n: u32) -> u16 {
    use std::sync::atomic::Ordering;
    let span = PORT_HI - PORT_LO;
    let _ = NEXT_PORT.compare_exchange(
        0,
        (std::process::id() * 7919) % span + 1,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let cur = NEXT_PORT.load(Ordering::SeqCst);
        let off = cur % span;
        let (start, next) = if off + n > span {
            (0, cur + (span - off) + n)
        } else {
            (off, cur + n)
        };
        if NEXT_PORT
            .compare_exchange(cur, next, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return (PORT_LO + start) as u16;
        }
    }
}

fn bindable(p: u16) -> bool {
    TcpListener::bind(("127.0.0.1", p)).is_ok()
}

/// A loopback port that is free now and handed to no one else by this process.
pub fn free_port() -> u16 {
    for _ in 0..2000 {
        let p = take_ports(1);
        if bindable(p) {
            return p;
        }
    }
    panic!("no free port found");
}

/// `n` consecutive free loopback ports (bounded search).
pub fn free_port_range(n: u16) -> (u16, u16) {
    for _ in 0..200 {
        let base = take_ports(u32::from(n));
        let hi = base + n - 1;
        if (base..=hi).all(bindable) {
            return (base, hi);
        }
    }
    panic!("no range of {n} free ports found");
}

/// Wait until something accepts TCP connections on `port`.
pub fn wait_listening(port: u16, limit: Duration, proc_: &mut Proc) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if !proc_.alive() {
            panic!("{} exited early:\n{}", proc_.name, proc_.log_tail(4000));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!(
        "{} did not listen on {port} within {limit:?}:\n{}",
        proc_.name,
        proc_.log_tail(4000)
    );
}
