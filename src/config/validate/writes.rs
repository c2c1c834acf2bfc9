//! A Modbus point's write rules: `writable = true` and the keys that only mean something with
//! it (`min`, `max`, `write_function`, `min_write_interval`). Writes stay off unless a point
//! asks for them, and only holding registers and coils can be written.

use toml::Spanned;

use super::engine::{span_of, Checker, FileId};
use crate::config::limits;
use crate::config::raw::RawPoint;
use crate::config::types::{DataType, Table, WriteFunction, WriteSettings};

impl Checker {
    /// `Some(None)`: read-only; `Some(Some(_))`: writable; `None`: a problem was reported.
    /// `location` and `data_type` are `None` when they failed their own checks.
    pub(super) fn write_settings(
        &mut self,
        file: FileId,
        raw: &RawPoint,
        table: Option<Table>,
        data_type: Option<DataType>,
    ) -> Option<Option<WriteSettings>> {
        let writable = raw.writable.as_ref().is_some_and(|w| *w.get_ref());
        if !writable {
            let mut ok = true;
            for (key, span) in [
                ("min", raw.min.as_ref().map(Spanned::span)),
                ("max", raw.max.as_ref().map(Spanned::span)),
                (
                    "write_function",
                    raw.write_function.as_ref().map(Spanned::span),
                ),
                (
                    "min_write_interval",
                    raw.min_write_interval.as_ref().map(Spanned::span),
                ),
            ] {
                if let Some(span) = span {
                    self.fail(file, Some(span), format!(
                        "`{key}` is a write rule and the point is not writable: add writable = true to allow writes from MQTT, or remove `{key}` (readings are never limited)"
                    ));
                    ok = false;
                }
            }
            return ok.then_some(None);
        }
        let at = raw.writable.as_ref().map(Spanned::span);
        let mut ok = true;
        if let Some(table @ (Table::Input | Table::Discrete)) = table {
            self.fail(file, at.clone(), format!(
                "{} are read-only in Modbus: only holding registers and coils can be written; remove writable = true",
                match table {
                    Table::Input => "input registers",
                    _ => "discrete inputs",
                }
            ));
            ok = false;
        }
        let limit_applies = !matches!(data_type, Some(DataType::Bool | DataType::String { .. }));
        let mut limit = |key: &str, v: &Option<Spanned<f64>>| -> Option<f64> {
            let v = v.as_ref()?;
            if !limit_applies {
                self.fail(
                    file,
                    Some(v.span()),
                    format!(
                        "`{key}` has no meaning on a {} point: remove it",
                        if data_type == Some(DataType::Bool) {
                            "bool"
                        } else {
                            "string"
                        }
                    ),
                );
                ok = false;
                return None;
            }
            if !v.get_ref().is_finite() {
                self.fail(
                    file,
                    Some(v.span()),
                    format!("`{key}` must be a finite number, e.g. {key} = 30.0"),
                );
                ok = false;
                return None;
            }
            Some(*v.get_ref())
        };
        let min = limit("min", &raw.min);
        let max = limit("max", &raw.max);
        if let (Some(lo), Some(hi)) = (min, max) {
            if lo > hi {
                let span = raw.min.as_ref().map(Spanned::span);
                self.fail(
                    file,
                    span,
                    format!(
                        "`min` = {lo} is above `max` = {hi}: no value could be written; swap them"
                    ),
                );
                ok = false;
            }
        }
        let width = data_type.map(DataType::width);
        let function = match &raw.write_function {
            None => Some(if width.unwrap_or(1) == 1 {
                WriteFunction::Single
            } else {
                WriteFunction::Multiple
            }),
            Some(f) => match self.choice(
                file,
                f,
                "write_function",
                &[
                    ("single", WriteFunction::Single),
                    ("multiple", WriteFunction::Multiple),
                ],
            )? {
                WriteFunction::Single if width.is_some_and(|w| w > 1) => {
                    self.fail(file, span_of(f), format!(
                        "write_function = \"single\" (function 6) writes one register, but this point is {} registers wide: use \"multiple\" (function 16), or leave write_function out",
                        width.unwrap_or(0)
                    ));
                    None
                }
                chosen => Some(chosen),
            },
        };
        let min_write_interval = match &raw.min_write_interval {
            None => Some(WriteSettings::DEFAULT_MIN_WRITE_INTERVAL),
            Some(i) => self.duration_in(file, i, "min_write_interval", &limits::MIN_WRITE_INTERVAL),
        };
        if !ok {
            return None;
        }
        Some(Some(WriteSettings {
            min,
            max,
            function: function?,
            min_write_interval: min_write_interval?,
        }))
    }
}
