//! `appproxy-authgate`: the per-worker side of appproxy.
//!
//! Today it renders the static configuration of its co-located Traefik
//! ([`traefik_config`]); the ForwardAuth service, `/setup`, access-log ingestion and plugins
//! follow (see ARCHITECTURE.md).

pub mod traefik_config;
