//! `/_appproxy/closed`: where Traefik sends what no circuit serves (its lowest-priority
//! router, path replaced): a page saying the app was closed — 410, never cached, no
//! `Retry-After` (an open tab must stop polling, not retry), a link to the platform's login page
//! when configured; JSON for API clients.

use std::sync::Arc;

use axum::{
    extract::State,
    http::HeaderMap,
    response::{IntoResponse, Response},
};

use super::Gate;
use crate::error::GateError;

pub(super) async fn closed(State(g): State<Arc<Gate>>, headers: HeaderMap) -> Response {
    g.metrics.closed_pages.inc();
    GateError::new(
        410,
        "E20013",
        "This app was closed: nothing is running at this address any more.",
    )
    .with_link(g.cfg.session.login_url.as_deref())
    .for_client(&headers)
    .into_response()
}
