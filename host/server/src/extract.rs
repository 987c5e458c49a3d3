//! What handlers take from a request: `ApiJson<T>`, a JSON body extractor
//! whose failures name the field, and the [`RequestContext`] the middleware
//! left (the [`Caller`], its token meter, the cache directive).
//!
//! Unlike `axum::Json`, `ApiJson` does not insist on a `Content-Type` (so
//! `curl -d '{...}'` works) and answers in kiln's error envelope:
//! 400 for text that is not JSON, 422 for JSON of the wrong shape (with the
//! path of the offending field), 413 past the body limit.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::ApiError;
use crate::token_meter::TokenMeter;

/// Who is calling: the key that authenticated the request, if any.
#[derive(Clone, Debug)]
pub struct Caller {
    pub key: Option<kiln_access::Key>,
}

impl Caller {
    pub fn name(&self) -> Option<&str> {
        self.key.as_ref().map(kiln_access::Key::name)
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req.extensions().get::<BodyLimit>().map(|l| l.0);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit: limit.unwrap_or_default() }
            } else {
                ApiError::MalformedJson(rejection.body_text())
            }
        })?;
        parse(&bytes).map(ApiJson)
    }
}

/// The configured body limit, for the 413 message.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let param = (path != ".").then_some(path);
                let message = match &param {
                    Some(p) => format!("`{p}`: {inner}"),
                    None => inner.to_string(),
                };
                ApiError::InvalidType { param, message }
            }
            _ => ApiError::MalformedJson(inner.to_string()),
        }
    })?;
    de.end().map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    Ok(value)
}

/// A query string deserialized into `T`; a value of the wrong type is 400
/// in the error envelope, naming the parameter (axum's own `Query` answers
/// in plain text).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de).map(ApiQuery).map_err(|e| {
            let param = e.path().to_string();
            let message = format!("`{param}`: {}", e.into_inner());
            ApiError::InvalidValue { param, message, code: Some("invalid_query") }
        })
    }
}

/// One path parameter; one that is not valid UTF-8 after percent-decoding
/// is 400 in the error envelope, naming it.
#[derive(Debug, Clone)]
pub struct ApiPath(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ApiPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        let name = parts
            .extensions
            .get::<axum::extract::MatchedPath>()
            .and_then(|p| p.as_str().rsplit_once('{').and_then(|(_, rest)| rest.split('}').next()).map(str::to_string))
            .unwrap_or_else(|| "path".into());
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(ApiError::invalid(name.trim_start_matches('*'), rejection.body_text())),
        }
    }
}

/// What the middleware learned about a request that handlers act on: who
/// calls (for the key's default pipeline) and where its tokens are counted.
#[derive(Clone, Debug, Default)]
pub struct RequestContext {
    /// The `x-request-id` (a task's id for a task); empty only where no
    /// request started it.
    pub request_id: String,
    pub caller: Option<Caller>,
    pub meter: Option<TokenMeter>,
    /// `Cache-Control: no-cache` (or `no-store`): not served from the cache.
    pub no_cache: bool,
}

impl RequestContext {
    /// The API key's name, if a key authenticated the request.
    pub fn tenant(&self) -> Option<String> {
        self.caller.as_ref()?.name().map(str::to_string)
    }

    /// The pipeline a request runs: its own choice, else its key's default.
    /// A key that lists its pipelines runs no other (403 naming them).
    pub fn pipeline<'a>(&'a self, requested: Option<&'a str>) -> Result<Option<&'a str>, ApiError> {
        let Some(key) = self.caller.as_ref().and_then(|c| c.key.as_ref()) else { return Ok(requested) };
        let allowed: Vec<&str> = key.config.allowed_pipelines().collect();
        match requested {
            None => Ok(allowed.first().copied()),
            Some(name) if allowed.is_empty() || allowed.contains(&name) => Ok(Some(name)),
            Some(name) => Err(ApiError::Forbidden(format!(
                "the key {:?} may not run pipeline {name:?}; it may run {}",
                key.name(),
                allowed.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(RequestContext {
            request_id: parts
                .extensions
                .get::<crate::middleware::request_id::RequestId>()
                .map(|r| r.0.clone())
                .unwrap_or_default(),
            caller: parts.extensions.get::<Caller>().cloned(),
            meter: parts.extensions.get::<TokenMeter>().cloned(),
            no_cache: parts
                .headers
                .get_all(axum::http::header::CACHE_CONTROL)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.split(',').any(|d| matches!(d.trim(), "no-cache" | "no-store"))),
        })
    }
}
