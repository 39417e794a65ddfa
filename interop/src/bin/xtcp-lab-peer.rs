//! A kernel-TCP peer for lab tests: `serve ADDR LEN SEED` accepts one
//! connection, sends LEN bytes of the seeded payload while reading everything
//! the client sends, and prints `recv <bytes> <sha256>` when the client's
//! stream ends; `connect ADDR LEN SEED` does the same from the client side.
//! Prints `elapsed <seconds>` for the whole exchange.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Instant;

fn exchange(s: TcpStream, len: usize, seed: u64) -> std::io::Result<()> {
    let start = Instant::now();
    let data = xtcp_lab::payload(seed, len);
    let mut w = s.try_clone()?;
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        w.write_all(&data)?;
        w.shutdown(Shutdown::Write)
    });
    let mut got = Vec::new();
    let mut r = s;
    r.read_to_end(&mut got)?;
    writer
        .join()
        .map_err(|_| std::io::Error::other("writer panicked"))??;
    println!("recv {} {}", got.len(), xtcp_lab::sha256_hex(&got));
    println!("elapsed {:.6}", start.elapsed().as_secs_f64());
    Ok(())
}

fn main() -> std::io::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (mode, addr, len, seed) = match a.as_slice() {
        [m, addr, len, seed] => (
            m.as_str(),
            addr.as_str(),
            len.parse().unwrap_or(0),
            seed.parse().unwrap_or(0),
        ),
        _ => {
            eprintln!("usage: xtcp-lab-peer serve|connect ADDR LEN SEED");
            std::process::exit(2);
        }
    };
    match mode {
        "serve" => {
            let l = TcpListener::bind(addr)?;
            println!("listening {}", l.local_addr()?);
            std::io::stdout().flush()?;
            let (s, _) = l.accept()?;
            exchange(s, len, seed)
        }
        _ => {
            let mut tries = 0;
            let s = loop {
                match TcpStream::connect(addr) {
                    Ok(s) => break s,
                    Err(e) if tries < 50 => {
                        tries += 1;
                        let _ = e;
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                    Err(e) => return Err(e),
                }
            };
            exchange(s, len, seed)
        }
    }
}
