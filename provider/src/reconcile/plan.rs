//! `plan()`: the pure diff of a worker's desired keys against etcd's, cut into transactions.

use std::collections::BTreeMap;

use crate::{
    etcd::Op,
    render::{self, Group},
};

/// The transactions that turn `actual` (full keys) into `desired` (relative keys per group).
///
/// Shared objects go first, so the sentinel exists before any deletion. Each group is one
/// transaction, and whole groups are packed together up to `max_ops`. A group larger than
/// `max_ops` is split in an order that never exposes a router without its service or
/// middlewares: non-router puts, then router changes, then non-router deletes. Keys under the
/// root that belong to no group are deleted (they could poison Traefik's decoder).
pub fn plan(
    root: &str,
    desired: &BTreeMap<Group, render::Kv>,
    actual: &BTreeMap<String, String>,
    max_ops: usize,
) -> Vec<Vec<Op>> {
    let prefix = format!("{root}/");
    let mut per_group: BTreeMap<Option<Group>, Vec<Op>> = BTreeMap::new();
    for (group, kv) in desired {
        for (rel, value) in kv {
            let key = format!("{prefix}{rel}");
            if actual.get(&key) != Some(value) {
                per_group
                    .entry(Some(*group))
                    .or_default()
                    .push(Op::Put(key, value.clone()));
            }
        }
    }
    for key in actual.keys() {
        let rel = key.get(prefix.len()..).unwrap_or("");
        let group = render::group_of(rel);
        let wanted = group
            .and_then(|g| desired.get(&g))
            .is_some_and(|kv| kv.contains_key(rel));
        if !wanted {
            per_group
                .entry(group)
                .or_default()
                .push(Op::Delete(key.clone()));
        }
    }
    // Shared first (Some(Shared) sorts before circuits; None = unknown keys last).
    let mut ordered: Vec<(Option<Group>, Vec<Op>)> = per_group.into_iter().collect();
    ordered.sort_by_key(|(g, _)| match g {
        Some(Group::Shared) => 0,
        Some(Group::Circuit(_)) => 1,
        None => 2,
    });
    let mut batches: Vec<Vec<Op>> = Vec::new();
    let mut current: Vec<Op> = Vec::new();
    for (_, mut ops) in ordered {
        if ops.len() > max_ops {
            if !current.is_empty() {
                batches.push(std::mem::take(&mut current));
            }
            ops.sort_by_key(|op| {
                let router = op.key().contains("/routers/");
                match (op, router) {
                    (Op::Put(..), false) => 0,
                    (_, true) => 1,
                    (Op::Delete(_), false) => 2,
                }
            });
            for chunk in ops.chunks(max_ops) {
                batches.push(chunk.to_vec());
            }
            continue;
        }
        if current.len() + ops.len() > max_ops {
            batches.push(std::mem::take(&mut current));
        }
        current.extend(ops);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}
