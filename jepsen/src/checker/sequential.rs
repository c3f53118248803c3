//! Sequential creates under retries: each create of a persistent sequential node
//! carries a value unique to that operation as its data. After the run, the children
//! are read once (`final` event, items `name=data`). Checked: every acknowledged create
//! is there with its data, no two acknowledged creates got one name, no operation left
//! two nodes (a retried create must return the first result), no node comes from a
//! create that definitely failed or from nowhere (no orphans), sequence numbers of
//! creates increase in real-time order, and the numbers have no gap: corral's counter
//! advances only when a sequential create is applied (a failed one consumes no number,
//! unlike a ZooKeeper cversion moved by deletes) and nothing deletes these nodes.

use super::{Check, Validity};
use crate::history::{pairs, Event, Kind};
use std::collections::{BTreeMap, HashMap};

/// The sequence number at the end of a sequential node's name.
pub fn sequence_of(name: &str) -> Option<u64> {
    let digits = name.len().checked_sub(10)?;
    name.get(digits..)?.parse().ok()
}

pub fn check(history: &[Event], workload: &str) -> Check {
    let mut c = Check::new("sequential: unique, gapless, no orphans");
    // value -> (outcome, path if ok, call, ret, invoke index)
    type Create = (Kind, Option<String>, u64, Option<u64>, u64);
    let mut ops: HashMap<u64, Create> = HashMap::new();
    let mut by_path: HashMap<String, u64> = HashMap::new();
    for p in pairs(history, workload)
        .into_iter()
        .filter(|p| p.invoke.f == "create")
    {
        let Some(value) = p.invoke.value else {
            c.fail(format!(
                "event {}: a create without a value",
                p.invoke.index
            ));
            continue;
        };
        let path = p.done.and_then(|d| d.path.clone());
        if let Some(first) = ops.get(&value) {
            // Values identify creates: a reused one would let one create stand for
            // another (a harness bug).
            c.fail(format!(
                "value {value} was used by two creates (events {} and {}): the check \
                 cannot tell them apart",
                first.4, p.invoke.index
            ));
        }
        if p.outcome() == Kind::Ok && path.is_none() {
            c.fail(format!(
                "event {}: an acknowledged create without a path",
                p.done.map_or(p.invoke.index, |d| d.index)
            ));
        }
        c.count(
            match p.outcome() {
                Kind::Ok => "creates ok",
                Kind::Fail => "creates failed",
                _ => "creates indeterminate",
            },
            1,
        );
        if p.outcome() == Kind::Ok {
            if let Some(path) = &path {
                if let Some(other) = by_path.insert(path.clone(), value) {
                    c.fail(format!(
                        "{path} acknowledged to two creates (values {other} and {value})"
                    ));
                }
            }
        }
        ops.entry(value)
            .or_insert((p.outcome(), path, p.invoke.time, p.ret(), p.invoke.index));
    }
    let Some(last) = history
        .iter()
        .rev()
        .find(|e| e.workload == workload && e.kind == Kind::Event && e.f == "final")
    else {
        c.valid = Validity::Unknown;
        c.notes
            .push("no final read of the children: nothing to compare with".into());
        return c;
    };
    let items = last.items.clone().unwrap_or_default();
    c.count("nodes at the end", items.len() as u64);
    // data value -> names
    let mut nodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut names: HashMap<String, u64> = HashMap::new();
    for item in &items {
        let (name, data) = item.split_once('=').unwrap_or((item.as_str(), ""));
        match data.parse::<u64>() {
            Ok(v) => {
                nodes.entry(v).or_default().push(name.to_string());
                names.insert(name.to_string(), v);
            }
            Err(_) => c.fail(format!(
                "node {name} holds {data:?}, not a value of any create"
            )),
        }
    }
    for (value, list) in &nodes {
        if list.len() > 1 {
            c.fail(format!(
                "the create of value {value} left {} nodes: {list:?} (a retry was applied twice)",
                list.len()
            ));
        }
        match ops.get(value) {
            None => c.fail(format!(
                "orphan: {list:?} holds {value}, which no create wrote"
            )),
            Some((Kind::Fail, _, _, _, idx)) => c.fail(format!(
                "{list:?} exists although its create (event {idx}) failed"
            )),
            _ => {}
        }
    }
    let mut order: Vec<(u64, u64, u64, u64)> = Vec::new(); // call, ret, seq, index
    for (value, (kind, path, call, ret, idx)) in &ops {
        if *kind != Kind::Ok {
            continue;
        }
        let Some(path) = path else { continue };
        let name = path.rsplit('/').next().unwrap_or(path);
        match names.get(name) {
            None => c.fail(format!(
                "{path} was acknowledged (event {idx}) but is gone at the end"
            )),
            Some(v) if v != value => c.fail(format!(
                "{path} was acknowledged for value {value} but holds {v}"
            )),
            Some(_) => {}
        }
        if let (Some(seq), Some(ret)) = (sequence_of(name), ret) {
            order.push((*call, *ret, seq, *idx));
        }
    }
    // Gaps: numbers below the highest that no node holds. The parent's counter
    // advances only when a sequential create is applied (server/src/machine.rs; a
    // failed create, a rolled-back multi consume no number) and nothing deletes these
    // nodes, so every number below the highest was given to a node that must still be
    // there: a gap is a node that vanished (or a counter that skipped).
    let seqs: std::collections::BTreeSet<u64> =
        names.keys().filter_map(|n| sequence_of(n)).collect();
    if let Some(&max) = seqs.iter().next_back() {
        let gaps = max + 1 - seqs.len() as u64;
        c.count("gaps", gaps);
        if gaps > 0 {
            let first: Vec<u64> = (0..max).filter(|n| !seqs.contains(n)).take(5).collect();
            c.fail(format!(
                "{gaps} numbers below the highest ({max}) are held by no node (first: \
                 {first:?}): each was given to an applied create, and nothing deletes them"
            ));
        }
    }
    // Real-time order of sequence numbers.
    let mut by_ret = order.clone();
    by_ret.sort_by_key(|o| o.1);
    order.sort_by_key(|o| o.0);
    let mut best: Option<(u64, u64)> = None;
    let mut i = 0;
    for o in &order {
        while i < by_ret.len() && by_ret[i].1 < o.0 {
            if best.is_none_or(|(s, _)| by_ret[i].2 > s) {
                best = Some((by_ret[i].2, by_ret[i].3));
            }
            i += 1;
        }
        if let Some((s, idx)) = best {
            if o.2 <= s {
                c.fail(format!(
                    "create (event {}) got number {} after a create that had completed got {s} \
                     (event {idx})",
                    o.3, o.2
                ));
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(time: u64, process: u64, value: u64) -> Event {
        let mut e = Event::new(time, process, "sequential", Kind::Invoke, "create");
        e.value = Some(value);
        e
    }

    fn done(time: u64, process: u64, kind: Kind, path: Option<&str>) -> Event {
        let mut e = Event::new(time, process, "sequential", kind, "create");
        e.path = path.map(str::to_string);
        e
    }

    fn fin(items: &[&str]) -> Event {
        let mut e = Event::new(100, 99, "sequential", Kind::Event, "final");
        e.items = Some(items.iter().map(|s| s.to_string()).collect());
        e
    }

    fn base() -> Vec<Event> {
        vec![
            create(0, 1, 101),
            done(1, 1, Kind::Ok, Some("/s/item-0000000000")),
            create(2, 2, 201),
            done(3, 2, Kind::Info, None),
            create(4, 1, 102),
            done(5, 1, Kind::Fail, None),
            create(6, 1, 103),
            done(7, 1, Kind::Ok, Some("/s/item-0000000002")),
        ]
    }

    #[test]
    fn good_history_with_an_applied_info_passes() {
        let mut h = base();
        h.push(fin(&[
            "item-0000000000=101",
            "item-0000000001=201",
            "item-0000000002=103",
        ]));
        let c = check(&h, "sequential");
        assert_eq!(c.valid, Validity::Valid, "{c:?}");
        assert_eq!(c.stat("gaps"), 0);
    }

    #[test]
    fn duplicates_orphans_lost_failed_nodes_and_gaps_are_caught() {
        for (items, what) in [
            (
                vec![
                    "item-0000000000=101",
                    "item-0000000001=201",
                    "item-0000000002=103",
                    "item-0000000003=103",
                ],
                "left 2 nodes",
            ),
            (
                vec![
                    "item-0000000000=101",
                    "item-0000000001=201",
                    "item-0000000002=103",
                    "item-0000000003=777",
                ],
                "orphan",
            ),
            (
                vec!["item-0000000000=101", "item-0000000001=201"],
                "gone at the end",
            ),
            (
                vec![
                    "item-0000000000=101",
                    "item-0000000001=201",
                    "item-0000000002=103",
                    "item-0000000003=102",
                ],
                "failed",
            ),
            // Number 1 went to an applied create (the indeterminate one: 103 got 2), and
            // its node is gone. Valid before the fix (gaps were counted, not checked).
            (
                vec!["item-0000000000=101", "item-0000000002=103"],
                "held by no node (first: [1])",
            ),
        ] {
            let mut h = base();
            h.push(fin(&items));
            let c = check(&h, "sequential");
            assert_eq!(c.valid, Validity::Invalid, "{what}");
            assert_eq!(c.stat("problems"), 1, "{what}: {:?}", c.problems);
            assert!(
                c.problems.join("\n").contains(what),
                "{what}: {:?}",
                c.problems
            );
        }
    }

    #[test]
    fn a_name_acknowledged_to_two_creates_is_caught() {
        let mut h = base();
        h[7].path = Some("/s/item-0000000000".into());
        h.push(fin(&["item-0000000000=101", "item-0000000001=103"]));
        let c = check(&h, "sequential");
        assert_eq!(c.valid, Validity::Invalid);
        assert!(
            c.problems
                .join("\n")
                .contains("acknowledged to two creates"),
            "{c:?}"
        );
    }

    #[test]
    fn numbers_that_go_back_in_real_time_are_caught() {
        let mut h = base();
        h[7].path = Some("/s/item-0000000000".into());
        h[1].path = Some("/s/item-0000000002".into());
        h.push(fin(&[
            "item-0000000002=101",
            "item-0000000001=201",
            "item-0000000000=103",
        ]));
        let c = check(&h, "sequential");
        assert_eq!(c.valid, Validity::Invalid);
        assert_eq!(c.stat("problems"), 1, "{c:?}");
        assert!(c.problems.join("\n").contains("after a create"));
    }

    #[test]
    fn an_indeterminate_create_may_apply_or_not() {
        // Not applied: 103 got number 1.
        let mut h = base();
        h[7].path = Some("/s/item-0000000001".into());
        h.push(fin(&["item-0000000000=101", "item-0000000001=103"]));
        let c = check(&h, "sequential");
        assert_eq!(c.valid, Validity::Valid, "{c:?}");
        // Applied late, after the last acknowledged create: number 2.
        let mut h = base();
        h.push(fin(&[
            "item-0000000000=101",
            "item-0000000001=103",
            "item-0000000002=201",
        ]));
        h[7].path = Some("/s/item-0000000001".into());
        assert_eq!(check(&h, "sequential").valid, Validity::Valid);
        // But not twice.
        let mut h = base();
        h.push(fin(&[
            "item-0000000000=101",
            "item-0000000001=201",
            "item-0000000002=103",
            "item-0000000003=201",
        ]));
        assert_eq!(check(&h, "sequential").valid, Validity::Invalid);
    }

    #[test]
    fn a_value_used_by_two_creates_and_an_ok_without_a_path_are_violations() {
        // The first create of 42 was acknowledged as item 1, which is gone; a second
        // create reused 42 (indeterminate) and an unrelated node holds 42.
        let h = vec![
            create(0, 1, 42),
            done(1, 1, Kind::Ok, Some("/s/item-0000000001")),
            create(2, 2, 42),
            done(3, 2, Kind::Info, None),
            fin(&["item-0000000007=42"]),
        ];
        let c = check(&h, "sequential");
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        let text = c.problems.join("\n");
        assert!(text.contains("used by two creates"), "{text}");
        assert!(text.contains("gone at the end"), "{text}");
        let mut h = base();
        h[7].path = None;
        h.push(fin(&[
            "item-0000000000=101",
            "item-0000000001=201",
            "item-0000000002=103",
        ]));
        let c = check(&h, "sequential");
        assert_eq!(c.valid, Validity::Invalid, "{c:?}");
        assert!(c.problems.join("\n").contains("without a path"), "{c:?}");
    }
}
