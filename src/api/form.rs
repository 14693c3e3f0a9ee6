//! `multipart/form-data` file uploads, read as a stream.
//!
//! poem-openapi's multipart extractor reads the whole form (file parts into temporary files,
//! text parts into memory) before the handler runs, so before the token or the package could
//! be checked. Here the extractor takes the body without reading it; the handler checks
//! who is calling and the package first, then reads the parts in order: text parts of at most
//! [`MAX_TEXT_PART`] bytes, the one file part streamed straight into the ingest.

use super::body::BodyStream;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use poem::{Request, RequestBody};
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaSchemaRef, Registry};

/// Longest text part (`relative_path`, `media_type`, `expected_digest`), in bytes.
pub const MAX_TEXT_PART: u64 = 4096;

/// Most bytes of a form that are not its file's: preamble, boundaries, part headers and text
/// parts, with room for the parser's look-ahead past the file's bytes. The parser buffers
/// whatever it has not yet found the end of (a preamble, a part's headers), so without this a
/// form that never gets to its parts would be held in memory up to its whole size.
pub const MAX_FORM_OVERHEAD: u64 = 1 << 20;

/// Most bytes [`Batched`] hands over at once.
const BATCH_BYTES: usize = 64 << 10;

/// Hands a reader the inner stream's bytes in batches of at most [`BATCH_BYTES`], one batch
/// per poll: after each batch the next poll answers `Pending` (and wakes the task at once).
/// The multipart parser takes every chunk that is ready whenever it is polled, before it gives
/// out any of their bytes; under load a client's whole upload can be ready at once, and the
/// file's bytes would sit in the parser, counted as the form's overhead. One batch at a time,
/// the parser never holds more than the batch it just took beyond what it has not yet found
/// the end of. Ready chunks are joined up to the batch size, so a client sending tiny chunks
/// does not make the parser rescan what it holds once per chunk.
struct Batched<S> {
    inner: S,
    yielded: bool,
    /// An error or the end, met after the bytes of the batch handed over before it.
    after: Option<Option<std::io::Error>>,
}

impl<S: Stream<Item = std::io::Result<Bytes>> + Unpin> Stream for Batched<S> {
    type Item = std::io::Result<Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.yielded {
            self.yielded = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if let Some(after) = self.after.take() {
            // The end stays the end; an error is handed over once, then the end.
            if after.is_none() {
                self.after = Some(None);
            }
            return Poll::Ready(after.map(Err));
        }
        let mut batch = bytes::BytesMut::new();
        let mut first: Option<Bytes> = None;
        loop {
            match std::pin::Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    match first.take() {
                        None if batch.is_empty() => first = Some(chunk),
                        earlier => {
                            if let Some(earlier) = earlier {
                                batch.extend_from_slice(&earlier);
                            }
                            batch.extend_from_slice(&chunk);
                        }
                    }
                    let held = first.as_ref().map_or(batch.len(), Bytes::len);
                    if held >= BATCH_BYTES {
                        break;
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    self.after = Some(Some(e));
                    break;
                }
                Poll::Ready(None) => {
                    self.after = Some(None);
                    break;
                }
                Poll::Pending => break,
            }
        }
        let bytes = first.unwrap_or_else(|| batch.freeze());
        if bytes.is_empty() {
            // Nothing arrived: what stopped the loop is the answer.
            return match self.after.take() {
                Some(after) => {
                    if after.is_none() {
                        self.after = Some(None);
                    }
                    Poll::Ready(after.map(Err))
                }
                None => Poll::Pending,
            };
        }
        self.yielded = true;
        Poll::Ready(Some(Ok(bytes)))
    }
}

/// Bytes read of a form, and how many of them were the file's.
#[derive(Default)]
struct Budget {
    read: std::sync::atomic::AtomicU64,
    file: std::sync::atomic::AtomicU64,
    exceeded: std::sync::atomic::AtomicBool,
}

