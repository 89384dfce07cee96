//! The http-wasm guest ABI (module `http_handler`, as Traefik's host implements it): the
//! imports this plugin uses, the two exports Traefik calls, and the instance's one [`Gate`].
//! The only `unsafe` of the workspace: calls across the Wasm boundary, each with a buffer this
//! module owns for the duration of the call.
#![allow(unsafe_code)]

use std::cell::Cell;

use crate::{Config, Gate, Outcome, Request};

#[link(wasm_import_module = "http_handler")]
unsafe extern "C" {
    fn get_config(buf: *mut u8, limit: u32) -> u32;
    fn get_method(buf: *mut u8, limit: u32) -> u32;
    fn get_uri(buf: *mut u8, limit: u32) -> u32;
    fn get_header_names(kind: u32, buf: *mut u8, limit: u32) -> u64;
    fn get_header_values(kind: u32, name: *const u8, len: u32, buf: *mut u8, limit: u32) -> u64;
    fn set_header_value(kind: u32, name: *const u8, len: u32, value: *const u8, vlen: u32);
    fn remove_header(kind: u32, name: *const u8, len: u32);
    fn set_status_code(code: u32);
    fn write_body(kind: u32, body: *const u8, len: u32);
    fn log(level: i32, msg: *const u8, len: u32);
}

const REQUEST: u32 = 0;
const RESPONSE: u32 = 1;
const LOG_ERROR: i32 = 2;

thread_local! {
    /// This instance's gate (made at its first request), or why its config was refused (then
    /// every request is refused). Taken out for a request and put back after it: an instance
    /// that trapped mid-request starts over with a fresh one rather than a half-changed one.
    static GATE: Cell<Option<Result<Gate, String>>> = const { Cell::new(None) };
}

