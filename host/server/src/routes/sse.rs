//! A generation streamed as Server-Sent Events, and the `x-kiln-cache`
//! header every generating endpoint sets.

use std::convert::Infallible;

use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{StreamExt, stream};

use crate::AppState;
use crate::generation::{CacheStatus, Generation};
use crate::piece::Piece;

/// Streams a generation as Server-Sent Events: `format` turns each piece
/// into events; an error midway becomes a last `{"error": ...}` event; the
/// stream ends with `data: [DONE]`. Dropping the response body (the client
/// went away) drops the generation, which cancels it in the engine.
pub(crate) fn sse<F>(state: &AppState, generation: Generation, format: F) -> Response
where
    F: FnMut(Piece) -> Vec<Event> + Send + 'static,
{
    let cache = generation.cache_status();
    let events = stream::unfold((Some(generation), format), |(generation, mut format)| async move {
        let mut generation = generation?;
        match generation.next().await? {
            Ok(piece) => Some((format(piece), (Some(generation), format))),
            Err(e) => {
                tracing::error!(error = %e, "stream failed midway");
                Some((vec![json_event(&e.body())], (None, format)))
            }
        }
    })
    .flat_map(stream::iter)
    .chain(stream::once(async { Event::default().data("[DONE]") }))
    .map(Ok::<_, Infallible>);
    let mut response =
        Sse::new(events).keep_alive(KeepAlive::new().interval(state.config().sse_keep_alive)).into_response();
    // Reverse proxies (nginx) buffer responses unless told not to.
    response.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    mark_cache(response, cache)
}

/// The `x-kiln-cache` header: whether the answer came from the response cache.
pub(crate) fn mark_cache(mut response: Response, status: CacheStatus) -> Response {
    if let Some(value) = status.header() {
        response.headers_mut().insert("x-kiln-cache", HeaderValue::from_static(value));
    }
    response
}

pub(crate) fn json_event<T: serde::Serialize>(value: &T) -> Event {
    // Serializing our own types cannot fail; an empty event would be harmless.
    Event::default().data(serde_json::to_string(value).unwrap_or_default())
}
