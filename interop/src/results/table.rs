//! Rows of one set, written as `<set>.json` and `<set>.csv`.
//!
//! JSON: `{"set": …, "meta": {…}, "columns": [...], "rows": [{column: value}]}`;
//! CSV: the same columns as a header, one line per row (RFC 4180 quoting).
//! Every row carries the run metadata ([`super::Meta::row_fields`]) so a row
//! copied out of its file still says where it came from.

use super::Meta;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// One scenario's row: its name, parameters and measured values, in order.
#[derive(Clone, Debug, Default)]
pub struct Row {
    pub scenario: String,
    pub fields: Vec<(String, Value)>,
}

impl Row {
    pub fn new(scenario: impl Into<String>) -> Row {
        Row {
            scenario: scenario.into(),
            fields: Vec::new(),
        }
    }

    /// Adds a column (parameter or measured value).
    pub fn set(mut self, key: &str, v: impl Into<Value>) -> Row {
        self.fields.push((key.to_owned(), v.into()));
        self
    }

    /// Adds a float rounded to `digits` decimals (NaN/∞ become null).
    pub fn num(self, key: &str, v: f64, digits: i32) -> Row {
        let p = 10f64.powi(digits);
        let r = (v * p).round() / p;
        self.set(
            key,
            serde_json::Number::from_f64(r).map_or(Value::Null, Value::Number),
        )
    }

    /// An optional float.
    pub fn opt(self, key: &str, v: Option<f64>, digits: i32) -> Row {
        match v {
            Some(x) => self.num(key, x, digits),
            None => self.set(key, Value::Null),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// The rows of one set.
#[derive(Clone, Debug)]
pub struct Table {
    pub set: String,
    pub rows: Vec<Row>,
}

fn csv_field(v: &Value) -> String {
    let s = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

impl Table {
    pub fn new(set: &str) -> Table {
        Table {
            set: set.to_owned(),
            rows: Vec::new(),
        }
    }

    /// Every column in order of first appearance: `set`, `scenario`, the
    /// rows' fields, then the metadata.
    fn columns(&self, meta: &[(String, Value)]) -> Vec<String> {
        let mut cols = vec!["set".to_owned(), "scenario".to_owned()];
        for r in &self.rows {
            for (k, _) in &r.fields {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
        cols.extend(meta.iter().map(|(k, _)| k.clone()));
        cols
    }

    /// The rows as JSON objects with every column (null where a row has none).
    fn objects(&self, cols: &[String], meta: &[(String, Value)]) -> Vec<Map<String, Value>> {
        self.rows
            .iter()
            .map(|r| {
                let mut m = Map::new();
                for c in cols {
                    let v = match c.as_str() {
                        "set" => Value::from(self.set.clone()),
                        "scenario" => Value::from(r.scenario.clone()),
                        _ => r
                            .get(c)
                            .or_else(|| meta.iter().find(|(k, _)| k == c).map(|(_, v)| v))
                            .cloned()
                            .unwrap_or(Value::Null),
                    };
                    m.insert(c.clone(), v);
                }
                m
            })
            .collect()
    }

    /// Write `<set>.json` and `<set>.csv` into `dir`.
    pub fn write(&self, dir: &Path, meta: &Meta) -> Result<Vec<PathBuf>, String> {
        let mf = meta.row_fields();
        let cols = self.columns(&mf);
        let objs = self.objects(&cols, &mf);
        let json = serde_json::json!({
            "set": self.set,
            "meta": meta.to_json(),
            "columns": cols,
            "rows": objs,
        });
        let jp = dir.join(format!("{}.json", self.set));
        let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
        std::fs::write(&jp, text + "\n").map_err(|e| format!("{}: {e}", jp.display()))?;
        let mut csv = cols.join(",") + "\n";
        for o in &objs {
            let line: Vec<String> = cols
                .iter()
                .map(|c| csv_field(o.get(c).unwrap_or(&Value::Null)))
                .collect();
            csv += &line.join(",");
            csv.push('\n');
        }
        let cp = dir.join(format!("{}.csv", self.set));
        std::fs::write(&cp, csv).map_err(|e| format!("{}: {e}", cp.display()))?;
        Ok(vec![jp, cp])
    }
}

/// Read `<set>.json` back: (meta, rows as objects).
pub fn read(dir: &Path, set: &str) -> Result<(Value, Vec<Map<String, Value>>), String> {
    let p = dir.join(format!("{set}.json"));
    let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
    let rows = v
        .get("rows")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("{}: no rows", p.display()))?
        .iter()
        .filter_map(|r| r.as_object().cloned())
        .collect();
    Ok((v.get("meta").cloned().unwrap_or(Value::Null), rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_only_what_needs_it() {
        assert_eq!(csv_field(&Value::from("a,b")), "\"a,b\"");
        assert_eq!(csv_field(&Value::from("say \"x\"")), "\"say \"\"x\"\"\"");
        assert_eq!(csv_field(&Value::from(1.5)), "1.5");
        assert_eq!(csv_field(&Value::Null), "");
    }
}
