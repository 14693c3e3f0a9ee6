//! The OpenAPI document as served and committed: poem-openapi's, completed where poem-openapi
//! cannot say what the API does, so that generated clients get one model per concept, the
//! headers by their usual names, the request headers the handlers read from the raw request,
//! and an example of every problem. Everything is changed in place: the order of
//! the document stays poem-openapi's.

use super::problem::Problem;
use indexmap::IndexMap;
use poem::http::StatusCode;
use serde::{Deserialize, Serialize};

/// A JSON value that keeps its members in document order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(IndexMap<String, Json>),
}

type Members = IndexMap<String, Json>;

impl Json {
    fn object(&mut self) -> Option<&mut Members> {
        match self {
            Json::Object(members) => Some(members),
            _ => None,
        }
    }

    fn member(&mut self, name: &str) -> Option<&mut Json> {
        self.object()?.get_mut(name)
    }

    fn str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Request bodies whose types refuse members they do not define
/// (`#[oai(deny_unknown_fields)]`). poem-openapi does not say so in the schema; [`complete`]
/// adds `additionalProperties: false` to these, so clients and fuzzers know.
pub(super) const CLOSED_BODIES: &[&str] = &[
    "CreatePackage",
    "DeletePackage",
    "FinalizePackage",
    "SuppliedProvenance",
    "MissingBlobsRequest",
    "LinkFile",
    "LinkFiles",
    "CreateUpload",
    "DefineRetentionClass",
    "LegalHoldRequest",
    "ChangeRetention",
    "SetQuota",
];

/// Request headers that handlers read from the request itself (their parsing is the
/// handler's: a malformed `Range` is ignored, not refused), by operation, as OpenAPI
/// parameter objects.
fn read_by_hand(operation_id: &str) -> Vec<&'static str> {
    const IF_NONE_MATCH: &str = r#"{
        "name": "If-None-Match", "in": "header", "required": false,
        "description": "ETags (or `*`): one that matches answers 304 without a body.",
        "schema": {"type": "string"}
    }"#;
    const RANGE: &str = r#"{
        "name": "Range", "in": "header", "required": false,
        "description": "One byte range (`bytes=a-b`, `bytes=a-`, `bytes=-n`) answers 206 with those bytes; several ranges or a malformed value answer 200 with the whole file; a range outside it answers 416.",
        "schema": {"type": "string"},
        "example": "bytes=0-1023"
    }"#;
    match operation_id {
        "downloadFile" | "downloadFileByPath" | "headFileByPath" => vec![RANGE, IF_NONE_MATCH],
        "getManifest" | "getManifestJson" => vec![IF_NONE_MATCH],
        "deleteFile" => vec![
            r#"{
                "name": "If-Match", "in": "header", "required": false,
                "description": "Remove the file only if it has one of these ETags (`\"blake3:<hex>\"`), so a file someone replaced meanwhile stays; otherwise 412.",
                "schema": {"type": "string"},
                "example": "\"blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262\""
            }"#,
        ],
        "putFile" | "uploadFile" => vec![
            r#"{
                "name": "If-Match", "in": "header", "required": false,
                "description": "Write only if the file now at the path has one of these ETags (`\"blake3:<hex>\"`, as downloads and file records give it), or with `*` if any file is there: the write replaces it (no `replace=true` needed). Otherwise 412, and nothing changes.",
                "schema": {"type": "string"},
                "example": "\"blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262\""
            }"#,
        ],
        _ => Vec::new(),
    }
}

