//! The provider's API as the CLI calls it: the manager token on every call, JSON in and out, a
//! refusal turned into the Backend.AI error body's message.

use serde_json::Value;

use crate::{Failure, Settings};

/// A call that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The provider answered with an error status (and, usually, Backend.AI's error body).
    #[error("{status} from {path}: {message}")]
    Refused {
        status: u16,
        path: String,
        message: String,
    },
}

/// The provider's API with the manager token.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    pub fn new(s: &Settings) -> Result<Api, Failure> {
        let mut b = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .connect_timeout(std::time::Duration::from_secs(5));
        if let Some(ca) = &s.ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| Failure::Usage(format!("{}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Failure::Usage(format!("{}: {e}", ca.display())))?;
            b = b.tls_certs_only(certs);
        }
        let http = b
            .build()
            .map_err(|e| Failure::Other(format!("HTTP client: {e}")))?;
        Ok(Api {
            http,
            base: s.provider.trim_end_matches('/').to_string(),
            token: s.token.clone(),
        })
    }

    /// The HTTP client (the doctor asks Traefik with it too).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method, &url)
            .header("X-BackendAI-Token", &self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|source| ApiError::Transport {
            url: url.clone(),
            source,
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|source| ApiError::Transport { url, source })?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(v);
        }
        let message = ["msg", "title", "type"]
            .iter()
            .find_map(|k| v[*k].as_str())
            .map_or_else(|| text.chars().take(200).collect(), str::to_string);
        Err(ApiError::Refused {
            status,
            path: path.to_string(),
            message,
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, ApiError> {
        self.call(reqwest::Method::DELETE, path, None).await
    }
}
