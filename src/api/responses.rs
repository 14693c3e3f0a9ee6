//! Responses whose headers are computed per request (ETags, ranges). Each is a plain
//! `poem::Response` wrapped in a type whose OpenAPI description comes from a derived,
//! documentation-only enum, so the spec stays exact.

use super::problem::{Problem, ProblemBody};
use crate::identity::ContentAddress;
use crate::registry::FileRecord;
use base64::Engine as _;
use poem::http::{StatusCode, header};
use poem::{Body, IntoResponse, Request, Response};
use poem_openapi::payload::{Binary, Json};
use poem_openapi::registry::{MetaResponses, Registry};
use poem_openapi::{ApiResponse, ResponseContent};

/// True if the request's `If-None-Match` names `etag` (or `*`).
fn not_modified(req: &Request, etag: &str) -> bool {
    req.headers()
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

fn etag_of(address: &ContentAddress) -> String {
    format!("\"{address}\"")
}

#[derive(ApiResponse)]
#[allow(dead_code)]
enum CborManifestDoc {
    // The JSON alternative is left out of this response's media types: generators
    // (openapi-python-client) parse the first type they know without asking for it in
    // `Accept`, and would read the default CBOR as JSON. `getManifestJson` declares it.
    /// The manifest's canonical CBOR bytes (RFC 8949 deterministic encoding); `ETag` is
    /// their digest. An `Accept` preferring `application/json` gets the JCS projection
    /// instead, as `getManifestJson` serves it, with the `ETag` weak.
    #[oai(status = 200, content_type = "application/cbor")]
    Ok(
        Binary<Vec<u8>>,
        #[oai(header = "ETag")] String,
        #[oai(header = "Vary")] String,
    ),
    /// `If-None-Match` matched.
    #[oai(status = 304)]
    NotModified(#[oai(header = "ETag")] String),
}

/// The manifest's encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestEncoding {
    /// Canonical CBOR, the manifest itself.
    Cbor,
    /// Its JCS JSON projection.
    Json,
}

/// The encoding an `Accept` header prefers (RFC 9110 §12.5.1: the most specific range
/// naming a type gives its weight; CBOR wins ties and answers a request without `Accept`),
/// or `None` when it accepts neither.
pub fn manifest_encoding(req: &Request) -> Option<ManifestEncoding> {
    let values: Vec<&str> = req
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() {
        return Some(ManifestEncoding::Cbor);
    }
    let ranges: Vec<(String, f32)> = values
        .iter()
        .flat_map(|v| v.split(','))
        .filter_map(|range| {
            let mut params = range.split(';');
            let media = params.next()?.trim().to_ascii_lowercase();
            let mut weight = 1.0;
            for param in params {
                if let Some((name, value)) = param.split_once('=')
                    && name.trim().eq_ignore_ascii_case("q")
                {
                    weight = value
                        .trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|q| (0.0..=1.0).contains(q))?;
                }
            }
            (!media.is_empty()).then_some((media, weight))
        })
        .collect();
    let weight_of = |media: &str| {
        let family = format!("{}/*", media.split('/').next().unwrap_or(""));
        [media, family.as_str(), "*/*"]
            .iter()
            .find_map(|candidate| {
                ranges
                    .iter()
                    .filter(|(m, _)| m == candidate)
                    .map(|(_, q)| *q)
                    .reduce(f32::max)
            })
            .unwrap_or(0.0)
    };
    let cbor = weight_of("application/cbor");
    let json = weight_of("application/json");
    if cbor <= 0.0 && json <= 0.0 {
        None
    } else if json > cbor {
        Some(ManifestEncoding::Json)
    } else {
        Some(ManifestEncoding::Cbor)
    }
}

