//! Create → live: a circuit created through the provider until Traefik answers 200 for it,
//! against a raw etcd transaction of the same router, at several preloads.

use std::time::{Duration, Instant};

use crate::{
    Bench,
    probes::{ms, pct, raw_put, settle, until_200},
    report::Live,
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
}
