//! Ending live connections. Traefik keeps proxied connections (WebSockets, TCP) after their
//! router is removed and has no API to close them (traefik#9077). authgate runs on the worker
//! host, so when a circuit ends (deleted, reclaimed, its session ended, moved away, its owner
//! revoked) it destroys the sockets itself with the kernel's sock_diag `SOCK_DESTROY`, through
//! `ss -K` (iproute2). A port-mode circuit (HTTP or TCP) owns its entrypoint port: the client
//! connections on that port are destroyed, and Traefik closes their upstream halves. A
//! subdomain circuit shares its entrypoint: Traefik's connections to its backends are
//! destroyed instead — except a backend another live circuit also uses (those are left, with a
//! warning, rather than cut someone else's connections).
//!
//! It needs `CAP_NET_ADMIN` (root has it). Without it authgate warns once at start and counts
//! every cut it could not make (`connections_cut_total{result="unsupported"}`): connections
//! then end when their backend does.

use std::{collections::HashSet, net::IpAddr, time::Duration};

use uuid::Uuid;

use crate::metrics::Metrics;

/// What identifies a circuit's connections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ends {
    /// `host:port` of each backend.
    pub backends: Vec<String>,
    /// The entrypoint port of a port-mode circuit.
    pub port: Option<u16>,
}

/// Whether `/proc/self/status` grants `CAP_NET_ADMIN` (bit 12 of `CapEff`).
pub fn has_net_admin(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 12) != 0)
}

/// `ss` filters for the sockets of `ends`: its entrypoint port when it owns one, else its
/// backends as resolved (ip, port).
pub fn filters(ends: &Ends, resolved: &[(IpAddr, u16)]) -> Vec<String> {
    if let Some(p) = ends.port {
        return vec![format!("sport = :{p}")];
    }
    let mut out: Vec<String> = resolved
        .iter()
        .map(|(ip, port)| match ip {
            IpAddr::V4(v4) => format!("dst {v4}:{port}"),
            IpAddr::V6(v6) => format!("dst [{v6}]:{port}"),
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Destroys the sockets of ended circuits.
#[derive(Clone)]
pub struct Cutter {
    able: bool,
    metrics: Metrics,
}

impl Cutter {
    /// Probe the capability once; warn when it is missing.
    pub fn new(metrics: Metrics) -> Cutter {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let able = has_net_admin(&status);
        if !able {
            tracing::warn!(
                "No CAP_NET_ADMIN: open WebSockets and TCP connections of ended circuits cannot be cut; they end when their backend does"
            );
        }
        Cutter { able, metrics }
    }

    /// A cutter that never cuts (tests, and the explicit fallback).
    pub fn disabled(metrics: Metrics) -> Cutter {
        Cutter {
            able: false,
            metrics,
        }
    }

    /// Destroy the connections of `circuit` (ended because of `why`); `shared` are backends
    /// live circuits still use (never cut by address).
    pub async fn cut(&self, circuit: Uuid, why: &str, ends: &Ends, shared: &HashSet<String>) {
        let mut ends = ends.clone();
        if ends.port.is_none() {
            let (keep, cut): (Vec<String>, Vec<String>) =
                ends.backends.into_iter().partition(|b| shared.contains(b));
            if !keep.is_empty() {
                tracing::warn!(%circuit, backends = ?keep, "Connections not cut: another live circuit uses the same backend");
            }
            ends.backends = cut;
        }
        if ends.backends.is_empty() && ends.port.is_none() {
            return;
        }
        if !self.able {
            self.count("unsupported", 1);
            tracing::warn!(%circuit, why, "Cannot cut this circuit's connections (no CAP_NET_ADMIN)");
            return;
        }
        let mut resolved = Vec::new();
        for b in &ends.backends {
            match tokio::net::lookup_host(b.as_str()).await {
                Ok(addrs) => resolved.extend(addrs.map(|a| (a.ip(), a.port()))),
                Err(e) => {
                    tracing::warn!(%circuit, backend = b, error = %e, "Backend does not resolve")
                }
            }
        }
        for f in filters(&ends, &resolved) {
            match destroy(&f).await {
                Ok(n) => {
                    self.count("ok", n);
                    tracing::info!(%circuit, why, filter = f, sockets = n, "Connections cut");
                }
                Err(e) => {
                    self.count("failed", 1);
                    tracing::warn!(%circuit, why, filter = f, error = %e, "Could not cut connections");
                }
            }
        }
    }

    fn count(&self, result: &str, n: u64) {
        self.metrics
            .connections_cut
            .with_label_values(&[result])
            .inc_by(n);
    }
}

/// `ss -K` the TCP sockets matching `filter` (never listening ones); how many it destroyed.
async fn destroy(filter: &str) -> Result<u64, String> {
    let mut cmd = tokio::process::Command::new("ss");
    cmd.args(["-K", "-t", "-n", "-H"]).args(filter.split(' '));
    let out = tokio::time::timeout(Duration::from_secs(5), cmd.output())
        .await
        .map_err(|_| "ss timed out".to_string())?
        .map_err(|e| format!("ss: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    // One line per socket destroyed.
    Ok(String::from_utf8_lossy(&out.stdout).lines().count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_capability_is_read_from_cap_eff() {
        let root = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert!(has_net_admin(root));
        let dropped = "CapEff:\t000001ffffffefff\n";
        assert!(!has_net_admin(dropped));
        assert!(!has_net_admin("CapEff:\tzz\n"));
        assert!(!has_net_admin(""));
    }

    #[test]
    fn a_port_circuit_is_cut_by_its_port_a_subdomain_circuit_by_its_backends() {
        let resolved = [
            ("10.0.0.5".parse().unwrap(), 8888),
            ("10.0.0.5".parse().unwrap(), 8888),
            ("::1".parse().unwrap(), 9000),
        ];
        let port = Ends {
            backends: vec!["10.0.0.5:8888".into()],
            port: Some(30001),
        };
        assert_eq!(filters(&port, &resolved), ["sport = :30001"]);
        let sub = Ends {
            backends: vec!["10.0.0.5:8888".into()],
            port: None,
        };
        assert_eq!(
            filters(&sub, &resolved),
            ["dst 10.0.0.5:8888", "dst [::1]:9000"]
        );
    }
}