impl Budget {
    /// What a parser error means: the budget's refusal if it was that.
    fn error(&self, e: multer::Error) -> FormError {
        if self.exceeded.load(std::sync::atomic::Ordering::Relaxed) {
            FormError::TooLarge(format!(
                "the form's parts other than the file (preamble, headers, text) are over \
                 {MAX_FORM_OVERHEAD} bytes"
            ))
        } else {
            form_error(e)
        }
    }
}

/// The form of `POST /packages/{id}/files`, documented by `Doc` (a derived multipart type),
/// read by [`StreamedForm::parts`].
pub struct StreamedForm<Doc> {
    body: poem::Body,
    boundary: Result<String, String>,
    doc: std::marker::PhantomData<Doc>,
}

impl<Doc: Payload> Payload for StreamedForm<Doc> {
    const CONTENT_TYPE: &'static str = "multipart/form-data";

    fn check_content_type(content_type: &str) -> bool {
        Doc::check_content_type(content_type)
    }

    fn schema_ref() -> MetaSchemaRef {
        Doc::schema_ref()
    }

    fn register(registry: &mut Registry) {
        Doc::register(registry)
    }
}

impl<Doc: Payload> ParsePayload for StreamedForm<Doc> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let content_type = request.content_type().unwrap_or_default();
        Ok(StreamedForm {
            boundary: multer::parse_boundary(content_type).map_err(|e| e.to_string()),
            body: body.take().unwrap_or_default(),
            doc: std::marker::PhantomData,
        })
    }
}

/// One part of the form, in the order sent.
pub enum Part<'r> {
    /// A text part, whole.
    Text {
        /// Its name.
        name: String,
        /// Its value.
        value: String,
    },
    /// The file part: read its bytes from `body` before asking for the next part.
    File {
        /// The part's filename, if it has one.
        file_name: Option<String>,
        /// The part's content type, if it has one.
        content_type: Option<String>,
        /// Its bytes.
        body: std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send + 'r>>,
    },
}

/// Reads parts one at a time (see [`StreamedForm::parts`]).
pub struct Parts {
    multipart: multer::Multipart<'static>,
    budget: std::sync::Arc<Budget>,
    file_seen: bool,
    texts_seen: Vec<String>,
}

/// What is wrong with a form, for a 4xx answer.
#[derive(Debug)]
pub enum FormError {
    /// Not well-formed multipart: 400.
    Malformed(String),
    /// Well-formed, but with an unknown or repeated part: 422.
    Invalid(String),
    /// A part or the whole form over its limit: 413.
    TooLarge(String),
    /// The client's body failed (hung up, went quiet).
    Body(String),
}

impl From<FormError> for crate::Error {
    fn from(e: FormError) -> Self {
        match e {
            FormError::Malformed(m) => crate::Error::Body(m),
            FormError::Invalid(m) => crate::Error::InvalidInput(m),
            FormError::TooLarge(m) => crate::Error::LimitExceeded(m),
            FormError::Body(m) => crate::Error::Body(m),
        }
    }
}

fn form_error(e: multer::Error) -> FormError {
    use multer::Error as M;
    match e {
        M::FieldSizeExceeded { limit, field_name } => FormError::TooLarge(format!(
            "form part `{}` is over its {limit} bytes",
            field_name.unwrap_or_default()
        )),
        M::StreamSizeExceeded { limit } => {
            FormError::TooLarge(format!("the form is over its {limit} bytes"))
        }
        M::StreamReadFailed(cause) => FormError::Body(cause.to_string()),
        M::UnknownField { field_name } => FormError::Invalid(format!(
            "unknown form part `{}` (expected file, relative_path, media_type, \
             expected_digest)",
            field_name.unwrap_or_default()
        )),
        other => FormError::Malformed(format!("malformed multipart form: {other}")),
    }
}

impl<Doc> StreamedForm<Doc> {
    /// Refuses the form unread: drains (a bounded amount of) it so the client reads the answer
    /// (see [`super::body::drain`]).
    pub async fn refuse(self) {
        super::body::drain(&mut super::body::stream(self.body)).await;
    }

