//! Spec traceability (`spec/README.md`): every MUST-level requirement in
//! `spec/*.md` carries an id, the code that enforces it cites that id, and
//! every citation names a requirement (or a section) that exists.
//!
//! The rules, checked here and nowhere else:
//!
//! * An id is defined as `**[PREFIX-TOPIC-N]**` in a spec file (`XT-` in
//!   `xtcp.md`, `RL-` in `relay.md`, `SE-` in `session.md`, `DI-` in
//!   `direct.md`). Ids are unique across the spec set.
//! * A definition covers the text from its marker to the next marker or to the
//!   end of its block (a paragraph, a list item or a table cell). That text
//!   must hold a capitalised RFC 2119 keyword: MUST, SHALL or REQUIRED make it
//!   MUST-level, SHOULD or RECOMMENDED (alone) SHOULD-level.
//! * Every capitalised MUST, SHALL, REQUIRED, SHOULD or RECOMMENDED in a spec
//!   lies inside some definition, or in a block that refers back to one as
//!   `[ID]` (a restatement). Fenced code, code spans and the key-words
//!   paragraph (the one naming RFC 2119) are skipped.
//! * A citation is a comment line `//= spec/<file>.md#<ID>` in a `.rs` file
//!   under `proto/`, `src/`, `sim/`, `interop/`, `tests/`, `benches/` or
//!   `fuzz/fuzz_targets/` (`target/` skipped). `#<anchor>` may also name a
//!   section (an `<a id="…">` or a heading's GitHub slug) of that file.
//! * A citation is a *test* citation when its file lies under a `tests/`
//!   directory or follows a `#[cfg(test)]` line in its file (test modules sit
//!   at the end of their file in this code base); any other is an
//!   *enforcement* citation.
//! * Every MUST-level id needs an enforcement citation, unless its definition
//!   is followed by `(not yet enforced: <reason>)`: a known gap, which then
//!   must have none. SHOULD-level citations are optional.
//!
//! Run with `--nocapture` for the counts per spec.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

const SPECS: [(&str, &str); 4] = [
    ("xtcp.md", "XT"),
    ("relay.md", "RL"),
    ("session.md", "SE"),
    ("direct.md", "DI"),
];
const SCANNED: [&str; 7] = [
    "proto",
    "src",
    "sim",
    "interop",
    "tests",
    "benches",
    "fuzz/fuzz_targets",
];
const GAP: &str = "(not yet enforced:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Must,
    Should,
}

#[derive(Debug)]
struct Requirement {
    file: String,
    line: usize,
    level: Level,
    gap: bool,
}

#[derive(Debug)]
struct Citation {
    file: String,
    line: usize,
    spec: String,
    target: String,
    test: bool,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("proto/ has a parent")
        .to_path_buf()
}

/// A spec file cut into blocks: paragraphs, list items and table cells, each
/// with the line it starts on. Fenced code and the key-words paragraph are dropped.
fn blocks(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut cur: Option<(usize, String)> = None;
    let mut fenced = false;
    let flush = |cur: &mut Option<(usize, String)>, out: &mut Vec<(usize, String)>| {
        if let Some(b) = cur.take() {
            out.push(b);
        }
    };
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let t = line.trim_start();
        if t.starts_with("```") {
            flush(&mut cur, &mut out);
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        if t.is_empty() || t.starts_with('#') {
            flush(&mut cur, &mut out);
            continue;
        }
        if t.starts_with('|') {
            flush(&mut cur, &mut out);
            for cell in t.split('|') {
                out.push((n, cell.to_string()));
            }
            continue;
        }
        let item = t.starts_with("* ")
            || t.starts_with("- ")
            || t.split_once(". ")
                .is_some_and(|(d, _)| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
        if item {
            flush(&mut cur, &mut out);
        }
        match &mut cur {
            Some((_, b)) => {
                b.push(' ');
                b.push_str(t);
            }
            None => cur = Some((n, t.to_string())),
        }
    }
    flush(&mut cur, &mut out);
    out.retain(|(_, b)| !b.contains("RFC 2119"));
    out
}

fn is_id(s: &str, prefix: Option<&str>) -> bool {
    let mut parts = s.split('-');
    let head = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    prefix.is_none_or(|p| p == head)
        && head.len() == 2
        && head.bytes().all(|b| b.is_ascii_uppercase())
        && !rest.is_empty()
        && rest.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        })
        && rest
            .last()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

/// Capitalised RFC 2119 keywords in `s` (words, not parts of words).
fn keywords(s: &str) -> Vec<&'static str> {
    const KW: [&str; 5] = ["MUST", "SHALL", "REQUIRED", "SHOULD", "RECOMMENDED"];
    s.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter_map(|w| KW.iter().find(|k| **k == w).copied())
        .collect()
}

