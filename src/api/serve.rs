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

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use poem::{Endpoint, EndpointExt, IntoEndpoint};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Serves `endpoint` on `listener` until `shutdown` resolves, then drains connections for at
/// most `grace`.
pub async fn run<E>(
    listener: tokio::net::TcpListener,
    endpoint: E,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()>
where
    E: IntoEndpoint,
    E::Endpoint: 'static,
{
    let local = poem::web::LocalAddr(poem::Addr::SocketAddr(listener.local_addr()?));
    let endpoint = Arc::new(endpoint.into_endpoint().map_to_response());
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
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
        let service = hyper::service::service_fn(move |req| {
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
                // Clients hanging up mid-request are routine; nothing to act on.
                tracing::debug!(remote = %remote, error = %e, "connection ended with an error");
            }
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
