//! Services: what a handler calls between parsing a request and answering it.
//!
//! Each service borrows exactly the handles it needs (the store, the reconciler, metrics, the
//! signer, a config section) and never the router's `AppState`, so it can be driven without
//! HTTP and read without the router. Failures are `ApiError`s: the API's one error enum,
//! mapped to statuses once, at the edge (`error.rs`).
//!
//! - [`circuits`]: placement, creation (slot allocation), ownership, removal, sessions.
//! - [`launch`]: Backend.AI's launch flow (`/v2/conf` grants, reuse or create, setup links).
//! - [`endpoints`]: inference endpoints (sync, routes, health checks, tokens).
//! - [`links`]: setup links for a circuit.
//! - [`liveness`]: workers that stopped heartbeating become `LOST`; their endpoints move.
//! - [`workers`]: registration, heartbeats, descriptions and slots.

pub mod circuits;
pub mod endpoints;
pub mod launch;
pub mod links;
pub mod liveness;
pub mod workers;

pub use circuits::{Circuits, NewInteractive};
pub use endpoints::Endpoints;
pub use launch::Launch;
pub use workers::Workers;
