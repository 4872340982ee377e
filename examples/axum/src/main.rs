//! An axum application served by baton-worker: a small store of notes with
//! shared state, a JSON API, a POST, and a streaming response.
//!
//!     cargo build --release -p baton-axum-example
//!     baton serve --workers 4 --native -- target/release/baton-axum-example
//!
//! Run on its own it serves `BATON_LISTEN` (default 127.0.0.1:8080), or
//! the socket systemd passed. With `--plain` it is served by
//! `axum::serve` on the first socket passed (`LISTEN_FDS`, as `baton serve
//! -- …` without `--native` gives it) instead, to compare.
//!
//! Routes:
//! - `GET /`: `Process handled by pid: <pid>` (what `baton check` reads);
//! - `GET /notes`: every note, as JSON;
//! - `POST /notes` with `{"text": "…"}`: stores a note, answers it as JSON;
//! - `GET /notes/stream`: a server-sent event per note stored from now on,
//!   ended when the worker drains (an SSE client reconnects by itself).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::{Extension, Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// What every request shares.
#[derive(Clone)]
struct Notes {
    stored: Arc<Mutex<BTreeMap<u64, Note>>>,
    added: broadcast::Sender<Note>,
}

#[derive(Clone, Serialize)]
struct Note {
    id: u64,
    text: String,
    pid: u32,
}

#[derive(Deserialize)]
struct NewNote {
    text: String,
}

async fn list(State(notes): State<Notes>) -> Json<Vec<Note>> {
    let stored = notes.stored.lock().expect("not poisoned");
    Json(stored.values().cloned().collect())
}

async fn add(State(notes): State<Notes>, Json(new): Json<NewNote>) -> Json<Note> {
    let note = {
        let mut stored = notes.stored.lock().expect("not poisoned");
        let id = stored.keys().next_back().map_or(1, |last| last + 1);
        let note = Note {
            id,
            text: new.text,
            pid: std::process::id(),
        };
        stored.insert(id, note.clone());
        note
    };
    let _ = notes.added.send(note.clone());
    Json(note)
}

/// Each note added from now on, until the worker drains.
async fn follow(
    State(notes): State<Notes>,
    drain: Option<Extension<baton_worker::Drain>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let added = notes.added.subscribe();
    let events = stream::unfold(added, |mut added| async move {
        loop {
            match added.recv().await {
                Ok(note) => {
                    let event = Event::default()
                        .json_data(&note)
                        .expect("a note serializes");
                    return Some((Ok(event), added));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let drained = async move {
        match drain {
            Some(Extension(drain)) => drain.started().await,
            None => std::future::pending().await,
        }
    };
    Sse::new(events.take_until(drained))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn app() -> Router {
    let pid = std::process::id();
    let notes = Notes {
        stored: Arc::default(),
        added: broadcast::channel(64).0,
    };
    Router::new()
        .route(
            "/",
            get(move || async move { format!("Process handled by pid: {pid}") }).post(
                move |body: axum::body::Bytes| async move {
                    format!(
                        "Process handled by pid: {pid}, received {} bytes",
                        body.len()
                    )
                },
            ),
        )
        .route("/notes", get(list).post(add))
        .route("/notes/stream", get(follow))
        .with_state(notes)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The library logs its drain and what it serves through tracing; under
    // baton each line reaches the master's output behind `[slot N pid P]`.
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    if std::env::args().any(|arg| arg == "--plain") {
        return plain().await;
    }
    baton_worker::serve(app()).await?;
    Ok(())
}

/// The same application on `axum::serve`, on the first socket passed.
async fn plain() -> Result<(), Box<dyn std::error::Error>> {
    let passed = std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string());
    if !passed {
        return Err(
            "--plain serves the socket baton passes: run it as `baton serve -- PROGRAM --plain`"
                .into(),
        );
    }
    // SAFETY: LISTEN_PID names this process, so descriptor 3 was passed to
    // it, and nothing else in it owns descriptor 3.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(3) };
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    axum::serve(listener, app())
        .with_graceful_shutdown(async move {
            term.recv().await;
        })
        .await?;
    Ok(())
}
