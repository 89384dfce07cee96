//! `POST /v1/logs`: Traefik's OTLP/HTTP access-log export, on the ingest listener only, with
//! the secret header the rendered static config sends.

use axum::{
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use std::sync::Arc;

use appproxy_common::auth::same_secret;

use super::Gate;

/// Traefik's OTLP/HTTP access-log export: apply every record, count every one.
pub(super) async fn ingest_logs(
    State(g): State<Arc<Gate>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let m = &g.metrics;
    let presented = headers
        .get(crate::config::INGEST_SECRET_HEADER)
        .map(HeaderValue::as_bytes);
    let expected = g.cfg.ingest.secret.as_deref().map(str::as_bytes);
    if !matches!((presented, expected), (Some(p), Some(e)) if same_secret(p, e)) {
        m.ingest_exports.with_label_values(&["unauthorized"]).inc();
        return (StatusCode::UNAUTHORIZED, "missing or wrong ingest secret").into_response();
    }
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let records = match crate::ingest::decode_body(&body, encoding) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(bytes = body.len(), error = %e, "OTLP logs export refused");
            m.ingest_exports.with_label_values(&["undecodable"]).inc();
            return (StatusCode::BAD_REQUEST, "not an OTLP logs export").into_response();
        }
    };
    m.ingest_exports.with_label_values(&["ok"]).inc();
    let now = crate::activity::now_ms();
    for r in &records {
        tracing::trace!(attributes = ?r.attributes, "Access-log record");
        let c = crate::ingest::classify(r, now);
        if let Some((circuit, key)) = &c.websocket_ended {
            g.activity.websocket_ended(*circuit, key);
        }
        match c.event {
            Ok(e) => {
                g.activity.apply(&e);
                m.ingest_lag.observe((now - e.at_ms).max(0) as f64 / 1000.0);
                m.ingest_records.with_label_values(&["applied", ""]).inc();
            }
            Err(reason) => {
                m.ingest_records
                    .with_label_values(&["rejected", reason.as_str()])
                    .inc();
            }
        }
    }
    // An empty ExportLogsServiceResponse.
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        Vec::<u8>::new(),
    )
        .into_response()
}