    /// The form's parts, in order, reading at most `max_file` bytes of file plus 1 MiB of
    /// everything else (the ingest itself refuses a file over `max_file`, with 413). Only the
    /// names in `texts` and `file` are accepted, each at most once.
    pub fn parts(self, texts: &[&str], file: &str, max_file: u64) -> Result<Parts, FormError> {
        let boundary = self.boundary.map_err(|e| {
            FormError::Malformed(format!("not a multipart form with a boundary: {e}"))
        })?;
        let mut allowed: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
        allowed.push(file.to_owned());
        let mut limits = multer::SizeLimit::new().whole_stream(max_file.saturating_add(1 << 20));
        for name in texts {
            limits = limits.for_field((*name).to_owned(), MAX_TEXT_PART);
        }
        let constraints = multer::Constraints::new()
            .allowed_fields(allowed)
            .size_limit(limits);
        let budget = std::sync::Arc::new(Budget::default());
        let counted = budget.clone();
        let chunks = Batched {
            inner: super::body::stream(self.body),
            yielded: false,
            after: None,
        };
        let stream: BodyStream = Box::pin(chunks.map(move |chunk| {
            use std::sync::atomic::Ordering::Relaxed;
            let chunk = chunk?;
            let len = chunk.len() as u64;
            let read = counted.read.fetch_add(len, Relaxed) + len;
            // What the parser took and did not give out as the file's, this chunk aside (the
            // parser has not seen it yet).
            let overhead = read - len - counted.file.load(Relaxed).min(read - len);
            if overhead > MAX_FORM_OVERHEAD {
                counted.exceeded.store(true, Relaxed);
                return Err(std::io::Error::other("form overhead over its limit"));
            }
            Ok(chunk)
        }));
        Ok(Parts {
            multipart: multer::Multipart::with_constraints(stream, boundary, constraints),
            budget,
            file_seen: false,
            texts_seen: Vec::new(),
        })
    }
}

