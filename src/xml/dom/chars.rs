//! XML 1.0's character classes (`Char`, names, white space) and its
//! references (the five predefined entities, character references): what
//! the parser checks of every name, value and text, and what the writer
//! escapes.

/// XML 1.0 `Char`.
pub(super) fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// XML 1.0 (5th edition) `NameStartChar`, without ':' (namespaces give it
/// its own meaning).
fn is_name_start(c: char) -> bool {
    matches!(c,
        'A'..='Z' | '_' | 'a'..='z' | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}'
        | '\u{F8}'..='\u{2FF}' | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}'
        | '\u{200C}'..='\u{200D}' | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}'
        | '\u{3001}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}'
        | '\u{10000}'..='\u{EFFFF}')
}

fn is_name_char(c: char) -> bool {
    is_name_start(c)
        || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

/// A namespace `NCName`.
pub(super) fn is_ncname(s: &str) -> bool {
    let mut it = s.chars();
    it.next().is_some_and(is_name_start) && it.all(is_name_char)
}

/// A namespace `QName`: `local` or `prefix:local`; returns the prefix.
pub(super) fn qname_prefix(s: &str) -> std::result::Result<Option<&str>, ()> {
    match s.split_once(':') {
        None if is_ncname(s) => Ok(None),
        Some((p, l)) if is_ncname(p) && is_ncname(l) => Ok(Some(p)),
        _ => Err(()),
    }
}

pub(super) fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

pub(super) fn is_blank(s: &str) -> bool {
    s.chars().all(is_space)
}

/// Check that `s` holds only XML characters; the offset of the first bad one.
pub(super) fn bad_char(s: &str) -> Option<(usize, char)> {
    s.char_indices().find(|&(_, c)| !is_xml_char(c))
}

/// One of the five predefined entities.
pub(super) fn predefined_entity(name: &str) -> Option<char> {
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        _ => return None,
    })
}

/// A character reference body (after `&#`, before `;`), as a legal Char.
pub(super) fn char_ref(body: &str) -> Option<char> {
    let n = match body.strip_prefix('x') {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u32::from_str_radix(hex, 16).ok()?
        }
        None if !body.is_empty() && body.bytes().all(|b| b.is_ascii_digit()) => {
            body.parse().ok()?
        }
        _ => return None,
    };
    char::from_u32(n).filter(|&c| is_xml_char(c))
}

/// A reference starting at `s` (just after `&`): the character and the
/// length consumed including the `;`.
pub(super) fn reference(s: &str) -> std::result::Result<(char, usize), String> {
    let end = s.find(';').ok_or_else(|| {
        "'&' must start an entity or character reference ending in ';'".to_string()
    })?;
    let body = &s[..end];
    let c = match body.strip_prefix('#') {
        Some(num) => char_ref(num).ok_or_else(|| format!("bad character reference '&{body};'"))?,
        None => predefined_entity(body).ok_or_else(|| {
            format!("unknown entity '&{body};' (only the five predefined entities are allowed)")
        })?,
    };
    Ok((c, end + 1))
}
