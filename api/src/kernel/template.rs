//! `${VAR}` substitution in image names and sign fields.
//!
//! The syntax is the shell-style one upstream KMM accepts (it uses an envsubst library): `$VAR`,
//! `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:=default}`, `${VAR=default}`,
//! `${VAR:+alt}`, `${VAR+alt}`, `${#VAR}` (length), `${VAR:offset}` and `${VAR:offset:length}`,
//! and `$$` for a literal `$`. A `$` not followed by a name or `{` stays as it is.
//!
//! One deliberate difference: upstream expands an unknown variable to the empty string, which
//! turns a typo such as `${KERNEL_FULLVERSION}` into an image tag that was never built. Here an
//! unknown variable is an error that names it and lists the variables the field offers.

use thiserror::Error;

/// Why a template could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    /// The template names a variable the field does not offer.
    #[error("unknown variable ${{{name}}}; this field offers {offered}")]
    UnknownVariable { name: String, offered: String },
    /// A `${` without its closing `}`.
    #[error("unterminated ${{ at byte {at}")]
    Unterminated { at: usize },
    /// `${...}` whose inside is not a supported form.
    #[error("unsupported expression ${{{expr}}}")]
    BadExpression { expr: String },
}

/// Variables a template may use, as `(name, value)` pairs.
pub type Vars<'a> = [(&'a str, &'a str)];

