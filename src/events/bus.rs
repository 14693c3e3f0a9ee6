//! The event bus: one dedicated LISTEN connection per process, fanned out to every waiter.
//!
//! The connection is never pooled (a pooled connection drops its LISTEN when recycled). Each
//! notification carries the highest committed sequence and the tenants whose events the
//! transaction committed (`<sequence> <tenant>,<tenant>`; the sequence alone when the list
//! would be too long). It is published through `watch` channels: one for the whole log (for
//! workers) and one per tenant that has long-polls waiting, so a commit wakes only the waiters
//! that can see its events. Waiters wake, compare with what they have seen, and re-read the
//! events table, which is the truth. If the connection dies (PostgreSQL restart,
//! `pg_terminate_backend`), it is re-established with backoff and the table's latest sequence
//! is published to every waiter, so they re-read: a lost notification costs latency, never an
//! event.
//!
//! Long-polls are bounded ([`LongPollLimits`]): in all, and per tenant, so one tenant cannot
//! take every place.

use super::log::{NOTIFY_CHANNEL, latest_sequence};
use crate::domain::TenantId;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// `application_name` of the LISTEN connection (visible in `pg_stat_activity`).
pub const LISTENER_APPLICATION_NAME: &str = "artifactstore-listener";

/// Most `GET /events` requests open at once, in all and per tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongPollLimits {
    /// In all (`ARTIFACTSTORE_MAX_LONG_POLLS`).
    pub total: usize,
    /// Per tenant (`ARTIFACTSTORE_MAX_LONG_POLLS_PER_TENANT`).
    pub per_tenant: usize,
}

impl Default for LongPollLimits {
    fn default() -> Self {
        LongPollLimits {
            total: 10_000,
            per_tenant: 1_000,
        }
    }
}

/// Fans out "events up to N are committed" to every waiter in the process.
#[derive(Clone)]
pub struct EventBus {
    latest: watch::Receiver<i64>,
    closing: watch::Receiver<bool>,
    close: Arc<watch::Sender<bool>>,
    waiters: Arc<Waiters>,
    connected: Arc<AtomicBool>,
}

/// The long-polls open now, by tenant, each tenant with the channel that wakes them.
struct Waiters {
    limits: LongPollLimits,
    state: Mutex<WaitersState>,
}

#[derive(Default)]
struct WaitersState {
    total: usize,
    tenants: HashMap<String, TenantWaiters>,
}

struct TenantWaiters {
    /// Highest sequence known to hold one of the tenant's events (or, after a reconnect, the
    /// latest sequence at all).
    latest: watch::Sender<i64>,
    open: usize,
}

impl Waiters {
    fn new(limits: LongPollLimits) -> Self {
        Waiters {
            limits,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WaitersState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes that events up to `sequence` are committed for `tenants` (every tenant with
    /// waiters when `None`).
    fn publish(&self, sequence: i64, tenants: Option<&[&str]>) {
        let state = self.lock();
        let wake = |waiters: &TenantWaiters| {
            waiters.latest.send_if_modified(|v| bump(v, sequence));
        };
        match tenants {
            Some(tenants) => tenants
                .iter()
                .filter_map(|t| state.tenants.get(*t))
                .for_each(wake),
            None => state.tenants.values().for_each(wake),
        }
    }
}

/// What the bus is doing now (for `/health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusStatus {
    /// Long-poll requests open now (see [`EventBus::waiting_request`]).
    pub waiting: usize,
    /// Whether the LISTEN connection is up.
    pub listening: bool,
}

/// One long-poll request's place among the waiters, for as long as it lives: a request that
/// ends for any reason (an answer, a timeout, or the client going away and the request being
/// dropped) gives its place up.
pub struct WaitingRequest {
    waiters: Arc<Waiters>,
    tenant: String,
    latest: watch::Receiver<i64>,
    closing: watch::Receiver<bool>,
}

impl WaitingRequest {
    /// Waits until an event of this request's tenant with a sequence above `seen` may be
    /// committed, `timeout` passes, or the bus closes. Returns true if there may be new events.
    pub async fn wait_beyond(&self, seen: i64, timeout: Duration) -> bool {
        wait_beyond(&self.latest, &self.closing, seen, timeout).await
    }
}

impl Drop for WaitingRequest {
    fn drop(&mut self) {
        let mut state = self.waiters.lock();
        state.total -= 1;
        if let Some(tenant) = state.tenants.get_mut(&self.tenant) {
            tenant.open -= 1;
            if tenant.open == 0 {
                state.tenants.remove(&self.tenant);
            }
        }
    }
}

/// Why a long-poll was refused a place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitRefused {
    /// Every place of the process is taken.
    #[error("{0} event requests are open on this server, its limit; retry shortly")]
    Full(usize),
    /// The tenant holds all the places it may.
    #[error("this tenant has {0} event requests open, its limit; retry shortly")]
    TenantFull(usize),
}

impl From<WaitRefused> for crate::Error {
    fn from(e: WaitRefused) -> Self {
        crate::Error::Busy(e.to_string())
    }
}

impl EventBus {
    /// Starts the listener task for the database at `url`.
    pub fn start(url: &str, limits: LongPollLimits) -> Self {
        let (latest_tx, latest) = watch::channel(0i64);
        let (close_tx, closing) = watch::channel(false);
        let url = url.to_owned();
        let stop = closing.clone();
        let waiters = Arc::new(Waiters::new(limits));
        let connected = Arc::new(AtomicBool::new(false));
        let listener = Listener {
            latest: latest_tx,
            waiters: waiters.clone(),
            connected: connected.clone(),
        };
        tokio::spawn(async move { listen_forever(url, listener, stop).await });
        EventBus {
            latest,
            closing,
            close: Arc::new(close_tx),
            waiters,
            connected,
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
            waiters: Arc::new(Waiters::new(LongPollLimits::default())),
            connected: Arc::default(),
        }
    }

