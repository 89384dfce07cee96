//! Fuzz entry point for the provider's request bodies (`fuzz/`, `cargo fuzz` on nightly) and
//! the corpus replay test on stable: arbitrary bytes through every JSON body type and the
//! validation behind it. Must never panic.

use serde::de::DeserializeOwned;

use super::credentials;
use crate::models::{self, endpoint, launch};

fn body<T: DeserializeOwned>(data: &[u8]) -> Option<T> {
    serde_json::from_slice(data).ok()
}

/// The first byte picks nothing: every body type sees the whole input, so one corpus entry
/// exercises all of them.
pub fn json_bodies(data: &[u8]) {
    if let Some(r) = body::<models::CreateCircuitRequest>(data) {
        let _ = models::validate_create(&r, 256);
    }
    if let Some(r) = body::<models::WorkerSpec>(data) {
        let _ = r.validate();
    }
    if let Some(r) = body::<endpoint::EndpointItem>(data) {
        let _ = r.validate();
    }
    let _ = body::<endpoint::BulkCreate>(data);
    let _ = body::<endpoint::BulkDelete>(data);
    let _ = body::<endpoint::BulkRoutes>(data);
    let _ = body::<endpoint::HealthCheckUpdate>(data);
    let _ = body::<endpoint::TokenRequest>(data);
    let _ = body::<models::BulkDeleteRequest>(data);
    let _ = body::<models::SetupLinkRequest>(data);
    let _ = body::<models::RevocationRequest>(data);
    let _ = body::<launch::ConfRequest>(data);
    let _ = body::<appproxy_common::wire::RouteHealthReport>(data);
    if let Some(r) = body::<credentials::EnrolRequest>(data) {
        let _ = crate::domain::validate_authority(&r.authority);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::domain::validate_host(s);
        let _ = crate::domain::validate_authority(s);
    }
}
