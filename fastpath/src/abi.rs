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

/// Read a host value that `f` writes into a buffer of a given limit, returning its length
/// (retried once with the exact size when the first buffer was too small).
fn read_with(f: impl Fn(*mut u8, u32) -> u32) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let n = f(buf.as_mut_ptr(), buf.len() as u32) as usize;
    if n > buf.len() {
        buf = vec![0u8; n];
        f(buf.as_mut_ptr(), n as u32);
    }
    buf.truncate(n);
    buf
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

/// The request as Traefik's host shows it.
struct Host;

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
        let (p, n) = (name.as_ptr(), name.len() as u32);
        let mut buf = vec![0u8; 1024];
        // SAFETY: `name` and `buf` are live for the call; the host writes at most the limit.
        let mut cl = unsafe { get_header_values(REQUEST, p, n, buf.as_mut_ptr(), 1024) };
        let len = (cl & 0xffff_ffff) as usize;
        if cl >> 32 == 0 {
            return Vec::new();
        }
        if len > buf.len() {
            buf = vec![0u8; len];
            // SAFETY: as above, with a buffer of the size the host asked for.
            cl = unsafe { get_header_values(REQUEST, p, n, buf.as_mut_ptr(), len as u32) };
        }
        let len = ((cl & 0xffff_ffff) as usize).min(buf.len());
        buf[..len]
            .split(|b| *b == 0)
            .take((cl >> 32) as usize)
            .map(|v| text(v.to_vec()))
            .collect()
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
    let outcome = match slot.as_mut() {
        Ok(gate) => gate.handle(&Host, now()),
        _ => Outcome::Refuse {
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
    // SAFETY: the caller's contract: both ranges are valid for `n` bytes.
    unsafe {
        if (dest as usize) <= (src as usize) {
            for i in 0..n {
                dest.add(i).write_volatile(src.add(i).read_volatile());
            }
        } else {
            for i in (0..n).rev() {
                dest.add(i).write_volatile(src.add(i).read_volatile());
            }
        }
    }
    dest
}

/// # Safety
/// As C's `memset`.
#[unsafe(no_mangle)]
pub(crate) unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract: the range is valid for `n` bytes.
    unsafe {
        for i in 0..n {
            dest.add(i).write_volatile(c as u8);
        }
    }
    dest
}

/// Called after the next handler when `handle_request` asked for it; this plugin never does.
#[unsafe(no_mangle)]
pub(crate) extern "C" fn handle_response(_req_ctx: i32, _is_error: i32) {}
