//! The provider's answers against its OpenAPI document: [`record`] keeps every answer
//! [`crate::Stack::call`] gets (when `APPPROXY_E2E_RECORD_DIR` names a directory: a JSON line
//! per answer, a file per test process), and a [`Checker`] matches an answer to its operation
//! (path template, method, status or `default`) and validates its body against the schema
//! with the document's components. An answer to a path or method the document does not name
//! must be the router's own fallback (`url-not-found`, `method-not-allowed`): anything else
//! is a route served but not described.

use std::{
    collections::{BTreeSet, HashMap},
    io::Write,
    path::{Path, PathBuf},
    sync::Mutex,
};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The environment variable naming the directory answers are recorded into.
pub const RECORD_DIR: &str = "APPPROXY_E2E_RECORD_DIR";

/// One answer of the provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    pub status: u16,
    pub content_type: String,
    /// The body as JSON (`null` when it is not JSON).
    pub body: Value,
}

/// Append `a` to this process's recording, when recording is on.
pub fn record(a: &Answer) {
    static FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);
    let Some(dir) = std::env::var_os(RECORD_DIR) else {
        return;
    };
    let mut slot = FILE.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        let _ = std::fs::create_dir_all(&dir);
        let path = PathBuf::from(dir).join(format!("{}.jsonl", std::process::id()));
        *slot = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok();
    }
    if let Some(f) = slot.as_mut() {
        let mut line = serde_json::to_vec(a).unwrap_or_default();
        line.push(b'\n');
        let _ = f.write_all(&line);
    }
}

/// Every answer recorded in `dir`.
pub fn recorded(dir: &Path) -> Vec<Answer> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
    }
    out
}

/// Whether `a` is the router's own fallback of kind `kind` (`url-not-found`,
/// `method-not-allowed`): what it answers for a path or method no handler serves.
pub fn is_fallback(a: &Answer, kind: &str) -> bool {
    (a.body["type"].as_str())
        .is_some_and(|t| t.strip_suffix(kind).is_some_and(|p| p.ends_with('/')))
}

/// Matches answers to the document's operations and validates their bodies.
pub struct Checker {
    doc: Value,
    validators: Mutex<HashMap<String, std::sync::Arc<jsonschema::Validator>>>,
}

/// Whether `path` fits `template` (`{name}` matches one non-empty segment); the number of
/// parameters it took (fewer: more specific).
fn fits(template: &str, path: &str) -> Option<usize> {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    if t.len() != p.len() {
        return None;
    }
    let mut params = 0;
    for (t, p) in t.iter().zip(&p) {
        if t.starts_with('{') && t.ends_with('}') {
            if p.is_empty() {
                return None;
            }
            params += 1;
        } else if t != p {
            return None;
        }
    }
    Some(params)
}

impl Checker {
    pub fn new(doc: Value) -> Checker {
        Checker {
            doc,
            validators: Mutex::new(HashMap::new()),
        }
    }

    /// Every `(path template, method)` the document names.
    pub fn operations(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (path, item) in self.doc["paths"].as_object().into_iter().flatten() {
            for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
                out.push((path.clone(), method.clone()));
            }
        }
        out
    }

    /// The most specific path template `path` fits.
    fn template(&self, path: &str) -> Option<String> {
        (self.doc["paths"].as_object().into_iter().flatten())
            .filter_map(|(t, _)| fits(t, path).map(|n| (n, t.clone())))
            .min()
            .map(|(_, t)| t)
    }

    /// Check one answer; `Ok(Some(operation))` when it was checked against an operation,
    /// `Ok(None)` when it is the router's fallback for an undescribed path or method.
    pub fn check(&self, a: &Answer) -> Result<Option<String>, String> {
        let what = format!("{} {} → {}", a.method, a.path, a.status);
        let fallback = |kind: &str| is_fallback(a, kind);
        let Some(template) = self.template(&a.path) else {
            return if fallback("url-not-found") {
                Ok(None)
            } else {
                Err(format!("{what}: served, but no path of the document fits"))
            };
        };
        let method = a.method.to_ascii_lowercase();
        let op = &self.doc["paths"][&template][&method];
        if op.is_null() {
            // HEAD is answered by GET handlers; OPTIONS by the CORS layer.
            if method == "head" || method == "options" || fallback("method-not-allowed") {
                return Ok(None);
            }
            return Err(format!("{what}: served, but {template} has no {method}"));
        }
        let key = a.status.to_string();
        let (status_key, response) = match &op["responses"][&key] {
            Value::Null => ("default".to_string(), &op["responses"]["default"]),
            r => (key, r),
        };
        if response.is_null() {
            return Err(format!("{what}: {template} {method} lists no such status"));
        }
        let operation = format!("{method} {template} {status_key}");
        let Some(content) = response["content"].as_object() else {
            return Ok(Some(operation)); // No body described (302, 304).
        };
        let media = a.content_type.split(';').next().unwrap_or("").trim();
        let Some(schema) = content.get(media).map(|c| &c["schema"]) else {
            return Err(format!(
                "{what}: answered {media:?}, the document says {:?}",
                content.keys().collect::<Vec<_>>()
            ));
        };
        if !media.ends_with("json") {
            return Ok(Some(operation));
        }
        // A response may offer several JSON schemas under one media type only through
        // `oneOf`; utoipa writes alternatives as one schema, so one validator per response.
        let validator = self.validator(&operation, schema)?;
        let errors: Vec<String> = validator
            .iter_errors(&a.body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(Some(operation))
        } else {
            Err(format!(
                "{what} ({operation}): {}\nbody: {}",
                errors.join("; "),
                a.body
            ))
        }
    }

    /// Check every answer: the operation/status pairs they covered, and every failure (once).
    pub fn check_all(&self, answers: &[Answer]) -> (BTreeSet<String>, BTreeSet<String>) {
        let (mut covered, mut failures) = (BTreeSet::new(), BTreeSet::new());
        for a in answers {
            match self.check(a) {
                Ok(Some(op)) => {
                    covered.insert(op);
                }
                Ok(None) => {}
                Err(e) => {
                    failures.insert(e);
                }
            }
        }
        (covered, failures)
    }

    fn validator(
        &self,
        key: &str,
        schema: &Value,
    ) -> Result<std::sync::Arc<jsonschema::Validator>, String> {
        let mut cache = self.validators.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = cache.get(key) {
            return Ok(v.clone());
        }
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc["components"],
            "allOf": [schema],
        });
        let v = std::sync::Arc::new(
            jsonschema::validator_for(&root).map_err(|e| format!("{key}: schema: {e}"))?,
        );
        cache.insert(key.to_string(), v.clone());
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::fits;

    #[test]
    fn templates_fit_segment_by_segment_and_literals_win() {
        assert_eq!(
            fits("/api/circuit/{circuit_id}", "/api/circuit/abc"),
            Some(1)
        );
        assert_eq!(fits("/api/circuit/_/bulk", "/api/circuit/_/bulk"), Some(0));
        assert_eq!(fits("/api/circuit/{circuit_id}", "/api/circuit/"), None);
        assert_eq!(fits("/api/circuit/{circuit_id}", "/api/circuit/a/b"), None);
    }
}
