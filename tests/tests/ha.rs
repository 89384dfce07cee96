//! High availability: several providers on one PostgreSQL with a 3-member etcd cluster, and
//! the faults an operator meets. Every test ends with SQL == etcd == what Traefik serves and
//! every acknowledged circuit present.
//!
//! The providers run with a 3 s lease and a 10-minute resync: what goes live in these tests
//! goes live through nudges and term-start full passes, never through the periodic resync.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use e2e::{
    Db, Opts, Stack, TraefikFrontend, backends::HttpEcho, eventually, free_port_range, metrics_text,
};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

/// The providers' lease TTL in these tests.
const TTL: u64 = 3;

async fn ha(providers: usize) -> Stack {
    Stack::start_opts(Opts {
        etcd_members: 3,
        providers,
        provider_extra_env: vec![
            (
                "APPPROXY_PROVIDER__HA__LEASE_TTL_SECONDS".into(),
                TTL.to_string(),
            ),
            (
                "APPPROXY_PROVIDER__RECONCILE__RESYNC_SECONDS".into(),
                "600".into(),
            ),
        ],
        ..Opts::new(Db::Postgres)
    })
    .await
}

fn port_worker(authority: &str, lo: u16, hi: u16) -> Value {
    json!({
        "authority": authority, "frontend_mode": "port", "protocol": "http",
        "hostname": "127.0.0.1", "api_port": 10201, "port_range": [lo, hi],
        "accepted_traffics": ["interactive", "inference"],
    })
}

/// A port worker `authority` with `ports` ports and its Traefik; (worker id, Traefik).
async fn worker(stack: &Stack, authority: &str, ports: u16) -> (String, e2e::Traefik) {
    let (lo, hi) = free_port_range(ports);
    let w = stack.register_worker(port_worker(authority, lo, hi)).await;
    let traefik = stack
        .start_traefik(authority, TraefikFrontend::Ports { lo, hi })
        .await;
    (w["id"].as_str().expect("worker id").to_string(), traefik)
}

fn body(worker: Option<&str>, backend: u16) -> Value {
    let mut b = json!({
        "app": "jupyter", "protocol": "http", "user_id": Uuid::new_v4(), "open_to_public": true,
        "routes": [{"session_id": Uuid::new_v4(), "kernel_host": "127.0.0.1", "kernel_port": backend}],
    });
    if let Some(w) = worker {
        b["worker"] = json!(w);
    }
    b
}

/// `POST /v2/circuits` at provider `i`: `Ok((status, body))`, `Err` on a transport failure.
async fn create_at(stack: &Stack, i: usize, body: &Value) -> Result<(u16, Value), String> {
    let r = (stack.http)
        .post(format!("{}/v2/circuits", stack.provider_url_at(i)))
        .header("X-BackendAI-Token", &stack.manager_token)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let v = r.json::<Value>().await.map_err(|e| e.to_string())?;
    Ok((status, v))
}

async fn created(stack: &Stack, i: usize, body: &Value) -> Value {
    let (s, v) = create_at(stack, i, body).await.expect("provider answers");
    assert_eq!(s, 201, "create through provider {i}: {v}");
    v
}

/// Wait until exactly one of `among` leads and the others name it; its index.
async fn leader(stack: &Stack, among: &[usize], limit: Duration) -> usize {
    eventually("one leader that every replica names", limit, || async {
        let mut leaders = Vec::new();
        let mut named = BTreeSet::new();
        for &i in among {
            let s = stack.provider_status(i).await?;
            if s["leader"] == true {
                leaders.push(i);
            }
            named.insert(s["leader_id"].as_str()?.to_string());
        }
        (leaders.len() == 1 && named.len() == 1).then(|| leaders[0])
    })
    .await
}

