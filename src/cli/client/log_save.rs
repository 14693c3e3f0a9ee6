//! `log save DIR`: keeps a copy of the event log's proofs (the chain's links, the tenant's own
//! events in CBOR, the signed checkpoints and the public keys) for `log verify --copy DIR`,
//! which checks it offline. Run it again to append what is new (a tailer runs it
//! periodically); the format is in [`crate::registry::log_copy`].

use super::ClientArgs;
use super::api::CliError;
use crate::manifest::canonical::{decode_value, encode_value};
use crate::registry::log_copy::{
    self, CHECKPOINTS_FILE, EVENTS_FILE, KEYS_FILE, LINKS_FILE, SavedLink,
};
use artifactstore_client::ClientInfo as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `log save` options.
#[derive(Debug, clap::Args)]
pub struct LogSaveArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The copy's directory (created if need be; an existing copy is brought up to date).
    dir: PathBuf,
    /// No progress display.
    #[arg(long)]
    quiet: bool,
}

/// Links and events asked for per request.
const PAGE: u32 = 1000;

/// Most bytes of one event page held in memory: the largest event a copy holds, and room for
/// the page around it. A longer page (a server whose pages are bounded more loosely, or not at
/// all) is asked for again with half the events, down to one.
const MAX_PAGE_BYTES: u64 = log_copy::MAX_ITEM + (1 << 20);

