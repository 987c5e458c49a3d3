//! Tool calling at the boundary: OpenAI's `tools`, `tool_choice` and
//! `parallel_tool_calls` validated into the conversation's terms, and the
//! ids calls get on the way out.

use kiln_api::tools::{ToolChoiceParam, ToolSpec};
use kiln_chat::{Tool, ToolChoice};

use crate::ApiError;

/// Most functions one request may offer (OpenAI's limit).
pub(crate) const MAX_TOOLS: usize = 128;
/// A function name's longest length (OpenAI's limit).
const MAX_NAME: usize = 64;
/// What a function name may be, as the OpenAPI document states it.
pub(crate) const NAME_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

/// A chat request's tools, validated.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ToolUse {
    pub tools: Vec<Tool>,
    pub choice: ToolChoice,
    /// Several calls in one answer (OpenAI's `parallel_tool_calls`, default true).
    pub parallel: bool,
}

impl ToolUse {
    /// Whether the answer is parsed for calls: tools offered, and not `none`.
    pub fn active(&self) -> bool {
        !self.tools.is_empty() && self.choice != ToolChoice::None
    }
}

/// Validates the request's tool fields; `plugins` says whether the server
/// has the plugins that parse and constrain calls.
pub(crate) fn tool_use(
    tools: Option<Vec<ToolSpec>>,
    choice: Option<ToolChoiceParam>,
    parallel: Option<bool>,
    plugins: bool,
) -> Result<ToolUse, ApiError> {
    let tools = tools.unwrap_or_default();
    if tools.len() > MAX_TOOLS {
        return Err(ApiError::invalid("tools", format!("at most {MAX_TOOLS} tools are allowed, got {}", tools.len())));
    }
    let mut valid: Vec<Tool> = Vec::with_capacity(tools.len());
    for (i, spec) in tools.into_iter().enumerate() {
        if spec.kind != "function" {
            return Err(ApiError::invalid(
                format!("tools[{i}].type"),
                format!("only `function` tools are supported, got {:?}", spec.kind),
            ));
        }
        let name = spec.function.name;
        check_name(&name).map_err(|m| ApiError::invalid(format!("tools[{i}].function.name"), m))?;
        if valid.iter().any(|t| t.name == name) {
            return Err(ApiError::invalid(format!("tools[{i}].function.name"), format!("{name:?} is given twice")));
        }
        let parameters = match spec.function.parameters {
            None => serde_json::json!({"type": "object", "properties": {}}),
            Some(p) if p.is_object() => p,
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("tools[{i}].function.parameters"),
                    "must be a JSON schema object",
                ));
            }
        };
        valid.push(Tool {
            name,
            description: spec.function.description.unwrap_or_default(),
            parameters: parameters.to_string(),
        });
    }
    let choice = match choice {
        None => ToolChoice::Auto,
        Some(ToolChoiceParam::Mode(mode)) => match mode.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("{other:?} is not a choice; use `auto`, `none`, `required` or a named function"),
                ));
            }
        },
        Some(ToolChoiceParam::Named(named)) => {
            if named.kind != "function" {
                return Err(ApiError::invalid("tool_choice.type", format!("must be `function`, got {:?}", named.kind)));
            }
            let name = named.function.name;
            if !valid.iter().any(|t| t.name == name) {
                return Err(ApiError::invalid(
                    "tool_choice.function.name",
                    format!("{name:?} is not one of the request's tools"),
                ));
            }
            ToolChoice::Function(name)
        }
    };
    if valid.is_empty() && matches!(choice, ToolChoice::Required) {
        return Err(ApiError::invalid("tool_choice", "`required` needs `tools`"));
    }
    let uses = ToolUse { tools: valid, choice, parallel: parallel.unwrap_or(true) };
    if uses.active() && !plugins {
        return Err(ApiError::invalid(
            "tools",
            "tool calling needs the tool-calls plugin, and this server runs without plugins",
        ));
    }
    Ok(uses)
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=MAX_NAME).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(format!("must be 1 to {MAX_NAME} of a-z, A-Z, 0-9, _ and -, got {name:?}")) }
}

/// A fresh id for a call the model made (`call_...`, as OpenAI's).
pub(crate) fn call_id() -> String {
    format!("call_{}", &uuid::Uuid::new_v4().simple().to_string()[..24])
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_api::tools::{FunctionName, FunctionSpec, NamedToolChoice};

    fn spec(name: &str, parameters: Option<serde_json::Value>) -> ToolSpec {
        ToolSpec {
            kind: "function".into(),
            function: FunctionSpec { name: name.into(), description: None, parameters, strict: None },
        }
    }

    fn named(name: &str) -> Option<ToolChoiceParam> {
        Some(ToolChoiceParam::Named(NamedToolChoice {
            kind: "function".into(),
            function: FunctionName { name: name.into() },
        }))
    }

    fn param_of(e: ApiError) -> String {
        match e {
            ApiError::InvalidValue { param, .. } => param,
            other => panic!("not a client error: {other}"),
        }
    }

    #[test]
    fn tools_without_parameters_take_an_empty_object_and_auto_is_the_default() {
        let uses = tool_use(Some(vec![spec("now", None)]), None, None, true).unwrap();
        assert_eq!(uses.tools[0].parameters, r#"{"properties":{},"type":"object"}"#);
        assert_eq!(uses.choice, ToolChoice::Auto);
        assert!(uses.parallel && uses.active());
    }

    #[test]
    fn each_bad_field_is_named() {
        let dup = tool_use(Some(vec![spec("a", None), spec("a", None)]), None, None, true).unwrap_err();
        assert_eq!(param_of(dup), "tools[1].function.name");
        let bad_name = tool_use(Some(vec![spec("a b", None)]), None, None, true).unwrap_err();
        assert_eq!(param_of(bad_name), "tools[0].function.name");
        let bad_schema = tool_use(Some(vec![spec("a", Some(serde_json::json!([1])))]), None, None, true).unwrap_err();
        assert_eq!(param_of(bad_schema), "tools[0].function.parameters");
        let unknown = tool_use(Some(vec![spec("a", None)]), named("b"), None, true).unwrap_err();
        assert_eq!(param_of(unknown), "tool_choice.function.name");
        let mode = tool_use(Some(vec![spec("a", None)]), Some(ToolChoiceParam::Mode("any".into())), None, true);
        assert_eq!(param_of(mode.unwrap_err()), "tool_choice");
        let required = tool_use(None, Some(ToolChoiceParam::Mode("required".into())), None, true);
        assert_eq!(param_of(required.unwrap_err()), "tool_choice");
        assert_eq!(param_of(tool_use(Some(vec![spec("a", None)]), None, None, false).unwrap_err()), "tools");
    }

    #[test]
    fn none_offers_nothing_to_parse_even_without_plugins() {
        let none = Some(ToolChoiceParam::Mode("none".into()));
        let uses = tool_use(Some(vec![spec("a", None)]), none, Some(false), false).unwrap();
        assert!(!uses.active() && !uses.parallel);
        assert_eq!(uses.choice, ToolChoice::None);
    }
}
