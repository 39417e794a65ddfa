//! The `xtcp` command-line tool.

fn main() {
    eprintln!("xtcp: not yet implemented");
    std::process::exit(2);
}