thread_local! {
    /// The buffer the host writes request values into, kept for the instance's life: a fresh
    /// zeroed buffer per value cost more than the whole decision. Taken out for a call and put
    /// back after it (a trap in between leaves an empty one, grown again on the next call).
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Scratch size; a longer value grows it once.
const SCRATCH_BYTES: usize = 16 * 1024;

/// Let the host write into the scratch buffer (`f(buf, limit)` answers the byte count it
/// needs, in the low 32 bits; `0` in the high 32 bits means none), again once with room
/// enough when it did not fit, and hand what it wrote to `g`.
fn from_host<T>(f: impl Fn(*mut u8, u32) -> u64, g: impl FnOnce(&[u8], u64) -> T) -> T {
    let mut buf = SCRATCH.take();
    if buf.len() < SCRATCH_BYTES {
        buf = vec![0u8; SCRATCH_BYTES];
    }
    let mut cl = f(buf.as_mut_ptr(), buf.len() as u32);
    let need = (cl & 0xffff_ffff) as usize;
    if need > buf.len() {
        buf = vec![0u8; need];
        cl = f(buf.as_mut_ptr(), buf.len() as u32);
    }
    let len = ((cl & 0xffff_ffff) as usize).min(buf.len());
    let out = g(&buf[..len], cl >> 32);
    SCRATCH.set(buf);
    out
}

/// A single value (config, method, URI): the count is one.
fn read_with(f: impl Fn(*mut u8, u32) -> u32) -> Vec<u8> {
    from_host(
        |b, l| (1 << 32) | u64::from(f(b, l)),
        |bytes, _| bytes.to_vec(),
    )
}

fn text(v: Vec<u8>) -> Result<String, ()> {
    String::from_utf8(v).map_err(|_| ())
}

fn error(msg: &str) {
    // SAFETY: `msg` is a live buffer of `len` bytes.
    unsafe { log(LOG_ERROR, msg.as_ptr(), msg.len() as u32) }
}

fn init() -> Result<Gate, String> {
    // SAFETY: the host writes at most `limit` bytes into the buffer it is given.
    let raw = read_with(|b, l| unsafe { get_config(b, l) });
    let gate = Config::parse(&raw).map(Gate::new);
    if let Err(e) = &gate {
        error(e);
    }
    gate
}

/// The request as Traefik's host shows it: the names of its headers are read once (lowercase),
/// so a header it does not carry costs no call.
struct Host {
    names: Vec<String>,
}

impl Host {
    fn new() -> Host {
        // SAFETY: the buffer is live for the call; the host writes at most the limit.
        let read = |b, l| unsafe { get_header_names(REQUEST, b, l) };
        let names = from_host(read, |bytes, count| {
            (bytes.split(|b| *b == 0))
                .take(count as usize)
                .map(|n| String::from_utf8_lossy(n).to_ascii_lowercase())
                .collect()
        });
        Host { names }
    }
}

impl Request for Host {
    fn method(&self) -> String {
        // SAFETY: as in `init`.
        text(read_with(|b, l| unsafe { get_method(b, l) })).unwrap_or_default()
    }

    fn uri(&self) -> String {
        // SAFETY: as in `init`.
        text(read_with(|b, l| unsafe { get_uri(b, l) })).unwrap_or_default()
    }

    fn header(&self, name: &str) -> Vec<Result<String, ()>> {
        if !self.names.iter().any(|n| n == name) {
            return Vec::new();
        }
        let (p, n) = (name.as_ptr(), name.len() as u32);
        // SAFETY: `name` and the buffer are live for the call; the host writes at most the
        // limit.
        let read = |b, l| unsafe { get_header_values(REQUEST, p, n, b, l) };
        from_host(read, |bytes, count| {
            bytes
                .split(|b| *b == 0)
                .take(count as usize)
                .map(|v| text(v.to_vec()))
                .collect()
        })
    }
}

fn set_header(kind: u32, name: &str, value: &str) {
    // SAFETY: both buffers are live for the call.
    unsafe {
        set_header_value(
            kind,
            name.as_ptr(),
            name.len() as u32,
            value.as_ptr(),
            value.len() as u32,
        )
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Traefik calls this for every request: the low 32 bits say whether to go on to the next
/// handler (1) or to answer with what was written (0).
#[unsafe(no_mangle)]
pub(crate) extern "C" fn handle_request() -> i64 {
    let mut slot = GATE.take().unwrap_or_else(init);
    let host = Host::new();
    let outcome = match slot.as_mut() {
        Ok(gate) => gate.handle(&host, now()),
        Err(_) => Outcome::Refuse {
            status: 500,
            headers: vec![("Content-Type", "text/plain".into())],
            body: "The app proxy's fast path is misconfigured.\n".into(),
        },
    };
    GATE.set(Some(slot));
    match outcome {
        Outcome::Allow(headers) => {
            for (name, value) in headers {
                match value {
                    Some(v) => set_header(REQUEST, name, &v),
                    // Nothing to remove from a request that does not carry it.
                    None if !host.names.iter().any(|n| n.eq_ignore_ascii_case(name)) => {}
                    // SAFETY: `name` is live for the call.
                    None => unsafe { remove_header(REQUEST, name.as_ptr(), name.len() as u32) },
                }
            }
            1
        }
        Outcome::Refuse {
            status,
            headers,
            body,
        } => {
            // Headers first: without response buffering the host sends them with the status.
            for (name, value) in headers {
                set_header(RESPONSE, name, &value);
            }
            // SAFETY: a plain value.
            unsafe { set_status_code(u32::from(status)) };
            // SAFETY: `body` is live for the call.
            unsafe { write_body(RESPONSE, body.as_ptr(), body.len() as u32) };
            0
        }
    }
}

// wasi-libc's `memcpy`, `memmove` and `memset` use `memory.copy` / `memory.fill` above a
// size; Traefik 3.7's wazero (v1.8.0) faults on `memory.copy` of 2,048 bytes or more (seen
// here: a 2,047-byte copy passes, 2,048 traps "out of bounds memory access", whatever the
// addresses). These plain loops take their place (the linker takes ours before the archive's);
// volatile accesses keep the compiler from turning them back into those instructions.

/// # Safety
/// As C's `memcpy`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract: both ranges are valid and do not overlap.
    unsafe { memmove(dest, src, n) }
}

/// # Safety
/// As C's `memmove`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    const W: usize = size_of::<u64>();
    let words =
        ((dest as usize).is_multiple_of(W) && (src as usize).is_multiple_of(W)) as usize * (n / W);
    // SAFETY: the caller's contract: both ranges are valid for `n` bytes; words only when
    // both are aligned for them.
    unsafe {
        let (dw, sw) = (dest.cast::<u64>(), src.cast::<u64>());
        if (dest as usize) <= (src as usize) {
            for i in 0..words {
                dw.add(i).write_volatile(sw.add(i).read_volatile());
            }
            for i in words * W..n {
                dest.add(i).write_volatile(src.add(i).read_volatile());
            }
        } else {
            for i in (words * W..n).rev() {
                dest.add(i).write_volatile(src.add(i).read_volatile());
            }
            for i in (0..words).rev() {
                dw.add(i).write_volatile(sw.add(i).read_volatile());
            }
        }
    }
    dest
}

/// # Safety
/// As C's `memset`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    const W: usize = size_of::<u64>();
    let words = (dest as usize).is_multiple_of(W) as usize * (n / W);
    let word = u64::from_ne_bytes([c as u8; W]);
    // SAFETY: the caller's contract: the range is valid for `n` bytes; words only when aligned.
    unsafe {
        for i in 0..words {
            dest.cast::<u64>().add(i).write_volatile(word);
        }
        for i in words * W..n {
            dest.add(i).write_volatile(c as u8);
        }
    }
    dest
}

/// Called after the next handler when `handle_request` asked for it; this plugin never does.
#[unsafe(no_mangle)]
pub(crate) extern "C" fn handle_response(_req_ctx: i32, _is_error: i32) {}