/// Longest a page's body may go without a byte before the save gives up (it holds the copy's
/// lock meanwhile).
const STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// The body of `response`, unless it is longer than `bound` (then `None`, read no further);
/// an error if it stalls for [`STALL`].
async fn read_bounded(
    mut response: reqwest::Response,
    bound: u64,
) -> Result<Option<Vec<u8>>, CliError> {
    let transport =
        |e: reqwest::Error| CliError::from(artifactstore_client::StoreError::transport(&e));
    let announced = response.content_length();
    if announced.is_some_and(|n| n > bound) {
        return Ok(None);
    }
    // What the server announces is only a claim: room for at most 1 MiB of it up front.
    let mut body = Vec::with_capacity(announced.unwrap_or(0).min(1 << 20) as usize);
    loop {
        let chunk = tokio::time::timeout(STALL, response.chunk())
            .await
            .map_err(|_| {
                CliError::other(format!(
                    "the server sent nothing for {} s in the middle of an event page",
                    STALL.as_secs()
                ))
            })?
            .map_err(transport)?;
        let Some(chunk) = chunk else { break };
        if (body.len() + chunk.len()) as u64 > bound {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The events to ask for after a page of `limit` events after `since` was too long: half as
/// many, or an error when that page held one event.
fn fewer(limit: u32, since: i64) -> Result<u32, CliError> {
    if limit <= 1 {
        return Err(CliError::other(format!(
            "the server's page of the one event after {since} is over {MAX_PAGE_BYTES} bytes, \
             more than a copy holds; nothing after {since} was saved"
        )));
    }
    Ok(limit / 2)
}

fn copy_error(e: log_copy::CopyError) -> CliError {
    CliError::other(e.to_string())
}

/// Brings the copy in `args.dir` up to date: checkpoints first, then the tenant's events,
/// then the links, so that the links saved reach every event and checkpoint saved.
pub async fn save(args: LogSaveArgs) -> Result<ExitCode, CliError> {
    let store = super::api::store(&args.client)?;
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| CliError::other(format!("{}: {e}", args.dir.display())))?;
    let _lock = log_copy::CopyLock::exclusive(&args.dir).map_err(copy_error)?;
    let bar = super::counter(args.quiet, "{pos} links saved ({per_sec})");
    let keys = store.call(store.api().list_keys().send()).await?;
    let keys = serde_json::to_vec_pretty(&keys).map_err(|e| CliError::other(e.to_string()))?;
    write_whole(&args.dir.join(KEYS_FILE), &keys)?;
    let checkpoints = save_checkpoints(&store, &args.dir).await?;
    let (events, last_event) = save_events(&store, &args.dir).await?;
    let (links, last_link) = save_links(&store, &args.dir, last_event, &bar).await?;
    bar.finish_and_clear();
    eprintln!(
        "saved {links} links, {events} events and {checkpoints} checkpoints to {} (through event \
         {last_link}); check it with `artifactstore log verify --copy {} --key <pem>`",
        args.dir.display(),
        args.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes a file whole: a temporary file beside it, synced, then renamed over it.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, bytes)
        .and_then(|()| std::fs::File::open(&temporary)?.sync_all())
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|e| CliError::other(format!("{}: {e}", path.display())))
}

/// Appends the checkpoints made after the last one saved; how many.
async fn save_checkpoints(
    store: &artifactstore_client::Store,
    dir: &Path,
) -> Result<u64, CliError> {
    let path = dir.join(CHECKPOINTS_FILE);
    let last = log_copy::Lines::last_repaired(&path).map_err(copy_error)?;
    let mut since = match last {
        Some(line) => {
            serde_json::from_str::<crate::registry::Checkpoint>(&line)
                .map_err(|e| CliError::other(format!("{}: {e}", path.display())))?
                .sequence
        }
        None => 0,
    };
    let mut saved = 0;
    loop {
        let page = store
            .call(
                store
                    .api()
                    .list_checkpoints()
                    .since(since)
                    .limit(std::num::NonZeroU32::new(PAGE).expect("not zero"))
                    .send(),
            )
            .await?;
        if page.items.is_empty() {
            return Ok(saved);
        }
        let mut text = String::new();
        for checkpoint in &page.items {
            since = forward(since, checkpoint.sequence, "checkpoint")?;
            text.push_str(&serde_json::to_string(checkpoint).expect("JSON"));
            text.push('\n');
        }
        log_copy::append(&path, text.as_bytes()).map_err(copy_error)?;
        saved += page.items.len() as u64;
    }
}

/// Appends the tenant's events after the last one saved, as served in CBOR; how many, and
/// the last event's sequence.
async fn save_events(
    store: &artifactstore_client::Store,
    dir: &Path,
) -> Result<(u64, i64), CliError> {
    let path = dir.join(EVENTS_FILE);
    let last = log_copy::Items::last_repaired(&path).map_err(copy_error)?;
    let mut since = match last {
        Some(item) => {
            log_copy::served_event_digest(&item)
                .map_err(|e| CliError::other(format!("{}: {e}", path.display())))?
                .0
        }
        None => 0,
    };
    let mut saved = 0;
    let api = store.api();
    let mut limit = PAGE;
    loop {
        let url = format!(
            "{}/events?since={since}&limit={limit}&wait=0",
            api.baseurl()
        );
        let response = api
            .client()
            .get(url)
            .header("accept", "application/cbor")
            .send()
            .await
            .map_err(|e| CliError::from(artifactstore_client::StoreError::transport(&e)))?;
        if !response.status().is_success() {
            let refused = artifactstore_client::StoreError::from_response(response).await;
            return Err(refused.into());
        }
        let Some(bytes) = read_bounded(response, MAX_PAGE_BYTES).await? else {
            limit = fewer(limit, since)?;
            continue;
        };
        // After a page too long, the events per page grow back by doubling.
        limit = limit.saturating_mul(2).min(PAGE);
        let (events, next) = event_page(&bytes)?;
        if events.is_empty() {
            return Ok((saved, since));
        }
        let (out, last, count) = page_items(events, since, log_copy::MAX_ITEM)?;
        saved += count;
        log_copy::append(&path, &out).map_err(copy_error)?;
        since = forward(since, next, "page's next_since")?.max(last);
    }
}

/// A page's events after `since`, encoded for the copy, each at most `max_item` bytes (one
/// the copy could not read back would end every later save and verify), in order; the last
/// one's sequence and how many.
fn page_items(
    events: Vec<ciborium::Value>,
    since: i64,
    max_item: u64,
) -> Result<(Vec<u8>, i64, u64), CliError> {
    let mut out = Vec::new();
    let mut last = since;
    let mut count = 0;
    for event in events {
        let (sequence, _) = log_copy::served_event_digest(&event)
            .map_err(|e| CliError::other(format!("the server's event page: {e}")))?;
        last = forward(last, sequence, "event")?;
        let item = encode_value(event).map_err(|e| CliError::other(e.to_string()))?;
        if item.len() as u64 > max_item {
            return Err(CliError::other(format!(
                "event {sequence} is {} bytes, over the {max_item} a copy holds; the page \
                 holding it was not saved",
                item.len()
            )));
        }
        out.extend(item);
        count += 1;
    }
    Ok((out, last, count))
}

/// `sequence`, which must come after `since`: a server whose pages go back or stand still
/// could plant a second version of an entry in the copy, or make the save run forever.
fn forward(since: i64, sequence: i64, what: &str) -> Result<i64, CliError> {
    if sequence <= since {
        return Err(CliError::other(format!(
            "the server sent {what} {sequence} after {since}: its pages must move forward; \
             nothing after {since} was saved from that page"
        )));
    }
    Ok(sequence)
}

/// A CBOR page of events: its events and `next_since`.
fn event_page(bytes: &[u8]) -> Result<(Vec<ciborium::Value>, i64), CliError> {
    let malformed = |what: &str| CliError::other(format!("the server's event page: {what}"));
    let page = decode_value(bytes).map_err(|e| malformed(&e.to_string()))?;
    let fields = page.as_map().ok_or_else(|| malformed("not a map"))?;
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k.as_text() == Some(name))
            .map(|(_, v)| v.clone())
    };
    let events = field("events")
        .and_then(|v| v.into_array().ok())
        .ok_or_else(|| malformed("no events"))?;
    let next = field("next_since")
        .and_then(|v| v.as_integer())
        .and_then(|n| i64::try_from(n).ok())
        .ok_or_else(|| malformed("no next_since"))?;
    Ok((events, next))
}

