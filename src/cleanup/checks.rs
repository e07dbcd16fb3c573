//! header_checks / mime_header_checks / body_checks actions, as header_checks(5) defines them.

/// What a check result tells cleanup to do with one header or body line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Keep the line, stop looking at other tables for it (DUNNO, OK).
    Keep,
    /// Delete the line (IGNORE).
    Ignore,
    /// Refuse the whole message with this reply text (`REJECT text`, default text).
    Reject(String),
    /// Log `warning: …` and keep the line.
    Warn(String),
    /// Log `info: …` and keep the line.
    Info(String),
    /// Put the message on hold.
    Hold(String),
    /// Accept and silently drop the message.
    Discard(String),
    /// Insert this line before the current one.
    Prepend(String),
    /// Replace the current line with this one.
    Replace(String),
    /// Send the message to this recipient instead of the envelope recipients.
    Redirect(String),
    /// Route the message through this content filter (`transport:destination`).
    Filter(String),
    /// Add a blind copy recipient.
    Bcc(String),
}

/// Parses a table result. Unknown actions are reported as warnings and ignored, as Postfix does.
pub fn parse(result: &str) -> Result<Action, String> {
    let result = result.trim();
    let (verb, text) = match result.split_once(|c: char| c.is_ascii_whitespace()) {
        Some((v, t)) => (v, t.trim()),
        None => (result, ""),
    };
    let text = text.to_string();
    Ok(match verb.to_ascii_uppercase().as_str() {
        "DUNNO" | "OK" => Action::Keep,
        "IGNORE" => Action::Ignore,
        "REJECT" => Action::Reject(if text.is_empty() {
            "Message content rejected".into()
        } else {
            text
        }),
        "WARN" => Action::Warn(text),
        "INFO" => Action::Info(text),
        "HOLD" => Action::Hold(text),
        "DISCARD" => Action::Discard(text),
        "PREPEND" if !text.is_empty() => Action::Prepend(text),
        "REPLACE" if !text.is_empty() => Action::Replace(text),
        "REDIRECT" if !text.is_empty() => Action::Redirect(text),
        "FILTER" if text.contains(':') => Action::Filter(text),
        "BCC" if !text.is_empty() => Action::Bcc(text),
        _ => {
            return Err(format!(
                "unknown command in header_checks or body_checks: \"{result}\""
            ))
        }
    })
}

/// Splits a `REJECT` text into an SMTP reply: Postfix lets the text begin with an enhanced
/// status code (`5.7.1 text`); the default is 5.7.1.
pub fn reject_reply(text: &str) -> String {
    let mut parts = text.splitn(2, ' ');
    let first = parts.next().unwrap_or("");
    let is_dsn = first.len() >= 5
        && first.starts_with('5')
        && first.split('.').count() == 3
        && first
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if is_dsn {
        format!("550 {first} {}", parts.next().unwrap_or("").trim())
    } else {
        format!("550 5.7.1 {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions() {
        assert_eq!(parse("IGNORE").unwrap(), Action::Ignore);
        assert_eq!(
            parse("reject no spam").unwrap(),
            Action::Reject("no spam".into())
        );
        assert_eq!(
            parse("REJECT").unwrap(),
            Action::Reject("Message content rejected".into())
        );
        assert_eq!(
            parse("PREPEND X-Seen: yes").unwrap(),
            Action::Prepend("X-Seen: yes".into())
        );
        assert!(parse("FILTER nonsense").is_err());
        assert!(parse("FROBNICATE").is_err());
        assert_eq!(reject_reply("5.7.0 go away"), "550 5.7.0 go away");
        assert_eq!(reject_reply("go away"), "550 5.7.1 go away");
    }
}
