//! Integers as JSON Schema counts them: `512` and `512.0` are the same
//! integer (and pydantic, behind OpenAI's API, takes both), so a client or
//! a generated test that writes an integral float is not refused with a
//! type error; `512.5`, `-1` and `"512"` still are. Used as
//! `#[serde(default, deserialize_with = "crate::integer::option")]`.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, Unexpected, Visitor};

/// A non-negative integer of type `T`, written as a JSON integer or an
/// integral number.
struct Integer<T>(T);

impl<'de, T: TryFrom<u64>> Deserialize<'de> for Integer<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(IntegerVisitor(PhantomData))
    }
}

struct IntegerVisitor<T>(PhantomData<T>);

impl<T: TryFrom<u64>> Visitor<'_> for IntegerVisitor<T> {
    type Value = Integer<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a non-negative integer of at most {} bits", std::mem::size_of::<T>() * 8)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        T::try_from(v).map(Integer).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::invalid_value(Unexpected::Signed(v), &self)),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // 2^64 as f64 is exactly u64::MAX + 1: anything below it converts exactly.
        if v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
            self.visit_u64(v as u64)
        } else {
            Err(E::invalid_type(Unexpected::Float(v), &self))
        }
    }
}

/// An optional integer field (with `#[serde(default)]`).
pub fn option<'de, D: Deserializer<'de>, T: TryFrom<u64>>(deserializer: D) -> Result<Option<T>, D::Error> {
    Ok(Option::<Integer<T>>::deserialize(deserializer)?.map(|i| i.0))
}

/// A list of integers.
pub fn list<'de, D: Deserializer<'de>, T: TryFrom<u64>>(deserializer: D) -> Result<Vec<T>, D::Error> {
    Ok(Vec::<Integer<T>>::deserialize(deserializer)?.into_iter().map(|i| i.0).collect())
}

/// A list of lists of integers.
pub fn lists<'de, D: Deserializer<'de>, T: TryFrom<u64>>(deserializer: D) -> Result<Vec<Vec<T>>, D::Error> {
    let lists = Vec::<Vec<Integer<T>>>::deserialize(deserializer)?;
    Ok(lists.into_iter().map(|l| l.into_iter().map(|i| i.0).collect()).collect())
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize, Debug)]
    struct Request {
        #[serde(default, deserialize_with = "super::option")]
        n: Option<u32>,
        #[serde(default, deserialize_with = "super::list")]
        ids: Vec<u32>,
    }

    fn parse(json: &str) -> Result<Request, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn integral_floats_are_integers_and_nothing_else_is() {
        assert_eq!(parse(r#"{"n": 7.0, "ids": [1, 2.0]}"#).unwrap().n, Some(7));
        assert_eq!(parse(r#"{"ids": [1, 2.0]}"#).unwrap().ids, [1, 2]);
        assert_eq!(parse("{}").unwrap().n, None);
        assert_eq!(parse(r#"{"n": null}"#).unwrap().n, None);
        for bad in [r#"{"n": 7.5}"#, r#"{"n": -1}"#, r#"{"n": "7"}"#, r#"{"n": 4294967296}"#, r#"{"n": 1e300}"#] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
