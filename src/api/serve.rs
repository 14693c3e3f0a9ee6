//! Serving the application: HTTP/1.1 and HTTP/2 (prior knowledge) on one TCP listener, with
//! graceful shutdown.
//!
//! We drive hyper ourselves rather than through `poem::Server`, which, after a connection
//! ended, awaited it once more and so kept its in-flight request running: a client that hung
//! up on a long-poll left the request waiting out its whole `wait`. Here a connection that ends
//! (the client closed it or it broke) drops the request being served on it, at once.
//!
//! Shutdown: stop accepting, ask every connection to finish (HTTP/1 stops keep-alive, HTTP/2
//! sends GOAWAY), let in-flight requests end (long-polls are answered by the event bus
//! closing), and give up on what is still open after the grace period.
//!
//! Slow and idle clients are bounded ([`HttpLimits`]), so that no number of them holds the
//! server's connections for long:
//! - at most `max_connections` are served at once (others wait in the listen backlog);
//! - a connection must send its first request head within `header_read_timeout` of being
//!   accepted (hyper-util times nothing while it detects the HTTP version), and every later
//!   HTTP/1 head within as long (hyper's own header timer);
//! - a connection with no request in progress for `header_read_timeout` is closed (HTTP/2 has
//!   no header timer: an idle or half-opened stream would otherwise stay forever);
//! - a request body that sends nothing for `body_idle_timeout` ends with an error
//!   ([`idle_body`]), and a response the client stops reading fails after as long without a
//!   byte written.

