//! Backend.AI's interactive launch flow, as the Manager and WebUI call it:
//! `POST /v2/conf` (a grant) → `GET /v2/proxy/{token}/{session_id}/add` (the auth URL) →
//! `GET /v2/proxy/auth` (reuse or create the circuit, sign a setup link) → authgate → the app.
//!
//! Differences from Backend.AI, none visible to a correct client: grants expire and are
//! garbage-collected; an open `/v2/conf` is only allowed with `allowed_kernel_networks`;
//! reuse never picks a circuit on a dead worker and refreshes the kernel address.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::{Circuits, NewInteractive, links};
use crate::{
    config::ConfConfig,
    domain::{
        AppMode, Circuit, ConfToken, Protocol, Route, Worker, WorkerStatus, parse_client_ips,
        validate_host,
    },
    error::ApiError,
    models::launch::{ConfRequest, ProxyQuery, wire_protocol},
    store::{CircuitFilter, now_ms},
    tokens::{SetupRequest, Signer},
};

/// The launch service.
#[derive(Clone, Copy)]
pub struct Launch<'a> {
    pub circuits: Circuits<'a>,
    pub signer: &'a Signer,
    pub conf: &'a ConfConfig,
}

/// What `/v2/proxy/auth` answers with.
#[derive(Debug)]
pub struct Launched {
    pub setup_url: String,
    /// An existing circuit was reused (always `false` for TCP: "current version of WebUI
    /// always expects this to be False").
    pub reuse: bool,
}

impl Launch<'_> {
    /// `POST /v2/conf`: store a grant for one kernel address; `manager` says whether the
    /// manager token was presented.
    pub async fn grant(&self, req: ConfRequest, manager: bool) -> Result<Uuid, ApiError> {
        if !self.conf.allow_unauthorized_configure_request && !manager {
            return Err(ApiError::Unauthorized);
        }
        let (Some(session_id), Some(access_key)) = (req.session.id, req.session.access_key) else {
            return Err(ApiError::InvalidParams(
                "Not meant for inference apps: session.id and session.access_key are required"
                    .into(),
            ));
        };
        self.check_kernel(&req.kernel_host, req.kernel_port)?;
        let now = now_ms();
        let token = ConfToken {
            id: Uuid::new_v4(),
            login_session_token: req.login_session_token.filter(|t| !t.is_empty()),
            kernel_host: req.kernel_host,
            kernel_port: req.kernel_port,
            session_id,
            user_uuid: req.session.user_uuid,
            group_id: req.session.group_id,
            access_key,
            domain_name: req.session.domain_name,
            created_at_ms: now,
            expires_at_ms: now + self.conf.token_ttl_seconds as i64 * 1000,
        };
        self.circuits.store.insert_token(&token).await?;
        Ok(token.id)
    }

    /// A kernel address a grant may point at.
    fn check_kernel(&self, host: &str, port: u16) -> Result<(), ApiError> {
        validate_host(host).map_err(ApiError::InvalidParams)?;
        if port == 0 {
            return Err(ApiError::InvalidParams(
                "kernel_port must be 1-65535".into(),
            ));
        }
        let networks = &self.conf.allowed_kernel_networks;
        let inside = networks.is_empty()
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| networks.iter().any(|n| n.contains(&ip)));
        if !inside {
            return Err(ApiError::Forbidden(
                "kernel_host is not inside conf.allowed_kernel_networks".into(),
            ));
        }
        Ok(())
    }

    /// `GET /v2/proxy/auth`: the grant's circuit (reused when an identical one exists on a
    /// live worker, else created) and a setup link for it.
    pub async fn open(&self, q: &ProxyQuery) -> Result<Launched, ApiError> {
        let (Some(token_id), Some(session_id)) = (q.token, q.session_id) else {
            return Err(ApiError::InvalidParams(
                "token and session_id are required".into(),
            ));
        };
        let protocol = wire_protocol(&q.protocol)?;
        let token = self
            .circuits
            .store
            .get_token(token_id)
            .await?
            .ok_or(ApiError::NotFound("token"))?;
        if token.session_id != session_id {
            return Err(ApiError::InvalidCredentials(
                "E20007: Session ID mismatch".into(),
            ));
        }
        let ips = match &q.allowed_client_ips {
            Some(l) => parse_client_ips(&l.0).map_err(ApiError::InvalidParams)?,
            None => Vec::new(),
        };
        let (circuit, worker, reused) = match self.reusable(q, &token, protocol, &ips).await? {
            Some((c, w)) => (self.refresh(c, &w, &token).await?, w, true),
            None => {
                let new = interactive(q, &token, protocol, ips);
                let (c, w) = self.circuits.create_interactive(new).await?;
                (c, w, false)
            }
        };
        let link = links::signed_link(
            self.signer,
            &circuit,
            &worker,
            &SetupRequest {
                user_id: Some(token.user_uuid),
                login_session_token: token.login_session_token.as_deref(),
                redirect: Some(&q.redirect),
                state: None,
            },
        )?;
        Ok(Launched {
            setup_url: link.setup_url,
            reuse: reused && protocol != Protocol::Tcp,
        })
    }

    /// An identical circuit of the session on an ALIVE worker (unless `no_reuse`): two
    /// queries (the session's circuits, the workers), whatever their number.
    async fn reusable(
        &self,
        q: &ProxyQuery,
        token: &ConfToken,
        protocol: Protocol,
        ips: &[ipnet::IpNet],
    ) -> Result<Option<(Circuit, Worker)>, ApiError> {
        if q.no_reuse {
            return Ok(None);
        }
        let store = self.circuits.store;
        let filter = CircuitFilter {
            session_id: Some(token.session_id),
            ..Default::default()
        };
        let same: Vec<Circuit> = store
            .list_circuits(&filter)
            .await?
            .into_iter()
            .filter(|c| {
                c.app == q.app
                    && c.protocol == protocol
                    && c.app_mode == AppMode::Interactive
                    && c.open_to_public == q.open_to_public
                    && same_set(&c.allowed_client_ips, ips)
            })
            .collect();
        if same.is_empty() {
            return Ok(None);
        }
        let workers = store.list_workers().await?;
        Ok(same.into_iter().find_map(|c| {
            let w = workers
                .iter()
                .find(|w| w.id == c.worker_id && w.status == WorkerStatus::Alive)?;
            Some((c, w.clone()))
        }))
    }

    /// Point a reused circuit's routes of this session at the grant's kernel address, if the
    /// kernel moved.
    async fn refresh(
        &self,
        c: Circuit,
        w: &Worker,
        token: &ConfToken,
    ) -> Result<Circuit, ApiError> {
        let moved = c.routes.iter().any(|r| {
            r.session_id == token.session_id
                && (r.kernel_host != token.kernel_host || r.kernel_port != token.kernel_port)
        });
        if !moved {
            return Ok(c);
        }
        let c = self
            .circuits
            .store
            .refresh_session_route(
                c.id,
                token.session_id,
                &token.kernel_host,
                token.kernel_port,
            )
            .await?
            .ok_or(ApiError::NotFound("circuit"))?;
        self.circuits.reconciler.nudge_circuit(w.id, c.id);
        Ok(c)
    }
}

