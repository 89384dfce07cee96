//! Create → live: a circuit created through the provider until Traefik answers 200 for it,
//! against a raw etcd transaction of the same router, at several preloads.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::{
    Bench,
    probes::{ms, pct, raw_put, settle, until_200},
    report::{Live, RouteUpdate},
};

pub(crate) async fn run(b: &mut Bench) {
    let mut figure = Vec::new();
    for preload in b.sz.preload.clone() {
        b.preload_provider(preload).await;
        b.preload_raw(preload).await;
        settle(&b.traefiks);
        let (mut prov, mut base) = (Vec::new(), Vec::new());
        for i in 0..b.sz.samples {
            // Alternate provider and raw samples so noise hits both alike, and start each one
            // after Traefik's 100 ms provider throttle has run out (else a sample waits for
            // the throttle window its predecessor opened, whoever wrote it).
            tokio::time::sleep(Duration::from_millis(250)).await;
            let sub = format!("live{preload}x{i}");
            let t = Instant::now();
            b.stack.create(&b.create(sub.clone())).await;
            until_200(&b.http, b.apps, &format!("{sub}.bench.test")).await;
            prov.push(ms(t.elapsed()));
            b.loaded += 1;
            let host = format!("live{preload}x{i}.raw.test");
            tokio::time::sleep(Duration::from_millis(250)).await;
            let t = Instant::now();
            raw_put(&mut b.etcd, &b.raw_root, &host, b.echo.port).await;
            until_200(&b.http, b.raw_port, &host).await;
            base.push(ms(t.elapsed()));
            b.raw_loaded += 1;
        }
        println!(
            "create→live @{preload}: provider p50 {:.1} ms p99 {:.1} ms | raw txn p50 {:.1} ms p99 {:.1} ms",
            pct(&prov, 0.5),
            pct(&prov, 0.99),
            pct(&base, 0.5),
            pct(&base, 0.99)
        );
        figure.push(Live::new(preload, prov, base));
    }
    b.results.create_to_live = Some(figure);
    b.results.route_update = Some(route_update(b).await);
}

/// Endpoints created as the Manager does it: the endpoint first (no replicas: its URL serves
/// nothing), then `bulk/routes` right away; timed from the routes call until Traefik answers
/// 200. Alternated with creates that carry their route.
async fn route_update(b: &mut Bench) -> RouteUpdate {
    let (mut update, mut create) = (Vec::new(), Vec::new());
    for i in 0..b.sz.samples {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let id = uuid::Uuid::new_v4();
        let name = format!("ep{i}x{}", &id.simple().to_string()[..6]);
        let body = json!({"deployment_id": id, "service_name": name, "open_to_public": true,
                          "tags": {"session": {}, "endpoint": {"id": id}}});
        let (s, v) = b
            .stack
            .manager(
                reqwest::Method::POST,
                &format!("/v2/endpoints/{id}"),
                Some(&body),
            )
            .await;
        assert_eq!(s, 200, "endpoint create: {v}");
        let t = Instant::now();
        b.stack
            .add_replica(id, uuid::Uuid::new_v4(), b.echo.port)
            .await;
        until_200(&b.http, b.apps, &format!("{name}.bench.test")).await;
        update.push(ms(t.elapsed()));
        b.loaded += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
        let sub = format!("withroute{i}");
        let t = Instant::now();
        b.stack.create(&b.create(sub.clone())).await;
        until_200(&b.http, b.apps, &format!("{sub}.bench.test")).await;
        create.push(ms(t.elapsed()));
        b.loaded += 1;
    }
    let u = RouteUpdate {
        update_p50: pct(&update, 0.5),
        update_p99: pct(&update, 0.99),
        create_p50: pct(&create, 0.5),
        update_ms: update,
        create_ms: create,
    };
    println!(
        "route update→live: p50 {:.1} ms p99 {:.1} ms | create with its route p50 {:.1} ms",
        u.update_p50, u.update_p99, u.create_p50
    );
    u
}
