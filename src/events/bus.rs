//! The event bus: one dedicated LISTEN connection per process, fanned out to every waiter.
//!
//! The connection is never pooled (a pooled connection drops its LISTEN when recycled). Each
//! notification carries the highest committed sequence, which is published through a `watch`
//! channel: waiters wake, compare with what they have seen, and re-read the events table, which
//! is the truth. If the connection dies (PostgreSQL restart, `pg_terminate_backend`), it is
//! re-established with backoff and the table's latest sequence is published, so waiters re-read:
//! a lost notification costs latency, never an event.

use super::log::{NOTIFY_CHANNEL, latest_sequence};
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// `application_name` of the LISTEN connection (visible in `pg_stat_activity`).
pub const LISTENER_APPLICATION_NAME: &str = "artifactstore-listener";

/// Fans out "events up to N are committed" to every waiter in the process.
#[derive(Clone)]
pub struct EventBus {
    latest: watch::Receiver<i64>,
    closing: watch::Receiver<bool>,
    close: Arc<watch::Sender<bool>>,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Stats {
    waiting: AtomicUsize,
    connected: AtomicBool,
}

/// What the bus is doing now (for `/health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusStatus {
    /// Long-poll requests open now (see [`EventBus::waiting_request`]).
    pub waiting: usize,
    /// Whether the LISTEN connection is up.
    pub listening: bool,
}

/// Counts a long-poll request for as long as it lives: a request that ends for any reason (an
/// answer, a timeout, or the client going away and the request being dropped) stops counting.
pub struct WaitingRequest(Arc<Stats>);

impl Drop for WaitingRequest {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EventBus {
    /// Starts the listener task for the database at `url`.
    pub fn start(url: &str) -> Self {
        let (latest_tx, latest) = watch::channel(0i64);
        let (close_tx, closing) = watch::channel(false);
        let url = url.to_owned();
        let stop = closing.clone();
        let stats = Arc::new(Stats::default());
        let task_stats = stats.clone();
        tokio::spawn(async move { listen_forever(url, latest_tx, stop, task_stats).await });
        EventBus {
            latest,
            closing,
            close: Arc::new(close_tx),
            stats,
        }
    }

    /// A bus with no listener (for generating the API description without a database).
    pub fn idle() -> Self {
        let (latest_tx, latest) = watch::channel(0i64);
        let (close_tx, closing) = watch::channel(false);
        drop(latest_tx);
        EventBus {
            latest,
            closing,
            close: Arc::new(close_tx),
            stats: Arc::default(),
        }
    }

    /// Counts a long-poll request in [`BusStatus::waiting`] until the guard drops.
    pub fn waiting_request(&self) -> WaitingRequest {
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        WaitingRequest(self.stats.clone())
    }

    /// Resolves when the bus closes (shutdown).
    pub async fn closed(&self) {
        let mut closing = self.closing.clone();
        let _ = closing.wait_for(|c| *c).await;
    }

    /// How many long-poll requests are open now, and whether the listener is connected.
    pub fn status(&self) -> BusStatus {
        BusStatus {
            waiting: self.stats.waiting.load(Ordering::Relaxed),
            listening: self.stats.connected.load(Ordering::Relaxed),
        }
    }

    /// The highest sequence known to be committed.
    pub fn latest(&self) -> i64 {
        *self.latest.borrow()
    }

    /// Waits until a sequence above `seen` is committed, `timeout` passes, or the bus closes.
    /// Returns true if there may be new events.
    pub async fn wait_beyond(&self, seen: i64, timeout: Duration) -> bool {
        let mut latest = self.latest.clone();
        let mut closing = self.closing.clone();
        if *closing.borrow() {
            return false;
        }
        let wait = async {
            loop {
                if *latest.borrow_and_update() > seen {
                    return true;
                }
                if latest.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::select! {
            more = wait => more,
            _ = tokio::time::sleep(timeout) => false,
            _ = closing.wait_for(|c| *c) => false,
        }
    }

    /// Whether the bus is shutting down.
    pub fn is_closed(&self) -> bool {
        *self.closing.borrow()
    }

    /// Wakes every waiter to answer with what it has (graceful shutdown).
    pub fn close(&self) {
        let _ = self.close.send(true);
    }
}

async fn listen_forever(
    url: String,
    latest: watch::Sender<i64>,
    mut stop: watch::Receiver<bool>,
    stats: Arc<Stats>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let session = listen_once(&url, &latest, &stats.connected);
        tokio::select! {
            result = session => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, retry_in = ?backoff, "event listener connection lost; reconnecting");
                }
            }
            _ = stop.wait_for(|c| *c) => return,
        }
        // A connection that came up resets the backoff: it counts failures in a row.
        if stats.connected.swap(false, Ordering::Relaxed) {
            backoff = Duration::from_millis(50);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One connection's life: LISTEN, publish the table's latest sequence (catching up on
/// anything missed while disconnected), then publish every notification until the connection
/// fails.
async fn listen_once(
    url: &str,
    latest: &watch::Sender<i64>,
    connected: &AtomicBool,
) -> crate::Result<()> {
    let crate::db::Target { mut config, tls } = crate::db::target(url)?;
    config.application_name(LISTENER_APPLICATION_NAME);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // We drive the connection ourselves: notifications arrive as messages on it.
    let (client, driver) = match tls {
        Some(tls) => {
            let (client, connection) = config.connect(tls).await?;
            (client, tokio::spawn(forward_notifications(connection, tx)))
        }
        None => {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            (client, tokio::spawn(forward_notifications(connection, tx)))
        }
    };
    client
        .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
        .await?;
    // Anything committed before LISTEN took effect is in the table.
    let current = latest_sequence(&client).await?;
    latest.send_if_modified(|v| bump(v, current));
    connected.store(true, Ordering::Relaxed);
    tracing::info!(latest = current, "event listener connected");
    let result = loop {
        match rx.recv().await {
            Some(Ok(-1)) | None => {
                break Err(crate::Error::Database("listener connection closed".into()));
            }
            Some(Ok(seq)) => {
                latest.send_if_modified(|v| bump(v, seq));
            }
            Some(Err(e)) => break Err(e.into()),
        }
    };
    driver.abort();
    result
}

/// Sends the sequence number of every notification on `connection` to `tx`, then `-1` once
/// the connection closes (or an error).
async fn forward_notifications<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    tx: tokio::sync::mpsc::UnboundedSender<std::result::Result<i64, tokio_postgres::Error>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut messages = futures::stream::poll_fn(|cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        match message {
            Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                if tx
                    .send(Ok(n.payload().parse::<i64>().unwrap_or(0)))
                    .is_err()
                {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    }
    let _ = tx.send(Ok(-1)); // connection closed
}

fn bump(current: &mut i64, seen: i64) -> bool {
    if seen > *current {
        *current = seen;
        true
    } else {
        false
    }
}
