//! What arrives on a point's `…/set` topic, and what goes back on `…/set/result`: pure
//! parsing and encoding, no I/O, no clock.
//!
//! A command is the bare value (`21.5`, `true`, `ON`, `"OFF"`, `"text"`) or a JSON envelope
//! `{"value":21.5,"id":"abc","expires":1764160030000,"ts":1764160000000}` whose `id` is echoed
//! in the result so a caller can match them without MQTT 5. An envelope with a key it does
//! not know is refused: a misspelt `"expire"` must not run a command its sender meant to
//! expire.

use serde_json::{Map, Number, Value as Json};

use crate::model::Value;

/// One parsed command, not yet checked against its point.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub value: Value,
    /// The caller's correlation id, echoed in the result.
    pub id: Option<String>,
    /// Unix ms after which the command must not run.
    pub expires_ms: Option<u64>,
    /// Unix ms when the caller sent it; with `command_max_age` it bounds how stale a
    /// command may be.
    pub sent_ms: Option<u64>,
}

/// Why a payload is not a command (the result says it in these words).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the command is empty: publish the value to write, e.g. 21.5 or true")]
    Empty,
    #[error("the command is not UTF-8 text")]
    NotText,
    #[error("{0:?} is not a value: publish a number, true/false, ON/OFF or a JSON string")]
    NotAValue(String),
    #[error("the JSON envelope is not valid: {0}")]
    BadEnvelope(String),
    #[error("the envelope has no \"value\"")]
    NoValue,
    #[error(
        "the envelope has a key this agent does not know: {0:?} (known: value, id, expires, ts)"
    )]
    UnknownKey(String),
    #[error("\"{key}\" must be {expected}")]
    BadField {
        key: &'static str,
        expected: &'static str,
    },
}

/// Parses a `…/set` payload.
pub fn parse(payload: &[u8]) -> Result<Command, ParseError> {
    let text = std::str::from_utf8(payload).map_err(|_| ParseError::NotText)?;
    let text = text.trim();
    if text.is_empty() {
        return Err(ParseError::Empty);
    }
    if text.starts_with('{') {
        let json: Json =
            serde_json::from_str(text).map_err(|e| ParseError::BadEnvelope(e.to_string()))?;
        let Json::Object(fields) = json else {
            unreachable!("text starting with '{{' parses to an object or fails")
        };
        return envelope(fields);
    }
    Ok(Command {
        value: bare(text)?,
        id: None,
        expires_ms: None,
        sent_ms: None,
    })
}

fn envelope(fields: Map<String, Json>) -> Result<Command, ParseError> {
    if let Some(unknown) = fields
        .keys()
        .find(|k| !["value", "id", "expires", "ts"].contains(&k.as_str()))
    {
        return Err(ParseError::UnknownKey(unknown.clone()));
    }
    let value = match fields.get("value") {
        None | Some(Json::Null) => return Err(ParseError::NoValue),
        Some(v) => json_value(v).ok_or(ParseError::BadField {
            key: "value",
            expected: "a number, true/false or a string",
        })?,
    };
    let id = match fields.get("id") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(s.clone()),
        Some(Json::Number(n)) => Some(n.to_string()),
        Some(_) => {
            return Err(ParseError::BadField {
                key: "id",
                expected: "a string or a number",
            })
        }
    };
    let millis = |key: &'static str| match fields.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Number(n)) => n.as_u64().map(Some).ok_or(ParseError::BadField {
            key,
            expected: "unix time in milliseconds (a whole number)",
        }),
        Some(_) => Err(ParseError::BadField {
            key,
            expected: "unix time in milliseconds (a whole number)",
        }),
    };
    Ok(Command {
        value,
        id,
        expires_ms: millis("expires")?,
        sent_ms: millis("ts")?,
    })
}

/// A bare payload: JSON scalars, plus the unquoted words ON and OFF that switches send.
fn bare(text: &str) -> Result<Value, ParseError> {
    if text.eq_ignore_ascii_case("on") {
        return Ok(Value::Bool(true));
    }
    if text.eq_ignore_ascii_case("off") {
        return Ok(Value::Bool(false));
    }
    serde_json::from_str::<Json>(text)
        .ok()
        .as_ref()
        .and_then(json_value)
        .ok_or_else(|| ParseError::NotAValue(text.to_owned()))
}

fn json_value(v: &Json) -> Option<Value> {
    match v {
        Json::Bool(b) => Some(Value::Bool(*b)),
        Json::Number(n) => Some(number(n)),
        Json::String(s) => Some(Value::Text(s.clone())),
        _ => None,
    }
}

