//! The CRD's descriptions as `kubectl explain` should print them. schemars copies doc comments
//! with their hard line breaks (wrapped at 100 columns for the source), and `kubectl explain`
//! wraps text itself, so the CRD would print ragged lines. [`unwrap`] joins the lines of each
//! paragraph; paragraphs (blank-line separated) stay apart, list items and code stay on their
//! own lines.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};

/// Whether a (trimmed) line starts a list item: `- `, `* `, `1. `, `1) `.
fn starts_item(line: &str) -> bool {
    if line.starts_with("- ") || line.starts_with("* ") {
        return true;
    }
    let digits = line.chars().take_while(char::is_ascii_digit).count();
    digits > 0 && (line[digits..].starts_with(". ") || line[digits..].starts_with(") "))
}

/// `text` with the lines of each paragraph joined by a space. A blank line still separates
/// paragraphs; a list item, a line indented by a tab or four spaces, and everything between
/// ``` fences keep their own line.
pub fn unwrap(text: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    // Whether the last line may take the next one: not after a blank line or in code.
    let mut open = false;
    let mut fenced = false;
    for line in text.lines() {
        let trimmed = line.trim();
        let fence = trimmed.starts_with("```");
        let verbatim = fenced || fence || line.starts_with('\t') || line.starts_with("    ");
        if fence {
            fenced = !fenced;
        }
        match out.last_mut() {
            Some(last) if open && !verbatim && !trimmed.is_empty() && !starts_item(trimmed) => {
                last.push(' ');
                last.push_str(trimmed);
            }
            _ => out.push(if verbatim { line } else { trimmed }.to_string()),
        }
        open = !verbatim && !trimmed.is_empty();
    }
    out.join("\n")
}

/// [`unwrap`] on every description of the CRD's schemas.
pub fn unwrap_all(crd: &mut CustomResourceDefinition) {
    for v in &mut crd.spec.versions {
        if let Some(schema) = v
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            unwrap_schema(schema);
        }
    }
}

fn unwrap_schema(s: &mut JSONSchemaProps) {
    if let Some(d) = s.description.as_mut() {
        *d = unwrap(d);
    }
    let children = s
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(s.all_of.iter_mut().flatten())
        .chain(s.any_of.iter_mut().flatten())
        .chain(s.one_of.iter_mut().flatten())
        .chain(s.not.as_deref_mut());
    for child in children {
        unwrap_schema(child);
    }
    match s.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(item)) => unwrap_schema(item),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => items.iter_mut().for_each(unwrap_schema),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(extra)) = s.additional_properties.as_mut() {
        unwrap_schema(extra);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_lines_join_and_paragraphs_stay_apart() {
        let doc = "How often and where progress is\ncheckpointed, every `interval`.\n\nA second\nparagraph.";
        assert_eq!(
            unwrap(doc),
            "How often and where progress is checkpointed, every `interval`.\n\nA second paragraph."
        );
    }

    #[test]
    fn list_items_and_code_keep_their_lines() {
        let doc = "Modes:\n- `earliest`: from the\n  first record;\n- `latest`: new records only.\n1. one\n2) two\n\n```\nkubectl get sj\n  -o yaml\n```\nafter";
        assert_eq!(
            unwrap(doc),
            "Modes:\n- `earliest`: from the first record;\n- `latest`: new records only.\n1. one\n2) two\n\n```\nkubectl get sj\n  -o yaml\n```\nafter"
        );
        assert_eq!(unwrap("a\n\tindented\nb"), "a\n\tindented\nb");
        assert_eq!(unwrap("one line"), "one line");
    }

    #[test]
    fn no_description_of_the_crd_keeps_a_wrapped_line() {
        use kube::CustomResourceExt;
        let mut crd = crate::StreamJob::crd();
        unwrap_all(&mut crd);
        let yaml = serde_json::to_value(&crd).expect("JSON");
        let mut ragged = Vec::new();
        fn walk(v: &serde_json::Value, ragged: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, x) in m {
                        match (k.as_str(), x) {
                            ("description", serde_json::Value::String(d)) => {
                                // Within a paragraph, every line break is a list item's.
                                for para in d.split("\n\n") {
                                    let lines: Vec<&str> = para.lines().collect();
                                    if lines.iter().skip(1).any(|l| !starts_item(l.trim())) {
                                        ragged.push(d.clone());
                                    }
                                }
                            }
                            _ => walk(x, ragged),
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, ragged)),
                _ => {}
            }
        }
        walk(&yaml, &mut ragged);
        assert!(ragged.is_empty(), "ragged descriptions: {ragged:#?}");
    }
}
