//! `POST /v1/tokenize` and `POST /v1/detokenize`.

use axum::Json;
use axum::extract::State;
use kiln_api::ErrorBody;
use kiln_api::tokenize::{DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse};

use crate::extract::{ApiJson, RequestContext};
use crate::prompt::{self, Prompt};
use crate::request::chat_messages;
use crate::{ApiError, AppState};

/// Count a prompt's tokens: either `prompt` as is, or `messages` rendered with
/// the chat template exactly as a chat completion would be.
#[utoipa::path(post, path = "/v1/tokenize", tag = "tokens", request_body = TokenizeRequest,
    responses(
        (status = 200, description = "The token ids", body = TokenizeResponse),
        (status = 400, description = "Neither or both of `prompt` and `messages`, or messages the template refuses", body = ErrorBody),
        (status = 422, description = "A missing field or one of the wrong type", body = ErrorBody),
    ))]
pub async fn tokenize(
    State(state): State<AppState>,
    context: RequestContext,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    state.check_model(req.model.as_deref())?;
    let prompt = match (req.prompt, req.messages) {
        (Some(text), None) => Prompt::Text(text),
        (None, Some(messages)) => Prompt::chat(chat_messages(messages)?, req.add_generation_prompt),
        _ => return Err(ApiError::invalid("prompt", "give exactly one of `prompt` and `messages`")),
    };
    let pipeline = state.pipeline(context.pipeline(req.pipeline.as_deref())?, &context)?;
    let tokens = prompt::tokenize(&state, prompt, pipeline.as_ref()).await?.tokens;
    Ok(Json(TokenizeResponse {
        count: tokens.len() as u32,
        tokens,
        max_model_len: state.backend().limits().max_context as u32,
    }))
}

/// Turn token ids back into text (special tokens included).
#[utoipa::path(post, path = "/v1/detokenize", tag = "tokens", request_body = DetokenizeRequest,
    responses(
        (status = 200, description = "The text", body = DetokenizeResponse),
        (status = 400, description = "An id outside the vocabulary", body = ErrorBody),
        (status = 422, description = "A missing field or one of the wrong type", body = ErrorBody),
    ))]
pub async fn detokenize(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    state.check_model(req.model.as_deref())?;
    let prompt = prompt::decode(&state, "tokens", &req.tokens)?;
    Ok(Json(DetokenizeResponse { prompt }))
}
