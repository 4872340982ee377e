//! Handoff latency: a master queues a hello with K listening sockets on a
//! fresh socketpair; the worker side receives it, validates every socket and
//! registers it with tokio, ready to accept.

use std::os::fd::AsFd;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use baton::fd;
use baton::protocol::{self, ToWorker};
use baton_worker::handoff::{Acceptor, Handoff};

fn listeners(count: usize) -> Vec<std::net::TcpListener> {
    (0..count)
        .map(|_| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            listener
        })
        .collect()
}

fn handoff(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("handoff");
    for count in [1usize, 4, 16] {
        let sockets = listeners(count);
        let names: Vec<String> = (0..count).map(|i| format!("l{i}")).collect();
        group.bench_with_input(BenchmarkId::from_parameter(count), &count, |b, _| {
            b.iter(|| {
                let (master_end, worker_end) = fd::seqpacket_pair().unwrap();
                let master_end = std::os::unix::net::UnixDatagram::from(master_end);
                let hello = ToWorker::Hello {
                    worker_id: 1,
                    slot: 0,
                    generation: 1,
                    listeners: names.clone(),
                    balance: false,
                    http: None,
                    limits: None,
                    threads: None,
                    hold: false,
                    ready_fd: None,
                };
                let fds: Vec<_> = sockets.iter().map(|s| s.as_fd()).collect();
                protocol::send_now(&master_end, &hello, &fds).unwrap();
                runtime.block_on(async {
                    let (_handoff, received) = Handoff::receive_on(worker_end).unwrap();
                    let usable: Vec<_> = received
                        .into_iter()
                        .map(|l| Acceptor::new(l.listener, None).unwrap())
                        .collect();
                    assert_eq!(usable.len(), count);
                });
            })
        });
    }
    group.finish();
}

criterion_group!(benches, handoff);
criterion_main!(benches);
