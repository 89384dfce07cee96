//! Store tests on a real SQLite file (one per test, in the temp dir): allocation races, upsert
//! races, atomic route replacement, one circuit per endpoint. PostgreSQL runs the same code
//! path in the e2e suite (`both_dbs!`).

use std::sync::Arc;

use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::domain::{AppMode, Frontend, FrontendMode, Protocol, Route, WorkerSpec};

struct TempDb {
    store: Store,
    path: std::path::PathBuf,
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", ".provider.lock"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

async fn temp_db() -> TempDb {
    let path = std::env::temp_dir().join(format!("appproxy-store-{}.db", Uuid::new_v4()));
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let store = Store::connect(&url, 8).await.expect("sqlite store");
    TempDb { store, path }
}

fn registration(authority: &str, mode: FrontendMode) -> WorkerSpec {
    let mut spec = crate::domain::fixtures::spec(authority, mode, Protocol::Http);
    spec.port_range = spec.port_range.map(|_| (20000, 20009));
    spec.accepted_traffics = vec![AppMode::Interactive, AppMode::Inference];
    spec
}

fn route(port: u16) -> Route {
    Route {
        route_id: Some(Uuid::new_v4()),
        session_id: Uuid::new_v4(),
        session_name: None,
        kernel_host: "127.0.0.1".into(),
        kernel_port: port,
        protocol: Protocol::Http,
        traffic_ratio: 1.0,
    }
}

fn new_circuit(worker: &crate::domain::Worker, endpoint: Option<Uuid>) -> NewCircuit {
    NewCircuit {
        app: "app".into(),
        protocol: Protocol::Http,
        app_mode: if endpoint.is_some() {
            AppMode::Inference
        } else {
            AppMode::Interactive
        },
        worker_id: worker.id,
        preferred_port: None,
        preferred_subdomain: Some("svc".into()),
        envs: json!({}),
        arguments: None,
        open_to_public: false,
        allowed_client_ips: Vec::new(),
        user_id: None,
        endpoint_id: endpoint,
        runtime_variant: None,
        routes: vec![route(8000)],
        idle_timeout: None,
        auth_plugin: None,
        allowed_origins: Vec::new(),
    }
}

/// Two (here: eight) concurrent first syncs of one endpoint must not leave two circuits: the
/// unique index on `circuits(endpoint_id)` refuses the losers, which learn the winner's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_creates_of_one_endpoint_leave_one_circuit() {
    let db = temp_db().await;
    let store = Arc::new(db.store.clone());
    let w = store
        .upsert_worker(&registration("w", FrontendMode::Wildcard))
        .await
        .unwrap();
    let endpoint = Uuid::new_v4();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, w) = (store.clone(), w.clone());
            tokio::spawn(async move {
                store
                    .create_circuit(&new_circuit(&w, Some(endpoint)), &w)
                    .await
            })
        })
        .collect();
    let mut created = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(c) => created.push(c.id),
            Err(StoreError::EndpointTaken(id)) => assert!(id != Uuid::nil()),
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    let all = store.circuits_of_worker(w.id).await.unwrap();
    assert_eq!(all.len(), 1, "one endpoint, one circuit: {all:?}");
    assert_eq!(created, vec![all[0].id]);
    assert_eq!(
        store
            .circuit_of_endpoint(endpoint)
            .await
            .unwrap()
            .unwrap()
            .id,
        all[0].id
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_allocations_take_distinct_ports_until_the_range_is_full() {
    let db = temp_db().await;
    let store = Arc::new(db.store.clone());
    let w = store
        .upsert_worker(&registration("p", FrontendMode::Port))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (store, w) = (store.clone(), w.clone());
            tokio::spawn(async move { store.create_circuit(&new_circuit(&w, None), &w).await })
        })
        .collect();
    let mut ports = std::collections::BTreeSet::new();
    for t in tasks {
        let c = t.await.unwrap().expect("a free port");
        let Frontend::Port(p) = c.frontend else {
            panic!("port worker gave {:?}", c.frontend)
        };
        assert!(ports.insert(p), "port {p} handed out twice");
    }
    assert_eq!(ports, (20000..=20009).collect());
    assert!(matches!(
        store.create_circuit(&new_circuit(&w, None), &w).await,
        Err(StoreError::NoFreeSlot)
    ));
    // A taken preferred port is refused, not reassigned.
    let mut taken = new_circuit(&w, None);
    taken.preferred_port = Some(20003);
    store
        .delete_circuits(&[store.circuits_of_worker(w.id).await.unwrap()[0].id])
        .await
        .unwrap();
    assert!(matches!(
        store.create_circuit(&taken, &w).await,
        Err(StoreError::SlotTaken(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registrations_of_one_authority_make_one_worker() {
    let db = temp_db().await;
    let store = Arc::new(db.store.clone());
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .upsert_worker(&registration("same", FrontendMode::Port))
                    .await
            })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap().expect("upsert").id);
    }
    assert_eq!(ids.len(), 1);
    let workers = store.list_workers().await.unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].nodes, 8, "every registration counted as a node");
}

