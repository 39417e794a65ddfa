//! The `xtcp` command-line tool.

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!("usage: xtcp demo [--sim] [--mib N] [--loss P] [--rtt-ms MS] [--mbit M] [--seed S]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => {
            let mut mib = 8usize;
            let mut loss = 0.01f64;
            let mut rtt = 20u64;
            let mut mbit = 100u64;
            let mut seed = 1u64;
            let mut it = args.iter().skip(1);
            while let Some(a) = it.next() {
                let mut val = || it.next().cloned().unwrap_or_default();
                let ok = match a.as_str() {
                    "--sim" => true,
                    "--mib" => val().parse().map(|v| mib = v).is_ok(),
                    "--loss" => val().parse().map(|v: f64| loss = v / 100.0).is_ok(),
                    "--rtt-ms" => val().parse().map(|v| rtt = v).is_ok(),
                    "--mbit" => val().parse().map(|v| mbit = v).is_ok(),
                    "--seed" => val().parse().map(|v| seed = v).is_ok(),
                    _ => false,
                };
                if !ok {
                    return usage();
                }
            }
            match xtcp::simdemo::run(mib, loss, rtt, mbit.max(1), seed) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("xtcp: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => usage(),
    }
}
