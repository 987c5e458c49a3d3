//! The validation boundary: each wire request (the guide's generate,
//! OpenAI's chat completions and completions) becomes one
//! [`ValidGeneration`] here, before anything is queued. Synchronous
//! handlers, async submission and the task worker all come through these
//! functions, so a request that would be refused synchronously is refused
//! at submission too. What needs the rendered prompt (does it fit the
//! context?) is checked when the generation starts.

use kiln_api::generate::GenerationRequest;
use kiln_api::openai::{ChatCompletionRequest, ChatMessage, CompletionRequest, MessageContent, PromptInput};
use kiln_api::{SamplingKnobs, StopSequences};
use kiln_engine::{MAX_CHOICES, MAX_TOP_LOGPROBS, SamplingParams};
use kiln_pipeline::Resolved;
use kiln_stop::{MAX_STOP_BYTES, MAX_STOP_STRINGS};

use crate::extract::RequestContext;
use crate::prompt::{Prompt, decode};
use crate::tools::{ToolUse, tool_use};
use crate::{ApiError, AppState};

/// The guide's `max_tokens` default.
const GENERATE_MAX_TOKENS: u32 = 512;
/// The guide's default temperature.
const GENERATE_TEMPERATURE: f32 = 0.7;
/// OpenAI's default temperature.
const OPENAI_TEMPERATURE: f32 = 1.0;
/// OpenAI's default `max_tokens` for completions.
const COMPLETION_MAX_TOKENS: u32 = 16;
/// OpenAI's limit on alternatives per position for completions.
pub(crate) const COMPLETION_MAX_LOGPROBS: u32 = 5;
/// The roles a chat message may have.
pub(crate) const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];
/// The longest stop string a client may send, in characters (at most
/// [`MAX_STOP_BYTES`] bytes however they are encoded; the OpenAPI document
/// can bound a string only in characters).
pub(crate) const MAX_STOP_CHARS: usize = MAX_STOP_BYTES / 4;

/// A generation every value of which has been checked: what the model is
/// asked to continue and how. Built only by this module's functions.
#[derive(Debug)]
pub(crate) struct ValidGeneration {
    pub prompt: Prompt,
    /// The field the client wrote the prompt in (`prompt`, `messages`), for errors.
    pub prompt_param: &'static str,
    pub params: SamplingParams,
    pub max_tokens: TokenLimit,
    /// The client's stop strings (a template may add its own).
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    /// Report each token's log-probability, with this many alternatives.
    pub logprobs: Option<usize>,
    /// Constrain the output to one JSON object (the json-mode sampler plugin).
    pub json: bool,
    /// Constrain the output to JSON valid against this schema (its JSON
    /// text; the json-schema sampler plugin).
    pub json_schema: Option<String>,
    /// The plugin versions this request runs (`None`: the host alone).
    pub pipeline: Option<Resolved>,
    /// Answers to generate from the one prompt (OpenAI's `n`).
    pub n: usize,
    /// Keep only the first tool call of an answer (`parallel_tool_calls: false`).
    pub single_tool_call: bool,
}

/// How many tokens a generation may produce.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenLimit {
    /// What the client asked for (at least 1).
    pub requested: Option<u32>,
    /// The endpoint's default, capped to what the context window leaves (a
    /// client that did not choose a limit is not refused for it); `None`:
    /// all the room there is.
    pub default: Option<u32>,
    /// The field the client wrote it in, for errors.
    pub param: &'static str,
}

/// Whether the answer goes back on this connection or to a stored task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Answered on the connection (streamed if asked).
    Respond,
    /// Stored and generated in the background: polled, never streamed.
    Task,
}

/// `POST /v1/generate` (and its stream and async variants), validated.
#[derive(Debug)]
pub(crate) struct ValidGenerate {
    pub generation: ValidGeneration,
    pub stream: bool,
}

