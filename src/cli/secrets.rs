//! Where a code, ticket or operator token comes from, so it need not sit in
//! argv (visible to every local user in `ps` and `/proc/<pid>/cmdline`).
//!
//! Code or ticket, first match wins: the argument (`-`: the first line of
//! standard input), `--code-file PATH`, the `XTCP_CODE` environment variable.
//! Token: `--token-file PATH`, then `--token` / `XTCP_TOKEN`.

use std::io::BufRead;
use std::path::Path;

/// The first non-empty line of a file, trimmed.
fn first_line_of_file(path: &Path, what: &str) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
        .ok_or_else(|| format!("{what} {}: the file is empty", path.display()))
}

/// One line from standard input, read through std's shared buffer so that
/// the bytes after it stay for whoever reads stdin next (`join -` sends them).
fn line_from_stdin() -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("reading the code from standard input: {e}"))?;
    let line = line.trim().to_string();
    if line.is_empty() {
        return Err("no code or ticket on standard input (expected it on the first line)".into());
    }
    Ok(line)
}

/// The code or ticket, from the first source that has one.
pub fn code(arg: Option<&str>, file: Option<&Path>) -> Result<String, String> {
    match (arg, file) {
        (Some("-"), _) => line_from_stdin(),
        (Some(c), _) => Ok(c.trim().to_string()),
        (None, Some(f)) => first_line_of_file(f, "--code-file"),
        (None, None) => match std::env::var("XTCP_CODE") {
            Ok(c) if !c.trim().is_empty() => Ok(c.trim().to_string()),
            _ => Err(
                "no code or ticket: pass it as `-` (first line of standard input), \
                 --code-file PATH, XTCP_CODE=… or as the argument"
                    .into(),
            ),
        },
    }
}

/// The operator token: `--token-file` over `--token` / `XTCP_TOKEN`.
pub fn token(flag: Option<&str>, file: Option<&Path>) -> Result<Option<String>, String> {
    match file {
        Some(f) => first_line_of_file(f, "--token-file").map(Some),
        None => Ok(flag.map(str::to_string)),
    }
}
