//! The accept loop shared by the observer sockets (stats server, metrics
//! endpoint, control socket): at most [`MAX_CLIENTS`] connections at once,
//! each served by its own task within a time limit, so a slow client never
//! stalls the emperor.
//!
//! The callers keep their own log lines (through `on_accept_error` and
//! `on_done`), so each line keeps its module as its target.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::unix::UCred;
use tokio::sync::Semaphore;
use tokio::time::error::Elapsed;

use crate::stats::{Conn, Listener, MAX_CLIENTS};

/// Accepts connections on `listener` for ever. A failed accept is passed to
/// `on_accept_error` and retried after 100 ms. Each connection (with the
/// peer's credentials on UNIX sockets) is turned into a future by `serve`,
/// which runs in its own task for at most `timeout`; its outcome, or the
/// elapsed time limit, goes to `on_done` in that task.
pub(crate) async fn accept_loop<S, F>(
    listener: Listener,
    timeout: Duration,
    on_accept_error: fn(&std::io::Error),
    serve: S,
    on_done: fn(Result<F::Output, Elapsed>),
) where
    S: Fn(Box<dyn Conn>, Option<UCred>) -> F,
    F: Future + Send + 'static,
    F::Output: Send,
{
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (conn, cred) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                on_accept_error(&e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let fut = serve(conn, cred);
        tokio::spawn(async move {
            let _permit = permit;
            on_done(tokio::time::timeout(timeout, fut).await);
        });
    }
}