impl Parts {
    /// Reads and discards (a bounded amount of) what is left of a form being refused, so the
    /// client reads the answer.
    pub async fn refuse(mut self) {
        let drain = async {
            let mut read = 0usize;
            while let Ok(Some(mut field)) = self.multipart.next_field().await {
                while let Ok(Some(chunk)) = field.chunk().await {
                    read += chunk.len();
                    if read > 1 << 20 {
                        return;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
    }

    /// The next part, or `None` at the end of the form. A file part's bytes must be read
    /// before this is called again.
    pub async fn next(&mut self) -> Result<Option<Part<'_>>, FormError> {
        let budget = self.budget.clone();
        let error = |e| budget.error(e);
        let Some(field) = self.multipart.next_field().await.map_err(error)? else {
            return Ok(None);
        };
        let name = field.name().unwrap_or_default().to_owned();
        if field.file_name().is_some() || name == "file" {
            if self.file_seen {
                return Err(FormError::Invalid(
                    "the form has more than one file part".into(),
                ));
            }
            self.file_seen = true;
            let budget = self.budget.clone();
            return Ok(Some(Part::File {
                file_name: field.file_name().map(str::to_owned),
                content_type: field.content_type().map(ToString::to_string),
                body: field
                    .map(move |chunk| match chunk {
                        Ok(bytes) => {
                            budget.file.fetch_add(
                                bytes.len() as u64,
                                std::sync::atomic::Ordering::Relaxed,
                            );
                            Ok(bytes)
                        }
                        Err(e) => Err(match budget.error(e) {
                            FormError::Body(m)
                            | FormError::Malformed(m)
                            | FormError::Invalid(m) => std::io::Error::other(m),
                            FormError::TooLarge(m) => {
                                std::io::Error::new(std::io::ErrorKind::FileTooLarge, m)
                            }
                        }),
                    })
                    .boxed(),
            }));
        }
        if self.texts_seen.contains(&name) {
            return Err(FormError::Invalid(format!(
                "the form has more than one `{name}` part"
            )));
        }
        self.texts_seen.push(name.clone());
        let value = field.text().await.map_err(error)?;
        Ok(Some(Part::Text { name, value }))
    }
}

poem_openapi::impl_apirequest_for_payload!(StreamedForm<Doc>, Doc: Payload + Send);

#[cfg(test)]
mod tests {
    use super::*;

    /// A form of one file part of `size` bytes after a preamble of `preamble` bytes, as a
    /// body whose chunks of 64 KiB are all ready at once (a client's upload already in the
    /// server's buffers).
    fn form(size: usize, preamble: usize) -> StreamedForm<()> {
        let mut bytes = vec![b'p'; preamble];
        bytes.extend_from_slice(
            b"--X\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n\r\n",
        );
        bytes.extend((0..size).map(|i| (i % 251) as u8));
        bytes.extend_from_slice(b"\r\n--X--\r\n");
        let chunks: Vec<std::io::Result<Bytes>> = bytes
            .chunks(64 << 10)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        StreamedForm {
            body: poem::Body::from_bytes_stream(futures::stream::iter(chunks)),
            boundary: Ok("X".into()),
            doc: std::marker::PhantomData,
        }
    }

    async fn file_bytes(form: StreamedForm<()>) -> Result<u64, String> {
        let mut parts = form
            .parts(&["relative_path"], "file", 1 << 30)
            .map_err(|e| format!("{e:?}"))?;
        let Some(Part::File { mut body, .. }) = parts.next().await.map_err(|e| format!("{e:?}"))?
        else {
            return Err("no file part".into());
        };
        let mut read = 0;
        while let Some(chunk) = body.next().await {
            read += chunk.map_err(|e| e.to_string())?.len() as u64;
        }
        Ok(read)
    }

    #[tokio::test]
    async fn a_file_whose_bytes_are_all_ready_at_once_is_not_taken_for_overhead() {
        // The parser takes every ready chunk before giving any out: counted naively, 8 MiB of
        // file would be 8 MiB of "overhead" and the upload refused (seen in the soak bench).
        assert_eq!(file_bytes(form(8 << 20, 0)).await, Ok(8 << 20));
    }

    #[tokio::test]
    async fn tiny_ready_chunks_are_handed_to_the_parser_in_batches() {
        // 1-byte chunks, all ready: batched, the parser scans a few hundred times, not once
        // per byte, and every byte arrives in order.
        let chunks: Vec<std::io::Result<Bytes>> = (0..200_000u32)
            .map(|i| Ok(Bytes::from(vec![(i % 251) as u8])))
            .collect();
        let mut batched = Batched {
            inner: futures::stream::iter(chunks),
            yielded: false,
            after: None,
        };
        let (mut batches, mut bytes) = (0, Vec::new());
        while let Some(batch) = batched.next().await {
            let batch = batch.unwrap();
            assert!(batch.len() <= BATCH_BYTES);
            batches += 1;
            bytes.extend_from_slice(&batch);
        }
        assert_eq!(bytes.len(), 200_000);
        assert!(bytes.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
        assert!(batches <= 4, "{batches} batches");
        // An error after some bytes comes after them, then the end.
        let mut failing = Batched {
            inner: futures::stream::iter(vec![
                Ok(Bytes::from_static(b"ab")),
                Err(std::io::Error::other("cut")),
            ]),
            yielded: false,
            after: None,
        };
        assert_eq!(
            failing.next().await.unwrap().unwrap(),
            Bytes::from_static(b"ab")
        );
        assert!(failing.next().await.unwrap().is_err());
        assert!(failing.next().await.is_none());
    }

    #[tokio::test]
    async fn a_form_that_never_gets_to_its_parts_is_still_refused() {
        let refused = file_bytes(form(1024, 2 << 20)).await.unwrap_err();
        assert!(refused.contains("TooLarge"), "{refused}");
    }
}