async fn served(stack: &Stack, port: u64) -> bool {
    (stack.http)
        .get(format!("http://127.0.0.1:{port}/"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A worker-API `GET` of the circuit map at provider `i`: (status, ETag, body).
async fn map_at(stack: &Stack, i: usize, worker: &str, etag: Option<&str>) -> (u16, String, Value) {
    let mut req = (stack.http)
        .get(format!(
            "{}/api/worker/{worker}/circuits?view=map",
            stack.provider_url_at(i)
        ))
        .header(
            "X-BackendAI-Token",
            stack.worker_token.as_deref().expect("legacy token"),
        );
    if let Some(e) = etag {
        req = req.header("if-none-match", e);
    }
    let r = req.send().await.expect("map");
    let status = r.status().as_u16();
    let tag = (r.headers().get("etag"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, tag, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_write_through_a_follower_goes_live_at_once_and_every_replica_serves_one_map() {
    let stack = ha(2).await;
    let l = leader(&stack, &[0, 1], e2e::patience()).await;
    let f = 1 - l;
    let (wid, traefik) = worker(&stack, "w1", 20).await;
    let backend = HttpEcho::start("b").await;

    // Through the follower: live within a moment (the resync is 10 minutes away).
    let started = Instant::now();
    let c = created(&stack, f, &body(Some("w1"), backend.port)).await;
    let port = c["frontend"]["port"].as_u64().expect("port");
    eventually("served", Duration::from_secs(5), || async {
        served(&stack, port).await.then_some(())
    })
    .await;
    let through_follower = started.elapsed();
    assert!(
        through_follower < Duration::from_secs(3),
        "create → live through the follower took {through_follower:?}"
    );
    let text = metrics_text(&stack.http, &stack.provider_url_at(l)).await;
    assert!(
        metric(&text, "appproxy_provider_nudges_received_total") >= 1.0,
        "the leader heard the follower's nudge"
    );

    // /status: one leader, named by both.
    let (a, b) = (
        stack.provider_status(l).await.unwrap(),
        stack.provider_status(f).await.unwrap(),
    );
    assert_eq!(a["leader"], true);
    assert_eq!(b["leader"], false);
    assert_eq!(a["leader_id"], a["node_id"]);
    assert_eq!(b["leader_id"], a["node_id"]);

    // One map version for both replicas; a change through one is seen through the other.
    let (s1, tag_l, map) = map_at(&stack, l, &wid, None).await;
    let (_, tag_f, _) = map_at(&stack, f, &wid, None).await;
    assert_eq!(
        (s1, &tag_l),
        (200, &tag_f),
        "both replicas tag the map alike"
    );
    assert_eq!(map["circuits"].as_array().map(Vec::len), Some(1));
    assert_eq!(map_at(&stack, f, &wid, Some(&tag_l)).await.0, 304);
    let id = c["id"].as_str().unwrap();
    let (s, v) = stack
        .call(
            Some(&stack.manager_token.clone()),
            Method::DELETE,
            &format!("/v2/circuits/{id}"),
            None,
        )
        .await;
    assert!(s == 200 || s == 204, "delete: {s} {v}");
    let (s2, tag2, map) = map_at(&stack, f, &wid, Some(&tag_l)).await;
    assert_eq!(
        s2, 200,
        "a deletion through one replica changes the other's tag"
    );
    assert_ne!(tag2, tag_l);
    assert_eq!(map["circuits"].as_array().map(Vec::len), Some(0));
    assert_eq!(map["ended"][0]["id"], id, "the ended list is shared: {map}");
    stack.assert_agree(&traefik, "w1").await;
}

#[tokio::test]
async fn leader_killed_mid_burst_a_follower_takes_over_and_nothing_is_lost() {
    let mut stack = ha(2).await;
    let l = leader(&stack, &[0, 1], e2e::patience()).await;
    let f = 1 - l;
    let (_, traefik) = worker(&stack, "w1", 300).await;
    let backend = HttpEcho::start("b").await;
    let b = body(Some("w1"), backend.port);

    // Creates alternate between the replicas; the killed one is dropped at its first failure.
    let burst = {
        let (http, urls, token, b) = (
            stack.http.clone(),
            [stack.provider_url_at(0), stack.provider_url_at(1)],
            stack.manager_token.clone(),
            b.clone(),
        );
        tokio::spawn(async move {
            let (mut acked, mut refused, mut alive) = (Vec::new(), Vec::new(), [true, true]);
            for n in 0..200 {
                let i = if alive[n % 2] { n % 2 } else { 1 - n % 2 };
                let r = http
                    .post(format!("{}/v2/circuits", urls[i]))
                    .header("X-BackendAI-Token", &token)
                    .json(&b)
                    .send()
                    .await;
                let r = match r {
                    Ok(r) => r,
                    Err(_) => {
                        alive[i] = false;
                        continue;
                    }
                };
                let status = r.status().as_u16();
                match r.json::<Value>().await {
                    Ok(v) if status == 201 => acked.push(v["id"].as_str().unwrap().to_string()),
                    Ok(v) => refused.push(format!("{status} {v}")),
                    Err(_) => alive[i] = false,
                }
            }
            (acked, refused)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.kill_provider_at(l);
    let killed = Instant::now();
    let takeover = {
        let stack = &stack;
        eventually(
            "the follower leads",
            Duration::from_secs(TTL + 5),
            || async {
                (stack.provider_status(f).await?["leader"] == true).then(|| killed.elapsed())
            },
        )
        .await
    };
    assert!(
        takeover <= Duration::from_secs(TTL + 1),
        "takeover took {takeover:?} (lease {TTL} s)"
    );
    let (acked, refused) = burst.await.unwrap();
    assert!(refused.is_empty(), "creates refused: {refused:?}");
    assert!(acked.len() > 100, "only {} acknowledged", acked.len());
    stack.use_provider(f);
    let sql = stack.circuit_ids("w1").await;
    for id in &acked {
        assert!(sql.contains(id), "acknowledged {id} lost");
    }
    stack.assert_agree(&traefik, "w1").await;

    // The old leader comes back as a follower.
    stack.start_provider_at(l);
    assert_eq!(leader(&stack, &[0, 1], e2e::patience()).await, f);
}

#[tokio::test]
async fn a_leader_paused_past_its_lease_never_writes_again() {
    let mut stack = ha(2).await;
    let l = leader(&stack, &[0, 1], e2e::patience()).await;
    let f = 1 - l;
    stack.use_provider(f);
    let (_, traefik) = worker(&stack, "w1", 20).await;
    let backend = HttpEcho::start("b").await;
    let first = created(&stack, f, &body(Some("w1"), backend.port)).await;
    stack.assert_agree(&traefik, "w1").await;
    let before = metrics_text(&stack.http, &stack.provider_url_at(l)).await;
    let txns_before = metric(&before, "appproxy_provider_etcd_txns_total");

    e2e::signal(stack.provider_pid(l), "-STOP");
    let paused = Instant::now();
    eventually(
        "the follower leads",
        Duration::from_secs(TTL + 5),
        || async { (stack.provider_status(f).await?["leader"] == true).then_some(()) },
    )
    .await;
    // The new leader changes things the paused one still has an image of.
    let id = first["id"].as_str().unwrap();
    let (s, _) = stack
        .manager(Method::DELETE, &format!("/v2/circuits/{id}"), None)
        .await;
    assert!(s == 200 || s == 204);
    created(&stack, f, &body(Some("w1"), backend.port)).await;
    stack.assert_agree(&traefik, "w1").await;
    // A request waits in the paused process's socket: handled when it wakes, it writes SQL
    // and nudges its own reconciler — which must not reach etcd.
    let pending = {
        let (http, url, token, b) = (
            stack.http.clone(),
            stack.provider_url_at(l),
            stack.manager_token.clone(),
            body(Some("w1"), backend.port),
        );
        tokio::spawn(async move {
            let r = http
                .post(format!("{url}/v2/circuits"))
                .header("X-BackendAI-Token", token)
                .timeout(Duration::from_secs(30))
                .json(&b)
                .send()
                .await
                .expect("answered after resuming");
            r.status().as_u16()
        })
    };
    tokio::time::sleep(Duration::from_secs(TTL).saturating_sub(paused.elapsed())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    e2e::signal(stack.provider_pid(l), "-CONT");
    assert_eq!(pending.await.unwrap(), 201, "a follower still takes writes");
    eventually("the old leader follows", e2e::patience(), || async {
        let s = stack.provider_status(l).await?;
        (s["leader"] == false).then_some(())
    })
    .await;
    // Its write went live through the new leader (the nudge crossed over), and SQL, etcd
    // and Traefik agree.
    stack.assert_agree(&traefik, "w1").await;
    let after = metrics_text(&stack.http, &stack.provider_url_at(l)).await;
    assert_eq!(
        metric(&after, "appproxy_provider_etcd_txns_total"),
        txns_before,
        "the deposed leader applied an etcd transaction after its lease ran out"
    );
    assert_eq!(leader(&stack, &[0, 1], e2e::patience()).await, f);
}

#[tokio::test]
async fn a_fence_refuses_the_writes_of_a_deposed_leader() {
    use appproxy_provider::etcd::{Campaign, Kv, KvError, Op};
    let dir = e2e::TempDir::new("fence");
    let cluster = e2e::etcd::EtcdCluster::start(dir.path(), 1);
    let cfg = appproxy_provider::config::EtcdConfig {
        endpoints: cluster.endpoints(),
        ..Default::default()
    };
    let kv = Kv::connect(&cfg).await.expect("etcd");
    let ttl = Duration::from_secs(2);
    let put = |v: &str| vec![Op::Put("fenced/x".into(), v.into())];
    let Campaign::Won { lease, fence: old } = kv.campaign("fence/leader", "a", ttl).await.unwrap()
    else {
        panic!("the first campaign wins");
    };
    assert!(matches!(
        kv.campaign("fence/leader", "b", ttl).await.unwrap(),
        Campaign::Held { ref leader, .. } if leader == "a"
    ));
    kv.txn_fenced(&put("1"), Some(&old))
        .await
        .expect("the leader writes");
    kv.revoke(lease).await;
    assert!(matches!(
        kv.txn_fenced(&put("2"), Some(&old)).await,
        Err(KvError::Fenced)
    ));
    let Campaign::Won { fence: new, .. } = kv.campaign("fence/leader", "b", ttl).await.unwrap()
    else {
        panic!("b wins the free key");
    };
    assert_ne!(new, old);
    assert!(matches!(
        kv.txn_fenced(&put("3"), Some(&old)).await,
        Err(KvError::Fenced)
    ));
    kv.txn_fenced(&put("4"), Some(&new))
        .await
        .expect("b writes");
    let got = kv.get_prefix("fenced/").await.unwrap();
    assert_eq!(got.get("fenced/x").map(String::as_str), Some("4"));
}

#[tokio::test]
async fn traefik_restarted_serves_everything_again() {
    let stack = ha(1).await;
    let (_, mut traefik) = worker(&stack, "w1", 20).await;
    let backend = HttpEcho::start("b").await;
    let mut ports = Vec::new();
    for _ in 0..5 {
        let c = created(&stack, 0, &body(Some("w1"), backend.port)).await;
        ports.push(c["frontend"]["port"].as_u64().unwrap());
    }
    stack.assert_agree(&traefik, "w1").await;
    traefik.restart();
    stack.assert_agree(&traefik, "w1").await;
    for p in ports {
        eventually("served after the restart", e2e::patience(), || async {
            served(&stack, p).await.then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn an_etcd_member_lost_then_replaced_empty_changes_nothing() {
    let mut stack = ha(2).await;
    leader(&stack, &[0, 1], e2e::patience()).await;
    let (_, traefik) = worker(&stack, "w1", 40).await;
    let backend = HttpEcho::start("b").await;
    for i in 0..3 {
        created(&stack, i % 2, &body(Some("w1"), backend.port)).await;
    }
    stack.assert_agree(&traefik, "w1").await;

    // One member down — the one leading raft, the worst case: nothing visible changes.
    let lost = stack.etcd.raft_leader().await;
    stack.etcd.kill(lost);
    for i in 0..3 {
        created(&stack, i % 2, &body(Some("w1"), backend.port)).await;
    }
    stack.assert_agree(&traefik, "w1").await;

    // Its disk is lost: replaced by an empty member, which catches up from the others.
    stack.etcd.replace(lost).await;
    // Now another member goes: the replaced one must carry the data for the quorum.
    let other = (lost + 1) % 3;
    stack.etcd.kill(other);
    let mut last = 0;
    for i in 0..3 {
        let c = created(&stack, i % 2, &body(Some("w1"), backend.port)).await;
        last = c["frontend"]["port"].as_u64().unwrap();
    }
    stack.assert_agree(&traefik, "w1").await;
    eventually("served", e2e::patience(), || async {
        served(&stack, last).await.then_some(())
    })
    .await;
    stack.etcd.restart(other);
    leader(&stack, &[0, 1], e2e::patience()).await;
    stack.assert_agree(&traefik, "w1").await;
}

#[tokio::test]
async fn losing_etcd_quorum_refuses_creates_and_loses_nothing() {
    let mut stack = ha(2).await;
    leader(&stack, &[0, 1], e2e::patience()).await;
    let (_, traefik) = worker(&stack, "w1", 60).await;
    let backend = HttpEcho::start("b").await;
    let mut acked = Vec::new();
    for i in 0..3 {
        let c = created(&stack, i % 2, &body(Some("w1"), backend.port)).await;
        acked.push(c["id"].as_str().unwrap().to_string());
    }
    stack.assert_agree(&traefik, "w1").await;

    stack.etcd.kill(1);
    stack.etcd.kill(2);
    // Until the providers notice, a create may still be acknowledged: it must not be lost.
    let deadline = Instant::now() + Duration::from_secs(20);
    let refusal = loop {
        assert!(
            Instant::now() < deadline,
            "creates still accepted without a quorum"
        );
        match create_at(&stack, 0, &body(Some("w1"), backend.port)).await {
            Ok((201, v)) => acked.push(v["id"].as_str().unwrap().to_string()),
            Ok((503, v)) => break v,
            Ok((s, v)) => panic!("unexpected {s}: {v}"),
            Err(e) => panic!("the provider does not answer: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        refusal["type"],
        "https://api.backend.ai/probs/service-unavailable"
    );
    assert!(
        refusal["msg"].as_str().unwrap_or_default().contains("etcd"),
        "the refusal says why: {refusal}"
    );
    // The other replica probes on its own: it refuses too, within its probe interval.
    loop {
        assert!(
            Instant::now() < deadline,
            "provider 1 accepts without a quorum"
        );
        match create_at(&stack, 1, &body(Some("w1"), backend.port)).await {
            Ok((201, v)) => acked.push(v["id"].as_str().unwrap().to_string()),
            Ok((503, _)) => break,
            other => panic!("unexpected {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    stack.etcd.restart(1);
    stack.etcd.restart(2);
    let c = eventually(
        "creates accepted again",
        Duration::from_secs(30),
        || async {
            match create_at(&stack, 1, &body(Some("w1"), backend.port)).await {
                Ok((201, v)) => Some(v),
                _ => None,
            }
        },
    )
    .await;
    acked.push(c["id"].as_str().unwrap().to_string());
    let sql = stack.circuit_ids("w1").await;
    for id in &acked {
        assert!(sql.contains(id), "acknowledged {id} lost");
    }
    stack.assert_agree(&traefik, "w1").await;
}

#[tokio::test]
async fn an_etcd_cluster_restarted_empty_is_projected_again() {
    let mut stack = ha(2).await;
    leader(&stack, &[0, 1], e2e::patience()).await;
    let (_, traefik) = worker(&stack, "w1", 20).await;
    let backend = HttpEcho::start("b").await;
    let mut ports = Vec::new();
    for i in 0..4 {
        let c = created(&stack, i % 2, &body(Some("w1"), backend.port)).await;
        ports.push(c["frontend"]["port"].as_u64().unwrap());
    }
    stack.assert_agree(&traefik, "w1").await;
    let cluster_id = |c: etcd_client::MemberListResponse| c.header().map(|h| h.cluster_id());
    let before = cluster_id(stack.etcd_client().await.member_list().await.unwrap());
    stack.etcd.restart_empty();
    let after = cluster_id(stack.etcd_client().await.member_list().await.unwrap());
    assert_ne!(
        before, after,
        "a new cluster (its keys came from the providers)"
    );
    leader(&stack, &[0, 1], e2e::patience()).await;
    stack.assert_agree(&traefik, "w1").await;
    for p in ports {
        eventually("served again", e2e::patience(), || async {
            served(&stack, p).await.then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn postgres_restarted_requests_fail_cleanly_then_recover() {
    let mut stack = ha(2).await;
    leader(&stack, &[0, 1], e2e::patience()).await;
    let (_, traefik) = worker(&stack, "w1", 20).await;
    let backend = HttpEcho::start("b").await;
    let kept = created(&stack, 0, &body(Some("w1"), backend.port)).await;
    stack.assert_agree(&traefik, "w1").await;

    stack.stop_postgres();
    for i in 0..2 {
        let (s, v) = create_at(&stack, i, &body(Some("w1"), backend.port))
            .await
            .expect("the provider answers without its database");
        assert_eq!(s, 503, "create without a database: {v}");
        assert_eq!(
            v["type"],
            "https://api.backend.ai/probs/service-unavailable"
        );
    }
    // Traffic does not depend on the database.
    assert!(served(&stack, kept["frontend"]["port"].as_u64().unwrap()).await);

    stack.restart_postgres();
    for i in 0..2 {
        eventually("creates work again", Duration::from_secs(30), || async {
            let r = create_at(&stack, i, &body(Some("w1"), backend.port)).await;
            matches!(r, Ok((201, _))).then_some(())
        })
        .await;
    }
    stack.assert_agree(&traefik, "w1").await;
}

#[tokio::test]
async fn two_workers_share_the_load_and_one_failing_leaves_the_other_serving() {
    let stack = ha(2).await;
    leader(&stack, &[0, 1], e2e::patience()).await;
    let (_, mut t1) = worker(&stack, "w1", 20).await;
    let (_, t2) = worker(&stack, "w2", 20).await;
    let backend = HttpEcho::start("b").await;
    let mut on = std::collections::BTreeMap::<String, Vec<u64>>::new();
    for i in 0..6 {
        let c = created(&stack, i % 2, &body(None, backend.port)).await;
        let w = c["worker"].as_str().unwrap_or_default().to_string();
        on.entry(w)
            .or_default()
            .push(c["frontend"]["port"].as_u64().unwrap());
    }
    assert_eq!(
        on.len(),
        2,
        "placement spreads circuits over both workers: {on:?}"
    );
    assert!(on.values().all(|p| p.len() == 3), "evenly: {on:?}");
    stack.assert_agree(&t1, "w1").await;
    stack.assert_agree(&t2, "w2").await;

    // Worker 1's Traefik dies: worker 2 serves on, untouched.
    t1.proc.kill();
    for p in on.get("w2").into_iter().flatten() {
        assert!(served(&stack, *p).await, "w2 port {p}");
    }
    created(&stack, 1, &body(Some("w2"), backend.port)).await;
    stack.assert_agree(&t2, "w2").await;
    t1.restart();
    stack.assert_agree(&t1, "w1").await;
}
