//! The provider API on PostgreSQL: create latency (its own stack, no Traefik needed).

use std::time::Instant;

use appproxy_common::wire::{CreateCircuitRequest, RouteRequest};
use e2e::{Db, Stack};
use serde_json::json;
use uuid::Uuid;

use crate::{
    Sizes,
    probes::{ms, pct},
    report::ApiPostgres,
};

pub(crate) async fn run(sz: &Sizes) -> ApiPostgres {
    let pg = Stack::start(Db::Postgres).await;
    pg.register_worker(json!({
        "authority": "pgw", "frontend_mode": "wildcard", "protocol": "http",
        "hostname": "127.0.0.1", "api_port": 1, "wildcard_domain": ".pg.test",
    }))
    .await;
    let mut pg_ms = Vec::new();
    for i in 0..sz.list_circuits.min(2000) {
        let route = RouteRequest::to(Uuid::new_v4(), "127.0.0.1", 9);
        let mut req = CreateCircuitRequest::new("bench", Uuid::new_v4(), vec![route]);
        req.worker = Some("pgw".into());
        req.open_to_public = true;
        req.subdomain = Some(format!("pg{i}"));
        let t = Instant::now();
        pg.create(&req).await;
        pg_ms.push(ms(t.elapsed()));
    }
    println!(
        "API (PostgreSQL): create p50 {:.2} ms p99 {:.2} ms over {} creates",
        pct(&pg_ms, 0.5),
        pct(&pg_ms, 0.99),
        pg_ms.len()
    );
    ApiPostgres {
        create_p50_ms: pct(&pg_ms, 0.5),
        create_p99_ms: pct(&pg_ms, 0.99),
        creates: pg_ms.len(),
    }
}
