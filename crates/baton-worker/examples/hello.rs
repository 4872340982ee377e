//! The smallest program on the library, with a `main` that lets the library
//! build its runtime ([`baton_worker::Builder::run`]): under
//! `baton serve --native --threads N -- hello` each worker runs N threads;
//! on its own (`cargo run -p baton-worker --example hello`) it serves
//! `127.0.0.1:8080` on one.

use std::convert::Infallible;

use http::{Request, Response};

fn main() -> Result<(), baton_worker::Error> {
    let app = tower::service_fn(|_: Request<baton_worker::Body>| async {
        let pid = std::process::id();
        Ok::<_, Infallible>(Response::new(format!("hello from pid {pid}\n")))
    });
    baton_worker::Builder::new().run(app)
}
