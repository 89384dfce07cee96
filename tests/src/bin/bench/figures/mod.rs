//! One module per figure; each `run` measures against its same-run baseline and stores its
//! typed result in `Bench::results`.

pub(crate) mod auth;
pub(crate) mod burst;
pub(crate) mod ha;
pub(crate) mod https;
pub(crate) mod ingest;
pub(crate) mod live;
pub(crate) mod memory;
pub(crate) mod pg;