/// `POST /v1/chat/completions` (and async), validated.
#[derive(Debug)]
pub(crate) struct ValidChat {
    pub generation: ValidGeneration,
    pub stream: bool,
    pub include_usage: bool,
    /// Tools are offered: the answer may be calls rather than text.
    pub offers_tools: bool,
}

/// `POST /v1/completions`, validated.
#[derive(Debug)]
pub(crate) struct ValidCompletion {
    pub generation: ValidGeneration,
    pub stream: bool,
    pub include_usage: bool,
    /// The prompt's text, when `echo` asks for it back.
    pub echo: Option<String>,
}

/// The guide's request: a prompt, by default a user message through the chat template.
pub(crate) fn generate(
    state: &AppState,
    context: &RequestContext,
    req: GenerationRequest,
    delivery: Delivery,
) -> Result<ValidGenerate, ApiError> {
    delivered(delivery, req.stream, req.webhook_url.is_some(), "/v1/generate/async")?;
    state.check_model(req.model.as_deref())?;
    if req.prompt.is_empty() {
        return Err(ApiError::invalid("prompt", "must not be empty"));
    }
    let params = sampling_params(state, req.knobs(), GENERATE_TEMPERATURE, Vec::new())?;
    let prompt = if req.raw {
        Prompt::Text(req.prompt)
    } else {
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = req.system {
            messages.push(kiln_chat::ChatMessage::new("system", system));
        }
        messages.push(kiln_chat::ChatMessage::new("user", req.prompt));
        Prompt::chat(messages, true)
    };
    let generation = ValidGeneration {
        prompt,
        prompt_param: "prompt",
        params,
        max_tokens: token_limit(state, req.max_tokens, Some(GENERATE_MAX_TOKENS), "max_tokens")?,
        stop: stop_strings(req.stop)?,
        ignore_eos: req.ignore_eos,
        logprobs: None,
        json: false,
        json_schema: None,
        pipeline: state.pipeline(context.pipeline(req.pipeline.as_deref())?, context)?,
        n: 1,
        single_tool_call: false,
    };
    Ok(ValidGenerate { generation, stream: req.stream })
}

/// OpenAI's chat completion: a conversation through the chat template.
pub(crate) fn chat(
    state: &AppState,
    context: &RequestContext,
    mut req: ChatCompletionRequest,
    delivery: Delivery,
) -> Result<ValidChat, ApiError> {
    delivered(delivery, req.stream, req.webhook_url.is_some(), "/v1/chat/completions/async")?;
    state.check_model(req.model.as_deref())?;
    let tools = tool_use(req.tools.take(), req.tool_choice.take(), req.parallel_tool_calls, state.plugins().is_some())?;
    let (json, json_schema) = response_format(state, req.response_format.take())?;
    if tools.active() && (json || json_schema.is_some()) {
        return Err(ApiError::invalid(
            "response_format",
            "a JSON response format cannot be combined with `tools` (unless `tool_choice` is `none`)",
        ));
    }
    let top_logprobs = req.top_logprobs.unwrap_or(0) as usize;
    let wants_logprobs = req.logprobs.unwrap_or(false);
    if top_logprobs > 0 && !wants_logprobs {
        return Err(ApiError::invalid("top_logprobs", "requires `logprobs: true`"));
    }
    if top_logprobs > MAX_TOP_LOGPROBS {
        return Err(ApiError::invalid("top_logprobs", format!("must be at most {MAX_TOP_LOGPROBS}")));
    }
    let logprobs = wants_logprobs.then_some(top_logprobs);
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "must hold at least one message"));
    }
    let messages = chat_messages(std::mem::take(&mut req.messages))?;
    let (max_tokens, param) = match req.max_completion_tokens {
        Some(n) => (Some(n), "max_completion_tokens"),
        None => (req.max_tokens, "max_tokens"),
    };
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let fields = req.take_sampling();
    let single_tool_call = !tools.parallel;
    let offers_tools = tools.active();
    let ToolUse { tools, choice: tool_choice, .. } = tools;
    let prompt = Prompt::Chat { messages, tools, tool_choice, add_generation_prompt: true };
    let generation = openai_generation(
        state,
        context,
        fields,
        (prompt, "messages"),
        token_limit(state, max_tokens, None, param)?,
        logprobs,
        json,
    )?;
    let generation = ValidGeneration { json_schema, single_tool_call, ..generation };
    Ok(ValidChat { generation, stream: req.stream, include_usage, offers_tools })
}

