//! What a task asks for, as stored, and its validation: the same functions
//! that check a synchronous request, at submission and again when a worker
//! takes the task (a stored request may predate a rule).

use kiln_api::generate::GenerationRequest;
use kiln_api::openai::ChatCompletionRequest;

use crate::extract::RequestContext;
use crate::request::{self, Delivery, ValidGeneration};
use crate::{ApiError, AppState};

/// The endpoint's name and its request, as the task store keeps them.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "endpoint", rename_all = "snake_case")]
pub(crate) enum TaskRequest {
    /// `POST /v1/generate`'s request; the result is its answer.
    Generate(Box<GenerationRequest>),
    /// `POST /v1/chat/completions`'s; the result is a `chat.completion`.
    ChatCompletions(Box<ChatCompletionRequest>),
}

/// The shape of a task's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResultShape {
    /// The guide's answer.
    Generation,
    /// A `chat.completion`, with log-probabilities if asked.
    ChatCompletion { logprobs: bool },
}

impl TaskRequest {
    /// Reads a stored request. Tasks stored before they named their
    /// endpoint were all generate's.
    pub(crate) fn parse(stored: serde_json::Value) -> Result<TaskRequest, String> {
        match serde_json::from_value(stored.clone()) {
            Ok(request) => Ok(request),
            Err(e) => serde_json::from_value(stored)
                .map(|req| TaskRequest::Generate(Box::new(req)))
                .map_err(|_| format!("the stored request is unreadable: {e}")),
        }
    }

    /// The request checked as a task, and the shape of its result.
    pub(crate) fn validate(
        self,
        state: &AppState,
        context: &RequestContext,
    ) -> Result<(ValidGeneration, ResultShape), ApiError> {
        match self {
            TaskRequest::Generate(req) => {
                let valid = request::generate(state, context, *req, Delivery::Task)?;
                Ok((valid.generation, ResultShape::Generation))
            }
            TaskRequest::ChatCompletions(req) => {
                let valid = request::chat(state, context, *req, Delivery::Task)?;
                let logprobs = valid.generation.logprobs.is_some();
                Ok((valid.generation, ResultShape::ChatCompletion { logprobs }))
            }
        }
    }

    /// Where the task's webhook is, if it has one.
    pub(crate) fn webhook_url(&self) -> Option<&str> {
        match self {
            TaskRequest::Generate(req) => req.webhook_url.as_deref(),
            TaskRequest::ChatCompletions(req) => req.webhook_url.as_deref(),
        }
    }
}
