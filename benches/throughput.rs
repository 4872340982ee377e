//! Throughput: the built-in handler served by one plain multi-threaded hyper
//! process (the baseline: nothing but the server) and by `baton serve` with
//! one single-threaded worker per CPU, back to back in one run, alternated,
//! medians reported with the ratio baton / plain. The master is never on the
//! data path, so the goal is a ratio of at least 0.97. When nginx is
//! installed, it answers `return 200` with the same number of worker
//! processes, measured by the same client (goal: baton ≥ 1.2 × nginx).
//!
//! Run with `cargo bench --bench throughput`.

#[path = "support.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

const ROUNDS: usize = 3;
const MEASURE: Duration = Duration::from_secs(5);
/// Iterations of `--work` for the CPU-heavy case: about a tenth of a
/// millisecond of CPU per request.
const HEAVY_WORK: u64 = 50_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--plain-server") {
        let threads: usize = args[i + 1].parse().unwrap();
        let work: u64 = args[i + 2].parse().unwrap();
        plain_server(threads, work);
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let client = Client::detect();
    let workers = cpus();
    println!(
        "throughput, {workers} CPUs, client: {}, {ROUNDS} rounds of {MEASURE:?}, medians",
        client.name()
    );
    println!(
        "{:<34} {:>12} {:>12} {:>12} {:>9} {:>9}",
        "responses", "plain hyper", "baton", "nginx", "b/plain", "b/nginx"
    );
    for (label, work) in [("trivial", 0), ("--work 50000 (CPU-bound)", HEAVY_WORK)] {
        let nginx = if work == 0 { nginx_available() } else { false };
        let (mut plain, mut baton, mut ngx) = (Vec::new(), Vec::new(), Vec::new());
        let mut errors = 0;
        for _ in 0..ROUNDS {
            let server = start_plain(workers, work);
            let t = client.measure(server.addr, MEASURE);
            drop(server);
            plain.push(t.requests_per_second);
            errors += t.errors;

            let work_arg = work.to_string();
            let server = start_baton(&["--workers", &workers.to_string(), "--work", &work_arg]);
            let t = client.measure(server.addr, MEASURE);
            drop(server);
            baton.push(t.requests_per_second);
            errors += t.errors;

            if nginx {
                let server = start_nginx(workers);
                let t = client.measure(server.addr, MEASURE);
                drop(server);
                ngx.push(t.requests_per_second);
                errors += t.errors;
            }
        }
        let plain = median(&mut plain);
        let baton = median(&mut baton);
        let (nginx_text, versus_nginx) = if ngx.is_empty() {
            ("-".to_owned(), "-".to_owned())
        } else {
            let n = median(&mut ngx);
            (format!("{n:.0}"), format!("{:.2}", baton / n))
        };
        println!(
            "{label:<34} {plain:>12.0} {baton:>12.0} {nginx_text:>12} {:>9.3} {versus_nginx:>9}",
            baton / plain
        );
        if errors > 0 {
            println!("  (the client counted {errors} errors)");
        }
    }
    println!("goals: baton/plain >= 0.97; baton/nginx >= 1.2");
}

/// The baseline: the same handler in one process with `threads` threads.
fn plain_server(threads: usize, work: u64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_reuse_address(true).unwrap();
        socket
            .bind(
                &"127.0.0.1:0"
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .unwrap();
        socket.listen(1024).unwrap();
        socket.set_nonblocking(true).unwrap();
        let listener: std::net::TcpListener = socket.into();
        println!("{}", listener.local_addr().unwrap());
        let args = baton::http_options::HttpArgs {
            work,
            ..Default::default()
        };
        let app = baton::worker::http::Demo::new(baton::worker::http::HttpState::new(args.work));
        let _ = baton::worker::builder(&args)
            .serve_listener(listener, app)
            .await;
    });
}

fn start_plain(threads: usize, work: u64) -> Running {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["--plain-server", &threads.to_string(), &work.to_string()]);
    start_printing_addr(command)
}
