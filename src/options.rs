//! The `$options` array of `send_file()`, checked strictly: a wrong type or an unknown key
//! is a programming error and throws before anything is sent.

use ext_php_rs::types::{ArrayKey, ZendHashTable};

use crate::error::SendFileError;
use handoff_core::label;
use handoff_core::plan::Options;

pub fn parse(table: Option<&ZendHashTable>) -> Result<Options, SendFileError> {
    let mut options = Options::default();
    let Some(table) = table else {
        return Ok(options);
    };
    for (key, value) in table {
        let name = match key {
            ArrayKey::Long(i) => i.to_string(),
            other => other.to_string(),
        };
        let string = |expected| {
            value
                .zend_str()
                .map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned())
                .ok_or(SendFileError::OptionType {
                    name: name.clone(),
                    expected,
                })
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
                options.rate = value
                    .long()
                    .filter(|&r| r > 0 && value.is_long())
                    .and_then(|r| u64::try_from(r).ok())
                    .ok_or(SendFileError::OptionType {
                        name,
                        expected: "a positive int (bytes per second)",
                    })?;
            }
            "inline" => {
                options.inline =
                    value
                        .bool()
                        .filter(|_| value.is_bool())
                        .ok_or(SendFileError::OptionType {
                            name,
                            expected: "a bool",
                        })?;
            }
            "tag" => {
                options.tag = Some(label(value, name)?);
            }
            "rate_group" => {
                options.rate_group = Some(label(value, name)?);
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
fn label(value: &ext_php_rs::types::Zval, name: String) -> Result<String, SendFileError> {
    value
        .zend_str()
        .map(|s| s.as_bytes())
        .filter(|b| label::is_valid(b))
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .ok_or(SendFileError::OptionType {
            name,
            expected: "a string of 1 to 256 printable ASCII characters",
        })
}