    /// A place for one long-poll request of `tenant`, counted in [`BusStatus::waiting`] until
    /// it drops; refused when the process or the tenant has all the places it may.
    pub fn waiting_request(&self, tenant: &TenantId) -> Result<WaitingRequest, WaitRefused> {
        let limits = self.waiters.limits;
        let mut state = self.waiters.lock();
        if state.total >= limits.total {
            return Err(WaitRefused::Full(limits.total));
        }
        let open = state.tenants.get(tenant.as_str()).map_or(0, |t| t.open);
        if open >= limits.per_tenant {
            return Err(WaitRefused::TenantFull(limits.per_tenant));
        }
        // A new tenant channel starts at the log's latest sequence: anything committed before
        // it existed is at most that, so a waiter that has not read that far yet re-reads.
        let current = *self.latest.borrow();
        let entry = state
            .tenants
            .entry(tenant.as_str().to_owned())
            .or_insert_with(|| TenantWaiters {
                latest: watch::channel(current).0,
                open: 0,
            });
        entry.open += 1;
        let latest = entry.latest.subscribe();
        state.total += 1;
        Ok(WaitingRequest {
            waiters: self.waiters.clone(),
            tenant: tenant.as_str().to_owned(),
            latest,
            closing: self.closing.clone(),
        })
    }

    /// Resolves when the bus closes (shutdown).
    pub async fn closed(&self) {
        let mut closing = self.closing.clone();
        let _ = closing.wait_for(|c| *c).await;
    }

    /// How many long-poll requests are open now, and whether the listener is connected.
    pub fn status(&self) -> BusStatus {
        BusStatus {
            waiting: self.waiters.lock().total,
            listening: self.connected.load(Ordering::Relaxed),
        }
    }

    /// The highest sequence known to be committed.
    pub fn latest(&self) -> i64 {
        *self.latest.borrow()
    }

