//! The documented routes, read from the OpenAPI document: which methods a path takes (for
//! `Allow` on 405 answers, RFC 9110 §15.5.6) and which operation a request is (its
//! operationId, for logs and metrics), known before any handler runs, so that requests refused
//! early (no token, a body too large) are named by their operation too.

use poem::http::Method;

/// One documented path: its segments (`None` for a `{param}`) and its operations.
#[derive(Debug)]
struct Route {
    segments: Vec<Option<String>>,
    /// The last segment is a file's relative path, which may hold slashes.
    rest_is_path: bool,
    operations: Vec<(Method, &'static str)>,
    allow: String,
}

/// The routes of the OpenAPI document.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Built from the OpenAPI document. Operation ids are kept for the life of the process
    /// (they label metrics), so build one table per process.
    pub fn from_spec(spec: &str) -> Self {
        let spec: serde_json::Value = serde_json::from_str(spec).unwrap_or_default();
        let mut routes = Vec::new();
        for (path, item) in spec["paths"].as_object().into_iter().flatten() {
            let segments: Vec<Option<String>> = path
                .split('/')
                .skip(1)
                .map(|s| (!s.starts_with('{')).then(|| s.to_owned()))
                .collect();
            let mut operations = Vec::new();
            for (method, operation) in item.as_object().into_iter().flatten() {
                let (Ok(method), Some(id)) = (
                    Method::from_bytes(method.to_uppercase().as_bytes()),
                    operation["operationId"].as_str(),
                ) else {
                    continue;
                };
                operations.push((method, &*Box::leak(id.to_owned().into_boxed_str())));
            }
            let mut methods: Vec<&str> = operations.iter().map(|(m, _)| m.as_str()).collect();
            methods.sort_unstable();
            routes.push(Route {
                rest_is_path: path.ends_with("/{relative_path}"),
                allow: methods.join(", "),
                segments,
                operations,
            });
        }
        // Literal segments win over parameters (`/packages/{id}/links/batch`).
        routes.sort_by_key(|r| std::cmp::Reverse(r.segments.iter().flatten().count()));
        RouteTable { routes }
    }

    fn route(&self, path: &str) -> Option<&Route> {
        let request: Vec<&str> = path.split('/').skip(1).collect();
        let matches = |route: &Route| {
            let fits = route.segments.len() == request.len()
                || (route.rest_is_path && request.len() > route.segments.len());
            fits && route
                .segments
                .iter()
                .zip(&request)
                .all(|(s, r)| s.as_deref().is_none_or(|s| s == *r))
        };
        self.routes.iter().find(|r| matches(r))
    }

    /// The `Allow` value for a request path, if it is a documented route.
    pub fn allow(&self, path: &str) -> Option<&str> {
        self.route(path).map(|r| r.allow.as_str())
    }

    /// The operationId of a request, if it is a documented operation.
    pub fn operation(&self, method: &Method, path: &str) -> Option<&'static str> {
        let route = self.route(path)?;
        let find = |method: &Method| {
            route
                .operations
                .iter()
                .find(|(m, _)| m == method)
                .map(|(_, id)| *id)
        };
        // HEAD is served by the GET operation where it has none of its own.
        find(method).or_else(|| {
            (method == Method::HEAD)
                .then(|| find(&Method::GET))
                .flatten()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_named_by_their_operation() {
        let table = RouteTable::from_spec(&crate::api::spec_json());
        let id = "0190a5b6-7c8d-7e9f-a0b1-c2d3e4f5a6b7";
        for (method, path, operation) in [
            (Method::POST, "/packages".to_owned(), Some("createPackage")),
            (Method::GET, format!("/packages/{id}"), Some("getPackage")),
            (
                Method::PUT,
                format!("/packages/{id}/files/a.txt"),
                Some("putFile"),
            ),
            (
                Method::PUT,
                format!("/packages/{id}/files/a/b/c.txt"),
                Some("putFile"),
            ),
            (
                Method::POST,
                format!("/packages/{id}/links/batch"),
                Some("linkFiles"),
            ),
            (
                Method::POST,
                format!("/packages/{id}/links"),
                Some("linkFile"),
            ),
            (
                Method::HEAD,
                format!("/files/{id}/download"),
                Some("downloadFile"),
            ),
            (
                Method::HEAD,
                format!("/packages/{id}/files/a/b/c.txt"),
                Some("headFileByPath"),
            ),
            (
                Method::GET,
                format!("/packages/{id}/files/a/b/c.txt"),
                Some("downloadFileByPath"),
            ),
            (
                Method::PATCH,
                format!("/uploads/{id}"),
                Some("appendUpload"),
            ),
            (
                Method::DELETE,
                format!("/packages/{id}/legal-hold"),
                Some("releaseLegalHold"),
            ),
            (Method::GET, "/events".to_owned(), Some("listEvents")),
            (Method::DELETE, "/events".to_owned(), None),
            (Method::GET, "/nowhere".to_owned(), None),
            (Method::GET, format!("/uploads/{id}/x/y"), None),
        ] {
            assert_eq!(
                table.operation(&method, &path),
                operation,
                "{method} {path}"
            );
        }
        assert_eq!(table.allow("/events"), Some("GET"));
        assert_eq!(
            table.allow(&format!("/uploads/{id}")),
            Some("DELETE, GET, PATCH")
        );
    }
}
