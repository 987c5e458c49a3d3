//! Request counts and latencies by route and status, for `/metrics`. The
//! route is the matched pattern (`/v1/models/{*id}`), never the raw path, so
//! the label set stays small whatever clients request.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

pub async fn record(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |m| m.as_str()).to_string();
    // Clients may send any method name: only the standard ones become labels.
    let method: &'static str = match request.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("kiln_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    // For a stream this is the time to its headers; tokens are timed apart.
    metrics::histogram!("kiln_http_request_duration_seconds", "route" => route).record(started.elapsed());
    response
}