/// `response_format`: free text, one JSON object (json-mode), or JSON valid
/// against a schema (json-schema; the schema's keywords are checked when the
/// plugin compiles it, as the generation starts).
fn response_format(
    state: &AppState,
    format: Option<kiln_api::openai::ResponseFormat>,
) -> Result<(bool, Option<String>), ApiError> {
    let Some(format) = format else { return Ok((false, None)) };
    let needs_plugins = |kind: &str, plugin: &str| {
        ApiError::invalid(
            "response_format",
            format!("`{kind}` needs the {plugin} plugin, and this server runs without plugins"),
        )
    };
    match format.kind.as_str() {
        "text" => Ok((false, None)),
        "json_object" if state.plugins().is_none() => Err(needs_plugins("json_object", "json-mode")),
        "json_object" => Ok((true, None)),
        "json_schema" if state.plugins().is_none() => Err(needs_plugins("json_schema", "json-schema")),
        "json_schema" => {
            let schema = format.json_schema.as_ref().and_then(|j| j.get("schema")).filter(|s| s.is_object());
            let Some(schema) = schema else {
                return Err(ApiError::invalid(
                    "response_format.json_schema.schema",
                    "`json_schema` needs `json_schema: {\"name\": ..., \"schema\": {...}}`",
                ));
            };
            Ok((false, Some(schema.to_string())))
        }
        other => Err(ApiError::invalid(
            "response_format",
            format!("`{other}` is not supported; use `text`, `json_object` or `json_schema`"),
        )),
    }
}

/// OpenAI's legacy completion: the prompt as is, never the chat template.
pub(crate) fn completion(
    state: &AppState,
    context: &RequestContext,
    mut req: CompletionRequest,
) -> Result<ValidCompletion, ApiError> {
    state.check_model(req.model.as_deref())?;
    if req.suffix.is_some() {
        return Err(ApiError::invalid("suffix", "is not supported (no fill-in-the-middle)"));
    }
    if let Some(best_of) = req.best_of.filter(|b| *b != 1) {
        return Err(ApiError::invalid("best_of", format!("only best_of=1 is supported, got {best_of}")));
    }
    if let Some(n) = req.logprobs.filter(|n| *n > COMPLETION_MAX_LOGPROBS) {
        return Err(ApiError::invalid("logprobs", format!("must be at most {COMPLETION_MAX_LOGPROBS}, got {n}")));
    }
    let fields = req.take_sampling();
    let (prompt, echo) = completion_prompt(state, req.prompt, req.echo)?;
    let generation = openai_generation(
        state,
        context,
        fields,
        (prompt, "prompt"),
        token_limit(state, req.max_tokens, Some(COMPLETION_MAX_TOKENS), "max_tokens")?,
        req.logprobs.map(|n| n as usize),
        false,
    )?;
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    Ok(ValidCompletion { generation, stream: req.stream, include_usage, echo })
}

/// OpenAI's messages as the chat template takes them: text parts joined,
/// an assistant's tool calls and a tool result's call id kept.
pub(crate) fn chat_messages(messages: Vec<ChatMessage>) -> Result<Vec<kiln_chat::ChatMessage>, ApiError> {
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            if !ROLES.contains(&m.role.as_str()) {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("unknown role {:?}; expected one of {}", m.role, ROLES.join(", ")),
                ));
            }
            let tool_calls = message_tool_calls(i, &m.role, m.tool_calls)?;
            if m.role == "tool" && m.tool_call_id.is_none() {
                return Err(ApiError::invalid(
                    format!("messages[{i}].tool_call_id"),
                    "a `tool` message needs the id of the call it answers",
                ));
            }
            let content = match m.content {
                None => String::new(),
                Some(MessageContent::Text(text)) => text,
                Some(MessageContent::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, part) in parts.into_iter().enumerate() {
                        match (part.kind.as_str(), part.text) {
                            ("text", Some(t)) => text.push_str(&t),
                            _ => {
                                return Err(ApiError::invalid(
                                    format!("messages[{i}].content[{j}]"),
                                    format!("only text parts (with `text`) are supported, got type {:?}", part.kind),
                                ));
                            }
                        }
                    }
                    text
                }
            };
            Ok(kiln_chat::ChatMessage {
                tool_calls,
                tool_call_id: m.tool_call_id,
                name: m.name,
                ..kiln_chat::ChatMessage::new(m.role, content)
            })
        })
        .collect()
}