/// Appends the chain's links after the last one saved, through `at_least` (the last saved
/// event: a link not chained yet is waited for, briefly); how many, and the last one's
/// sequence.
async fn save_links(
    store: &artifactstore_client::Store,
    dir: &Path,
    at_least: i64,
    bar: &indicatif::ProgressBar,
) -> Result<(u64, i64), CliError> {
    let path = dir.join(LINKS_FILE);
    let last = log_copy::Lines::last_repaired(&path).map_err(copy_error)?;
    let mut since = match last {
        Some(line) => {
            serde_json::from_str::<SavedLink>(&line)
                .map_err(|e| CliError::other(format!("{}: {e}", path.display())))?
                .sequence
        }
        None => 0,
    };
    let mut saved = 0;
    let mut waits = 0;
    loop {
        let page = store
            .call(
                store
                    .api()
                    .list_chain_links()
                    .since(since)
                    .limit(std::num::NonZeroU32::new(PAGE).expect("not zero"))
                    .send(),
            )
            .await?;
        let mut text = String::new();
        for link in page.items.iter() {
            let Some(chain) = &link.chain else { break };
            since = forward(since, link.sequence, "link")?;
            let saved_link = SavedLink {
                sequence: link.sequence,
                digest: link.digest.clone(),
                chain: chain.clone(),
            };
            text.push_str(&serde_json::to_string(&saved_link).expect("JSON"));
            text.push('\n');
            saved += 1;
        }
        log_copy::append(&path, text.as_bytes()).map_err(copy_error)?;
        bar.set_position(saved);
        let chained_all = page.items.iter().all(|l| l.chain.is_some());
        if page.items.is_empty() || !chained_all {
            // Numbering chains events within moments of their commit: wait for the ones the
            // saved events need, at most ten seconds.
            if since >= at_least {
                return Ok((saved, since));
            }
            if waits >= 50 {
                eprintln!(
                    "warning: events {}..={at_least} are not chained yet: the links stop at \
                     event {since}; save again later",
                    since + 1
                );
                return Ok((saved, since));
            }
            waits += 1;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response of `body`, its length announced or not (streamed in 1 KiB chunks).
    fn response(body: Vec<u8>, announced: bool) -> reqwest::Response {
        let body = if announced {
            reqwest::Body::from(body)
        } else {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                body.chunks(1024).map(|c| Ok(c.to_vec())).collect();
            reqwest::Body::wrap_stream(futures::stream::iter(chunks))
        };
        reqwest::Response::from(http::Response::new(body))
    }

    #[tokio::test]
    async fn a_body_past_the_bound_is_not_read_whole() {
        for announced in [true, false] {
            let fits = read_bounded(response(vec![7; 4096], announced), 4096).await;
            assert_eq!(fits.unwrap(), Some(vec![7; 4096]), "announced {announced}");
            let over = read_bounded(response(vec![7; 4097], announced), 4096).await;
            assert_eq!(over.unwrap(), None, "announced {announced}");
        }
        // Unannounced, the read stops at the first chunk past the bound.
        let endless = futures::stream::repeat_with(|| Ok::<_, std::io::Error>(vec![0u8; 1024]));
        let endless =
            reqwest::Response::from(http::Response::new(reqwest::Body::wrap_stream(endless)));
        assert_eq!(read_bounded(endless, 1 << 20).await.unwrap(), None);
    }

    /// A body that stops coming ends the read (the save holds the copy's lock meanwhile).
    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_ends_the_read() {
        let first = futures::stream::iter([Ok::<_, std::io::Error>(vec![1u8; 10])]);
        let stalled = futures::StreamExt::chain(first, futures::stream::pending());
        let response =
            reqwest::Response::from(http::Response::new(reqwest::Body::wrap_stream(stalled)));
        let refused = read_bounded(response, 1 << 20)
            .await
            .unwrap_err()
            .to_string();
        assert!(refused.contains("sent nothing for 60 s"), "{refused}");
    }

    /// An event over what a copy reads back is refused, with its page; events must move
    /// forward.
    #[test]
    fn a_pages_events_are_bounded_and_in_order() {
        use ciborium::Value;
        let event = |sequence: i64, payload: usize| {
            Value::Map(vec![
                (
                    Value::Text("sequence".into()),
                    Value::Integer(sequence.into()),
                ),
                (
                    Value::Text("payload".into()),
                    Value::Bytes(vec![0; payload]),
                ),
            ])
        };
        let (bytes, last, count) = page_items(vec![event(5, 10), event(6, 100)], 4, 200).unwrap();
        assert_eq!((last, count), (6, 2));
        assert!(bytes.len() < 200);
        let refused = page_items(vec![event(5, 10), event(6, 300)], 4, 200)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("event 6 is") && refused.contains("over the 200"),
            "{refused}"
        );
        assert!(page_items(vec![event(6, 1), event(5, 1)], 4, 200).is_err());
    }

    #[test]
    fn a_page_too_long_is_asked_for_with_half_the_events_down_to_one() {
        let mut limit = PAGE;
        let mut asked = vec![limit];
        while let Ok(next) = fewer(limit, 41) {
            limit = next;
            asked.push(limit);
        }
        assert_eq!(asked, [1000, 500, 250, 125, 62, 31, 15, 7, 3, 1]);
        let refused = fewer(1, 41).unwrap_err().to_string();
        assert!(refused.contains("after 41"), "{refused}");
    }
}