/// `block` with the inside of every code span blanked (byte offsets kept):
/// neither key words nor ids count there.
fn mask_code(block: &str) -> String {
    let mut out = String::with_capacity(block.len());
    let mut code = false;
    for c in block.chars() {
        if c == '`' {
            code = !code;
            out.push(c);
        } else if code {
            out.extend(std::iter::repeat_n(' ', c.len_utf8()));
        } else {
            out.push(c);
        }
    }
    out
}

/// `**[ID]**` definitions and `[ID]` references in a block, by byte offset.
fn markers(block: &str) -> Vec<(usize, usize, String, bool)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(off) = block[at..].find('[') {
        let start = at + off;
        let Some(len) = block[start + 1..].find(']') else {
            break;
        };
        let id = &block[start + 1..start + 1 + len];
        let end = start + len + 2;
        if is_id(id, None) {
            let def = block[..start].ends_with("**") && block[end..].starts_with("**");
            let (s, e) = if def {
                (start - 2, end + 2)
            } else {
                (start, end)
            };
            out.push((s, e, id.to_string(), def));
        }
        at = end;
    }
    out
}

/// GitHub's anchor for a heading line.
fn slug(heading: &str) -> String {
    heading
        .trim_start_matches('#')
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

struct Specs {
    reqs: BTreeMap<String, Requirement>,
    anchors: BTreeMap<String, BTreeSet<String>>,
    errors: Vec<String>,
}

fn read_specs(root: &Path) -> Specs {
    let mut s = Specs {
        reqs: BTreeMap::new(),
        anchors: BTreeMap::new(),
        errors: Vec::new(),
    };
    let mut refs = Vec::new();
    for (file, prefix) in SPECS {
        let text = fs::read_to_string(root.join("spec").join(file)).expect("spec file");
        let anchors = s.anchors.entry(file.to_string()).or_default();
        for line in text.lines() {
            if line.starts_with('#') {
                anchors.insert(slug(line));
            }
            if let Some(rest) = line.split("<a id=\"").nth(1) {
                if let Some((a, _)) = rest.split_once('"') {
                    anchors.insert(a.to_string());
                }
            }
        }
        for (line, block) in blocks(&text) {
            let block = mask_code(&block);
            let ms = markers(&block);
            let has_ref = ms.iter().any(|m| !m.3);
            let first_def = ms.iter().find(|m| m.3).map_or(block.len(), |m| m.0);
            if !has_ref {
                for k in keywords(&block[..first_def]) {
                    s.errors.push(format!(
                        "spec/{file}:{line}: {k} outside any requirement id: {}",
                        block.chars().take(100).collect::<String>()
                    ));
                }
            }
            for (i, (_, end, id, def)) in ms.iter().enumerate() {
                if !def {
                    refs.push((file, line, id.clone()));
                    continue;
                }
                if !is_id(id, Some(prefix)) {
                    s.errors.push(format!(
                        "spec/{file}:{line}: id {id} lacks the prefix {prefix}-"
                    ));
                }
                let seg_end = ms.get(i + 1).map_or(block.len(), |m| m.0);
                let seg = &block[*end..seg_end];
                let kws = keywords(seg);
                let level = if kws
                    .iter()
                    .any(|k| matches!(*k, "MUST" | "SHALL" | "REQUIRED"))
                {
                    Level::Must
                } else if !kws.is_empty() {
                    Level::Should
                } else {
                    s.errors.push(format!(
                        "spec/{file}:{line}: {id} states no MUST/SHALL/REQUIRED/SHOULD"
                    ));
                    Level::Should
                };
                let gap = seg.trim_start().starts_with(GAP);
                let r = Requirement {
                    file: file.to_string(),
                    line,
                    level,
                    gap,
                };
                // The first definition stands; citations resolve against it.
                match s.reqs.get(id) {
                    Some(old) => s.errors.push(format!(
                        "spec/{file}:{line}: duplicate id {id} (first defined at spec/{}:{})",
                        old.file, old.line
                    )),
                    None => {
                        s.reqs.insert(id.clone(), r);
                    }
                }
            }
        }
    }
    for (file, line, id) in refs {
        if !s.reqs.contains_key(&id) {
            s.errors.push(format!(
                "spec/{file}:{line}: [{id}] refers to no requirement"
            ));
        }
    }
    s
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "target" || n == ".git") {
                continue;
            }
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn citations(root: &Path) -> Vec<Citation> {
    let mut files = Vec::new();
    for d in SCANNED {
        rs_files(&root.join(d), &mut files);
    }
    files.sort();
    files.dedup();
    let mut out = Vec::new();
    for f in files {
        let rel = f
            .strip_prefix(root)
            .unwrap_or(&f)
            .to_string_lossy()
            .into_owned();
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        let mut test = rel.split('/').any(|c| c == "tests");
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.starts_with("#[cfg(test)]") {
                test = true;
            }
            let Some(rest) = t.strip_prefix("//=") else {
                continue;
            };
            let rest = rest.trim();
            let (spec, target) = match rest.strip_prefix("spec/").and_then(|r| r.split_once('#')) {
                Some((s, t)) => (s.to_string(), t.trim().to_string()),
                None => (rest.to_string(), String::new()),
            };
            out.push(Citation {
                file: rel.clone(),
                line: i + 1,
                spec,
                target,
                test,
            });
        }
    }
    out
}

