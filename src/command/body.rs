//! A command body read straight into its fields: each one text, absent, or of another JSON
//! kind, with strings borrowed from the body where they hold no escapes. Nothing else of
//! the body is kept: unknown fields, and the insides of arrays and objects, are skipped as
//! they are read. A field given twice counts as the last one given.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A body as read: a JSON object with the fields a command may have, or another JSON value.
pub(super) enum Body<'a> {
    Object(Box<Fields<'a>>),
    /// Not an object: what it was (`null`, `a boolean`, `a number`, `a string`, `an array`).
    Other(&'static str),
}

/// The fields of a command object.
#[derive(Default)]
pub(super) struct Fields<'a> {
    pub command_id: Field<'a>,
    pub job_url: Field<'a>,
    pub task_url: Field<'a>,
    pub task_definition_id: Field<'a>,
    pub task_id: Field<'a>,
    pub printer_id: Field<'a>,
    pub print_job_id: Field<'a>,
    pub reason: Field<'a>,
    pub tenant_id: Field<'a>,
    pub expires_at: Field<'a>,
}

/// One field's value.
#[derive(Default)]
pub(super) enum Field<'a> {
    /// Absent, or `null`.
    #[default]
    Absent,
    Text(Cow<'a, str>),
    /// Of another kind: `a boolean`, `a number`, `an array` or `an object`.
    Other(&'static str),
}

impl Body<'_> {
    pub fn parse(body: &[u8]) -> serde_json::Result<Body<'_>> {
        serde_json::from_slice(body)
    }
}

impl<'a> Field<'a> {
    /// An optional string field; `null` counts as absent.
    pub fn string(&self, name: &str) -> Result<Option<&str>, String> {
        match self {
            Self::Absent => Ok(None),
            Self::Text(text) => Ok(Some(text)),
            Self::Other(kind) => Err(format!("{name} must be a string, found {kind}")),
        }
    }

    /// [`Field::string`], at most `max_chars` characters long.
    pub fn bounded(&self, name: &str, max_chars: usize) -> Result<Option<&str>, String> {
        let value = self.string(name)?;
        match value {
            // Counting stops at the first character past the limit.
            Some(text) if text.len() > max_chars && text.chars().nth(max_chars).is_some() => Err(
                format!("{name} must be at most {max_chars} characters long"),
            ),
            _ => Ok(value),
        }
    }
}

impl<'de> Deserialize<'de> for Body<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(BodyVisitor)
    }
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Body<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields::default();
        while let Some(Text(name)) = map.next_key::<Text<'de>>()? {
            let slot = match &*name {
                "commandId" => &mut fields.command_id,
                "jobUrl" => &mut fields.job_url,
                "taskUrl" => &mut fields.task_url,
                "taskDefinitionId" => &mut fields.task_definition_id,
                "taskId" => &mut fields.task_id,
                "printerId" => &mut fields.printer_id,
                "printJobId" => &mut fields.print_job_id,
                "reason" => &mut fields.reason,
                "tenantId" => &mut fields.tenant_id,
                "expiresAt" => &mut fields.expires_at,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = map.next_value()?;
        }
        Ok(Body::Object(Box::new(fields)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Body::Other("an array"))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Body::Other("null"))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Body::Other("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Body::Other("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Body::Other("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Body::Other("a number"))
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Body::Other("a string"))
    }
}

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(Field::Text(Cow::Borrowed(text)))
    }

    fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Field::Text(Cow::Owned(text.to_owned())))
    }

    fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
        Ok(Field::Text(Cow::Owned(text)))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Field::Absent)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Field::Other("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Field::Other("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Field::Other("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Field::Other("a number"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Field::Other("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::Other("an object"))
    }
}

/// A string, borrowed from the body when it holds no escapes: an object's key.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Field::deserialize(deserializer)? {
            Field::Text(text) => Ok(Text(text)),
            _ => Err(de::Error::custom("an object's key is a string")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> Box<Fields<'_>> {
        match Body::parse(json.as_bytes()).expect("valid JSON") {
            Body::Object(fields) => fields,
            Body::Other(kind) => panic!("an object, not {kind}"),
        }
    }

    #[test]
    fn each_kind_of_value_is_told_apart_and_unknown_fields_are_skipped() {
        let read = fields(
            r#"{"printerId":"p","printJobId":null,"reason":true,"tenantId":4.5,
                "commandId":[1,[2]],"jobUrl":{"a":{"b":1}},"later":{"x":[1,2]},"taskId":"a\"b"}"#,
        );
        assert_eq!(read.printer_id.string("printerId"), Ok(Some("p")));
        assert_eq!(read.print_job_id.string("printJobId"), Ok(None));
        assert_eq!(read.expires_at.string("expiresAt"), Ok(None));
        assert_eq!(read.task_id.string("taskId"), Ok(Some("a\"b")));
        for (field, name, kind) in [
            (&read.reason, "reason", "a boolean"),
            (&read.tenant_id, "tenantId", "a number"),
            (&read.command_id, "commandId", "an array"),
            (&read.job_url, "jobUrl", "an object"),
        ] {
            assert_eq!(
                field.string(name),
                Err(format!("{name} must be a string, found {kind}"))
            );
        }
    }

    #[test]
    fn a_field_given_twice_is_the_last_one_given() {
        let read = fields(r#"{"printerId":"first","printerId":"second"}"#);
        assert_eq!(read.printer_id.string("printerId"), Ok(Some("second")));
    }

    #[test]
    fn a_body_that_is_not_an_object_says_what_it_is() {
        for (json, kind) in [
            ("null", "null"),
            ("false", "a boolean"),
            ("-3", "a number"),
            ("\"x\"", "a string"),
            ("[{}, [1]]", "an array"),
        ] {
            match Body::parse(json.as_bytes()) {
                Ok(Body::Other(found)) => assert_eq!(found, kind, "{json}"),
                _ => panic!("{json} read as an object or not at all"),
            }
        }
        assert!(Body::parse(b"{\"a\":1} x").is_err());
        assert!(Body::parse(b"{\"a\":").is_err());
    }

    #[test]
    fn a_bounded_field_counts_characters_not_bytes() {
        let read = fields(r#"{"reason":"ééé","tenantId":"abcd"}"#);
        assert_eq!(read.reason.bounded("reason", 3), Ok(Some("ééé")));
        assert_eq!(
            read.tenant_id.bounded("tenantId", 3),
            Err("tenantId must be at most 3 characters long".to_owned())
        );
    }
}
