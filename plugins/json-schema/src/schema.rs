//! A JSON schema compiled into a table of nodes the recognizer walks:
//! the supported subset (type, properties, required, additionalProperties,
//! enum, const, items, minItems, maxItems, minLength, maxLength, local
//! `$ref`, anyOf/oneOf), annotations ignored, anything else refused naming
//! the keyword and where it is.
//!
//! The branches of an anyOf/oneOf must start differently (a string, a
//! number, null...), except objects: several object branches form a tagged
//! union when one property has a `const` (or one-value `enum`) in every
//! branch, a different value in each (`"name": {"const": "get_weather"}`).
//! The output then gives that property first, and its value picks the
//! branch the rest of the object follows (see [`Branch`]), so the value
//! validates against exactly one branch.
//!
//! The schema also carries the literal text around the value (`prefix`,
//! `suffix`: a tool call's markers), which the recognizer matches byte by
//! byte like the JSON.

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
    /// Branches that start with different bytes.
    AnyOf(Vec<NodeId>),
    /// Objects told apart by their first property (a tagged union).
    Tagged(Vec<Branch>),
}

/// One object of a tagged union.
#[derive(Debug, Clone)]
pub struct Branch {
    /// The object (a [`Node::Object`]).
    pub node: NodeId,
    /// Its discriminating property (an index into its properties).
    pub tag: u16,
    /// `"key":value`, the discriminating property as the output gives it,
    /// first after `{`; each branch's differs.
    pub head: Vec<u8>,
    /// The shortest text after the head: the other required properties and `}`.
    pub tail: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Schema {
    pub nodes: Vec<Node>,
    pub root: NodeId,
    /// The shortest valid text of each node.
    pub min_text: Vec<Vec<u8>>,
    /// The bytes each node's values may start with, as a 256-bit set.
    first: Vec<[u64; 4]>,
    /// Literal text before the value (may be empty).
    pub prefix: Vec<u8>,
    /// Literal text after the value (may be empty).
    pub suffix: Vec<u8>,
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
        // (A value that ends only where something else starts, a number,
        // could not be told complete.)
        if !first_bytes(&c.nodes, root).iter().all(|b| b"{[".contains(b)) {
            return Err("`type` at #: the answer must be an object or an array".into());
        }
        let mut schema = Schema {
            nodes: c.nodes,
            root,
            min_text: Vec::new(),
            first: Vec::new(),
            prefix: Vec::new(),
            suffix: Vec::new(),
        };
        schema.min_text = (0..schema.nodes.len()).map(|_| Vec::new()).collect();
        // Children come before parents in the table: one pass fills it.
        for id in 0..schema.nodes.len() {
            if let Node::Tagged(branches) = &schema.nodes[id] {
                let tails: Vec<Vec<u8>> = (branches.iter())
                    .map(|b| {
                        let mut tail = Vec::new();
                        schema.rest_of_object(b.node, 1 << b.tag, &mut tail);
                        tail
                    })
                    .collect();
                if let Node::Tagged(branches) = &mut schema.nodes[id] {
                    branches.iter_mut().zip(tails).for_each(|(b, tail)| b.tail = tail);
                }
            }
            schema.min_text[id] = schema.shortest(id as NodeId);
        }
        schema.first = (0..schema.nodes.len())
            .map(|id| {
                let mut set = [0u64; 4];
                for b in first_bytes(&schema.nodes, id as NodeId) {
                    set[b as usize / 64] |= 1 << (b % 64);
                }
                set
            })
            .collect();
        Ok(schema)
    }

    /// The schema with literal text before and after the value.
    pub fn wrapped(self, prefix: &str, suffix: &str) -> Schema {
        Schema { prefix: prefix.as_bytes().to_vec(), suffix: suffix.as_bytes().to_vec(), ..self }
    }

    /// The prefix (`false`) or the suffix (`true`).
    pub fn literal(&self, suffix: bool) -> &[u8] {
        if suffix { &self.suffix } else { &self.prefix }
    }