/// What a problem of each status typically says, for the examples.
fn example_detail(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "the request is malformed: `limit` is not a number",
        401 => "a bearer token is required: `Authorization: Bearer <token>`",
        403 => "this token may not write: it has the scopes read",
        404 => "package 01934e8f-6a2b-7c3d-8e4f-5a6b7c8d9e0f not found",
        409 => "package 01934e8f-6a2b-7c3d-8e4f-5a6b7c8d9e0f is finalized: it takes no more files",
        410 => "package 01934e8f-6a2b-7c3d-8e4f-5a6b7c8d9e0f expired at 2026-12-01T00:00:00Z",
        406 => {
            "the manifest is served as `application/cbor` or `application/json`; `Accept` names neither"
        }
        412 => {
            "the file at `dist/app.tar.gz` is \"blake3:af13...\", which `If-Match` does not name"
        }
        413 => "the request body is 2097152 bytes; at most 1048576 are accepted here",
        415 => "expected `application/json`, got `text/plain`",
        416 => "the range starts past the end of the file (1024 bytes)",
        422 => "relative_path `../etc/passwd`: a segment may not be `..`",
        429 => "this tenant already has 64 requests waiting; retry after the `Retry-After` delay",
        500 => "an internal error: the server log has the cause under this request id",
        503 => "the database is not reachable; retry after the `Retry-After` delay",
        507 => "the server's disk is too full to take new writes",
        _ => "what went wrong in this occurrence",
    }
}

/// The optional body of `DELETE /packages/{id}`, which its handler reads by hand
/// (poem-openapi has no optional request bodies).
const DELETE_PACKAGE: &str = r#"{
    "type": "object",
    "title": "DeletePackage",
    "description": "`DELETE /packages/{id}` body.",
    "properties": {
        "reason": {
            "type": "string",
            "description": "Why (1-256 bytes, no control characters), kept with the package's record.",
            "minLength": 1,
            "maxLength": 256
        }
    },
    "additionalProperties": false
}"#;

/// The optional body of `POST /packages/{id}/finalize`, which its handler reads by hand.
const FINALIZE_PACKAGE: &str = r##"{
    "type": "object",
    "title": "FinalizePackage",
    "description": "`POST /packages/{id}/finalize` body.",
    "properties": {
        "provenance": {
            "$ref": "#/components/schemas/SuppliedProvenance"
        }
    },
    "additionalProperties": false
}"##;

/// The producer's provenance, in the finalize body and in the manifest's `provenance.supplied`.
const SUPPLIED_PROVENANCE: &str = r##"{
    "type": "object",
    "title": "SuppliedProvenance",
    "description": "Provenance the producer attached at finalize, recorded as given (the store does not check its claims). At most `ARTIFACTSTORE_MAX_PROVENANCE` bytes (64 KiB by default) in canonical JSON; numbers must be integers from -(2^53-1) to 2^53-1; objects and arrays nest at most 32 deep.",
    "required": ["predicate"],
    "properties": {
        "predicate_type": {
            "type": "string",
            "description": "A URI naming the predicate's format; `https://slsa.dev/provenance/v1` predicates must have `buildDefinition.buildType`, `buildDefinition.externalParameters` and `runDetails.builder.id`. Absent: free JSON.",
            "maxLength": 256,
            "example": "https://slsa.dev/provenance/v1"
        },
        "predicate": {
            "type": "object",
            "description": "The producer's JSON object.",
            "additionalProperties": true
        }
    },
    "additionalProperties": false
}"##;

/// The document poem-openapi builds for `spec`, completed.
pub(super) fn complete(spec: &str) -> String {
    let mut doc: Json = serde_json::from_str(spec).expect("poem-openapi's document is JSON");
    if let Some(schemas) = doc
        .member("components")
        .and_then(|c| c.member("schemas"))
        .and_then(Json::object)
    {
        for name in CLOSED_BODIES {
            if let Some(schema) = schemas.get_mut(*name).and_then(Json::object) {
                schema.insert("additionalProperties".into(), Json::Bool(false));
            }
        }
    }
    if let Some(schemas) = doc
        .member("components")
        .and_then(|c| c.member("schemas"))
        .and_then(Json::object)
    {
        for (name, schema) in [
            ("DeletePackage", DELETE_PACKAGE),
            ("FinalizePackage", FINALIZE_PACKAGE),
            ("SuppliedProvenance", SUPPLIED_PROVENANCE),
        ] {
            schemas.insert(
                name.into(),
                serde_json::from_str(schema).expect("a schema object"),
            );
        }
    }
    one_schema_per_concept(&mut doc);
    if let Some(paths) = doc.member("paths").and_then(Json::object) {
        for operation in paths
            .values_mut()
            .filter_map(Json::object)
            .flat_map(|methods| methods.values_mut())
        {
            complete_operation(operation);
        }
    }
    let mut out = serde_json::to_string_pretty(&doc).expect("serializable");
    out.push('\n');
    out
}