/// A reader never sees a half-replaced route set, and a refused replacement (duplicate route
/// id) changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn route_replacement_is_atomic() {
    let db = temp_db().await;
    let store = Arc::new(db.store.clone());
    let w = store
        .upsert_worker(&registration("w", FrontendMode::Wildcard))
        .await
        .unwrap();
    let endpoint = Uuid::new_v4();
    let c = store
        .create_circuit(&new_circuit(&w, Some(endpoint)), &w)
        .await
        .unwrap();
    let a: Vec<Route> = (0..5).map(|i| route(9000 + i)).collect();
    let b: Vec<Route> = (0..5).map(|i| route(9100 + i)).collect();
    store.replace_routes(c.id, &a).await.unwrap();
    let writer = {
        let (store, a, b) = (store.clone(), a.clone(), b.clone());
        tokio::spawn(async move {
            for i in 0..40 {
                let set = if i % 2 == 0 { &b } else { &a };
                store.replace_routes(c.id, set).await.unwrap();
            }
        })
    };
    let ports = |r: &[Route]| r.iter().map(|r| r.kernel_port).collect::<Vec<_>>();
    let (pa, pb) = (ports(&a), ports(&b));
    while !writer.is_finished() {
        let seen = ports(&store.get_circuit(c.id).await.unwrap().unwrap().routes);
        assert!(seen == pa || seen == pb, "half-replaced routes: {seen:?}");
    }
    writer.await.unwrap();
    let before = store.get_circuit(c.id).await.unwrap().unwrap().routes;
    let mut dup = b.clone();
    dup[1].route_id = dup[0].route_id;
    assert!(matches!(
        store.replace_routes(c.id, &dup).await,
        Err(StoreError::DuplicateRoute(_))
    ));
    let after = store.get_circuit(c.id).await.unwrap().unwrap().routes;
    assert_eq!(ports(&before), ports(&after));
}

#[tokio::test]
async fn endpoint_listing_joins_each_endpoint_with_its_circuit() {
    let db = temp_db().await;
    let store = &db.store;
    let w = store
        .upsert_worker(&registration("w", FrontendMode::Wildcard))
        .await
        .unwrap();
    let (with, without) = (Uuid::new_v4(), Uuid::new_v4());
    store
        .upsert_endpoint(with, None, Some(true), None, None)
        .await
        .unwrap();
    store
        .upsert_endpoint(without, None, None, None, None)
        .await
        .unwrap();
    let c = store
        .create_circuit(&new_circuit(&w, Some(with)), &w)
        .await
        .unwrap();
    store
        .create_circuit(&new_circuit(&w, None), &w)
        .await
        .unwrap();
    let mut listed: Vec<(Uuid, Option<Uuid>, bool)> = store
        .list_endpoints()
        .await
        .unwrap()
        .into_iter()
        .map(|(e, c)| (e.id, c.map(|c| c.id), e.sticky))
        .collect();
    // Both were created within the same millisecond, often: compare without the order.
    let mut want = vec![(with, Some(c.id), true), (without, None, false)];
    listed.sort();
    want.sort();
    assert_eq!(listed, want);
    let timed = store
        .db_metrics()
        .seconds
        .with_label_values(&["list_endpoints"]);
    assert_eq!(timed.get_sample_count(), 1, "every store call is timed");
}