    /// Completes object `node` with properties `seen` given and a value
    /// just ended: every required property not given, each after a comma,
    /// then `}`.
    pub fn rest_of_object(&self, node: NodeId, seen: u64, out: &mut Vec<u8>) {
        if let Node::Object(props) = &self.nodes[node as usize] {
            for (_, p) in props.iter().enumerate().filter(|(i, p)| p.required && seen & (1 << i) == 0) {
                out.extend([&b",\""[..], &p.key, b"\":"].concat());
                out.extend(&self.min_text[p.node as usize]);
            }
        }
        out.push(b'}');
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
            Node::Tagged(branches) => (branches.iter())
                .map(|b| [&b"{"[..], &b.head, &b.tail].concat())
                .min_by_key(Vec::len)
                .unwrap_or_default(),
        }
    }

    /// Whether a value of `id` may start with `b`.
    pub fn starts_with(&self, id: NodeId, b: u8) -> bool {
        self.first[id as usize][b as usize / 64] & (1 << (b % 64)) != 0
    }
}

/// Bytes a value of `id` may start with.
fn first_bytes(nodes: &[Node], id: NodeId) -> Vec<u8> {
    match &nodes[id as usize] {
        Node::Object(_) | Node::Tagged(_) => vec![b'{'],
        Node::Array { .. } => vec![b'['],
        Node::String { .. } => vec![b'"'],
        Node::Number { .. } => b"-0123456789".to_vec(),
        Node::Literals(alts) => alts.iter().filter_map(|a| a.first().copied()).collect(),
        Node::AnyOf(branches) => branches.iter().flat_map(|b| first_bytes(nodes, *b)).collect(),
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
        // Unions of unions are one union; objects are told apart by a tag.
        let mut flat = Vec::new();
        for id in ids {
            match &self.nodes[id as usize] {
                Node::AnyOf(branches) => flat.extend(branches),
                Node::Tagged(branches) => flat.extend(branches.iter().map(|b| b.node)),
                _ => flat.push(id),
            }
        }
        let objects: Vec<NodeId> =
            flat.iter().copied().filter(|&id| matches!(self.nodes[id as usize], Node::Object(_))).collect();
        let ids = if objects.len() > 1 {
            let tagged = self.tagged(&objects, what)?;
            let mut ids: Vec<NodeId> = flat.into_iter().filter(|id| !objects.contains(id)).collect();
            ids.push(tagged);
            ids
        } else {
            flat
        };
        if ids.len() == 1 {
            return Ok(ids[0]);
        }
        let mut seen = Vec::new();
        for id in &ids {
            for b in first_bytes(&self.nodes, *id) {
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

    /// A tagged union of `objects`: the first property (in the first
    /// object's order) that each has with one literal value, a different
    /// one in each.
    fn tagged(&mut self, objects: &[NodeId], what: &str) -> Result<NodeId, String> {
        if objects.len() > MAX_ALTERNATIVES {
            return Err(format!("{what}: at most {MAX_ALTERNATIVES} object branches"));
        }
        let props = |id: NodeId| match &self.nodes[id as usize] {
            Node::Object(props) => &props[..],
            _ => &[],
        };
        // The property's index and head in each object, if it can tell them apart.
        let tag = |key: &[u8]| -> Option<Vec<(u16, Vec<u8>)>> {
            let heads = (objects.iter())
                .map(|&id| {
                    let (i, p) = props(id).iter().enumerate().find(|(_, p)| p.key == key)?;
                    match &self.nodes[p.node as usize] {
                        Node::Literals(alts) if alts.len() == 1 => {
                            Some((i as u16, [&b"\""[..], key, b"\":", &alts[0]].concat()))
                        }
                        _ => None,
                    }
                })
                .collect::<Option<Vec<_>>>()?;
            let apart = heads.iter().enumerate().all(|(i, (_, a))| heads[..i].iter().all(|(_, b)| a != b));
            apart.then_some(heads)
        };
        let Some(heads) = props(objects[0]).iter().find_map(|p| tag(&p.key)) else {
            return Err(format!(
                "{what}: object branches must be told apart by a property with a different `const` in each"
            ));
        };
        let branches = (objects.iter().zip(heads))
            .map(|(&node, (tag, head))| Branch { node, tag, head, tail: Vec::new() })
            .collect();
        self.push(Node::Tagged(branches))
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
