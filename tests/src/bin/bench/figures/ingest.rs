//! Ingestion: OTLP access-log records per second into authgate, and the Redis commands its
//! flusher issues per 1 s flush (they grow with active circuits, not with records).

use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::{
    Bench,
    probes::{otlp_export, redis_calls},
    report::Ingestion,
};

pub(crate) async fn run(b: &mut Bench) {
    let ids: Vec<Uuid> = (0..50).map(|_| Uuid::new_v4()).collect();
    let export = otlp_export(&ids, 1000);
    let calls0 = redis_calls(b.stack.redis_port).await;
    let t = Instant::now();
    let mut sent = 0;
    while sent < b.sz.records {
        let r = b.w.post_logs(&b.http, export.clone()).send().await.unwrap();
        assert_eq!(r.status(), 200);
        sent += 1000;
    }
    let secs = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let calls = redis_calls(b.stack.redis_port).await - calls0;
    let flushes = (secs + 2.5).ceil();
    println!(
        "ingestion: {:.0} records/s over {} records; Redis commands ≈ {:.0} per 1 s flush for {} active circuits",
        sent as f64 / secs,
        sent,
        calls as f64 / flushes,
        ids.len()
    );
    b.results.ingestion = Some(Ingestion {
        records: sent,
        seconds: secs,
        records_per_s: sent as f64 / secs,
        redis_commands: calls,
        flush_window_s: flushes,
        active_circuits: ids.len(),
    });
}
