//! Static configuration of a worker's Traefik, rendered from the worker's settings.
//!
//! Pure: settings in, files out. The output is YAML written as JSON (YAML is a superset of
//! JSON), which keeps quoting exact without a YAML library.

use serde_json::{Map, json};

/// Frontend of a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frontend {
    /// One entrypoint per port `lo..=hi` (`port_<N>`).
    Ports { lo: u16, hi: u16 },
    /// One entrypoint (`apps`) for every subdomain app.
    Wildcard { port: u16 },
}

/// Everything the static configuration depends on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub authority: String,
    pub namespace: String,
    pub etcd_endpoints: Vec<String>,
    /// TLS to etcd (with `https://` endpoints): CA file, client certificate and key.
    pub etcd_tls: Option<EtcdTls>,
    /// etcd user and password (Traefik's `username`/`password`).
    pub etcd_auth: Option<(String, String)>,
    pub frontend: Frontend,
    /// Address the app entrypoints bind (e.g. `127.0.0.1`, `0.0.0.0`, `[::]`).
    pub bind_host: String,
    /// Loopback port of Traefik's API, ping and metrics.
    pub api_port: u16,
    /// Default TLS certificate and key (without one Traefik mints a certificate on every reload).
    pub default_cert: Option<(String, String)>,
    /// Where the file-provider configuration will be written (for the default certificate).
    pub dynamic_file: String,
    /// Traefik's own log file, if not stdout.
    pub log_file: Option<String>,
    /// Provider throttle in milliseconds (~100 keeps bursts coalesced).
    pub throttle_ms: u64,
    /// authgate's OTLP/HTTP logs receiver (`http://127.0.0.1:10203/v1/logs`, its ingest
    /// listener) and the secret sent with every export: access logs go there and nowhere
    /// else. `None`: no access log.
    pub otlp_logs: Option<(String, String)>,
}

/// PEM files for Traefik's etcd client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

/// Why the etcd part of the settings cannot be rendered.
pub fn check_etcd(s: &Settings) -> Result<(), String> {
    let secure = s
        .etcd_endpoints
        .iter()
        .filter(|e| e.starts_with("https://"))
        .count();
    if secure != 0 && secure != s.etcd_endpoints.len() {
        return Err("etcd endpoints must be all https:// or all plain".into());
    }
    if secure == 0 && s.etcd_tls.is_some() {
        return Err("etcd TLS files are named but no endpoint is https://".into());
    }
    if let Some(t) = &s.etcd_tls
        && t.cert_file.is_some() != t.key_file.is_some()
    {
        return Err("the etcd client certificate and key go together".into());
    }
    Ok(())
}

