//! `x-request-id`: the client's, when it sends a sane one, else a new one;
//! echoed on the response and attached to every log line of the request.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub const HEADER: &str = "x-request-id";

/// The request's id, for handlers (`RequestContext::request_id`).
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Ids clients send are kept if they are short printable ASCII (they end up in logs).
fn acceptable(value: &HeaderValue) -> Option<&str> {
    let id = value.to_str().ok()?;
    (!id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())).then_some(id)
}

pub async fn request_id(mut request: Request, next: Next) -> Response {
    let id = match request.headers().get(HEADER).and_then(acceptable) {
        Some(id) => id.to_string(),
        None => uuid::Uuid::new_v4().simple().to_string(),
    };
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", id = %id, method = %request.method(), path = %request.uri().path());
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}