use crate::config::HttpLimits;
use futures::Stream;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use poem::{Endpoint, EndpointExt, IntoEndpoint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

/// Serves `endpoint` on `listener` until `shutdown` resolves, then drains connections for at
/// most `grace`.
pub async fn run<E>(
    listener: tokio::net::TcpListener,
    endpoint: E,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    limits: HttpLimits,
) -> std::io::Result<()>
where
    E: IntoEndpoint,
    E::Endpoint: 'static,
{
    let local = poem::web::LocalAddr(poem::Addr::SocketAddr(listener.local_addr()?));
    let endpoint = Arc::new(endpoint.into_endpoint().map_to_response());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let (stopping, stop) = watch::channel(false);
    let places = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        // A place for the next connection first: while every place is taken, new connections
        // wait in the kernel's backlog instead of taking memory and descriptors here.
        let place = tokio::select! {
            _ = &mut shutdown => break,
            place = places.clone().acquire_owned() => place.expect("never closed"),
        };
        let (stream, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin, try again shortly.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small responses (event pages, problems) should not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let served = serve_connection(
            &builder,
            endpoint.clone(),
            local.clone(),
            (stream, remote),
            limits,
            stop.clone(),
        );
        tokio::spawn(async move {
            served.await;
            drop(place);
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    // Every place back means every connection has ended.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, places.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "connections still open when the shutdown grace ran out"
        );
    }
    Ok(())
}

/// Serves one accepted connection until it ends: asked to finish when the server stops or
/// when it has had no request in progress for the header read timeout.
fn serve_connection<E: Endpoint<Output = poem::Response> + 'static>(
    builder: &auto::Builder<TokioExecutor>,
    endpoint: Arc<E>,
    local: poem::web::LocalAddr,
    (stream, remote): (tokio::net::TcpStream, std::net::SocketAddr),
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    let stream = Guarded::new(stream, limits);
    let head_seen = stream.head_seen.clone();
    let (working_tx, working) = watch::channel(0usize);
    let working_tx = Arc::new(working_tx);
    let service = hyper::service::service_fn(move |req| {
        head_seen.store(true, Ordering::Relaxed);
        // In progress until its response has been sent (or the request is dropped).
        let working = Working::start(working_tx.clone());
        let endpoint = endpoint.clone();
        let request = poem::Request::from((
            req,
            local.clone(),
            poem::web::RemoteAddr(poem::Addr::SocketAddr(remote)),
            poem::http::uri::Scheme::HTTP,
        ));
        async move {
            let response = endpoint.get_response(request).await;
            let response = hyper::Response::from(response).map(|body| CountedBody {
                body,
                _working: working,
            });
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    let idle_after = limits.header_read_timeout;
    async move {
        tokio::pin!(connection);
        let mut finishing = false;
        let result = loop {
            tokio::select! {
                result = connection.as_mut() => break result,
                _ = stop.wait_for(|s| *s), if !finishing => {
                    finishing = true;
                    connection.as_mut().graceful_shutdown();
                }
                _ = idle(working.clone(), idle_after), if !finishing => {
                    finishing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        };
        if let Err(e) = result {
            // Clients hanging up mid-request (or timed out) are routine; nothing to act on.
            tracing::debug!(remote = %remote, error = %e, "connection ended with an error");
        }
    }
}

/// Resolves once the connection has had no request in progress for `after`.
async fn idle(mut working: watch::Receiver<usize>, after: Duration) {
    loop {
        if *working.borrow_and_update() == 0 {
            tokio::select! {
                _ = tokio::time::sleep(after) => return,
                changed = working.changed() => if changed.is_err() { return },
            }
        } else if working.changed().await.is_err() {
            return;
        }
    }
}

/// One request in progress on a connection, from when hyper hands it over until its response
/// has been sent or dropped.
struct Working(Arc<watch::Sender<usize>>);

impl Working {
    fn start(count: Arc<watch::Sender<usize>>) -> Self {
        count.send_modify(|n| *n += 1);
        Working(count)
    }
}

impl Drop for Working {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// A response body that keeps its request counted as in progress while it is sent.
struct CountedBody<B> {
    body: B,
    _working: Working,
}

impl<B: http_body::Body + Unpin> http_body::Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A client connection with deadlines of its own: reads fail unless the first request head
/// arrives in time (the service sets `head_seen` when hyper hands it that request; from then
/// on heads are hyper's to time), and writes fail once the client has taken no byte for the
/// body idle time (a client that stops reading a download, say).
struct Guarded<I> {
    io: I,
    head_deadline: Option<Pin<Box<Sleep>>>,
    head_seen: Arc<AtomicBool>,
    write_stall: Duration,
    /// Armed while writes cannot go on.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<I> Guarded<I> {
    fn new(io: I, limits: HttpLimits) -> Self {
        Guarded {
            io,
            head_deadline: Some(Box::pin(tokio::time::sleep(limits.header_read_timeout))),
            head_seen: Arc::default(),
            write_stall: limits.body_idle_timeout,
            stalled: None,
        }
    }

    /// Passes a write's outcome on, unless writes have been blocked for too long.
    fn watch_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        outcome: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if outcome.is_ready() {
            self.stalled = None;
            return outcome;
        }
        let stall = self.write_stall;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took nothing for the body idle timeout",
            )));
        }
        Poll::Pending
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = &mut this.head_deadline {
            if this.head_seen.load(Ordering::Relaxed) {
                this.head_deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no whole request head within the header read timeout",
                )));
            }
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Guarded<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let outcome = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch_write(cx, outcome)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let outcome = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch_write(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let outcome = Pin::new(&mut self.io).poll_flush(cx);
        self.watch_write(cx, outcome)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A request body that fails with `TimedOut` once it has sent nothing for `idle`, then ends.
/// Whoever streams it (an upload chunk keeps what arrived) sees an error, as for a client that
/// hung up. `ended` is set once it has been read to its end (or failed).
pub fn idle_body(body: poem::Body, idle: Duration, ended: Arc<AtomicBool>) -> poem::Body {
    poem::Body::from_bytes_stream(IdleBody {
        inner: Box::pin(body.into_bytes_stream()),
        idle,
        last: Instant::now(),
        timer: None,
        done: false,
        ended,
    })
}

/// Wraps every request body in [`idle_body`]; an HTTP/1.1 answer given before the request's
/// body was read to its end (a refusal: no token, too large, a finalized package...) says
/// `Connection: close`, since the connection is closed after it: a client must not send its
/// next request there.
pub async fn bodies<E: Endpoint>(
    endpoint: Arc<E>,
    mut req: poem::Request,
    idle: Duration,
) -> poem::Result<poem::Response> {
    use poem::IntoResponse;
    let ended = Arc::new(AtomicBool::new(false));
    let announced = req.version() < poem::http::Version::HTTP_2
        && (req
            .headers()
            .get(poem::http::header::CONTENT_LENGTH)
            .is_some_and(|v| v != "0")
            || req
                .headers()
                .contains_key(poem::http::header::TRANSFER_ENCODING));
    let body = req.take_body();
    req.set_body(idle_body(body, idle, ended.clone()));
    let mut resp = endpoint.call(req).await?.into_response();
    if announced && !ended.load(Ordering::Relaxed) {
        resp.headers_mut().insert(
            poem::http::header::CONNECTION,
            poem::http::HeaderValue::from_static("close"),
        );
    }
    Ok(resp)
}

struct IdleBody<S> {
    inner: S,
    ended: Arc<AtomicBool>,
    idle: Duration,
    /// When the body last sent something (or was first read).
    last: Instant,
    /// Armed while the body is pending; reset only when it fires, not on every chunk.
    timer: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl<S> Stream for IdleBody<S>
where
    S: Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
{
    type Item = std::io::Result<bytes::Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(item)) => {
                this.last = Instant::now();
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => {
                this.done = true;
                this.ended.store(true, Ordering::Relaxed);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let due = this.last + this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                loop {
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    if timer.deadline() >= due {
                        break;
                    }
                    // Armed before the last chunk came: wait out the rest.
                    timer.as_mut().reset(due);
                }
                this.done = true;
                this.ended.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the request body sent nothing for {} s",
                        this.idle.as_secs()
                    ),
                ))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test(start_paused = true)]
    async fn a_body_that_goes_quiet_fails_and_ends() {
        let (mut tx, rx) = futures::channel::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
        let mut body = IdleBody {
            inner: rx,
            idle: Duration::from_secs(60),
            last: Instant::now(),
            timer: None,
            done: false,
            ended: Arc::default(),
        };
        // Chunks 40 s apart keep it alive, however long it runs in all.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(40)).await;
            tx.try_send(Ok(bytes::Bytes::from_static(b"x"))).unwrap();
            assert_eq!(body.next().await.unwrap().unwrap(), "x");
        }
        let started = Instant::now();
        let err = body.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        assert!(body.next().await.is_none(), "ends after the error");
        // An ending body ends.
        let (tx, rx) = futures::channel::mpsc::channel::<std::io::Result<bytes::Bytes>>(1);
        drop(tx);
        let mut ended = IdleBody {
            inner: rx,
            idle: Duration::from_secs(1),
            last: Instant::now(),
            timer: None,
            done: false,
            ended: Arc::default(),
        };
        assert!(ended.next().await.is_none());
    }
}