#[derive(ApiResponse)]
#[allow(dead_code, clippy::large_enum_variant)] // documentation only; never constructed
enum JsonManifestDoc {
    /// The manifest's JCS (RFC 8785) JSON bytes.
    #[oai(status = 200)]
    Ok(
        Json<super::schemas::ManifestJson>,
        #[oai(header = "ETag")] String,
    ),
    /// `If-None-Match` matched.
    #[oai(status = 304)]
    NotModified(#[oai(header = "ETag")] String),
}

macro_rules! documented_response {
    ($name:ident, $doc:ident) => {
        /// A response built by hand, documented by its `Doc` enum.
        pub struct $name(pub Response);

        impl IntoResponse for $name {
            fn into_response(self) -> Response {
                self.0
            }
        }

        impl ApiResponse for $name {
            fn meta() -> MetaResponses {
                $doc::meta()
            }
            fn register(registry: &mut Registry) {
                $doc::register(registry)
            }
        }
    };
}

documented_response!(CborManifest, CborManifestDoc);
documented_response!(JsonManifest, JsonManifestDoc);

/// 200 with the bytes, or 304; `ETag` is the manifest digest either way. When the encoding
/// was `negotiated` (one resource, two representations, varying by `Accept`), the JSON's tag
/// is weak: it is the same manifest, not the same bytes.
pub fn manifest_response(
    req: &Request,
    digest: &ContentAddress,
    bytes: Vec<u8>,
    encoding: ManifestEncoding,
    negotiated: bool,
) -> Response {
    let strong = etag_of(digest);
    let (etag, content_type) = match encoding {
        ManifestEncoding::Json if negotiated => (format!("W/{strong}"), "application/json"),
        ManifestEncoding::Json => (strong.clone(), "application/json"),
        ManifestEncoding::Cbor => (strong.clone(), "application/cbor"),
    };
    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        // `private`: answers to authenticated requests are the tenant's, never a shared cache's.
        .header(
            header::CACHE_CONTROL,
            "private, max-age=31536000, immutable",
        );
    if negotiated {
        builder = builder.header(header::VARY, "Accept");
    }
    // `If-None-Match` compares weakly (RFC 9110 §13.1.2).
    if not_modified(req, &strong) {
        return builder.status(StatusCode::NOT_MODIFIED).finish();
    }
    builder.content_type(content_type).body(bytes)
}

/// File bytes: served with the file's own media type, so any type may come back.
#[derive(ResponseContent)]
#[allow(dead_code)]
enum FileBytes {
    #[oai(content_type = "application/octet-stream")]
    Octets(Binary<Vec<u8>>),
    #[oai(content_type = "*/*")]
    Any(Binary<Vec<u8>>),
}

#[derive(ApiResponse)]
#[allow(dead_code)]
enum DownloadDoc {
    /// The whole file (also when the `Range` header is malformed or names several ranges).
    /// `Content-Type` is the file's media type.
    #[oai(status = 200)]
    Full(
        FileBytes,
        #[oai(header = "ETag")] String,
        #[oai(header = "Accept-Ranges")] String,
        #[oai(header = "Repr-Digest")] String,
        #[oai(header = "Content-Disposition")] String,
        #[oai(header = "X-Content-Type-Options")] String,
    ),
    /// One range of the file.
    #[oai(status = 206)]
    Partial(
        FileBytes,
        #[oai(header = "Content-Range")] String,
        #[oai(header = "ETag")] String,
        #[oai(header = "Repr-Digest")] String,
        #[oai(header = "Content-Disposition")] String,
        #[oai(header = "X-Content-Type-Options")] String,
    ),
    /// `If-None-Match` matched.
    #[oai(status = 304)]
    NotModified(#[oai(header = "ETag")] String),
    /// The range lies outside the file; `Content-Range: bytes */<size>`.
    #[oai(status = 416, content_type = "application/problem+json")]
    RangeNotSatisfiable(ProblemBody, #[oai(header = "Content-Range")] String),
}

documented_response!(Download, DownloadDoc);

/// What the `Range` and `If-None-Match` headers ask of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangePlan {
    /// 304.
    NotModified,
    /// 200, whole file.
    Full,
    /// 206, `[start, end]` inclusive.
    Partial(u64, u64),
    /// 416.
    Unsatisfiable,
}

/// Most ranges a `Range` header may name to be looked at; one naming more is ignored whole
/// (the answer is the whole file), without parsing or checking them against each other.
pub const MAX_RANGES: usize = 16;

/// Decides per RFC 9110: one satisfiable range gives 206; several give the whole file; a
/// malformed header, or one of more than [`MAX_RANGES`] ranges, is ignored; an unsatisfiable
/// one gives 416 (any range of an empty file is unsatisfiable).
pub fn plan(req: &Request, file: &FileRecord) -> RangePlan {
    if not_modified(req, &etag_of(&file.content_address())) {
        return RangePlan::NotModified;
    }
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok());
    range_plan(range, file.size)
}

/// What a `Range` header value (if any) asks of a representation of `size` bytes: the whole
/// of it, one range (`[start, end]`, inclusive), or nothing it has (416).
pub fn range_plan(range: Option<&str>, size: u64) -> RangePlan {
    let Some(range) = range else {
        return RangePlan::Full;
    };
    if range.bytes().filter(|b| *b == b',').count() >= MAX_RANGES {
        return RangePlan::Full;
    }
    let Ok(parsed) = http_range_header::parse_range_header(range) else {
        return RangePlan::Full;
    };
    if size == 0 {
        return RangePlan::Unsatisfiable;
    }
    match parsed.validate(size) {
        Ok(ranges) if ranges.len() == 1 => RangePlan::Partial(*ranges[0].start(), *ranges[0].end()),
        Ok(_) => RangePlan::Full,
        Err(_) => RangePlan::Unsatisfiable,
    }
}

/// `Content-Disposition: attachment` naming the file by its last path segment (RFC 6266): an
/// ASCII `filename` (other characters, quotes and backslashes as `_`) and, where the name
/// is not plain ASCII, `filename*` with its UTF-8 bytes percent-encoded (RFC 8187).
pub fn content_disposition(file_name: &str) -> String {
    let ascii: String = file_name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if ascii == file_name {
        return format!("attachment; filename=\"{ascii}\"");
    }
    // RFC 8187 attr-char: ALPHA / DIGIT / "!#$&+-.^_`|~"; everything else is encoded.
    const ATTR: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'!')
        .remove(b'#')
        .remove(b'$')
        .remove(b'&')
        .remove(b'+')
        .remove(b'-')
        .remove(b'.')
        .remove(b'^')
        .remove(b'_')
        .remove(b'`')
        .remove(b'|')
        .remove(b'~');
    let encoded = percent_encoding::utf8_percent_encode(file_name, ATTR);
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

/// Headers common to every download answer. The bytes are always an attachment, and never
/// sniffed: a stored `text/html` (or anything a browser would run) must not run on this origin.
fn base(file: &FileRecord) -> poem::ResponseBuilder {
    let sha = base64::engine::general_purpose::STANDARD.encode(file.sha256.0);
    Response::builder()
        .header(header::ETAG, etag_of(&file.content_address()))
        .header(header::ACCEPT_RANGES, "bytes")
        .header("Repr-Digest", format!("sha-256=:{sha}:"))
        .header(
            header::CONTENT_DISPOSITION,
            content_disposition(file.relative_path.file_name()),
        )
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
}

/// 304.
pub fn not_modified_response(file: &FileRecord) -> Download {
    Download(base(file).status(StatusCode::NOT_MODIFIED).finish())
}

/// 416 with `Content-Range: bytes */size`.
pub fn unsatisfiable(file: &FileRecord, path: &str) -> Download {
    let problem = Problem::new(
        StatusCode::RANGE_NOT_SATISFIABLE,
        format!(
            "the requested range is outside the file's {} bytes",
            file.size
        ),
    )
    .at(path);
    let mut resp = problem.into_response();
    resp.headers_mut().insert(
        header::CONTENT_RANGE,
        format!("bytes */{}", file.size)
            .parse()
            .expect("valid header"),
    );
    Download(resp)
}

/// 200 or 206 with the streamed bytes.
pub fn bytes_response(file: &FileRecord, range: Option<(u64, u64)>, body: Body) -> Download {
    let builder = base(file).content_type(&file.media_type);
    let resp = match range {
        None => builder.header(header::CONTENT_LENGTH, file.size).body(body),
        Some((start, end)) => builder
            .status(StatusCode::PARTIAL_CONTENT)
            .header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{end}/{}", file.size),
            )
            .header(header::CONTENT_LENGTH, end - start + 1)
            .body(body),
    };
    Download(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachments_name_the_file_safely() {
        assert_eq!(
            content_disposition("report.pdf"),
            "attachment; filename=\"report.pdf\""
        );
        assert_eq!(
            content_disposition("a \"b\"\\.txt"),
            "attachment; filename=\"a _b__.txt\"; filename*=UTF-8''a%20%22b%22%5C.txt"
        );
        assert_eq!(
            content_disposition("résumé 1.txt"),
            "attachment; filename=\"r_sum_ 1.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9%201.txt"
        );
        // Whatever the name, the value is a valid header.
        for name in ["\u{202E}exe.txt", "日本語", "a;b=c", "x\u{7f}"] {
            let value = content_disposition(name);
            assert!(poem::http::HeaderValue::from_str(&value).is_ok(), "{value}");
        }
    }

    #[test]
    fn accept_chooses_the_manifest_encoding() {
        use ManifestEncoding::{Cbor, Json};
        let choose = |accept: Option<&str>| {
            let mut req = Request::builder();
            if let Some(accept) = accept {
                req = req.header(header::ACCEPT, accept);
            }
            manifest_encoding(&req.finish())
        };
        for (accept, chosen) in [
            (None, Some(Cbor)),
            (Some("*/*"), Some(Cbor)),
            (Some("application/json"), Some(Json)),
            (Some("APPLICATION/JSON; charset=utf-8"), Some(Json)),
            (Some("application/cbor"), Some(Cbor)),
            (Some("application/json, application/cbor"), Some(Cbor)),
            (
                Some("application/json;q=0.9, application/cbor;q=0.8"),
                Some(Json),
            ),
            (Some("application/*;q=0.2, application/json"), Some(Json)),
            (Some("application/json;q=0.1, */*;q=0.5"), Some(Cbor)),
            // The most specific range decides: `*/*` does not lift an explicit q=0.
            (Some("application/cbor;q=0, */*"), Some(Json)),
            (Some("text/html"), None),
            (Some("application/json;q=0"), None),
            // An unreadable weight drops its range.
            (
                Some("application/json;q=high, application/cbor"),
                Some(Cbor),
            ),
            (Some(""), None),
        ] {
            assert_eq!(choose(accept), chosen, "{accept:?}");
        }
    }
}
