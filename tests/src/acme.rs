//! A local ACME CA for one test: Debian's `pebble` (the ACME server) and
//! `pebble-challtestsrv` (its DNS: every name is 127.0.0.1, and TXT records for DNS-01 are
//! set over its management API by `deploy/acme-dns-challtestsrv`, which Traefik runs through
//! lego's `exec` DNS provider).
//!
//! Pebble validates HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port` of 127.0.0.1: the
//! ports of the worker's `web` and app entry points. It signs with a root it makes at start
//! (`root_pem`), and serves its own API with the test PKI's server certificate.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{Proc, free_port, pki::Pki, wait_listening};

pub struct Pebble {
    pebble: Proc,
    _challtestsrv: Proc,
    /// The ACME directory (`https://127.0.0.1:<port>/dir`).
    pub directory: String,
    /// The CA of pebble's own HTTPS certificate (what Traefik's `caCertificates` names).
    pub api_ca: PathBuf,
    /// Pebble's management API (its issuing root: `/roots/0`).
    management: String,
    /// `pebble-challtestsrv`'s DNS server (`127.0.0.1:<port>`).
    pub dns: String,
    /// `pebble-challtestsrv`'s management API.
    pub challtestsrv: String,
    /// The program for lego's `exec` DNS provider (`EXEC_PATH`).
    pub dns_hook: PathBuf,
}

impl Pebble {
    pub fn start(dir: &Path, pki: &Pki, http_port: u16, tls_port: u16) -> Pebble {
        let (acme, mgmt, dns, cts) = (free_port(), free_port(), free_port(), free_port());
        let mut cts_cmd = Command::new("pebble-challtestsrv");
        cts_cmd.args([
            "-dns01",
            &format!("127.0.0.1:{dns}"),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            &format!("127.0.0.1:{cts}"),
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
        ]);
        let mut challtestsrv = Proc::spawn("pebble-challtestsrv", cts_cmd, dir);
        wait_listening(cts, Duration::from_secs(20), &mut challtestsrv);
        let config = dir.join("pebble.json");
        std::fs::write(
            &config,
            serde_json::json!({ "pebble": {
                "listenAddress": format!("127.0.0.1:{acme}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt}"),
                "certificate": pki.cert,
                "privateKey": pki.key,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            } })
            .to_string(),
        )
        .expect("pebble config");
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(&config)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{dns}"))
            // Validate at once, and never reject a good nonce (lego would retry, slowly).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0");
        let mut pebble = Proc::spawn("pebble", cmd, dir);
        wait_listening(acme, Duration::from_secs(20), &mut pebble);
        wait_listening(mgmt, Duration::from_secs(20), &mut pebble);
        Pebble {
            pebble,
            _challtestsrv: challtestsrv,
            directory: format!("https://127.0.0.1:{acme}/dir"),
            api_ca: pki.ca.clone(),
            management: format!("https://127.0.0.1:{mgmt}"),
            dns: format!("127.0.0.1:{dns}"),
            challtestsrv: format!("http://127.0.0.1:{cts}"),
            dns_hook: crate::repo_root().join("deploy/acme-dns-challtestsrv"),
        }
    }

    /// The root that signs pebble's certificates (PEM): what a client of the worker trusts.
    pub async fn root_pem(&self) -> String {
        let ca = std::fs::read(&self.api_ca).expect("read ca");
        let http = crate::client_builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).expect("ca pem"))
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let r = http
            .get(format!("{}/roots/0", self.management))
            .send()
            .await
            .expect("pebble root");
        assert!(r.status().is_success(), "pebble root: {}", r.status());
        r.text().await.expect("pebble root body")
    }

    /// How many certificates pebble has issued so far (from its log).
    pub fn issued(&self) -> usize {
        self.pebble
            .log_tail(1_000_000)
            .matches("Issued certificate")
            .count()
    }

    /// Traefik's environment for DNS-01 through `pebble-challtestsrv`.
    pub fn dns_env(&self) -> Vec<(String, String)> {
        vec![
            ("EXEC_PATH".into(), self.dns_hook.display().to_string()),
            ("CHALLTESTSRV_URL".into(), self.challtestsrv.clone()),
        ]
    }

    /// `appproxy-authgate traefik-config` arguments for a resolver `acme` of this CA.
    pub fn traefik_args(&self, challenge: &str) -> Vec<String> {
        let mut a: Vec<String> = [
            "--tls",
            "--acme-challenge",
            challenge,
            "--acme-email",
            "ops@example.test",
            "--acme-ca-server",
            &self.directory,
            "--acme-ca-file",
            &self.api_ca.display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        if challenge == "dns" {
            a.extend(
                [
                    "--acme-dns-provider",
                    "exec",
                    "--acme-dns-resolver",
                    &self.dns,
                    "--acme-dns-no-propagation-check",
                ]
                .map(String::from),
            );
        }
        a
    }
}