#[test]
fn every_requirement_is_cited_and_every_citation_resolves() {
    let root = root();
    let specs = read_specs(&root);
    let cites = citations(&root);
    let mut errors = specs.errors.clone();

    let mut enforced: BTreeMap<&str, Vec<&Citation>> = BTreeMap::new();
    let mut tested: BTreeMap<&str, Vec<&Citation>> = BTreeMap::new();
    for c in &cites {
        let known_spec = specs.anchors.contains_key(&c.spec);
        match specs.reqs.get(&c.target) {
            Some(r) if r.file == c.spec => {
                let m = if c.test { &mut tested } else { &mut enforced };
                m.entry(c.target.as_str()).or_default().push(c);
            }
            Some(r) => errors.push(format!(
                "{}:{}: cites spec/{}#{} but {} is in spec/{}",
                c.file, c.line, c.spec, c.target, c.target, r.file
            )),
            None if known_spec && specs.anchors[&c.spec].contains(&c.target) => {}
            None if !known_spec => errors.push(format!(
                "{}:{}: cites spec/{}, not a spec file with requirement ids",
                c.file, c.line, c.spec
            )),
            None => errors.push(format!(
                "{}:{}: cites spec/{}#{}: no such requirement id or section",
                c.file, c.line, c.spec, c.target
            )),
        }
    }
    for (id, r) in &specs.reqs {
        let cited = enforced.contains_key(id.as_str());
        if r.gap && cited {
            errors.push(format!(
                "spec/{}:{}: {id} is marked `not yet enforced` but {} cites it: drop the mark",
                r.file,
                r.line,
                enforced[id.as_str()]
                    .iter()
                    .map(|c| format!("{}:{}", c.file, c.line))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if r.level == Level::Must && !r.gap && !cited {
            errors.push(format!(
                "spec/{}:{}: {id} has no citation in non-test code (add `//= spec/{}#{id}` \
                 above the line that enforces it, or mark it `{GAP} <reason>)`)",
                r.file, r.line, r.file
            ));
        }
    }

    let mut report = String::new();
    let _ = writeln!(
        report,
        "{:<12} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "spec", "MUST", "SHOULD", "gaps", "cited", "tested", "total"
    );
    for (file, _) in SPECS {
        let ids: Vec<(&String, &Requirement)> =
            specs.reqs.iter().filter(|(_, r)| r.file == file).collect();
        let count =
            |f: &dyn Fn(&str, &Requirement) -> bool| ids.iter().filter(|(id, r)| f(id, r)).count();
        let _ = writeln!(
            report,
            "{:<12} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
            file,
            count(&|_, r| r.level == Level::Must),
            count(&|_, r| r.level == Level::Should),
            count(&|_, r| r.gap),
            count(&|id, _| enforced.contains_key(id)),
            count(&|id, _| tested.contains_key(id)),
            ids.len()
        );
    }
    let _ = writeln!(
        report,
        "{:<12} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
        "all",
        specs
            .reqs
            .values()
            .filter(|r| r.level == Level::Must)
            .count(),
        specs
            .reqs
            .values()
            .filter(|r| r.level == Level::Should)
            .count(),
        specs.reqs.values().filter(|r| r.gap).count(),
        enforced.len(),
        tested.len(),
        specs.reqs.len()
    );
    let untested: Vec<&str> = specs
        .reqs
        .keys()
        .filter(|id| !tested.contains_key(id.as_str()))
        .map(String::as_str)
        .collect();
    let _ = writeln!(report, "not cited by any test: {}", untested.join(" "));
    let gaps: Vec<&str> = specs
        .reqs
        .iter()
        .filter(|(_, r)| r.gap)
        .map(|(id, _)| id.as_str())
        .collect();
    let _ = writeln!(report, "known gaps: {}", gaps.join(" "));
    println!("{report}");

    assert!(
        errors.is_empty(),
        "spec traceability: {} problem(s)\n{}",
        errors.len(),
        errors.join("\n")
    );
}
