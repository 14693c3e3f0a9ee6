//! `Text`: a JSON string field that accepts only JSON strings. poem-openapi's `String`
//! coerces numbers and booleans (`5` becomes `"5"`); a wrong type must be a 400 instead.

use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use serde_json::Value;
use std::borrow::Cow;

/// Implements poem-openapi's `Type` for a required JSON value type of our own whose parsing is
/// written by hand (`ParseFromJSON`): `$name` names it, `$schema` builds its schema.
macro_rules! json_value_type {
    ($ty:ty, $name:expr, $schema:expr) => {
        impl poem_openapi::types::Type for $ty {
            const IS_REQUIRED: bool = true;
            type RawValueType = Self;
            type RawElementValueType = Self;

            fn name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }

            fn schema_ref() -> poem_openapi::registry::MetaSchemaRef {
                poem_openapi::registry::MetaSchemaRef::Inline(Box::new($schema))
            }

            fn as_raw_value(&self) -> Option<&Self::RawValueType> {
                Some(self)
            }

            fn raw_element_iter<'a>(
                &'a self,
            ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
                Box::new(self.as_raw_value().into_iter())
            }
        }
    };
}
pub(crate) use json_value_type;

/// A string in a JSON body.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Text(pub String);

json_value_type!(Text, "string", MetaSchema::new("string"));

impl ParseFromJSON for Text {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value.unwrap_or_default() {
            Value::String(s) => Ok(Text(s)),
            other => Err(ParseError::expected_type(other)),
        }
    }
}

impl ToJSON for Text {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<Text> for String {
    fn from(t: Text) -> Self {
        t.0
    }
}

/// An optional JSON field: absent means `None`; an explicit `null` is refused, since the
/// schema does not declare these fields nullable (poem-openapi's `Option` accepts `null`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Opt<T>(pub Option<T>);

impl<T: Type> Type for Opt<T> {
    const IS_REQUIRED: bool = false;
    type RawValueType = T::RawValueType;
    type RawElementValueType = T::RawElementValueType;

    fn name() -> Cow<'static, str> {
        T::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut poem_openapi::registry::Registry) {
        T::register(registry)
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        self.0.as_ref().and_then(Type::as_raw_value)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        match &self.0 {
            Some(v) => v.raw_element_iter(),
            None => Box::new(std::iter::empty()),
        }
    }

    fn is_none(&self) -> bool {
        self.0.is_none()
    }
}

impl<T: ParseFromJSON> ParseFromJSON for Opt<T> {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            None => Ok(Opt(None)),
            Some(Value::Null) => Err(ParseError::custom(
                "null is not allowed here; omit the field",
            )),
            Some(v) => T::parse_from_json(Some(v))
                .map(|t| Opt(Some(t)))
                .map_err(ParseError::propagate),
        }
    }
}

impl<T: ToJSON> ToJSON for Opt<T> {
    fn to_json(&self) -> Option<Value> {
        self.0.as_ref().and_then(ToJSON::to_json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_fields_refuse_null() {
        assert_eq!(Opt::<Text>::parse_from_json(None).unwrap(), Opt(None));
        assert!(Opt::<Text>::parse_from_json(Some(Value::Null)).is_err());
        assert!(Opt::<Text>::parse_from_json(Some(Value::from(1))).is_err());
        assert_eq!(
            Opt::<u64>::parse_from_json(Some(Value::from(3))).unwrap(),
            Opt(Some(3))
        );
    }

    #[test]
    fn only_strings_parse() {
        assert_eq!(
            Text::parse_from_json(Some(Value::String("a".into()))).unwrap(),
            Text("a".into())
        );
        for bad in [
            Value::from(5),
            Value::from(true),
            Value::Null,
            serde_json::json!([]),
            serde_json::json!({}),
        ] {
            assert!(Text::parse_from_json(Some(bad.clone())).is_err(), "{bad}");
        }
    }
}
