//! A JSON schema compiled into a table of nodes the recognizer walks:
//! the supported subset (type, properties, required, additionalProperties,
//! enum, const, items, minItems, maxItems, anyOf/oneOf whose branches start
//! differently, minLength, maxLength, local `$ref`), annotations ignored,
//! anything else refused naming the keyword and where it is.

use serde_json::{Map, Value};

pub type NodeId = u16;

/// Deepest nesting of objects and arrays a schema may declare.
pub const MAX_DEPTH: usize = 12;
/// Most properties of one object (candidate keys are a bitmask).
pub const MAX_PROPERTIES: usize = 64;
/// Most alternatives of one `enum`.
pub const MAX_ALTERNATIVES: usize = 64;

#[derive(Debug, Clone)]
pub struct Prop {
    /// The key as it appears between the quotes (JSON-escaped).
    pub key: Vec<u8>,
    pub node: NodeId,
    pub required: bool,
}

#[derive(Debug, Clone)]
pub enum Node {
    /// Properties; the output gives each at most once, every required one,
    /// and no others.
    Object(Vec<Prop>),
    Array {
        items: NodeId,
        min: u32,
        max: u32,
    },
    String {
        min: u32,
        max: u32,
    },
    Number {
        integer: bool,
    },
    /// Exact JSON texts, one of which the value must be (enum, const,
    /// booleans, null).
    Literals(Vec<Vec<u8>>),
    AnyOf(Vec<NodeId>),
}

#[derive(Debug, Clone)]
pub struct Schema {
    pub nodes: Vec<Node>,
    pub root: NodeId,
    /// The shortest valid text of each node.
    pub min_text: Vec<Vec<u8>>,
    /// The bytes each node's values may start with, as a 256-bit set.
    first: Vec<[u64; 4]>,
}

const ANNOTATIONS: &[&str] =
    &["title", "description", "$schema", "$id", "$comment", "default", "examples", "$defs", "definitions"];

struct Compiler<'a> {
    root: &'a Value,
    nodes: Vec<Node>,
    resolving: Vec<String>,
}

fn literal(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

impl Schema {
    /// Compiles `text`, a JSON schema whose root is an object or array.
    pub fn compile(text: &str) -> Result<Schema, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("the schema is not JSON: {e}"))?;
        let mut c = Compiler { root: &value, nodes: Vec::new(), resolving: Vec::new() };
        let root = c.node(&value, "#", 0)?;
        if !matches!(c.nodes[root as usize], Node::Object(_) | Node::Array { .. }) {
            return Err("`type` at #: the answer must be an object or an array".into());
        }
        let mut schema = Schema { nodes: c.nodes, root, min_text: Vec::new(), first: Vec::new() };
        schema.min_text = (0..schema.nodes.len()).map(|_| Vec::new()).collect();
        // Children come before parents in the table: one pass fills it.
        for id in 0..schema.nodes.len() {
            schema.min_text[id] = schema.shortest(id as NodeId);
        }
        schema.first = (0..schema.nodes.len())
            .map(|id| {
                let mut set = [0u64; 4];
                for b in schema.first_bytes(id as NodeId) {
                    set[b as usize / 64] |= 1 << (b % 64);
                }
                set
            })
            .collect();
        Ok(schema)
    }

    fn shortest(&self, id: NodeId) -> Vec<u8> {
        let min = |n: NodeId| self.min_text[n as usize].clone();
        match &self.nodes[id as usize] {
            Node::Object(props) => {
                let mut t = b"{".to_vec();
                for p in props.iter().filter(|p| p.required) {
                    if t.len() > 1 {
                        t.push(b',');
                    }
                    t.extend([&b"\""[..], &p.key, b"\":"].concat());
                    t.extend(min(p.node));
                }
                t.push(b'}');
                t
            }
            Node::Array { items, min: n, .. } => {
                let item = min(*items);
                let parts: Vec<Vec<u8>> = (0..*n).map(|_| item.clone()).collect();
                [&b"["[..], &parts.join(&b","[..]), b"]"].concat()
            }
            Node::String { min: n, .. } => [&b"\""[..], &vec![b'a'; *n as usize], b"\""].concat(),
            Node::Number { .. } => b"0".to_vec(),
            Node::Literals(alts) => alts.iter().min_by_key(|a| a.len()).cloned().unwrap_or_default(),
            Node::AnyOf(branches) => branches.iter().map(|b| min(*b)).min_by_key(Vec::len).unwrap_or_default(),
        }
    }

    /// Whether a value of `id` may start with `b`.
    pub fn starts_with(&self, id: NodeId, b: u8) -> bool {
        self.first[id as usize][b as usize / 64] & (1 << (b % 64)) != 0
    }

    /// Bytes a value of `id` may start with.
    pub fn first_bytes(&self, id: NodeId) -> Vec<u8> {
        match &self.nodes[id as usize] {
            Node::Object(_) => vec![b'{'],
            Node::Array { .. } => vec![b'['],
            Node::String { .. } => vec![b'"'],
            Node::Number { .. } => b"-0123456789".to_vec(),
            Node::Literals(alts) => alts.iter().filter_map(|a| a.first().copied()).collect(),
            Node::AnyOf(branches) => branches.iter().flat_map(|b| self.first_bytes(*b)).collect(),
        }
    }
}