/// Expands `template` with `vars`.
pub fn expand(template: &str, vars: &Vars<'_>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len() + 32);
    let bytes = template.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let Some(rel) = template[i..].find('$') else {
            out.push_str(&template[i..]);
            break;
        };
        out.push_str(&template[i..i + rel]);
        i += rel;
        match bytes.get(i + 1) {
            Some(b'$') => {
                out.push('$');
                i += 2;
            }
            Some(b'{') => {
                let close = template[i + 2..]
                    .find('}')
                    .ok_or(TemplateError::Unterminated { at: i })?;
                let expr = &template[i + 2..i + 2 + close];
                out.push_str(&braced(expr, vars)?);
                i += close + 3;
            }
            Some(c) if is_name_start(*c) => {
                let len = name_len(&template[i + 1..]);
                let name = &template[i + 1..i + 1 + len];
                out.push_str(lookup(name, vars)?);
                i += 1 + len;
            }
            _ => {
                out.push('$');
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Names of every variable `template` refers to, in order (for linting).
pub fn referenced(template: &str) -> Result<Vec<String>, TemplateError> {
    let mut names = Vec::new();
    let bytes = template.as_bytes();
    let mut i = 0;
    while let Some(rel) = template[i..].find('$') {
        i += rel;
        match bytes.get(i + 1) {
            Some(b'$') => i += 2,
            Some(b'{') => {
                let close = template[i + 2..]
                    .find('}')
                    .ok_or(TemplateError::Unterminated { at: i })?;
                let expr = &template[i + 2..i + 2 + close];
                let expr = expr.strip_prefix('#').unwrap_or(expr);
                names.push(expr[..name_len(expr)].to_owned());
                i += close + 3;
            }
            Some(c) if is_name_start(*c) => {
                let len = name_len(&template[i + 1..]);
                names.push(template[i + 1..i + 1 + len].to_owned());
                i += 1 + len;
            }
            _ => i += 1,
        }
    }
    Ok(names)
}

fn is_name_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn name_len(s: &str) -> usize {
    s.bytes()
        .position(|c| !(c.is_ascii_alphanumeric() || c == b'_'))
        .unwrap_or(s.len())
}

fn lookup<'v>(name: &str, vars: &Vars<'v>) -> Result<&'v str, TemplateError> {
    vars.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .ok_or_else(|| TemplateError::UnknownVariable {
            name: name.to_owned(),
            offered: vars
                .iter()
                .map(|(n, _)| format!("${{{n}}}"))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The inside of `${...}`.
fn braced(expr: &str, vars: &Vars<'_>) -> Result<String, TemplateError> {
    let bad = || TemplateError::BadExpression {
        expr: expr.to_owned(),
    };
    if let Some(name) = expr.strip_prefix('#') {
        if name.is_empty() || name_len(name) != name.len() {
            return Err(bad());
        }
        return Ok(lookup(name, vars)?.chars().count().to_string());
    }
    let len = name_len(expr);
    if len == 0 || !is_name_start(expr.as_bytes()[0]) {
        return Err(bad());
    }
    let value = lookup(&expr[..len], vars)?;
    let rest = &expr[len..];
    // Every variable we offer is set, so "unset" never applies; ":" forms also test for empty.
    let is_empty = value.is_empty();
    Ok(match rest {
        "" => value.to_owned(),
        _ if rest.starts_with(":-") || rest.starts_with(":=") => {
            if is_empty {
                rest[2..].to_owned()
            } else {
                value.to_owned()
            }
        }
        _ if rest.starts_with(":+") => {
            if is_empty {
                String::new()
            } else {
                rest[2..].to_owned()
            }
        }
        _ if rest.starts_with('-') || rest.starts_with('=') => value.to_owned(),
        _ if rest.starts_with('+') => rest[1..].to_owned(),
        _ if rest.starts_with(':') => substring(value, &rest[1..]).ok_or_else(bad)?,
        _ => return Err(bad()),
    })
}

/// `${VAR:offset}` / `${VAR:offset:length}`, counted in characters; out-of-range parts clamp.
fn substring(value: &str, spec: &str) -> Option<String> {
    let (offset, length) = match spec.split_once(':') {
        Some((o, l)) => (
            o.trim().parse::<usize>().ok()?,
            Some(l.trim().parse::<usize>().ok()?),
        ),
        None => (spec.trim().parse::<usize>().ok()?, None),
    };
    let chars = value.chars().skip(offset);
    Some(match length {
        Some(n) => chars.take(n).collect(),
        None => chars.collect(),
    })
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    const VARS: &Vars<'static> = &[("KERNEL_FULL_VERSION", "5.14.0-70.el9.x86_64"), ("EMPTY", "")];

    #[rstest]
    #[case("repo:${KERNEL_FULL_VERSION}", "repo:5.14.0-70.el9.x86_64")]
    #[case("repo:$KERNEL_FULL_VERSION-x", "repo:5.14.0-70.el9.x86_64-x")]
    #[case("no variables", "no variables")]
    #[case("cost$$5", "cost$5")]
    #[case("trailing $", "trailing $")]
    #[case("a $1 b", "a $1 b")]
    #[case("${EMPTY:-dflt}", "dflt")]
    #[case("${EMPTY-dflt}", "")]
    #[case("${KERNEL_FULL_VERSION:-dflt}", "5.14.0-70.el9.x86_64")]
    #[case("${EMPTY:=dflt}", "dflt")]
    #[case("${KERNEL_FULL_VERSION:+alt}", "alt")]
    #[case("${EMPTY:+alt}", "")]
    #[case("${EMPTY+alt}", "alt")]
    #[case("${#KERNEL_FULL_VERSION}", "20")]
    #[case("${KERNEL_FULL_VERSION:0:6}", "5.14.0")]
    #[case("${KERNEL_FULL_VERSION:7}", "70.el9.x86_64")]
    #[case("${KERNEL_FULL_VERSION:50}", "")]
    fn expands(#[case] template: &str, #[case] want: &str) {
        assert_eq!(expand(template, VARS).as_deref(), Ok(want), "{template}");
    }

    #[rstest]
    #[case(
        "${KERNEL_FULLVERSION}",
        "unknown variable ${KERNEL_FULLVERSION}; this field offers ${KERNEL_FULL_VERSION}, ${EMPTY}"
    )]
    #[case("$MOD_NAME", "unknown variable ${MOD_NAME}")]
    #[case("repo:${KERNEL_FULL_VERSION", "unterminated ${ at byte 5")]
    #[case("${}", "unsupported expression ${}")]
    #[case(
        "${KERNEL_FULL_VERSION/x/y}",
        "unsupported expression ${KERNEL_FULL_VERSION/x/y}"
    )]
    #[case("${KERNEL_FULL_VERSION:x}", "unsupported expression ${KERNEL_FULL_VERSION:x}")]
    fn refuses(#[case] template: &str, #[case] message: &str) {
        let err = expand(template, VARS).unwrap_err().to_string();
        assert!(err.starts_with(message), "{template}: {err}");
    }

    #[test]
    fn lists_referenced_names() {
        let names = referenced("r/${MOD_NAMESPACE}/$MOD_NAME:${KERNEL_X:-0}.${#KERNEL_Y}$$x").unwrap();
        assert_eq!(names, ["MOD_NAMESPACE", "MOD_NAME", "KERNEL_X", "KERNEL_Y"]);
    }
}
