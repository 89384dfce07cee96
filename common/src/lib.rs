//! The contract that `appproxy-provider` and `appproxy-authgate` must agree on.
//!
//! - `names`: the etcd layout Traefik reads (worker root key, object names from circuit ids);
//! - `auth`: token claims, cookie names and the Redis keys of revocations and setup-token uses;
//! - `config`: how both binaries read TOML plus environment overrides;
//! - `alloc`: the allocator settings both binaries start with;
//! - `shutdown`: the signal-driven shutdown channel and periodic work both binaries run;
//! - `startup`: the start-up path both mains share; `metrics`: registry and exposition;
//! - `ratelimit`: fixed-window limits counted in Redis, shared by every replica;
//! - `redis_conn`: Redis connections with the caller's own response deadline;
//! - `requests`: the request id and the one log line per request;
//! - `tls`: TLS files, the HTTPS listener and the Redis client for the internal links;
//! - `wire`: the typed worker API.
//!
//! Both sides use these functions, so a change here changes both at once.

pub mod alloc;
pub mod auth;
pub mod config;
pub mod metrics;
pub mod names;
pub mod ratelimit;
pub mod redis_conn;
pub mod requests;
pub mod shutdown;
pub mod startup;
pub mod tls;
pub mod wire;
