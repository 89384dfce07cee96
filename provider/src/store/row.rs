//! Column lists and row decoders: how a SQL row becomes a domain value (a row that does not
//! decode is `StoreError::Corrupt`, never a panic).

use std::str::FromStr;

use sqlx::{Row, any::AnyRow};
use uuid::Uuid;

use super::StoreError;
use crate::domain::{
    AppMode, Circuit, Endpoint, Frontend, Limit, LoadBalancing, Route, Worker, WorkerSpec,
    WorkerStatus,
};

pub(super) const WORKER_COLS: &str = "id, authority, frontend_mode, protocol, hostname, tls_listen, \
    tls_advertised, api_port, port_range_lo, port_range_hi, wildcard_domain, \
    wildcard_traffic_port, filtered_apps_only, traefik_last_used_marker_path, \
    accepted_traffics, app_filters, authgate_url, cert_resolver, cert_domains, path_keep_prefix_apps, \
    fast_path, fast_path_interactive, nodes, status, draining, \
    last_heartbeat, created_at, updated_at";

pub(super) const CIRCUIT_COLS: &str = "id, worker_id, app, protocol, app_mode, frontend_mode, port, \
    subdomain, envs, arguments, open_to_public, allowed_client_ips, user_id, endpoint_id, \
    runtime_variant, idle_timeout, generation, created_at, updated_at, auth_plugin, \
    auth_plugin_config, allowed_origins";

pub(super) const ROUTE_COLS: &str = "circuit_id, idx, route_id, session_id, session_name, kernel_host, \
    kernel_port, protocol, traffic_ratio";

pub(super) fn endpoint_from_row(row: &AnyRow) -> Result<Endpoint, StoreError> {
    let hc: Option<String> = get(row, "health_check_config")?;
    Ok(Endpoint {
        id: parse(row, "id")?,
        health_check: hc
            .map(|t| serde_json::from_str(&t).map_err(|e| corrupt("health_check_config", e)))
            .transpose()?,
        sticky: flag(row, "sticky")?,
        load_balancing: {
            let s: String = get(row, "load_balancing")?;
            LoadBalancing::parse(&s).ok_or_else(|| corrupt("load_balancing", s))?
        },
        rate_limit: {
            let requests: i64 = get(row, "rate_limit_requests")?;
            let window: i64 = get(row, "rate_limit_window_seconds")?;
            Some(Limit {
                requests: requests.max(0) as u64,
                window_seconds: window.max(1) as u64,
            })
            .filter(Limit::is_on)
        },
    })
}

pub(super) fn split_range(r: Option<(u16, u16)>) -> (Option<i64>, Option<i64>) {
    match r {
        Some((lo, hi)) => (Some(i64::from(lo)), Some(i64::from(hi))),
        None => (None, None),
    }
}

pub(super) fn join_modes(modes: &[AppMode]) -> String {
    modes
        .iter()
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

pub(super) fn get<'r, T>(row: &'r AnyRow, col: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get::<T, _>(col).map_err(|e| corrupt(col, e))
}

pub(super) fn flag(row: &AnyRow, col: &str) -> Result<bool, StoreError> {
    Ok(get::<i64>(row, col)? != 0)
}

pub(super) fn parse<T: FromStr>(row: &AnyRow, col: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    let s: String = get(row, col)?;
    s.parse::<T>().map_err(|e| corrupt(col, e))
}

pub(super) fn opt_uuid(row: &AnyRow, col: &str) -> Result<Option<Uuid>, StoreError> {
    let s: Option<String> = get(row, col)?;
    s.map(|s| Uuid::parse_str(&s).map_err(|e| corrupt(col, e)))
        .transpose()
}

pub(super) fn opt_u16(row: &AnyRow, col: &str) -> Result<Option<u16>, StoreError> {
    let v: Option<i64> = get(row, col)?;
    v.map(|v| u16::try_from(v).map_err(|e| corrupt(col, e)))
        .transpose()
}

/// A worker's app filters. Rows written before the typed contract may hold other shapes: they
/// match nothing (a `filtered_apps_only` worker then takes nothing: fails closed) and are
/// replaced at the worker's next registration.
fn app_filters(text: &str) -> Vec<crate::domain::AppFilter> {
    serde_json::from_str(text).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "Stored app filters do not decode; the worker matches none");
        Vec::new()
    })
}

/// A comma-separated column as its items.
fn list(text: &str) -> Vec<String> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

