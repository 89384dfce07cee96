//! A real headless Chromium driven over WebDriver (Debian's `chromium` and `chromedriver`):
//! for what only a browser does — following redirects while keeping cookies per host, refusing
//! to let page scripts overwrite `HttpOnly` cookies, sending `Origin` on its own.
//!
//! Each browser has its own profile directory; chromedriver is a [`Proc`], and the Chromium
//! processes it starts are found by that profile directory and killed by PID on drop.

use std::{path::PathBuf, process::Command, time::Duration};

use serde_json::{Value, json};

use crate::procs::{Proc, TempDir, free_port, wait_listening};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Browser {
    session: String,
    base: String,
    http: reqwest::Client,
    profile: PathBuf,
    driver: Proc,
    _dir: TempDir,
}

impl Browser {
    /// Start chromedriver and a fresh headless Chromium session.
    pub async fn start() -> Browser {
        Browser::start_trusting(None).await
    }

    /// Same, with a browser that also trusts the CA certificate(s) in `ca_pem`: Chromium on
    /// Linux reads its trust store from the NSS database in `$HOME/.pki/nssdb`, so this
    /// browser gets its own home with a database holding the CA (`certutil`).
    pub async fn start_trusting(ca_pem: Option<&str>) -> Browser {
        assert!(
            std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists(),
            "browser tests need Debian's chromium and chromium-driver (deploy/lib.sh installs them)"
        );
        let dir = TempDir::new("browser");
        let profile = dir.path().join("profile");
        let port = free_port();
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"));
        if let Some(pem) = ca_pem {
            let home = dir.path().join("home");
            let db = home.join(".pki/nssdb");
            std::fs::create_dir_all(&db).expect("nss dir");
            let ca = dir.path().join("trusted-ca.pem");
            std::fs::write(&ca, pem).expect("write ca");
            let db_arg = format!("sql:{}", db.display());
            let steps: [Vec<&str>; 2] = [
                vec!["-N", "-d", &db_arg, "--empty-password"],
                vec!["-A", "-d", &db_arg, "-n", "appproxy-test-ca", "-t", "C,,"],
            ];
            for (i, args) in steps.iter().enumerate() {
                let mut c = Command::new("certutil");
                c.args(args);
                if i == 1 {
                    c.arg("-i").arg(&ca);
                }
                let out = c.output().expect("certutil (Debian's libnss3-tools)");
                assert!(
                    out.status.success(),
                    "certutil {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            cmd.env("HOME", &home);
        }
        let mut driver = Proc::spawn("chromedriver", cmd, dir.path());
        wait_listening(port, Duration::from_secs(20), &mut driver);
        let base = format!("http://127.0.0.1:{port}");
        let http = crate::client_builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let v: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session answer");
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        Browser {
            session,
            base,
            http,
            profile,
            driver,
            _dir: dir,
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req
            .send()
            .await
            .expect("webdriver")
            .json()
            .await
            .expect("webdriver json");
        v["value"].clone()
    }

    /// Navigate (following redirects, as a user would) and wait for the page.
    pub async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The current page's text (`document.body.innerText`).
    pub async fn text(&self) -> String {
        self.script("return document.body ? document.body.innerText : '';")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Run a script in the page; its return value.
    pub async fn script(&self, js: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": js, "args": [] })),
        )
        .await
    }

    /// Run an async script (`arguments[0]` is the callback); its result.
    pub async fn script_async(&self, js: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/async",
            Some(json!({ "script": js, "args": [] })),
        )
        .await
    }

    /// Cookies the browser holds for the current page (names and values; HttpOnly included).
    pub async fn cookies(&self) -> Vec<(String, String)> {
        self.cmd(reqwest::Method::GET, "/cookie", None)
            .await
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or_default().to_string(),
                    c["value"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Close the browser (also done, by PID, on drop).
    pub async fn quit(self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
    }

    /// PIDs of the Chromium processes that use this browser's profile.
    fn chromium_pids(&self) -> Vec<u32> {
        let needle = format!("--user-data-dir={}", self.profile.display());
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| {
                        String::from_utf8_lossy(&c)
                            .replace('\0', " ")
                            .contains(&needle)
                    })
                    .unwrap_or(false)
            })
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        for pid in self.chromium_pids() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
        self.driver.kill();
    }
}
