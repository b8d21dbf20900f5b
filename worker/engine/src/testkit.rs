//! Helpers shared by the unit tests of several modules.

use proptest::sample::Index;

/// `text` broken at one place, for the property tests that compare a hand-written reader with
/// serde_json (the record scanner, the partial reader): at `at`, the character removed
/// (`edit` 0), one ASCII character replaced by `ch` (`edit` 1), or `ch` put in (otherwise, and
/// where there is nothing to remove or replace). `None` when `at` falls inside a character.
pub(crate) fn broken_at(text: &str, at: Index, edit: usize, ch: &str) -> Option<String> {
    let at = at.index(text.len() + 1);
    if !text.is_char_boundary(at) {
        return None;
    }
    let mut broken = text.to_string();
    match edit {
        0 if at < text.len() => {
            broken.remove(at);
        }
        1 if at < text.len() && text.is_char_boundary(at + 1) => {
            broken.replace_range(at..at + 1, ch);
        }
        _ => broken.insert_str(at, ch),
    }
    Some(broken)
}