impl Compiler<'_> {
    fn push(&mut self, node: Node) -> Result<NodeId, String> {
        if self.nodes.len() >= NodeId::MAX as usize {
            return Err("the schema is too large".into());
        }
        self.nodes.push(node);
        Ok((self.nodes.len() - 1) as NodeId)
    }

    fn node(&mut self, schema: &Value, path: &str, depth: usize) -> Result<NodeId, String> {
        // (`true` would allow any value, which the grammar cannot bound.)
        let Some(obj) = schema.as_object() else {
            return Err(format!("schema at {path}: expected an object"));
        };
        if depth > MAX_DEPTH {
            return Err(format!("schema at {path}: nested deeper than {MAX_DEPTH}"));
        }
        if let Some(reference) = obj.get("$ref") {
            return self.reference(reference, path, depth);
        }
        for key in obj.keys() {
            let known = ANNOTATIONS.contains(&key.as_str())
                || [
                    "type",
                    "properties",
                    "required",
                    "additionalProperties",
                    "enum",
                    "const",
                    "items",
                    "minItems",
                    "maxItems",
                    "anyOf",
                    "oneOf",
                    "minLength",
                    "maxLength",
                ]
                .contains(&key.as_str());
            if !known {
                return Err(format!("unsupported keyword `{key}` at {path}"));
            }
        }
        if let Some(value) = obj.get("const") {
            return self.push(Node::Literals(vec![literal(value)]));
        }
        if let Some(values) = obj.get("enum") {
            let values = values.as_array().ok_or(format!("`enum` at {path}: expected an array"))?;
            if values.is_empty() || values.len() > MAX_ALTERNATIVES {
                return Err(format!("`enum` at {path}: 1 to {MAX_ALTERNATIVES} values"));
            }
            return self.push(Node::Literals(values.iter().map(literal).collect()));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(branches) = obj.get(key) {
                let branches = branches
                    .as_array()
                    .filter(|b| !b.is_empty())
                    .ok_or(format!("`{key}` at {path}: expected a list"))?;
                let ids = (branches.iter().enumerate())
                    .map(|(i, b)| self.node(b, &format!("{path}/{key}/{i}"), depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                return self.any_of(ids, &format!("`{key}` at {path}"));
            }
        }
        match obj.get("type") {
            Some(Value::String(t)) => self.typed(t, obj, path, depth),
            Some(Value::Array(types)) => {
                let ids = (types.iter())
                    .map(|t| match t.as_str() {
                        Some(t) => self.typed(t, obj, path, depth),
                        None => Err(format!("`type` at {path}: expected type names")),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                self.any_of(ids, &format!("`type` at {path}"))
            }
            Some(_) => Err(format!("`type` at {path}: expected a type name")),
            None if obj.contains_key("properties") => self.typed("object", obj, path, depth),
            None => Err(format!("schema at {path}: no `type` (a value of any type cannot be bounded)")),
        }
    }

    fn reference(&mut self, reference: &Value, path: &str, depth: usize) -> Result<NodeId, String> {
        let target = reference.as_str().ok_or(format!("`$ref` at {path}: expected a string"))?;
        let Some(pointer) = target.strip_prefix('#') else {
            return Err(format!("`$ref` at {path}: only local references (#/$defs/...) are supported"));
        };
        if self.resolving.iter().any(|r| r == target) {
            return Err(format!("`$ref` at {path}: recursive schemas are not supported"));
        }
        let found = self.root.pointer(pointer).ok_or(format!("`$ref` at {path}: {target} not found"))?;
        self.resolving.push(target.to_string());
        let id = self.node(found, target, depth);
        self.resolving.pop();
        id
    }

    fn any_of(&mut self, ids: Vec<NodeId>, what: &str) -> Result<NodeId, String> {
        if ids.len() == 1 {
            return Ok(ids[0]);
        }
        let nodes = Schema { nodes: self.nodes.clone(), root: 0, min_text: Vec::new(), first: Vec::new() };
        let mut seen = Vec::new();
        for id in &ids {
            for b in nodes.first_bytes(*id) {
                if seen.contains(&b) {
                    return Err(format!(
                        "{what}: branches must start differently (two may start with `{}`)",
                        b as char
                    ));
                }
                seen.push(b);
            }
        }
        self.push(Node::AnyOf(ids))
    }

    fn typed(&mut self, t: &str, obj: &Map<String, Value>, path: &str, depth: usize) -> Result<NodeId, String> {
        let count = |key: &str, default: u32| -> Result<u32, String> {
            match obj.get(key) {
                None => Ok(default),
                Some(v) => v
                    .as_u64()
                    .map(|n| n.min(u32::MAX as u64) as u32)
                    .ok_or(format!("`{key}` at {path}: expected a count")),
            }
        };
        match t {
            "object" => {
                let props = obj.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
                if props.len() > MAX_PROPERTIES {
                    return Err(format!("`properties` at {path}: at most {MAX_PROPERTIES}"));
                }
                let required: Vec<&str> = match obj.get("required") {
                    None => Vec::new(),
                    Some(r) => (r.as_array().ok_or(format!("`required` at {path}: expected a list"))?.iter())
                        .map(|v| v.as_str().ok_or(format!("`required` at {path}: expected names")))
                        .collect::<Result<_, _>>()?,
                };
                if let Some(missing) = required.iter().find(|r| !props.contains_key(**r)) {
                    return Err(format!("`required` at {path}: `{missing}` is not among the properties"));
                }
                match obj.get("additionalProperties") {
                    None | Some(Value::Bool(_)) => {}
                    Some(_) => return Err(format!("`additionalProperties` at {path}: only true or false")),
                }
                let mut out = Vec::with_capacity(props.len());
                for (name, sub) in &props {
                    let node = self.node(sub, &format!("{path}/properties/{name}"), depth + 1)?;
                    let key = serde_json::to_vec(&Value::String(name.clone())).unwrap_or_default();
                    out.push(Prop {
                        key: key[1..key.len() - 1].to_vec(),
                        node,
                        required: required.contains(&name.as_str()),
                    });
                }
                self.push(Node::Object(out))
            }
            "array" => {
                let items = match obj.get("items") {
                    Some(items) => self.node(items, &format!("{path}/items"), depth + 1)?,
                    None => return Err(format!("`items` at {path}: an array needs its items' schema")),
                };
                let (min, max) = (count("minItems", 0)?, count("maxItems", u32::MAX)?);
                if min > max {
                    return Err(format!("`minItems` at {path}: more than `maxItems`"));
                }
                self.push(Node::Array { items, min, max })
            }
            "string" => {
                let (min, max) = (count("minLength", 0)?, count("maxLength", u32::MAX)?);
                if min > max {
                    return Err(format!("`minLength` at {path}: more than `maxLength`"));
                }
                self.push(Node::String { min, max })
            }
            "integer" => self.push(Node::Number { integer: true }),
            "number" => self.push(Node::Number { integer: false }),
            "boolean" => self.push(Node::Literals(vec![b"true".to_vec(), b"false".to_vec()])),
            "null" => self.push(Node::Literals(vec![b"null".to_vec()])),
            other => Err(format!("`type` at {path}: unknown type `{other}`")),
        }
    }
}
