//! A byte-level recognizer of the answer (the schema's prefix, a JSON value
//! that validates against the compiled [`Schema`], the suffix), with a
//! `Copy` state (a fixed stack of frames), so checking whether a token may
//! come next is a few byte steps on a copy. The prefix and suffix are frames
//! like the value's parts; a tagged union's object is a `Union` frame while
//! its tag is under way, then the picked branch's object.

mod closing;

use crate::schema::{MAX_DEPTH, Node, NodeId, Schema};

const STACK: usize = 2 * MAX_DEPTH + 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ObjPhase {
    /// After `{`: a key or `}`.
    Open,
    /// After `,`: a key.
    Key,
    /// After key `k`: `:`.
    Colon(u16),
    /// After a value: `,` or `}`.
    AfterValue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ArrPhase {
    Open,
    Comma,
    AfterValue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Esc {
    None,
    Backslash,
    Hex(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NumPhase {
    Minus,
    Zero,
    /// Integer digits so far (at most 15: an integer stays one for parsers
    /// that read numbers as f64).
    Int(u8),
    Dot,
    Frac,
    E,
    ESign,
    /// Exponent digits so far (at most two: `1e999` is out of range for most parsers).
    Exp(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Frame {
    /// A value of this node is due.
    Value(NodeId),
    /// Inside the prefix (`suffix` false) or the suffix, `off` bytes in
    /// (never at its end: the frame goes with the last byte).
    Text {
        suffix: bool,
        off: u32,
    },
    /// `seen`: the properties already given (bit `i`: property `i`).
    Obj {
        node: NodeId,
        seen: u64,
        phase: ObjPhase,
    },
    /// Inside a key: the properties (bits) it may still be, `off` bytes in.
    Key {
        node: NodeId,
        mask: u64,
        off: u16,
    },
    Arr {
        node: NodeId,
        count: u32,
        phase: ArrPhase,
    },
    /// `need`: UTF-8 continuation bytes still due, the next in `lo..=hi`
    /// (strict UTF-8: no overlong forms, surrogates or code points past
    /// U+10FFFF, which a decoder would turn into U+FFFD).
    Str {
        node: NodeId,
        len: u32,
        esc: Esc,
        need: u8,
        lo: u8,
        hi: u8,
    },
    /// Inside one of a node's literals: alternatives `i` of `mask`, `off` bytes in.
    Lit {
        node: NodeId,
        mask: u64,
        off: u16,
    },
    /// In a tagged union's object before its branch is known: the branches
    /// `i` of `mask` still possible, `off` bytes into their heads (after `{`).
    Union {
        node: NodeId,
        mask: u64,
        off: u16,
    },
    Num {
        integer: bool,
        phase: NumPhase,
    },
}

/// Where the output stands.
#[derive(Clone, Copy, Debug)]
pub struct State {
    frames: [Frame; STACK],
    len: u8,
}

impl State {
    pub fn new(schema: &Schema) -> State {
        let mut state = State { frames: [Frame::Value(0); STACK], len: 0 };
        if !schema.suffix.is_empty() {
            state.push(Frame::Text { suffix: true, off: 0 });
        }
        state.push(Frame::Value(schema.root));
        if !schema.prefix.is_empty() {
            state.push(Frame::Text { suffix: false, off: 0 });
        }
        state
    }

    /// The whole answer is there.
    pub fn is_done(&self) -> bool {
        self.len == 0
    }

    /// The most more characters the open string takes.
    pub fn string_room(&self, schema: &Schema) -> Option<u32> {
        match self.top() {
            Some(Frame::Str { node, len, esc: Esc::None, need: 0, .. }) => match schema.nodes[node as usize] {
                Node::String { max, .. } => Some(max.saturating_sub(len)),
                _ => None,
            },
            _ => None,
        }
    }

    /// Inside the prefix or the suffix.
    pub fn in_literal(&self) -> bool {
        matches!(self.top(), Some(Frame::Text { .. }))
    }

    fn top(&self) -> Option<Frame> {
        (self.len > 0).then(|| self.frames[self.len as usize - 1])
    }

    fn set_top(&mut self, f: Frame) {
        self.frames[self.len as usize - 1] = f;
    }

    fn push(&mut self, f: Frame) -> bool {
        if self.len as usize >= STACK {
            return false;
        }
        self.frames[self.len as usize] = f;
        self.len += 1;
        true
    }

    fn pop(&mut self) {
        self.len -= 1;
    }

    /// Feeds every byte; `None` when the text leaves the schema.
    pub fn feed_all(mut self, schema: &Schema, bytes: &[u8]) -> Option<State> {
        for &b in bytes {
            if !self.feed(schema, b) {
                return None;
            }
        }
        Some(self)
    }

    /// Feeds one byte; false (the state then unusable) when it leaves the schema.
    pub fn feed(&mut self, schema: &Schema, b: u8) -> bool {
        let Some(frame) = self.top() else { return false };
        match frame {
            Frame::Value(node) => {
                self.pop();
                self.start(schema, node, b)
            }
            Frame::Text { suffix, off } => {
                let text = schema.literal(suffix);
                if text.get(off as usize) != Some(&b) {
                    return false;
                }
                if off as usize + 1 == text.len() {
                    self.pop();
                } else {
                    self.set_top(Frame::Text { suffix, off: off + 1 });
                }
                true
            }
            Frame::Obj { node, seen, phase } => {
                let Node::Object(props) = &schema.nodes[node as usize] else { return false };
                let all = if props.len() == 64 { u64::MAX } else { (1u64 << props.len()) - 1 };
                let required_left = props.iter().enumerate().any(|(i, p)| p.required && seen & (1 << i) == 0);
                match (phase, b) {
                    (ObjPhase::Open | ObjPhase::Key, b'"') => {
                        let mask = all & !seen;
                        mask != 0 && self.push(Frame::Key { node, mask, off: 0 })
                    }
                    (ObjPhase::Open | ObjPhase::AfterValue, b'}') if !required_left => {
                        self.pop();
                        true
                    }
                    (ObjPhase::AfterValue, b',') if seen != all => {
                        self.set_top(Frame::Obj { node, seen, phase: ObjPhase::Key });
                        true
                    }
                    (ObjPhase::Colon(k), b':') => {
                        self.set_top(Frame::Obj { node, seen, phase: ObjPhase::AfterValue });
                        self.push(Frame::Value(props[k as usize].node))
                    }
                    _ => false,
                }
            }
            Frame::Key { node, mask, off } => {
                let Node::Object(props) = &schema.nodes[node as usize] else { return false };
                let candidates = (0..props.len()).filter(|i| mask & (1 << i) != 0);
                if b == b'"' {
                    // The key ends: one candidate must be exactly this long.
                    let Some(k) = candidates.clone().find(|&i| props[i].key.len() == off as usize) else {
                        return false;
                    };
                    self.pop();
                    let Some(Frame::Obj { seen, .. }) = self.top() else { return false };
                    self.set_top(Frame::Obj { node, seen: seen | 1 << k, phase: ObjPhase::Colon(k as u16) });
                    return true;
                }
                let mut left = 0u64;
                for i in candidates {
                    if props[i].key.get(off as usize) == Some(&b) {
                        left |= 1 << i;
                    }
                }
                self.set_top(Frame::Key { node, mask: left, off: off + 1 });
                left != 0
            }
            Frame::Arr { node, count, phase } => {
                let Node::Array { items, min, max } = schema.nodes[node as usize] else { return false };
                match (phase, b) {
                    (ArrPhase::Open | ArrPhase::AfterValue, b']') if count >= min => {
                        self.pop();
                        true
                    }
                    (ArrPhase::AfterValue, b',') if count < max => {
                        self.set_top(Frame::Arr { node, count, phase: ArrPhase::Comma });
                        true
                    }
                    (ArrPhase::Open | ArrPhase::Comma, _) if count < max => {
                        self.set_top(Frame::Arr { node, count: count + 1, phase: ArrPhase::AfterValue });
                        self.start(schema, items, b)
                    }
                    _ => false,
                }
            }
            Frame::Str { node, len, esc, need, lo, hi } => {
                let Node::String { min, max } = schema.nodes[node as usize] else { return false };
                let str = |len, esc| Frame::Str { node, len, esc, need: 0, lo: 0x80, hi: 0xBF };
                let next = match (esc, b) {
                    (_, _) if need > 0 => {
                        if !(lo..=hi).contains(&b) {
                            return false;
                        }
                        Frame::Str { node, len, esc, need: need - 1, lo: 0x80, hi: 0xBF }
                    }
                    (Esc::None, b'"') if len >= min => {
                        self.pop();
                        return true;
                    }
                    (Esc::None, _) if len >= max => return false,
                    (Esc::None, b'\\') => str(len + 1, Esc::Backslash),
                    (Esc::None, 0x20..=0x7F) if b != b'"' => str(len + 1, Esc::None),
                    // A lead byte: its continuation bytes are due, the first
                    // one's range set by the lead (RFC 3629).
                    (Esc::None, 0xC2..=0xDF) => Frame::Str { node, len: len + 1, esc, need: 1, lo: 0x80, hi: 0xBF },
                    (Esc::None, 0xE0..=0xEF) => {
                        let (lo, hi) = match b {
                            0xE0 => (0xA0, 0xBF),
                            0xED => (0x80, 0x9F),
                            _ => (0x80, 0xBF),
                        };
                        Frame::Str { node, len: len + 1, esc, need: 2, lo, hi }
                    }
                    (Esc::None, 0xF0..=0xF4) => {
                        let (lo, hi) = match b {
                            0xF0 => (0x90, 0xBF),
                            0xF4 => (0x80, 0x8F),
                            _ => (0x80, 0xBF),
                        };
                        Frame::Str { node, len: len + 1, esc, need: 3, lo, hi }
                    }
                    (Esc::Backslash, b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => str(len, Esc::None),
                    (Esc::Backslash, b'u') => str(len, Esc::Hex(0)),
                    (Esc::Hex(n), b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                        str(len, if n == 3 { Esc::None } else { Esc::Hex(n + 1) })
                    }
                    _ => return false,
                };
                self.set_top(next);
                true
            }
            Frame::Lit { node, mask, off } => {
                let Node::Literals(alts) = &schema.nodes[node as usize] else { return false };
                let mut left = 0u64;
                let mut complete = false;
                for (i, alt) in alts.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0) {
                    if alt.get(off as usize) == Some(&b) {
                        left |= 1 << i;
                    }
                    complete |= alt.len() == off as usize;
                }
                if left != 0 {
                    self.set_top(Frame::Lit { node, mask: left, off: off + 1 });
                    self.lit_done(schema);
                    return true;
                }
                // A literal that is complete (a number enum value) ends at the next byte.
                complete && {
                    self.pop();
                    self.feed(schema, b)
                }
            }
            Frame::Union { node, mask, off } => {
                let Node::Tagged(branches) = &schema.nodes[node as usize] else { return false };
                let mut left = 0u64;
                let mut complete = None;
                for (i, branch) in branches.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0) {
                    if branch.head.get(off as usize) == Some(&b) {
                        left |= 1 << i;
                    }
                    if branch.head.len() == off as usize {
                        complete = Some(i);
                    }
                }
                if left != 0 {
                    self.set_top(Frame::Union { node, mask: left, off: off + 1 });
                    self.union_done(schema);
                    return true;
                }
                // A head that is complete (a number tag) ends at the next byte.
                match complete {
                    Some(i) => {
                        self.enter_branch(schema, node, i);
                        self.feed(schema, b)
                    }
                    None => false,
                }
            }
            Frame::Num { integer, phase } => {
                use NumPhase::*;
                let next = match (phase, b) {
                    // `-0` is a float to some parsers: an integer's minus takes 1-9.
                    (Minus, b'0') if !integer => Zero,
                    (Minus, b'1'..=b'9') => Int(1),
                    (Int(n), b'0'..=b'9') if n < 15 => Int(n + 1),
                    (Zero | Int(_), b'.') if !integer => Dot,
                    (Dot | Frac, b'0'..=b'9') => Frac,
                    (Zero | Int(_) | Frac, b'e' | b'E') if !integer => E,
                    (E, b'+' | b'-') => ESign,
                    (E | ESign, b'0'..=b'9') => Exp(1),
                    (Exp(1), b'0'..=b'9') => Exp(2),
                    (Zero | Int(_) | Frac | Exp(_), _) => {
                        // The number ended: the byte belongs to what holds it.
                        self.pop();
                        return self.len > 0 && self.feed(schema, b);
                    }
                    _ => return false,
                };
                self.set_top(Frame::Num { integer, phase: next });
                true
            }
        }
    }

    /// Pops a literal that nothing can continue (every alternative matched in full).
    fn lit_done(&mut self, schema: &Schema) {
        if let Some(Frame::Lit { node, mask, off }) = self.top()
            && let Node::Literals(alts) = &schema.nodes[node as usize]
            && (alts.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0)).all(|(_, a)| a.len() == off as usize)
        {
            self.pop();
        }
    }

    /// Goes on in the branch a tagged union's head picked, when every branch
    /// still possible has its head complete (then just one: heads differ).
    fn union_done(&mut self, schema: &Schema) {
        if let Some(Frame::Union { node, mask, off }) = self.top()
            && let Node::Tagged(branches) = &schema.nodes[node as usize]
            && let Some(i) = (0..branches.len()).find(|i| mask & (1 << i) != 0)
            && (branches.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0))
                .all(|(_, b)| b.head.len() == off as usize)
        {
            self.enter_branch(schema, node, i);
        }
    }

    /// The union's object goes on as branch `i`'s, its tag given.
    fn enter_branch(&mut self, schema: &Schema, node: NodeId, i: usize) {
        if let Node::Tagged(branches) = &schema.nodes[node as usize] {
            let branch = &branches[i];
            self.set_top(Frame::Obj { node: branch.node, seen: 1 << branch.tag, phase: ObjPhase::AfterValue });
        }
    }

    /// Begins a value of `node` with byte `b`.
    fn start(&mut self, schema: &Schema, node: NodeId, b: u8) -> bool {
        match &schema.nodes[node as usize] {
            Node::Object(_) => b == b'{' && self.push(Frame::Obj { node, seen: 0, phase: ObjPhase::Open }),
            Node::Array { .. } => b == b'[' && self.push(Frame::Arr { node, count: 0, phase: ArrPhase::Open }),
            Node::String { .. } => {
                b == b'"' && self.push(Frame::Str { node, len: 0, esc: Esc::None, need: 0, lo: 0x80, hi: 0xBF })
            }
            Node::Number { integer } => {
                let phase = match b {
                    b'-' => NumPhase::Minus,
                    b'0' => NumPhase::Zero,
                    b'1'..=b'9' => NumPhase::Int(1),
                    _ => return false,
                };
                self.push(Frame::Num { integer: *integer, phase })
            }
            Node::Literals(alts) => {
                let mut mask = 0u64;
                for (i, a) in alts.iter().enumerate() {
                    if a.first() == Some(&b) {
                        mask |= 1 << i;
                    }
                }
                if mask == 0 || !self.push(Frame::Lit { node, mask, off: 1 }) {
                    return false;
                }
                self.lit_done(schema);
                true
            }
            Node::Tagged(branches) => {
                let all = if branches.len() == 64 { u64::MAX } else { (1u64 << branches.len()) - 1 };
                b == b'{' && self.push(Frame::Union { node, mask: all, off: 0 })
            }
            Node::AnyOf(branches) => {
                // Branches start differently (checked at compile time).
                match branches.iter().find(|br| schema.starts_with(**br, b)) {
                    Some(&br) => self.start(schema, br, b),
                    None => false,
                }
            }
        }
    }
}
