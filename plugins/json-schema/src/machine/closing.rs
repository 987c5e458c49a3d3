//! The shortest text that completes the answer from a [`State`]: what the
//! budget is measured against and what closing forces.

use super::{ArrPhase, Esc, Frame, NumPhase, ObjPhase, State};
use crate::schema::{Node, Schema};

impl State {
    /// The shortest text that completes the answer from here (the rest of
    /// the prefix, of the value, and the suffix).
    pub fn closing(&self, schema: &Schema) -> Vec<u8> {
        let mut out = Vec::new();
        for frame in self.frames[..self.len as usize].iter().rev() {
            match *frame {
                Frame::Value(node) => out.extend(&schema.min_text[node as usize]),
                Frame::Text { suffix, off } => out.extend(&schema.literal(suffix)[off as usize..]),
                Frame::Obj { node, seen, phase } => {
                    let Node::Object(props) = &schema.nodes[node as usize] else { continue };
                    match phase {
                        ObjPhase::Open | ObjPhase::Key => {
                            // After `,` a key is due: the first unseen property if none is required.
                            let unseen = |i: &usize| seen & (1 << i) == 0;
                            let first = (0..props.len()).filter(unseen).find(|&i| props[i].required);
                            let first =
                                first.or_else(|| (0..props.len()).find(unseen).filter(|_| phase == ObjPhase::Key));
                            match first {
                                Some(k) => {
                                    let p = &props[k];
                                    out.extend([&b"\""[..], &p.key, b"\":"].concat());
                                    out.extend(&schema.min_text[p.node as usize]);
                                    schema.rest_of_object(node, seen | 1 << k, &mut out);
                                }
                                None => out.push(b'}'),
                            }
                        }
                        ObjPhase::Colon(k) => {
                            out.push(b':');
                            out.extend(&schema.min_text[props[k as usize].node as usize]);
                            schema.rest_of_object(node, seen, &mut out);
                        }
                        ObjPhase::AfterValue => schema.rest_of_object(node, seen, &mut out),
                    }
                }
                Frame::Key { node, mask, off } => {
                    let Node::Object(props) = &schema.nodes[node as usize] else { continue };
                    let k = mask.trailing_zeros() as usize;
                    let p = &props[k];
                    out.extend(&p.key[off as usize..]);
                    out.extend(b"\":");
                    out.extend(&schema.min_text[p.node as usize]);
                    // The object below then goes on without this property.
                    let seen = match self.frames[self.len as usize - 2] {
                        Frame::Obj { seen, .. } => seen,
                        _ => 0,
                    };
                    schema.rest_of_object(node, seen | 1 << k, &mut out);
                    return self.close_below(schema, out, 2);
                }
                Frame::Union { node, mask, off } => {
                    let Node::Tagged(branches) = &schema.nodes[node as usize] else { continue };
                    // The branch still possible whose head and tail end soonest.
                    let rest = (branches.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0))
                        .map(|(_, b)| (&b.head[(off as usize).min(b.head.len())..], &b.tail))
                        .min_by_key(|(head, tail)| head.len() + tail.len());
                    if let Some((head, tail)) = rest {
                        out.extend(head);
                        out.extend(tail);
                    }
                }
                Frame::Arr { node, count, phase } => {
                    let Node::Array { items, min, .. } = schema.nodes[node as usize] else { continue };
                    let item = &schema.min_text[items as usize];
                    let (first, done) = match phase {
                        ArrPhase::Open => (false, 0),
                        ArrPhase::AfterValue => (true, count),
                        // A value is due; it is counted when it starts.
                        ArrPhase::Comma => {
                            out.extend(item);
                            (true, count + 1)
                        }
                    };
                    for j in done..min.max(done) {
                        if first || j > 0 {
                            out.push(b',');
                        }
                        out.extend(item);
                    }
                    out.push(b']');
                }
                Frame::Str { node, len, esc, need, lo, .. } => {
                    let Node::String { min, .. } = schema.nodes[node as usize] else { continue };
                    // Finish the character under way first.
                    if need > 0 {
                        out.push(lo);
                        out.extend(std::iter::repeat_n(0x80, need as usize - 1));
                    }
                    match esc {
                        Esc::None => {}
                        Esc::Backslash => out.push(b'n'),
                        Esc::Hex(n) => out.extend(std::iter::repeat_n(b'0', 4 - n as usize)),
                    }
                    out.extend(std::iter::repeat_n(b'a', min.saturating_sub(len) as usize));
                    out.push(b'"');
                }
                Frame::Lit { node, mask, off } => {
                    let Node::Literals(alts) = &schema.nodes[node as usize] else { continue };
                    let rest = (alts.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0))
                        .map(|(_, a)| &a[(off as usize).min(a.len())..])
                        .min_by_key(|r| r.len());
                    out.extend(rest.unwrap_or_default());
                }
                Frame::Num { phase, integer } => match phase {
                    NumPhase::Minus if integer => out.push(b'1'),
                    NumPhase::Minus | NumPhase::Dot | NumPhase::E | NumPhase::ESign => out.push(b'0'),
                    _ => {}
                },
            }
        }
        out
    }

    /// [`State::closing`] for the frames below the top `skip`.
    fn close_below(&self, schema: &Schema, mut out: Vec<u8>, skip: u8) -> Vec<u8> {
        let mut below = *self;
        below.len = self.len.saturating_sub(skip);
        out.extend(below.closing(schema));
        out
    }
}
