//! Route health as each worker's Traefik sees it, reported by its authgate
//! (`PUT /api/worker/{id}/route-health`, stored in SQL by whichever provider receives it) and
//! read back as a [`RouteHealth`] snapshot when a health endpoint answers. Reports are
//! re-sent every few seconds; older ones say nothing.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

use crate::{
    domain::Route,
    store::{Store, StoreError, now_ms},
};

/// Reports older than this say nothing (the worker or its authgate went away).
const STALE_MS: i64 = 30_000;

/// Circuit → server URL (`http://host:port`) → Traefik's status (`UP` / `DOWN`).
#[derive(Clone, Default)]
pub struct RouteHealth {
    circuits: HashMap<Uuid, BTreeMap<String, String>>,
}

impl RouteHealth {
    /// The workers' recent reports.
    pub async fn load(store: &Store) -> Result<RouteHealth, StoreError> {
        let reports = store.route_health_since(now_ms() - STALE_MS).await?;
        Ok(RouteHealth::from_reports(reports))
    }

    /// A snapshot of the reports of several workers.
    pub fn from_reports(
        reports: impl IntoIterator<Item = (Uuid, HashMap<Uuid, BTreeMap<String, String>>)>,
    ) -> RouteHealth {
        let circuits = reports.into_iter().flat_map(|(_, c)| c).collect();
        RouteHealth { circuits }
    }

    /// `healthy`, `unhealthy` or `unknown` for one route of a circuit.
    pub fn status(&self, circuit: Uuid, route: &Route) -> &'static str {
        let Some(servers) = self.circuits.get(&circuit) else {
            return "unknown";
        };
        let hostport = crate::domain::host_port(&route.kernel_host, route.kernel_port);
        let found = servers
            .iter()
            .find(|(url, _)| url.split_once("://").map(|(_, a)| a) == Some(hostport.as_str()));
        match found.map(|(_, s)| s.as_str()) {
            Some("UP") => "healthy",
            Some(_) => "unhealthy",
            None => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Protocol;

    fn route(port: u16) -> Route {
        Route {
            route_id: None,
            session_id: Uuid::nil(),
            session_name: None,
            kernel_host: "10.0.0.1".into(),
            kernel_port: port,
            protocol: Protocol::Http,
            traffic_ratio: 1.0,
        }
    }

    #[test]
    fn reports_map_to_route_status() {
        let (w, c) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(RouteHealth::default().status(c, &route(1)), "unknown");
        let h = RouteHealth::from_reports([(
            w,
            HashMap::from([(
                c,
                BTreeMap::from([
                    ("http://10.0.0.1:1".to_string(), "UP".to_string()),
                    ("http://10.0.0.1:2".to_string(), "DOWN".to_string()),
                ]),
            )]),
        )]);
        assert_eq!(h.status(c, &route(1)), "healthy");
        assert_eq!(h.status(c, &route(2)), "unhealthy");
        assert_eq!(h.status(c, &route(3)), "unknown");
    }
}
