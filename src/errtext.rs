//! An error and its causes as one line for the user.
//!
//! anyhow's `{:#}` appends each cause after the message, but many of troupe's error types
//! already quote their cause in their own message (`cannot open X: <io error>`) so that
//! they read well alone; joined, the OS error was printed twice. [`one_line`] adds a cause
//! only when the text so far does not already say it.

/// `outer: cause: cause...`, each cause once.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.is_empty() {
            text = part;
        } else if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("chardev c: cannot open /x: {source}")]
    struct Quoting {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn a_cause_the_message_already_quotes_is_not_repeated() {
        let io = std::io::Error::from_raw_os_error(2);
        let e = anyhow::Error::new(Quoting { source: io }).context("-chardev c");
        assert_eq!(
            one_line(&e),
            "-chardev c: chardev c: cannot open /x: No such file or directory (os error 2)"
        );
        // A cause the message does not quote still follows it.
        let e = anyhow::Error::new(std::io::Error::from_raw_os_error(13)).context("-D /log");
        assert_eq!(one_line(&e), "-D /log: Permission denied (os error 13)");
    }
}