/// An assistant turn's calls as the template takes them; only assistants call.
fn message_tool_calls(
    i: usize,
    role: &str,
    calls: Option<Vec<kiln_api::tools::ToolCall>>,
) -> Result<Vec<kiln_chat::ToolCall>, ApiError> {
    let calls = calls.unwrap_or_default();
    if !calls.is_empty() && role != "assistant" {
        return Err(ApiError::invalid(
            format!("messages[{i}].tool_calls"),
            "only `assistant` messages make tool calls",
        ));
    }
    calls
        .into_iter()
        .enumerate()
        .map(|(j, c)| {
            if c.kind != "function" {
                return Err(ApiError::invalid(
                    format!("messages[{i}].tool_calls[{j}].type"),
                    format!("must be `function`, got {:?}", c.kind),
                ));
            }
            // Arguments that are JSON are kept as serde writes them: escapes
            // such as `\u003c` spelled out, so a control token hidden in
            // them is seen (and shielded) before a template decodes them.
            let arguments = match serde_json::from_str::<serde_json::Value>(&c.function.arguments) {
                Ok(value) => value.to_string(),
                Err(_) => c.function.arguments,
            };
            Ok(kiln_chat::ToolCall { id: c.id, name: c.function.name, arguments })
        })
        .collect()
}

/// Refuses what the other delivery takes: a webhook on a synchronous
/// request, a stream on a task.
fn delivered(delivery: Delivery, stream: bool, webhook: bool, async_path: &str) -> Result<(), ApiError> {
    match delivery {
        Delivery::Respond if webhook => {
            Err(ApiError::invalid("webhook_url", format!("only POST {async_path} takes a webhook")))
        }
        Delivery::Task if stream => Err(ApiError::invalid("stream", "an async task is polled, not streamed")),
        _ => Ok(()),
    }
}