pub(super) fn worker_from_row(row: &AnyRow) -> Result<Worker, StoreError> {
    let lo = opt_u16(row, "port_range_lo")?;
    let hi = opt_u16(row, "port_range_hi")?;
    let traffics: String = get(row, "accepted_traffics")?;
    let filters: String = get(row, "app_filters")?;
    let spec = WorkerSpec {
        authority: get(row, "authority")?,
        frontend_mode: parse(row, "frontend_mode")?,
        protocol: parse(row, "protocol")?,
        hostname: get(row, "hostname")?,
        tls_listen: flag(row, "tls_listen")?,
        tls_advertised: flag(row, "tls_advertised")?,
        api_port: opt_u16(row, "api_port")?.unwrap_or(0),
        port_range: lo.zip(hi),
        wildcard_domain: get(row, "wildcard_domain")?,
        wildcard_traffic_port: opt_u16(row, "wildcard_traffic_port")?,
        filtered_apps_only: flag(row, "filtered_apps_only")?,
        traefik_last_used_marker_path: get(row, "traefik_last_used_marker_path")?,
        accepted_traffics: traffics
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().map_err(|e| corrupt("accepted_traffics", e)))
            .collect::<Result<_, _>>()?,
        app_filters: app_filters(&filters),
        authgate_url: get(row, "authgate_url")?,
        cert_resolver: get(row, "cert_resolver")?,
        cert_domains: list(&get::<String>(row, "cert_domains")?),
        path_keep_prefix_apps: list(&get::<String>(row, "path_keep_prefix_apps")?),
        fast_path: flag(row, "fast_path")?,
        fast_path_interactive: flag(row, "fast_path_interactive")?,
    };
    Ok(Worker {
        id: parse(row, "id")?,
        spec,
        nodes: get(row, "nodes")?,
        status: parse::<WorkerStatus>(row, "status")?,
        draining: flag(row, "draining")?,
        last_heartbeat_ms: get(row, "last_heartbeat")?,
        created_at_ms: get(row, "created_at")?,
        updated_at_ms: get(row, "updated_at")?,
    })
}

pub(super) fn circuit_from_row(row: &AnyRow) -> Result<Circuit, StoreError> {
    let port = opt_u16(row, "port")?;
    let subdomain: Option<String> = get(row, "subdomain")?;
    let frontend = match (port, subdomain) {
        (Some(p), _) => Frontend::Port(p),
        (None, Some(s)) if s.starts_with('/') => Frontend::Path(s),
        (None, Some(s)) => Frontend::Subdomain(s),
        (None, None) => {
            return Err(corrupt(
                "frontend",
                "circuit has neither port nor subdomain",
            ));
        }
    };
    let envs: String = get(row, "envs")?;
    let ips: String = get(row, "allowed_client_ips")?;
    let ips: Vec<String> =
        serde_json::from_str(&ips).map_err(|e| corrupt("allowed_client_ips", e))?;
    let idle: Option<i64> = get(row, "idle_timeout")?;
    Ok(Circuit {
        id: parse(row, "id")?,
        app: get(row, "app")?,
        protocol: parse(row, "protocol")?,
        app_mode: parse(row, "app_mode")?,
        worker_id: parse(row, "worker_id")?,
        frontend,
        envs: serde_json::from_str(&envs).map_err(|e| corrupt("envs", e))?,
        arguments: get(row, "arguments")?,
        open_to_public: flag(row, "open_to_public")?,
        allowed_client_ips: ips
            .iter()
            .map(|s| s.parse().map_err(|e| corrupt("allowed_client_ips", e)))
            .collect::<Result<_, _>>()?,
        user_id: opt_uuid(row, "user_id")?,
        endpoint_id: opt_uuid(row, "endpoint_id")?,
        runtime_variant: get(row, "runtime_variant")?,
        routes: Vec::new(),
        idle_timeout: idle.map(|t| t.max(0) as u64),
        generation: get(row, "generation")?,
        created_at_ms: get(row, "created_at")?,
        updated_at_ms: get(row, "updated_at")?,
        balancing: None,
        auth_plugin: plugin_from_row(row)?,
        allowed_origins: match get::<Option<String>>(row, "allowed_origins")? {
            Some(s) => serde_json::from_str(&s).map_err(|e| corrupt("allowed_origins", e))?,
            None => Vec::new(),
        },
    })
}

pub(super) fn plugin_from_row(
    row: &AnyRow,
) -> Result<Option<crate::domain::AuthPlugin>, StoreError> {
    let name: Option<String> = get(row, "auth_plugin")?;
    let config: Option<String> = get(row, "auth_plugin_config")?;
    name.map(|name| {
        Ok(crate::domain::AuthPlugin {
            name,
            config: serde_json::from_str(config.as_deref().unwrap_or("{}"))
                .map_err(|e| corrupt("auth_plugin_config", e))?,
        })
    })
    .transpose()
}

pub(super) fn route_from_row(row: &AnyRow) -> Result<(Uuid, i64, Route), StoreError> {
    Ok((
        parse(row, "circuit_id")?,
        get(row, "idx")?,
        Route {
            route_id: opt_uuid(row, "route_id")?,
            session_id: parse(row, "session_id")?,
            session_name: get(row, "session_name")?,
            kernel_host: get(row, "kernel_host")?,
            kernel_port: opt_u16(row, "kernel_port")?.unwrap_or(0),
            protocol: parse(row, "protocol")?,
            traffic_ratio: get(row, "traffic_ratio")?,
        },
    ))
}