/// poem-openapi describes a member whose type is another schema as `allOf` of the reference
/// and its description, which generators turn into a model of its own per member
/// (`FileInfoDigests` beside `Digests`): the member is the reference, its description beside
/// it (which OpenAPI 3.0 tools read as documentation, as generators do).
fn one_schema_per_concept(value: &mut Json) {
    match value {
        Json::Object(members) => {
            let wrapped = match members.get("allOf") {
                Some(Json::Array(parts)) => parts
                    .first()
                    .filter(|_| parts.len() <= 2)
                    .and_then(|first| match first {
                        Json::Object(r) if r.len() == 1 => r.get("$ref").cloned(),
                        _ => None,
                    })
                    .filter(|_| {
                        parts.iter().skip(1).all(|p| match p {
                            Json::Object(m) => m.keys().all(|k| k == "description"),
                            _ => false,
                        })
                    }),
                _ => None,
            };
            if let Some(reference) = wrapped {
                let description = members.get("description").cloned();
                members.clear();
                members.insert("$ref".into(), reference);
                if let Some(description) = description {
                    members.insert("description".into(), description);
                }
            }
            members.values_mut().for_each(one_schema_per_concept);
        }
        Json::Array(items) => items.iter_mut().for_each(one_schema_per_concept),
        _ => {}
    }
}

fn complete_operation(operation: &mut Json) {
    let id = operation
        .member("operationId")
        .and_then(|id| id.str())
        .unwrap_or_default()
        .to_owned();
    let Some(members) = operation.object() else {
        return;
    };
    let optional_body = match id.as_str() {
        "deletePackage" => Some("DeletePackage"),
        "finalizePackage" => Some("FinalizePackage"),
        _ => None,
    };
    if let Some(schema) = optional_body {
        members.insert(
            "requestBody".into(),
            serde_json::from_str::<Json>(&format!(
                r##"{{"required": false, "content": {{"application/json": {{"schema": {{"$ref": "#/components/schemas/{schema}"}}}}}}}}"##
            ))
            .expect("a request body object"),
        );
    }
    let added = read_by_hand(&id);
    if !added.is_empty() {
        let parameters = members
            .entry("parameters".to_owned())
            .or_insert_with(|| Json::Array(Vec::new()));
        if let Json::Array(list) = parameters {
            list.extend(
                added
                    .into_iter()
                    .map(|p| serde_json::from_str::<Json>(p).expect("a parameter object")),
            );
        }
    }
    let Some(responses) = members.get_mut("responses").and_then(Json::object) else {
        return;
    };
    for (status, response) in responses.iter_mut() {
        let Some(response) = response.object() else {
            continue;
        };
        if let Some(Json::Object(headers)) = response.get_mut("headers") {
            *headers = std::mem::take(headers)
                .into_iter()
                .map(|(name, header)| (header_name(&name), header))
                .collect();
        }
        let status = status
            .parse()
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok());
        if let (Some(status), Some(problem)) = (
            status,
            response
                .get_mut("content")
                .and_then(|c| c.member(super::problem::PROBLEM_JSON))
                .and_then(Json::object),
        ) {
            let example = Problem::new(status, example_detail(status));
            let example = serde_json::to_string(&example).expect("serializable");
            problem.insert(
                "example".into(),
                serde_json::from_str(&example).expect("JSON"),
            );
        }
    }
}