/// `traefik.yml`.
pub fn render_static(s: &Settings) -> String {
    let mut eps = Map::new();
    eps.insert(
        "traefik".into(),
        json!({ "address": format!("127.0.0.1:{}", s.api_port) }),
    );
    match s.frontend {
        Frontend::Ports { lo, hi } => {
            for p in lo..=hi {
                eps.insert(
                    appproxy_common::names::port_entrypoint(p),
                    json!({ "address": format!("{}:{p}", s.bind_host) }),
                );
            }
        }
        Frontend::Wildcard { port } => {
            eps.insert(
                appproxy_common::names::APPS_ENTRYPOINT.into(),
                json!({ "address": format!("{}:{port}", s.bind_host) }),
            );
        }
    }
    let secure = s.etcd_endpoints.iter().any(|e| e.starts_with("https://"));
    let endpoints = (s.etcd_endpoints.iter())
        .map(|e| {
            e.trim_start_matches("http://")
                .trim_start_matches("https://")
        })
        .collect::<Vec<_>>();
    let mut etcd = json!({
        "endpoints": endpoints,
        "rootKey": appproxy_common::names::worker_root_key(&s.namespace, &s.authority),
    });
    if secure {
        // Traefik's etcd client speaks TLS when `tls` is present (even empty: system roots).
        let t = s.etcd_tls.clone().unwrap_or_default();
        let mut tls = Map::new();
        for (k, v) in [
            ("ca", t.ca_file),
            ("cert", t.cert_file),
            ("key", t.key_file),
        ] {
            if let Some(v) = v {
                tls.insert(k.into(), json!(v));
            }
        }
        etcd["tls"] = serde_json::Value::Object(tls);
    }
    if let Some((user, password)) = &s.etcd_auth {
        etcd["username"] = json!(user);
        etcd["password"] = json!(password);
    }
    let mut providers = json!({
        "providersThrottleDuration": format!("{}ms", s.throttle_ms),
        "etcd": etcd,
    });
    if s.default_cert.is_some() {
        providers["file"] = json!({ "filename": s.dynamic_file, "watch": false });
    }
    let mut log = json!({ "level": "INFO" });
    if let Some(f) = &s.log_file {
        log["filePath"] = json!(f);
    }
    let mut doc = json!({
        "entryPoints": eps,
        "api": { "insecure": true, "dashboard": false },
        "ping": { "entryPoint": "traefik" },
        "metrics": { "prometheus": {
            "entryPoint": "traefik",
            "addEntryPointsLabels": true,
            "addRoutersLabels": false,
            "addServicesLabels": false,
        }},
        "providers": providers,
        "log": log,
        "global": { "checkNewVersion": false, "sendAnonymousUsage": false },
    });
    if let Some((endpoint, secret)) = &s.otlp_logs {
        let mut headers = Map::new();
        headers.insert(crate::config::INGEST_SECRET_HEADER.into(), json!(secret));
        // OTLP never blocks traffic when the receiver is slow or down (a FIFO would, and a
        // Unix-socket filePath silently disables logging). Only the fields authgate reads
        // are kept: `RequestPath` (it carries setup tokens in its query) and every header but
        // `Upgrade` and `Sec-WebSocket-Key` (which mark a WebSocket request and name it) are
        // dropped before export. The secret header proves the export comes from this Traefik.
        doc["experimental"] = json!({ "otlpLogs": true });
        doc["accessLog"] = json!({
            "format": "json",
            "otlp": { "http": {
                "endpoint": endpoint,
                "headers": headers,
            } },
            "fields": {
                "defaultMode": "keep",
                "names": { "RequestPath": "drop", "ClientUsername": "drop" },
                "headers": { "defaultMode": "drop", "names": {
                    "Upgrade": "keep",
                    "Sec-Websocket-Key": "keep",
                } },
            },
        });
    }
    serde_json::to_string_pretty(&doc).expect("json") + "\n"
}

