//! The `$options` array of `send_file()`, checked strictly: a wrong type or an unknown key
//! is a programming error and throws before anything is sent. [`parse`] reads PHP's array
//! into plain [`Value`]s; [`validate`] decides, and unit tests call it without PHP.

use ext_php_rs::types::{ArrayKey, ZendHashTable, Zval};

use crate::error::SendFileError;
use handoff_core::label;
use handoff_core::plan::Options;

/// One value of the `$options` array, as far as validation cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    String(Vec<u8>),
    Long(i64),
    Bool(bool),
    /// Anything else (float, array, null, object, resource): never a valid option.
    Other,
}

impl Value {
    fn from_zval(value: &Zval) -> Value {
        if let Some(s) = value.zend_str() {
            Value::String(s.as_bytes().to_vec())
        } else if let Some(l) = value.long().filter(|_| value.is_long()) {
            Value::Long(l)
        } else if let Some(b) = value.bool().filter(|_| value.is_bool()) {
            Value::Bool(b)
        } else {
            Value::Other
        }
    }
}

pub fn parse(table: Option<&ZendHashTable>) -> Result<Options, SendFileError> {
    let Some(table) = table else {
        return Ok(Options::default());
    };
    validate(table.iter().map(|(key, value)| {
        let name = match key {
            ArrayKey::Long(i) => i.to_string(),
            other => other.to_string(),
        };
        (name, Value::from_zval(value))
    }))
}

/// The options from the array's entries in order; the first bad one is the error.
pub fn validate(
    entries: impl IntoIterator<Item = (String, Value)>,
) -> Result<Options, SendFileError> {
    let mut options = Options::default();
    for (name, value) in entries {
        let string = |expected| match &value {
            Value::String(s) => Ok(String::from_utf8_lossy(s).into_owned()),
            _ => Err(SendFileError::OptionType {
                name: name.clone(),
                expected,
            }),
        };
        match name.as_str() {
            "content_type" => {
                let v = string("a string")?;
                if v.is_empty() || v.bytes().any(|b| b.is_ascii_control()) {
                    return Err(SendFileError::OptionType {
                        name,
                        expected: "a non-empty media type without control characters",
                    });
                }
                options.content_type = Some(v);
            }
            "filename" => {
                let v = string("a string")?;
                if v.is_empty() {
                    return Err(SendFileError::OptionType {
                        name,
                        expected: "a non-empty string",
                    });
                }
                options.filename = Some(v);
            }
            "rate" => {
                options.rate = match value {
                    Value::Long(r) if r > 0 => u64::try_from(r).ok(),
                    _ => None,
                }
                .ok_or(SendFileError::OptionType {
                    name,
                    expected: "a positive int (bytes per second)",
                })?;
            }
            "inline" => {
                options.inline = match value {
                    Value::Bool(b) => b,
                    _ => {
                        return Err(SendFileError::OptionType {
                            name,
                            expected: "a bool",
                        })
                    }
                };
            }
            "tag" => {
                options.tag = Some(label(&value, name)?);
            }
            "rate_group" => {
                options.rate_group = Some(label(&value, name)?);
            }
            // Not part of the response: `source.rs` reads and checks it.
            crate::source::DELETE_OPTION => {}
            _ => return Err(SendFileError::UnknownOption { name }),
        }
    }
    if options.rate_group.is_some() && options.rate == 0 {
        return Err(SendFileError::RateGroupWithoutRate);
    }
    Ok(options)
}

/// `tag` and `rate_group`: a string of 1 to 256 printable ASCII bytes.
fn label(value: &Value, name: String) -> Result<String, SendFileError> {
    match value {
        Value::String(b) if label::is_valid(b) => Ok(String::from_utf8_lossy(b).into_owned()),
        _ => Err(SendFileError::OptionType {
            name,
            expected: "a string of 1 to 256 printable ASCII characters",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(entries: &[(&str, Value)]) -> Result<Options, SendFileError> {
        validate(entries.iter().map(|(n, v)| (n.to_string(), v.clone())))
    }

    fn text(s: &str) -> Value {
        Value::String(s.as_bytes().to_vec())
    }

    #[test]
    fn every_option_in_its_own_type() {
        let o = options(&[
            ("content_type", text("text/csv")),
            ("filename", text("report.csv")),
            ("inline", Value::Bool(true)),
            ("rate", Value::Long(1000)),
            ("tag", text("order:17")),
            ("rate_group", text("user:5")),
            ("delete", Value::Bool(true)),
        ])
        .unwrap();
        assert_eq!(
            o,
            Options {
                content_type: Some("text/csv".into()),
                filename: Some("report.csv".into()),
                inline: true,
                rate: 1000,
                tag: Some("order:17".into()),
                rate_group: Some("user:5".into()),
            }
        );
        assert_eq!(options(&[]).unwrap(), Options::default());
    }

    #[test]
    fn a_wrong_type_names_the_option_and_what_it_must_be() {
        let cases = [
            ("content_type", Value::Long(1)),
            ("content_type", text("")),
            ("content_type", text("text/plain\r\nX-Evil: 1")),
            ("filename", text("")),
            ("filename", Value::Bool(true)),
            ("rate", Value::Long(0)),
            ("rate", Value::Long(-5)),
            ("rate", text("1000")),
            ("rate", Value::Other),
            ("inline", Value::Long(1)),
            ("inline", text("yes")),
            ("tag", text("")),
            ("tag", text(&"x".repeat(257))),
            ("tag", text("caf\u{e9}")),
            ("rate_group", Value::Long(5)),
        ];
        for (name, value) in cases {
            match options(&[(name, value.clone())]) {
                Err(SendFileError::OptionType { name: n, .. }) => assert_eq!(n, name),
                other => panic!("{name} = {value:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_options_and_a_group_without_a_rate_are_refused() {
        assert!(matches!(
            options(&[("rate", Value::Long(1)), ("filname", text("a"))]),
            Err(SendFileError::UnknownOption { name }) if name == "filname"
        ));
        // A list (`[ 'a.pdf' ]`) has integer keys.
        assert!(matches!(
            options(&[("0", text("a.pdf"))]),
            Err(SendFileError::UnknownOption { name }) if name == "0"
        ));
        assert!(matches!(
            options(&[("rate_group", text("user:5"))]),
            Err(SendFileError::RateGroupWithoutRate)
        ));
    }

    #[test]
    fn the_first_bad_entry_is_the_error() {
        assert!(matches!(
            options(&[("inline", Value::Other), ("nope", Value::Other)]),
            Err(SendFileError::OptionType { name, .. }) if name == "inline"
        ));
    }
}
