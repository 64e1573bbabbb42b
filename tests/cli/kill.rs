//! A run killed with SIGKILL at any moment, then re-run, leaves exactly the source rows: the
//! state is never ahead of the data, and the target cuts off what it wrote after its last commit.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::util::Dir;

const ROWS: u64 = 120_000;

fn setup(target: &str) -> Dir {
    let d = Dir::new();
    let mut body = String::with_capacity(ROWS as usize * 60);
    for i in 0..ROWS {
        body.push_str(&format!(
            "{{\"id\": {i}, \"name\": \"row {i}\", \"amount\": {i}.25}}\n"
        ));
    }
    // Two files, so the bookmark also has to move across files.
    let half = body
        .match_indices('\n')
        .nth(ROWS as usize / 2 - 1)
        .unwrap()
        .0
        + 1;
    d.write("src/a.jsonl", &body[..half]);
    d.write("src/b.jsonl", &body[half..]);
    let later = std::fs::File::options()
        .write(true)
        .open(d.join("src/b.jsonl"))
        .unwrap();
    later
        .set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    d.write(
        "ferry.yml",
        &format!(
            "pipelines:\n  p:\n    tap: {{ name: jsonl, config: {{ state_every_rows: 500, files: [{{ entity: rows, path: \"src/*.jsonl\", keys: [id] }}] }} }}\n    target: {{ name: {target}, config: {{ destination_path: out }} }}\n    commit_interval_secs: 0.005\n"
        ),
    );
    d
}

fn committed_offset(d: &Dir) -> Option<u64> {
    let text = std::fs::read_to_string(d.join("state/p.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let b = &v["bookmarks"]["rows"];
    let base = if b["file"].as_str()?.ends_with("b.jsonl") {
        ROWS / 2
    } else {
        0
    };
    Some(base + b["offset"].as_u64()?)
}

fn loaded_ids(d: &Dir, target: &str) -> Vec<u64> {
    let text = std::fs::read_to_string(d.join(&format!("out/rows.{target}"))).unwrap_or_default();
    // Right after a kill the file may end in a torn line, written after the last commit (the
    // next run cuts the file back to its committed length): only whole lines count.
    let text = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    match target {
        "jsonl" => text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_u64()
                    .unwrap()
            })
            .collect(),
        _ => text
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap().parse().unwrap())
            .collect(),
    }
}

fn trial(target: &str, kill_after: Option<u64>) {
    let d = setup(target);
    crate::util::sync_killed_after(&d, kill_after, |n| {
        committed_offset(&d).is_some_and(|o| o >= n)
    });
    // The state never claims more than the target holds.
    let ids = loaded_ids(&d, target);
    if let Some(off) = committed_offset(&d) {
        assert!(
            ids.len() as u64 >= off,
            "state at {off} but only {} rows loaded",
            ids.len()
        );
    }
    let out = d.run(&["sync", "p"], None);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let ids = loaded_ids(&d, target);
    let unique: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(
        unique.len(),
        ROWS as usize,
        "rows lost (kill after {kill_after:?})"
    );
    assert_eq!(
        ids.len(),
        ROWS as usize,
        "rows duplicated (kill after {kill_after:?})"
    );
    assert_eq!(ids, (0..ROWS).collect::<Vec<_>>(), "rows out of order");
}

#[test]
fn killed_jsonl_load_resumes_exactly() {
    for kill_after in [
        None,
        Some(1),
        Some(7_000),
        Some(59_500),
        Some(61_000),
        Some(100_000),
    ] {
        trial("jsonl", kill_after);
    }
}

#[test]
fn killed_csv_load_resumes_exactly() {
    for kill_after in [None, Some(3_000), Some(80_000)] {
        trial("csv", kill_after);
    }
}

/// A `ferry target` run interrupted before its first commit leaves nothing behind for the next.
#[test]
fn interrupted_before_the_first_commit_leaves_no_rows() {
    let d = Dir::new();
    d.write("t.json", r#"{"destination_path": "out"}"#);
    // A schema and records but no STATE: nothing may be committed, even though bytes were written.
    let mut input = String::from("{\"type\":\"SCHEMA\",\"stream\":\"s\",\"schema\":{\"properties\":{\"id\":{\"type\":\"integer\"}}},\"key_properties\":[\"id\"]}\n");
    for i in 0..300_000 {
        input.push_str(&format!(
            "{{\"type\":\"RECORD\",\"stream\":\"s\",\"record\":{{\"id\":{i}}}}}\n"
        ));
    }
    input.push_str("this line is broken\n");
    d.run(&["target", "jsonl", "--config", "t.json"], Some(&input))
        .code(1);
    assert!(
        std::fs::metadata(d.join("out/s.jsonl")).unwrap().len() > 0,
        "the failed run wrote uncommitted bytes"
    );
    let ok = "{\"type\":\"SCHEMA\",\"stream\":\"s\",\"schema\":{\"properties\":{\"id\":{\"type\":\"integer\"}}},\"key_properties\":[\"id\"]}\n{\"type\":\"RECORD\",\"stream\":\"s\",\"record\":{\"id\":7}}\n{\"type\":\"STATE\",\"value\":{\"bookmarks\":{\"s\":1}}}\n";
    d.run(&["target", "jsonl", "--config", "t.json"], Some(ok))
        .ok();
    assert_eq!(d.read("out/s.jsonl"), "{\"id\":7}\n");
}
