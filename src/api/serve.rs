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
//! Slow and idle clients are bounded ([`HttpLimits`]): at most `max_connections` are served
//! at once (others wait in the listen backlog); a connection must send its first request head
//! within `header_read_timeout` of being accepted (before hyper even knows which HTTP version
//! it speaks, which hyper itself does not time), and every later HTTP/1 head within as long
//! of the connection becoming idle (hyper's own header timer); a request body that sends
//! nothing for `body_idle_timeout` ends with an error ([`idle_body`]).

use crate::config::HttpLimits;
use futures::Stream;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use poem::{Endpoint, EndpointExt, IntoEndpoint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
    let graceful = GracefulShutdown::new();
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
        let endpoint = endpoint.clone();
        let local = local.clone();
        let stream = FirstHeadDeadline::new(stream, limits.header_read_timeout);
        let head_seen = stream.head_seen.clone();
        let service = hyper::service::service_fn(move |req| {
            head_seen.store(true, Ordering::Relaxed);
            let endpoint = endpoint.clone();
            let request = poem::Request::from((
                req,
                local.clone(),
                poem::web::RemoteAddr(poem::Addr::SocketAddr(remote)),
                poem::http::uri::Scheme::HTTP,
            ));
            async move {
                let response = endpoint.get_response(request).await;
                Ok::<_, std::convert::Infallible>(hyper::Response::from(response))
            }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // Clients hanging up mid-request (or timed out) are routine; nothing to act on.
                tracing::debug!(remote = %remote, error = %e, "connection ended with an error");
            }
            drop(place);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "connections still open when the shutdown grace ran out");
        }
    }
    Ok(())
}

/// A connection that is closed (its reads fail) unless its first request head arrives in time.
/// The service sets `head_seen` when hyper hands it that request; from then on the connection
/// is hyper's to time.
struct FirstHeadDeadline<I> {
    io: I,
    deadline: Option<Pin<Box<Sleep>>>,
    head_seen: Arc<AtomicBool>,
}

impl<I> FirstHeadDeadline<I> {
    fn new(io: I, within: Duration) -> Self {
        FirstHeadDeadline {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
            head_seen: Arc::default(),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstHeadDeadline<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = &mut this.deadline {
            if this.head_seen.load(Ordering::Relaxed) {
                this.deadline = None;
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

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstHeadDeadline<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A request body that fails with `TimedOut` once it has sent nothing for `idle`, then ends.
/// Whoever streams it (an upload chunk keeps what arrived) sees an error, as for a client that
/// hung up.
pub fn idle_body(body: poem::Body, idle: Duration) -> poem::Body {
    poem::Body::from_bytes_stream(IdleBody {
        inner: Box::pin(body.into_bytes_stream()),
        idle,
        last: Instant::now(),
        timer: None,
        done: false,
    })
}

struct IdleBody<S> {
    inner: S,
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
        };
        assert!(ended.next().await.is_none());
    }
}
