//! The inverse of GPT-2's `bytes_to_unicode`, used to recover the raw bytes behind a vocab string.
//!
//! Byte-level BPE vocabularies never store raw bytes: each byte is replaced by a printable
//! code point so tokens stay valid, whitespace-free strings. Bytes that are already printable
//! (and not a space) stand for themselves; the other 68 are shifted to U+0100.. in byte order.

/// Whether GPT-2 keeps this byte as its own code point.
const fn maps_to_itself(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// `SHIFTED[n]` is the byte that GPT-2 maps to U+0100 + n.
const SHIFTED: [u8; 68] = {
    let mut table = [0u8; 68];
    let mut n = 0;
    let mut b = 0usize;
    while b < 256 {
        if !maps_to_itself(b as u8) {
            table[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    table
};

/// The byte a byte-level vocab character stands for, or `None` if it is not one of the 256.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cp = u32::from(c);
    if let Ok(b) = u8::try_from(cp)
        && maps_to_itself(b)
    {
        return Some(b);
    }
    let n = usize::try_from(cp.checked_sub(0x100)?).ok()?;
    SHIFTED.get(n).copied()
}

/// Raw bytes behind a byte-level vocab string.
///
/// A string containing a character outside the byte alphabet is not byte-level encoded at all
/// (some converters store such tokens verbatim), so it is taken as-is, as the `tokenizers`
/// ByteLevel decoder does.
pub(crate) fn decode_token(token: &str) -> Vec<u8> {
    token.chars().map(char_to_byte).collect::<Option<Vec<u8>>>().unwrap_or_else(|| token.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GPT-2's forward map, written the way the reference implementation does it.
    fn byte_to_char(b: u8) -> char {
        if maps_to_itself(b) {
            return char::from(b);
        }
        let n = (0..b).filter(|&x| !maps_to_itself(x)).count() as u32;
        char::from_u32(0x100 + n).expect("valid code point")
    }

    #[test]
    fn inverse_covers_all_bytes_exactly_once() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b), "byte {b:#04x}");
        }
        assert_eq!(char_to_byte('Ġ'), Some(b' '));
        assert_eq!(char_to_byte('Ċ'), Some(b'\n'));
        assert_eq!(char_to_byte('ĉ'), Some(b'\t'));
        assert_eq!(char_to_byte('\u{144}'), None);
        assert_eq!(char_to_byte(' '), None);
        assert_eq!(char_to_byte('\u{AD}'), None);
    }

    #[test]
    fn verbatim_tokens_pass_through() {
        assert_eq!(decode_token("ĠðŁĺ"), b" \xF0\x9F\x98");
        assert_eq!(decode_token("a b"), b"a b");
        assert_eq!(decode_token("你"), "你".as_bytes());
    }
}