/// The `id` of an envelope that is not a valid command (an unknown key, a bad field), so
/// even its refusal can be matched by the sender.
pub fn id_of(payload: &[u8]) -> Option<String> {
    let json: Json = serde_json::from_slice(payload).ok()?;
    match json.get("id")? {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn number(n: &Number) -> Value {
    if let Some(i) = n.as_i64() {
        Value::Int(i)
    } else if let Some(u) = n.as_u64() {
        Value::UInt(u)
    } else {
        Value::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Written, and read back.
    Ok,
    /// Refused before anything went on the wire (not writable, out of range, retained,
    /// too soon after the last write, malformed).
    Rejected,
    /// The device refused it or did not answer.
    Failed,
    /// Too old to run.
    Expired,
    /// A newer command for the same point replaced it before it ran.
    Superseded,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Rejected => "rejected",
            Status::Failed => "failed",
            Status::Expired => "expired",
            Status::Superseded => "superseded",
        }
    }
}

/// The one result every command gets, on `…/set/result`.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub id: Option<String>,
    pub status: Status,
    pub requested: Option<Value>,
    /// What the device holds after the write, as read back.
    pub value: Option<Value>,
    pub error: Option<String>,
    pub ts_ms: u64,
}

impl Outcome {
    /// `{"id":…,"status":…,"requested":…,"value":…,"error":…,"ts":…}`, every key present.
    pub fn to_json(&self) -> String {
        let value = |v: &Option<Value>| v.as_ref().map_or(Json::Null, to_json);
        serde_json::json!({
            "id": self.id,
            "status": self.status.as_str(),
            "requested": value(&self.requested),
            "value": value(&self.value),
            "error": self.error,
            "ts": self.ts_ms,
        })
        .to_string()
    }
}

fn to_json(v: &Value) -> Json {
    match v {
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::UInt(u) => Json::from(*u),
        Value::Float(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Text(t) => Json::String(t.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(payload: &str) -> Value {
        parse(payload.as_bytes()).unwrap().value
    }

    #[test]
    fn bare_values_are_numbers_bools_switch_words_and_strings() {
        assert_eq!(value("21.5"), Value::Float(21.5));
        assert_eq!(value(" 42\n"), Value::Int(42));
        assert_eq!(value("18446744073709551615"), Value::UInt(u64::MAX));
        assert_eq!(value("-3"), Value::Int(-3));
        assert_eq!(value("true"), Value::Bool(true));
        assert_eq!(value("ON"), Value::Bool(true));
        assert_eq!(value("off"), Value::Bool(false));
        assert_eq!(value("\"OFF\""), Value::Text("OFF".into()));
        assert_eq!(value("\"SN-42\""), Value::Text("SN-42".into()));
    }

    #[test]
    fn the_envelope_carries_id_expiry_and_send_time() {
        let c = parse(br#"{"value":21.5,"id":"abc","expires":1764160030000,"ts":1764160000000}"#)
            .unwrap();
        assert_eq!(
            c,
            Command {
                value: Value::Float(21.5),
                id: Some("abc".into()),
                expires_ms: Some(1_764_160_030_000),
                sent_ms: Some(1_764_160_000_000),
            }
        );
        assert_eq!(
            parse(br#"{"value":true,"id":7}"#).unwrap().id,
            Some("7".into())
        );
    }

    #[test]
    fn what_is_not_a_command_is_refused_in_words() {
        let err = |p: &str| parse(p.as_bytes()).unwrap_err();
        assert_eq!(err(""), ParseError::Empty);
        assert_eq!(err("  "), ParseError::Empty);
        assert!(matches!(err("21,5"), ParseError::NotAValue(_)));
        assert!(matches!(err("[1]"), ParseError::NotAValue(_)));
        assert!(matches!(err("{\"value\":"), ParseError::BadEnvelope(_)));
        assert_eq!(err("{\"id\":\"x\"}"), ParseError::NoValue);
        assert_eq!(
            err("{\"value\":1,\"expire\":5}"),
            ParseError::UnknownKey("expire".into())
        );
        assert!(matches!(
            err("{\"value\":1,\"expires\":\"soon\"}"),
            ParseError::BadField { key: "expires", .. }
        ));
        assert!(matches!(
            err("{\"value\":[1]}"),
            ParseError::BadField { key: "value", .. }
        ));
        assert_eq!(parse(&[0xff, 0xfe]).unwrap_err(), ParseError::NotText);
    }

    #[test]
    fn the_result_has_every_key_even_when_empty() {
        let ok = Outcome {
            id: Some("abc".into()),
            status: Status::Ok,
            requested: Some(Value::Float(21.5)),
            value: Some(Value::Float(21.5)),
            error: None,
            ts_ms: 1_764_160_000_123,
        };
        let json: Json = serde_json::from_str(&ok.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id":"abc","status":"ok","requested":21.5,"value":21.5,
                               "error":null,"ts":1_764_160_000_123u64})
        );
        let refused = Outcome {
            id: None,
            status: Status::Rejected,
            requested: None,
            value: None,
            error: Some("not writable".into()),
            ts_ms: 1,
        };
        let json: Json = serde_json::from_str(&refused.to_json()).unwrap();
        assert_eq!(json["status"], "rejected");
        assert!(json["id"].is_null() && json["value"].is_null());
    }
}
