//! Size limits of issue 12, checked so they cannot rot: no file in `src/`
//! over 800 lines, and no function over 120 lines in `src/` or `proto/src/`
//! outside tests and the fuzz harness (`proto/src/fuzzing.rs`).
//!
//! A function's length is counted from its `fn` line to the line of the
//! brace that closes its body, found by matching braces with comments,
//! string and char literals skipped. Code after a file's first
//! `#[cfg(test)]` line is test code.

use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 800;
const MAX_FN_LINES: usize = 120;

mod common;
use common::rs_files;

/// The text with comments and the contents of string/char literals blanked
/// (newlines kept), so braces can be matched and lines still counted.
fn strip(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in out.iter_mut().take(to).skip(from) {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                let end = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| i + p);
                blank(&mut out, i, end);
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                let mut j = i;
                while j < b.len() {
                    if b[j] == b'/' && b.get(j + 1) == Some(&b'*') {
                        depth += 1;
                        j += 2;
                    } else if b[j] == b'*' && b.get(j + 1) == Some(&b'/') {
                        depth -= 1;
                        j += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        j += 1;
                    }
                }
                blank(&mut out, i, j);
                i = j;
            }
            b'r' if (b.get(i + 1) == Some(&b'#') || b.get(i + 1) == Some(&b'"'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                let start = j + 1;
                let end = b[start..]
                    .windows(close.len())
                    .position(|w| w == close.as_slice())
                    .map_or(b.len(), |p| start + p);
                blank(&mut out, start, end);
                i = end + close.len();
            }
            b'"' => {
                let mut j = i + 1;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                blank(&mut out, i + 1, j.min(b.len()));
                i = j + 1;
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{..}'), or a lifetime ('a).
                if b.get(i + 1) == Some(&b'\\') {
                    let end = b[i + 2..]
                        .iter()
                        .position(|&c| c == b'\'')
                        .map_or(b.len(), |p| i + 2 + p);
                    blank(&mut out, i + 1, end);
                    i = end + 1;
                } else if b.get(i + 2) == Some(&b'\'') {
                    blank(&mut out, i + 1, i + 2);
                    i += 3;
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// `(name, first line, lines)` of every function with a body.
fn functions(code: &[u8]) -> Vec<(String, usize, usize)> {
    let line_of = |pos: usize| code[..pos].iter().filter(|&&c| c == b'\n').count() + 1;
    let mut found = Vec::new();
    let mut i = 0;
    while i + 3 < code.len() {
        let is_fn = &code[i..i + 3] == b"fn "
            && (i == 0 || !(code[i - 1].is_ascii_alphanumeric() || code[i - 1] == b'_'));
        if !is_fn {
            i += 1;
            continue;
        }
        let name: String = code[i + 3..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
            .map(|&c| c as char)
            .collect();
        // The body starts at the first `{` before any `;` (a declaration
        // without a body ends at `;`). Parentheses and angle brackets in the
        // signature hold no braces outside literals.
        let mut j = i + 3;
        let mut body = None;
        let mut nest = 0usize; // `(` and `[` in the signature, e.g. `[u8; 16]`
        while j < code.len() {
            match code[j] {
                b'(' | b'[' => nest += 1,
                b')' | b']' => nest = nest.saturating_sub(1),
                b'{' if nest == 0 => {
                    body = Some(j);
                    break;
                }
                b';' if nest == 0 => break,
                _ => {}
            }
            j += 1;
        }
        let Some(open) = body else {
            i = j;
            continue;
        };
        let mut depth = 0usize;
        let mut k = open;
        while k < code.len() {
            match code[k] {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            k += 1;
        }
        let (first, last) = (line_of(i), line_of(k.min(code.len() - 1)));
        found.push((name, first, last - first + 1));
        // Nested functions are counted too: continue inside the body.
        i = open + 1;
    }
    found
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

#[test]
fn no_file_in_src_over_800_lines() {
    let mut files = Vec::new();
    rs_files(&repo().join("src"), &mut files);
    assert!(files.len() > 10, "src/ not found");
    let mut over: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).ok()?.lines().count();
            (n > MAX_FILE_LINES).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    over.sort();
    assert!(
        over.is_empty(),
        "files over {MAX_FILE_LINES} lines: {over:#?}"
    );
}

#[test]
fn no_function_over_120_lines_outside_tests() {
    let mut files = Vec::new();
    rs_files(&repo().join("src"), &mut files);
    rs_files(&repo().join("proto/src"), &mut files);
    let mut over = Vec::new();
    for f in &files {
        if f.ends_with("proto/src/fuzzing.rs") {
            continue; // the fuzz harness is exempt (issue 12)
        }
        let text = std::fs::read_to_string(f).expect("readable source");
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (name, line, n) in functions(&strip(code)) {
            if n > MAX_FN_LINES {
                over.push(format!("{}:{line} fn {name} ({n} lines)", f.display()));
            }
        }
    }
    over.sort();
    assert!(
        over.is_empty(),
        "functions over {MAX_FN_LINES} lines: {over:#?}"
    );
}

#[test]
fn the_counter_sees_long_functions_and_skips_literals() {
    let long_body = "    x += 1;\n".repeat(130);
    let src = format!(
        "fn short(a: [u8; 2]) {{ let s = \"}}\"; let c = '}}'; }}\n// fn fake() {{\nfn long() {{\n{long_body}}}\nfn decl();\n"
    );
    let fns = functions(&strip(&src));
    let names: Vec<(&str, usize)> = fns.iter().map(|(n, _, l)| (n.as_str(), *l)).collect();
    assert_eq!(names, vec![("short", 1), ("long", 132)]);
}
