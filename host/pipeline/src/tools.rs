//! Tool calling through the plugins: the request's tools in the contract's
//! terms, the built-in `tool-calls` parser, and the constraint that makes
//! the model write a call when it must (`tool_choice` `required` or a named
//! function): the built-in json-schema sampler, given the call's schema and
//! the text the prompt's syntax puts around it.

use kiln_chat::{Tool, ToolChoice, ToolSyntax};
use serde_json::{Value, json};

/// The request's tools as plugins receive them.
pub(crate) fn plugin_tools(tools: &[Tool]) -> Vec<kiln_plugins::Tool> {
    tools
        .iter()
        .map(|t| kiln_plugins::Tool {
            name: t.name.clone(),
            description: t.description.clone(),
            parameters: t.parameters.clone(),
        })
        .collect()
}

pub(crate) fn plugin_choice(choice: &ToolChoice) -> kiln_plugins::ToolChoice {
    match choice {
        ToolChoice::Auto => kiln_plugins::ToolChoice::Auto,
        ToolChoice::None => kiln_plugins::ToolChoice::None,
        ToolChoice::Required => kiln_plugins::ToolChoice::Required,
        ToolChoice::Function(name) => kiln_plugins::ToolChoice::Function(name.clone()),
    }
}

pub(crate) fn plugin_syntax(syntax: ToolSyntax) -> kiln_plugins::ToolSyntax {
    match syntax {
        ToolSyntax::Hermes => kiln_plugins::ToolSyntax::Hermes,
        ToolSyntax::LlamaJson => kiln_plugins::ToolSyntax::LlamaJson,
        ToolSyntax::Mistral => kiln_plugins::ToolSyntax::Mistral,
    }
}

pub(crate) fn chat_syntax(syntax: kiln_plugins::ToolSyntax) -> ToolSyntax {
    match syntax {
        kiln_plugins::ToolSyntax::Hermes => ToolSyntax::Hermes,
        kiln_plugins::ToolSyntax::LlamaJson => ToolSyntax::LlamaJson,
        kiln_plugins::ToolSyntax::Mistral => ToolSyntax::Mistral,
    }
}

/// What the json-schema sampler is given to force a call: the schema of
/// the call's JSON and the literal text around it.
#[derive(Debug, PartialEq)]
pub struct CallConstraint {
    pub schema: String,
    pub prefix: &'static str,
    pub suffix: &'static str,
}

/// The constraint for a call of one of `tools` (`Required`) or of the named
/// one, written in `syntax`; `None` when the choice forces no call.
pub fn call_constraint(tools: &[Tool], choice: &ToolChoice, syntax: ToolSyntax) -> Option<CallConstraint> {
    let callable: Vec<&Tool> = match choice {
        ToolChoice::Auto | ToolChoice::None => return None,
        ToolChoice::Required => tools.iter().collect(),
        ToolChoice::Function(name) => tools.iter().filter(|t| &t.name == name).collect(),
    };
    if callable.is_empty() {
        return None;
    }
    // Llama 3.1 names the arguments `parameters`.
    let arguments = if syntax == ToolSyntax::LlamaJson { "parameters" } else { "arguments" };
    let branches: Vec<Value> = callable
        .iter()
        .map(|t| {
            let parameters = serde_json::from_str::<Value>(&t.parameters)
                .unwrap_or_else(|_| json!({"type": "object", "properties": {}}));
            // The sampler tells the branches apart by the name's `const`.
            let mut properties = serde_json::Map::new();
            properties.insert("name".into(), json!({ "const": t.name }));
            properties.insert(arguments.into(), parameters);
            json!({
                "type": "object",
                "properties": properties,
                "required": ["name", arguments],
                "additionalProperties": false,
            })
        })
        .collect();
    let call = match <[Value; 1]>::try_from(branches) {
        Ok([one]) => one,
        Err(many) => json!({ "anyOf": many }),
    };
    let (schema, prefix, suffix) = match syntax {
        ToolSyntax::Hermes => (call, "<tool_call>\n", "\n</tool_call>"),
        ToolSyntax::LlamaJson => (call, "", ""),
        ToolSyntax::Mistral => {
            (json!({"type": "array", "items": call, "minItems": 1, "maxItems": 1}), "[TOOL_CALLS]", "")
        }
    };
    Some(CallConstraint { schema: schema.to_string(), prefix, suffix })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str, parameters: &str) -> Tool {
        Tool { name: name.into(), description: String::new(), parameters: parameters.into() }
    }

    #[test]
    fn a_named_function_is_one_object_naming_it_in_hermes_tags() {
        let tools =
            [tool("get_weather", r#"{"type":"object","properties":{"city":{"type":"string"}}}"#), tool("x", "{}")];
        let c = call_constraint(&tools, &ToolChoice::Function("get_weather".into()), ToolSyntax::Hermes).unwrap();
        assert_eq!((c.prefix, c.suffix), ("<tool_call>\n", "\n</tool_call>"));
        let schema: Value = serde_json::from_str(&c.schema).unwrap();
        assert_eq!(schema["properties"]["name"]["const"], "get_weather");
        assert_eq!(schema["properties"]["arguments"]["properties"]["city"]["type"], "string");
        assert_eq!(schema["required"], json!(["name", "arguments"]));
    }

    #[test]
    fn required_with_several_tools_is_a_union_and_mistral_wraps_it_in_a_list() {
        let tools = [tool("a", "{}"), tool("b", "not json")];
        let c = call_constraint(&tools, &ToolChoice::Required, ToolSyntax::Mistral).unwrap();
        let schema: Value = serde_json::from_str(&c.schema).unwrap();
        assert_eq!(schema["type"], "array");
        assert_eq!(schema["items"]["anyOf"].as_array().unwrap().len(), 2);
        assert_eq!(c.prefix, "[TOOL_CALLS]");
        let llama = call_constraint(&tools, &ToolChoice::Required, ToolSyntax::LlamaJson).unwrap();
        assert!(llama.schema.contains("\"parameters\""), "{}", llama.schema);
    }

    #[test]
    fn auto_and_none_force_nothing() {
        let tools = [tool("a", "{}")];
        assert_eq!(call_constraint(&tools, &ToolChoice::Auto, ToolSyntax::Hermes), None);
        assert_eq!(call_constraint(&tools, &ToolChoice::None, ToolSyntax::Hermes), None);
    }
}
