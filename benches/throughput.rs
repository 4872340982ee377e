//! Throughput: the built-in worker's answer served by plain hyper (one
//! multi-threaded process, an accept loop and hyper's HTTP/1 connection:
//! nothing but the server) and by `baton serve` with one single-threaded
//! worker per CPU, alternated in one run, medians and the spread of the
//! pairs reported with the ratio baton / plain. When nginx is installed, it
//! answers `return 200` with as many worker processes, measured by the same
//! client. Keep-alive and a new connection per request, both.
//!
//! Beside each rate, the server's own CPU per response, user and system:
//! the client shares the machine's cores with the server, so a rate is
//! bounded by the client's CPU per request plus the server's, and the
//! system part (the kernel's TCP work, the same for every server that reads
//! and writes once per request) is what no server can shed.
//!
//! Run with `cargo bench --bench throughput`.

#[path = "support.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

const ROUNDS: usize = 5;
const MEASURE: Duration = Duration::from_secs(5);
/// Iterations of `--work` for the CPU-heavy case: about a tenth of a
/// millisecond of CPU per request.
const HEAVY_WORK: u64 = 50_000;

/// One kind of load.
struct Case {
    label: &'static str,
    /// Each request on a new connection (`Connection: close`).
    closing: bool,
    work: u64,
}

const CASES: [Case; 3] = [
    Case {
        label: "trivial, keep-alive",
        closing: false,
        work: 0,
    },
    Case {
        label: "trivial, a new connection each",
        closing: true,
        work: 0,
    },
    Case {
        label: "--work 50000 (CPU-bound), keep-alive",
        closing: false,
        work: HEAVY_WORK,
    },
];

/// One server's rounds of a case.
#[derive(Default)]
struct Rounds {
    rates: Vec<f64>,
    /// The server's own CPU (all its processes) per response, microseconds.
    user_us: Vec<f64>,
    system_us: Vec<f64>,
}

impl Rounds {
    fn measure(&mut self, client: &Client, server: &Running, case: &Case) -> u64 {
        let before = cpu_ticks(server.pid());
        let t = if case.closing {
            client.measure_closing(server.addr, MEASURE)
        } else {
            client.measure(server.addr, MEASURE)
        };
        let after = cpu_ticks(server.pid());
        let per_request = |ticks: u64| ticks as f64 * 10_000.0 / t.requests.max(1) as f64;
        self.rates.push(t.requests_per_second);
        self.user_us.push(per_request(after.0 - before.0));
        self.system_us.push(per_request(after.1 - before.1));
        t.errors
    }

    fn row(&self, name: &str) -> String {
        let (low, high) = spread(&self.rates);
        format!(
            "  {name:<12} {:>9.0} {:>9.0}-{:<9.0} {:>6.2} {:>6.2}",
            median(&mut self.rates.clone()),
            low,
            high,
            median(&mut self.user_us.clone()),
            median(&mut self.system_us.clone()),
        )
    }

    /// The ratio of the medians, and the lowest and highest ratio of the
    /// alternated pairs.
    fn over(&self, other: &Rounds) -> String {
        let ratio = median(&mut self.rates.clone()) / median(&mut other.rates.clone());
        let pairs: Vec<f64> = self
            .rates
            .iter()
            .zip(&other.rates)
            .map(|(a, b)| a / b)
            .collect();
        let (low, high) = spread(&pairs);
        format!("{ratio:.3} (pairs {low:.3}-{high:.3})")
    }
}

fn spread(values: &[f64]) -> (f64, f64) {
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(0.0, f64::max);
    (low, high)
}

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
        "throughput, {workers} CPUs, client: {}, {ROUNDS} alternated rounds of {MEASURE:?}; \
         req/s median and min-max; the server's CPU per response (all its processes), \
         user and system microseconds, medians",
        client.name()
    );
    for case in &CASES {
        let nginx = case.work == 0 && nginx_available();
        let (mut plain, mut baton, mut ngx) =
            (Rounds::default(), Rounds::default(), Rounds::default());
        let mut errors = 0;
        for _ in 0..ROUNDS {
            let server = start_plain(workers, case.work);
            errors += plain.measure(&client, &server, case);
            drop(server);

            let work = case.work.to_string();
            let server = start_baton(&["--workers", &workers.to_string(), "--work", &work]);
            errors += baton.measure(&client, &server, case);
            drop(server);

            if nginx {
                let server = start_nginx(workers);
                errors += ngx.measure(&client, &server, case);
                drop(server);
            }
        }
        println!("{}", case.label);
        println!(
            "  {:<12} {:>9} {:>19} {:>6} {:>6}",
            "", "req/s", "min-max", "user", "system"
        );
        println!("{}", plain.row("plain hyper"));
        println!("{}", baton.row("baton"));
        if nginx {
            println!("{}", ngx.row("nginx"));
        }
        print!("  baton/plain {}", baton.over(&plain));
        if nginx {
            print!("; baton/nginx {}", baton.over(&ngx));
        }
        println!();
        if errors > 0 {
            println!("  (the client counted {errors} errors)");
        }
    }
    println!("goals: baton/plain >= 1.0; baton/nginx >= 1.2");
}

/// The baseline: plain hyper, nothing but the server. One process with
/// `threads` runtime threads accepts on one listener and serves each
/// connection with hyper's HTTP/1 connection, answering what the built-in
/// worker answers (the same body, the same header, the same `--work`).
fn plain_server(threads: usize, work: u64) {
    use http_body_util::Full;
    use hyper::{header, Response};

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        let pid = std::process::id();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request| {
                    baton::worker::http::burn_cpu(work);
                    let mut response = Response::new(Full::new(bytes::Bytes::from(format!(
                        "Process handled by pid: {pid}"
                    ))));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("text/plain"),
                    );
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

fn start_plain(threads: usize, work: u64) -> Running {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["--plain-server", &threads.to_string(), &work.to_string()]);
    start_printing_addr(command)
}