/// The `/v2/proxy/{token}/{session}/add` answer: the `/v2/proxy/auth` URL on `base` with the
/// caller's query, `token` and `session_id` set (replacing any given).
pub fn auth_url(base: &str, token: Uuid, session_id: Uuid, raw_query: &str) -> String {
    let mut query: Vec<(String, String)> =
        serde_urlencoded::from_str(raw_query).unwrap_or_default();
    query.retain(|(k, _)| k != "token" && k != "session_id");
    query.push(("token".into(), token.to_string()));
    query.push(("session_id".into(), session_id.to_string()));
    format!(
        "{}/v2/proxy/auth?{}",
        base.trim_end_matches('/'),
        serde_urlencoded::to_string(&query).unwrap_or_default()
    )
}

/// The interactive circuit a grant asks for.
fn interactive(
    q: &ProxyQuery,
    token: &ConfToken,
    protocol: Protocol,
    ips: Vec<ipnet::IpNet>,
) -> NewInteractive {
    NewInteractive {
        app: q.app.clone(),
        protocol,
        worker: None,
        user_id: token.user_uuid,
        open_to_public: q.open_to_public,
        allowed_client_ips: ips,
        port: q.port,
        subdomain: q.subdomain.clone(),
        envs: q.envs.clone(),
        arguments: q.args.clone(),
        idle_timeout: None,
        routes: vec![Route {
            route_id: None,
            session_id: token.session_id,
            session_name: None,
            kernel_host: token.kernel_host.clone(),
            kernel_port: token.kernel_port,
            protocol,
            traffic_ratio: 1.0,
        }],
        props: session_props(token),
        auth_plugin: None,
        allowed_origins: Vec::new(),
    }
}

fn same_set(a: &[ipnet::IpNet], b: &[ipnet::IpNet]) -> bool {
    a.iter().collect::<BTreeSet<_>>() == b.iter().collect::<BTreeSet<_>>()
}

/// The `session.<field>` properties worker app filters match against.
fn session_props(t: &ConfToken) -> Vec<(String, String)> {
    vec![
        ("session.id".into(), t.session_id.to_string()),
        ("session.user_uuid".into(), t.user_uuid.to_string()),
        ("session.project_id".into(), t.group_id.to_string()),
        ("session.group_id".into(), t.group_id.to_string()),
        ("session.access_key".into(), t.access_key.clone()),
        ("session.domain_name".into(), t.domain_name.clone()),
    ]
}
