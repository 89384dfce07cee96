//! Plain-text output for people: aligned columns, and `field: value` records. A column names
//! a JSON field, dotted for nested ones (`ingest.redis_ok`).

use serde_json::Value;

/// The value at a dotted path, as text (`-` when absent or null).
pub(crate) fn cell(v: &Value, path: &str) -> String {
    let mut at = v;
    for part in path.split('.') {
        at = &at[part];
    }
    match at {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.iter().all(|x| !x.is_object()) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// A table: a header row and one row per item, columns padded to their widest cell.
pub(crate) fn render(rows: &[Value], cols: &[(&str, &str)]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|(_, f)| cell(r, f)).collect())
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |items: Vec<&str>| {
        let mut s = items
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s + "\n"
    };
    let mut out = line(cols.iter().map(|(h, _)| *h).collect());
    for r in &cells {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

/// `HEADER: value` lines for one object.
pub(crate) fn record(v: &Value, fields: &[(&str, &str)]) -> String {
    let width = fields.iter().map(|(h, _)| h.len()).max().unwrap_or(0);
    fields
        .iter()
        .map(|(h, f)| {
            format!(
                "{:<width$}  {}\n",
                format!("{h}:"),
                cell(v, f),
                width = width + 1
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn columns_align_and_missing_fields_show_a_dash() {
        let rows = [
            json!({"a": "x", "b": {"c": true}}),
            json!({"a": "longer", "b": {}}),
        ];
        let t = render(&rows, &[("A", "a"), ("C", "b.c")]);
        assert_eq!(t, "A       C\nx       true\nlonger  -\n");
        let r = record(&rows[0], &[("A", "a"), ("LIST", "l")]);
        assert_eq!(r, "A:     x\nLIST:  -\n");
        assert_eq!(cell(&json!({"l": ["p", 1]}), "l"), "p,1");
    }
}
