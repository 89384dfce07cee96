//! The contract that `appproxy-provider` and `appproxy-authgate` must agree on.
//!
//! Today that is the etcd layout Traefik reads (`names`): the worker root key and the
//! object names derived from circuit ids. Both sides render from these functions, so a
//! change here changes both at once.

pub mod names;