/// App filters stored in another shape (before the typed contract) match nothing instead of
/// making the worker unreadable.
#[tokio::test]
async fn a_worker_with_old_shaped_app_filters_still_loads() {
    let db = temp_db().await;
    let store = &db.store;
    let mut spec = registration("w", FrontendMode::Port);
    spec.filtered_apps_only = true;
    let w = store.upsert_worker(&spec).await.unwrap();
    sqlx::query("UPDATE workers SET app_filters = '{\"session.user_uuid\": \"u\"}'")
        .execute(&store.pool)
        .await
        .unwrap();
    let loaded = store.get_worker(w.id).await.unwrap().unwrap();
    assert!(loaded.app_filters.is_empty());
    assert!(
        loaded.filtered_apps_only,
        "an exclusive worker stays exclusive"
    );
    assert_eq!(store.list_workers().await.unwrap().len(), 1);
}

/// A silent worker becomes LOST with no nodes (a crashed process never deregisters); a
/// heartbeat that lands first keeps it ALIVE; a heartbeat revives it with one node.
#[tokio::test]
async fn silent_workers_are_marked_lost_and_heartbeats_revive_them() {
    let db = temp_db().await;
    let store = &db.store;
    let quiet = store
        .upsert_worker(&registration("quiet", FrontendMode::Port))
        .await
        .unwrap();
    store
        .upsert_worker(&registration("quiet", FrontendMode::Port))
        .await
        .unwrap();
    let beating = store
        .upsert_worker(&registration("beating", FrontendMode::Wildcard))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let cutoff = now_ms();
    store.heartbeat_worker(beating.id).await.unwrap();
    let lost = store.mark_lost(cutoff).await.unwrap();
    assert_eq!(
        lost.iter()
            .map(|w| w.authority.as_str())
            .collect::<Vec<_>>(),
        ["quiet"]
    );
    let q = store.get_worker(quiet.id).await.unwrap().unwrap();
    assert_eq!((q.status, q.nodes), (crate::domain::WorkerStatus::Lost, 0));
    assert!(
        store.mark_lost(cutoff).await.unwrap().is_empty(),
        "marked once"
    );
    let back = store.heartbeat_worker(quiet.id).await.unwrap().unwrap();
    assert_eq!(
        (back.status, back.nodes),
        (crate::domain::WorkerStatus::Alive, 1)
    );
}

/// SQLite is single-node: a second provider on the same database file is refused at start
/// with a clear error (two reconcilers would fight over etcd); the file is free again once the
/// first is gone.
#[tokio::test]
async fn a_second_provider_on_one_sqlite_file_is_refused() {
    let path = std::env::temp_dir().join(format!("appproxy-lock-{}.db", Uuid::new_v4()));
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let first = Store::connect(&url, 2).await.expect("the first provider");
    match Store::connect(&url, 2).await {
        Err(StoreError::InUse(m)) => assert!(m.contains("another provider"), "{m}"),
        Err(e) => panic!("unexpected: {e}"),
        Ok(_) => panic!("a second store opened the same SQLite file"),
    }
    let _cleanup = TempDb {
        store: first,
        path: path.clone(),
    };
    drop(_cleanup);
    let again = Store::connect(&url, 2)
        .await
        .expect("free once the first is gone");
    let _cleanup = TempDb { store: again, path };
    assert_eq!(sqlite_path("sqlite::memory:"), None);
    assert_eq!(
        sqlite_path("sqlite://a/b.db?mode=rwc").as_deref(),
        Some("a/b.db")
    );
    assert_eq!(
        sqlite_path("sqlite:///abs/c.db").as_deref(),
        Some("/abs/c.db")
    );
    assert_eq!(sqlite_path("postgres://x/y"), None);
}

