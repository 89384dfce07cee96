//! Configuration loading shared by both binaries: a TOML file, then environment overrides.
//!
//! An override `<PREFIX>SECTION__KEY=x` sets `[section] key = "x"`; values that parse as TOML
//! (numbers, booleans, arrays) keep their type, everything else is a string.

use std::{collections::BTreeMap, path::Path};

use serde::de::DeserializeOwned;

/// Why a configuration could not be read or parsed (validation is each binary's own).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Parse(String),
}

/// A configuration that could not be loaded, or that breaks rules (all of them listed).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl ConfigError {
    /// `Ok` when `errs` is empty, else every message at once.
    pub fn check(errs: Vec<String>) -> Result<(), ConfigError> {
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errs))
        }
    }
}

/// Load `T` from an optional TOML file plus the environment overrides under `prefix`.
pub fn load<T: DeserializeOwned>(
    path: Option<&Path>,
    env: &BTreeMap<String, String>,
    prefix: &str,
) -> Result<T, LoadError> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|source| LoadError::Read {
            path: p.display().to_string(),
            source,
        })?,
        None => String::new(),
    };
    let mut doc: toml::Table =
        toml::from_str(&text).map_err(|e| LoadError::Parse(e.to_string()))?;
    apply_env(&mut doc, env, prefix);
    toml::Value::Table(doc)
        .try_into()
        .map_err(|e: toml::de::Error| LoadError::Parse(e.to_string()))
}

fn apply_env(doc: &mut toml::Table, env: &BTreeMap<String, String>, prefix: &str) {
    for (name, raw) in env {
        let Some(path) = name.strip_prefix(prefix) else {
            continue;
        };
        let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        let mut table = &mut *doc;
        for part in &parts[..parts.len() - 1] {
            let entry = table
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            table = entry.as_table_mut().expect("just made a table");
        }
        table.insert(parts[parts.len() - 1].clone(), value);
    }
}