/// What chat completions and completions share: OpenAI's sampling fields.
fn openai_generation(
    state: &AppState,
    context: &RequestContext,
    fields: kiln_api::openai::SamplingFields,
    (prompt, prompt_param): (Prompt, &'static str),
    max_tokens: TokenLimit,
    logprobs: Option<usize>,
    json: bool,
) -> Result<ValidGeneration, ApiError> {
    let n = fields.n.unwrap_or(1) as usize;
    if !(1..=MAX_CHOICES).contains(&n) {
        return Err(ApiError::invalid("n", format!("must be between 1 and {MAX_CHOICES}, got {n}")));
    }
    let mut logit_bias = Vec::new();
    for (key, bias) in fields.logit_bias.unwrap_or_default() {
        let id = key.parse::<u32>().map_err(|_| {
            ApiError::invalid("logit_bias", format!("keys must be token ids (integers as strings), got {key:?}"))
        })?;
        logit_bias.push((id, bias));
    }
    logit_bias.sort_unstable_by_key(|(id, _)| *id);
    Ok(ValidGeneration {
        prompt,
        prompt_param,
        params: sampling_params(state, fields.knobs, OPENAI_TEMPERATURE, logit_bias)?,
        max_tokens,
        stop: stop_strings(fields.stop)?,
        ignore_eos: fields.ignore_eos.unwrap_or(false),
        logprobs,
        json,
        json_schema: None,
        pipeline: state.pipeline(context.pipeline(fields.pipeline.as_deref())?, context)?,
        n,
        single_tool_call: false,
    })
}

/// The knobs in the engine's terms (absent means neutral), range-checked.
fn sampling_params(
    state: &AppState,
    knobs: SamplingKnobs,
    default_temperature: f32,
    logit_bias: Vec<(u32, f32)>,
) -> Result<SamplingParams, ApiError> {
    // OpenAI's seed is a signed 64-bit integer: the document says so.
    if let Some(seed) = knobs.seed.filter(|s| *s > i64::MAX as u64) {
        return Err(ApiError::invalid("seed", format!("invalid `seed`: must be 0 to {}, got {seed}", i64::MAX)));
    }
    let params = SamplingParams {
        temperature: knobs.temperature.unwrap_or(default_temperature),
        top_k: knobs.top_k.unwrap_or(0) as usize,
        top_p: knobs.top_p.unwrap_or(1.0),
        min_p: knobs.min_p.unwrap_or(0.0),
        repetition_penalty: knobs.repetition_penalty.unwrap_or(1.0),
        frequency_penalty: knobs.frequency_penalty.unwrap_or(0.0),
        presence_penalty: knobs.presence_penalty.unwrap_or(0.0),
        seed: knobs.seed,
        logit_bias,
    };
    params.validate(state.backend().limits().vocab_size)?;
    Ok(params)
}

/// The token limit as asked, checked against what holds for any prompt: at
/// least one token, at most the context window (whether it fits beside
/// this prompt is known once the prompt is tokenized).
fn token_limit(
    state: &AppState,
    requested: Option<u32>,
    default: Option<u32>,
    param: &'static str,
) -> Result<TokenLimit, ApiError> {
    let context = state.backend().limits().max_context;
    match requested {
        Some(0) => Err(ApiError::invalid(param, format!("invalid `{param}`: must be at least 1, got 0"))),
        Some(n) if n as usize > context => Err(ApiError::InvalidValue {
            param: param.into(),
            message: format!("invalid `{param}`: must be at most the context window of {context} tokens, got {n}"),
            code: Some("context_length_exceeded"),
        }),
        _ => Ok(TokenLimit { requested, default, param }),
    }
}

fn stop_strings(stop: Option<StopSequences>) -> Result<Vec<String>, ApiError> {
    let stop = stop.map(StopSequences::into_vec).unwrap_or_default();
    if stop.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid("stop", format!("at most {MAX_STOP_STRINGS} stop strings are allowed")));
    }
    if let Some(bad) = stop.iter().find(|s| s.is_empty() || s.chars().count() > MAX_STOP_CHARS) {
        return Err(ApiError::invalid(
            "stop",
            format!("stop strings must be 1 to {MAX_STOP_CHARS} characters long, got {}", bad.chars().count()),
        ));
    }
    Ok(stop)
}

/// The prompt as the model will see it, and its text when `echo` wants it
/// back. A list must hold exactly one prompt.
fn completion_prompt(state: &AppState, input: PromptInput, echo: bool) -> Result<(Prompt, Option<String>), ApiError> {
    let one = |n: usize| match n {
        1 => Ok(()),
        _ => Err(ApiError::invalid("prompt", format!("exactly one prompt per request is supported, got {n}"))),
    };
    let tokens = match input {
        PromptInput::Text(text) => return Ok((Prompt::Text(text.clone()), echo.then_some(text))),
        PromptInput::Texts(mut texts) => {
            one(texts.len())?;
            let text = texts.remove(0);
            return Ok((Prompt::Text(text.clone()), echo.then_some(text)));
        }
        PromptInput::Tokens(tokens) => tokens,
        PromptInput::TokenLists(mut lists) => {
            one(lists.len())?;
            lists.remove(0)
        }
    };
    // Decoding also checks every id against the vocabulary.
    let text = decode(state, "prompt", &tokens)?;
    Ok((Prompt::Tokens(tokens), echo.then_some(text)))
}