/// A header's usual spelling (poem-openapi upper-cases them): `ETAG` is `ETag`,
/// `NEXT-SINCE` is `Next-Since`.
fn header_name(name: &str) -> String {
    match name.to_ascii_uppercase().as_str() {
        "ETAG" => "ETag".into(),
        "WWW-AUTHENTICATE" => "WWW-Authenticate".into(),
        _ => name
            .split('-')
            .map(|word| {
                let lower = word.to_ascii_lowercase();
                let mut chars = lower.chars();
                chars.next().map_or_else(String::new, |first| {
                    first.to_ascii_uppercase().to_string() + chars.as_str()
                })
            })
            .collect::<Vec<_>>()
            .join("-"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    fn spec() -> Value {
        serde_json::from_str(&super::super::spec_json()).unwrap()
    }

    fn walk<'a>(value: &'a Value, found: &mut Vec<&'a Value>) {
        found.push(value);
        match value {
            Value::Object(m) => m.values().for_each(|v| walk(v, found)),
            Value::Array(a) => a.iter().for_each(|v| walk(v, found)),
            _ => {}
        }
    }

    #[test]
    fn closed_request_bodies_say_so_in_the_spec() {
        let spec = spec();
        let schemas = spec["components"]["schemas"].as_object().unwrap();
        for name in super::CLOSED_BODIES {
            assert_eq!(
                schemas[*name]["additionalProperties"],
                Value::Bool(false),
                "{name}"
            );
        }
        let closed = schemas
            .values()
            .filter(|s| s["additionalProperties"] == Value::Bool(false))
            .count();
        assert_eq!(closed, super::CLOSED_BODIES.len());
    }

    #[test]
    fn members_name_their_schema_without_wrappers() {
        let spec = spec();
        let mut all = Vec::new();
        walk(&spec, &mut all);
        assert!(all.iter().all(|v| v.get("allOf").is_none()));
        let digests = &spec["components"]["schemas"]["FileInfo"]["properties"]["digests"];
        assert_eq!(digests["$ref"], "#/components/schemas/Digests");
        assert_eq!(digests["description"], "Both digests.");
    }

    #[test]
    fn headers_read_by_hand_are_declared_and_named_as_usual() {
        let spec = spec();
        let download = &spec["paths"]["/files/{id}/download"]["get"];
        let names: Vec<&str> = download["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["id", "Range", "If-None-Match"]);
        let headers = download["responses"]["206"]["headers"].as_object().unwrap();
        assert!(headers.contains_key("Content-Range") && headers.contains_key("ETag"));
        assert!(headers.contains_key("Repr-Digest"), "{headers:?}");
        let patch = &spec["paths"]["/uploads/{id}"]["patch"]["responses"];
        assert!(patch["202"]["headers"].get("Upload-Offset").is_some());
        assert!(patch["429"]["headers"].get("Retry-After").is_some());
        let mut all = Vec::new();
        walk(&spec, &mut all);
        let upper = all
            .iter()
            .filter_map(|v| v.get("headers").and_then(Value::as_object))
            .flat_map(|h| h.keys())
            .filter(|k| k.len() > 1 && k.chars().skip(1).all(|c| !c.is_ascii_lowercase()))
            .count();
        assert_eq!(upper, 0, "no header is spelled in capitals");
    }

    #[test]
    fn every_problem_has_an_example_of_its_status() {
        let spec = spec();
        let mut count = 0;
        for (_, methods) in spec["paths"].as_object().unwrap() {
            for (_, operation) in methods.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    if let Some(problem) = response["content"].get("application/problem+json") {
                        assert_eq!(
                            problem["example"]["status"].as_u64().unwrap().to_string(),
                            *status
                        );
                        count += 1;
                    }
                }
            }
        }
        assert!(count > 100, "{count}");
    }
}
