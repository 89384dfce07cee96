//! The image of etcd and `plan()`: transaction packing, splitting order, foreign keys.
use super::*;

fn kv(pairs: &[(&str, &str)]) -> render::Kv {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_synced_image_equals_a_fresh_one_and_keeps_unchanged_groups() {
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut first = BTreeMap::new();
    first.insert(Group::Shared, kv(&[("http/services/ap-sentinel/x", "1")]));
    first.insert(Group::Circuit(a), kv(&[("r/a", "1"), ("s/a", "u")]));
    first.insert(Group::Circuit(b), kv(&[("r/b", "1")]));
    let mut image = Image::default();
    image.sync_to(&first);
    let kept = image.groups[&Group::Circuit(a)].as_ptr();
    // b changes value, a stays, c is new, the shared group goes.
    let mut second = BTreeMap::new();
    second.insert(Group::Circuit(a), kv(&[("r/a", "1"), ("s/a", "u")]));
    second.insert(Group::Circuit(b), kv(&[("r/b", "2")]));
    second.insert(Group::Circuit(c), kv(&[("r/c", "1")]));
    image.sync_to(&second);
    let mut fresh = Image::default();
    for (g, kv) in &second {
        fresh.set(*g, kv);
    }
    let sorted = |i: &Image| {
        let mut v: Vec<_> = i.groups.iter().map(|(g, k)| (*g, k.clone())).collect();
        v.sort_by_key(|(g, _)| *g);
        v
    };
    assert_eq!(sorted(&image), sorted(&fresh));
    assert_eq!(image.bytes, fresh.bytes);
    assert_eq!(
        image.groups[&Group::Circuit(a)].as_ptr(),
        kept,
        "an unchanged group keeps its entries"
    );
    // The image answers plan() as etcd would: nothing to do for the same desired state.
    let actual = image.actual_for("t/w./", &second);
    let want: BTreeMap<String, String> = second
        .values()
        .flat_map(|kv| kv.iter().map(|(k, v)| (format!("t/w./{k}"), v.clone())))
        .collect();
    assert_eq!(actual, want);
}

#[test]
fn no_change_no_ops() {
    let id = Uuid::new_v4();
    let name = names::circuit_object(id);
    let mut desired = BTreeMap::new();
    desired.insert(Group::Shared, kv(&[("http/services/ap-sentinel/x", "1")]));
    desired.insert(
        Group::Circuit(id),
        kv(&[(&format!("http/routers/{name}/rule"), "r")]),
    );
    let actual: BTreeMap<String, String> = [
        (
            "t/w./http/services/ap-sentinel/x".to_string(),
            "1".to_string(),
        ),
        (format!("t/w./http/routers/{name}/rule"), "r".to_string()),
    ]
    .into();
    assert!(plan("t/w.", &desired, &actual, 128).is_empty());
}

#[test]
fn packs_groups_and_splits_large_ones_safely() {
    let mut desired = BTreeMap::new();
    desired.insert(Group::Shared, kv(&[("http/services/ap-sentinel/x", "1")]));
    let ids: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        let n = names::circuit_object(*id);
        desired.insert(
            Group::Circuit(*id),
            kv(&[
                (&format!("http/routers/{n}/rule"), "r"),
                (
                    &format!("http/services/{n}/loadBalancer/servers/0/url"),
                    "u",
                ),
            ]),
        );
    }
    // A big circuit with 300 servers.
    let big = Uuid::new_v4();
    let n = names::circuit_object(big);
    let mut bigkv = render::Kv::new();
    bigkv.insert(format!("http/routers/{n}/rule"), "r".into());
    for i in 0..300 {
        bigkv.insert(
            format!("http/services/{n}/loadBalancer/servers/{i}/url"),
            "u".into(),
        );
    }
    desired.insert(Group::Circuit(big), bigkv);
    // A stale circuit and a foreign key.
    let stale = names::circuit_object(Uuid::new_v4());
    let actual: BTreeMap<String, String> = [
        (format!("t/w./http/routers/{stale}/rule"), "r".to_string()),
        (
            format!("t/w./http/services/{stale}/loadBalancer/servers/0/url"),
            "u".to_string(),
        ),
        (
            "t/w./http/routers/evil/bogusField".to_string(),
            "1".to_string(),
        ),
    ]
    .into();
    let batches = plan("t/w.", &desired, &actual, 128);
    assert!(batches.iter().all(|b| b.len() <= 128));
    // Sentinel is written in the first transaction.
    assert!(batches[0].iter().any(|op| op.key().contains("ap-sentinel")));
    // The big circuit's router comes after all of its service keys.
    let flat: Vec<&Op> = batches.iter().flatten().collect();
    let router_pos = flat
        .iter()
        .position(|op| op.key() == format!("t/w./http/routers/{n}/rule"))
        .unwrap();
    let last_service = flat
        .iter()
        .rposition(|op| op.key().contains(&format!("services/{n}/")))
        .unwrap();
    assert!(router_pos > last_service);
    // Each small circuit is whole within one transaction.
    for id in &ids {
        let n = names::circuit_object(*id);
        let holders: Vec<usize> = batches
            .iter()
            .enumerate()
            .filter(|(_, b)| b.iter().any(|op| op.key().contains(&n)))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(holders.len(), 1, "circuit split across transactions");
    }
    // Stale and foreign keys are deleted.
    for k in [
        format!("t/w./http/routers/{stale}/rule"),
        "t/w./http/routers/evil/bogusField".into(),
    ] {
        assert!(flat.contains(&&Op::Delete(k.clone())), "{k} not deleted");
    }
    // 1 + 20 + 301 puts + 3 deletes.
    assert_eq!(flat.len(), 1 + 20 + 301 + 3);
}