    /// Waits until a sequence above `seen` is committed (by any tenant), `timeout` passes, or
    /// the bus closes. Returns true if there may be new events.
    pub async fn wait_beyond(&self, seen: i64, timeout: Duration) -> bool {
        wait_beyond(&self.latest, &self.closing, seen, timeout).await
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

async fn wait_beyond(
    latest: &watch::Receiver<i64>,
    closing: &watch::Receiver<bool>,
    seen: i64,
    timeout: Duration,
) -> bool {
    let mut latest = latest.clone();
    let mut closing = closing.clone();
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

/// What the listener task publishes to.
struct Listener {
    latest: watch::Sender<i64>,
    waiters: Arc<Waiters>,
    connected: Arc<AtomicBool>,
}

impl Listener {
    /// Events up to `sequence` are committed, for `tenants` (for all, when not known).
    fn publish(&self, sequence: i64, tenants: Option<&[&str]>) {
        // The log's channel first: a tenant channel made meanwhile starts from it.
        self.latest.send_if_modified(|v| bump(v, sequence));
        self.waiters.publish(sequence, tenants);
    }
}

async fn listen_forever(url: String, listener: Listener, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let session = listen_once(&url, &listener);
        tokio::select! {
            result = session => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, retry_in = ?backoff, "event listener connection lost; reconnecting");
                }
            }
            _ = stop.wait_for(|c| *c) => return,
        }
        // A connection that came up resets the backoff: it counts failures in a row.
        if listener.connected.swap(false, Ordering::Relaxed) {
            backoff = Duration::from_millis(50);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One connection's life: LISTEN, publish the table's latest sequence to every waiter
/// (catching up on anything missed while disconnected), then publish every notification until
/// the connection fails.
async fn listen_once(url: &str, listener: &Listener) -> crate::Result<()> {
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
    // Anything committed before LISTEN took effect is in the table; whose, we do not know.
    let current = latest_sequence(&client).await?;
    listener.publish(current, None);
    listener.connected.store(true, Ordering::Relaxed);
    tracing::info!(latest = current, "event listener connected");
    let result = loop {
        match rx.recv().await {
            Some(Ok(Notice::Committed(payload))) => {
                let (sequence, tenants) = parse_payload(&payload);
                let tenants: Option<Vec<&str>> = tenants.map(|t| t.split(',').collect());
                listener.publish(sequence, tenants.as_deref());
            }
            Some(Ok(Notice::Closed)) | None => {
                break Err(crate::Error::Database("listener connection closed".into()));
            }
            Some(Err(e)) => break Err(e.into()),
        }
    };
    driver.abort();
    result
}

/// A notification's payload, or the end of the connection.
enum Notice {
    Committed(String),
    Closed,
}

/// `<sequence>` or `<sequence> <tenant>,<tenant>,...` (see `sql/V6__notify_tenants.sql`): the
/// sequence (0 if unreadable: it wakes nobody, and the next notification or reconnect
/// catches up) and the tenants, if listed.
fn parse_payload(payload: &str) -> (i64, Option<&str>) {
    let (sequence, tenants) = match payload.split_once(' ') {
        Some((sequence, tenants)) => (sequence, Some(tenants).filter(|t| !t.is_empty())),
        None => (payload, None),
    };
    (sequence.parse().unwrap_or(0), tenants)
}

/// Sends the payload of every notification on `connection` to `tx`, then
/// [`Notice::Closed`] once the connection closes (or an error).
async fn forward_notifications<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    tx: tokio::sync::mpsc::UnboundedSender<std::result::Result<Notice, tokio_postgres::Error>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut messages = futures::stream::poll_fn(|cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        match message {
            Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                if tx
                    .send(Ok(Notice::Committed(n.payload().to_owned())))
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
    let _ = tx.send(Ok(Notice::Closed));
}

fn bump(current: &mut i64, seen: i64) -> bool {
    if seen > *current {
        *current = seen;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::new(name).unwrap()
    }

    #[test]
    fn payloads_with_and_without_tenants() {
        assert_eq!(parse_payload("42"), (42, None));
        assert_eq!(parse_payload("42 acme,globex"), (42, Some("acme,globex")));
        assert_eq!(parse_payload("42 "), (42, None));
        assert_eq!(parse_payload("x"), (0, None));
    }

    #[tokio::test]
    async fn a_commit_wakes_only_the_waiters_of_its_tenants() {
        let bus = EventBus::idle();
        let (acme, globex) = (tenant("acme"), tenant("globex"));
        let a = bus.waiting_request(&acme).unwrap();
        let g = bus.waiting_request(&globex).unwrap();
        let listener = Listener {
            latest: watch::channel(0).0,
            waiters: bus.waiters.clone(),
            connected: Arc::default(),
        };
        listener.publish(5, Some(&["globex"]));
        let short = Duration::from_millis(50);
        assert!(
            !a.wait_beyond(0, short).await,
            "acme saw nothing of its own"
        );
        assert!(g.wait_beyond(0, short).await);
        // A notification of unknown tenants (a reconnect) wakes everyone.
        listener.publish(6, None);
        assert!(a.wait_beyond(0, short).await);
        assert!(g.wait_beyond(5, short).await);
    }

    #[test]
    fn places_are_bounded_in_all_and_per_tenant_and_given_back() {
        let bus = EventBus::idle();
        let bus = EventBus {
            waiters: Arc::new(Waiters::new(LongPollLimits {
                total: 3,
                per_tenant: 2,
            })),
            ..bus
        };
        let (acme, globex) = (tenant("acme"), tenant("globex"));
        let a1 = bus.waiting_request(&acme).unwrap();
        let _a2 = bus.waiting_request(&acme).unwrap();
        assert_eq!(
            bus.waiting_request(&acme).err(),
            Some(WaitRefused::TenantFull(2))
        );
        let _g1 = bus.waiting_request(&globex).unwrap();
        assert_eq!(
            bus.waiting_request(&globex).err(),
            Some(WaitRefused::Full(3))
        );
        assert_eq!(bus.status().waiting, 3);
        drop(a1);
        assert_eq!(bus.status().waiting, 2);
        let _g2 = bus.waiting_request(&globex).unwrap();
        assert!(bus.waiters.lock().tenants.contains_key("acme"));
        drop(_a2);
        assert!(
            !bus.waiters.lock().tenants.contains_key("acme"),
            "no tenant left behind"
        );
    }
}
