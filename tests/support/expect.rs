//! Reading the agent's published payloads in assertions: the JSON reading format
//! `{"value":…,"unit":…,"ts":…,"seq":…}` and the `online`/`offline` status words.

use std::time::Duration;

use super::watch::{Message, Watch};

/// The numeric `value` of a JSON reading (bools as 0/1), or `None` for anything else.
pub fn number(m: &Message) -> Option<f64> {
    match m.json().get("value")? {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

/// True when `m` is a JSON reading whose value is `expected` (to float precision).
pub fn has_value(m: &Message, expected: f64) -> bool {
    number(m).is_some_and(|v| close(v, expected))
}

pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9_f64.max(b.abs() * 1e-6)
}

/// Waits for a reading with `expected` on `topic`.
pub async fn reading(watch: &Watch, topic: &str, expected: f64, deadline: Duration) -> Message {
    let m = watch
        .wait_for(topic, deadline, |m| number(m).is_some())
        .await;
    let all: Vec<_> = watch.on(topic).iter().map(|m| m.payload.clone()).collect();
    assert!(
        has_value(&m, expected),
        "first reading on {topic} should be {expected}, got {}; all: {all:?}",
        m.payload
    );
    m
}

/// Waits until the newest message on `topic` is `word` (`online` / `offline`).
pub async fn status(watch: &Watch, topic: &str, word: &str, deadline: Duration) {
    super::wait_until(&format!("{topic} = {word}"), deadline, || {
        watch
            .last_on(topic)
            .filter(|m| m.payload == word)
            .map(|_| ())
    })
    .await
}

/// Every status word published on `topic` so far, in order.
pub fn statuses(watch: &Watch, topic: &str) -> Vec<String> {
    watch.on(topic).into_iter().map(|m| m.payload).collect()
}
