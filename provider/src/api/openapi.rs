//! The OpenAPI 3.1 document of the provider's API, served at `GET /openapi.json`. It is made
//! from the same list that builds the router (`super::routes`: each handler's
//! `#[utoipa::path]` and the types it takes and answers), so a route cannot be served without
//! being described. Errors are Backend.AI's body (`ErrorBody`), the `default` answer of every
//! operation. No browser UI: the document is for tools (and for people through them).

use std::sync::LazyLock;

use axum::{http::header, response::IntoResponse};
use serde_json::Value;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "appproxy provider",
        description = "Backend.AI's AppProxy coordinator API (`/api/*`, `/v2/*`, `/health/*`) \
            and appproxy's extensions. Every error answers with Backend.AI's body \
            (`application/problem+json`). A token goes in `X-BackendAI-Token` (bare, or \
            `Bearer `/`BackendAI ` and the token), or in `Authorization: Bearer …`.",
    ),
    modifiers(&Security),
    components(schemas(crate::error::ErrorBody)),
    tags(
        (name = "probes", description = "Liveness, readiness, metrics; no token"),
        (name = "health", description = "The Manager's view of workers and replica health"),
        (name = "circuits", description = "Circuits, setup links, revocations (the Manager)"),
        (name = "endpoints", description = "Inference endpoints and their replicas (the Manager)"),
        (name = "workers", description = "Worker credentials and draining (the Manager)"),
        (name = "worker API", description = "What workers (authgate) call"),
        (name = "launch", description = "Backend.AI's launch flow (WebUI and Manager)"),
    )
)]
pub(super) struct Doc;

/// The security schemes the operations name.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let header = |description: &str| {
            let mut key = ApiKeyValue::new("X-BackendAI-Token");
            key.description = Some(description.to_string());
            SecurityScheme::ApiKey(ApiKey::Header(key))
        };
        components.add_security_scheme(
            "manager_token",
            header("The manager's shared secret (`[secrets] manager_token`)"),
        );
        components.add_security_scheme(
            "worker_token",
            header(
                "A worker's own credential (`<id>.<secret>`, `POST /v2/workers/credentials`), \
                 the legacy shared worker token, or the manager's token",
            ),
        );
        components.add_security_scheme(
            "metrics_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`[metrics] token`; without it only `[metrics] allowed_networks` may read",
                    ))
                    .build(),
            ),
        );
    }
}

/// Two corrections of the schemas to serde's behaviour, everywhere in the document:
/// - `allOf` members do not close the object: an answer that flattens a request type (which
///   refuses unknown fields, so its schema says `additionalProperties: false`) carries its
///   siblings' fields too, and a closed member would refuse them;
/// - alternatives are `anyOf`, not `oneOf`: serde takes the first that fits (an untagged
///   enum, an `Option`), and an empty list fits both forms of the worker's circuits.
pub(super) fn serde_semantics(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(parts)) = m.get_mut("allOf") {
                for p in parts.iter_mut().filter_map(Value::as_object_mut) {
                    p.remove("additionalProperties");
                }
            }
            if let Some(alternatives) = m.remove("oneOf") {
                m.insert("anyOf".into(), alternatives);
            }
            m.values_mut().for_each(serde_semantics);
        }
        Value::Array(a) => a.iter_mut().for_each(serde_semantics),
        _ => {}
    }
}

/// OpenAPI requires a description on every answer: an answer the handler's annotation does
/// not describe gets its status's name.
pub(super) fn describe_answers(doc: &mut Value) {
    let items = doc["paths"].as_object_mut().into_iter().flatten();
    let ops = items.flat_map(|(_, item)| item.as_object_mut().into_iter().flatten());
    for (_, op) in ops {
        let answers = op["responses"].as_object_mut().into_iter().flatten();
        for (status, answer) in answers {
            if answer.get("description").is_none() {
                let name = status.parse::<u16>().ok();
                let name = name.and_then(|s| axum::http::StatusCode::from_u16(s).ok());
                let name = name.and_then(|s| s.canonical_reason()).unwrap_or("Answer");
                answer["description"] = name.into();
            }
        }
    }
}

/// The document as served (made once).
static DOCUMENT: LazyLock<String> = LazyLock::new(|| super::document().to_string());

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "probes",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API",
        content_type = "application/json", body = Object),
        crate::error::ErrorResponses))]
pub(super) async fn document() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}
