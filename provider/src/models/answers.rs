//! The small answers of the API (probes, health views, acknowledgements, credentials,
//! endpoint syncs, the launch flow) as types: the handlers build them and the OpenAPI document
//! describes them from the same definitions.

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{CircuitList, CircuitResponse, SlotResponse, WorkerResponse};
use crate::domain::{AppMode, WorkerStatus};
use appproxy_common::wire::WorkerMap;

/// `{"success": true}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Success {
    pub success: bool,
}

impl Success {
    pub const YES: Success = Success { success: true };
}

/// `GET /status`: this replica and the leader election.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusAnswer {
    pub api_version: &'static str,
    pub advertise_address: String,
    pub node_id: String,
    pub leader: bool,
    pub leader_id: Option<String>,
}

/// `GET /health`: always `200`; `status` is `ok` or `degraded`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthAnswer {
    pub status: &'static str,
    pub version: &'static str,
    pub component: &'static str,
    pub connectivity: Connectivity,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Connectivity {
    pub database: bool,
    pub etcd: bool,
}

/// `GET /health/livez`.
#[derive(Debug, Serialize, ToSchema)]
pub struct LiveAnswer {
    pub status: &'static str,
}

/// `GET /health/readyz`: `200` with `ok` when the database answers, else `503`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyAnswer {
    pub status: &'static str,
    pub database: bool,
    pub etcd: bool,
}

/// `GET /health/status`: Backend.AI's worker overview.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkersHealth {
    pub coordinator_version: &'static str,
    pub appproxy_api_version: &'static str,
    pub workers: Vec<WorkerHealth>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerHealth {
    pub authority: String,
    pub status: WorkerStatus,
    pub available_slots: i64,
    pub occupied_slots: i64,
    pub ha_setup: bool,
}

/// A route of a circuit with its health as the worker's Traefik reported it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RouteHealthView {
    pub route_id: Option<Uuid>,
    pub session_id: Uuid,
    pub kernel_host: String,
    pub kernel_port: u16,
    pub traffic_ratio: f64,
    /// `healthy`, `unhealthy` or `unknown`.
    pub health_status: &'static str,
}

/// `GET /health/endpoints`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointsHealth {
    pub endpoints: Vec<EndpointHealth>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointHealth {
    pub endpoint_id: Uuid,
    pub health_check_enabled: bool,
    pub circuit_id: Option<Uuid>,
    pub worker: Option<String>,
    /// Why the endpoint cannot be served now (its worker is gone, lost, …).
    pub problem: Option<String>,
    pub routes: Vec<RouteHealthView>,
}

/// `GET /health/circuits/{circuit_id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CircuitHealth {
    pub circuit_id: Uuid,
    pub endpoint_id: Option<Uuid>,
    pub app_mode: AppMode,
    pub worker: Option<String>,
    pub worker_status: Option<WorkerStatus>,
    pub problem: Option<String>,
    pub routes: Vec<RouteHealthView>,
}

/// `GET /health/summary`: routes of every endpoint by health.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthSummary {
    pub total_routes: u64,
    pub healthy: u64,
    pub unhealthy: u64,
    pub unknown: u64,
}

/// `GET /api/worker`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerList {
    pub workers: Vec<WorkerResponse>,
}

/// `GET /api/worker/{worker_id}/circuits`: the circuits, or with `view=map` the slim map
/// authgate polls.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum WorkerCircuits {
    Full(CircuitList<CircuitResponse>),
    Map(WorkerMap),
}

/// `GET /api/slots`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SlotList {
    pub slots: Vec<SlotResponse>,
}

/// `GET /api/circuit/{circuit_id}/statistics`: the circuit, its request count, its last access
/// (epoch ms) and the seconds until the idle reaper may take it (`null` for inference).
#[derive(Debug, Serialize, ToSchema)]
pub struct CircuitStatistics {
    #[serde(flatten)]
    pub circuit: CircuitResponse,
    pub requests: i64,
    pub last_access: Option<i64>,
    pub ttl: Option<i64>,
}

/// `DELETE /v2/sessions/{session_id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionEnded {
    pub success: bool,
    pub deleted_circuit_ids: Vec<Uuid>,
}

/// `POST /v2/revocations`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Revoked {
    pub success: bool,
    /// Epoch seconds: credentials issued at or before it are refused.
    pub revoked_at: i64,
}

/// A worker credential (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialView {
    pub id: String,
    pub authority: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// `POST /v2/workers/credentials`: the credential, with its secret this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct Enrolled {
    #[serde(flatten)]
    pub view: CredentialView,
    /// `<id>.<secret>`: the worker presents it as its token.
    pub credential: String,
}

/// `GET /v2/workers/credentials`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialList {
    pub credentials: Vec<CredentialView>,
}

/// `POST /v2/endpoints/{endpoint_id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointSynced {
    pub success: bool,
    /// The endpoint's URL.
    pub endpoint: String,
    pub health_check_enabled: bool,
}

/// `POST /v2/endpoints/bulk`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointsSynced {
    pub endpoints: Vec<EndpointUrl>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointUrl {
    pub deployment_id: Uuid,
    pub url: String,
    pub health_check_enabled: bool,
}

/// `DELETE /v2/endpoints/bulk`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointsDeleted {
    pub endpoints: Vec<EndpointDeleted>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointDeleted {
    pub deployment_id: Uuid,
    pub success: bool,
}

/// `POST /v2/endpoints/bulk/routes[/register|/unregister]`: one entry per endpoint; a failed
/// entry says why and changes nothing of that endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoutesSynced {
    pub endpoints: Vec<RoutesOfEndpoint>,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct RoutesOfEndpoint {
    pub deployment_id: Uuid,
    pub success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Register: the routes added, and those already there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registered_route_ids: Option<Vec<Uuid>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub already_registered_route_ids: Option<Vec<Uuid>>,
    /// Unregister: the routes removed, and those already absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unregistered_route_ids: Option<Vec<Uuid>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub already_absent_route_ids: Option<Vec<Uuid>>,
}

/// `PUT /v2/endpoints/{endpoint_id}/health-check`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthCheckSet {
    pub success: bool,
    pub health_check_enabled: bool,
}

/// `POST /v2/endpoints/{endpoint_id}/token` and `POST /v2/conf`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenAnswer {
    pub token: String,
}

/// `GET /v2/proxy/{token}/{session_id}/add`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProxyAdded {
    pub code: u16,
    /// Where the WebUI sends the browser next (`/v2/proxy/auth?…`).
    pub url: String,
}

/// `GET /v2/proxy/auth` asked for JSON (`Accept: application/json`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProxyAuthorized {
    pub redirect_url: String,
    /// Whether an existing circuit was reused.
    pub reuse: bool,
}