/// The circuit map's version moves with every change to a worker's circuits or routes, in
/// SQL (several providers share it), and circuits that leave a worker are listed there as
/// ended — deleted or moved away — while the other worker's version moves too.
#[tokio::test]
async fn map_versions_and_ended_circuits_follow_every_change() {
    let db = temp_db().await;
    let s = &db.store;
    let w1 = s
        .upsert_worker(&registration("w1", FrontendMode::Port))
        .await
        .unwrap();
    let w2 = s
        .upsert_worker(&registration("w2", FrontendMode::Port))
        .await
        .unwrap();
    let version = |w: Uuid| async move { s.map_version(w).await.unwrap().unwrap() };
    let v0 = version(w1.id).await;

    let c = s
        .create_circuit(&new_circuit(&w1, None), &w1)
        .await
        .unwrap();
    let v1 = version(w1.id).await;
    assert!(v1 > v0, "create");
    s.replace_routes(c.id, &[route(9000)]).await.unwrap();
    let v2 = version(w1.id).await;
    assert!(v2 > v1, "routes replaced");
    s.set_auth_plugin(c.id, None).await.unwrap();
    let v3 = version(w1.id).await;
    assert!(v3 > v2, "plugin");
    assert_eq!(s.map_version(Uuid::new_v4()).await.unwrap(), None);

    // Moved to w2: w1 lists it as ended (where its connections went), both versions move.
    let w2_before = version(w2.id).await;
    s.move_circuit(c.id, &w2).await.unwrap().expect("moved");
    assert!(version(w1.id).await > v3 && version(w2.id).await > w2_before);
    let ended = s.ended_since(w1.id, 0).await.unwrap();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].id, c.id);
    assert_eq!(ended[0].backends, vec!["127.0.0.1:9000".to_string()]);
    assert!(s.ended_since(w2.id, 0).await.unwrap().is_empty());

    // Deleted on w2: listed there; a second delete changes nothing.
    let v = version(w2.id).await;
    assert_eq!(s.delete_circuits(&[c.id]).await.unwrap().len(), 1);
    assert!(version(w2.id).await > v);
    assert_eq!(s.ended_since(w2.id, 0).await.unwrap()[0].id, c.id);
    let v = version(w2.id).await;
    assert!(s.delete_circuits(&[c.id]).await.unwrap().is_empty());
    assert_eq!(version(w2.id).await, v);

    // Old entries go with the GC; recent ones stay listed.
    assert!(s.ended_since(w2.id, now_ms() + 1).await.unwrap().is_empty());
    assert_eq!(s.gc_ended(now_ms() + 1).await.unwrap(), 2);
    assert!(s.ended_since(w1.id, 0).await.unwrap().is_empty());
}

/// Ingest and replica-health reports land in SQL, whichever provider received them.
#[tokio::test]
async fn ingest_and_route_health_reports_are_shared() {
    let db = temp_db().await;
    let s = &db.store;
    let w = s
        .upsert_worker(&registration("w1", FrontendMode::Port))
        .await
        .unwrap();
    assert!(s.ingest_reports().await.unwrap().is_empty());
    s.record_ingest(w.id, true, 1234).await.unwrap();
    let r = s.ingest_reports().await.unwrap()[&w.id];
    assert!(r.redis_ok && r.last_flush_ms == 1234 && r.reported_ms > 0);

    let c = Uuid::new_v4();
    let report = std::collections::HashMap::from([(
        c,
        std::collections::BTreeMap::from([("http://10.0.0.1:1".to_string(), "UP".to_string())]),
    )]);
    s.record_route_health(w.id, &report).await.unwrap();
    s.record_route_health(w.id, &report).await.unwrap();
    let got = s.route_health_since(0).await.unwrap();
    assert_eq!(got, vec![(w.id, report)]);
    assert!(s.route_health_since(now_ms() + 1).await.unwrap().is_empty());
}
