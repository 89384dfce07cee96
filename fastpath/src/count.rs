//! Counting the requests the fast path lets through, so the circuit's router needs no
//! access-log record per request (the export costs Traefik more than the decision).
//!
//! Each plugin instance appends one byte per request to a file of its own in the counts
//! directory (mounted read-write; `<circuit>.<instance>`): authgate adds each file's growth to
//! the circuit's requests, with the file's modification time as the last access. A file is
//! opened once; once a second the instance checks that it is still there and opens a new one
//! if authgate took it away (authgate renames a file it believes idle before reading it a last
//! time and deleting it).

use std::{
    fs::{File, OpenOptions},
    hash::{BuildHasher, RandomState},
    io::Write,
    path::{Path, PathBuf},
};

use uuid::Uuid;

/// One instance's count file.
pub(crate) struct Counter {
    dir: PathBuf,
    circuit: Uuid,
    file: Option<(PathBuf, File)>,
    /// The second of the last check that the file is still there.
    checked_at: i64,
}

/// A random name for this instance (WASI's random source, through std's hasher keys).
fn instance_name() -> String {
    format!("{:016x}", RandomState::new().hash_one(0u8))
}

impl Counter {
    pub(crate) fn new(dir: &Path, circuit: Uuid) -> Counter {
        Counter {
            dir: dir.to_path_buf(),
            circuit,
            file: None,
            checked_at: i64::MIN,
        }
    }

    fn open(&self) -> Option<(PathBuf, File)> {
        let path = self.dir.join(format!(
            "{}.{}",
            self.circuit.as_hyphenated(),
            instance_name()
        ));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .ok()?;
        Some((path, file))
    }

    /// Count one request at `now` (epoch seconds). False when it could not be written (the
    /// caller refuses the request: an uncounted request would let its session be reclaimed).
    pub(crate) fn count(&mut self, now: i64) -> bool {
        if now != self.checked_at {
            self.checked_at = now;
            let gone = self.file.as_ref().is_none_or(|(p, _)| !p.exists());
            if gone {
                self.file = self.open();
            }
        }
        match &mut self.file {
            Some((_, f)) => f.write_all(b"\n").is_ok(),
            None => false,
        }
    }
}
