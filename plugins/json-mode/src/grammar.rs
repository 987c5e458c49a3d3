//! A byte-level JSON recognizer (RFC 8259) whose state is `Copy`: checking
//! whether a token may come next is a few byte steps on a copy, no
//! allocation, so a whole vocabulary can be checked every step.

/// Deepest nesting of objects and arrays accepted.
pub const MAX_DEPTH: u8 = 63;
/// Longest run of whitespace between tokens (enough for pretty-printing).
const MAX_WHITESPACE: u8 = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Before the top-level object: only `{` (or whitespace).
    Start,
    /// A value is due (after `:`, or `,` in an array).
    Value,
    /// After `[`: a value or `]`.
    ValueOrClose,
    /// After `{`: a key or `}`.
    KeyOrClose,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After a value in a container: `,` or the closing bracket.
    CommaOrClose,
    Str {
        key: bool,
        escape: Escape,
    },
    Num(Num),
    /// `true`, `false` or `null`, `at` bytes in.
    Literal {
        word: u8,
        at: u8,
    },
    /// The top-level object is complete.
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Escape {
    None,
    Backslash,
    /// `\u` and this many hex digits.
    Hex(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    /// Exponent digits so far (at most two: `1e999` is valid JSON that common
    /// parsers refuse as out of range).
    Exp(u8),
}

const LITERALS: [&[u8]; 3] = [b"true", b"false", b"null"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub mode: Mode,
    /// Bit `i` set: level `i` is an object (else an array).
    stack: u64,
    depth: u8,
    whitespace: u8,
}

impl Default for State {
    fn default() -> Self {
        State { mode: Mode::Start, stack: 0, depth: 0, whitespace: 0 }
    }
}

impl State {
    fn in_object(&self) -> bool {
        self.depth > 0 && self.stack & (1 << (self.depth - 1)) != 0
    }

    /// The state after `bytes`, or `None` if they break the grammar.
    pub fn feed_all(mut self, bytes: &[u8]) -> Option<State> {
        for &b in bytes {
            self = self.feed(b)?;
        }
        Some(self)
    }

    /// The state after one byte, or `None` if it breaks the grammar.
    pub fn feed(mut self, b: u8) -> Option<State> {
        let is_space = matches!(b, b' ' | b'\n' | b'\t' | b'\r');
        match self.mode {
            Mode::Str { key, escape } => return self.string(key, escape, b),
            Mode::Num(n) => match number(n, b) {
                Some(n) => {
                    self.mode = Mode::Num(n);
                    return Some(self);
                }
                // A complete number ends at the first byte that cannot extend it.
                None if matches!(n, Num::Zero | Num::Int | Num::Frac | Num::Exp(_)) => {
                    self = self.value_done();
                    return self.feed(b);
                }
                None => return None,
            },
            Mode::Literal { word, at } => {
                let lit = LITERALS[word as usize];
                if lit[at as usize] != b {
                    return None;
                }
                self.mode = Mode::Literal { word, at: at + 1 };
                if at as usize + 1 == lit.len() {
                    self = self.value_done();
                }
                return Some(self);
            }
            Mode::Done => return None,
            _ => {}
        }
        if is_space {
            self.whitespace += 1;
            return (self.whitespace <= MAX_WHITESPACE).then_some(self);
        }
        self.whitespace = 0;
        match (self.mode, b) {
            (Mode::Start, b'{') => self.open(true),
            (Mode::Value | Mode::ValueOrClose, b'{') => self.open(true),
            (Mode::Value | Mode::ValueOrClose, b'[') => self.open(false),
            (Mode::ValueOrClose, b']') => self.close(false),
            (Mode::KeyOrClose, b'}') => self.close(true),
            (Mode::Value | Mode::ValueOrClose, b'"') => {
                self.mode = Mode::Str { key: false, escape: Escape::None };
                Some(self)
            }
            (Mode::KeyOrClose | Mode::Key, b'"') => {
                self.mode = Mode::Str { key: true, escape: Escape::None };
                Some(self)
            }
            (Mode::Value | Mode::ValueOrClose, b'-') => self.to(Mode::Num(Num::Minus)),
            (Mode::Value | Mode::ValueOrClose, b'0') => self.to(Mode::Num(Num::Zero)),
            (Mode::Value | Mode::ValueOrClose, b'1'..=b'9') => self.to(Mode::Num(Num::Int)),
            (Mode::Value | Mode::ValueOrClose, b't') => self.to(Mode::Literal { word: 0, at: 1 }),
            (Mode::Value | Mode::ValueOrClose, b'f') => self.to(Mode::Literal { word: 1, at: 1 }),
            (Mode::Value | Mode::ValueOrClose, b'n') => self.to(Mode::Literal { word: 2, at: 1 }),
            (Mode::Colon, b':') => self.to(Mode::Value),
            (Mode::CommaOrClose, b',') => self.to(if self.in_object() { Mode::Key } else { Mode::Value }),
            (Mode::CommaOrClose, b'}') if self.in_object() => self.close(true),
            (Mode::CommaOrClose, b']') if !self.in_object() => self.close(false),
            _ => None,
        }
    }

    fn to(mut self, mode: Mode) -> Option<State> {
        self.mode = mode;
        Some(self)
    }

    fn open(mut self, object: bool) -> Option<State> {
        if self.depth >= MAX_DEPTH {
            return None;
        }
        if object {
            self.stack |= 1 << self.depth;
        } else {
            self.stack &= !(1 << self.depth);
        }
        self.depth += 1;
        self.mode = if object { Mode::KeyOrClose } else { Mode::ValueOrClose };
        Some(self)
    }

    fn close(mut self, object: bool) -> Option<State> {
        if self.depth == 0 || self.in_object() != object {
            return None;
        }
        self.depth -= 1;
        Some(self.value_done())
    }

    fn value_done(mut self) -> State {
        self.mode = if self.depth == 0 { Mode::Done } else { Mode::CommaOrClose };
        self
    }

    fn string(mut self, key: bool, escape: Escape, b: u8) -> Option<State> {
        let escape = match (escape, b) {
            (Escape::None, b'"') => {
                self.mode = if key { Mode::Colon } else { return Some(self.value_done()) };
                return Some(self);
            }
            (Escape::None, b'\\') => Escape::Backslash,
            (Escape::None, 0..=0x1f) => return None,
            (Escape::None, _) => Escape::None,
            (Escape::Backslash, b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Escape::None,
            (Escape::Backslash, b'u') => Escape::Hex(0),
            (Escape::Hex(n), b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                if n == 3 {
                    Escape::None
                } else {
                    Escape::Hex(n + 1)
                }
            }
            _ => return None,
        };
        self.mode = Mode::Str { key, escape };
        Some(self)
    }

    /// `closing().len()`, without building it.
    pub fn closing_len(&self) -> usize {
        let head = match self.mode {
            Mode::Start => 1,
            Mode::Value => 4,
            Mode::Key => 8,
            Mode::Colon => 5,
            Mode::Str { key, escape } => {
                let escape = match escape {
                    Escape::Backslash => 1,
                    Escape::Hex(n) => 4 - n as usize,
                    Escape::None => 0,
                };
                escape + 1 + if key { 5 } else { 0 }
            }
            Mode::Num(Num::Minus | Num::Dot | Num::E | Num::ESign) => 1,
            Mode::Literal { word, at } => LITERALS[word as usize].len() - at as usize,
            _ => 0,
        };
        head + if self.mode == Mode::Start { 1 } else { self.depth as usize }
    }

    /// The shortest text that completes the object from here.
    pub fn closing(&self) -> String {
        let mut out = String::new();
        match self.mode {
            Mode::Start => out.push('{'),
            Mode::Value => out.push_str("null"),
            Mode::Key => out.push_str("\"_\":null"),
            Mode::Colon => out.push_str(":null"),
            Mode::Str { key, escape } => {
                match escape {
                    Escape::Backslash => out.push('n'),
                    Escape::Hex(n) => out.extend(std::iter::repeat_n('0', 4 - n as usize)),
                    Escape::None => {}
                }
                out.push('"');
                if key {
                    out.push_str(":null");
                }
            }
            Mode::Num(Num::Minus | Num::Dot | Num::E | Num::ESign) => out.push('0'),
            Mode::Literal { word, at } => {
                out.push_str(std::str::from_utf8(&LITERALS[word as usize][at as usize..]).unwrap_or(""));
            }
            _ => {}
        }
        let depth = if self.mode == Mode::Start { 1 } else { self.depth };
        for level in (0..depth).rev() {
            let object = self.mode == Mode::Start || self.stack & (1 << level) != 0;
            out.push(if object { '}' } else { ']' });
        }
        out
    }
}

fn number(n: Num, b: u8) -> Option<Num> {
    Some(match (n, b) {
        (Num::Minus, b'0') => Num::Zero,
        (Num::Minus, b'1'..=b'9') => Num::Int,
        (Num::Int, b'0'..=b'9') => Num::Int,
        (Num::Zero | Num::Int, b'.') => Num::Dot,
        (Num::Dot | Num::Frac, b'0'..=b'9') => Num::Frac,
        (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Num::E,
        (Num::E, b'+' | b'-') => Num::ESign,
        (Num::E | Num::ESign, b'0'..=b'9') => Num::Exp(1),
        (Num::Exp(1), b'0'..=b'9') => Num::Exp(2),
        _ => return None,
    })
}
