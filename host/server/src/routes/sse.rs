//! A generation streamed as Server-Sent Events, and the `x-kiln-cache`
//! header every generating endpoint sets.

use std::convert::Infallible;
use std::time::Duration;

use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use tokio::sync::mpsc::Sender;
use tokio::sync::mpsc::error::TrySendError;

use crate::AppState;
use crate::generation::{CacheStatus, Generation};
use crate::piece::Piece;

/// Events produced ahead of a client that has not read them yet, at most.
const STREAM_AHEAD: usize = 16;

/// Streams a generation as Server-Sent Events: `format` turns each piece
/// into events; an error midway becomes a last `{"error": ...}` event; the
/// stream ends with `data: [DONE]`. A task of its own runs the generation
/// a few events ahead of the client, and drops it (which cancels the
/// sequence in the engine and frees its plugin instances and reservation)
/// when the client goes away or stops reading for `stream_stall`.
pub(crate) fn sse<F>(state: &AppState, generation: Generation, mut format: F) -> Response
where
    F: FnMut(Piece) -> Vec<Event> + Send + 'static,
{
    sse_choices(state, vec![generation], move |_, piece| format(piece))
}

/// [`sse`] for several answers to one prompt: their pieces interleave as
/// they come, `format` told each one's index; `[DONE]` follows the last
/// answer's finish.
pub(crate) fn sse_choices<F>(state: &AppState, generations: Vec<Generation>, format: F) -> Response
where
    F: FnMut(usize, Piece) -> Vec<Event> + Send + 'static,
{
    let cache = generations.first().map_or(CacheStatus::Off, Generation::cache_status);
    let fingerprint = generations.first().and_then(|g| HeaderValue::from_str(g.fingerprint()).ok());
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_AHEAD);
    tokio::spawn(produce(generations, format, tx, state.config().stream_stall));
    let events =
        stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|event| (Ok::<_, Infallible>(event), rx)) });
    let mut response =
        Sse::new(events).keep_alive(KeepAlive::new().interval(state.config().sse_keep_alive)).into_response();
    // Reverse proxies (nginx) buffer responses unless told not to.
    response.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(fingerprint) = fingerprint {
        response.headers_mut().insert(FINGERPRINT_HEADER, fingerprint);
    }
    mark_cache(response, cache)
}

/// Names what produced an answer ([`crate::fingerprint`]).
pub(crate) const FINGERPRINT_HEADER: &str = "x-kiln-fingerprint";

/// Adds the `x-kiln-fingerprint` header.
pub(crate) fn mark_fingerprint(mut response: Response, fingerprint: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(fingerprint) {
        response.headers_mut().insert(FINGERPRINT_HEADER, value);
    }
    response
}

/// Runs `generations`, sending their events to the client's stream until
/// all end, one fails, the client goes away or the client stops reading.
async fn produce<F>(mut generations: Vec<Generation>, mut format: F, tx: Sender<Event>, stall: Duration)
where
    F: FnMut(usize, Piece) -> Vec<Event>,
{
    let mut live = vec![true; generations.len()];
    loop {
        let next = generations
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| live[*i])
            .map(|(i, g)| Box::pin(async move { (i, g.next().await) }))
            .collect::<Vec<_>>();
        // Every answer has finished.
        let (index, piece) = if next.is_empty() {
            (0, None)
        } else {
            tokio::select! {
                // A generation's `next` loses nothing when dropped unfinished.
                ((i, piece), _, _) = futures_util::future::select_all(next) => (i, piece),
                // The client went away: dropping the generations cancels them.
                () = tx.closed() => return,
            }
        };
        let (mut events, last) = match piece {
            Some(Ok(piece)) => {
                if matches!(piece, Piece::Finished { .. }) {
                    live[index] = false;
                }
                (format(index, piece), false)
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "stream failed midway");
                (vec![json_event(&e.body())], true)
            }
            None if live.iter().any(|l| *l) => {
                live[index] = false;
                continue;
            }
            None => (Vec::new(), true),
        };
        if last {
            events.push(Event::default().data("[DONE]"));
        }
        for event in events {
            // A client keeping up finds room at once; only one behind waits,
            // on a timer, for the stall limit.
            let event = match tx.try_send(event) {
                Ok(()) => continue,
                Err(TrySendError::Closed(_)) => return,
                Err(TrySendError::Full(event)) => event,
            };
            match tokio::time::timeout(stall, tx.send(event)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::warn!(?stall, "the client stopped reading; its stream is cancelled");
                    metrics::counter!("kiln_stream_stalls_total").increment(1);
                    return;
                }
            }
        }
        if last {
            return;
        }
    }
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
