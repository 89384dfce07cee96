//! High availability: create → live through the leader and through a follower (a follower's
//! write reaches the leader's reconciler over PostgreSQL `NOTIFY`), and recovery after the
//! leader is killed (-9): until another provider leads, and until a create through the
//! survivor is live. Its own stack: PostgreSQL, a 3-member etcd, two providers with the
//! default 5 s lease, one wildcard worker with its Traefik.

use std::time::{Duration, Instant};

use appproxy_common::wire::{CreateCircuitRequest, RouteRequest};
use e2e::{Db, Opts, Stack, TraefikFrontend, backends::HttpEcho};
use serde_json::json;
use uuid::Uuid;

use crate::{
    Sizes,
    probes::{ms, pct, until_200},
    report::Ha,
};

const DOMAIN: &str = ".ha.test";

/// The provider that leads now (bounded wait).
async fn leader(stack: &Stack) -> usize {
    (stack.leading_provider(Duration::from_secs(30)).await).expect("a provider leads")
}

fn request(sub: &str, backend: u16) -> CreateCircuitRequest {
    let route = RouteRequest::to(Uuid::new_v4(), "127.0.0.1", backend);
    let mut req = CreateCircuitRequest::new("bench", Uuid::new_v4(), vec![route]);
    req.worker = Some("haw".into());
    req.open_to_public = true;
    req.subdomain = Some(sub.into());
    req
}

pub(crate) async fn run(sz: &Sizes) -> Ha {
    let mut stack = Stack::start_opts(Opts {
        etcd_members: 3,
        providers: 2,
        ..Opts::new(Db::Postgres)
    })
    .await;
    let apps = e2e::free_port();
    stack
        .register_worker(json!({
            "authority": "haw", "frontend_mode": "wildcard", "protocol": "http",
            "hostname": "127.0.0.1", "api_port": 1, "wildcard_domain": DOMAIN,
            "wildcard_traffic_port": apps,
        }))
        .await;
    let _traefik = stack
        .start_traefik("haw", TraefikFrontend::Wildcard { port: apps })
        .await;
    let echo = HttpEcho::start("ha").await;
    let http = e2e::no_redirect_client();
    let mut n = 0;
    let (mut through_leader, mut through_follower) = (Vec::new(), Vec::new());
    let l = leader(&stack).await;
    for i in 0..sz.samples * 2 {
        // Alternate, spaced past Traefik's 100 ms provider throttle (as the live figure).
        tokio::time::sleep(Duration::from_millis(250)).await;
        let via = if i % 2 == 0 { l } else { 1 - l };
        stack.use_provider(via);
        n += 1;
        let sub = format!("h{n}");
        let t = Instant::now();
        stack.create(&request(&sub, echo.port)).await;
        until_200(&http, apps, &format!("{sub}{DOMAIN}")).await;
        let took = ms(t.elapsed());
        if via == l {
            through_leader.push(took);
        } else {
            through_follower.push(took);
        }
    }
    let (mut takeover, mut to_live) = (Vec::new(), Vec::new());
    for _ in 0..sz.kills {
        let l = leader(&stack).await;
        stack.kill_provider_at(l);
        let killed = Instant::now();
        // A create through the survivor, right away: acknowledged at once, live once the
        // survivor leads (its first full pass, or the nudge after it).
        stack.use_provider(1 - l);
        n += 1;
        let sub = format!("h{n}");
        stack.create(&request(&sub, echo.port)).await;
        let new = leader(&stack).await;
        assert_ne!(new, l);
        takeover.push(killed.elapsed().as_secs_f64());
        until_200(&http, apps, &format!("{sub}{DOMAIN}")).await;
        to_live.push(killed.elapsed().as_secs_f64());
        stack.start_provider_at(l);
    }
    println!(
        "HA: create → live p50 {:.1} ms through the leader, {:.1} ms through a follower; leader kill → new leader p50 {:.2} s, → a create through the survivor live p50 {:.2} s ({} kills, lease 5 s)",
        pct(&through_leader, 0.5),
        pct(&through_follower, 0.5),
        pct(&takeover, 0.5),
        pct(&to_live, 0.5),
        takeover.len()
    );
    Ha {
        leader_ms: through_leader,
        follower_ms: through_follower,
        takeover_s: takeover,
        kill_to_live_s: to_live,
        lease_ttl_s: 5,
    }
}