/// The file-provider configuration (default TLS certificate), if any.
pub fn render_dynamic(s: &Settings) -> Option<String> {
    let (cert, key) = s.default_cert.as_ref()?;
    let doc = json!({
        "tls": { "stores": { "default": { "defaultCertificate": { "certFile": cert, "keyFile": key } } } }
    });
    Some(serde_json::to_string_pretty(&doc).expect("json") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn settings(frontend: Frontend) -> Settings {
        Settings {
            authority: "worker-1".into(),
            namespace: "traefik".into(),
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
            etcd_tls: None,
            etcd_auth: None,
            frontend,
            bind_host: "127.0.0.1".into(),
            api_port: 8080,
            default_cert: Some(("/c.pem".into(), "/k.pem".into())),
            dynamic_file: "/d/dynamic.yml".into(),
            log_file: None,
            throttle_ms: 100,
            otlp_logs: Some((
                "http://127.0.0.1:10203/v1/logs".into(),
                "s3cret-s3cret-s3cret-s3cret-s3cret".into(),
            )),
        }
    }

    #[test]
    fn port_mode_declares_every_port() {
        let text = render_static(&settings(Frontend::Ports {
            lo: 10205,
            hi: 10207,
        }));
        let v: Value = serde_json::from_str(&text).unwrap();
        let eps = v["entryPoints"].as_object().unwrap();
        assert_eq!(eps.len(), 4);
        assert_eq!(eps["port_10206"]["address"], "127.0.0.1:10206");
        assert_eq!(eps["traefik"]["address"], "127.0.0.1:8080");
        assert_eq!(
            v["providers"]["etcd"]["rootKey"],
            "traefik/worker_worker-1."
        );
        assert_eq!(v["providers"]["etcd"]["endpoints"][0], "127.0.0.1:2379");
        assert_eq!(v["providers"]["providersThrottleDuration"], "100ms");
        assert_eq!(v["providers"]["file"]["filename"], "/d/dynamic.yml");
        assert_eq!(v["experimental"]["otlpLogs"], true);
        assert_eq!(
            v["accessLog"]["otlp"]["http"]["endpoint"],
            "http://127.0.0.1:10203/v1/logs"
        );
        assert_eq!(
            v["accessLog"]["otlp"]["http"]["headers"]["x-appproxy-ingest-secret"],
            "s3cret-s3cret-s3cret-s3cret-s3cret"
        );
        let kept = &v["accessLog"]["fields"]["headers"]["names"];
        assert_eq!(kept["Sec-Websocket-Key"], "keep");
        assert_eq!(kept["Upgrade"], "keep");
        assert_eq!(v["accessLog"]["fields"]["names"]["RequestPath"], "drop");
        assert!(v["accessLog"].get("filePath").is_none());
    }

    /// Traefik drops the Prometheus series of a removed router or service only when its
    /// `/metrics` is scraped, and until then keeps them and a list of the removed names. With
    /// per-router and per-service labels, circuits churning and nobody scraping, Traefik's RSS
    /// grew 150 → 609 MiB in the 60-minute soak (169 → 254 MiB in 8 minutes); without them,
    /// 162 → 203 MiB in 8 minutes with the live heap after GC flat (63, 50, 53 MiB at minutes
    /// 1, 3 and 7). Entry-point labels are bounded by the static config.
    #[test]
    fn metrics_have_no_per_circuit_labels() {
        let v: Value =
            serde_json::from_str(&render_static(&settings(Frontend::Wildcard { port: 8443 })))
                .unwrap();
        let prom = &v["metrics"]["prometheus"];
        assert_eq!(prom["addEntryPointsLabels"], true);
        assert_eq!(prom["addRoutersLabels"], false);
        assert_eq!(prom["addServicesLabels"], false);
    }

    #[test]
    fn etcd_over_tls_with_a_client_certificate_and_a_user() {
        let mut s = settings(Frontend::Wildcard { port: 8443 });
        s.etcd_endpoints = vec!["https://127.0.0.1:2379".into(), "https://[::1]:2379".into()];
        s.etcd_tls = Some(EtcdTls {
            ca_file: Some("/ca.pem".into()),
            cert_file: Some("/c.pem".into()),
            key_file: Some("/k.pem".into()),
        });
        s.etcd_auth = Some(("traefik".into(), "pw".into()));
        assert_eq!(check_etcd(&s), Ok(()));
        let v: Value = serde_json::from_str(&render_static(&s)).unwrap();
        let etcd = &v["providers"]["etcd"];
        assert_eq!(etcd["endpoints"], json!(["127.0.0.1:2379", "[::1]:2379"]));
        assert_eq!(
            etcd["tls"],
            json!({"ca": "/ca.pem", "cert": "/c.pem", "key": "/k.pem"})
        );
        assert_eq!(etcd["username"], "traefik");
        assert_eq!(etcd["password"], "pw");
        // Plain endpoints: no TLS section, and TLS files for them are refused.
        let plain = settings(Frontend::Wildcard { port: 8443 });
        let v: Value = serde_json::from_str(&render_static(&plain)).unwrap();
        assert!(v["providers"]["etcd"].get("tls").is_none());
        let mut wrong = plain.clone();
        wrong.etcd_tls = Some(EtcdTls::default());
        assert!(check_etcd(&wrong).is_err());
        let mut mixed = s.clone();
        mixed.etcd_endpoints.push("http://127.0.0.1:2380".into());
        assert!(check_etcd(&mixed).is_err());
    }

    #[test]
    fn wildcard_mode_has_one_apps_entrypoint() {
        let mut s = settings(Frontend::Wildcard { port: 8443 });
        s.default_cert = None;
        let v: Value = serde_json::from_str(&render_static(&s)).unwrap();
        assert_eq!(v["entryPoints"].as_object().unwrap().len(), 2);
        assert_eq!(v["entryPoints"]["apps"]["address"], "127.0.0.1:8443");
        assert!(v["providers"].get("file").is_none());
        assert!(render_dynamic(&s).is_none());
    }
}
