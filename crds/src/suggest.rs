//! Unknown fields of a StreamJob file, named the way `validate()` names fields
//! (`spec.aggregations[2].feild`), with the field the author probably meant: the closest name
//! the CRD's schema allows at that place.

/// A field path from `serde_ignored` in weir's notation: map keys joined by dots, list indexes
/// as `[i]`, and no segment for an optional or newtype wrapper.
pub(crate) fn field_path(path: &serde_ignored::Path<'_>) -> String {
    fn walk(path: &serde_ignored::Path<'_>, out: &mut String) {
        use serde_ignored::Path;
        match path {
            Path::Root => {}
            Path::Seq { parent, index } => {
                walk(parent, out);
                out.push_str(&format!("[{index}]"));
            }
            Path::Map { parent, key } => {
                walk(parent, out);
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Path::Some { parent }
            | Path::NewtypeStruct { parent }
            | Path::NewtypeVariant { parent } => walk(parent, out),
        }
    }
    let mut out = String::new();
    walk(path, &mut out);
    out
}

/// What to tell the author of an unknown field at `path` (as [`field_path`] writes it):
/// `unknown field; did you mean window?`, or the fields allowed there.
pub fn unknown_field_message(path: &str) -> String {
    let schema = crate::schema::schema();
    let (parent, name) = path.rsplit_once('.').unwrap_or(("", path));
    let mut node = schema;
    for segment in parent.split('.').filter(|s| !s.is_empty()) {
        let (key, indexed) = match segment.split_once('[') {
            Some((k, _)) => (k, true),
            None => (segment, false),
        };
        node = &node["properties"][key];
        if indexed {
            node = &node["items"];
        }
    }
    let allowed: Vec<&str> = node["properties"]
        .as_object()
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    suggestion(name, &allowed)
}

/// What to tell the author of an unknown field `name` where the fields `allowed` are:
/// `unknown field; did you mean window?` when one is close, else the list.
pub(crate) fn suggestion(name: &str, allowed: &[&str]) -> String {
    match closest(name, allowed) {
        Some(a) => format!("unknown field; did you mean {a}?"),
        None if !allowed.is_empty() => {
            format!("unknown field; expected one of {}", allowed.join(", "))
        }
        None => "unknown field (check its spelling)".to_string(),
    }
}

/// The word of `allowed` that `name` is probably a misspelling of: the nearest, ignoring case,
/// if at most a third of its letters (and at least 2) differ.
pub(crate) fn closest<'a>(name: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (distance(&a.to_lowercase(), &name.to_lowercase()), *a))
        .min()
        .filter(|(d, _)| *d <= (name.chars().count() / 3).max(2))
        .map(|(_, a)| a)
}

/// Levenshtein distance, in characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(distance("windw", "window"), 1);
        assert_eq!(distance("allowedlatness", "allowedlateness"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn suggestions_follow_the_schema_into_lists_and_options() {
        assert_eq!(
            unknown_field_message("spec.windw"),
            "unknown field; did you mean window?"
        );
        assert_eq!(
            unknown_field_message("spec.window.allowedLatness"),
            "unknown field; did you mean allowedLateness?"
        );
        assert_eq!(
            unknown_field_message("spec.aggregations[2].feild"),
            "unknown field; did you mean field?"
        );
        assert_eq!(
            unknown_field_message("spec.deadLetter.kafka.topik"),
            "unknown field; did you mean topic?"
        );
        assert_eq!(
            unknown_field_message("spec.groupby"),
            "unknown field; did you mean groupBy?"
        );
        let far = unknown_field_message("spec.window.zzzzzzzz");
        assert!(far.contains("expected one of"), "{far}");
        assert!(far.contains("allowedLateness"), "{far}");
    }
}
