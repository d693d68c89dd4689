//! One-line rendering of an error with its causes, for logs and the programs' last line.
//!
//! The crate's errors follow one rule: a cause is either part of an error's text or its
//! `source()`, never both (each type says what failed and hands the why to `source()`).
//! [`Report`] walks that chain as `what: why: root cause`. Some dependencies repeat their
//! source in their own text (rdkafka's `KafkaError` does); a cause whose text the line
//! already holds is skipped, so every cause is printed once.

use std::error::Error;
use std::fmt;

/// `error: cause: cause`, each cause once. Use it wherever an error is logged or printed:
/// `tracing::warn!(error = %Report(&error), ...)`.
pub struct Report<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.0.to_string();
        let mut next = self.0.source();
        while let Some(cause) = next {
            let text = cause.to_string();
            if !text.is_empty() && !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            next = cause.source();
        }
        f.write_str(&line)
    }
}

impl fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read config file x.yaml")]
    struct Outer(#[source] std::io::Error);

    /// A dependency that puts its source in its text as well.
    #[derive(Debug, thiserror::Error)]
    #[error("produce failed: {0}")]
    struct Repeating(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("dead-letter topic")]
    struct Wrapper(#[source] Repeating);

    #[test]
    fn each_cause_once() {
        let missing = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        assert_eq!(
            Report(&Outer(missing())).to_string(),
            "cannot read config file x.yaml: no such file"
        );
        assert_eq!(
            Report(&Wrapper(Repeating(missing()))).to_string(),
            "dead-letter topic: produce failed: no such file"
        );
        let any = anyhow::Error::new(Outer(missing())).context("loading");
        assert_eq!(
            Report(any.as_ref()).to_string(),
            "loading: cannot read config file x.yaml: no such file"
        );
    }
}
